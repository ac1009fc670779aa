"""Files and folders: create, upload, delete, move, copy, properties. One transaction each.

Every method that changes something writes its logbook row in the same transaction. Bytes
never pass through here: an upload is written to the blob store first (see ``BlobWriter``) and
``commit_upload`` only records the finished blob (``blob_refs``: with its bytes in place).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import threading
import uuid
from collections.abc import Callable, Iterable
from typing import Any, BinaryIO, TypeVar

import sqlalchemy as sa
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.orm import Session

from davserver.blobstore import BlobStore, StoredBlob
from davserver.db import Base, Database
from davserver.db.dialect import (
    NO_KEY_UPDATE,
    is_postgres,
)
from davserver.db.engine import may_run_again
from davserver.db.types import UTCDateTime, utcnow
from davserver.errors import (
    AlreadyExists,
    Conflict,
    Forbidden,
    NotFound,
    PreconditionFailed,
)
from davserver.models import DeadProperty, FileVersion, Node, NodeKind, Op, Space
from davserver.services import blob_refs, dead_props, save_patterns, tree, usage, version_rules
from davserver.services.actor import Actor
from davserver.services.audit import ReadLog, record_audit
from davserver.services.lost_bytes import open_stored, require_stored
from davserver.services.subtree_copy import NameTakenMeanwhile, copy_subtree
from davserver.services.tree import NodeView, check_name, is_client_metadata, name_key
from davserver.services.usage import add_home_bytes, add_upload_bytes, bytes_below, check_quota
from davserver.services.write_fence import run_write_fence

T = TypeVar("T")
_RETRIES = 4


class FileService:
    def __init__(
        self, db: Database, blobs: BlobStore, policy: version_rules.VersionPolicy | None = None
    ) -> None:
        self.db = db
        self.blobs = blobs
        self.read_log = ReadLog(db)  # downloads, written in batches
        # Coalescing and retention of versions; by default every version is kept.
        self.policy = policy or version_rules.VersionPolicy()
        self._home_ids: dict[uuid.UUID, uuid.UUID] = {}
        self._group_root_ids: dict[uuid.UUID, uuid.UUID] = {}
        self._home_lock = threading.Lock()

    # ------------------------------------------------------------------ reads

    def home_id(self, user_id: uuid.UUID) -> uuid.UUID:
        """The root folder of a user's own space, created on first use."""
        cached = self._home_ids.get(user_id)
        if cached is not None:
            return cached
        with self._home_lock:
            with self.db.read() as session:
                view = tree.home_root(session, user_id)
            if view is None:
                view = self.run_write(lambda s: self._create_home(s, user_id))
            self._home_ids[user_id] = view.id
            return view.id

    def group_root_id(self, group_id: uuid.UUID, creator_id: uuid.UUID) -> uuid.UUID:
        """The root folder of a group's space, created on first use (owned by ``creator_id``,
        whose rows the space's items then carry; rights there come from membership)."""
        cached = self._group_root_ids.get(group_id)
        if cached is not None:
            return cached
        with self._home_lock:
            with self.db.connect() as conn:
                root_id = conn.execute(_GROUP_ROOT, {"group_id": group_id}).scalar()
            if root_id is None:
                root_id = self.run_write(lambda s: self._create_group_root(s, group_id, creator_id))
            self._group_root_ids[group_id] = root_id
            return root_id

    def _create_group_root(
        self, session: Session, group_id: uuid.UUID, creator_id: uuid.UUID
    ) -> uuid.UUID:
        existing = session.execute(_GROUP_ROOT, {"group_id": group_id}).scalar()
        if existing is not None:
            return existing
        node = Node(
            name="",
            name_key="",
            kind=NodeKind.FOLDER,
            owner_id=creator_id,
            space=Space.GROUP,
            group_id=group_id,
        )
        session.add(node)
        session.flush()
        return node.id

    def _create_home(self, session: Session, user_id: uuid.UUID) -> NodeView:
        existing = tree.home_root(session, user_id)
        if existing is not None:
            return existing
        node = Node(name="", name_key="", kind=NodeKind.FOLDER, owner_id=user_id, space=Space.HOME)
        session.add(node)
        session.flush()
        view = tree.get_node(session, node.id)
        assert view is not None
        return view

    def resolve(self, root_id: uuid.UUID, parts: list[str]) -> NodeView | None:
        with self.db.connect() as conn:
            return tree.resolve(conn, root_id, parts)

    def resolve_chain(self, root_id: uuid.UUID, parts: list[str]) -> list[NodeView | None]:
        """The node at every prefix of ``parts`` (see ``tree.resolve_chain``), in one query."""
        with self.db.connect() as conn:
            return tree.resolve_chain(conn, root_id, parts)

    def children(self, folder: NodeView) -> list[NodeView]:
        with self.db.connect() as conn:
            return tree.list_children(conn, folder)

    def subtree_size(self, node_id: uuid.UUID) -> int:
        """Bytes of the current versions of every live file at or below a node."""
        with self.db.connect() as conn:
            return usage.subtree_size(conn, node_id)

    def child_folder_sizes(self, folder_id: uuid.UUID) -> dict[uuid.UUID, int]:
        """``subtree_size`` of each live folder in a folder, in one query (a listing's)."""
        with self.db.connect() as conn:
            return usage.child_folder_sizes(conn, folder_id)

    def upload_allowance(
        self, actor: Actor, into: NodeView, replacing: NodeView | None
    ) -> int | None:
        """How many bytes ``actor``'s upload into ``into``'s space may have; None for no limit.

        Quotas are per user and count their own space; group spaces have none. ``replacing``
        is the file the upload would replace: its current bytes stop counting, so a space
        over its quota (lowered by an admin) may still replace a file by one no bigger, as
        ``check_quota`` allows whatever does not grow the space.
        """
        if into.group_id is not None:
            return None
        owner_id = into.owner_id
        own = owner_id == actor.user_id
        if own and actor.quota_bytes is None:
            return None
        used, quota = self.usage(owner_id)
        if own:  # the actor's own quota was read with their credentials, this request
            quota = actor.quota_bytes
        if quota is None:
            return None
        return max(0, quota - used) + (replacing.size if replacing else 0)

    def usage(self, owner_id: uuid.UUID) -> tuple[int, int | None]:
        """(bytes used, quota in bytes or None for unlimited) of a user's own space.

        Usage is logical: the sizes of the user's current files, whatever dedup saves.
        """
        with self.db.connect() as conn:
            return usage.usage_of(conn, owner_id)

    def open_content(self, view: NodeView) -> BinaryIO:
        """A seekable reader of a file's current bytes (empty for a file with no version yet).

        Raises NotFound when the blob store has lost the bytes.
        """
        return open_stored(self.blobs, view.storage_key, view.name)

    def check_content(self, view: NodeView) -> None:
        """What ``open_content`` would raise, without opening the bytes: NotFound when the
        blob store has lost them (a HEAD answers what a GET would)."""
        require_stored(self.blobs, view.storage_key, view.name)

    def record_download(
        self,
        actor: Actor,
        node_id: uuid.UUID,
        version_id: uuid.UUID | None,
        *,
        size: int,
        version_no: int | None = None,
        served_range: str | None = None,
        variant: str | None = None,
    ) -> None:
        """Log that ``actor`` is being sent a file's bytes (its current version, or
        ``version_no``), all of them or ``served_range``, or an image ``variant`` of them
        (such as "preview 1024x768 jpeg"); a GET's, not a HEAD's. The row is written within a
        second (``ReadLog``)."""
        details: dict[str, Any] = {"size": size}
        if version_no is not None:
            details["version_no"] = version_no
        if served_range is not None:
            details["range"] = served_range[:200]
        if variant is not None:
            details["variant"] = variant
        self.read_log.add(
            actor, Op.FILE_DOWNLOAD, node_id=node_id, version_id=version_id, details=details
        )

    def dead_properties(self, node_ids: Iterable[uuid.UUID]) -> dict[uuid.UUID, dict[str, bytes]]:
        """Dead properties of many nodes at once: {node_id: {name: xml bytes}}."""
        ids = list(node_ids)
        if not ids:
            return {}
        with self.db.connect() as conn:
            return dead_props.read(conn, ids)

    def children_dead_properties(self, folder_id: uuid.UUID) -> dict[uuid.UUID, dict[str, bytes]]:
        """Dead properties of a folder's live children, {node_id: {name: xml bytes}} for those
        that have any; by the folder, so a listing binds no list of ids."""
        with self.db.connect() as conn:
            return dead_props.read_children(conn, folder_id)

    # ----------------------------------------------------------------- writes

    def create_folder(self, actor: Actor, parent: NodeView, name: str) -> NodeView:
        return self._create(actor, parent, name, NodeKind.FOLDER, Op.FOLDER_CREATE)

    def create_empty_file(self, actor: Actor, parent: NodeView, name: str) -> NodeView:
        """An empty file with no version yet (a LOCK on an unmapped URL makes one)."""
        return self._create(actor, parent, name, NodeKind.FILE, Op.FILE_CREATE)

    def _create(
        self, actor: Actor, parent: NodeView, name: str, kind: NodeKind, op: Op
    ) -> NodeView:
        actor.require_write()
        check_name(name)

        def work(session: Session) -> NodeView:
            hold_folder(session, parent)
            node_id = insert_child(session, parent.id, name, kind)
            record_audit(session, actor, op, node_id=node_id, details={"name": name})
            return view_of(session, node_id)

        return self.run_write(work)

    def commit_upload(
        self,
        actor: Actor,
        parent: NodeView,
        name: str,
        blob: StoredBlob,
        *,
        content_type: str | None = None,
        expected_version_id: uuid.UUID | None = None,
        must_be_new: bool = False,
        enforce_quota: bool = False,
        lock_since: dt.datetime | None = None,
        mtime: dt.datetime | None = None,
    ) -> tuple[NodeView, bool]:
        """Record an uploaded blob as the newest version of ``parent/name``.

        Creates the file when it does not exist yet (a new empty file gets no version). Bytes
        equal to the current version's make no new version. ``expected_version_id`` is the
        version an If-Match header was checked against: if another upload won the race in
        between, PreconditionFailed; with ``must_be_new`` (``If-None-Match: *``, create only)
        the same when the file was created in between. With ``enforce_quota`` (the owner has
        a quota, see ``upload_allowance``) the quota is checked again inside the transaction,
        against uploads that finished meanwhile: QuotaExceeded. ``lock_since`` is when the lock the
        uploader holds on the file was taken: uploads under one lock, and within the
        configured window, replace the newest version instead of adding one, and a new version
        applies the retention policy (``davserver.services.version_rules``). ``mtime`` is the
        client's modification time of the bytes (X-OC-Mtime), kept with them in the same
        transaction: set afterwards, another upload committed in between got it. Returns the
        file and whether it was created.
        """
        key = name_key(name)
        mime = content_type[:255] if content_type else None
        space = Space.HOME.value if parent.group_id is None else Space.GROUP.value

        def work(session: Session, placed: uuid.UUID | None) -> tuple[NodeView, bool]:
            # Core statements: this is the hottest write path (every small-file PUT). Below
            # a space's root the folders above are held (``tree.hold_chain``) by the statement
            # that looks for the file; the file, when it is there and changes, is locked next
            # (two uploads to one file queue there), the owner's row last, by the statement
            # before the commit (``usage.add_upload_bytes``: the running total and the quota).
            # PostgreSQL aborts the rare deadlock with a copy onto the file and the trash of
            # its folder at once, and run_write runs it again.
            if parent.parent_id is None:  # a root can neither move nor go to the trash
                current = tree.child_for_update(session, parent.id, key)
            else:
                current = tree.hold_chain_for_child(session, parent.id, key)
                if current is not None and not _unchanged(current, blob):
                    current = tree.child_for_update(session, parent.id, key)
            if must_be_new and current is not None:
                raise PreconditionFailed(f"{name!r} was created meanwhile")
            if current is None:
                if expected_version_id is not None:
                    raise PreconditionFailed("the file no longer exists")
                now = utcnow()
                node_id = insert_child(
                    session, parent.id, name, NodeKind.FILE, mime=mime, known_free=True, now=now
                )
                if blob.size == 0:
                    _keep_mtime(session, node_id, None, mtime)
                    record_audit(
                        session, actor, Op.FILE_CREATE, node_id=node_id, details={"name": name}
                    )
                    return view_of(session, node_id), True
                version_id, version_no = self.add_version(
                    session,
                    actor,
                    node_id,
                    blob_refs.reference_id(session, self.blobs, blob, placed),
                    blob.size,
                    mime,
                    first=True,
                    now=now,
                    mtime=mtime,
                    counted=False,
                )
                blob_refs.referenced(session, self.blobs, blob)
                record_audit(
                    session,
                    actor,
                    Op.FILE_CREATE,
                    node_id=node_id,
                    version_id=version_id,
                    details={
                        "name": name,
                        "version_no": 1,
                        "size": blob.size,
                        "sha256": blob.sha256,
                    },
                )
                add_upload_bytes(
                    session, parent.owner_id, space, blob.size, enforce_quota=enforce_quota
                )
                # Every column of the new file is known here: no need to read it back.
                empty = NodeView(
                    id=node_id,
                    parent_id=parent.id,
                    name=name,
                    kind=NodeKind.FILE.value,
                    owner_id=parent.owner_id,
                    group_id=parent.group_id,
                    size=0,
                    mtime=None,
                    created_at=now,
                    modified_at=now,
                    mime_type=mime,
                    current_version_id=None,
                    version_no=None,
                    sha256=None,
                    md5=None,
                    sha1=None,
                    storage_key=None,
                )
                return _with_upload(empty, blob, version_id, version_no, now, mime, mtime), True
            node_id, current_version_id = current.id, current.current_version_id
            if current.is_folder:
                raise Conflict(f"{name!r} is a folder")
            if expected_version_id is not None and current_version_id != expected_version_id:
                raise PreconditionFailed("the file changed since the ETag was issued")
            if _unchanged(current, blob):
                if mtime is None:
                    return current, False
                _keep_mtime(session, node_id, current_version_id, mtime)
                return dataclasses.replace(current, mtime=mtime), False
            now = utcnow()
            op, details = Op.FILE_VERSION_CREATE, {}
            coalesced = (
                version_rules.coalesces(session, self.policy, actor, current_version_id, lock_since)
                if current_version_id is not None
                else None
            )
            if (
                current_version_id is not None
                and not coalesced
                and self._replaces_metadata(session, name, current_version_id)
            ):
                coalesced = "metadata"
            if current_version_id is not None and coalesced:
                blob_id = blob_refs.reference_id(session, self.blobs, blob, placed)
                version_id, version_no = self._replace_version(
                    session, actor, node_id, current_version_id, blob_id, blob.size, now, mtime
                )
                mime_type = current.mime_type  # a replaced version keeps the type
                # What was overwritten: its bytes are gone from the history after this.
                before = {"size": current.size, "sha256": current.sha256}
                op, details = Op.FILE_VERSION_REPLACE, {"coalesced": coalesced, "before": before}
            else:
                version_id, version_no = self.add_version(
                    session,
                    actor,
                    node_id,
                    blob_refs.reference_id(session, self.blobs, blob, placed),
                    blob.size,
                    mime,
                    now=now,
                    mtime=mtime,
                    counted=False,
                )
                mime_type = mime or current.mime_type
            blob_refs.referenced(session, self.blobs, blob)
            record_audit(
                session,
                actor,
                op,
                node_id=node_id,
                version_id=version_id,
                details={
                    "version_no": version_no,
                    "size": blob.size,
                    "sha256": blob.sha256,
                    **details,
                },
            )
            # ``current`` was read with the file's row locked: its size is the one replaced.
            growth = blob.size - current.size
            add_upload_bytes(session, parent.owner_id, space, growth, enforce_quota=enforce_quota)
            # What changed is known here: no need to read the file back.
            return (
                _with_upload(current, blob, version_id, version_no, now, mime_type, mtime),
                False,
            )

        try:
            actor.require_write()
            check_name(name)
            return blob_refs.placing(
                self.db,
                self.blobs,
                blob,
                lambda placed: self.run_write(lambda session: work(session, placed)),
            )
        finally:
            # The writer's spare copy matters only until the referencing transaction has ended.
            self.blobs.release(blob)

    @staticmethod
    def _replaces_metadata(session: Session, name: str, version_id: uuid.UUID) -> bool:
        """Whether an upload onto a client metadata file (no history kept) replaces its
        current version: not when a package pins it, as its bytes were promised."""
        return is_client_metadata(name) and not version_rules.pinned(session, [version_id])

    def _replace_version(
        self,
        session: Session,
        actor: Actor,
        node_id: uuid.UUID,
        version_id: uuid.UUID,
        blob_id: uuid.UUID,
        size: int,
        now: dt.datetime,
        mtime: dt.datetime | None,
    ) -> tuple[uuid.UUID, int]:
        """Overwrite the current version in place, as of ``now``, with the client's ``mtime``
        (client metadata files keep no history, and uploads under one lock coalesce). The
        owner's total is the caller's to move (``usage.add_upload_bytes``)."""
        version = session.get(FileVersion, version_id)
        assert version is not None
        version.blob_id = blob_id
        version.size = size
        version.uploaded_by = actor.user_id
        version.uploaded_at = now
        version.mtime = mtime
        _make_current(session, node_id, version_id, size, now, None, mtime, counted=False)
        return version_id, version.version_no

    def add_version(
        self,
        session: Session,
        actor: Actor,
        node_id: uuid.UUID,
        blob_id: uuid.UUID,
        size: int,
        mime: str | None,
        *,
        first: bool = False,
        now: dt.datetime | None = None,
        mtime: dt.datetime | None = None,
        counted: bool = True,
    ) -> tuple[uuid.UUID, int]:
        """Insert the next version of a file (locked by the caller) and make it current, as of
        ``now`` (default: the present), with the client's modification time ``mtime`` on both
        (none: the version's time is its upload's); then, unless it is the ``first``, apply
        the retention policy to the file's older ones (``version_rules.prune_file``).
        ``counted``: the owner's total follows the new size here; False when the caller moves
        it itself (an upload, last)."""
        version_no = (
            1 if first else (session.scalar(_LAST_VERSION_NO, {"node_id": node_id}) or 0) + 1
        )
        version_id = uuid.uuid4()
        now = now or utcnow()
        session.execute(
            _INSERT_VERSION,
            {
                "id": version_id,
                "node_id": node_id,
                "version_no": version_no,
                "blob_id": blob_id,
                "size": size,
                "uploaded_by": actor.user_id,
                "uploaded_at": now,
                "session_id": actor.session_id,
                "mtime": mtime,
            },
        )
        _make_current(session, node_id, version_id, size, now, mime, mtime, counted=counted)
        if not first:
            version_rules.prune_file(session, self.policy, actor, node_id, current_id=version_id)
        return version_id, version_no

    def delete(self, actor: Actor, node_id: uuid.UUID, *, seen: NodeView | None = None) -> None:
        """Move a node (and so everything below it) to the trash: one UPDATE.

        ``seen`` is the node as the request found it at its URL: NotFound when it has moved
        or been renamed since (see ``still_where_seen``).
        """
        actor.require_write()

        self.run_write(lambda session: _trash(session, actor, node_id, seen=seen))

    def move(
        self,
        actor: Actor,
        node_id: uuid.UUID,
        dest_parent: NodeView,
        dest_name: str,
        *,
        overwrite: bool = False,
        seen: NodeView | None = None,
        may_download: Callable[[list[uuid.UUID]], bool] | None = None,
    ) -> NodeView | None:
        """Rename and/or re-parent a node: one UPDATE whatever the size of the subtree.
        Returns what it replaced at the destination, if anything.

        ``may_download`` tells whether the mover may download every one of some files: an
        office program's save (``save_patterns``) swaps two files' contents only when they
        may download both, since each file's bytes land on the other, with its grants (None:
        a save is two plain renames).

        Into another space (``_move_to_another_space``) it is a copy there and the source to
        its own space's trash, in one transaction: RFC 4918's MOVE (9.9).

        What is at the destination when this runs (not when the request began) is replaced if
        the client agreed to ``overwrite`` it, else PreconditionFailed (see ``_occupant``): a
        file moved onto a file becomes that file's newest version and goes to the trash itself
        (``_move_onto_file``); anything else at the destination goes to the trash. Moving a
        node to a name that resolves to itself (a case- or normalization-only rename) just
        renames it; Forbidden when the destination is the
        node itself, name and all, or below it (whatever URLs the request named them by).
        ``seen`` is the node as the request found it: NotFound when another request moved it
        meanwhile (``still_where_seen``). Forbidden too when the destination to replace is a
        folder the node is in.
        """
        actor.require_write()
        check_name(dest_name)

        def work(session: Session) -> NodeView | None:
            node = held_node(session, node_id, seen=seen)
            if node.parent_id is None:
                raise Conflict("the root of a space cannot be moved")
            space = (node.owner_id, node.group_id)
            elsewhere = space != (dest_parent.owner_id, dest_parent.group_id)
            if (node.parent_id, node.name) == (dest_parent.id, dest_name):
                raise Forbidden(_SAME)  # a case-only rename is not the same name
            if node.id in tree.hold_chain(session, dest_parent.id):
                raise Forbidden("cannot move a folder into itself")
            occupant = _occupant(session, dest_parent, dest_name, overwrite=overwrite, mover=node)
            if occupant is not None:
                _refuse_replacing_a_folder_above(session, occupant, node.parent_id)
                if not (node.is_folder or occupant.is_folder or is_client_metadata(dest_name)):
                    self._move_onto_file(session, actor, node, occupant)
                    return occupant
                _trash(session, actor, occupant.id, overwritten=True)
            elif node.parent_id == dest_parent.id:  # a rename: perhaps a save's last step
                away = save_patterns.moved_away_for_save(
                    session, actor, node, dest_parent, dest_name
                )
                if (
                    away is not None
                    and may_download is not None
                    and may_download([node.id, away[0]])
                    and self._give_the_name_back(session, actor, node, dest_name, *away)
                ):
                    return None
            details: dict[str, object] = {
                "before": {"parent_id": str(node.parent_id), "name": node.name},
                "after": {"parent_id": str(dest_parent.id), "name": dest_name},
            }
            if elsewhere:
                moved = _move_to_another_space(session, actor, node, dest_parent, dest_name)
                details["source"] = str(node.id)
            else:
                moved = node.id
                node.parent_id = dest_parent.id
                node.name = dest_name
                node.name_key = name_key(dest_name)
                session.flush()
            record_audit(session, actor, Op.NODE_MOVE, node_id=moved, details=details)
            return occupant

        return self.run_write(work)

    def copy(
        self,
        actor: Actor,
        node_id: uuid.UUID,
        dest_parent: NodeView,
        dest_name: str,
        *,
        recursive: bool = True,
        overwrite: bool = False,
        seen: NodeView | None = None,
    ) -> NodeView | None:
        """Copy a node (and, when ``recursive``, its subtree) as new rows sharing the blobs.
        Returns what it replaced at the destination, if anything.

        What is at the destination when this runs is replaced if the client agreed to
        ``overwrite`` it, else PreconditionFailed (see ``_occupant``). A file copied onto an
        existing file becomes that file's newest version, so the destination keeps its
        history; any other overwritten destination goes to the trash.
        What the copy adds to a user's own space counts against their quota: QuotaExceeded.
        Forbidden when the destination is the source itself, below it, or (to replace) a
        folder the source is in. ``seen`` is the
        source as the request found it: NotFound when another request moved it meanwhile
        (``still_where_seen``).
        """
        actor.require_write()
        check_name(dest_name)

        def work(session: Session) -> NodeView | None:
            source = still_where_seen(live_node(session, node_id), seen)
            if source.id in tree.hold_chain(session, dest_parent.id):
                raise Forbidden("cannot copy a folder into itself")
            occupant = _occupant(session, dest_parent, dest_name, overwrite=overwrite)
            if occupant is not None:
                if occupant.id == source.id:
                    raise Forbidden(_SAME)
                target = held_node(session, occupant.id)
                if not source.is_folder and not target.is_folder:
                    self._copy_onto_file(session, actor, source, target)
                    return occupant
                _refuse_replacing_a_folder_above(session, occupant, source.parent_id)
                _trash(session, actor, occupant.id, overwritten=True)
            new_root = copy_subtree(session, actor, source, dest_parent, dest_name, recursive)
            record_audit(
                session,
                actor,
                Op.NODE_COPY,
                node_id=new_root,
                details={"source": str(source.id), "name": dest_name},
            )
            return occupant

        return self.run_write(work)

    def set_mtime(self, actor: Actor, node_id: uuid.UUID, mtime: dt.datetime) -> None:
        """Keep the client's modification time on the node and its current version."""
        actor.require_write()

        def work(session: Session) -> None:
            node = live_node(session, node_id)
            before = node.mtime
            _keep_mtime(session, node.id, node.current_version_id, mtime)
            record_audit(
                session,
                actor,
                Op.NODE_PROPPATCH,
                node_id=node.id,
                details={
                    "mtime": {
                        "before": before.isoformat() if before is not None else None,
                        "after": mtime.isoformat(),
                    }
                },
            )

        self.run_write(work)

    def set_dead_properties(
        self,
        actor: Actor,
        node_id: uuid.UUID,
        changes: dict[str, bytes | None],
        *,
        mtime: dt.datetime | None = None,
    ) -> None:
        """Set (bytes) or remove (None) dead properties of a node, all or nothing, with the
        client's modification time ``mtime`` if given (a PROPPATCH of both: one transaction).
        QuotaExceeded when the node's would then exceed ``dead_props.MAX_DEAD_PROPERTY_BYTES``;
        BadRequest for a name too long to store (``dead_props.check_property_name``)."""
        actor.require_write()
        for name in changes:
            dead_props.check_property_name(name)

        def work(session: Session) -> None:
            node = live_node(session, node_id)
            details: dict[str, Any] = {}
            if mtime is not None:
                before = node.mtime
                _keep_mtime(session, node.id, node.current_version_id, mtime)
                details["mtime"] = {
                    "before": before.isoformat() if before is not None else None,
                    "after": mtime.isoformat(),
                }
            stored = sa.select(DeadProperty.name, DeadProperty.value).where(
                DeadProperty.node_id == node_id
            )
            kept = {name: value for name, value in session.execute(stored)}
            dead_props.check_dead_properties(kept, changes)
            for name, value in changes.items():
                session.execute(
                    sa.delete(DeadProperty).where(
                        DeadProperty.node_id == node_id, DeadProperty.name == name
                    )
                )
                if value is not None:
                    session.add(DeadProperty(node_id=node_id, name=name, value=value))
            record_audit(
                session,
                actor,
                Op.NODE_PROPPATCH,
                node_id=node_id,
                details={
                    **(
                        {
                            "set": sorted(k for k, v in changes.items() if v is not None),
                            "removed": sorted(k for k, v in changes.items() if v is None),
                        }
                        if changes
                        else {}
                    ),
                    **details,
                },
            )

        self.run_write(work)

    # ---------------------------------------------------------------- helpers

    def run_write(self, work: Callable[[Session], T]) -> T:
        """Run ``work`` in a write transaction, again when a concurrent writer won a race: it
        took the name first (``NameTakenMeanwhile`` too), moved a folder this one held
        (``tree.ChainChanged``), or, on PostgreSQL, the two deadlocked (the server aborts one
        of them). The request's fence, if it has one, runs first in each transaction
        (``write_fence``: the WebDAV locks taken since the request checked them)."""
        for attempt in range(_RETRIES):
            last = attempt == _RETRIES - 1
            try:
                with self.db.write() as session:
                    run_write_fence(session)
                    return work(session)
            except (IntegrityError, NameTakenMeanwhile) as exc:
                if last:
                    raise AlreadyExists("the name is taken") from exc
            except tree.ChainChanged as exc:
                if last:
                    raise Conflict("the folders kept moving; try again") from exc
            except DBAPIError as exc:
                if last or not may_run_again(exc):
                    raise
        raise AssertionError("unreachable")

    def _give_the_name_back(
        self,
        session: Session,
        actor: Actor,
        saved: Node,
        name: str,
        document_id: uuid.UUID,
        tmp_name: str,
    ) -> bool:
        """An office program's save (``save_patterns``): the document it moved to ``tmp_name``
        takes its ``name`` back, with the ``saved`` file's content as its newest version, and
        ``saved`` takes ``tmp_name``, with the document's old content. False (nothing done)
        when the document is no longer where the save left it."""
        tree.take_turn(session, document_id)
        document = session.get(Node, document_id, with_for_update=NO_KEY_UPDATE)
        if document is None or not save_patterns.still_saved_away(document, tmp_name, saved):
            return False
        new, old = _content_of(session, saved), _content_of(session, document)
        saved_name = saved.name
        document.name, document.name_key = name, name_key(name)
        session.flush()  # the .tmp name is free now
        saved.name, saved.name_key = tmp_name, name_key(tmp_name)
        session.flush()
        folder = str(document.parent_id)
        for node, content, before, after in (
            (document, new, tmp_name, name),
            (saved, old, saved_name, tmp_name),
        ):
            blob_id, size, mime, mtime = content
            version_id, _ = self.add_version(
                session, actor, node.id, blob_id, size, mime, mtime=mtime
            )
            record_audit(
                session,
                actor,
                Op.NODE_MOVE,
                node_id=node.id,
                version_id=version_id,
                details={
                    "before": {"parent_id": folder, "name": before},
                    "after": {"parent_id": folder, "name": after},
                    "save": True,
                },
            )
        return True

    def _move_onto_file(
        self, session: Session, actor: Actor, source: Node, occupant: NodeView
    ) -> None:
        """A file moved onto a file becomes that file's newest version, and the source goes to
        the trash. Editors save so (gedit, LibreOffice, vim on davfs2: write a temporary file,
        rename it over the document); replacing the document's node would leave its history
        in the trash and start the live file again at version 1. Nextcloud keeps the
        history through such a rename too."""
        target = held_node(session, occupant.id)
        _trash(session, actor, source.id)  # first: its bytes stop counting against the quota
        self._copy_onto_file(session, actor, source, target, op=Op.NODE_MOVE)

    def _copy_onto_file(
        self,
        session: Session,
        actor: Actor,
        source: Node,
        target: Node,
        *,
        op: Op = Op.NODE_COPY,
    ) -> None:
        """``target`` was loaded FOR UPDATE by the caller (``live_node``); ``op`` is what the
        logbook calls it. The client's modification time goes with the content, to the
        version it becomes, as with a copy to a new name."""
        source_blob, target_blob = (
            session.scalar(sa.select(FileVersion.blob_id).where(FileVersion.id == version))
            for version in (source.current_version_id, target.current_version_id)
        )
        version_id = None
        if source_blob is not None and source_blob != target_blob:
            if target.group_id is None:  # the target's new size counts against its owner's quota
                check_quota(session, target.owner_id, source.size - target.size)
            version_id, _ = self.add_version(
                session,
                actor,
                target.id,
                source_blob,
                source.size,
                source.mime_type,
                mtime=source.mtime,  # in the new version's row and the file's
            )
        else:
            if source_blob is not None:
                # The bytes the file has make no new version, as with a PUT of them.
                version_id = target.current_version_id
            elif target.current_version_id is not None:
                add_home_bytes(session, target.owner_id, target.space, -target.size)
                target.current_version_id = None
                target.size = 0
                target.modified_at = utcnow()
            _keep_mtime(session, target.id, version_id, source.mtime)
        target.mime_type = source.mime_type
        record_audit(
            session,
            actor,
            op,
            node_id=target.id,
            version_id=version_id,
            details={"source": str(source.id), "onto": "existing file"},
        )


