"""Reading packages and what to pin: the rows behind ``PackageService``.

``load_packages`` turns package rows into ``PackageView``s with their items (one query for all
the items); ``pins_below`` finds what adding a file or folder pins, inside the adding
transaction (one recursive query for a whole folder).
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections import defaultdict
from collections.abc import Iterable
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from davserver.db import Base
from davserver.db.dialect import by_dialect, for_bind, join_by_key
from davserver.errors import Conflict, NotFound
from davserver.models import NodeKind
from davserver.services import tree
from davserver.services.package_archive import EMPTY_SHA256, PackageView, PinnedItem
from davserver.services.tree import NodeView, is_client_metadata, name_key
from davserver.services.zipstream import archive_names


def pins_below(
    session: Session,
    node: NodeView,
    prefix: str,
    *,
    allow_empty: bool = False,
    make_safe: bool = False,
) -> list[dict[str, Any]]:
    """What adding ``node`` at ``prefix`` pins, read in the adding transaction: the file's
    current version (none for an empty file), or each live file below the folder at
    ``prefix/<relative path>`` (desktop clutter such as ``.DS_Store`` left out). A folder
    without files is a Conflict unless ``allow_empty``. With ``make_safe`` (a folder's zip,
    where nobody chose the paths) names a zip cannot hold, or that collide there, are made
    safe and unique (``archive_names``); without, they are left for the package's checks to
    refuse."""
    rows = session.execute(for_bind(_SUBTREE, session), {"root_id": node.id}).all()
    if not rows or rows[0].deleted_at is not None:
        raise NotFound("the item is gone")
    if not node.is_folder:
        return [_pin(rows[0], prefix)]
    paths: dict[uuid.UUID, str] = {node.id: prefix}
    children: dict[uuid.UUID | None, list[Any]] = defaultdict(list)
    for row in rows[1:]:
        children[row.parent_id].append(row)
    pins: list[dict[str, Any]] = []
    stack = [node.id]
    while stack:
        folder = stack.pop()
        kept = [row for row in children.get(folder, ()) if not is_client_metadata(row.name)]
        names = [name_key(row.name) for row in kept]
        if make_safe:
            names = archive_names(names)
        for row, name in zip(kept, names, strict=True):
            paths[row.id] = f"{paths[folder]}/{name}"
            if row.kind == NodeKind.FOLDER:
                stack.append(row.id)
            else:
                pins.append(_pin(row, paths[row.id]))
    if not pins and not allow_empty:
        raise Conflict(f"{node.name!r} holds no file to pin")
    return pins


def pinned_items(
    conn: sa.Connection, pins: list[dict[str, Any]], added_at: dt.datetime
) -> list[PinnedItem]:
    """``pins`` (from ``pins_below``) as items with their versions' sizes and blobs, sorted
    by path, as a package that is never stored would hold them (a folder's zip)."""
    versions: dict[uuid.UUID, Any] = {}
    ids = [pin["version_id"] for pin in pins if pin["version_id"] is not None]
    for start in range(0, len(ids), _IN_BATCH):
        for found in conn.execute(_VERSIONS, {"ids": ids[start : start + _IN_BATCH]}):
            versions[found.version_id] = found
    items = [
        _pinned(
            pin["node_id"],
            pin["path_in_archive"],
            pin["node_id"],
            pin["mtime"],
            added_at,
            versions.get(pin["version_id"]),
        )
        for pin in pins
    ]
    return sorted(items, key=lambda item: item.path)


def _pinned(
    item_id: uuid.UUID,
    path: str,
    node_id: uuid.UUID | None,
    mtime: dt.datetime,
    added_at: dt.datetime,
    version: Any,
) -> PinnedItem:
    """An item from a row with ``_VERSION_COLUMNS`` (None, or None in them, for an empty
    file, which has no version)."""
    blob_id = version.blob_id if version is not None else None
    return PinnedItem(
        id=item_id,
        path=path,
        node_id=node_id,
        version_id=version.version_id if blob_id is not None else None,
        version_no=version.version_no if blob_id is not None else None,
        size=version.size if blob_id is not None else 0,
        blob_id=blob_id,
        sha256=version.sha256 if blob_id is not None else EMPTY_SHA256,
        crc32=version.crc32 if blob_id is not None else 0,
        storage_key=version.storage_key if blob_id is not None else None,
        mtime=mtime,
        added_at=added_at,
    )


def _pin(row: Any, path: str) -> dict[str, Any]:
    return {
        "node_id": row.id,
        "version_id": row.version_id,
        "path_in_archive": path,
        "mtime": row.version_mtime or row.uploaded_at or row.node_mtime or row.modified_at,
    }


def load_packages(conn: sa.Connection, rows: Iterable[Any]) -> list[PackageView]:
    """Package rows (``LIVE_PACKAGES``) as views, with all their items read in one query."""
    rows = list(rows)
    items: dict[uuid.UUID, list[PinnedItem]] = defaultdict(list)
    if rows:
        for row in conn.execute(_ITEMS, {"ids": [row.id for row in rows]}):
            items[row.package_id].append(
                _pinned(row.id, row.path_in_archive, row.node_id, row.mtime, row.added_at, row)
            )
    return [
        PackageView(
            id=row.id,
            name=row.name,
            description=row.description,
            created_by=row.created_by,
            owner=row.username,
            created_at=row.created_at,
            expires_at=row.expires_at,
            modified_at=row.modified_at or row.created_at,
            # Code-point order, the same on every engine (database collations differ).
            items=tuple(sorted(items[row.id], key=lambda item: item.path)),
        )
        for row in rows
    ]


_p = Base.metadata.tables["packages"]
_pi = Base.metadata.tables["package_items"]
_n = Base.metadata.tables["nodes"]
_v = Base.metadata.tables["file_versions"]
_b = Base.metadata.tables["blobs"]
_users = Base.metadata.tables["users"]

LIVE_PACKAGES = (
    sa.select(
        _p.c.id,
        _p.c.name,
        _p.c.description,
        _p.c.created_by,
        _users.c.username,
        _p.c.created_at,
        _p.c.expires_at,
        _p.c.modified_at,
    )
    .join(_users, _users.c.id == _p.c.created_by)
    .where(sa.or_(_p.c.expires_at.is_(None), _p.c.expires_at > sa.bindparam("now")))
)
# What an item needs of its version and blob (all None for an empty file, which has none).
_VERSION_COLUMNS = (
    _v.c.id.label("version_id"),
    _v.c.version_no,
    _v.c.size,
    _b.c.id.label("blob_id"),
    _b.c.sha256,
    _b.c.crc32,
    _b.c.storage_key,
)
_ITEMS = (
    sa.select(
        _pi.c.id,
        _pi.c.package_id,
        _pi.c.path_in_archive,
        _pi.c.node_id,
        _pi.c.mtime,
        _pi.c.added_at,
        *_VERSION_COLUMNS,
    )
    .outerjoin(_v, _v.c.id == _pi.c.version_id)
    .outerjoin(_b, _b.c.id == _v.c.blob_id)
    .where(_pi.c.package_id.in_(sa.bindparam("ids", expanding=True, type_=sa.Uuid)))
)


_IN_BATCH = 500  # ids per IN list (PostgreSQL takes at most 65,535 parameters)
_VERSIONS = (
    sa.select(*_VERSION_COLUMNS)
    .join(_b, _b.c.id == _v.c.blob_id)
    .where(_v.c.id.in_(sa.bindparam("ids", expanding=True, type_=sa.Uuid)))
)


def _subtree_statement(postgres: bool) -> sa.Select[Any]:
    """A node (first) and every live node below it, with each file's current version."""
    columns = (
        "id",
        "parent_id",
        "name",
        "kind",
        "current_version_id",
        "mtime",
        "modified_at",
        "deleted_at",
    )
    down = tree.walk_down(columns, "down", postgres=postgres)
    rows, version = join_by_key(
        down,
        _v,
        _v.c.id == down.c.current_version_id,
        ("id", "mtime", "uploaded_at"),
        "version",
        one=True,
        postgres=postgres,
        optional=True,
    )
    return (
        sa.select(
            down.c.id,
            down.c.parent_id,
            down.c.name,
            down.c.kind,
            down.c.deleted_at,
            down.c.mtime.label("node_mtime"),
            down.c.modified_at,
            version.c.id.label("version_id"),
            version.c.mtime.label("version_mtime"),
            version.c.uploaded_at,
        )
        .select_from(rows)
        .order_by(down.c.depth)
    )


_SUBTREE = by_dialect(_subtree_statement)
