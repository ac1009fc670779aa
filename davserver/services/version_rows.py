"""A file's versions inside a write transaction: add the next one (the retention policy then
prunes the older ones), overwrite the current one in place, point the file at it with the
owner's total following its size, and keep the client's modification time.

Every function runs in its caller's transaction, on a file the caller has locked
(``node_rows.live_node``); the caller writes the logbook row.
"""

from __future__ import annotations

import datetime as dt
import uuid

import sqlalchemy as sa
from sqlalchemy.orm import Session

from davserver.db import Base
from davserver.db.types import UTCDateTime, utcnow
from davserver.models import FileVersion, Node, Space
from davserver.services import tree, version_rules
from davserver.services.actor import Actor


def add_version(
    session: Session,
    policy: version_rules.VersionPolicy,
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
    version_no = 1 if first else (session.scalar(_LAST_VERSION_NO, {"node_id": node_id}) or 0) + 1
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
    make_current(session, node_id, version_id, size, now, mime, mtime, counted=counted)
    if not first:
        version_rules.prune_file(session, policy, actor, node_id, current_id=version_id)
    return version_id, version_no


def replace_version(
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
    make_current(session, node_id, version_id, size, now, None, mtime, counted=False)
    return version_id, version.version_no


def keep_mtime(
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


def mtime_change(before: dt.datetime | None, after: dt.datetime) -> dict[str, str | None]:
    """A new client modification time as the logbook tells it (``node:proppatch``)."""
    return {
        "before": before.isoformat() if before is not None else None,
        "after": after.isoformat(),
    }


def make_current(
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


def content_of(
    session: Session, node: Node
) -> tuple[uuid.UUID, int, str | None, dt.datetime | None]:
    """(blob id, size, MIME type, client's modification time) of a file's current version."""
    blob_id = session.scalar(
        sa.select(FileVersion.blob_id).where(FileVersion.id == node.current_version_id)
    )
    assert blob_id is not None
    return blob_id, node.size, node.mime_type, node.mtime


_n = Base.metadata.tables["nodes"]
_v = Base.metadata.tables["file_versions"]

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
