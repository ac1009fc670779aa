"""Blob store upkeep: ``collect_garbage`` removes blobs nothing references (fsck, which re-hashes
them, is ``davserver.services.fsck``).

gc against a racing upload
--------------------------
An upload writes its bytes first (``BlobWriter.finish``: linked into place, or found there
already) and records them later, in one transaction that upserts the blob row and inserts the
version. gc may run at any moment in between. Two rules keep a committed version from ever
pointing at removed bytes:

1. gc deletes blob rows with one ``DELETE ... WHERE id IN (candidates) AND nothing references
   it RETURNING ...``, so the "unreferenced" test and the delete cannot be separated, and it
   moves each deleted row's file aside before that transaction commits. After the commit the
   set-aside files are deleted; after a rollback they are put back.
2. An upload keeps its own copy of the bytes (the writer's spare) until its transaction has
   ended, and inside it, after writing the version, calls ``BlobStore.ensure_stored``: if the
   file is missing, the spare is linked back into place. (An S3 store's ``ensure_stored``, a
   round trip, runs before that transaction instead, which then checks that the blob row it
   saw before is still there: ``davserver.services.blob_refs`` has why that is enough.)

The engines order the two transactions. SQLite: write transactions start with BEGIN IMMEDIATE,
so gc's (delete, move aside) and an upload's (upsert, version, ensure) never interleave, and
whichever runs second sees the other's effect. PostgreSQL: inserting the version takes a KEY
SHARE lock on the blob row (the foreign key check). If gc's DELETE came first, the insert waits
for gc and then fails, the row being gone; the upload retries, inserts the row again, and
``ensure_stored`` re-places the file gc moved away before it committed. If the insert came
first, gc's DELETE waits for the upload and then fails its own foreign key check; gc retries
the batch and the re-check now sees the version. Either way ``ensure_stored`` runs while the
upload holds the row (on SQLite, the write lock), so gc cannot remove the file after it has
looked. Image variants and package archives reference blobs under the same rule 2.

Files with no row at all (left by uploads whose transaction failed, such as a quota refusal)
go the same way: gc first inserts a row for their SHA-256 (ON CONFLICT DO NOTHING), which makes
an upload of the same bytes wait for gc's transaction, moves the file aside, deletes the row
again and commits; the upload then inserts its row and re-places the file from its spare.

The grace period is not what makes this safe. It keeps gc away from what is in the middle of
being used (upload leftovers, a package being assembled) and gives a mistaken purge time to be
noticed. A blob's age is its row's created_at; a dedup upload of old bytes does not refresh it,
which is harmless because that upload's spare covers it.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.orm import Session

from davserver.blobstore import (
    BlobFile,
    MaintainableBlobStore,
    PartialUploadStore,
    is_storage_key,
)
from davserver.db import Base, Database
from davserver.db.dialect import for_bind, insert_or_ignore
from davserver.db.types import utcnow
from davserver.errors import Unavailable
from davserver.models import Op
from davserver.services.audit import record_audit
from davserver.services.blob_refs import is_remote
from davserver.services.store_owner import check_store, claim_store

T = TypeVar("T")
BATCH = 500  # rows per statement; SQLite allows 32,766 bound parameters
# Blobs removed per transaction from a remote store (S3): each is a copy and a delete on the
# store, made while the transaction is open, and on SQLite every other writer waits for it.
_REMOTE_PER_TRANSACTION = 8
_RETRIES = 4
LOGGED_PROBLEMS = 100  # problems copied into a logbook row; the report has them all


@dataclass(frozen=True)
class Progress:
    """How far a run is: ``done`` of ``total`` items (None: not known) in ``phase``."""

    phase: str
    done: int
    total: int | None = None
    bytes_done: int = 0
    bytes_total: int | None = None


ProgressCallback = Callable[[Progress], None]


@dataclass
class GcReport:
    """What a gc run removed (with ``dry_run``: would remove). Bytes are file sizes."""

    dry_run: bool
    grace_seconds: int
    blobs_removed: int = 0
    bytes_removed: int = 0
    blobs_without_file: int = 0  # removed rows whose file was already gone
    orphan_files_removed: int = 0
    orphan_bytes_removed: int = 0
    temp_files_removed: int = 0
    temp_bytes_removed: int = 0
    multipart_uploads_aborted: int = 0  # unfinished uploads in an S3 store (their parts)
    multipart_bytes_aborted: int = 0
    errors: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.errors

    def as_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "ok": self.ok}


class MaintenanceService:
    def __init__(self, db: Database, blobs: MaintainableBlobStore) -> None:
        self.db = db
        self.blobs = blobs
        # A local store moves a file aside with a rename: a whole batch in one transaction.
        self._per_transaction = _REMOTE_PER_TRANSACTION if is_remote(blobs) else BATCH

    # ---------------------------------------------------------------------- gc

    def collect_garbage(
        self,
        *,
        grace: dt.timedelta,
        dry_run: bool = False,
        progress: ProgressCallback | None = None,
    ) -> GcReport:
        """Remove blobs older than ``grace`` that nothing references: rows with their files,
        files with no row, upload leftovers in the temp area and, in an S3 store, unfinished
        multipart uploads. Writes one logbook row.

        Problems with single files (permissions, I/O) are collected in ``errors``; the run goes
        on with the rest.
        """
        # Never another database's blobs (all orphans here); a dry run only looks.
        (check_store if dry_run else claim_store)(self.db, self.blobs)
        started = time.monotonic()
        cutoff = utcnow() - grace
        report = GcReport(dry_run=dry_run, grace_seconds=int(grace.total_seconds()))
        tick = progress or ignore_progress
        self._gc_rows(cutoff, report, tick)
        self._gc_orphans(cutoff.timestamp(), report, tick)
        self._gc_temp(cutoff.timestamp(), report, tick)
        self._gc_partial_uploads(cutoff.timestamp(), report, tick)
        report.seconds = round(time.monotonic() - started, 3)
        self._log_gc(report)
        return report

    def _log_gc(self, report: GcReport) -> None:
        """The run's maintenance:gc logbook row (its first problems only)."""
        details = report.as_dict()
        details["errors"] = report.errors[:LOGGED_PROBLEMS]
        with self.db.write() as session:
            record_audit(session, None, Op.MAINTENANCE_GC, details=details)

    def _gc_rows(self, cutoff: dt.datetime, report: GcReport, tick: ProgressCallback) -> None:
        after: uuid.UUID | None = None
        seen = 0
        while True:
            with self.db.connect() as conn:
                rows = conn.execute(
                    _candidates(after), {"cutoff": cutoff, "after": after, "limit": BATCH}
                ).all()
            if not rows:
                return
            after = rows[-1].id
            seen += len(rows)
            if report.dry_run:
                sizes = self.blobs.sizes_of([row.storage_key for row in rows])
                for row, size in zip(rows, sizes, strict=True):
                    report.blobs_removed += 1
                    if size is None:
                        report.blobs_without_file += 1
                    else:
                        report.bytes_removed += row.size_bytes
            else:
                self._delete_rows([row.id for row in rows], report)
            tick(Progress("blobs", seen, None, report.bytes_removed))

    def sweep_leftovers(self, *, grace: dt.timedelta, uploads_grace: dt.timedelta) -> GcReport:
        """Remove only what cut-off uploads left: temp files older than ``grace`` (a crashed
        server's) and, in an S3 store, multipart uploads begun before ``uploads_grace`` (their
        parts are kept and billed until aborted). The housekeeping sweep runs it; a logbook
        row when anything went."""
        report = GcReport(dry_run=False, grace_seconds=int(grace.total_seconds()))
        now = utcnow()
        self._gc_temp((now - grace).timestamp(), report, ignore_progress)
        self._gc_partial_uploads((now - uploads_grace).timestamp(), report, ignore_progress)
        if report.temp_files_removed or report.multipart_uploads_aborted or report.errors:
            self._log_gc(report)
        return report

    def _delete_rows(self, ids: list[uuid.UUID], report: GcReport) -> None:
        """Delete the rows of ``ids`` that are still unreferenced, and their files."""
        for chunk in batched(ids, self._per_transaction):

            def remove(session: Session, chunk: list[uuid.UUID] = chunk) -> list[str]:
                session.execute(_DELETE_DEAD_VARIANTS, {"ids": chunk})
                return list(session.execute(_DELETE_UNREFERENCED, {"ids": chunk}).scalars())

            self._remove_with_files(remove, report, orphans=False)

    def _gc_orphans(self, cutoff: float, report: GcReport, tick: ProgressCallback) -> None:
        old = (f for f in self.blobs.iter_files() if f.mtime < cutoff and is_storage_key(f.key))
        seen = 0
        for batch in batched(old, BATCH):
            seen += len(batch)
            self._gc_orphan_batch(batch, report)
            tick(Progress("orphans", seen, None, report.orphan_bytes_removed))

    def _gc_orphan_batch(self, files: Sequence[BlobFile], report: GcReport) -> None:
        by_sha = {f.key.rpartition("/")[2]: f for f in files}
        with self.db.connect() as conn:
            recorded = set(conn.execute(_KNOWN_SHAS, {"shas": list(by_sha)}).scalars())
        orphans = [f for sha, f in by_sha.items() if sha not in recorded]
        if not orphans:
            return
        if report.dry_run:
            report.orphan_files_removed += len(orphans)
            report.orphan_bytes_removed += sum(f.size for f in orphans)
            return
        for chunk in batched(orphans, self._per_transaction):
            self._remove_orphans(chunk, report)

    def _remove_orphans(self, orphans: list[BlobFile], report: GcReport) -> None:
        def remove(session: Session) -> list[str]:
            # Claim each SHA-256 with a row of our own: an upload inserting the same bytes now
            # waits for this transaction. Where the insert does nothing, a row appeared meanwhile.
            now = utcnow()
            claim = for_bind(_INSERT_BLOB, session).values(
                [
                    {
                        "id": uuid.uuid4(),
                        "sha256": f.key.rpartition("/")[2],
                        "md5": "",
                        "sha1": "",
                        "size_bytes": f.size,
                        "storage_key": f.key,
                        "created_at": now,
                    }
                    for f in orphans
                ]
            )
            claimed = session.execute(claim.returning(_b.c.id, _b.c.storage_key)).all()
            if claimed:
                session.execute(_DELETE_IDS, {"ids": [row.id for row in claimed]})
            return [row.storage_key for row in claimed]

        self._remove_with_files(remove, report, orphans=True)

    def _remove_with_files(
        self,
        delete_rows: Callable[[Session], list[str]],
        report: GcReport,
        *,
        orphans: bool,
    ) -> None:
        """Run ``delete_rows`` in a write transaction and move the files whose keys it returns
        aside before the commit; delete them after it, put them back on failure.

        A failure while the files are moved puts them back before the transaction rolls
        back: a writer that finds a row still there relies on its file being in place
        (``davserver.services.blob_refs``).

        PostgreSQL reports a version that referenced a row meanwhile as a foreign key
        violation (or, rarely, a deadlock): the batch is tried again and its re-check sees it.
        """
        failure: Exception | None = None
        for _attempt in range(_RETRIES):
            moved: list[tuple[str, str]] = []
            missing = 0
            try:
                with self.db.write() as session:
                    removed = delete_rows(session)
                    try:
                        for storage_key in removed:
                            token = self.blobs.set_aside(storage_key)
                            if token is None:
                                missing += 1
                            else:
                                moved.append((token, storage_key))
                    except BaseException:
                        self._restore(moved, report)
                        moved = []
                        raise
            except (IntegrityError, OperationalError) as exc:
                self._restore(moved, report)
                failure = exc
                continue
            except OSError as exc:
                self._restore(moved, report)
                report.errors.append(f"could not move a blob file aside: {exc}")
                return
            except BaseException:
                self._restore(moved, report)
                raise
            freed = 0
            for token, storage_key in moved:
                try:
                    freed += self.blobs.discard(token)
                except OSError as exc:
                    report.errors.append(f"could not delete {storage_key} (set aside): {exc}")
            if orphans:
                report.orphan_files_removed += len(moved)
                report.orphan_bytes_removed += freed
            else:
                report.blobs_removed += len(removed)
                report.blobs_without_file += missing
                report.bytes_removed += freed
            return
        first_line = str(failure).splitlines()[0] if failure else ""
        report.errors.append(f"gave up on a batch after {_RETRIES} attempts: {first_line}")

    def _restore(self, moved: Iterable[tuple[str, str]], report: GcReport) -> None:
        for token, storage_key in moved:
            try:
                self.blobs.restore(token, storage_key)
            except OSError as exc:
                report.errors.append(f"could not put {storage_key} back: {exc}")

    def _gc_temp(self, cutoff: float, report: GcReport, tick: ProgressCallback) -> None:
        for found in self.blobs.iter_temp_files():
            if found.mtime >= cutoff:
                continue
            if not report.dry_run:
                try:
                    self.blobs.remove_temp(found.key)
                except OSError as exc:
                    report.errors.append(f"could not remove tmp/{found.key}: {exc}")
                    continue
            report.temp_files_removed += 1
            report.temp_bytes_removed += found.size
        tick(Progress("temp", report.temp_files_removed, report.temp_files_removed))

    def _gc_partial_uploads(self, cutoff: float, report: GcReport, tick: ProgressCallback) -> None:
        """Abort the store's unfinished multipart uploads begun before ``cutoff``: the parts
        an upload cut off left (``PartialUploadStore``). Younger ones may be going on."""
        blobs = self.blobs
        if not isinstance(blobs, PartialUploadStore):
            return
        try:
            for upload in blobs.iter_partial_uploads():
                if upload.started >= cutoff:
                    continue
                if not report.dry_run:
                    try:
                        blobs.abort_upload(upload)
                    except (OSError, Unavailable) as exc:
                        report.errors.append(f"could not abort the upload of {upload.key}: {exc}")
                        continue
                report.multipart_uploads_aborted += 1
                report.multipart_bytes_aborted += upload.size
        except (OSError, Unavailable) as exc:
            # A store whose policy refuses ListMultipartUploads (or lifecycle rules do this
            # work): the rest of the run is done all the same.
            report.errors.append(f"could not list the store's unfinished uploads: {exc}")
        done = report.multipart_uploads_aborted
        tick(Progress("uploads", done, done, report.multipart_bytes_aborted))


