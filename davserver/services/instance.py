"""Values every server process of one deployment shares, made once by whichever asks first
(``instance_secrets``: the token signing key, the database's identity)."""

from __future__ import annotations

from collections.abc import Callable

import sqlalchemy as sa

from davserver.db import Base, Database
from davserver.db.dialect import for_bind, insert_or_ignore
from davserver.db.types import utcnow

_values = Base.metadata.tables["instance_secrets"]
_INSERT = insert_or_ignore(_values, "name")
_VALUE = sa.select(_values.c.value).where(_values.c.name == sa.bindparam("name"))
_DELETE = _values.delete().where(_values.c.name == sa.bindparam("name"))


def shared_value(db: Database, name: str, make: Callable[[], str]) -> str:
    """The value of ``name``, made by ``make`` and stored if there was none: two processes
    asking at once get the same one (the loser's insert is ignored)."""
    with db.write() as session:
        session.execute(
            for_bind(_INSERT, session), {"name": name, "value": make(), "created_at": utcnow()}
        )
        value = session.scalar(_VALUE, {"name": name})
    assert value is not None
    return str(value)


def replace_value(db: Database, name: str, value: str) -> None:
    """Set ``name`` to ``value``, whether it was there or not."""
    with db.write() as session:
        session.execute(_DELETE, {"name": name})
        session.execute(_values.insert(), {"name": name, "value": value, "created_at": utcnow()})


def remove_value(db: Database, name: str) -> None:
    """Remove ``name``, if it was there."""
    with db.write() as session:
        session.execute(_DELETE, {"name": name})


def value_of(db: Database, name: str) -> str | None:
    """The value of ``name``, None when there is none."""
    with db.connect() as conn:
        value = conn.execute(_VALUE, {"name": name}).scalar()
    return None if value is None else str(value)


def replace_if(db: Database, name: str, expected: str, value: str) -> bool:
    """Set ``name`` to ``value`` if it holds ``expected``; whether it did. Of processes asking
    at once, one does it (the others' update finds ``value`` there, once the first committed)."""
    with db.write() as session:
        done = session.execute(
            _values.update()
            .where(_values.c.name == name, _values.c.value == expected)
            .values(value=value)
        )
    return bool(done.rowcount)  # type: ignore[attr-defined]
