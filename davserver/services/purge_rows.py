"""The rows of a purge (``davserver.services.trash_purge``): what a trash item holds and
which packages pin it, counted before it is marked, and its rows removed a batch at a time."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from davserver.db import Base
from davserver.db.dialect import by_dialect, for_bind, join_by_key
from davserver.db.types import UTCDateTime, utcnow
from davserver.models import NodeKind
from davserver.services import tree
from davserver.services.grant_support import recheck_moved, space_of


def holder(row: Any) -> uuid.UUID | None:
    """Whose trash lists a trashed node (with its owner_id, group_id and deleted_by): the
    owner's for their own space, the deleter's for a group's."""
    return row.deleted_by if row.group_id is not None else row.owner_id


def _held_by_holder() -> sa.ColumnElement[bool]:
    """The package_items row is in a live package of :holder_id's (one expired at :now is
    404 everywhere, so its creator could not take the item out: it holds nothing back)."""
    own = sa.select(_packages.c.id).where(
        _packages.c.created_by == sa.bindparam("holder_id", type_=sa.Uuid),
        sa.or_(
            _packages.c.expires_at.is_(None),
            _packages.c.expires_at > sa.bindparam("now", type_=UTCDateTime),
        ),
    )
    return _items_t.c.package_id.in_(own)


def _trashed_with(postgres: bool) -> sa.CTE:
    """The trash item :root_id and what went to the trash with it: the nodes below it with no
    ``deleted_at`` of their own (an item deleted before it, and what is below that, is not)."""
    sub = sa.select(_n.c.id).where(_n.c.id == sa.bindparam("root_id", type_=sa.Uuid))
    below = sub.cte("below", recursive=True)
    steps, child = tree.walk_step(below, ("id",), up=False, postgres=postgres, live=True)
    return below.union_all(sa.select(child.c.id).select_from(steps))


def _pins_below(postgres: bool, *, own: bool) -> tuple[Any, Any, Any, Any]:
    """(rows, below, versions, pins) for :root_id and what went to the trash with it: its
    versions, and the package items pinning them in the packages of :holder_id (``own``) or
    in everyone else's."""
    below = _trashed_with(postgres)
    rows, versions = join_by_key(
        below,
        _v,
        _v.c.node_id == below.c.id,
        ("id",),
        "versions",
        one=False,
        postgres=postgres,
        optional=True,
    )
    whose = _held_by_holder() if own else ~_held_by_holder()
    rows, pins = join_by_key(
        rows,
        _items_t,
        sa.and_(_items_t.c.version_id == versions.c.id, whose),
        ("id", "package_id"),
        "pins",
        one=False,
        postgres=postgres,
        optional=own,
    )
    return rows, below, versions, pins


def _foreign_pins(postgres: bool) -> sa.Select[Any]:
    """(id, package_id) of the items of other users' packages pinning a version of :root_id
    or of what went to the trash with it (:holder_id: whose trash it is in)."""
    rows, _below, _versions, pins = _pins_below(postgres, own=False)
    return sa.select(pins.c.id, pins.c.package_id).select_from(rows)


def _subtree_counts(postgres: bool) -> sa.Select[int, int, int]:
    """(nodes, versions, versions pinned by :holder_id's packages) of :root_id and what went
    to the trash with it."""
    rows, below, versions, pins = _pins_below(postgres, own=True)
    return sa.select(
        sa.func.count(sa.distinct(below.c.id)),
        sa.func.count(sa.distinct(versions.c.id)),
        sa.func.count(pins.c.id),
    ).select_from(rows)


def remove_batch(
    session: Session, root_id: uuid.UUID, folders: Sequence[uuid.UUID], budget: int
) -> tuple[int, bool]:
    """One batch of a purge (``TrashPurge._remove``): at most ``budget`` rows below the marked item
    ``root_id`` deleted, from its ``folders`` (live folders, deepest first, itself last) in
    order, and the item itself once they are all empty. Returns how many of ``folders`` it
    emptied, and whether the item is gone (or was already)."""
    root = session.execute(
        sa.select(_n.c.parent_id, _n.c.owner_id, _n.c.group_id)
        .where(_n.c.id == root_id)
        .with_for_update()
    ).first()
    if root is None:
        return len(folders), True
    emptied = 0
    now_under: set[uuid.UUID] | None = None  # the chain of the folder the item is in
    for folder in folders:
        # Items deleted from inside this one before it was are trash items of their own: out
        # of the way, into the folder the purged item is in, where the grants on this one and
        # the folders up to the item no longer reach them.
        moving = {"folder_id": folder, "new_parent_id": root.parent_id}
        if session.execute(_MOVE_EARLIER, moving).rowcount:  # type: ignore[attr-defined]
            if now_under is None:
                now_under = tree.chain_ids(session, root.parent_id)
            space = space_of(root.owner_id, root.group_id)
            because = "the folder it was deleted from was purged"
            recheck_moved(session, None, space, folder, now_under, because)
        ids = session.scalars(_LIVE_CHILDREN, {"folder_id": folder, "limit": budget}).all()
        if ids:
            _release_pins(session, ids)
            session.execute(_DELETE_CHILDREN, {"folder_id": folder, "ids": ids})
            budget -= len(ids)
        if budget <= 0:
            return emptied, False  # this one may hold more
        emptied += 1
    _release_pins(session, [root_id])
    session.execute(sa.delete(_n).where(_n.c.id == root_id))
    return emptied, True


