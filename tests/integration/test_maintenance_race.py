"""gc racing an upload, on both engines, each interleaving forced by a hook between two steps.

Whatever the order, the upload's version ends up with its row and its bytes (fsck agrees),
and no spare copy is left behind. The engine-specific assertions show which way each race
went: on SQLite the two transactions queue; on PostgreSQL the foreign key check on the blob
row makes the loser wait, fail and retry.
"""

from __future__ import annotations

import errno
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy import event

from davserver.blobstore import FileSystemBlobStore, StoredBlob, filesystem
from davserver.db import Database
from davserver.models import Blob, FileVersion
from davserver.services import blob_refs
from davserver.services.actor import Actor
from davserver.services.files import FileService
from davserver.services.fsck import FsckService
from davserver.services.maintenance import GcReport, MaintenanceService
from davserver.services.tree import NodeView
from tests.blobs import HOUR, loose_blob, orphan_file, sha, write


class Worker(threading.Thread):
    """Runs ``work`` on its own thread and keeps what it returned or raised."""

    def __init__(self, work: Callable[[], Any]) -> None:
        super().__init__(daemon=True)
        self.work = work
        self.result: Any = None
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self.result = self.work()
        except BaseException as exc:
            self.error = exc

    def outcome(self) -> Any:
        self.join(30)
        assert not self.is_alive(), "the worker did not finish"
        if self.error is not None:
            raise self.error
        return self.result


