"""``davserver backup``: a consistent copy of a running server's database and blobs, laid out
as a data folder that ``davserver serve`` can run from.

The backup folder gets ``davserver.sqlite3`` and ``blobs/``, as ``<data_dir>`` holds them:

1. The database goes into a new SQLite file, ``.davserver.sqlite3.partial`` at first, from one
   snapshot: SQLite's online backup (one read transaction; writers go on meanwhile), or from
   PostgreSQL every row of one REPEATABLE READ transaction (``davserver.db.copy``, as
   ``davserver db copy`` makes it).
2. Every blob that snapshot refers to is copied from the blob store (file system or S3) to
   ``blobs/<storage key>``, the key the rows name, its size and SHA-256 checked on the way. A
   file of the right size already there is kept: blobs never change, so the next backup into
   the same folder copies only the new ones.
3. Then the new database file replaces the folder's previous one.

A backup cut short leaves the previous one whole: its database, and blobs that are a superset
of what it refers to. Once the new database has replaced it, the files it has no row for are
removed (``_remove_unused_files``).

A blob the snapshot refers to and the store no longer has is one of two things. Either
``davserver gc`` collected it after the snapshot, its file purged meanwhile: the live database
no longer has its row. The backup then takes a new snapshot, which no longer refers to it, and
copies what that one refers to and the first did not (``_SNAPSHOTS`` in all). Or the store has
lost it (``davserver fsck`` on the server says so too): it is reported, not fatal, and the
backup is complete but for that file's bytes.
"""

from __future__ import annotations

import dataclasses
import fcntl
import hashlib
import os
import sqlite3
import tempfile
import time
from collections.abc import Iterable, Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from davserver.blobstore import BlobStore
from davserver.blobstore.base import OWNER_KEY
from davserver.blobstore.filesystem import FileSystemBlobStore, fsync_path, is_storage_key
from davserver.db import Base, Database
from davserver.db.copy import copy_database
from davserver.db.migrate import upgrade
from davserver.models import Blob, Op
from davserver.services.audit import record_audit
from davserver.services.fsck import FsckProblem
from davserver.services.maintenance import Progress, ProgressCallback, unused_blob_keys
from davserver.services.store_owner import backup_identity, is_backup_into, mark_backup

DATABASE_FILE = "davserver.sqlite3"  # the names a data folder uses (Settings.database_url)
BLOB_FOLDER = "blobs"
_PARTIAL = ".davserver.sqlite3.partial"
_READ_BLOCK = 1024 * 1024
_LOGGED_PROBLEMS = 100
_LISTED_PROBLEMS = 10_000  # a store that lost everything: listed up to here, counted all
_EARLIER = ".davserver.sqlite3.earlier"  # the snapshot before, while a new one is copied
# A snapshot whose blobs gc collected before they were copied is taken again, this many in all.
_SNAPSHOTS = 3
_LOOKUP_BATCH = 500


class BackupRefused(Exception):
    """The backup folder cannot take a backup; nothing was changed in it."""


class _StoreFailed(Exception):
    """Reading a blob from the store failed (the cause says how)."""


@dataclass
class BackupReport:
    folder: str
    database_seconds: float = 0.0
    blobs: int = 0  # blobs the snapshot refers to
    blobs_copied: int = 0
    bytes_copied: int = 0
    blobs_kept: int = 0  # already in the folder from an earlier backup
    snapshots: int = 1  # more when gc collected blobs of one before they were copied
    problems: list[FsckProblem] = field(default_factory=list)
    problem_count: int = 0
    # Rows the snapshot does not use whose file is gone (garbage a gc was removing): not a
    # problem, the restored database's next gc removes them.
    garbage_without_file: int = 0
    # Files in blobs/ the new database has no row for, removed once it replaced the old one:
    # copied for a snapshot taken again, or kept for an earlier backup.
    files_removed: int = 0
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return self.problem_count == 0

    def as_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "folder": self.folder,
            "database_seconds": self.database_seconds,
            "blobs": self.blobs,
            "blobs_copied": self.blobs_copied,
            "bytes_copied": self.bytes_copied,
            "blobs_kept": self.blobs_kept,
            "snapshots": self.snapshots,
            "problems": [dataclasses.asdict(problem) for problem in self.problems],
            "problem_count": self.problem_count,
            "garbage_without_file": self.garbage_without_file,
            "files_removed": self.files_removed,
            "seconds": self.seconds,
        }


def back_up(
    db: Database,
    blobs: BlobStore,
    folder: Path,
    *,
    fsync: bool = True,
    progress: ProgressCallback | None = None,
) -> BackupReport:
    """Back the database and its blobs up into ``folder`` (see the module doc); one logbook
    row in ``db`` says so. BackupRefused when ``folder`` is in use by a server."""
    started = time.monotonic()
    folder = folder.resolve()
    _check_folder(db, folder)
    with _only_backup_into(folder):
        return _back_up(db, blobs, folder, fsync, progress, started)


