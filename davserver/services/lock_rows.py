"""The ``locks`` table as the account services see it: whose locks are where.

Locks are taken and checked through WsgiDAV (``providers.lock_storage``); a lock is the
principal's (its username) and lives in the namespace of the space its item is in: a user's
own (``user_namespace``) or a group's (``group_namespace``). When an account or a membership
ends, the locks it held would keep everyone else from the files until they expire (up to
``dav.lock_max_timeout``), with no one left to unlock them: they go with it.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from typing import Final

import sqlalchemy as sa
from sqlalchemy.orm import Session

from davserver.models import DavLock

# The key space of the transaction-scoped PostgreSQL advisory locks of a namespace ("lock"):
# exclusive for a writer of locks (``providers.lock_storage``), shared for a write transaction
# that checked them, and for what waits for the locks being stored (``wait_for_lock_writers``).
PG_LOCKS_CLASS: Final = 0x6C6F636B


def user_namespace(user_id: uuid.UUID) -> str:
    """The lock namespace of a user's own space."""
    return user_id.hex


GROUP_PREFIX = "group:"


def group_namespace(group_name: str) -> str:
    """The lock namespace of a group's space (shared by its members)."""
    return GROUP_PREFIX + group_name


def principal_turn(username: str) -> str:
    """The advisory lock a LOCK also holds while it stores a lock of ``username``'s: no
    namespace is spelt so (a user's is hex, a group's starts with ``GROUP_PREFIX``)."""
    return "principal:" + username


# The shared turns at several keys (namespaces, ``principal_turn``s), in the order given.
_TURNS = (
    sa.func.unnest(sa.bindparam("keys", type_=sa.ARRAY(sa.Text)))
    .table_valued("key")
    .render_derived(name="turns")
)
_SHARED_TURNS = sa.select(
    sa.func.pg_advisory_xact_lock_shared(PG_LOCKS_CLASS, sa.func.hashtext(_TURNS.c.key))
)


def take_shared_turns(session: Session, keys: list[str]) -> None:
    """PostgreSQL: the shared turns at ``keys``, in their order, until the caller's
    transaction ends (one statement): a writer of locks there, which takes its turn
    exclusively, waits for them, or they for it."""
    session.execute(_SHARED_TURNS, {"keys": keys})


def wait_for_lock_writers(
    session: Session, namespaces: Iterable[str], principals: Iterable[str]
) -> None:
    """Wait, in the caller's transaction, until the LOCKs storing locks in ``namespaces`` or
    for ``principals`` have committed, and keep new ones from starting until it ends: what is
    read of the locks then is all there will be of those that checked their holder's rights
    before the caller began (PostgreSQL; on SQLite a write transaction queues behind every
    writer already). Namespaces first, then holders, each sorted: the order a LOCK takes
    them in."""
    if session.get_bind().dialect.name == "postgresql":
        take_shared_turns(
            session, sorted(set(namespaces)) + sorted({principal_turn(p) for p in principals})
        )


def release_locks_of(session: Session, username: str, *, namespace: str | None = None) -> int:
    """Delete the locks ``username`` holds (in ``namespace`` only, if given), in the caller's
    transaction; returns how many."""
    released = sa.delete(DavLock).where(DavLock.principal == username)
    if namespace is not None:
        released = released.where(DavLock.namespace == namespace)
    return len(session.execute(released.returning(DavLock.token)).all())
