"""Usernames, e-mail addresses and group names unique ignoring case, in the database

The services refused a name differing from a taken one only in case, but nothing stopped
another writer (a script, a second tool on the same database). Three unique indexes on
``lower()`` now do. A database that already holds such a pair cannot take the index: the
upgrade stops and names them, and nothing is changed until they are renamed.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-26 19:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from davserver.config import ConfigError

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# (index, table, column): davserver's commands upgrade the schema before anything else, so
# the pairs are renamed in SQL (the message says how).
_INDEXES = (
    ("uq_users_username_lower", "users", "username"),
    ("uq_users_email_lower", "users", "email"),
    ("uq_groups_name_lower", "groups", "name"),
)


class CaseDuplicates(ConfigError):
    """Names that differ only in case: the unique index cannot be made until they are renamed.
    A ConfigError: the command says so in one line (exit 2), as for other reasons to stop."""


def upgrade() -> None:
    conn = op.get_bind()
    problems = []
    for _index, table, column in _INDEXES:
        clashes = conn.execute(
            sa.text(
                f"SELECT {column} FROM {table} WHERE lower({column}) IN ("
                f"SELECT lower({column}) FROM {table} WHERE {column} IS NOT NULL"
                f" GROUP BY lower({column}) HAVING count(*) > 1) ORDER BY lower({column})"
            )
        ).scalars()
        found = list(clashes)
        if found:
            problems.append(f"{table}.{column}: {', '.join(map(repr, found))}")
    if problems:
        raise CaseDuplicates(
            "the database holds names that differ only in case, which is no longer allowed;"
            " nothing was changed. Rename all but one of each in SQL (UPDATE users SET"
            " username = 'new' WHERE username = 'old'; the same for users.email or"
            " groups.name), then start again: " + "; ".join(problems)
        )
    for index, table, column in _INDEXES:
        op.create_index(index, table, [sa.text(f"lower({column})")], unique=True)


def downgrade() -> None:
    for index, table, _column in reversed(_INDEXES):
        op.drop_index(index, table_name=table)
