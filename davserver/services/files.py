"""Files and folders: create, upload, delete, move, copy, properties. One transaction each.

Every method that changes something writes its logbook row in the same transaction. Bytes
never pass through here: an upload is written to the blob store first (see ``BlobWriter``) and
``commit_upload`` only records the finished blob (``blob_refs``: with its bytes in place).
The rows themselves are written by ``node_rows`` (the tree), ``version_rows`` (a file's
versions) and ``uploads`` (an upload's transaction); this module holds the transactions.
"""

from __future__ import annotations

import datetime as dt
import threading
import uuid
from collections.abc import Callable, Iterable, Sequence
from typing import Any, BinaryIO, TypeVar

import sqlalchemy as sa
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.orm import Session

from davserver.blobstore import BlobStore, StoredBlob
from davserver.db import Base, Database
from davserver.db.dialect import NO_KEY_UPDATE
from davserver.db.engine import may_run_again
from davserver.db.types import utcnow
from davserver.errors import AlreadyExists, Conflict, Forbidden
from davserver.models import DeadProperty, FileVersion, Node, NodeKind, Op, Space
from davserver.services import blob_refs, dead_props, save_patterns, tree, usage, version_rules
from davserver.services.actor import Actor
from davserver.services.audit import ReadLog, record_audit
from davserver.services.grant_support import recheck_moved, space_of
from davserver.services.lost_bytes import open_stored, require_stored
from davserver.services.node_rows import (
    SAME,
    held_node,
    hold_folder,
    insert_child,
    live_node,
    occupant_at,
    refuse_replacing_a_folder_above,
    still_where_seen,
    trash_node,
    view_of,
)
from davserver.services.subtree_copy import NameTakenMeanwhile, copy_subtree
from davserver.services.tree import NodeView, check_name, is_client_metadata, name_key
from davserver.services.uploads import Upload, record_upload
from davserver.services.usage import add_home_bytes, check_quota
from davserver.services.version_rows import add_version, content_of, keep_mtime, mtime_change
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

    def home_ids(self, user_ids: Sequence[uuid.UUID]) -> list[uuid.UUID]:
        """``home_id`` of each user, the missing spaces made in one transaction (a listing of
        /users/ meets them all at once: one transaction each took 2.6 s for 2,000)."""
        missing = [user_id for user_id in user_ids if user_id not in self._home_ids]
        if missing:
            with self._home_lock:
                made = self.run_write(lambda s: [self._create_home(s, u).id for u in missing])
                self._home_ids.update(zip(missing, made, strict=True))
        return [self._home_ids[user_id] for user_id in user_ids]

    def group_root_ids(
        self, group_ids: Sequence[uuid.UUID], creator_id: uuid.UUID
    ) -> list[uuid.UUID]:
        """``group_root_id`` of each group, the missing roots made in one transaction (as
        ``home_ids``, for /groups/)."""
        missing = [group_id for group_id in group_ids if group_id not in self._group_root_ids]
        if missing:
            with self._home_lock:
                made = self.run_write(
                    lambda s: [self._create_group_root(s, g, creator_id) for g in missing]
                )
                self._group_root_ids.update(zip(missing, made, strict=True))
        return [self._group_root_ids[group_id] for group_id in group_ids]

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

    def folder_sizes(self, folder_ids: list[uuid.UUID]) -> dict[uuid.UUID, int]:
        """``subtree_size`` of each of these live folders, in one query."""
        with self.db.connect() as conn:
            return usage.folder_sizes(conn, folder_ids)

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
        return open_stored(self.blobs, view.storage_key, view.name, view.size)

    def check_content(self, view: NodeView) -> None:
        """What ``open_content`` would raise, without opening the bytes: NotFound when the
        blob store has lost them (a HEAD answers what a GET would)."""
        require_stored(self.blobs, view.storage_key, view.name, view.size)

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
        upload = Upload(
            actor,
            parent,
            name,
            blob,
            mime=content_type[:255] if content_type else None,
            expected_version_id=expected_version_id,
            must_be_new=must_be_new,
            enforce_quota=enforce_quota,
            lock_since=lock_since,
            mtime=mtime,
        )
        try:
            actor.require_write()
            check_name(name)
            return blob_refs.placing(
                self.db,
                self.blobs,
                blob,
                lambda placed: self.run_write(
                    lambda session: record_upload(session, self.blobs, self.policy, upload, placed)
                ),
            )
        finally:
            # The writer's spare copy matters only until the referencing transaction has ended.
            self.blobs.release(blob)

    def delete(self, actor: Actor, node_id: uuid.UUID, *, seen: NodeView | None = None) -> None:
        """Move a node (and so everything below it) to the trash: one UPDATE.

        ``seen`` is the node as the request found it at its URL: NotFound when it has moved
        or been renamed since (see ``still_where_seen``).
        """
        actor.require_write()

        self.run_write(lambda session: trash_node(session, actor, node_id, seen=seen))

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
                raise Forbidden(SAME)  # a case-only rename is not the same name
            dest_chain = tree.hold_chain(session, dest_parent.id)
            if node.id in dest_chain:
                raise Forbidden("cannot move a folder into itself")
            occupant = occupant_at(session, dest_parent, dest_name, overwrite=overwrite, mover=node)
            if occupant is not None:
                refuse_replacing_a_folder_above(session, occupant, node.parent_id)
                if moves_in_as_version(node.is_folder, occupant, dest_name):
                    self._move_onto_file(session, actor, node, occupant)
                    return occupant
                trash_node(session, actor, occupant.id, overwritten=True)
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
                moved, moved_from = node.id, node.parent_id
                node.parent_id = dest_parent.id
                node.name = dest_name
                node.name_key = name_key(dest_name)
                session.flush()
                because = f"{dest_name!r} was moved"
                recheck_moved(session, actor, space_of(*space), moved_from, dest_chain, because)
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
            occupant = occupant_at(session, dest_parent, dest_name, overwrite=overwrite)
            if occupant is not None:
                if occupant.id == source.id:
                    raise Forbidden(SAME)
                target = held_node(session, occupant.id)
                if not source.is_folder and not target.is_folder:
                    self._copy_onto_file(session, actor, source, target)
                    return occupant
                refuse_replacing_a_folder_above(session, occupant, source.parent_id)
                trash_node(session, actor, occupant.id, overwritten=True)
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
            keep_mtime(session, node.id, node.current_version_id, mtime)
            record_audit(
                session,
                actor,
                Op.NODE_PROPPATCH,
                node_id=node.id,
                details={"mtime": mtime_change(before, mtime)},
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
                keep_mtime(session, node.id, node.current_version_id, mtime)
                details["mtime"] = mtime_change(before, mtime)
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
        new, old = content_of(session, saved), content_of(session, document)
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
            version_id, _ = add_version(
                session, self.policy, actor, node.id, blob_id, size, mime, mtime=mtime
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
        trash_node(session, actor, source.id)  # first: its bytes stop counting against the quota
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
            version_id, _ = add_version(
                session,
                self.policy,
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
            keep_mtime(session, target.id, version_id, source.mtime)
        target.mime_type = source.mime_type
        record_audit(
            session,
            actor,
            op,
            node_id=target.id,
            version_id=version_id,
            details={"source": str(source.id), "onto": "existing file"},
        )


def moves_in_as_version(moving_a_folder: bool, occupant: NodeView, dest_name: str) -> bool:
    """Whether a node moved onto ``occupant`` becomes its newest version (a file onto a file),
    so that the occupant stays, with its history, grants and locks; else the occupant goes to
    the trash. A client's metadata file (``._name``, ``.DS_Store``) keeps no history: it is
    replaced."""
    return not (moving_a_folder or occupant.is_folder or is_client_metadata(dest_name))


def _move_to_another_space(
    session: Session, actor: Actor, node: Node, dest_parent: NodeView, dest_name: str
) -> uuid.UUID:
    """MOVE into another space, as RFC 4918 (9.9) defines it: a copy, then the delete of the
    source, in one transaction. Rows belong to their space's owner (its quota, trash and
    sharing), so the node and everything below it are copied there, every version and dead
    property along, sharing the blobs; the source goes to its own space's trash, from which
    its owner can still restore it. The copy's id."""
    copied = copy_subtree(session, actor, node, dest_parent, dest_name, True, history=True)
    trash_node(session, actor, node.id)
    return copied


_n = Base.metadata.tables["nodes"]
_GROUP_ROOT = sa.select(_n.c.id).where(
    _n.c.group_id == sa.bindparam("group_id", type_=sa.Uuid),
    _n.c.parent_id.is_(None),
    _n.c.space == Space.GROUP.value,
)
