"""The few statements whose SQL differs between PostgreSQL and SQLite."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

T = TypeVar("T")

# Rows a writer changes but never deletes are locked FOR NO KEY UPDATE (PostgreSQL), not FOR
# UPDATE: a row inserted elsewhere that refers to them (a logbook row, a version, a child)
# holds a key-share lock on them until its transaction ends, which FOR UPDATE waits for. With
# a third writer in the ring, that wait was a deadlock (a 500, or a batch of download rows
# lost from the logbook). Neither id is ever changed, so nothing needs the stronger lock.
NO_KEY_UPDATE: dict[str, Any] = {"key_share": True}


def is_postgres(bind: Session | sa.Connection) -> bool:
    engine = bind.get_bind() if isinstance(bind, Session) else bind
    return engine.dialect.name == "postgresql"


def insert_or_ignore(table: sa.Table, *index_elements: str) -> dict[str, Any]:
    """``INSERT ... ON CONFLICT (index_elements) DO NOTHING`` per dialect, keyed by its name.

    Build once at import time; pick with ``for_bind``.
    """
    return {
        "postgresql": postgresql.insert(table).on_conflict_do_nothing(
            index_elements=list(index_elements)
        ),
        "sqlite": sqlite.insert(table).on_conflict_do_nothing(index_elements=list(index_elements)),
    }


def by_dialect(build: Callable[[bool], T]) -> dict[str, T]:
    """``build(postgres)`` for each dialect, keyed by its name; pick with ``for_bind``."""
    return {"postgresql": build(True), "sqlite": build(False)}


def join_by_key(
    outer: Any,
    table: sa.Table,
    on: sa.ColumnElement[bool],
    columns: Sequence[str],
    name: str,
    *,
    one: bool,
    postgres: bool,
    optional: bool = False,
) -> tuple[Any, Any]:
    """``outer`` joined (outer-joined with ``optional``) to the rows of ``table`` that ``on``
    picks by key from ``outer``'s columns (one row with ``one``), and those rows (``.c``).

    On PostgreSQL a LATERAL subquery of ``columns`` that the planner keeps apart: LIMIT 1
    (``one``) or OFFSET 0 stops it from merging the lookup into a join. Merged, a join planned
    while the tables were small is a scan of the looked-up table, and psycopg's prepared
    statement keeps that plan as the table grows. SQLite, which looks each row up by key
    anyway, gets the plain join."""
    found: Any = table
    if postgres:
        lookup = sa.select(*(table.c[c] for c in columns)).where(on)
        fenced = lookup.limit(1) if one else lookup.offset(sa.literal_column("0"))
        found, on = fenced.lateral(name), sa.true()
    return (outer.outerjoin(found, on) if optional else outer.join(found, on)), found


def unnested(name: str, type_: Any) -> Any:
    """The list parameter ``:name`` as a one-column table ``<name>(value)`` (PostgreSQL), to
    look each element up by key with ``join_by_key``: as ``IN (...)``, a plan made while the
    table was small scanned it."""
    values = sa.bindparam(name, type_=postgresql.ARRAY(type_))
    return sa.func.unnest(values).table_valued("value").render_derived(name=name)


def for_bind(statements: dict[str, Any], bind: Session | sa.Connection) -> Any:
    return statements["postgresql" if is_postgres(bind) else "sqlite"]
