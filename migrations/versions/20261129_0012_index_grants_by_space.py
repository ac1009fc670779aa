"""index grants by granter, and nodes by space

Whether a grant still stands is asked of a whole space (``grant_support``): when a grant goes
or changes, a role or a membership changes, or an item moves out of a folder whose grantee
shared on. The space's grants were found by reading every grant on the server and looking up
each one's node; and who shared on (``granted_by``) had no index either. With 200,000 grants
and 400,000 nodes of other users, one small space's pass took 1.5 s on SQLite and 62 ms on
PostgreSQL (bench/regrant.py). ix_nodes_space (group_id, owner_id) finds a space's nodes, a
group's by its id and a home's by its owner with no group, and the grants on them by
ix_grants_node_user/_group; ix_grants_granted_by finds what someone granted.

Each CREATE INDEX reads its table once and blocks writes to it meanwhile (seconds for millions
of rows); no table is rebuilt.

Revision ID: 0012
Revises: 0011
Create Date: 2026-11-29 08:00:00
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0012"
down_revision: str | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index("ix_nodes_space", "nodes", ["group_id", "owner_id"])
    op.create_index("ix_grants_granted_by", "grants", ["granted_by"])


def downgrade() -> None:
    op.drop_index("ix_grants_granted_by", table_name="grants")
    op.drop_index("ix_nodes_space", table_name="nodes")