def ignore_progress(_progress: Progress) -> None:
    return None


def batched(items: Iterable[T], size: int) -> Iterator[list[T]]:
    batch: list[T] = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


_b = Base.metadata.tables["blobs"]
_v = Base.metadata.tables["file_versions"]
_iv = Base.metadata.tables["image_variants"]
_p = Base.metadata.tables["packages"]


def _unreferenced() -> sa.ColumnElement[bool]:
    """No version, live image variant or package archive uses the blob.

    A variant is a cache of a version's bytes, not a use of them: it is live while some
    version holds its source. The variants of bytes no version holds (every file that had
    them purged, or their versions pruned) would otherwise keep those bytes, and themselves,
    for ever; gc deletes them with the blobs (``_DELETE_DEAD_VARIANTS``). A blob no version
    holds cannot be the source of a live variant, so the source needs no test of its own.
    """
    return sa.and_(
        ~sa.exists().where(_v.c.blob_id == _b.c.id),
        ~sa.exists().where(_iv.c.blob_id == _b.c.id, _variant_live()),
        ~sa.exists().where(_p.c.archive_blob_id == _b.c.id),
    )


def unused_blob_keys(conn: sa.Connection, storage_keys: Sequence[str]) -> set[str]:
    """Which of ``storage_keys`` are of blob rows nothing uses (see ``_unreferenced``), in the
    database of ``conn`` (the live one, or a backup's)."""
    statement = sa.select(_b.c.storage_key).where(
        _b.c.storage_key.in_(list(storage_keys)), _unreferenced()
    )
    return set(conn.scalars(statement))