def _content_of(
    session: Session, node: Node
) -> tuple[uuid.UUID, int, str | None, dt.datetime | None]:
    """(blob id, size, MIME type, client's modification time) of a file's current version."""
    blob_id = session.scalar(
        sa.select(FileVersion.blob_id).where(FileVersion.id == node.current_version_id)
    )
    assert blob_id is not None
    return blob_id, node.size, node.mime_type, node.mtime


def _unchanged(file: NodeView, blob: StoredBlob) -> bool:
    """True when uploading ``blob`` to ``file`` changes nothing: the same bytes, or none onto
    a file that has none."""
    return file.sha256 == blob.sha256 or (file.current_version_id is None and blob.size == 0)


def _with_upload(
    file: NodeView,
    blob: StoredBlob,
    version_id: uuid.UUID,
    version_no: int,
    now: dt.datetime,
    mime_type: str | None,
    mtime: dt.datetime | None,
) -> NodeView:
    """``file`` once ``blob`` became its current version ``version_no`` at ``now``: what
    reading it back gives (the upload replaces a client's modification time with its own,
    or none)."""
    return dataclasses.replace(
        file,
        size=blob.size,
        mtime=mtime,
        modified_at=now,
        mime_type=mime_type,
        current_version_id=version_id,
        version_no=version_no,
        sha256=blob.sha256,
        md5=blob.md5,
        sha1=blob.sha1,
        storage_key=blob.storage_key,
    )


