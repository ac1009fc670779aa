"""Uploads into an S3 store, on both engines and both S3 implementations: no S3 request is
made while a write transaction is open, and a committed version still always has its bytes.

A request to the store is a network round trip. Made inside a write transaction it would hold
SQLite's one write lock (every other writer waits) or PostgreSQL's row locks for that long.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from davserver.blobstore import StoredBlob, storage_key_for
from davserver.blobstore.s3 import S3BlobStore
from davserver.config import ImageSettings
from davserver.db import Database
from davserver.services.actor import Actor
from davserver.services.files import FileService
from davserver.services.maintenance import MaintenanceService
from davserver.services.permissions import EVERYTHING
from davserver.services.tree import NodeView
from davserver.services.variants import VariantService
from tests import images
from tests.blobs import HOUR, loose_blob, sha, write
from tests.integration.test_maintenance_race import DATA, Waits, Worker, assert_intact, gc
from tests.s3 import fresh_bucket, location


@pytest.fixture
def store(s3_endpoint: str, tmp_path: Path) -> Iterator[S3BlobStore]:
    """The S3 store the service fixtures (``files``, ``maintenance``) use in this module."""
    with fresh_bucket(s3_endpoint) as bucket:
        yield S3BlobStore(location(s3_endpoint, bucket, "blobs/"), tmp_path / "staging")


class S3Calls:
    """Every request the store's client makes, with whether a write transaction
    (``Database.write``) was open in this process at the time: the upload thread's own, or,
    for boto3's part-upload threads, the one that started them."""

    def __init__(self, database: Database, store: S3BlobStore, monkeypatch: pytest.MonkeyPatch):
        self.calls: list[tuple[str, int | None]] = []  # (operation, write transaction number)
        self._open = 0
        self._started = 0
        self._guard = threading.Lock()
        real_write = database.write

        @contextmanager
        def write() -> Iterator[Any]:
            with self._guard:
                self._open += 1
                self._started += 1
            try:
                with real_write() as session:
                    yield session
            finally:
                with self._guard:
                    self._open -= 1

        monkeypatch.setattr(database, "write", write)
        for client in (store.client, store.quick_client):
            client.meta.events.register("before-call.s3", self._seen)

    def _seen(self, model: Any, **_kwargs: Any) -> None:
        with self._guard:
            self.calls.append((model.name, self._started if self._open else None))

    def inside_transactions(self) -> list[str]:
        return [name for name, inside in self.calls if inside is not None]

    def names(self) -> list[str]:
        return [name for name, _inside in self.calls]


@pytest.fixture
def s3_calls(database: Database, store: S3BlobStore, monkeypatch: pytest.MonkeyPatch) -> S3Calls:
    return S3Calls(database, store, monkeypatch)


@pytest.fixture
def waits(database: Database) -> Iterator[Waits]:
    watcher = Waits(database)
    yield watcher
    watcher.close()


def read(files: FileService, view: NodeView) -> bytes:
    with files.open_content(view) as fh:
        data: bytes = fh.read()
    return data


@pytest.mark.parametrize("size", [100, 200 * 1024], ids=["small", "large"])
def test_uploads_make_no_s3_request_inside_a_write_transaction(
    size: int,
    store: S3BlobStore,
    files: FileService,
    actor: Actor,
    home: NodeView,
    s3_calls: S3Calls,
) -> None:
    data, other = b"a" * size, b"b" * size
    _first, created = files.commit_upload(actor, home, "new.bin", write(files.blobs, data))
    assert created
    again, _ = files.commit_upload(actor, home, "same.bin", write(files.blobs, data))  # dedup
    newer, _ = files.commit_upload(actor, home, "new.bin", write(files.blobs, other))
    emptied, _ = files.commit_upload(actor, home, "same.bin", write(files.blobs, b""))
    # One round trip for each small upload; a larger one asks first (dedup: only asks).
    small = ["PutObject"] * 4
    large = ["HeadObject", "PutObject", "HeadObject", "HeadObject", "PutObject", "PutObject"]
    assert s3_calls.names() == (small if size <= 64 * 1024 else large)
    assert s3_calls.inside_transactions() == []
    assert (read(files, again), read(files, newer), read(files, emptied)) == (data, other, b"")
    assert (newer.version_no, emptied.version_no) == (2, 2)
    assert list(store.iter_temp_files()) == []  # spares released


def test_storing_a_thumbnail_makes_no_s3_request_inside_a_write_transaction(
    database: Database,
    files: FileService,
    actor: Actor,
    home: NodeView,
    s3_calls: S3Calls,
) -> None:
    view, _ = files.commit_upload(actor, home, "p.png", write(files.blobs, images.jpeg(64, 48)))
    variants = VariantService.from_settings(database, files.blobs, files, ImageSettings())
    try:
        request = variants.request(EVERYTHING, view, {"thumbnail": ["64"]})
        before = len(s3_calls.calls)
        variant = variants.get(request)
        with variants.open(variant) as fh:
            assert fh.read(2) == b"\xff\xd8"  # a JPEG
    finally:
        variants.close()
    assert "PutObject" in s3_calls.names()[before:]
    assert s3_calls.inside_transactions() == []