@contextmanager
def _only_backup_into(folder: Path) -> Iterator[None]:
    """Hold the folder for this backup: BackupRefused while another one writes into it (each
    would delete the other's partial snapshot). An advisory lock on the folder itself (no
    file is left in it), gone with the process."""
    held = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        try:
            fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise BackupRefused(
                f"another backup is writing into {folder}: wait for it to end, or back up"
                " into another folder"
            ) from None
        yield
    finally:
        os.close(held)


def _back_up(
    db: Database,
    blobs: BlobStore,
    folder: Path,
    fsync: bool,
    progress: ProgressCallback | None,
    started: float,
) -> BackupReport:
    report = BackupReport(str(folder))
    partial, earlier = folder / _PARTIAL, folder / _EARLIER
    partial.unlink(missing_ok=True)
    tick = progress or (lambda _progress: None)
    try:
        _snapshot_into(db, partial)
        report.database_seconds = round(time.monotonic() - started, 3)
        copier = _BlobCopier(blobs, folder / BLOB_FOLDER, fsync=fsync)
        total, total_bytes = _blob_totals(partial)
        _copy_blobs(_blob_rows(partial), total, total_bytes, copier, report, tick)
        _forgive_garbage(partial, report)
        while report.snapshots < _SNAPSHOTS and _collected_since(db, report):
            os.replace(partial, earlier)
            _snapshot_into(db, partial)
            report.snapshots += 1
            retry = [problem.storage_key for problem in report.problems]
            report.problems, report.problem_count = [], 0
            rows = list(_blob_rows(partial, new_since=earlier, retry=retry))
            total_bytes = sum(size for _key, _sha256, size in rows)
            _copy_blobs(iter(rows), len(rows), total_bytes, copier, report, tick)
            _forgive_garbage(partial, report)
            earlier.unlink()
        report.blobs = _blob_totals(partial)[0]
        _give_backup_identity(db, folder, partial)
        copier.flush()
        report.blobs_copied, report.bytes_copied = copier.copied, copier.copied_bytes
        report.blobs_kept = copier.kept
        if fsync:
            fsync_path(partial)
        os.replace(partial, folder / DATABASE_FILE)
        if fsync:
            fsync_path(folder)
        report.files_removed = _remove_unused_files(folder)
        # Unmarked, for the first server run on the backup to claim: one run on it before
        # gave the database and the store another identity.
        (folder / BLOB_FOLDER / OWNER_KEY).unlink(missing_ok=True)
    finally:
        partial.unlink(missing_ok=True)
        earlier.unlink(missing_ok=True)
    report.seconds = round(time.monotonic() - started, 3)
    details = report.as_dict()
    details["problems"] = details["problems"][:_LOGGED_PROBLEMS]
    with db.write() as session:
        record_audit(session, None, Op.MAINTENANCE_BACKUP, details=details)
    return report


def _check_folder(db: Database, folder: Path) -> None:
    """BackupRefused for a folder a server (or any SQLite connection) is using: replacing the
    database file under it would lose its writes, and its WAL would be applied to the new file.
    And for one holding another database's data (``_check_earlier_backup``).
    """
    if folder.exists() and not folder.is_dir():
        raise BackupRefused(f"{folder} is not a folder")
    for suffix in ("-wal", "-shm"):
        if (folder / (DATABASE_FILE + suffix)).exists():
            raise BackupRefused(
                f"{folder / DATABASE_FILE} is open ({DATABASE_FILE}{suffix} is there): stop the"
                " server using the backup folder, or back up into another folder"
            )
    _check_earlier_backup(db, folder)
    (folder / BLOB_FOLDER).mkdir(parents=True, exist_ok=True)


def _check_earlier_backup(db: Database, folder: Path) -> None:
    """BackupRefused unless ``folder`` holds no database and no marked blob store, or holds an
    earlier backup of ``db`` into it (``store_owner.is_backup_into``), served since or not.
    The backup replaces the database file and removes the blob files it has no row for: in
    another server's data folder (a restore included) that was all of its data."""
    database = folder / DATABASE_FILE
    if database.exists():
        if not is_backup_into(db, str(folder), _instance_values(database)):
            raise BackupRefused(
                f"{database} is not a backup of this database into {folder} (another server's"
                " data, a restore, or another file): back up into another folder, or remove it"
            )
    elif (folder / BLOB_FOLDER / OWNER_KEY).exists():
        raise BackupRefused(
            f"{folder / BLOB_FOLDER} is a blob store in use ({OWNER_KEY} names its database),"
            " not a backup of this database: back up into another folder"
        )


