"""packages: modified_at (the zip's Last-Modified); items get their pinned mtime, may pin an
empty file (no version), and are indexed by node and version

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-26 12:00:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import davserver.db.types

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("packages", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("modified_at", davserver.db.types.UTCDateTime(timezone=True), nullable=True)
        )
    # Left nullable: making it NOT NULL would rebuild "packages" on SQLite, and dropping the old
    # table there deletes its items (ON DELETE CASCADE) and clears logbook references.
    op.execute("UPDATE packages SET modified_at = created_at")

    with op.batch_alter_table("package_items", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("mtime", davserver.db.types.UTCDateTime(timezone=True), nullable=True)
        )
    op.execute(
        "UPDATE package_items SET mtime = (SELECT COALESCE(v.mtime, v.uploaded_at)"
        " FROM file_versions v WHERE v.id = package_items.version_id)"
    )
    # Nothing references package_items, so rebuilding it on SQLite is safe. Deleting a version
    # or a node checks package_items by these columns (foreign keys): index them.
    with op.batch_alter_table("package_items", schema=None) as batch_op:
        batch_op.alter_column(
            "mtime",
            existing_type=davserver.db.types.UTCDateTime(timezone=True),
            nullable=False,
        )
        # Empty files have no version; a package pins them as empty (no version).
        batch_op.alter_column("version_id", existing_type=sa.Uuid(), nullable=True)
        batch_op.create_index(batch_op.f("ix_package_items_node_id"), ["node_id"], unique=False)
        batch_op.create_index(
            batch_op.f("ix_package_items_version_id"), ["version_id"], unique=False
        )


def downgrade() -> None:
    # On SQLite, dropping modified_at rebuilds "packages", which empties package_items (as
    # upgrade explains); a downgrade does not keep packages' items there.
    with op.batch_alter_table("package_items", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_package_items_version_id"))
        batch_op.drop_index(batch_op.f("ix_package_items_node_id"))
        batch_op.drop_column("mtime")
    op.execute("DELETE FROM package_items WHERE version_id IS NULL")
    with op.batch_alter_table("package_items", schema=None) as batch_op:
        batch_op.alter_column("version_id", existing_type=sa.Uuid(), nullable=False)

    with op.batch_alter_table("packages", schema=None) as batch_op:
        batch_op.drop_column("modified_at")