# --- gc racing an upload whose bytes were placed before its transaction ---------------------


def test_gc_between_placing_and_the_transaction_makes_the_upload_place_again(
    database: Database,
    store: S3BlobStore,
    files: FileService,
    maintenance: MaintenanceService,
    actor: Actor,
    home: NodeView,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    loose_blob(database, store, DATA)
    real_ensure = store.ensure_stored
    ensured: list[bool] = []

    def ensure_then_gc(blob: StoredBlob) -> None:
        real_ensure(blob)
        ensured.append(store.exists(blob.storage_key))
        if len(ensured) == 1:  # the bytes were there: gc takes them, and their row
            assert gc(maintenance).blobs_removed == 1

    monkeypatch.setattr(store, "ensure_stored", ensure_then_gc)
    view, _ = files.commit_upload(actor, home, "b.txt", write(store, DATA))
    # The transaction found the row gone, rolled back, and placed the bytes again.
    assert ensured == [True, True]
    assert_intact(database, maintenance, view.id)


def test_upload_while_gc_has_moved_the_bytes_aside_but_not_committed(
    database: Database,
    store: S3BlobStore,
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
        # The upload puts the bytes back from its spare (the row is still there for it), then
        # its transaction waits for gc's; gc commits, and the row it found is gone.
        waits.until_waiting(upload[0])
        return token

    monkeypatch.setattr(store, "set_aside", set_aside_then_upload)
    assert gc(maintenance).blobs_removed == 1
    view, _ = upload[0].outcome()
    assert_intact(database, maintenance, view.id)


def test_gc_that_fails_puts_the_bytes_back_before_its_rows(
    database: Database,
    store: S3BlobStore,
    files: FileService,
    maintenance: MaintenanceService,
    actor: Actor,
    home: NodeView,
    waits: Waits,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An upload placed its bytes (they were there), then gc moved them aside and failed on
    the next blob: the upload's transaction must not find the row back before the bytes."""
    other = b"a second loose blob, which gc fails to move aside"
    loose_blob(database, store, DATA, blob_id=uuid.UUID(int=1))  # gc's first, by id
    loose_blob(database, store, other, blob_id=uuid.UUID(int=2))
    placed, go = threading.Event(), threading.Event()
    real_ensure, real_set_aside, real_restore = (
        store.ensure_stored,
        store.set_aside,
        store.restore,
    )

    def ensure_then_pause(blob: StoredBlob) -> None:
        real_ensure(blob)
        placed.set()
        assert go.wait(30)

    def set_aside_or_fail(storage_key: str) -> str | None:
        if storage_key == storage_key_for(sha(other)):
            assert moved_aside, "gc was to move the upload's bytes aside first"
            raise PermissionError("refused")
        token = real_set_aside(storage_key)
        moved_aside.append(storage_key)
        return token

    def restore_after_the_upload_tried(token: str, storage_key: str) -> None:
        go.set()
        deadline = time.monotonic() + 20
        while upload.is_alive() and not waits.is_waiting(upload):
            assert time.monotonic() < deadline, "the upload neither finished nor waited"
            time.sleep(0.01)
        if not upload.is_alive():  # it committed: its bytes had better be there
            committed_without_bytes.append(not store.exists(storage_key))
        real_restore(token, storage_key)

    moved_aside: list[str] = []
    committed_without_bytes: list[bool] = []
    monkeypatch.setattr(store, "ensure_stored", ensure_then_pause)
    upload = Worker(lambda: files.commit_upload(actor, home, "b.txt", write(store, DATA)))
    upload.start()
    assert placed.wait(30)
    monkeypatch.setattr(store, "set_aside", set_aside_or_fail)
    monkeypatch.setattr(store, "restore", restore_after_the_upload_tried)
    report = maintenance.collect_garbage(grace=HOUR)
    assert report.blobs_removed == 0 and "refused" in report.errors[0]
    view, _ = upload.outcome()
    assert committed_without_bytes == []  # it waited for gc: nothing committed before
    assert_intact(database, maintenance, view.id)


def test_gc_moves_few_objects_aside_per_write_transaction(
    database: Database,
    store: S3BlobStore,
    maintenance: MaintenanceService,
    s3_calls: S3Calls,
) -> None:
    """Each object gc moves aside is a copy and a delete on the store, made while the
    transaction that deletes its row is open (on SQLite, every other writer waits): a few
    objects per transaction, not a whole batch of 500."""
    for n in range(20):
        loose_blob(database, store, b"loose blob %d" % n)
    report = maintenance.collect_garbage(grace=HOUR)
    assert report.blobs_removed == 20 and report.errors == []
    copies = Counter(tx for name, tx in s3_calls.calls if name == "CopyObject")
    assert None not in copies  # moved aside inside the transactions, as before
    assert sum(copies.values()) == 20
    assert max(copies.values()) <= 8
