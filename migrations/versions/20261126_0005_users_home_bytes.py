"""users.home_bytes: a running total of each user's files, so quota checks need no full scan

Usage against a quota was a sum over every file of the user's space, twice per upload (30 ms
per upload at 100,000 files on SQLite). ``home_bytes`` keeps that sum (the files of the user's
own space not themselves in the trash), changed in the transaction of every upload, copy,
version restore, deletion, restore and purge; usage subtracts what trashed folders hide. The
column is filled here from the rows.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-26 15:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_FILL = """
UPDATE users SET home_bytes = (
    SELECT COALESCE(SUM(nodes.size), 0) FROM nodes
    WHERE nodes.owner_id = users.id AND nodes.space = 'home' AND nodes.kind = 'file'
      AND nodes.deleted_at IS NULL
)
"""


def upgrade() -> None:
    # Plain ALTER TABLE on both engines: a batch rebuild of users on SQLite would drop the
    # table, and with foreign keys on, every row referencing a user with it.
    op.add_column(
        "users", sa.Column("home_bytes", sa.BigInteger(), server_default="0", nullable=False)
    )
    op.execute(_FILL)


def downgrade() -> None:
    op.execute("ALTER TABLE users DROP COLUMN home_bytes")  # SQLite 3.35 or newer
