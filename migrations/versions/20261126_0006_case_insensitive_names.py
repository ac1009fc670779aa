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

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# (index, table, column, how to change one of a pair)
_INDEXES = (
    ("uq_users_username_lower", "users", "username", "UPDATE users SET username = ..."),
    ("uq_users_email_lower", "users", "email", "davserver user email NAME NEW-ADDRESS"),
    ("uq_groups_name_lower", "groups", "name", "UPDATE groups SET name = ..."),
)


class CaseDuplicates(RuntimeError):
    """Names that differ only in case: the unique index cannot be made until they are renamed."""


def upgrade() -> None:
    conn = op.get_bind()
    problems = []
    for _index, table, column, fix in _INDEXES:
        clashes = conn.execute(
            sa.text(
                f"SELECT {column} FROM {table} WHERE lower({column}) IN ("
                f"SELECT lower({column}) FROM {table} WHERE {column} IS NOT NULL"
                f" GROUP BY lower({column}) HAVING count(*) > 1) ORDER BY lower({column})"
            )
        ).scalars()
        found = list(clashes)
        if found:
            problems.append(f"{table}.{column}: {', '.join(map(repr, found))} (change with: {fix})")
    if problems:
        raise CaseDuplicates(
            "these differ only in case, which is no longer allowed; change all but one of each,"
            " then upgrade again: " + "; ".join(problems)
        )
    for index, table, column, _fix in _INDEXES:
        op.create_index(index, table, [sa.text(f"lower({column})")], unique=True)


def downgrade() -> None:
    for index, table, _column, _fix in reversed(_INDEXES):
        op.drop_index(index, table_name=table)