def _instance_values(database: Path) -> dict[str, str]:
    """The ``instance_secrets`` of the SQLite file ``database``, read without changing it (no
    server has it open: ``_check_folder``); none when it is no davserver database."""
    try:
        uri = f"{database.as_uri()}?mode=ro&immutable=1"
        with closing(sqlite3.connect(uri, uri=True)) as conn:
            return dict(conn.execute("SELECT name, value FROM instance_secrets"))
    except sqlite3.Error:
        return {}


def _snapshot_into(db: Database, target: Path) -> None:
    """The whole database, as of one moment, into a new SQLite file ``target``."""
    if db.is_sqlite:
        source_path = db.engine.url.database
        assert source_path, "an in-memory database has no file to back up"
        with closing(sqlite3.connect(source_path)) as src, closing(sqlite3.connect(target)) as dst:
            src.backup(dst)  # in one step: one read transaction, one snapshot
    else:
        copy = Database(f"sqlite:///{target}")
        try:
            upgrade(copy)
            copy_database(db, copy, Base.metadata)
        finally:
            copy.dispose()
    # One file, with no WAL beside it holding part of it (the rename moves the file alone);
    # a server opening it switches it back to WAL.
    with closing(sqlite3.connect(target)) as conn:
        conn.execute("PRAGMA journal_mode=DELETE")


def _give_backup_identity(db: Database, folder: Path, snapshot: Path) -> None:
    """The backup's database gets an identity of its own (``store_owner.backup_identity``):
    with the live database's, gc run on the backup with the live store's settings deleted
    every file uploaded since the backup. The first server run on it (or on the copy a
    restore makes) gives it another (``store_owner.serve_store``)."""
    copy = Database(f"sqlite:///{snapshot}")
    try:
        mark_backup(copy, backup_identity(db, str(folder.resolve())))
    finally:
        copy.dispose()
    with closing(sqlite3.connect(snapshot)) as conn:
        conn.execute("PRAGMA journal_mode=DELETE")  # as _snapshot_into leaves it


def _remove_unused_files(folder: Path) -> int:
    """Remove the blob files in ``folder``'s blobs/ that its database (the new one, in place)
    has no row for, as gc would on a server of the backup; how many. Until the new database
    replaced the old one they were part of a whole backup; now ``davserver fsck`` on a
    restore would report them as orphans. Files not named as blobs are not the backup's:
    left alone, as gc leaves them."""
    with closing(sqlite3.connect(folder / DATABASE_FILE)) as conn:
        rows = {key for (key,) in conn.execute("SELECT storage_key FROM blobs")}
    store = FileSystemBlobStore(folder / BLOB_FOLDER, fsync=False)
    unused = [
        found.key
        for found in store.iter_files()
        if is_storage_key(found.key) and found.key not in rows
    ]
    for key in unused:
        store.delete(key)
    return len(unused)


def _blob_totals(snapshot: Path) -> tuple[int, int]:
    with closing(sqlite3.connect(snapshot)) as conn:
        count, size = conn.execute(
            "SELECT count(*), coalesce(sum(size_bytes), 0) FROM blobs"
        ).fetchone()
    return int(count), int(size)


def _blob_rows(
    snapshot: Path, *, new_since: Path | None = None, retry: Iterable[str] = ()
) -> Iterator[tuple[str, str, int]]:
    """(storage key, SHA-256, size) of every blob the snapshot refers to, in key order (the
    store's own order, so a file system reads its folders one after another). With
    ``new_since``, an earlier snapshot: only the blobs that one does not refer to, and those
    whose keys are in ``retry``."""
    with closing(sqlite3.connect(snapshot)) as conn:
        if new_since is None:
            yield from conn.execute("SELECT storage_key, sha256, size_bytes FROM blobs ORDER BY 1")
            return
        conn.execute("ATTACH DATABASE ? AS earlier", (str(new_since),))
        conn.execute("CREATE TEMP TABLE retry (storage_key TEXT PRIMARY KEY)")
        conn.executemany("INSERT OR IGNORE INTO retry VALUES (?)", ((key,) for key in retry))
        yield from conn.execute(
            "SELECT storage_key, sha256, size_bytes FROM blobs"
            " WHERE storage_key NOT IN (SELECT storage_key FROM earlier.blobs)"
            " OR storage_key IN (SELECT storage_key FROM retry) ORDER BY 1"
        )


def _copy_blobs(
    rows: Iterator[tuple[str, str, int]],
    total: int,
    total_bytes: int,
    copier: _BlobCopier,
    report: BackupReport,
    tick: ProgressCallback,
) -> None:
    """Copy ``rows`` (``total`` of them), each failure a problem in ``report``."""
    done_bytes = 0
    for index, (key, sha256, size) in enumerate(rows, 1):
        problem = copier.copy(key, sha256, size)
        done_bytes += size
        if problem is not None:
            report.problem_count += 1
            if len(report.problems) < _LISTED_PROBLEMS:
                report.problems.append(problem)
        tick(Progress("blobs", index, total, done_bytes, total_bytes))


