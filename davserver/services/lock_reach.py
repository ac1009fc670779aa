"""WebDAV locks whose holders may no longer write what they lock, released.

A lock keeps everyone else from writing its item until its holder unlocks it or it expires (up
to ``dav.lock_max_timeout``: a week). When the holder loses the right to write the item (a
grant revoked, lowered or expired, a removal from the group it came from), they cannot reach
it to unlock it any more, and no one else who may write there can break it: only its
manager (owner, group admin, admin) may, if they notice. Such a lock stops protecting anyone's
edit; it only blocks the others. ``LockReach.release`` deletes them, each with a logbook row:
right after a change that takes rights away (``SharingService``, ``GroupAdminService``), and
at every housekeeping sweep (grants that expired meanwhile).

A lock row names its item as its space's owner (or a group member) sees it: the namespace of
the space and the URL path there (``/files/...``, ``/groups/<group>/...``); see
``davserver.services.lock_rows``.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote

import sqlalchemy as sa

from davserver.db import Database
from davserver.errors import NotFound
from davserver.models import DavLock, Group, Op, User
from davserver.services import tree
from davserver.services.actor import Actor
from davserver.services.audit import record_audit
from davserver.services.lock_rows import GROUP_PREFIX, group_namespace, user_namespace
from davserver.services.namespace import NamespaceService
from davserver.services.permissions import Perm


@dataclass(frozen=True)
class _Held:
    token: str
    namespace: str
    root: str
    principal: str


class LockReach:
    def __init__(self, db: Database, namespace: NamespaceService) -> None:
        self.db = db
        self.namespace = namespace

    def release(
        self,
        actor: Actor | None,
        *,
        principals: Iterable[str] | None = None,
        namespaces: Iterable[str] | None = None,
        because: str,
    ) -> int:
        """Delete the unexpired locks (of ``principals`` only, in ``namespaces`` only, when
        given) whose holders may not write their items any more, ``because`` in each one's
        logbook row; how many."""
        query = sa.select(DavLock.token, DavLock.namespace, DavLock.root, DavLock.principal).where(
            sa.or_(DavLock.expire < 0, DavLock.expire >= time.time())
        )
        if principals is not None:
            query = query.where(DavLock.principal.in_(list(principals)))
        if namespaces is not None:
            query = query.where(DavLock.namespace.in_(list(namespaces)))
        with self.db.connect() as conn:
            held = [_Held(*row) for row in conn.execute(query)]
        void = []
        for lock in held:
            may_write, node_id = self._reach(lock)
            if not may_write:
                void.append((lock, node_id))
        if not void:
            return 0
        released = 0
        with self.db.write() as session:
            for lock, node_id in void:
                gone = session.execute(
                    sa.delete(DavLock).where(DavLock.token == lock.token).returning(DavLock.token)
                ).first()
                if gone is None:
                    continue  # unlocked meanwhile
                released += 1
                record_audit(
                    session,
                    actor,
                    Op.LOCK_DELETE,
                    node_id=node_id,
                    details={
                        "token": lock.token,
                        "root": lock.root,
                        "holder": lock.principal,
                        "because": because,
                    },
                )
        return released

    def release_in_space(
        self, actor: Actor | None, owner_id: uuid.UUID, group_id: uuid.UUID | None, because: str
    ) -> int:
        """``release`` of the locks in the space of a node (its ``owner_id``, ``group_id``)."""
        if group_id is None:
            return self.release(actor, namespaces=[user_namespace(owner_id)], because=because)
        with self.db.connect() as conn:
            name = conn.scalar(sa.select(Group.name).where(Group.id == group_id))
        if name is None:
            return 0
        return self.release(actor, namespaces=[group_namespace(name)], because=because)

    def _reach(self, lock: _Held) -> tuple[bool, uuid.UUID | None]:
        """Whether the lock's holder may still write the item it locks (a missing one: no),
        and the item's node."""
        with self.db.connect() as conn:
            holder = conn.scalar(
                sa.select(User.id).where(User.username == lock.principal, User.is_active)
            )
            group: Any = None
            if lock.namespace.startswith(GROUP_PREFIX):
                group = conn.scalar(
                    sa.select(Group.id).where(Group.name == lock.namespace[len(GROUP_PREFIX) :])
                )
        if holder is None:
            return False, None
        names = [unquote(part) for part in lock.root.split("/") if part]
        try:
            ctx = self.namespace.context_of_user(holder)
            if group is not None:
                start = self.namespace.files.group_root_id(group, holder)
                names = names[2:]  # /groups/<group>/...
            elif lock.namespace.startswith(GROUP_PREFIX):
                return False, None  # the group is gone
            else:
                start = self.namespace.files.home_id(uuid.UUID(hex=lock.namespace))
                names = names[1:]  # /files/...
        except (NotFound, ValueError):
            return False, None
        with self.db.connect() as conn:
            item = tree.resolve_from(conn, start, names)[-1]
        if item is None:
            return False, None
        # Rights as any URL reaching it sums them (a grantee cannot read the owner's folders
        # above what was shared with them).
        return bool(self.namespace.rights_on(ctx, [item.id])[item.id] & Perm.WRITE), item.id
