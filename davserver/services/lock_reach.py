"""WebDAV locks whose holders may no longer write what they lock, released.

A lock keeps everyone else from writing its item until its holder unlocks it or it expires (up
to ``dav.lock_max_timeout``: a week). When the holder loses the right to write the item (a
grant revoked, lowered or expired, directly or because the grant it was shared on from went, a
removal from the group it came through), they cannot reach it to unlock it any more, and no
one else who may write there can break it: only its manager (owner, group admin, admin) may,
if they notice. Such a lock stops protecting anyone's edit; it only blocks the others.
``LockReach.release`` deletes them, each with a logbook row: right after a change that takes
rights away (``SharingService``, ``GroupAdminService``, ``UserAdminService``), and at every
housekeeping sweep (grants that expired meanwhile; and whatever a failed release left).

A lock row names its item as its space's owner (or a group member) sees it: the namespace of
the space and the URL path there (``/files/...``, ``/groups/<group>/...``); see
``davserver.services.lock_rows``.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import unquote

import sqlalchemy as sa

from davserver.db import Database
from davserver.errors import NotFound
from davserver.models import DavLock, Group, Op, User
from davserver.services import tree
from davserver.services.actor import Actor
from davserver.services.audit import record_audit
from davserver.services.lock_rows import (
    GROUP_PREFIX,
    group_namespace,
    user_namespace,
    wait_for_lock_writers,
)
from davserver.services.namespace import NamespaceService
from davserver.services.permissions import Perm, SpaceOwner

log = logging.getLogger(__name__)


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
        principals: Iterable[str] = (),
        spaces: Iterable[SpaceOwner] = (),
        everywhere: bool = False,
        because: str,
    ) -> int:
        """Delete the unexpired locks of ``principals`` and those in ``spaces`` (every lock,
        ``everywhere``) whose holders may not write their items any more, ``because`` in
        each one's logbook row; how many. It never raises: what it could not judge or release
        is logged and left for the next housekeeping sweep (the change that called it has
        committed already)."""
        try:
            return self._release(actor, list(principals), list(spaces), everywhere, because)
        except Exception:
            log.exception("locks whose holders may no longer write were left in place")
            return 0

    def _release(
        self,
        actor: Actor | None,
        principals: list[str],
        spaces: list[SpaceOwner],
        everywhere: bool,
        because: str,
    ) -> int:
        query = sa.select(DavLock.token, DavLock.namespace, DavLock.root, DavLock.principal).where(
            sa.or_(DavLock.expire < 0, DavLock.expire >= time.time())
        )
        if everywhere:  # the sweep: a lock stored as it looks is the next sweep's
            with self.db.connect() as conn:
                held = [_Held(*row) for row in conn.execute(query.order_by(DavLock.token))]
        else:
            with self.db.write() as session:
                namespaces = _namespaces(session.connection(), spaces)
                if not (principals or namespaces):
                    return 0
                # A LOCK that checked its holder's rights before the change that called this
                # committed may not have stored its lock yet: wait for it.
                wait_for_lock_writers(session, namespaces, principals)
                query = query.where(
                    sa.or_(DavLock.principal.in_(principals), DavLock.namespace.in_(namespaces))
                )
                held = [_Held(*row) for row in session.execute(query.order_by(DavLock.token))]
        void = self._void(held)
        if not void:
            return 0
        released = 0
        with self.db.write() as session:
            for lock, node_id in void:  # in token order: two releases never wait crosswise
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

    def _void(self, held: list[_Held]) -> list[tuple[_Held, uuid.UUID | None]]:
        """The locks of ``held`` whose holders may not write their items (a missing item, a
        missing or disabled holder: none may), with each item's node; one access context and
        one pass of rights per holder."""
        held = [lock for lock in held if _in_a_space(lock)]  # others are not judged here
        by_holder: dict[str, list[_Held]] = defaultdict(list)
        for lock in held:
            by_holder[lock.principal].append(lock)
        void: list[tuple[_Held, uuid.UUID | None]] = []
        with self.db.connect() as conn:
            holders = dict(
                conn.execute(
                    sa.select(User.username, User.id).where(
                        User.username.in_(list(by_holder)), User.is_active
                    )
                ).all()
            )
            roots = _space_roots(conn, {lock.namespace for lock in held})
            items = {lock.token: _item(conn, roots, lock) for lock in held}
        for principal, locks in by_holder.items():
            holder = holders.get(principal)
            try:
                ctx = self.namespace.context_of_user(holder) if holder is not None else None
            except NotFound:
                ctx = None
            ids = [node for lock in locks if (node := items[lock.token]) is not None]
            rights = self.namespace.rights_on(ctx, ids) if ctx is not None and ids else {}
            for lock in locks:
                node_id = items[lock.token]
                if node_id is None or not rights.get(node_id, Perm.NONE) & Perm.WRITE:
                    void.append((lock, node_id))
        return sorted(void, key=lambda pair: pair[0].token)


def _namespaces(conn: sa.Connection, spaces: list[SpaceOwner]) -> list[str]:
    """The lock namespaces of ``spaces`` (those of groups that still exist)."""
    names = [user_namespace(s.owner_id) for s in spaces if s.group_id is None]
    group_ids = [s.group_id for s in spaces if s.group_id is not None]
    if group_ids:
        found = conn.scalars(sa.select(Group.name).where(Group.id.in_(group_ids)))
        names += [group_namespace(name) for name in found]
    return names


def _space_roots(conn: sa.Connection, namespaces: set[str]) -> dict[str, uuid.UUID]:
    """The root folder of each namespace's space that exists (none is made for a lock)."""
    roots: dict[str, uuid.UUID] = {}
    groups = {n[len(GROUP_PREFIX) :]: n for n in namespaces if n.startswith(GROUP_PREFIX)}
    if groups:
        found = conn.execute(sa.select(Group.id, Group.name).where(Group.name.in_(groups)))
        ids = {row.id: row.name for row in found}
        for group_id, view in tree.group_roots(conn).items():
            if group_id in ids:
                roots[groups[ids[group_id]]] = view.id
    for namespace in namespaces - set(groups.values()):
        try:
            owner = uuid.UUID(hex=namespace)
        except ValueError:
            continue  # no namespace of a space (a lock on a virtual folder's URL)
        home = tree.home_root(conn, owner)
        if home is not None:
            roots[namespace] = home.id
    return roots


def _in_a_space(lock: _Held) -> bool:
    """Whether the lock's root is an item's URL in its space (``/files/...`` in a user's
    namespace, ``/groups/<group>/...`` in a group's)."""
    if lock.namespace.startswith(GROUP_PREFIX):
        top = "/groups/" + lock.namespace[len(GROUP_PREFIX) :]
        return unquote(lock.root) == top or unquote(lock.root).startswith(top + "/")
    return lock.root == "/files" or lock.root.startswith("/files/")


def _item(conn: sa.Connection, roots: dict[str, uuid.UUID], lock: _Held) -> uuid.UUID | None:
    """The node a lock's root (``_in_a_space``) names in its space; None when there is none."""
    start = roots.get(lock.namespace)
    if start is None:
        return None
    names = [unquote(part) for part in lock.root.split("/") if part]
    names = names[2:] if lock.namespace.startswith(GROUP_PREFIX) else names[1:]
    found = tree.resolve_from(conn, start, names)[-1]
    return found.id if found is not None else None
