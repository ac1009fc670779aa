"""The few statements whose SQL differs between PostgreSQL and SQLite."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

T = TypeVar("T")


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


def for_bind(statements: dict[str, Any], bind: Session | sa.Connection) -> Any:
    return statements["postgresql" if is_postgres(bind) else "sqlite"]
