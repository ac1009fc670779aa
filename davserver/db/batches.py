"""Deleting many rows without holding the database for long."""

from __future__ import annotations

import sqlalchemy as sa

from davserver.db.engine import Database

BATCH = 5000


def delete_in_batches(
    db: Database, table: sa.Table, where: sa.ColumnElement[bool], *, batch: int = BATCH
) -> int:
    """Delete the rows of ``table`` (keyed by ``id``) that match ``where``, ``batch`` at a
    time, each batch a transaction of its own, so other writers take turns with a long backlog
    (on SQLite they wait for its one write lock); how many went."""
    deleted = 0
    while True:
        with db.write() as session:
            chosen = sa.select(table.c.id).where(where).limit(batch)
            result = session.execute(table.delete().where(table.c.id.in_(chosen)))
        count = int(result.rowcount)  # type: ignore[attr-defined]
        deleted += count
        if count < batch:
            return deleted