def _release_pins(session: Session, node_ids: Sequence[uuid.UUID]) -> None:
    """Take the versions of ``node_ids`` out of the packages that pin them (the item stays
    there, answering as deleted) and mark those packages changed."""
    pins = session.execute(_PINS_OF_NODES, {"ids": list(node_ids)}).all()
    if not pins:
        return
    session.execute(_RELEASE_PIN, [{"item_id": pin.id} for pin in pins])
    now = utcnow()
    session.execute(
        _TOUCH_PACKAGE, [{"package_id": p, "now": now} for p in {pin.package_id for pin in pins}]
    )


def folders_deepest_first(conn: Session | sa.Connection, root_id: uuid.UUID) -> list[uuid.UUID]:
    """The trash item ``root_id`` and the live folders below it, deepest first: the order
    ``remove_batch`` empties them in."""
    return list(conn.scalars(for_bind(_FOLDERS_DEEPEST_FIRST, conn), {"root_id": root_id}))


def _folders_deepest_first(postgres: bool) -> sa.Select[Any]:
    """:root_id and the live folders below it, deepest first: each is emptied after every
    folder inside it was, so deleting what it holds deletes nothing further down."""
    top = sa.select(_n.c.id, sa.literal(0).label("depth")).where(
        _n.c.id == sa.bindparam("root_id", type_=sa.Uuid)
    )
    walk = top.cte("folders", recursive=True)
    steps, child = tree.walk_step(walk, ("id", "kind"), up=False, postgres=postgres)
    walk = walk.union_all(
        sa.select(child.c.id, walk.c.depth + 1)
        .select_from(steps)
        .where(child.c.kind == NodeKind.FOLDER.value)
    )
    return sa.select(walk.c.id).order_by(walk.c.depth.desc())


_n = Base.metadata.tables["nodes"]
_v = Base.metadata.tables["file_versions"]
_items_t = Base.metadata.tables["package_items"]
_packages = Base.metadata.tables["packages"]
SUBTREE_COUNTS = by_dialect(_subtree_counts)
FOREIGN_PINS = by_dialect(_foreign_pins)
_RELEASE_PIN = (
    sa.update(_items_t)
    .where(_items_t.c.id == sa.bindparam("item_id", type_=sa.Uuid))
    .values(version_id=None)
)
_TOUCH_PACKAGE = (
    sa.update(_packages)
    .where(_packages.c.id == sa.bindparam("package_id", type_=sa.Uuid))
    .values(modified_at=sa.bindparam("now"))
)
_FOLDERS_DEEPEST_FIRST = by_dialect(_folders_deepest_first)
_IN_FOLDER = _n.c.parent_id == sa.bindparam("folder_id", type_=sa.Uuid)
_MOVE_EARLIER = (
    sa.update(_n)
    .where(_IN_FOLDER, _n.c.deleted_at.is_not(None))
    .values(parent_id=sa.bindparam("new_parent_id", type_=sa.Uuid))
)
_LIVE_CHILDREN = (
    sa.select(_n.c.id).where(_IN_FOLDER, _n.c.deleted_at.is_(None)).limit(sa.bindparam("limit"))
)
# The folder and deleted_at again: a row that was restored meanwhile (PostgreSQL's READ
# COMMITTED reads the ids before a restore commits) is rechecked, and stays.
_DELETE_CHILDREN = sa.delete(_n).where(
    _n.c.id.in_(sa.bindparam("ids", expanding=True, type_=sa.Uuid)),
    _IN_FOLDER,
    _n.c.deleted_at.is_(None),
)
_NODE_IDS = sa.bindparam("ids", expanding=True, type_=sa.Uuid)
# The items pinning a version of the nodes, and those of empty files (no version) pinning the
# nodes themselves, whose node_id the nodes' deletion clears (ON DELETE SET NULL): each is a
# change to its package (``PackageCache`` relies on every one updating ``modified_at``).
_PINS_OF_NODES = sa.union_all(
    sa.select(_items_t.c.id, _items_t.c.package_id)
    .join(_v, _v.c.id == _items_t.c.version_id)
    .where(_v.c.node_id.in_(_NODE_IDS)),
    sa.select(_items_t.c.id, _items_t.c.package_id).where(
        _items_t.c.node_id.in_(_NODE_IDS), _items_t.c.version_id.is_(None)
    ),
)
