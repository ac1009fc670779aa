"""one grant per item and grantee, in the database

A grant to a user or a group on an item replaces the earlier one (``SharingService.grant``),
but two grants sent at once on PostgreSQL each found none and each inserted one; a later
lowering or revoke then changed one row, and the grantee kept the other's rights. The
indexes on (node_id, user_id) and (node_id, group_id) become unique (NULLs are distinct, so
a user's grants and a group's do not meet). Duplicates already there are merged first: the
newest grant of each pair stays (the one sent last, as the grantee's owner meant), the
others go.

Each CREATE INDEX reads the grants once; no table is rebuilt.

Revision ID: 0013
Revises: 0012
Create Date: 2026-11-29 14:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0013"
down_revision: str | None = "0012"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_GRANTEES = (("user_id", "ix_grants_node_user", "uq_grants_node_user"),
             ("group_id", "ix_grants_node_group", "uq_grants_node_group"))  # fmt: skip


def upgrade() -> None:
    for column, old, new in _GRANTEES:
        op.execute(
            sa.text(
                f"DELETE FROM grants WHERE {column} IS NOT NULL AND EXISTS ("
                f"SELECT 1 FROM grants AS newer WHERE newer.node_id = grants.node_id"
                f" AND newer.{column} = grants.{column}"
                " AND (newer.granted_at > grants.granted_at"
                " OR (newer.granted_at = grants.granted_at AND newer.id > grants.id)))"
            )
        )
        op.drop_index(old, table_name="grants")
        op.create_index(new, "grants", ["node_id", column], unique=True)


def downgrade() -> None:
    for column, old, new in reversed(_GRANTEES):
        op.drop_index(new, table_name="grants")
        op.create_index(old, "grants", ["node_id", column])