def live_node(session: Session, node_id: uuid.UUID) -> Node:
    """The node, locked for this transaction (``NO_KEY_UPDATE``, after its turn:
    ``tree.take_turn``); NotFound when it is missing or in the trash."""
    tree.take_turn(session, node_id)
    node = session.get(Node, node_id, with_for_update=NO_KEY_UPDATE)
    if node is None or node.deleted_at is not None:
        raise NotFound("no such file or folder")
    return node


def held_node(session: Session, node_id: uuid.UUID, *, seen: NodeView | None = None) -> Node:
    """``live_node``, with the folders above it held until the transaction ends
    (``tree.hold_chain``): for a change to what the node counts for in its owner's usage (its
    size, or whether it is live), which must not race with a folder above it going to the
    trash. ``seen``: see ``still_where_seen``, checked first (a node moved meanwhile into a
    folder since trashed is NotFound where the request found it, not in a deleted folder)."""
    node = still_where_seen(live_node(session, node_id), seen)
    if node.parent_id is not None:
        tree.hold_chain(session, node.parent_id)
    return node


def hold_folder(session: Session, folder: NodeView) -> None:
    """``tree.hold_chain`` for a change inside ``folder``; nothing to hold for a space's root,
    which can neither move nor go to the trash."""
    if folder.parent_id is not None:
        tree.hold_chain(session, folder.id)


