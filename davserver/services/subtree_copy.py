"""COPY of a folder: its subtree as new rows, parents before children, sharing the blobs.

Each node below the copied one gets a new row, each file a first version pointing at the blob
its current version has, each dead property a copy; nothing is copied of the bytes. Rows are
read and written a batch at a time (``_BATCH``), so a copy of a hundred thousand nodes holds the
new ids of the folders in memory, not the rows. What the copy adds to a user's own space counts
against their quota as it goes.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from davserver.db.dialect import by_dialect, for_bind
from davserver.db.types import utcnow
from davserver.errors import Conflict
from davserver.models import DeadProperty, FileVersion, Node, NodeKind
from davserver.services import tree
from davserver.services.actor import Actor
from davserver.services.dead_props import DEAD_OF
from davserver.services.tree import NodeView, name_key
from davserver.services.usage import add_home_bytes, check_quota

# SQLite allows 32,766 bound parameters per statement; IN lists stay well below that.
_BATCH = 5000


class NameTakenMeanwhile(Exception):
    """The name a copy goes to is taken. Its callers (a COPY, a MOVE into another space)
    found it free (``node_rows.occupant_at``), so another writer took it since: a PUT creates a file
    without waiting for ``node_rows._hold_name``. ``FileService.run_write`` runs the work again,
    which finds that file there (and replaces it if the client agreed); on PostgreSQL the
    COPY with Overwrite: T was a 412."""


def copy_subtree(
    session: Session,
    actor: Actor,
    source: Node,
    dest_parent: NodeView,
    dest_name: str,
    recursive: bool,
    *,
    history: bool = False,
) -> uuid.UUID:
    """Copy ``source``, with everything below it when ``recursive``, into ``dest_parent`` as
    ``dest_name``, in the caller's transaction; the new root's id. Each file copied gets its
    current version as its first, or with ``history`` (a MOVE into another space) every one
    of its versions, as they were. Conflict when the folder is gone, NameTakenMeanwhile when
    the name is taken, QuotaExceeded when the owner's quota is."""
    parent_row = session.get(Node, dest_parent.id)
    if parent_row is None or parent_row.deleted_at is not None or not parent_row.is_folder:
        raise Conflict("the destination folder does not exist")
    if session.scalar(
        sa.select(Node.id).where(
            Node.parent_id == dest_parent.id,
            Node.name_key == name_key(dest_name),
            Node.deleted_at.is_(None),
        )
    ):
        raise NameTakenMeanwhile(f"{dest_name!r} exists")
    # Read and written a batch at a time, parents before children: what stays in memory
    # for the whole copy is the new id of each folder copied (its children need it), not
    # the rows (which took 3.5 kB a node: 360 MB for a copy of 100,000).
    batches: Iterable[Sequence[Any]] = (
        _subtree(session, source.id) if recursive and source.is_folder else [[source]]
    )
    new_ids: dict[uuid.UUID, uuid.UUID] = {}  # of the folders copied, and of the root
    copied = 0
    for rows in batches:
        copied += _copy_batch(
            session, actor, rows, new_ids, source.id, parent_row, dest_name, history
        )
        if parent_row.group_id is None:  # what the copy adds counts against the quota
            check_quota(session, parent_row.owner_id, copied)
    add_home_bytes(session, parent_row.owner_id, parent_row.space, copied)
    return new_ids[source.id]


def _copy_batch(
    session: Session,
    actor: Actor,
    rows: Sequence[Any],
    new_ids: dict[uuid.UUID, uuid.UUID],
    source_id: uuid.UUID,
    parent_row: Node,
    dest_name: str,
    history: bool,
) -> int:
    """Copy ``rows`` (``_COPIED`` columns; their parents copied before them, with their
    new ids in ``new_ids``) with their versions (see ``copy_subtree``) and dead properties
    as new rows below ``parent_row``; adds the new ids of the folders among them (and of the
    root) to ``new_ids`` and returns their bytes."""
    now = utcnow()
    node_values = []
    batch_ids: dict[uuid.UUID, uuid.UUID] = {}
    for row in rows:
        batch_ids[row.id] = new_id = uuid.uuid4()
        is_root = row.id == source_id
        if is_root or row.kind == NodeKind.FOLDER.value:
            new_ids[row.id] = new_id
        node_values.append(
            {
                "id": new_id,
                "parent_id": parent_row.id if is_root else new_ids[row.parent_id],
                "name": dest_name if is_root else row.name,
                "name_key": name_key(dest_name) if is_root else row.name_key,
                "kind": row.kind,
                "owner_id": parent_row.owner_id,
                "space": parent_row.space,
                "group_id": parent_row.group_id,
                "mime_type": row.mime_type,
                "current_version_id": None,
                "size": row.size,
                "mtime": row.mtime,
                "created_at": now,
                "modified_at": row.modified_at,
            }
        )
    session.execute(sa.insert(Node), node_values)
    files = [row for row in rows if row.kind == NodeKind.FILE.value]
    _copy_versions(session, batch_ids, files, fresh=None if history else (actor, now))
    props = session.execute(for_bind(DEAD_OF, session), {"ids": [row.id for row in rows]}).all()
    if props:
        session.execute(
            sa.insert(DeadProperty),
            [
                {"id": uuid.uuid4(), "node_id": batch_ids[n], "name": name, "value": value}
                for n, name, value in props
            ],
        )
    return sum(row.size for row in rows if row.kind == NodeKind.FILE.value)


