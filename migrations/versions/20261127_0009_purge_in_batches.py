"""nodes.purge_started_at: a trash item being purged, a batch of rows at a time

Purging a trash item deleted its row and let the foreign keys cascade through everything below
it, in one transaction: 4 s for 64,000 files on SQLite, all of it holding the database's write
lock, and other clients' writes failed with 503 past the 30 s busy timeout (some 300,000
files). A purge now marks the item first (``purge_started_at``, in a short transaction of its
own that also writes the logbook row): from then on no listing shows it and nothing restores
it. Its rows are then removed in transactions of a bounded number each; one interrupted by a
crash is finished by the next housekeeping sweep or ``davserver trash purge``, which find the
marked items through ix_nodes_purging (partial: it holds only those).

Both engines add the column in place (no table is copied) and build the index from no rows.

Downgrading refuses while a purge is unfinished: without the mark, the item would come back
into its owner's trash with part of its content gone. Finish it first (``davserver trash
purge``).

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-27 17:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import davserver.db.types

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_MARKED = "purge_started_at IS NOT NULL"


class UnfinishedPurges(RuntimeError):
    """Downgrading would bring half-purged items back into the trash."""


def upgrade() -> None:
    op.add_column(
        "nodes",
        sa.Column("purge_started_at", davserver.db.types.UTCDateTime(timezone=True), nullable=True),
    )
    op.create_index(
        "ix_nodes_purging",
        "nodes",
        ["id"],
        sqlite_where=sa.text(_MARKED),
        postgresql_where=sa.text(_MARKED),
    )


def downgrade() -> None:
    unfinished = op.get_bind().execute(sa.text(f"SELECT count(*) FROM nodes WHERE {_MARKED}"))
    count = unfinished.scalar_one()
    if count:
        raise UnfinishedPurges(
            f"{count} trash items are being purged; run `davserver trash purge` to finish "
            "them before downgrading"
        )
    op.drop_index("ix_nodes_purging", table_name="nodes")
    op.execute("ALTER TABLE nodes DROP COLUMN purge_started_at")  # SQLite 3.35 or newer