# The request's two URLs (say /users/<name>/a and /files/a) name one node: WsgiDAV compares only
# the URLs, and refuses the same one with 403.
_SAME = "source and destination are the same"


def still_where_seen(node: Node, seen: NodeView | None) -> Node:
    """``node`` (locked by the caller), if it is still where a request found it (``seen``,
    None: wherever it is). NotFound when it has moved or been renamed since: another
    request's MOVE committed in between, and the request's URL no longer names it. A folder
    above it moving meanwhile does not matter: the outcome is as if this ran first."""
    if seen is not None and (node.parent_id, node.name) != (seen.parent_id, seen.name):
        raise NotFound("no such file or folder: it was moved or renamed meanwhile")
    return node


def _occupant(
    session: Session,
    folder: NodeView,
    name: str,
    *,
    overwrite: bool,
    mover: Node | None = None,
) -> NodeView | None:
    """What a COPY or MOVE to ``folder/name`` replaces: the live node there now, locked
    (None when the name is free, or holds ``mover`` itself: a case-only rename).
    PreconditionFailed when something is there and the client did not agree to
    ``overwrite`` it. What the request saw there may have gone or come meanwhile."""
    key = name_key(name)
    _hold_name(session, folder.id, key)
    found = tree.child_for_update(session, folder.id, key)
    if found is None or (mover is not None and found.id == mover.id):
        return None
    if not overwrite:
        raise PreconditionFailed(f"{name!r} exists and Overwrite is F")
    return found


