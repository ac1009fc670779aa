"""the logbook keeps the ids of what it is about: no foreign keys to nodes, versions, packages

logbook.node_id, version_id and package_id referenced their tables ON DELETE SET NULL. Purging
a file from the trash, pruning a version or deleting a package therefore rewrote the logbook:
every row about them lost its id, so a purged file's uploads and downloads could no longer be
found by its id (``davserver audit --node``), a package's deletion row lost the package it
deleted in the same transaction, and each purged node or version cost an UPDATE of every row
that named it. The three columns are now plain UUIDs. ix_logbook_version_id served only those
foreign key lookups (0004) and goes with them; every logbook row wrote it.

SQLite cannot drop a foreign key in place: the logbook table is copied (Alembic's batch mode),
which takes as long as copying its rows and blocks writes meanwhile. PostgreSQL drops the
constraints and the index in place.

Downgrading restores the constraints; ids of rows that are gone by then are set to NULL
first, as the constraints would have done.

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-27 13:40:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# (column, referenced table): the constraints' names follow the models' naming convention.
_REFERENCES = (
    ("node_id", "nodes"),
    ("version_id", "file_versions"),
    ("package_id", "packages"),
)


def _constraint(column: str, table: str) -> str:
    return f"fk_logbook_{column}_{table}"


def upgrade() -> None:
    with op.batch_alter_table("logbook", schema=None) as batch_op:
        batch_op.drop_index("ix_logbook_version_id")
        for column, table in _REFERENCES:
            batch_op.drop_constraint(_constraint(column, table), type_="foreignkey")


def downgrade() -> None:
    for column, table in _REFERENCES:
        op.execute(
            sa.text(
                f"UPDATE logbook SET {column} = NULL WHERE {column} IS NOT NULL"
                f" AND NOT EXISTS (SELECT 1 FROM {table} WHERE {table}.id = logbook.{column})"
            )
        )
    with op.batch_alter_table("logbook", schema=None) as batch_op:
        for column, table in _REFERENCES:
            batch_op.create_foreign_key(
                _constraint(column, table), table, [column], ["id"], ondelete="SET NULL"
            )
        batch_op.create_index("ix_logbook_version_id", ["version_id"], unique=False)
