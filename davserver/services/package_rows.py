"""Reading packages and what to pin: the rows behind ``PackageService``.

``load_packages`` turns package rows into ``PackageView``s with their items (one query for all
the items); ``pins_below`` finds what adding a file or folder pins, inside the adding
transaction (one recursive query for a whole folder); ``folder_items`` reads a folder's files
with their blobs for its zip (one recursive query, read in batches).
"""

from __future__ import annotations

import datetime as dt
import functools
import uuid
from collections import defaultdict
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, NamedTuple

import sqlalchemy as sa
from sqlalchemy.orm import Session

from davserver.db import Base
from davserver.db.dialect import by_dialect, for_bind, is_postgres, join_by_key
from davserver.errors import Conflict, NotFound
from davserver.models import NodeKind
from davserver.services import tree
from davserver.services.package_archive import EMPTY_SHA256, PackageView, PinnedItem
from davserver.services.package_cache import PackageCache
from davserver.services.tree import NodeView, is_client_metadata, name_key
from davserver.services.zipstream import archive_names


def pins_below(
    session: Session,
    node: NodeView,
    prefix: str,
    *,
    allow_empty: bool = False,
) -> list[dict[str, Any]]:
    """What adding ``node`` at ``prefix`` pins, read in the adding transaction: the file's
    current version (none for an empty file), or each live file below the folder at
    ``prefix/<relative path>`` (desktop clutter such as ``.DS_Store`` left out). A folder
    without files is a Conflict unless ``allow_empty``. Names a zip cannot hold, or that
    collide there, are left for the package's checks to refuse."""
    pins = _read_pins(session, node, prefix, allow_empty=allow_empty)
    if is_postgres(session) and not _held_as_read(session, pins):
        # An upload or a move changed one of them meanwhile: now that they are held, again.
        pins = _read_pins(session, node, prefix, allow_empty=allow_empty)
    return pins


def _held_as_read(session: Session, pins: list[dict[str, Any]]) -> bool:
    """Hold the pinned files' rows (FOR SHARE) until the adding transaction ends, so that no
    upload replaces, and prunes, a version being pinned, and no trash purges it (each locks
    its file's row first): a pin of a version deleted meanwhile failed on its foreign key,
    and a prune of a version pinned meanwhile on the same key. Whether each file's current
    version, once held, is still the one read before (PostgreSQL; SQLite's writers take
    turns)."""
    read = {pin["node_id"]: pin["version_id"] for pin in pins}
    held: dict[uuid.UUID, Any] = {}
    ids = list(read)
    for start in range(0, len(ids), _LOCK_BATCH):
        rows = session.execute(
            sa.select(_n.c.id, _n.c.current_version_id, _n.c.deleted_at)
            .where(_n.c.id.in_(ids[start : start + _LOCK_BATCH]))
            .order_by(_n.c.id)  # one order for every adder: no deadlock between them
            .with_for_update(read=True)
        )
        for row in rows:
            held[row.id] = None if row.deleted_at is not None else row.current_version_id
    return all(held.get(node_id, _GONE) == version_id for node_id, version_id in read.items())


_LOCK_BATCH = 1000
_GONE = object()


def _read_pins(
    session: Session, node: NodeView, prefix: str, *, allow_empty: bool
) -> list[dict[str, Any]]:
    rows = session.execute(for_bind(_SUBTREE, session), {"root_id": node.id}).all()
    if not rows or rows[0].deleted_at is not None:
        raise NotFound("the item is gone")
    if not node.is_folder:
        return [_pin(rows[0], prefix)]
    children: dict[uuid.UUID | None, list[Any]] = defaultdict(list)
    for row in rows[1:]:
        children[row.parent_id].append(row)
    pins = [_pin(row, path) for row, path in _files_below(node.id, prefix, children)]
    if not pins and not allow_empty:
        raise Conflict(f"{node.name!r} holds no file to pin")
    return pins


def folder_items(
    session: Session, node: NodeView, prefix: str, added_at: dt.datetime
) -> list[PinnedItem]:
    """Folder ``node``'s live files as the items of a package that is never stored (a
    folder's zip), sorted by path: each current version at ``prefix/<relative path>``,
    desktop clutter left out, names a zip cannot hold or that collide there made safe and
    unique (``archive_names``). NotFound when the folder is gone.

    One query with each version's blob, read in batches (a server-side cursor on
    PostgreSQL); each row is kept as one small tuple until the tree is walked, which needs
    every sibling's name first."""
    members: dict[Any, list[_Member]] = defaultdict(list)
    result = session.execute(
        for_bind(_ZIP_SUBTREE, session),
        {"root_id": node.id},
        execution_options={"yield_per": _YIELD_PER},
    )
    found = False
    for row in result:
        if not found:  # the folder itself comes first
            if row.deleted_at is not None:
                raise NotFound("the item is gone")
            found = True
            continue
        members[row.parent_id].append(
            _Member(
                row.id,
                row.name,
                row.kind,
                row.version_mtime or row.uploaded_at or row.node_mtime or row.modified_at,
                row.version_id,
                row.version_no,
                row.size,
                row.blob_id,
                row.sha256,
                row.crc32,
                row.storage_key,
            )
        )
    if not found:
        raise NotFound("the item is gone")
    items = [
        _pinned(member.id, path, member.id, member.mtime, added_at, member)
        for member, path in _files_below(node.id, prefix, members, make_safe=True)
    ]
    items.sort(key=lambda item: item.path)
    return items