def _copy_versions(
    session: Session,
    batch_ids: dict[uuid.UUID, uuid.UUID],
    files: Sequence[Any],
    *,
    fresh: tuple[Actor, dt.datetime] | None,
) -> None:
    """Give each copied file every version of its source, numbered, dated and attributed as
    they were, its current one current (a file emptied by a MOVE onto it has history and no
    current version); or, ``fresh`` (actor, now), its source's current version as its first,
    uploaded now by that actor."""
    current = {row.current_version_id for row in files if row.current_version_id}
    # Fresh: the current versions, by their ids; else every version of the files.
    key, ids = (
        (FileVersion.id, list(current))
        if fresh
        else (FileVersion.node_id, [row.id for row in files])
    )
    if not ids:
        return
    version_values = []
    pointers: dict[uuid.UUID, uuid.UUID] = {}
    columns = [getattr(FileVersion, name) for name in ("id", "node_id", *_VERSION_KEPT)]
    for version in session.execute(sa.select(*columns).where(key.in_(ids))):
        new_version = uuid.uuid4()
        node_id = batch_ids[version.node_id]
        kept = {name: getattr(version, name) for name in _VERSION_KEPT}
        if fresh is not None:
            actor, now = fresh
            kept.update(
                version_no=1,
                uploaded_by=actor.user_id,
                uploaded_at=now,
                session_id=actor.session_id,
            )
        version_values.append({"id": new_version, "node_id": node_id, **kept})
        if version.id in current:
            pointers[node_id] = new_version
    if version_values:
        session.execute(sa.insert(FileVersion), version_values)
    _point_at(session, pointers)


# What a copied version keeps (its node and id are new; rows are read, not entities, so that
# a big subtree's versions do not pile up in the session).
_VERSION_KEPT = (
    "version_no",
    "blob_id",
    "size",
    "uploaded_by",
    "uploaded_at",
    "session_id",
    "mtime",
)


def _point_at(session: Session, pointers: dict[uuid.UUID, uuid.UUID]) -> None:
    """Make each file's given version (``pointers``: node id -> version id) its current one."""
    if not pointers:
        return
    nodes = sa.table("nodes", sa.column("id", sa.Uuid), sa.column("current_version_id", sa.Uuid))
    session.execute(
        sa.update(nodes)
        .where(nodes.c.id == sa.bindparam("b_id"))
        .values(current_version_id=sa.bindparam("b_version")),
        [{"b_id": node_id, "b_version": version} for node_id, version in pointers.items()],
    )


# What a copy copies of each node below the one it copies (as read from the Node it copies).
_COPIED = (
    "id",
    "parent_id",
    "name",
    "name_key",
    "kind",
    "mime_type",
    "size",
    "mtime",
    "modified_at",
    "current_version_id",
)


def _subtree_statement(postgres: bool) -> sa.Select[Any]:
    """The ``_COPIED`` columns of :root_id and its live descendants, parents before children.
    The walk carries them: a join back to ``nodes`` was planned as a scan of the table."""
    walk = tree.walk_down(_COPIED, "subtree", postgres=postgres)
    return sa.select(*(walk.c[c] for c in _COPIED)).order_by(walk.c.depth)


_SUBTREE = by_dialect(_subtree_statement)


def _subtree(session: Session, root_id: uuid.UUID) -> Iterator[Sequence[sa.Row[Any]]]:
    """A node and its live descendants, parents before children (``_COPIED`` columns), in
    batches of ``_BATCH`` rows read as they are needed."""
    statement = for_bind(_SUBTREE, session).execution_options(yield_per=_BATCH)
    yield from session.execute(statement, {"root_id": root_id}).partitions()
