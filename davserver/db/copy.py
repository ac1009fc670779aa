"""Copy every row of one davserver database into another, empty one: the move from the
embedded SQLite to PostgreSQL (or back, or to a second copy).

- Both databases are at the newest schema; the caller brings the target there first.
- The target holds no data yet (no user, file or blob); rows the migrations seed (the roles)
  are replaced by the source's.
- The source is read in one snapshot, and the target written in one transaction: a copy that
  fails leaves the target as it was, and one taken while the server runs is consistent
  (without what was written after it started).
- Rows keep their ids, so sessions, tokens, API keys, locks and the logbook carry over.
- A table that refers to itself (``nodes.parent_id``, ``refresh_tokens.replaced_by_id``) is
  copied in the order of that tree, the rows it refers to first. A foreign key to a table
  copied later (``nodes.current_version_id``) is written NULL at first and set once every
  row is in.
- On PostgreSQL, integer id sequences (the logbook's) then start past the copied ids.
- Blobs are not copied: the target's server uses the same blob store.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from davserver.db.engine import Database
from davserver.errors import Conflict

# Tables whose rows tell that a database is in use: a copy never goes over them.
_IN_USE = ("users", "nodes", "blobs")
BATCH = 1000

ProgressCallback = Callable[[str, int], None]


@dataclass
class CopyReport:
    rows: dict[str, int] = field(default_factory=dict)  # table -> rows copied
    seconds: float = 0.0

    @property
    def total(self) -> int:
        return sum(self.rows.values())


def copy_database(
    source: Database,
    target: Database,
    metadata: sa.MetaData,
    *,
    batch: int = BATCH,
    progress: ProgressCallback | None = None,
    before_commit: Callable[[Session, CopyReport], None] | None = None,
) -> CopyReport:
    """Copy every table of ``metadata`` (every model's) from ``source`` into ``target`` (see
    the module doc); ``before_commit`` may add to the target's transaction (a logbook row).

    Raises Conflict, changing nothing, when the target holds data already, and
    CopyFailed, changing nothing, when it refuses a row.
    """
    started = time.monotonic()
    report = CopyReport()
    tables = metadata.sorted_tables
    later = _forward_references(tables)
    with _snapshot(source) as src, target.write() as session:
        dst = session.connection()
        _check_unused(dst, metadata)
        for table in reversed(tables):
            dst.execute(table.delete())
        for table in tables:
            with _refused_rows(table):
                report.rows[table.name] = _copy_rows(src, dst, table, later[table.name], batch)
            if progress is not None:
                progress(table.name, report.rows[table.name])
        for table in tables:
            if later[table.name]:
                with _refused_rows(table):
                    _set_forward_references(src, dst, table, later[table.name], batch)
        if dst.dialect.name == "postgresql":
            _move_sequences(dst, tables)
        report.seconds = time.monotonic() - started
        if before_commit is not None:
            before_commit(session, report)
    return report


class CopyFailed(Exception):
    """The target refused a row (one the source's engine let in, such as a string longer
    than its column on SQLite); the target is left as it was."""


@contextmanager
def _refused_rows(table: sa.Table) -> Iterator[None]:
    """The target's refusal as CopyFailed naming the table and what the database said
    (not the statement and its thousand rows of parameters)."""
    try:
        yield
    except sa.exc.DBAPIError as exc:
        if isinstance(exc, sa.exc.OperationalError | sa.exc.InterfaceError):
            raise  # the database out of reach, reported as such
        said = str(exc.orig if exc.orig is not None else exc).strip().splitlines()
        raise CopyFailed(f"{table.name}: {said[0] if said else type(exc).__name__}") from exc


def _forward_references(tables: list[sa.Table]) -> dict[str, list[str]]:
    """Per table, its foreign-key columns that point at a table copied later."""
    order = {table.name: index for index, table in enumerate(tables)}
    return {
        table.name: sorted(
            {
                fk.parent.name
                for fk in table.foreign_keys
                if order[fk.column.table.name] > order[table.name]
            }
        )
        for table in tables
    }


def _referred_first(table: sa.Table) -> sa.Select[Any]:
    """Every row of ``table``; where it refers to itself, each after the row it refers to
    (by depth in that tree, a recursive query)."""
    self_references = [fk for fk in table.foreign_keys if fk.column.table is table]
    if not self_references:
        return sa.select(table)
    if len(self_references) > 1:
        raise NotImplementedError(f"{table.name} refers to itself more than once")
    parent, key = self_references[0].parent, self_references[0].column
    top = sa.select(key.label("id"), sa.literal(0).label("depth")).where(parent.is_(None))
    tree = top.cte("tree", recursive=True)
    child = table.alias("child")
    tree = tree.union_all(
        sa.select(child.c[key.name], tree.c.depth + 1).join(tree, child.c[parent.name] == tree.c.id)
    )
    return sa.select(table).join(tree, key == tree.c.id).order_by(tree.c.depth)


@contextmanager
def _snapshot(db: Database) -> Iterator[sa.Connection]:
    """A read transaction that sees the database as it was when it began."""
    with db.engine.connect() as conn:
        if not db.is_sqlite:  # SQLite's read transaction (WAL) is a snapshot already
            conn = conn.execution_options(isolation_level="REPEATABLE READ")
        with conn.begin():
            yield conn


def _check_unused(dst: sa.Connection, metadata: sa.MetaData) -> None:
    """Conflict unless the target is empty, and kept so until the copy commits: on
    PostgreSQL its "in use" tables are locked against other writers first (SQLite's write
    transaction holds the whole file). Otherwise a second copy started meanwhile found the
    target empty too, and failed at its first row with a database error (a duplicate key)
    once the first one committed."""
    if dst.dialect.name == "postgresql":
        quote = dst.dialect.identifier_preparer.quote
        names = ", ".join(quote(name) for name in _IN_USE)
        dst.execute(sa.text(f"LOCK TABLE {names} IN EXCLUSIVE MODE"))
    for name in _IN_USE:
        table = metadata.tables[name]
        count = dst.execute(sa.select(sa.func.count()).select_from(table)).scalar_one()
        if count:
            raise Conflict(
                f"the target database holds data already ({count} row(s) in {name}); "
                "copy into an empty one"
            )


def _copy_rows(
    src: sa.Connection, dst: sa.Connection, table: sa.Table, later: list[str], batch: int
) -> int:
    copied = 0
    rows = src.execution_options(yield_per=batch).execute(_referred_first(table))
    for chunk in rows.partitions(batch):
        values = [{**row._mapping, **dict.fromkeys(later)} for row in chunk]
        dst.execute(table.insert(), values)
        copied += len(values)
    expected = src.execute(sa.select(sa.func.count()).select_from(table)).scalar_one()
    if copied != expected:  # rows in a loop of references, which no foreign key allows
        raise RuntimeError(f"{table.name}: copied {copied} of {expected} rows")
    return copied


def _set_forward_references(
    src: sa.Connection, dst: sa.Connection, table: sa.Table, columns: list[str], batch: int
) -> None:
    """Set ``columns`` of the copied rows to the source's values (where not NULL)."""
    key = list(table.primary_key.columns)
    found = sa.select(*key, *(table.c[name] for name in columns)).where(
        sa.or_(*(table.c[name].is_not(None) for name in columns))
    )
    update = (
        table.update()
        .where(*(column == sa.bindparam(f"key_{column.name}") for column in key))
        .values({name: sa.bindparam(f"new_{name}") for name in columns})
    )
    rows = src.execution_options(yield_per=batch).execute(found)
    for chunk in rows.partitions(batch):
        values = [
            {
                **{f"key_{column.name}": row._mapping[column.name] for column in key},
                **{f"new_{name}": row._mapping[name] for name in columns},
            }
            for row in chunk
        ]
        dst.execute(update, values)


def _move_sequences(dst: sa.Connection, tables: list[sa.Table]) -> None:
    """Start each serial id's sequence past the largest copied id (PostgreSQL)."""
    quote = dst.dialect.identifier_preparer.quote
    for table in tables:
        column = table.autoincrement_column
        if column is None:
            continue
        largest = f"coalesce(max({quote(column.name)}), 0) + 1"
        dst.execute(
            sa.text(
                f"SELECT setval(pg_get_serial_sequence(:table, :column), {largest}, false)"
                f" FROM {quote(table.name)}"
            ),
            {"table": table.name, "column": column.name},
        )