class _Member(NamedTuple):
    """A node below a zipped folder, with its current version and blob (``_pinned`` reads
    the version columns by name; None in them for a folder or an empty file)."""

    id: uuid.UUID
    name: str
    kind: str  # as the rows of ``_SUBTREE`` hold it, so ``_files_below`` reads both alike
    mtime: dt.datetime
    version_id: uuid.UUID | None
    version_no: int | None
    size: int | None
    blob_id: uuid.UUID | None
    sha256: str | None
    crc32: int | None
    storage_key: str | None


def _files_below(
    root_id: uuid.UUID,
    prefix: str,
    children: dict[Any, list[Any]],
    *,
    make_safe: bool = False,
) -> Iterator[tuple[Any, str]]:
    """(row, path) of each file below ``root_id``, from its rows grouped by parent id (rows
    of ``_SUBTREE``, or ``_Member``s); the groups are emptied on the way. Desktop clutter
    is left out. With ``make_safe`` (a folder's zip, where nobody chose the paths) names a
    zip cannot hold, or that collide there, are made safe and unique (``archive_names``);
    without, they are left for the package's checks to refuse."""
    stack = [(root_id, prefix)]
    while stack:
        folder, folder_path = stack.pop()
        kept = [row for row in children.pop(folder, ()) if not is_client_metadata(row.name)]
        names = [name_key(row.name) for row in kept]
        if make_safe:
            names = archive_names(names)
        for row, name in zip(kept, names, strict=True):
            path = f"{folder_path}/{name}"
            if row.kind == NodeKind.FOLDER:
                stack.append((row.id, path))
            else:
                yield row, path


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


def load_packages(
    conn: sa.Connection, rows: Iterable[Any], cache: PackageCache | None = None
) -> list[PackageView]:
    """Package rows (``LIVE_PACKAGES``) as views, with all their items read in one query;
    with ``cache``, only those of packages it does not hold as of their row."""
    rows = list(rows)
    if cache is not None:
        return cache.views(rows, functools.partial(_read_views, conn))
    views = _read_views(conn, rows)
    return [views[row.id] for row in rows]


def _read_views(conn: sa.Connection, rows: Sequence[Any]) -> dict[uuid.UUID, PackageView]:
    items: dict[uuid.UUID, list[PinnedItem]] = defaultdict(list)
    if rows:
        for row in conn.execute(_ITEMS, {"ids": [row.id for row in rows]}):
            items[row.package_id].append(
                _pinned(row.id, row.path_in_archive, row.node_id, row.mtime, row.added_at, row)
            )
    return {
        row.id: PackageView(
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
    }


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


_YIELD_PER = 2000  # rows fetched at a time for a folder's zip


def _subtree_statement(postgres: bool, *, blobs: bool = False) -> sa.Select[Any]:
    """A node (first) and every live node below it, with each file's current version (and,
    with ``blobs``, the version's number, size and blob)."""
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
    version_columns: tuple[str, ...] = ("id", "mtime", "uploaded_at")
    if blobs:
        version_columns += ("version_no", "size", "blob_id")
    rows, version = join_by_key(
        down,
        _v,
        _v.c.id == down.c.current_version_id,
        version_columns,
        "version",
        one=True,
        postgres=postgres,
        optional=True,
    )
    selected = [
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
    ]
    if blobs:
        rows, blob = join_by_key(
            rows,
            _b,
            _b.c.id == version.c.blob_id,
            ("id", "sha256", "crc32", "storage_key"),
            "blob",
            one=True,
            postgres=postgres,
            optional=True,
        )
        selected += [
            version.c.version_no,
            version.c.size,
            blob.c.id.label("blob_id"),
            blob.c.sha256,
            blob.c.crc32,
            blob.c.storage_key,
        ]
    return sa.select(*selected).select_from(rows).order_by(down.c.depth)


_SUBTREE = by_dialect(_subtree_statement)
_ZIP_SUBTREE = by_dialect(functools.partial(_subtree_statement, blobs=True))
