"""index grants by granter, and a home's nodes by owner

Whether a grant still stands is asked of a whole space (``grant_support``): when a grant goes
or changes, a role or a membership changes, or an item moves out of a folder whose grantee
shared on. The space's grants were found by reading every grant on the server and looking up
each one's node; and who shared on (``granted_by``) had no index either. With 200,000 grants
and 400,000 nodes of other users, one small space's pass took 1.5 s on SQLite and 62 ms on
PostgreSQL (bench/regrant.py). ix_nodes_home_space (owner_id, of the nodes with no group)
finds a home's nodes, and the grants on them ix_grants_node_user/_group;
ix_grants_granted_by finds what someone granted. A group's nodes are left out: indexed by
group_id, they were what PostgreSQL read for a group's trash when it had no statistics,
instead of the trashed rows alone (ix_nodes_trash_deleter); a group space's pass still reads
the grants.

Each CREATE INDEX reads its table once and blocks writes to it meanwhile (seconds for millions
of rows); no table is rebuilt.

Revision ID: 0012
Revises: 0011
Create Date: 2026-11-29 08:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0012"
down_revision: str | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    home = sa.text("group_id IS NULL")
    op.create_index(
        "ix_nodes_home_space", "nodes", ["owner_id"], sqlite_where=home, postgresql_where=home
    )
    op.create_index("ix_grants_granted_by", "grants", ["granted_by"])


def downgrade() -> None:
    op.drop_index("ix_grants_granted_by", table_name="grants")
    op.drop_index("ix_nodes_home_space", table_name="nodes")
