"""index the columns that reference file versions

Deleting a version (retention pruning, purging the trash) makes the database look up every row
that points at it; without these indexes each deleted version scanned the logbook, the nodes
and the image variants (a 1,000-file purge: 7.4 s on SQLite with 20k logbook rows, 69 ms with
them). Plain CREATE INDEX on both engines: no table is rebuilt.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-26 10:23:22.920942
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_INDEXES = (
    ("ix_image_variants_version_id", "image_variants", "version_id"),
    ("ix_logbook_version_id", "logbook", "version_id"),
    ("ix_nodes_current_version_id", "nodes", "current_version_id"),
)


def upgrade() -> None:
    for name, table, column in _INDEXES:
        op.create_index(name, table, [column], unique=False)


def downgrade() -> None:
    for name, table, _column in reversed(_INDEXES):
        op.drop_index(name, table_name=table)
