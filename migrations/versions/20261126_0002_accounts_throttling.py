"""accounts: throttling, session credentials, instance secrets, blob crc32

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-26 09:20:13.292388
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import davserver.db.types

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "instance_secrets",
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("value", sa.String(length=255), nullable=False),
        sa.Column("created_at", davserver.db.types.UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_instance_secrets")),
    )
    op.create_table(
        "login_throttle",
        sa.Column("key", sa.String(length=200), nullable=False),
        sa.Column("failures", sa.Integer(), nullable=False),
        sa.Column(
            "window_started_at", davserver.db.types.UTCDateTime(timezone=True), nullable=False
        ),
        sa.Column("banned_until", davserver.db.types.UTCDateTime(timezone=True), nullable=True),
        sa.Column("updated_at", davserver.db.types.UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("key", name=op.f("pk_login_throttle")),
    )
    with op.batch_alter_table("login_throttle", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_login_throttle_updated_at"), ["updated_at"], unique=False
        )

    with op.batch_alter_table("blobs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("crc32", sa.BigInteger(), nullable=True))

    with op.batch_alter_table("sessions", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column(
                "auth_method", sa.String(length=16), nullable=False, server_default="password"
            )
        )
        batch_op.add_column(sa.Column("api_key_id", sa.Uuid(), nullable=True))
        batch_op.create_foreign_key(
            batch_op.f("fk_sessions_api_key_id_api_keys"),
            "api_keys",
            ["api_key_id"],
            ["id"],
            ondelete="SET NULL",
        )


def downgrade() -> None:
    with op.batch_alter_table("sessions", schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f("fk_sessions_api_key_id_api_keys"), type_="foreignkey")
        batch_op.drop_column("api_key_id")
        batch_op.drop_column("auth_method")

    with op.batch_alter_table("blobs", schema=None) as batch_op:
        batch_op.drop_column("crc32")

    with op.batch_alter_table("login_throttle", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_login_throttle_updated_at"))

    op.drop_table("login_throttle")
    op.drop_table("instance_secrets")
