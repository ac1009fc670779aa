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
    return _in_batches(db, table, where, table.delete(), batch)


def update_in_batches(
    db: Database,
    table: sa.Table,
    where: sa.ColumnElement[bool],
    values: dict[str, object],
    *,
    batch: int = BATCH,
) -> int:
    """Set ``values`` in the rows of ``table`` that match ``where`` (which they must no longer
    match afterwards), as ``delete_in_batches`` deletes; how many changed."""
    return _in_batches(db, table, where, table.update().values(values), batch)


def _in_batches(
    db: Database,
    table: sa.Table,
    where: sa.ColumnElement[bool],
    change: sa.Delete | sa.Update,
    batch: int,
) -> int:
    done = 0
    while True:
        with db.write() as session:
            chosen = sa.select(table.c.id).where(where).limit(batch)
            result = session.execute(change.where(table.c.id.in_(chosen)))
        count = int(result.rowcount)  # type: ignore[attr-defined]
        done += count
        if count < batch:
            return done