def _refuse_replacing_a_folder_above(
    session: Session, occupant: NodeView, source_parent_id: uuid.UUID | None
) -> None:
    """Forbidden when the destination a COPY or MOVE would replace is a folder the source is
    in: replacing it would take the source along to the trash, and everything else in that
    folder with it (mod_dav answers 403 "Destination collection contains the Source" too)."""
    if (
        occupant.is_folder
        and source_parent_id is not None
        and occupant.id in tree.chain_ids(session, source_parent_id)
    ):
        raise Forbidden("the destination is a folder the source is in")


def _hold_name(session: Session, folder_id: uuid.UUID, key: str) -> None:
    """On PostgreSQL, one COPY or MOVE at a time onto one name in a folder, until the
    transaction ends (a transaction-level advisory lock; SQLite's writers queue anyway).

    Without it, of several waiting to replace what is there, each that waited for the
    winner's row lock found nothing (that row left the name, and the winner's came after
    the statement began), collided with the winner's row and ran again: one more round for
    each contender, past ``FileService.run_write``'s retries (412 for a MOVE with Overwrite:
    T). Once this is held, the lookup that follows sees the last winner's row.
    """
    if is_postgres(session):
        digest = hashlib.blake2b(f"{folder_id}/{key}".encode(), digest_size=8).digest()
        lock_key = int.from_bytes(digest, "big", signed=True)
        session.execute(sa.select(sa.func.pg_advisory_xact_lock(lock_key)))


