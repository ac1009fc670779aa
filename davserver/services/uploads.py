"""Recording a finished upload: the transaction of every PUT, once its bytes are stored.

The file is created, or gets a new version, or has its current version replaced (uploads
under one lock coalesce, a client metadata file keeps no history), or nothing changes (the
same bytes); the owner's total and quota follow, and the logbook row is written. This is the
hottest write path, so it runs Core statements and reads back nothing it already knows.
``FileService.commit_upload`` runs it, again when a concurrent writer won a race.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import uuid

from sqlalchemy.orm import Session

from davserver.blobstore import BlobStore, StoredBlob
from davserver.db.types import utcnow
from davserver.errors import Conflict, PreconditionFailed
from davserver.models import NodeKind, Op, Space
from davserver.services import blob_refs, tree, version_rules
from davserver.services.actor import Actor
from davserver.services.audit import record_audit
from davserver.services.node_rows import insert_child, view_of
from davserver.services.tree import NodeView, is_client_metadata, name_key
from davserver.services.usage import add_upload_bytes
from davserver.services.version_rows import (
    add_version,
    keep_mtime,
    mtime_change,
    replace_version,
)


@dataclasses.dataclass(frozen=True)
class Upload:
    """A stored blob to record as the newest version of ``parent/name``, on the terms of
    ``FileService.commit_upload`` (which documents each)."""

    actor: Actor
    parent: NodeView
    name: str
    blob: StoredBlob
    mime: str | None = None
    expected_version_id: uuid.UUID | None = None
    must_be_new: bool = False
    enforce_quota: bool = False
    lock_since: dt.datetime | None = None
    mtime: dt.datetime | None = None

    @property
    def space(self) -> str:
        return Space.HOME.value if self.parent.group_id is None else Space.GROUP.value


def record_upload(
    session: Session,
    blobs: BlobStore,
    policy: version_rules.VersionPolicy,
    upload: Upload,
    placed: uuid.UUID | None,
) -> tuple[NodeView, bool]:
    """Record ``upload`` in ``session``'s write transaction; ``placed`` is the blob row the
    store's placing made, if any (``blob_refs.placing``). Returns the file and whether it
    was created.

    Below a space's root the folders above are held (``tree.hold_chain``) by the statement
    that looks for the file; the file, when it is there and changes, is locked next (two
    uploads to one file queue there), the owner's row last, by the statement before the
    commit (``usage.add_upload_bytes``: the running total and the quota). PostgreSQL aborts
    the rare deadlock with a copy onto the file and the trash of its folder at once, and
    ``FileService.run_write`` runs it again.
    """
    parent, key = upload.parent, name_key(upload.name)
    if parent.parent_id is None:  # a root can neither move nor go to the trash
        current = tree.child_for_update(session, parent.id, key)
    else:
        current = tree.hold_chain_for_child(session, parent.id, key)
        if current is not None and not _unchanged(current, upload.blob):
            current = tree.child_for_update(session, parent.id, key)
    if upload.must_be_new and current is not None:
        raise PreconditionFailed(f"{upload.name!r} was created meanwhile")
    if current is None:
        if upload.expected_version_id is not None:
            raise PreconditionFailed("the file no longer exists")
        return _create_file(session, blobs, policy, upload, placed), True
    return _change_file(session, blobs, policy, upload, placed, current), False


def _create_file(
    session: Session,
    blobs: BlobStore,
    policy: version_rules.VersionPolicy,
    upload: Upload,
    placed: uuid.UUID | None,
) -> NodeView:
    """The upload makes a new file: with a first version, unless it has no bytes."""
    actor, parent, name, blob = upload.actor, upload.parent, upload.name, upload.blob
    now = utcnow()
    node_id = insert_child(
        session, parent.id, name, NodeKind.FILE, mime=upload.mime, known_free=True, now=now
    )
    if blob.size == 0:
        keep_mtime(session, node_id, None, upload.mtime)
        record_audit(session, actor, Op.FILE_CREATE, node_id=node_id, details={"name": name})
        return view_of(session, node_id)
    version_id, version_no = add_version(
        session,
        policy,
        actor,
        node_id,
        blob_refs.reference_id(session, blobs, blob, placed),
        blob.size,
        upload.mime,
        first=True,
        now=now,
        mtime=upload.mtime,
        counted=False,
    )
    blob_refs.referenced(session, blobs, blob)
    record_audit(
        session,
        actor,
        Op.FILE_CREATE,
        node_id=node_id,
        version_id=version_id,
        details={"name": name, "version_no": 1, "size": blob.size, "sha256": blob.sha256},
    )
    add_upload_bytes(
        session, parent.owner_id, upload.space, blob.size, enforce_quota=upload.enforce_quota
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
        mime_type=upload.mime,
        current_version_id=None,
        version_no=None,
        sha256=None,
        md5=None,
        sha1=None,
        storage_key=None,
    )
    return _with_upload(empty, blob, version_id, version_no, now, upload.mime, upload.mtime)


def _change_file(
    session: Session,
    blobs: BlobStore,
    policy: version_rules.VersionPolicy,
    upload: Upload,
    placed: uuid.UUID | None,
    current: NodeView,
) -> NodeView:
    """The upload goes to the existing file ``current`` (read with its row locked, when it
    changes): a new version, the current one replaced, or nothing for the same bytes."""
    actor, blob, mtime = upload.actor, upload.blob, upload.mtime
    node_id, current_version_id = current.id, current.current_version_id
    if current.is_folder:
        raise Conflict(f"{upload.name!r} is a folder")
    if upload.expected_version_id is not None and current_version_id != upload.expected_version_id:
        raise PreconditionFailed("the file changed since the ETag was issued")
    if _unchanged(current, blob):
        if mtime is None or mtime == current.mtime:
            return current
        # No new version, but a new time (rclone sends X-OC-Mtime with every upload): as a
        # PROPPATCH of the time would be.
        keep_mtime(session, node_id, current_version_id, mtime)
        changed = {"mtime": mtime_change(current.mtime, mtime)}
        record_audit(session, actor, Op.NODE_PROPPATCH, node_id=node_id, details=changed)
        return dataclasses.replace(current, mtime=mtime)
    now = utcnow()
    op, details = Op.FILE_VERSION_CREATE, {}
    coalesced = (
        version_rules.coalesces(session, policy, actor, current_version_id, upload.lock_since)
        if current_version_id is not None
        else None
    )
    if (
        current_version_id is not None
        and not coalesced
        and _replaces_metadata(session, upload.name, current_version_id)
    ):
        coalesced = "metadata"
    blob_id = blob_refs.reference_id(session, blobs, blob, placed)
    if current_version_id is not None and coalesced:
        version_id, version_no = replace_version(
            session, actor, node_id, current_version_id, blob_id, blob.size, now, mtime
        )
        mime_type = current.mime_type  # a replaced version keeps the type
        # What was overwritten: its bytes are gone from the history after this.
        before = {"size": current.size, "sha256": current.sha256}
        op, details = Op.FILE_VERSION_REPLACE, {"coalesced": coalesced, "before": before}
    else:
        version_id, version_no = add_version(
            session,
            policy,
            actor,
            node_id,
            blob_id,
            blob.size,
            upload.mime,
            now=now,
            mtime=mtime,
            counted=False,
        )
        mime_type = upload.mime or current.mime_type
    blob_refs.referenced(session, blobs, blob)
    record_audit(
        session,
        actor,
        op,
        node_id=node_id,
        version_id=version_id,
        details={"version_no": version_no, "size": blob.size, "sha256": blob.sha256, **details},
    )
    # ``current`` was read with the file's row locked: its size is the one replaced.
    growth = blob.size - current.size
    add_upload_bytes(
        session, upload.parent.owner_id, upload.space, growth, enforce_quota=upload.enforce_quota
    )
    # What changed is known here: no need to read the file back.
    return _with_upload(current, blob, version_id, version_no, now, mime_type, mtime)


def _replaces_metadata(session: Session, name: str, version_id: uuid.UUID) -> bool:
    """Whether an upload onto a client metadata file (no history kept) replaces its current
    version: not when a package pins it, as its bytes were promised."""
    return is_client_metadata(name) and not version_rules.pinned(session, [version_id])


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
