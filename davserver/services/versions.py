"""Version history: reading it, restoring from it, and ``/versions/`` in a user's namespace.

    /versions/                               the spaces that hold files
    /versions/files/docs/                    a folder: its folders, and its files as folders
    /versions/files/docs/report.docx/        one entry per version of the file
    /versions/files/docs/report.docx/report.v3.docx    version 3

An entry is named after its file with ``.v<N>`` before the extension, so the operating system
still opens it with the right program. The tree is read-only; rights come from the namespace
(reading the history needs READ, a version's bytes DOWNLOAD, like the file itself). A restore
adds a version that shares the old version's blob: no bytes are copied.

Restores work on the rows ``FileService`` owns, through its helpers, so a version is added in
exactly one way; the rules of coalescing and retention are in ``version_rules``.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import posixpath
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, BinaryIO

import sqlalchemy as sa
from sqlalchemy.orm import Session

from davserver.db import Base, Database
from davserver.db.dialect import NO_KEY_UPDATE
from davserver.db.types import utcnow
from davserver.errors import Conflict, DomainError, NotFound
from davserver.models import NodeKind, Op
from davserver.services import version_rules
from davserver.services.actor import Actor
from davserver.services.audit import record_audit
from davserver.services.bounds import spelled_number
from davserver.services.files import FileService
from davserver.services.lost_bytes import open_stored, require_stored
from davserver.services.maintenance import Progress, ProgressCallback
from davserver.services.namespace import AccessContext, NamespaceService, Reached, Virtual
from davserver.services.node_rows import held_node, hold_folder, insert_child, view_of
from davserver.services.tree import NodeView, check_name, name_key
from davserver.services.usage import check_quota
from davserver.services.version_rows import add_version

SPACE = "versions"
# The spaces whose files have a history to browse (``users`` only for those who see it).
HISTORY_SPACES = ("files", "groups", "shared", "users")


@dataclass(frozen=True)
class VersionInfo:
    """One version of a file, as the history shows it."""

    id: uuid.UUID
    node_id: uuid.UUID
    version_no: int
    size: int
    blob_id: uuid.UUID
    sha256: str
    sha1: str
    md5: str
    storage_key: str
    author: str | None  # the uploader's username; None once that user is gone
    uploaded_at: dt.datetime
    mtime: dt.datetime | None  # the client's modification time, if it gave one
    is_current: bool

    @property
    def last_modified(self) -> dt.datetime:
        return self.mtime or self.uploaded_at


# -- what /versions/ paths resolve to (``providers.versions`` gives them resources)


@dataclass(frozen=True)
class HistoryFolder:
    """A folder seen in /versions/: lists its folders, and its files as folders of versions."""

    reached: Reached


@dataclass(frozen=True)
class History:
    """A file seen in /versions/: a folder with one entry per version."""

    reached: Reached


@dataclass(frozen=True)
class VersionEntry:
    """One version of the file ``reached``."""

    reached: Reached
    version: VersionInfo

    @property
    def name(self) -> str:
        return entry_name(self.reached.view.name, self.version.version_no)


# file_versions.version_no is an Integer: 32 bits on PostgreSQL.
MAX_VERSION_NO = 2**31 - 1


def entry_name(file_name: str, version_no: int) -> str:
    """``report.docx``, 3 -> ``report.v3.docx``; ``Makefile``, 3 -> ``Makefile.v3``."""
    stem, ext = posixpath.splitext(file_name)
    return f"{stem}.v{version_no}{ext}"


def parse_entry_name(file_name: str, entry: str) -> int | None:
    """The version number ``entry`` names for ``file_name`` (``entry_name`` reversed), or None."""
    stem, ext = posixpath.splitext(name_key(file_name))
    entry = name_key(entry)
    head = f"{stem}.v"
    if not entry.startswith(head) or not entry.endswith(ext):
        return None
    digits = entry[len(head) : len(entry) - len(ext)]
    if not digits.isascii() or not digits.isdigit() or digits.startswith("0"):
        return None
    return version_no_of(digits)


def version_no_of(digits: str) -> int | None:
    """The number ASCII ``digits`` spell, or None past MAX_VERSION_NO: a number no version can
    have names none, rather than overflowing the query (or ``int``, at 4,300 digits)."""
    return spelled_number(digits, MAX_VERSION_NO)


@dataclass
class PruneReport:
    """What ``VersionService.prune`` removed (with ``dry_run``: would remove)."""

    dry_run: bool
    keep_last: int
    thin_after_days: int
    files_checked: int = 0
    files_pruned: int = 0
    versions_removed: int = 0
    bytes_removed: int = 0  # sizes of the removed versions; gc frees what nothing else uses
    seconds: float = 0.0
    errors: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.errors

    def as_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "ok": self.ok}


class VersionService:
    def __init__(self, db: Database, files: FileService) -> None:
        self.db = db
        self.files = files

    @property
    def policy(self) -> version_rules.VersionPolicy:
        return self.files.policy

    # ------------------------------------------------------------------ reads

    def history(self, node_id: uuid.UUID) -> list[VersionInfo]:
        """Every version of a file, oldest first (one query)."""
        with self.db.connect() as conn:
            rows = conn.execute(_HISTORY.where(_v.c.node_id == node_id).order_by(_v.c.version_no))
            return [_info(row) for row in rows]

    def get(self, node_id: uuid.UUID, version_no: int) -> VersionInfo | None:
        with self.db.connect() as conn:
            row = conn.execute(
                _HISTORY.where(_v.c.node_id == node_id, _v.c.version_no == version_no)
            ).first()
        return _info(row) if row else None

    def open(self, version: VersionInfo) -> BinaryIO:
        """A seekable reader of a version's bytes; NotFound when the blob store lost them."""
        what = f"version {version.version_no}"
        return open_stored(self.files.blobs, version.storage_key, what, version.size)

    def check_bytes(self, version: VersionInfo) -> None:
        """What ``open`` would raise, without opening the bytes: NotFound when the blob store
        lost them (a HEAD answers what a GET would)."""
        what = f"version {version.version_no}"
        require_stored(self.files.blobs, version.storage_key, what, version.size)

    def resolve(
        self, namespace: NamespaceService, ctx: AccessContext, rest: list[str]
    ) -> list[Any]:
        """The ``/versions/`` space (``NamespaceService.add_space``): what each prefix is."""
        visible = namespace.spaces_for(ctx.actor)
        found: list[Any] = [Virtual([s for s in HISTORY_SPACES if s in visible])]
        if not rest or rest[0] not in HISTORY_SPACES or rest[0] not in visible:
            return found
        # A version's name tells which file it belongs to: resolve that file, not a child of it.
        number = parse_entry_name(rest[-2], rest[-1]) if len(rest) > 1 else None
        prefixes = namespace.resolve_prefixes(ctx, rest[:-1] if number else rest)
        if number and not (isinstance(prefixes[-1], Reached) and not prefixes[-1].view.is_folder):
            number, prefixes = None, namespace.resolve_prefixes(ctx, rest)
        if None in prefixes[:-1]:
            # The namespace does not tell a file met midway from a missing name; here a file
            # is a folder (of its versions), so look again up to that name.
            prefixes = namespace.resolve_prefixes(ctx, rest[: prefixes.index(None) + 1])
        missing = False
        for item in prefixes:
            if isinstance(item, Virtual):
                found.append(item)
            elif isinstance(item, Reached):
                found.append(HistoryFolder(item) if item.view.is_folder else History(item))
            else:
                missing = True
                break
        file = found[-1]
        if missing:
            if number or len(found) < len(rest) or not isinstance(file, History):
                return found
            # Only the last name is missing, below a file listed under another name than its
            # own (``/shared/<owner>/doc (2).txt``, a namesake told apart): its versions are
            # named after its own name (``doc.v1.txt``).
            number = parse_entry_name(file.reached.view.name, rest[-1])
        if number and isinstance(file, History):
            version = self.get(file.reached.view.id, number)
            if version is not None:
                found.append(VersionEntry(file.reached, version))
        return found

    # ----------------------------------------------------------------- writes

    def restore(self, actor: Actor, version: VersionInfo, target: NodeView) -> int | None:
        """Make ``version``'s bytes the newest version of the file ``target`` (its own file or
        another): a new version sharing the blob. Returns its number, or None when the file
        already holds those bytes. The retention policy then applies to ``target``."""
        actor.require_write()

        def work(session: Session) -> int | None:
            node = held_node(session, target.id)
            if node.is_folder:
                raise Conflict("a version can only be restored onto a file")
            blob_id, size = _still_there(session, version)
            current_blob = session.scalar(
                sa.select(_v.c.blob_id).where(_v.c.id == node.current_version_id)
            )
            if current_blob == blob_id:
                return None
            if node.group_id is None:
                check_quota(session, node.owner_id, size - node.size)
            version_id, version_no = add_version(
                session, self.files.policy, actor, node.id, blob_id, size, None
            )
            record_audit(
                session,
                actor,
                Op.FILE_VERSION_RESTORE,
                node_id=node.id,
                version_id=version_id,
                details={
                    "version_no": version_no,
                    "from": {"node_id": str(version.node_id), "version_no": version.version_no},
                    "size": size,
                    "sha256": version.sha256,
                },
            )
            return version_no

        return self.files.run_write(work)

    def copy_to(
        self,
        actor: Actor,
        version: VersionInfo,
        parent: NodeView,
        name: str,
        *,
        mime_type: str | None = None,
    ) -> NodeView:
        """A new file ``parent/name`` whose first version shares ``version``'s blob."""
        actor.require_write()
        check_name(name)

        def work(session: Session) -> NodeView:
            hold_folder(session, parent)
            blob_id, size = _still_there(session, version)
            if parent.group_id is None:
                check_quota(session, parent.owner_id, size)
            node_id = insert_child(session, parent.id, name, NodeKind.FILE, mime=mime_type)
            version_id, _ = add_version(
                session, self.files.policy, actor, node_id, blob_id, size, mime_type, first=True
            )
            record_audit(
                session,
                actor,
                Op.NODE_COPY,
                node_id=node_id,
                version_id=version_id,
                details={
                    "name": name,
                    "source": str(version.node_id),
                    "version_no": version.version_no,
                },
            )
            return view_of(session, node_id)

        return self.files.run_write(work)

    def prune(
        self, *, dry_run: bool = False, progress: ProgressCallback | None = None
    ) -> PruneReport:
        """Apply the retention policy to every file: one transaction per file that has
        something to remove (``davserver versions prune``)."""
        policy = self.policy
        report = PruneReport(dry_run, policy.keep_last, policy.thin_after_days)
        started = time.monotonic()
        if policy.prunes:
            with self.db.connect() as conn:
                candidates = list(conn.scalars(_candidates(policy, utcnow())))
            for done, node_id in enumerate(candidates, start=1):
                report.files_checked += 1
                try:
                    removed = self._prune_one(node_id, dry_run)
                except DomainError as exc:
                    report.errors.append(f"file {node_id}: {exc}")
                    removed = []
                if removed:
                    report.files_pruned += 1
                    report.versions_removed += len(removed)
                    report.bytes_removed += sum(v.size for v in removed)
                if progress is not None:
                    progress(Progress("files", done, len(candidates)))
        report.seconds = round(time.monotonic() - started, 3)
        return report

    def _prune_one(self, node_id: uuid.UUID, dry_run: bool) -> list[version_rules.VersionFacts]:
        def work(session: Session) -> list[version_rules.VersionFacts]:
            held = session.scalar(
                sa.select(_n.c.id).where(_n.c.id == node_id).with_for_update(**NO_KEY_UPDATE)
            )
            if held is None:
                return []  # purged meanwhile
            return version_rules.prune_file(session, self.policy, None, node_id, dry_run=dry_run)

        return self.files.run_write(work)