def _move_to_another_space(
    session: Session, actor: Actor, node: Node, dest_parent: NodeView, dest_name: str
) -> uuid.UUID:
    """MOVE into another space, as RFC 4918 (9.9) defines it: a copy, then the delete of the
    source, in one transaction. Rows belong to their space's owner (its quota, trash and
    sharing), so the node and everything below it are copied there, every version and dead
    property along, sharing the blobs; the source goes to its own space's trash, from which
    its owner can still restore it. The copy's id."""
    copied = copy_subtree(session, actor, node, dest_parent, dest_name, True, history=True)
    _trash(session, actor, node.id)
    return copied


def _trash(
    session: Session,
    actor: Actor,
    node_id: uuid.UUID,
    *,
    overwritten: bool = False,
    seen: NodeView | None = None,
) -> None:
    """Move a node, and so everything below it, to the trash: one UPDATE. ``seen``: see
    ``still_where_seen``."""
    node = held_node(session, node_id, seen=seen)
    if node.parent_id is None:
        raise Conflict("the root of a space cannot be deleted")
    if node.space == Space.HOME.value:  # what it and everything below it held stops counting
        add_home_bytes(session, node.owner_id, node.space, -bytes_below(session, node.id))
    node.deleted_at = utcnow()
    node.deleted_by = actor.user_id
    session.flush()
    details: dict[str, object] = {"name": node.name}
    if overwritten:
        details["overwritten"] = True
    record_audit(session, actor, Op.NODE_DELETE, node_id=node.id, details=details)


