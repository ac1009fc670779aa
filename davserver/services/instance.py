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


def replace_once(db: Database, mark: str, name: str, value: str) -> str | None:
    """If ``mark`` is there: remove it and set ``name`` to ``value``, in one transaction, and
    return what ``mark`` held; else None. Of processes asking at once, one does it (the others'
    delete finds nothing, once the first committed)."""
    with db.write() as session:
        held = session.scalar(_DELETE.returning(_values.c.value), {"name": mark})
        if held is None:
            return None
        session.execute(_DELETE, {"name": name})
        session.execute(_values.insert(), {"name": name, "value": value, "created_at": utcnow()})
    return str(held)
