"""The ``locks`` table as the account services see it: whose locks are where.

Locks are taken and checked through WsgiDAV (``providers.lock_storage``); a lock is the
principal's (its username) and lives in the namespace of the space its item is in: a user's
own (``user_namespace``) or a group's (``group_namespace``). When an account or a membership
ends, the locks it held would keep everyone else from the files until they expire (up to
``dav.lock_max_timeout``), with no one left to unlock them: they go with it.
"""

from __future__ import annotations

import uuid

import sqlalchemy as sa
from sqlalchemy.orm import Session

from davserver.models import DavLock


def user_namespace(user_id: uuid.UUID) -> str:
    """The lock namespace of a user's own space."""
    return user_id.hex


GROUP_PREFIX = "group:"


def group_namespace(group_name: str) -> str:
    """The lock namespace of a group's space (shared by its members)."""
    return GROUP_PREFIX + group_name


def release_locks_of(session: Session, username: str, *, namespace: str | None = None) -> int:
    """Delete the locks ``username`` holds (in ``namespace`` only, if given), in the caller's
    transaction; returns how many."""
    released = sa.delete(DavLock).where(DavLock.principal == username)
    if namespace is not None:
        released = released.where(DavLock.namespace == namespace)
    return len(session.execute(released.returning(DavLock.token)).all())
