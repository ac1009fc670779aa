"""index the trashed nodes only, and by deletion time for the sweep's purge

ix_nodes_trash (owner_id, deleted_at) held an entry for every node, live or not, and the
housekeeping sweep's purge (``deleted_at < cutoff`` over all users) could not look anything up
in it by its first column: each sweep read every node (PostgreSQL: the whole index, or the
table; SQLite: the table). /trash/ of a group member, and one user's purge, read the whole
table too: nothing indexed ``deleted_by``. Three partial indexes (``WHERE deleted_at IS NOT
NULL``, both engines) now hold the trashed rows only: by owner (ix_nodes_trash again), by
deleter, and by (deleted_at, id), the purge's order. Live rows, nearly all, are in none of them.
No query looks nodes up by owner alone, so ix_nodes_trash can leave the live rows out (a
home's root has uq_nodes_home_root; users are soft-deleted, never deleted for good).
With 100,000 live nodes and 100 trashed, the sweep's query on SQLite: 11.3 ms (a table scan) ->
0.05 ms; on PostgreSQL it reads 2 index blocks instead of 98 (ix_nodes_trash: 784 kB -> 16 kB).

Each CREATE INDEX reads the nodes table once and blocks writes to it meanwhile (seconds for
millions of rows); no table is rebuilt.

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-26 21:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_TRASHED = "deleted_at IS NOT NULL"
_INDEXES = (
    ("ix_nodes_trash", ["owner_id", "deleted_at"]),
    ("ix_nodes_trash_deleter", ["deleted_by", "deleted_at"]),
    ("ix_nodes_trash_expiry", ["deleted_at", "id"]),
)


def upgrade() -> None:
    op.drop_index("ix_nodes_trash", table_name="nodes")
    for name, columns in _INDEXES:
        op.create_index(
            name,
            "nodes",
            columns,
            sqlite_where=sa.text(_TRASHED),
            postgresql_where=sa.text(_TRASHED),
        )


def downgrade() -> None:
    for name, _columns in reversed(_INDEXES):
        op.drop_index(name, table_name="nodes")
    op.create_index("ix_nodes_trash", "nodes", ["owner_id", "deleted_at"])