def _candidates(policy: version_rules.VersionPolicy, now: dt.datetime) -> sa.Select[Any]:
    """Files retention may take something from: more versions than kept, or two or more old
    enough to be thinned."""
    conditions = []
    if policy.keep_last > 0:
        conditions.append(sa.func.count() > policy.keep_last)
    if policy.thin_after_days > 0:
        cutoff = now - dt.timedelta(days=policy.thin_after_days)
        old = sa.case((_v.c.uploaded_at < cutoff, 1), else_=0)
        conditions.append(sa.func.sum(old) > 1)
    return (
        sa.select(_v.c.node_id)
        .group_by(_v.c.node_id)
        .having(sa.or_(*conditions))
        .order_by(_v.c.node_id)
    )


def _still_there(session: Session, version: VersionInfo) -> tuple[uuid.UUID, int]:
    """(blob id, size) of a version about to be reused; NotFound if it was pruned meanwhile."""
    row = session.execute(sa.select(_v.c.blob_id, _v.c.size).where(_v.c.id == version.id)).first()
    if row is None:
        raise NotFound(f"version {version.version_no} no longer exists")
    return row.blob_id, row.size


def _info(row: Any) -> VersionInfo:
    return VersionInfo(**{**row._mapping, "is_current": bool(row.is_current)})


_n = Base.metadata.tables["nodes"]
_v = Base.metadata.tables["file_versions"]
_b = Base.metadata.tables["blobs"]
_u = Base.metadata.tables["users"]
_HISTORY = sa.select(
    _v.c.id,
    _v.c.node_id,
    _v.c.version_no,
    _v.c.size,
    _v.c.blob_id,
    _b.c.sha256,
    _b.c.sha1,
    _b.c.md5,
    _b.c.storage_key,
    _u.c.username.label("author"),
    _v.c.uploaded_at,
    _v.c.mtime,
    (_n.c.current_version_id == _v.c.id).label("is_current"),
).select_from(
    _v.join(_b, _b.c.id == _v.c.blob_id)
    .join(_n, _n.c.id == _v.c.node_id)
    .outerjoin(_u, _u.c.id == _v.c.uploaded_by)
)