def insert_child(
    session: Session,
    parent_id: uuid.UUID,
    name: str,
    kind: NodeKind,
    *,
    mime: str | None = None,
    known_free: bool = False,
    now: dt.datetime | None = None,
) -> uuid.UUID:
    """Insert a child that inherits owner, space and group from its live parent folder,
    created ``now`` (default: the present).

    Raises AlreadyExists when a live sibling has the name (``known_free``: the caller just
    looked), Conflict when the parent is gone.
    """
    key = name_key(name)
    if (
        not known_free
        and session.scalar(_LIVE_CHILD, {"parent_id": parent_id, "key": key}) is not None
    ):
        raise AlreadyExists(f"{name!r} exists")
    node_id = uuid.uuid4()
    inserted = session.execute(
        _INSERT_CHILD,
        {
            "id": node_id,
            "parent_id": parent_id,
            "name": name,
            "key": key,
            "kind": kind.value,
            "mime": mime,
            "now": now or utcnow(),
        },
    )
    if inserted.first() is None:
        raise Conflict("the parent folder does not exist")
    return node_id


def view_of(session: Session, node_id: uuid.UUID) -> NodeView:
    """The node as the caller's transaction sees it now (pending changes flushed)."""
    session.flush()
    view = tree.get_node(session, node_id)
    assert view is not None
    return view


