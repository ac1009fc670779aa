"""users.home_bytes: each user's quota usage as a running total, so a check needs no scan

Usage against a quota was the sum of every live file of the user's space, computed twice per
upload (23 ms per upload at 100,000 files on SQLite; with a trash to subtract, seconds on
PostgreSQL). ``home_bytes`` holds that sum and every change keeps it in its transaction
(uploads, copies, version restores, deletions, restores). It is filled here by walking each
user's tree from its root, live nodes only, as the usage was computed before.

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

# Every live node of every user's own space, with its owner; then the files' bytes per owner.
_USAGE = """
WITH RECURSIVE live(id, owner_id) AS (
    SELECT id, owner_id FROM nodes
    WHERE parent_id IS NULL AND space = 'home' AND deleted_at IS NULL
    UNION ALL
    SELECT nodes.id, live.owner_id FROM nodes JOIN live ON nodes.parent_id = live.id
    WHERE nodes.deleted_at IS NULL
)
SELECT live.owner_id, SUM(nodes.size) FROM nodes JOIN live ON live.id = nodes.id
WHERE nodes.kind = 'file'
GROUP BY live.owner_id
"""


def upgrade() -> None:
    # Plain ALTER TABLE on both engines: no batch rebuild of users is needed.
    op.add_column(
        "users", sa.Column("home_bytes", sa.BigInteger(), server_default="0", nullable=False)
    )
    conn = op.get_bind()
    usage = [
        {"owner": owner, "used": int(used or 0)} for owner, used in conn.execute(sa.text(_USAGE))
    ]
    if usage:
        conn.execute(sa.text("UPDATE users SET home_bytes = :used WHERE id = :owner"), usage)


def downgrade() -> None:
    op.execute("ALTER TABLE users DROP COLUMN home_bytes")  # SQLite 3.35 or newer