def _variant_live() -> sa.ColumnElement[bool]:
    """Some version holds the source of the ``image_variants`` row in the enclosing query."""
    held = _v.alias("held")
    return sa.exists().where(held.c.blob_id == _iv.c.source_blob_id)


def _candidates(after: uuid.UUID | None) -> sa.Select[Any]:
    statement = (
        sa.select(_b.c.id, _b.c.storage_key, _b.c.size_bytes)
        .where(_b.c.created_at < sa.bindparam("cutoff"), _unreferenced())
        .order_by(_b.c.id)
        .limit(sa.bindparam("limit"))
    )
    if after is not None:
        statement = statement.where(_b.c.id > sa.bindparam("after", type_=sa.Uuid))
    return statement


_DELETE_UNREFERENCED = (
    sa.delete(_b)
    .where(_b.c.id.in_(sa.bindparam("ids", expanding=True)), _unreferenced())
    .returning(_b.c.storage_key)
)
# The dead variants (see ``_unreferenced``) made from or stored in these blobs: deleted first,
# in the same transaction, as their rows would hold the blobs by foreign key.
_DELETE_DEAD_VARIANTS = sa.delete(_iv).where(
    sa.or_(
        _iv.c.source_blob_id.in_(sa.bindparam("ids", expanding=True)),
        _iv.c.blob_id.in_(sa.bindparam("ids", expanding=True)),
    ),
    ~_variant_live(),
)
_DELETE_IDS = sa.delete(_b).where(_b.c.id.in_(sa.bindparam("ids", expanding=True)))
_KNOWN_SHAS = sa.select(_b.c.sha256).where(_b.c.sha256.in_(sa.bindparam("shas", expanding=True)))
_INSERT_BLOB = insert_or_ignore(_b, "sha256")
