"""fsck: re-hash every blob against its row, and find the files that have no row.

A blob found corrupt is read once more and, corrupt again, moved to the store's quarantine
(``MaintainableBlobStore.quarantine``): served, its bytes were wrong, and an upload of the
right ones deduplicated onto it, as dedup compares sizes only (reading the stored copy in full
would double the cost of every re-upload of a large file). Missing instead, it answers a clean
error, and the next upload of those bytes stores them again. The second read spares a blob an
upload replaced meanwhile (a copy cut short, which the first read found too short) and one
read wrong once.

A file in the store not named as a blob (``is_storage_key``) is foreign: gc and backup leave
it alone, so fsck lists it apart, not as a problem."""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import time
import uuid
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa

from davserver.blobstore import (
    MaintainableBlobStore,
    is_sha256,
    is_storage_key,
    storage_key_for,
)
from davserver.db import Base, Database
from davserver.errors import Unavailable
from davserver.models import Op
from davserver.services.audit import record_audit
from davserver.services.maintenance import (
    BATCH,
    LOGGED_PROBLEMS,
    Progress,
    ProgressCallback,
    batched,
    ignore_progress,
    unused_blob_keys,
)
from davserver.services.store_owner import check_store

_READ_BLOCK = 1024 * 1024
_b = Base.metadata.tables["blobs"]


@dataclass(frozen=True)
class FsckProblem:
    """One finding: ``kind`` is missing, corrupt, unreadable or orphan."""

    kind: str
    storage_key: str
    sha256: str | None
    detail: str


class _WrongBytes(FsckProblem):
    """A corrupt blob whose bytes are not those its row names (their SHA-256 differs): the
    only kind fsck moves to the quarantine."""


@dataclass
class FsckReport:
    blobs_checked: int = 0
    bytes_checked: int = 0
    files_scanned: int = 0  # files walked looking for orphans; 0 when that scan was skipped
    orphan_scan: bool = True
    counts: dict[str, int] = field(default_factory=dict)
    problems: list[FsckProblem] = field(default_factory=list)
    problems_truncated: bool = False
    # Rows nothing uses whose file is gone (a gc that stopped half-way, or one running now):
    # nothing anyone needs is lost, and the next gc removes them. Not a problem.
    garbage_without_file: int = 0
    # Files not named as blobs (notes, a stray copy): no one's to remove; listed up to the
    # problems' limit, counted all.
    foreign_files: int = 0
    foreign: list[str] = field(default_factory=list)
    quarantined: int = 0  # corrupt blobs moved to the store's quarantine (see the module doc)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.counts

    def add(self, problem: FsckProblem, limit: int) -> None:
        self.counts[problem.kind] = self.counts.get(problem.kind, 0) + 1
        if len(self.problems) < limit:
            self.problems.append(problem)
        else:
            self.problems_truncated = True

    def as_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "ok": self.ok}