def _keep_mtime(
    session: Session, node_id: uuid.UUID, version_id: uuid.UUID | None, mtime: dt.datetime | None
) -> None:
    """Keep the client's modification time (if it gave one) on a file and its current
    version ``version_id`` (None for an empty file, which has none)."""
    if mtime is None:
        return
    session.execute(sa.update(Node).where(Node.id == node_id).values(mtime=mtime))
    if version_id is not None:
        session.execute(
            sa.update(FileVersion).where(FileVersion.id == version_id).values(mtime=mtime)
        )


def _make_current(
    session: Session,
    node_id: uuid.UUID,
    version_id: uuid.UUID,
    size: int,
    now: dt.datetime,
    mime: str | None,
    mtime: dt.datetime | None,
    *,
    counted: bool = True,
) -> None:
    """Point a file at its new current version, with the client's ``mtime`` (or none); with
    ``counted``, its owner's ``home_bytes`` follows the size (before the node changes: the
    statement reads the size it had)."""
    if counted:
        session.execute(_HOME_BYTES_FOLLOW, {"node_id": node_id, "size": size})
    session.execute(
        _SET_CURRENT,
        {
            "node_id": node_id,
            "version_id": version_id,
            "size": size,
            "now": now,
            "mime": mime,
            "mtime": mtime,
        },
    )


_n = Base.metadata.tables["nodes"]
_v = Base.metadata.tables["file_versions"]
_b = Base.metadata.tables["blobs"]
# A new child inherits owner, space and group from its parent, which must still be live. The
# parent is looked up by its id alone (see tree.one_row), then checked.
_parent = tree.one_row(
    ("id", "owner_id", "space", "group_id", "deleted_at", "kind"),
    _n.c.id == sa.bindparam("parent_id", type_=sa.Uuid),
).subquery("parent")
_INSERT_CHILD = (
    _n.insert()
    .from_select(
        [
            "id",
            "parent_id",
            "name",
            "name_key",
            "kind",
            "owner_id",
            "space",
            "group_id",
            "mime_type",
            "size",
            "created_at",
            "modified_at",
        ],
        sa.select(
            sa.bindparam("id", type_=sa.Uuid),
            _parent.c.id,
            sa.bindparam("name", type_=sa.String),
            sa.bindparam("key", type_=sa.String),
            sa.bindparam("kind", type_=sa.String),
            _parent.c.owner_id,
            _parent.c.space,
            _parent.c.group_id,
            sa.bindparam("mime", type_=sa.String),
            sa.literal(0, sa.BigInteger),
            sa.bindparam("now", type_=UTCDateTime),
            sa.bindparam("now", type_=UTCDateTime),
        ).where(
            _parent.c.deleted_at.is_(None),
            _parent.c.kind == NodeKind.FOLDER.value,
        ),
    )
    .returning(_n.c.id)
)


_LAST_VERSION_NO = sa.select(sa.func.max(_v.c.version_no)).where(
    _v.c.node_id == sa.bindparam("node_id", type_=sa.Uuid)
)
_INSERT_VERSION = _v.insert()
_SET_CURRENT = (
    _n.update()
    .where(_n.c.id == sa.bindparam("node_id", type_=sa.Uuid))
    .values(
        current_version_id=sa.bindparam("version_id", type_=sa.Uuid),
        size=sa.bindparam("size", type_=sa.BigInteger),
        modified_at=sa.bindparam("now", type_=UTCDateTime),
        mtime=sa.bindparam("mtime", type_=UTCDateTime),
        mime_type=sa.func.coalesce(sa.bindparam("mime", type_=sa.String), _n.c.mime_type),
    )
)
_u = Base.metadata.tables["users"]
# A file about to get a new size: its owner's total moves by the difference, if the file is in
# the owner's own space and not itself in the trash (a file in a group space counts nowhere).
# The file is looked up by its id alone (see tree.one_row), then checked.
_file = tree.one_row(
    ("owner_id", "space", "deleted_at", "size"),
    _n.c.id == sa.bindparam("node_id", type_=sa.Uuid),
).subquery("changing")
_HOME_BYTES_FOLLOW = (
    _u.update()
    .where(
        _u.c.id
        == sa.select(_file.c.owner_id)
        .where(_file.c.space == Space.HOME.value, _file.c.deleted_at.is_(None))
        .scalar_subquery()
    )
    .values(
        home_bytes=_u.c.home_bytes
        + sa.bindparam("size", type_=sa.BigInteger)
        - sa.select(_file.c.size).scalar_subquery(),
        updated_at=_u.c.updated_at,
    )
)
_LIVE_CHILD = sa.select(_n.c.id).where(
    _n.c.parent_id == sa.bindparam("parent_id", type_=sa.Uuid),
    _n.c.name_key == sa.bindparam("key"),
    _n.c.deleted_at.is_(None),
)


_GROUP_ROOT = sa.select(_n.c.id).where(
    _n.c.group_id == sa.bindparam("group_id", type_=sa.Uuid),
    _n.c.parent_id.is_(None),
    _n.c.space == Space.GROUP.value,
)