def _forgive_garbage(snapshot: Path, report: BackupReport) -> None:
    """Take out of ``report`` the missing blobs that nothing in ``snapshot`` uses: garbage a
    gc was removing (``maintenance.unused_blob_keys``). Only when every problem is listed."""
    missing = [problem.storage_key for problem in report.problems if problem.kind == "missing"]
    if not missing or report.problem_count > len(report.problems):
        return
    engine = sa.create_engine(f"sqlite:///{snapshot}")
    try:
        with engine.connect() as conn:
            unused = set()
            for start in range(0, len(missing), _LOOKUP_BATCH):
                unused |= unused_blob_keys(conn, missing[start : start + _LOOKUP_BATCH])
    finally:
        engine.dispose()
    kept = [p for p in report.problems if not (p.kind == "missing" and p.storage_key in unused)]
    report.garbage_without_file += len(report.problems) - len(kept)
    report.problem_count -= len(report.problems) - len(kept)
    report.problems = kept


def _collected_since(db: Database, report: BackupReport) -> bool:
    """Whether some blob the store did not have is one the live database no longer has either
    (gc collected it after the snapshot), so a new snapshot would not refer to it. Only when
    every problem is listed: a store that lost more is not helped by one."""
    missing = [problem.sha256 for problem in report.problems if problem.kind == "missing"]
    if not missing or report.problem_count > len(report.problems):
        return False
    with db.read() as session:
        for start in range(0, len(missing), _LOOKUP_BATCH):
            batch = missing[start : start + _LOOKUP_BATCH]
            live = set(session.scalars(sa.select(Blob.sha256).where(Blob.sha256.in_(batch))))
            if len(live) < len(set(batch)):
                return True
    return False


class _BlobCopier:
    """Copies blobs from ``store`` to ``root/<storage key>``, each through a temp file in
    ``root/tmp`` (the file-system store's own temp folder), checked, then renamed."""

    def __init__(self, store: BlobStore, root: Path, *, fsync: bool) -> None:
        self.store = store
        self.root = root
        self.fsync = fsync
        self.copied = self.copied_bytes = self.kept = 0
        self._touched: set[Path] = set()
        (root / "tmp").mkdir(parents=True, exist_ok=True)

    def copy(self, key: str, sha256: str, size: int) -> FsckProblem | None:
        if not is_storage_key(key):
            return FsckProblem("skipped", key, sha256, "not a storage key: left out")
        final = self.root / key
        try:
            if final.stat().st_size == size:
                self.kept += 1
                return None
        except FileNotFoundError:
            pass
        final.parent.mkdir(parents=True, exist_ok=True)
        fd, temp = tempfile.mkstemp(dir=self.root / "tmp", prefix="backup-")
        try:
            with os.fdopen(fd, "wb") as out:
                digest, copied = hashlib.sha256(), 0
                for block in self._blocks(key):
                    digest.update(block)
                    out.write(block)  # failing, it is the backup folder's fault: raised
                    copied += len(block)
                if copied != size or digest.hexdigest() != sha256:
                    return FsckProblem(
                        "corrupt",
                        key,
                        sha256,
                        f"the store's copy has {copied} bytes, sha256 {digest.hexdigest()}:"
                        " left out",
                    )
                out.flush()
                if self.fsync:
                    os.fsync(out.fileno())
            os.replace(temp, final)
        except _StoreFailed as failed:
            if isinstance(failed.__cause__, FileNotFoundError):
                return FsckProblem(
                    "missing",
                    key,
                    sha256,
                    "not in the store: lost (see davserver fsck), or collected by gc after"
                    " the snapshot",
                )
            return FsckProblem("unreadable", key, sha256, str(failed.__cause__))
        finally:
            Path(temp).unlink(missing_ok=True)
        self._touched.add(final.parent)
        self.copied += 1
        self.copied_bytes += size
        return None

    def _blocks(self, key: str) -> Iterator[bytes]:
        """The store's bytes of ``key``, a block at a time. What goes wrong reading them is
        this blob's problem (_StoreFailed); what goes wrong writing them, between two blocks,
        is not caught here."""
        try:
            with self.store.open(key) as src:
                while block := src.read(_READ_BLOCK):
                    yield block
        except OSError as exc:
            raise _StoreFailed(key) from exc

    def flush(self) -> None:
        """Make the renames durable: each folder a blob went into, once."""
        if self.fsync:
            for folder in sorted(self._touched):
                fsync_path(folder)
            fsync_path(self.root)