class FsckService:
    def __init__(self, db: Database, blobs: MaintainableBlobStore) -> None:
        self.db = db
        self.blobs = blobs

    def check(
        self,
        *,
        sample: int | None = None,
        since: dt.datetime | None = None,
        progress: ProgressCallback | None = None,
        max_problems: int = 10_000,
        orphan_min_age: dt.timedelta = dt.timedelta(minutes=1),
    ) -> FsckReport:
        """Re-hash blobs and report any whose file is missing or whose bytes (SHA-256, size,
        CRC-32) no longer match their row, moving a corrupt one to the store's quarantine
        (see the module doc); then report files that have no row.

        ``sample`` checks that many blobs chosen at random, ``since`` only blobs created at or
        after that time; either skips the orphan scan, which walks the whole store. Files
        younger than ``orphan_min_age`` are not called orphans: their upload may be
        committing. At most ``max_problems`` are listed; ``counts`` has them all. Writes one
        logbook row.
        """
        check_store(self.db, self.blobs)  # another database's blobs would all be problems
        started = time.monotonic()
        report = FsckReport(orphan_scan=sample is None and since is None)
        tick = progress or ignore_progress
        total, total_bytes = self._totals(sample, since)
        done_bytes = 0
        for index, row in enumerate(self._rows_to_check(sample, since), 1):

            def hashing(n: int, before: int = index - 1, base: int = done_bytes) -> None:
                tick(Progress("hash", before, total, base + n, total_bytes))

            problem = self._verify(row, hashing)
            if isinstance(problem, _WrongBytes):
                problem = self._quarantine(row, report)
            if problem is not None and problem.kind == "missing" and self._unused(row.storage_key):
                report.garbage_without_file += 1
                problem = None
            done_bytes += row.size_bytes
            report.blobs_checked = index
            report.bytes_checked = done_bytes
            if problem is not None:
                report.add(problem, max_problems)
            tick(Progress("hash", index, total, done_bytes, total_bytes))
        if report.orphan_scan:
            cutoff = time.time() - orphan_min_age.total_seconds()
            for problem in self._orphans(report, cutoff, tick, max_problems):
                report.add(problem, max_problems)
        report.seconds = round(time.monotonic() - started, 3)
        details = report.as_dict()
        details["problems"] = details["problems"][:LOGGED_PROBLEMS]
        details.update(sample=sample, since=since.isoformat() if since else None)
        with self.db.write() as session:
            record_audit(session, None, Op.MAINTENANCE_FSCK, details=details)
        return report

    def _quarantine(self, row: Any, report: FsckReport) -> FsckProblem | None:
        """Move the blob of ``row``, found corrupt, to the quarantine once a second read finds
        it corrupt too; the problem the second read found, saying what was done."""
        again = self._verify(row, lambda _size: None)
        if not isinstance(again, _WrongBytes):  # fine, gone, or right bytes under a wrong row
            return again
        try:
            where = self.blobs.quarantine(row.storage_key)
        except (OSError, Unavailable) as exc:
            return dataclasses.replace(
                again, detail=f"{again.detail}; could not move it to quarantine: {exc}"
            )
        if where is None:  # gone meanwhile (gc collected it)
            return again
        report.quarantined += 1
        self._rekey(row)
        return dataclasses.replace(
            again,
            detail=f"{again.detail}; moved to {where}: missing now, the next upload of these"
            " bytes stores them again",
        )

    def _rekey(self, row: Any) -> None:
        """Point a quarantined blob's row at the key new bytes go to: one stored where the
        store fanned out twice (``ab/cd/abcd…``) is stored again at ``ab/abcd…``."""
        key = storage_key_for(row.sha256)
        if row.storage_key != key:
            with self.db.write() as session:
                session.execute(
                    _b.update()
                    .where(_b.c.id == row.id, _b.c.storage_key == row.storage_key)
                    .values(storage_key=key)
                )

    def _unused(self, storage_key: str) -> bool:
        with self.db.connect() as conn:
            return bool(unused_blob_keys(conn, [storage_key]))

    def _totals(self, sample: int | None, since: dt.datetime | None) -> tuple[int, int]:
        statement = sa.select(sa.func.count(), sa.func.coalesce(sa.func.sum(_b.c.size_bytes), 0))
        if since is not None:
            statement = statement.where(_b.c.created_at >= since)
        with self.db.connect() as conn:
            count, size = conn.execute(statement).one()
        if sample is not None and sample < count:
            # The sizes of a random sample are not known up front; estimate them.
            return sample, int(size * sample / count) if count else 0
        return int(count), int(size)

    def _rows_to_check(self, sample: int | None, since: dt.datetime | None) -> Iterator[Any]:
        columns = (_b.c.id, _b.c.sha256, _b.c.storage_key, _b.c.size_bytes, _b.c.crc32)
        if sample is not None:
            with self.db.connect() as conn:
                picked = conn.execute(
                    sa.select(*columns).order_by(sa.func.random()).limit(sample)
                ).all()
            yield from picked
            return
        after: uuid.UUID | None = None
        while True:
            statement = sa.select(*columns).order_by(_b.c.id).limit(BATCH)
            if after is not None:
                statement = statement.where(_b.c.id > after)
            if since is not None:
                statement = statement.where(_b.c.created_at >= since)
            with self.db.connect() as conn:
                rows = conn.execute(statement).all()
            if not rows:
                return
            yield from rows
            after = rows[-1].id

    def _verify(self, row: Any, read: Callable[[int], None]) -> FsckProblem | None:
        """Hash one blob in fixed-size blocks (``read`` hears the bytes so far after each);
        the problem with it, if any."""
        digest = hashlib.sha256()
        crc = 0
        size = 0
        try:
            with self.blobs.open(row.storage_key) as fh:
                while block := fh.read(_READ_BLOCK):
                    digest.update(block)
                    crc = zlib.crc32(block, crc)
                    size += len(block)
                    read(size)
        except FileNotFoundError:
            return FsckProblem("missing", row.storage_key, row.sha256, "the file is missing")
        except OSError as exc:
            return FsckProblem("unreadable", row.storage_key, row.sha256, str(exc))
        wrong = []
        if size != row.size_bytes:
            wrong.append(f"size {size}, expected {row.size_bytes}")
        actual = digest.hexdigest()
        if actual != row.sha256:
            wrong.append(f"sha256 {actual}")
        if row.crc32 is not None and crc != row.crc32:
            wrong.append(f"crc32 {crc:08x}, expected {row.crc32:08x}")
        if actual != row.sha256:
            return _WrongBytes("corrupt", row.storage_key, row.sha256, "; ".join(wrong))
        if wrong:  # the right bytes: the row is what is wrong
            detail = "; ".join(wrong) + " (the bytes are right: their SHA-256 is the row's)"
            return FsckProblem("corrupt", row.storage_key, row.sha256, detail)
        return None

    def _orphans(
        self, report: FsckReport, cutoff: float, tick: ProgressCallback, limit: int
    ) -> Iterator[FsckProblem]:
        """Blob files with no row, older than ``cutoff``; foreign files go into ``report``."""
        for batch in batched(self.blobs.iter_files(), BATCH):
            report.files_scanned += len(batch)
            for found in batch:
                if not is_storage_key(found.key):
                    report.foreign_files += 1
                    if len(report.foreign) < limit:
                        report.foreign.append(found.key)
            batch = [found for found in batch if is_storage_key(found.key)]
            shas = [f.key.rpartition("/")[2] for f in batch]
            with self.db.connect() as conn:
                keys = set(
                    conn.execute(
                        sa.select(_b.c.storage_key).where(
                            _b.c.sha256.in_([s for s in shas if is_sha256(s)])
                        )
                    ).scalars()
                )
            for found in batch:
                if found.key not in keys and found.mtime < cutoff:
                    yield FsckProblem("orphan", found.key, None, f"no row ({found.size} bytes)")
            tick(Progress("orphans", report.files_scanned))