class Waits:
    """Tells when a worker thread waits for the other transaction.

    SQLite: a write transaction waits while another one is open, in the process's queue of
    writers (``Database.writers_waiting``), or in its BEGIN IMMEDIATE when another process's
    is open. PostgreSQL: a lock request that is not granted.
    """

    def __init__(self, database: Database) -> None:
        self.database = database
        self.begins: dict[int, threading.Event] = {}
        self.errors: list[str] = []  # database errors, to tell which way a race went
        event.listen(database.engine, "before_cursor_execute", self._seen)
        event.listen(database.engine, "handle_error", self._failed)

    def _seen(self, _conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        if statement == "BEGIN IMMEDIATE":
            self.begins.setdefault(threading.get_ident(), threading.Event()).set()

    def _failed(self, context: Any) -> None:
        self.errors.append(str(context.original_exception))

    def fk_failures(self) -> int:
        return sum("fk_file_versions_blob_id_blobs" in e for e in self.errors)

    def close(self) -> None:
        event.remove(self.database.engine, "before_cursor_execute", self._seen)
        event.remove(self.database.engine, "handle_error", self._failed)

    def is_waiting(self, worker: Worker) -> bool:
        if self.database.is_sqlite:
            return worker.ident in self.begins or self.database.writers_waiting > 0
        with self.database.engine.connect() as conn:
            return bool(conn.scalar(_WAITING_FOR_A_LOCK))

    def until_waiting(self, worker: Worker) -> None:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            assert worker.is_alive(), f"the worker finished instead of waiting: {worker.error!r}"
            if self.is_waiting(worker):
                return
            time.sleep(0.01)
        raise AssertionError("the worker never waited for a lock")


_WAITING_FOR_A_LOCK = sa.text(
    "SELECT count(*) FROM pg_stat_activity"
    " WHERE datname = current_database() AND wait_event_type = 'Lock'"
)


@pytest.fixture
def waits(database: Database) -> Iterator[Waits]:
    watcher = Waits(database)
    yield watcher
    watcher.close()


DATA = b"bytes that gc and an upload both want"


def gc(maintenance: MaintenanceService) -> GcReport:
    report = maintenance.collect_garbage(grace=HOUR)
    assert report.errors == []
    return report


def assert_intact(database: Database, maintenance: MaintenanceService, node_id: uuid.UUID) -> None:
    """The file's current version has its row and its bytes, fsck agrees, no spare is left."""
    with database.read() as session:
        found, storage_key = session.execute(
            sa.select(Blob.sha256, Blob.storage_key)
            .join(FileVersion, FileVersion.blob_id == Blob.id)
            .where(FileVersion.node_id == node_id)
        ).one()
    assert found == sha(DATA)
    with maintenance.blobs.open(storage_key) as fh:
        assert fh.read() == DATA
    assert FsckService(maintenance.db, maintenance.blobs).check().ok
    assert list(maintenance.blobs.iter_temp_files()) == []


def test_gc_between_finish_and_commit_of_a_dedup_upload(
    database: Database,
    store: FileSystemBlobStore,
    files: FileService,
    maintenance: MaintenanceService,
    actor: Actor,
    home: NodeView,
) -> None:
    loose_blob(database, store, DATA)
    blob = write(store, DATA)  # the bytes are there already: dedup, the copy stays as spare
    assert blob.spare is not None
    assert gc(maintenance).blobs_removed == 1
    assert not store.exists(blob.storage_key)
    view, _ = files.commit_upload(actor, home, "b.txt", blob)
    assert_intact(database, maintenance, view.id)


def test_without_hard_links_the_spare_is_copied_back(
    database: Database,
    store: FileSystemBlobStore,
    files: FileService,
    maintenance: MaintenanceService,
    actor: Actor,
    home: NodeView,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def no_links(_source: object, _target: object) -> None:
        raise PermissionError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(filesystem.os, "link", no_links)
    first = write(store, b"first upload")  # renamed into place: no spare
    assert first.spare is None and store.exists(first.storage_key)
    store.release(first)
    loose_blob(database, store, DATA)
    blob = write(store, DATA)
    assert gc(maintenance).blobs_removed == 1
    view, _ = files.commit_upload(actor, home, "b.txt", blob)
    assert_intact(database, maintenance, view.id)


def test_gc_between_finish_and_commit_of_a_dedup_of_an_orphan_file(
    database: Database,
    store: FileSystemBlobStore,
    files: FileService,
    maintenance: MaintenanceService,
    actor: Actor,
    home: NodeView,
) -> None:
    orphan_file(store, DATA)
    blob = write(store, DATA)
    assert gc(maintenance).orphan_files_removed == 1
    view, _ = files.commit_upload(actor, home, "b.txt", blob)
    assert_intact(database, maintenance, view.id)


def test_without_a_spare_the_commit_fails_rather_than_point_at_nothing(
    database: Database,
    store: FileSystemBlobStore,
    files: FileService,
    maintenance: MaintenanceService,
    actor: Actor,
    home: NodeView,
) -> None:
    loose_blob(database, store, DATA)
    blob = write(store, DATA)
    store.release(blob)
    gc(maintenance)
    bare = StoredBlob(blob.sha256, blob.md5, blob.sha1, blob.size, blob.storage_key, blob.crc32)
    with pytest.raises(FileNotFoundError):
        files.commit_upload(actor, home, "b.txt", bare)
    with database.read() as session:
        assert session.scalar(sa.select(sa.func.count()).select_from(FileVersion)) == 0


def test_gc_while_the_upload_has_its_blob_row_but_no_version_yet(
    database: Database,
    store: FileSystemBlobStore,
    files: FileService,
    maintenance: MaintenanceService,
    actor: Actor,
    home: NodeView,
    waits: Waits,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    loose_blob(database, store, DATA)
    real_blob_id = blob_refs.row_id
    gc_run: list[Worker] = []

    def blob_id_then_gc(session: Any, blob: StoredBlob) -> uuid.UUID:
        found = real_blob_id(session, blob)
        if not gc_run:
            gc_run.append(Worker(lambda: gc(maintenance)))
            gc_run[0].start()
            if database.is_sqlite:
                waits.until_waiting(gc_run[0])  # gc queues behind this transaction
            else:
                gc_run[0].outcome()  # nothing holds the row yet: gc deletes it and commits
        return found

    monkeypatch.setattr(blob_refs, "row_id", blob_id_then_gc)
    view, _ = files.commit_upload(actor, home, "b.txt", write(store, DATA))
    report = gc_run[0].outcome()
    # SQLite: gc ran after the upload and saw the version. PostgreSQL: gc won; the version
    # insert failed on the deleted row, the upload retried and put the bytes back.
    assert report.blobs_removed == (0 if database.is_sqlite else 1)
    assert waits.fk_failures() == (0 if database.is_sqlite else 1)
    assert_intact(database, maintenance, view.id)


def test_upload_while_gc_has_moved_the_file_aside_but_not_committed(
    database: Database,
    store: FileSystemBlobStore,
    files: FileService,
    maintenance: MaintenanceService,
    actor: Actor,
    home: NodeView,
    waits: Waits,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    loose_blob(database, store, DATA)
    real_set_aside = store.set_aside
    upload: list[Worker] = []

    def set_aside_then_upload(storage_key: str) -> str | None:
        token = real_set_aside(storage_key)
        upload.append(Worker(lambda: files.commit_upload(actor, home, "b.txt", write(store, DATA))))
        upload[0].start()
        waits.until_waiting(upload[0])  # the upload waits for gc's transaction (or row)
        return token

    monkeypatch.setattr(store, "set_aside", set_aside_then_upload)
    assert gc(maintenance).blobs_removed == 1
    view, _ = upload[0].outcome()
    # PostgreSQL: the upload's blob-row insert waited for gc's transaction and, the row being
    # gone then, inserted it anew; nothing failed or had to be retried.
    assert waits.fk_failures() == 0
    assert_intact(database, maintenance, view.id)


@pytest.mark.parametrize("kind", ["row", "orphan file"])
def test_gc_while_the_upload_has_written_its_version_but_not_committed(
    kind: str,
    database: Database,
    store: FileSystemBlobStore,
    files: FileService,
    maintenance: MaintenanceService,
    actor: Actor,
    home: NodeView,
    waits: Waits,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    if kind == "row":
        loose_blob(database, store, DATA)
    else:
        orphan_file(store, DATA)
    real_ensure = store.ensure_stored
    gc_run: list[Worker] = []

    def gc_then_ensure(blob: StoredBlob) -> None:
        if not gc_run:
            gc_run.append(Worker(lambda: gc(maintenance)))
            gc_run[0].start()
            waits.until_waiting(gc_run[0])  # gc waits for this transaction (or its row)
        real_ensure(blob)

    monkeypatch.setattr(store, "ensure_stored", gc_then_ensure)
    view, _ = files.commit_upload(actor, home, "b.txt", write(store, DATA))
    report = gc_run[0].outcome()
    assert (report.blobs_removed, report.orphan_files_removed) == (0, 0)
    # PostgreSQL: gc's DELETE waited for the upload's row lock, then failed its foreign key
    # check and was retried; gc's claim on an orphan's SHA-256 waited, then did nothing.
    expected = 1 if kind == "row" and not database.is_sqlite else 0
    assert waits.fk_failures() == expected
    assert_intact(database, maintenance, view.id)
