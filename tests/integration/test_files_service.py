"""The file service on both engines: versions, dedup, races, row-level MOVE/COPY/DELETE, audit."""

from __future__ import annotations

import datetime as dt
import hashlib
import os
import threading
import time
import tracemalloc
import unicodedata
import uuid
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.orm import Session

from davserver.blobstore import StoredBlob, hashing
from davserver.config import load_settings
from davserver.context import Services
from davserver.db import Base, Database
from davserver.db import engine as engine_module
from davserver.db.migrate import downgrade, upgrade
from davserver.errors import (
    AlreadyExists,
    Conflict,
    Forbidden,
    InvalidName,
    NotFound,
    PreconditionFailed,
    QuotaExceeded,
    Unavailable,
)
from davserver.models import Blob, DeadProperty, FileVersion, Group, LogEntry, Node, Op, User
from davserver.services import files as files_module
from davserver.services import node_rows, package_rows, subtree_copy, tree, uploads, usage
from davserver.services.actor import Actor
from davserver.services.files import FileService
from davserver.services.namespace import NamespaceService
from davserver.services.trash import TrashService
from davserver.services.tree import NodeView, check_name
from davserver.services.versions import VersionService
from tests.dbs import in_thread, pg_reads, wait_for_a_lock_wait


@pytest.fixture
def service(files: FileService) -> FileService:
    return files


def store(service: FileService, data: bytes) -> StoredBlob:
    writer = service.blobs.writer()
    writer.write(data)
    return writer.finish()


def put(service: FileService, actor: Actor, parent: NodeView, name: str, data: bytes) -> NodeView:
    view, _ = service.commit_upload(actor, parent, name, store(service, data))
    return view


def logged(database: Database, node_id: uuid.UUID) -> list[Any]:
    """The logbook rows about a node, oldest first: (op_type, details, user_id)."""
    with database.read() as session:
        return list(
            session.execute(
                sa.select(LogEntry.op_type, LogEntry.details, LogEntry.user_id)
                .where(LogEntry.node_id == node_id)
                .order_by(LogEntry.id)
            ).all()
        )


def versions(database: Database, node_id: uuid.UUID) -> list[tuple[int, int]]:
    with database.read() as session:
        rows = session.execute(
            sa.select(FileVersion.version_no, FileVersion.size)
            .where(FileVersion.node_id == node_id)
            .order_by(FileVersion.version_no)
        )
        return [(no, size) for no, size in rows]


def count(database: Database, model: type, *where: sa.ColumnElement[bool]) -> int:
    with database.read() as session:
        return session.scalar(sa.select(sa.func.count()).select_from(model).where(*where)) or 0


@pytest.fixture
def statements(database: Database) -> Iterator[list[str]]:
    """Every SQL statement the engine runs while the test body runs."""
    seen: list[str] = []

    def listener(_conn: object, _cursor: object, statement: str, *_args: object) -> None:
        seen.append(statement)

    event.listen(database.engine, "before_cursor_execute", listener)
    yield seen
    event.remove(database.engine, "before_cursor_execute", listener)


def test_each_put_is_a_version_and_equal_bytes_are_not(
    service: FileService, actor: Actor, home: NodeView, database: Database
) -> None:
    first = put(service, actor, home, "report.txt", b"one")
    put(service, actor, home, "report.txt", b"two!")
    put(service, actor, home, "report.txt", b"two!")
    assert versions(database, first.id) == [(1, 3), (2, 4)]
    current = service.resolve(home.id, ["report.txt"])
    assert current is not None and current.size == 4 and current.version_no == 2


def test_same_bytes_share_one_blob(
    service: FileService, actor: Actor, home: NodeView, database: Database
) -> None:
    put(service, actor, home, "a.bin", b"same bytes")
    put(service, actor, home, "b.bin", b"same bytes")
    assert count(database, Blob) == 1
    assert count(database, FileVersion) == 2


@pytest.mark.parametrize("size", [10, 5 * 1024 * 1024 + 3])  # inline and threaded hashing
def test_blob_row_records_the_crc32_zip_entries_need(
    service: FileService, actor: Actor, home: NodeView, database: Database, size: int
) -> None:
    data = bytes(range(256)) * (size // 256) + b"x" * (size % 256)
    put(service, actor, home, "c.bin", data)
    with database.read() as session:
        assert session.scalar(sa.select(Blob.crc32)) == zlib.crc32(data)


def test_a_large_upload_leaves_its_crc32_to_the_first_zip(
    service: FileService,
    actor: Actor,
    home: NodeView,
    database: Database,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Past hashing.CRC_UP_TO the CRC-32 is not computed while the bytes arrive (packages
    compute it when a zip first needs it; see test_missing_crc32_is_computed_once_and_stored)."""
    monkeypatch.setattr(hashing, "CRC_UP_TO", 5 * 1024 * 1024)
    data = os.urandom(6 * 1024 * 1024)
    view = put(service, actor, home, "large.bin", data)
    with database.read() as session:
        row = session.execute(sa.select(Blob.sha256, Blob.md5, Blob.crc32)).one()
    assert row.sha256 == view.sha256 == hashlib.sha256(data).hexdigest()
    assert row.md5 == hashlib.md5(data).hexdigest()
    assert row.crc32 is None


def test_new_empty_file_has_no_version(
    service: FileService, actor: Actor, home: NodeView, database: Database
) -> None:
    view = put(service, actor, home, "empty.txt", b"")
    assert versions(database, view.id) == []
    put(service, actor, home, "empty.txt", b"content")
    assert versions(database, view.id) == [(1, 7)]


def test_concurrent_uploads_get_distinct_version_numbers(
    service: FileService, actor: Actor, home: NodeView, database: Database
) -> None:
    blobs = [store(service, f"writer {i}".encode()) for i in range(8)]
    errors: list[BaseException] = []
    barrier = threading.Barrier(len(blobs))

    def upload(blob: StoredBlob) -> None:
        barrier.wait()
        try:
            service.commit_upload(actor, home, "shared.txt", blob)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=upload, args=(b,)) for b in blobs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    node = service.resolve(home.id, ["shared.txt"])
    assert node is not None
    assert [no for no, _ in versions(database, node.id)] == list(range(1, 9))
    assert count(database, Node, Node.name == "shared.txt") == 1


def test_stale_expected_version_is_refused(
    service: FileService, actor: Actor, home: NodeView, database: Database
) -> None:
    first = put(service, actor, home, "doc.txt", b"v1")
    put(service, actor, home, "doc.txt", b"v2")
    with pytest.raises(PreconditionFailed):
        service.commit_upload(
            actor,
            home,
            "doc.txt",
            store(service, b"v3"),
            expected_version_id=first.current_version_id,
        )
    assert [no for no, _ in versions(database, first.id)] == [1, 2]


def test_move_of_a_big_folder_is_one_update(
    service: FileService,
    actor: Actor,
    home: NodeView,
    database: Database,
    statements: list[str],
) -> None:
    folder = service.create_folder(actor, home, "big")
    target = service.create_folder(actor, home, "target")
    for i in range(300):
        put(service, actor, folder, f"f{i}.txt", f"{i}".encode())
    statements.clear()
    service.move(actor, folder.id, target, "moved")
    node_updates = [s for s in statements if s.lstrip().upper().startswith("UPDATE NODES")]
    assert len(node_updates) == 1
    moved = service.resolve(home.id, ["target", "moved", "f299.txt"])
    assert moved is not None and moved.size == 3
    assert service.resolve(home.id, ["big"]) is None


def test_move_into_own_subtree_is_refused(
    service: FileService, actor: Actor, home: NodeView
) -> None:
    outer = service.create_folder(actor, home, "outer")
    inner = service.create_folder(actor, outer, "inner")
    with pytest.raises(Forbidden):
        service.move(actor, outer.id, inner, "loop")


def test_an_item_whose_folder_was_deleted_meanwhile_is_not_found(
    service: FileService, actor: Actor, home: NodeView
) -> None:
    """A client deleted a folder and a file in it at once: the file's DELETE, having found
    the file, ran after the folder went to the trash and answered 409 "the folder was
    deleted", which clients read as "make the parent first". The file is gone from its URL
    with its folder: 404. Creating in such a folder stays a conflict (409)."""
    folder = service.create_folder(actor, home, "going")
    inside = put(service, actor, folder, "in.txt", b"inside")
    service.delete(actor, folder.id)
    for change in (
        lambda: service.delete(actor, inside.id),
        lambda: service.move(actor, inside.id, home, "out.txt"),
    ):
        with pytest.raises(NotFound, match="a folder above it was deleted"):
            change()
    with pytest.raises(Conflict, match="the folder was deleted"):
        service.create_folder(actor, folder, "new")


def test_copy_shares_blobs_and_keeps_structure(
    service: FileService, actor: Actor, home: NodeView, database: Database
) -> None:
    src = service.create_folder(actor, home, "src")
    sub = service.create_folder(actor, src, "sub")
    put(service, actor, src, "a.txt", b"alpha")
    put(service, actor, sub, "b.txt", b"beta")
    blobs_before = count(database, Blob)
    service.copy(actor, src.id, home, "dst")
    assert count(database, Blob) == blobs_before
    copied = service.resolve(home.id, ["dst", "sub", "b.txt"])
    original = service.resolve(home.id, ["src", "sub", "b.txt"])
    assert copied is not None and original is not None
    assert copied.id != original.id and copied.sha256 == original.sha256


def test_copy_onto_a_file_adds_a_version(
    service: FileService, actor: Actor, home: NodeView, database: Database
) -> None:
    put(service, actor, home, "new.txt", b"new content")
    old = put(service, actor, home, "old.txt", b"old content")
    source = service.resolve(home.id, ["new.txt"])
    assert source is not None
    service.copy(actor, source.id, home, "old.txt", overwrite=True)
    assert [no for no, _ in versions(database, old.id)] == [1, 2]


def version_mtimes(database: Database, node_id: uuid.UUID) -> list[dt.datetime | None]:
    with database.read() as session:
        return list(
            session.scalars(
                sa.select(FileVersion.mtime)
                .where(FileVersion.node_id == node_id)
                .order_by(FileVersion.version_no)
            )
        )


def test_a_file_moved_onto_a_file_keeps_its_time_on_the_new_version(
    service: FileService, actor: Actor, home: NodeView, database: Database
) -> None:
    """An editor's save by rename: the moved file's client time goes with its bytes to the
    version it becomes. It was written on the version before it instead (the history showed
    the old bytes with the new time, and the new ones with none)."""
    saved = dt.datetime(2024, 5, 6, 7, 8, 9, tzinfo=dt.UTC)
    earlier = dt.datetime(2020, 1, 1, tzinfo=dt.UTC)
    doc = put(service, actor, home, "doc.txt", b"first draft")
    service.set_mtime(actor, doc.id, earlier)
    temp = put(service, actor, home, "doc.txt~", b"second draft")
    service.set_mtime(actor, temp.id, saved)
    service.move(actor, temp.id, home, "doc.txt", overwrite=True)
    assert version_mtimes(database, doc.id) == [earlier, saved]
    current = service.resolve(home.id, ["doc.txt"])
    assert current is not None and current.mtime == saved


def test_a_file_copied_onto_a_file_keeps_its_time_as_a_copy_to_a_new_name_does(
    service: FileService, actor: Actor, home: NodeView, database: Database
) -> None:
    """COPY to a new name keeps the source's client time, and so does MOVE onto a file; COPY
    onto a file gave the copy the time of the copy (curl, webdavclient3, Finder; rclone
    then set it again with a PROPPATCH)."""
    made = dt.datetime(2005, 3, 18, 1, 58, 31, tzinfo=dt.UTC)
    source = put(service, actor, home, "source.txt", b"source bytes")
    service.set_mtime(actor, source.id, made)
    target = put(service, actor, home, "target.txt", b"target bytes")
    service.copy(actor, source.id, home, "target.txt", overwrite=True)
    service.copy(actor, source.id, home, "new.txt")
    assert version_mtimes(database, target.id) == [None, made]
    for name in ("target.txt", "new.txt"):
        copied = service.resolve(home.id, [name])
        assert copied is not None and copied.mtime == made, name


def test_a_file_copied_or_moved_onto_the_same_bytes_makes_no_version(
    service: FileService, actor: Actor, home: NodeView, database: Database
) -> None:
    """As with a PUT of the bytes a file has: an editor saving an unchanged document by
    renaming a temporary file over it (vim on davfs2) added an identical version each time,
    and those pushed real ones out of the history (versions.keep_last)."""
    doc = put(service, actor, home, "doc.txt", b"unchanged")
    temp = put(service, actor, home, "doc.txt~", b"unchanged")
    service.move(actor, temp.id, home, "doc.txt", overwrite=True)
    other = put(service, actor, home, "other.txt", b"unchanged")
    service.copy(actor, other.id, home, "doc.txt", overwrite=True)
    assert versions(database, doc.id) == [(1, 9)]
    assert service.resolve(home.id, ["doc.txt~"]) is None  # the move still happened
    service.move(actor, other.id, home, "doc.txt", overwrite=True)
    put(service, actor, home, "changed.txt", b"changed!")
    changed = service.resolve(home.id, ["changed.txt"])
    assert changed is not None
    service.move(actor, changed.id, home, "doc.txt", overwrite=True)
    assert versions(database, doc.id) == [(1, 9), (2, 8)]


def set_quota(database: Database, user_id: uuid.UUID, quota: int) -> None:
    with database.write() as session:
        session.execute(sa.update(User).where(User.id == user_id).values(quota_bytes=quota))


def test_copy_refuses_what_the_quota_cannot_hold(
    service: FileService, actor: Actor, home: NodeView, database: Database
) -> None:
    folder = service.create_folder(actor, home, "src")
    big = put(service, actor, folder, "big.bin", b"b" * 600)
    small = put(service, actor, home, "small.bin", b"s" * 10)
    set_quota(database, actor.user_id, 1000)
    refused = [
        ("a file to a new name", big.id, "big-copy.bin"),
        ("a folder", folder.id, "src-copy"),
        ("a file onto a smaller one", big.id, "small.bin"),
    ]
    for what, source_id, name in refused:
        with pytest.raises(QuotaExceeded):
            service.copy(actor, source_id, home, name, overwrite=True)
        assert service.usage(actor.user_id) == (610, 1000), what
    assert service.resolve(home.id, ["big-copy.bin"]) is None
    assert service.resolve(home.id, ["src-copy"]) is None
    assert versions(database, small.id) == [(1, 10)]
    service.copy(actor, small.id, home, "small-copy.bin")  # what fits, fits
    assert service.usage(actor.user_id) == (620, 1000)


def test_delete_is_soft_and_hides_the_subtree(
    service: FileService, actor: Actor, home: NodeView, database: Database
) -> None:
    folder = service.create_folder(actor, home, "gone")
    put(service, actor, folder, "inside.txt", b"x")
    service.delete(actor, folder.id)
    assert service.resolve(home.id, ["gone"]) is None
    assert service.resolve(home.id, ["gone", "inside.txt"]) is None
    assert count(database, Node, Node.id == folder.id, Node.deleted_at.is_not(None)) == 1
    # the name is free again
    service.create_folder(actor, home, "gone")


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_a_change_that_cannot_get_the_sqlite_write_lock_is_unavailable(
    service: FileService, actor: Actor, home: NodeView, database: Database
) -> None:
    """SQLite has one writer at a time; a change waits for it (the busy timeout, 30 s) and
    then gives up. That was the driver's "database is locked", a 500 with a traceback in the
    log; it is now Unavailable (503 with Retry-After): try again, nothing was changed."""

    def short_wait(dbapi_connection: Any, _record: Any, _proxy: Any) -> None:
        dbapi_connection.execute("PRAGMA busy_timeout = 50")

    event.listen(database.engine, "checkout", short_wait)
    writer = sa.create_engine(database.url, poolclass=sa.pool.NullPool)
    try:
        with writer.connect() as other:
            other.exec_driver_sql("BEGIN IMMEDIATE")  # another process writing, for a long time
            with pytest.raises(Unavailable) as refused:
                service.create_folder(actor, home, "waiting")
            other.exec_driver_sql("ROLLBACK")
    finally:
        writer.dispose()
        event.remove(database.engine, "checkout", short_wait)
    assert refused.value.retry_after > 0
    assert service.resolve(home.id, ["waiting"]) is None
    service.create_folder(actor, home, "waiting")  # once the other writer is done


def _sqlite_begins(database: Database) -> list[str]:
    """The names of the threads whose ``BEGIN IMMEDIATE`` SQLite has been sent, as they go."""
    begins: list[str] = []

    def seen(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        if statement.startswith("BEGIN IMMEDIATE"):
            begins.append(threading.current_thread().name)

    event.listen(database.engine, "before_cursor_execute", seen)
    return begins


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_sqlite_writers_of_one_process_wait_their_turn_before_begin(
    service: FileService, actor: Actor, home: NodeView, database: Database
) -> None:
    """A writer that came while another's transaction was open went into SQLite's busy
    handler, which sleeps up to 100 ms between tries and lets later writers in first: with 16
    uploads at once a 4 KiB PUT waited up to 3.2 s. Writers now queue before their BEGIN, in
    the order they came, and each begins once the one before it has committed."""
    begins = _sqlite_begins(database)
    inside, let_go = threading.Event(), threading.Event()

    def holder(session: Session) -> None:
        session.execute(sa.text("SELECT 1"))  # the transaction begins at its first statement
        inside.set()
        assert let_go.wait(10)

    first = threading.Thread(target=service.run_write, args=(holder,), name="first")
    first.start()
    assert inside.wait(10)
    later = [
        threading.Thread(
            target=service.create_folder, args=(actor, home, f"later-{n}"), name=f"later-{n}"
        )
        for n in range(3)
    ]
    for n, thread in enumerate(later, start=1):
        thread.start()
        deadline = time.monotonic() + 10
        while database.writers_waiting < n and time.monotonic() < deadline:
            time.sleep(0.005)
    try:
        assert database.writers_waiting == 3
        assert begins == ["first"], "a writer began while another's transaction was open"
    finally:
        let_go.set()
        for thread in [first, *later]:
            thread.join(10)
    assert begins == ["first", "later-0", "later-1", "later-2"]
    assert all(service.resolve(home.id, [f"later-{n}"]) for n in range(3))


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_a_sqlite_writer_that_waits_past_the_busy_timeout_is_unavailable(
    service: FileService, actor: Actor, home: NodeView, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(engine_module, "BUSY_TIMEOUT", 0.1)
    inside, let_go = threading.Event(), threading.Event()

    def holder(session: Session) -> None:
        session.execute(sa.text("SELECT 1"))  # the transaction begins at its first statement
        inside.set()
        assert let_go.wait(10)

    first = threading.Thread(target=service.run_write, args=(holder,))
    first.start()
    assert inside.wait(10)
    try:
        with pytest.raises(Unavailable) as refused:
            service.create_folder(actor, home, "waiting")
    finally:
        let_go.set()
        first.join(10)
    assert refused.value.retry_after > 0
    assert service.resolve(home.id, ["waiting"]) is None
    service.create_folder(actor, home, "waiting")


@pytest.mark.parametrize(("fsync", "synchronous"), [("true", 2), ("false", 1)])
def test_with_fsync_on_a_sqlite_commit_survives_a_power_cut(
    tmp_path: Path, fsync: str, synchronous: int
) -> None:
    """``storage.fsync`` makes an upload durable before its 201: the blob is flushed before
    the commit, and SQLite flushes the commit (synchronous=FULL, 2). It ran with NORMAL (1),
    where a power cut could lose the last commits answered 201."""
    settings = load_settings(None, env={"DAVSERVER_STORAGE_FSYNC": fsync}, data_dir=str(tmp_path))
    services = Services(settings)
    try:
        with services.db.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA synchronous").scalar_one() == synchronous
    finally:
        services.close()


def test_sqlite_cuts_its_wal_file_back_after_a_burst(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The WAL file kept the size of the largest burst it ever held (no journal_size_limit):
    after one big transaction and a checkpoint it is back under the limit."""
    limit = 256 * 1024
    monkeypatch.setattr(engine_module, "WAL_SIZE_LIMIT", limit)
    path = tmp_path / "wal.db"
    database = Database(f"sqlite:///{path}")
    try:
        with database.write() as session:
            session.execute(sa.text("CREATE TABLE burst (data BLOB)"))
            chunk = b"x" * 64 * 1024
            session.execute(sa.text("INSERT INTO burst VALUES (:d)"), [{"d": chunk}] * 64)
        wal = Path(f"{path}-wal")
        assert wal.stat().st_size > 4 * 1024 * 1024  # the burst went through the WAL
        with database.connect() as conn:
            conn.exec_driver_sql("PRAGMA wal_checkpoint(PASSIVE)")
        with database.write() as session:  # the next write starts the WAL over
            session.execute(sa.text("DELETE FROM burst"))
        with database.connect() as conn:
            conn.exec_driver_sql("PRAGMA wal_checkpoint(PASSIVE)")
        with database.write() as session:
            session.execute(sa.text("INSERT INTO burst VALUES (x'00')"))
        assert wal.stat().st_size <= limit
    finally:
        database.dispose()


def test_a_node_moved_since_the_request_found_it_is_not_found(
    service: FileService, actor: Actor, home: NodeView, database: Database
) -> None:
    """What a request found at its URL (``seen``) and another request moved meanwhile is no
    longer at that URL: MOVE, COPY and DELETE of it answer NotFound and change nothing."""
    seen = put(service, actor, home, "here.txt", b"x")
    target = service.create_folder(actor, home, "target")
    service.move(actor, seen.id, home, "there.txt", seen=seen)  # the request that won
    attempts = {
        "move": lambda: service.move(actor, seen.id, target, "here.txt", seen=seen),
        "copy": lambda: service.copy(actor, seen.id, target, "here.txt", seen=seen),
        "delete": lambda: service.delete(actor, seen.id, seen=seen),
    }
    for what, attempt in attempts.items():
        with pytest.raises(NotFound):
            attempt()
        assert service.children(target) == [], what
    moved = service.resolve(home.id, ["there.txt"])
    assert moved is not None and moved.id == seen.id
    service.delete(actor, seen.id, seen=moved)  # where it is now, it is found
    assert service.resolve(home.id, ["there.txt"]) is None


def test_a_node_moved_into_a_folder_since_trashed_is_not_found_where_it_was(
    service: FileService, actor: Actor, home: NodeView
) -> None:
    """The same when the other requests moved it into a folder and then trashed that folder:
    the URL names nothing any more (NotFound, 404). It used to be Conflict (409, "the
    folder was deleted"), about a folder the client never named."""
    seen = put(service, actor, home, "here.txt", b"x")
    target = service.create_folder(actor, home, "target")
    bin_ = service.create_folder(actor, home, "bin")
    service.move(actor, seen.id, bin_, "here.txt", seen=seen)
    service.delete(actor, bin_.id)
    attempts = {
        "move": lambda: service.move(actor, seen.id, target, "here.txt", seen=seen),
        "delete": lambda: service.delete(actor, seen.id, seen=seen),
    }
    for what, attempt in attempts.items():
        with pytest.raises(NotFound):
            attempt()
        assert service.children(target) == [], what


def test_move_and_copy_overwrite_what_is_at_the_destination_when_they_run(
    service: FileService, actor: Actor, home: NodeView, database: Database
) -> None:
    """The destination a request saw may have changed before its transaction: with
    ``overwrite`` what is there then is replaced, and nothing there is no error; without,
    something there is PreconditionFailed."""
    source = put(service, actor, home, "source.txt", b"source")
    other = put(service, actor, home, "other.txt", b"other")
    with pytest.raises(PreconditionFailed):
        service.move(actor, source.id, home, "other.txt", seen=source)
    with pytest.raises(PreconditionFailed):
        service.copy(actor, source.id, home, "other.txt", seen=source)
    onto = service.copy(actor, source.id, home, "other.txt", overwrite=True)
    assert onto is not None and onto.id == other.id
    assert versions(database, other.id) == [(1, 5), (2, 6)]  # a file copied onto a file
    assert service.copy(actor, source.id, home, "fresh.txt", overwrite=True) is None
    replaced = service.move(actor, source.id, home, "other.txt", overwrite=True, seen=source)
    assert replaced is not None and replaced.id == other.id
    fresh = service.resolve(home.id, ["fresh.txt"])
    assert fresh is not None
    assert service.move(actor, fresh.id, home, "free.txt", overwrite=True) is None
    names = sorted(view.name for view in service.children(home))
    assert names == ["free.txt", "other.txt"]


def test_dead_properties_follow_a_rename(
    service: FileService, actor: Actor, home: NodeView
) -> None:
    view = put(service, actor, home, "p.txt", b"p")
    service.set_dead_properties(actor, view.id, {"{urn:x}color": b"<x:color xmlns:x='urn:x'/>"})
    service.move(actor, view.id, home, "renamed.txt")
    moved = service.resolve(home.id, ["renamed.txt"])
    assert moved is not None
    assert "{urn:x}color" in service.dead_properties([moved.id])[moved.id]


def test_every_change_writes_a_logbook_row(
    service: FileService, actor: Actor, home: NodeView, database: Database
) -> None:
    folder = service.create_folder(actor, home, "logged")
    view = put(service, actor, folder, "f.txt", b"1")
    service.move(actor, view.id, home, "g.txt")
    service.delete(actor, view.id)
    put(service, actor, home, "g.txt", b"2")
    with database.read() as session:
        rows = session.execute(
            sa.select(LogEntry.op_type, LogEntry.version_id).order_by(LogEntry.id)
        ).all()
    assert [op for op, _ in rows] == [
        "folder:create",
        "file:create",  # a new file's first version is part of its creation row
        "node:move",
        "node:delete",
        "file:create",
    ]
    assert all(version is not None for op, version in rows if op == "file:create")


def test_logbook_failure_rolls_the_change_back(
    service: FileService,
    actor: Actor,
    home: NodeView,
    database: Database,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def broken(*_args: object, **_kwargs: object) -> None:
        raise RuntimeError("logbook unavailable")

    monkeypatch.setattr(uploads, "record_audit", broken)
    with pytest.raises(RuntimeError):
        put(service, actor, home, "never.txt", b"data")
    assert service.resolve(home.id, ["never.txt"]) is None
    assert count(database, FileVersion) == 0


def test_composed_and_decomposed_names_find_the_same_file(
    service: FileService, actor: Actor, home: NodeView
) -> None:
    composed = unicodedata.normalize("NFC", "café.txt")
    decomposed = unicodedata.normalize("NFD", "café.txt")
    assert composed != decomposed
    put(service, actor, home, composed, b"coffee")
    found = service.resolve(home.id, [decomposed])
    assert found is not None and found.name == composed
    with pytest.raises(AlreadyExists):
        service.create_folder(actor, home, decomposed)


@pytest.mark.parametrize(
    "name", ["", ".", "..", "a/b", "nul\0byte", "bell\x07", "new\nline", "x" * 256]
)
def test_unstorable_names_are_refused(name: str) -> None:
    with pytest.raises(InvalidName):
        check_name(name)


def test_deep_paths_resolve_beyond_the_join_limit(
    service: FileService, actor: Actor, home: NodeView
) -> None:
    parent = home
    names = [f"d{i}" for i in range(70)]
    for name in names:
        parent = service.create_folder(actor, parent, name)
    put(service, actor, parent, "leaf.txt", b"deep")
    leaf = service.resolve(home.id, [*names, "leaf.txt"])
    assert leaf is not None and leaf.size == 4


def test_dead_property_rows_go_with_their_node(
    service: FileService, actor: Actor, home: NodeView, database: Database
) -> None:
    view = put(service, actor, home, "q.txt", b"q")
    service.set_dead_properties(actor, view.id, {"{urn:x}a": b"<a xmlns='urn:x'/>"})
    service.set_dead_properties(actor, view.id, {"{urn:x}a": None})
    assert count(database, DeadProperty) == 0


@pytest.mark.parametrize("name", [".DS_Store", "._report.docx", "Thumbs.db"])
def test_desktop_metadata_files_keep_no_history(
    service: FileService, actor: Actor, home: NodeView, database: Database, name: str
) -> None:
    view = put(service, actor, home, name, b"first")
    put(service, actor, home, name, b"second")
    put(service, actor, home, name, b"third!")
    assert versions(database, view.id) == [(1, 6)]
    current = service.resolve(home.id, [name])
    assert current is not None and current.size == 6
    with service.open_content(current) as fh:
        assert fh.read() == b"third!"
    # The logbook tells a replaced version from a new one, and what the replace overwrote.
    rows = logged(database, view.id)
    assert [row.op_type for row in rows] == ["file:create"] + ["file:version:replace"] * 2
    assert [row.details["coalesced"] for row in rows[1:]] == ["metadata"] * 2
    assert [row.details["before"] for row in rows[1:]] == [
        {"size": 5, "sha256": hashlib.sha256(b"first").hexdigest()},
        {"size": 6, "sha256": hashlib.sha256(b"second").hexdigest()},
    ]


def test_a_new_modification_time_is_in_the_logbook(
    service: FileService, actor: Actor, home: NodeView, database: Database
) -> None:
    """A PROPPATCH of the modification time (rclone's "Updated modification time in
    destination", Explorer's Win32 times) changed the file and wrote no logbook row."""
    view = put(service, actor, home, "dated.txt", b"bytes")
    first = dt.datetime(2020, 1, 2, 3, 4, 5, tzinfo=dt.UTC)
    second = dt.datetime(2021, 1, 1, tzinfo=dt.UTC)
    service.set_mtime(actor, view.id, first)
    service.set_mtime(actor, view.id, second)
    rows = logged(database, view.id)
    assert [row.op_type for row in rows] == ["file:create", "node:proppatch", "node:proppatch"]
    assert [row.details for row in rows[1:]] == [
        {"mtime": {"before": None, "after": first.isoformat()}},
        {"mtime": {"before": first.isoformat(), "after": second.isoformat()}},
    ]
    assert rows[1].user_id == actor.user_id


def test_the_same_bytes_with_a_new_modification_time_are_in_the_logbook(
    service: FileService, actor: Actor, home: NodeView, database: Database
) -> None:
    """An upload of the bytes a file has, with the client's time (X-OC-Mtime: rclone sends it
    on every sync), makes no version but changes the file's time: no logbook row said so (a
    PROPPATCH of the time writes one). The same time again changes nothing and says nothing."""
    first = dt.datetime(2020, 1, 2, 3, 4, 5, tzinfo=dt.UTC)
    second = dt.datetime(2021, 1, 1, tzinfo=dt.UTC)
    for name, data in (("same.txt", b"bytes"), ("empty.txt", b"")):
        view, _ = service.commit_upload(actor, home, name, store(service, data), mtime=first)
        for mtime in (second, second):
            _, created = service.commit_upload(actor, home, name, store(service, data), mtime=mtime)
            assert not created
        rows = logged(database, view.id)
        assert [row.op_type for row in rows] == ["file:create", "node:proppatch"], name
        after = {"before": first.isoformat(), "after": second.isoformat()}
        assert rows[1].details == {"mtime": after}, name


def test_copy_of_a_big_subtree_reads_in_batches(
    service: FileService,
    actor: Actor,
    home: NodeView,
    database: Database,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # SQLite limits bound parameters per statement; copies read versions and properties in
    # batches. A batch of 2 makes this small tree take several.
    monkeypatch.setattr(subtree_copy, "_BATCH", 2)
    src = service.create_folder(actor, home, "batched")
    for i in range(5):
        view = put(service, actor, src, f"f{i}.txt", f"content {i}".encode())
        service.set_dead_properties(
            actor, view.id, {"{urn:x}n": f"<n xmlns='urn:x'>{i}</n>".encode()}
        )
    service.copy(actor, src.id, home, "batched-copy")
    for i in range(5):
        copied = service.resolve(home.id, ["batched-copy", f"f{i}.txt"])
        assert copied is not None and copied.size == len(f"content {i}")
        assert f">{i}<".encode() in service.dead_properties([copied.id])[copied.id]["{urn:x}n"]


def test_copy_memory_does_not_grow_with_the_rows_copied(
    service: FileService,
    actor: Actor,
    home: NodeView,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A COPY of a folder holds a batch of rows at a time, and the new id of each node
    copied; it held every row and every row's new values (3.5 kB a node: 360 MB to copy a
    folder of 100,000)."""
    monkeypatch.setattr(subtree_copy, "_BATCH", 100)
    seed = service.create_folder(actor, home, "seed")
    for i in range(20):
        put(service, actor, seed, f"f{i}.txt", f"content {i}".encode())
    small = service.create_folder(actor, home, "small")
    for i in range(10):
        service.copy(actor, seed.id, small, f"s{i}")
    big = service.create_folder(actor, home, "big")
    for i in range(4):
        service.copy(actor, small.id, big, f"b{i}")

    def peak(source: NodeView, name: str) -> int:
        tracemalloc.start()
        try:
            service.copy(actor, source.id, home, name)
            return tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()

    peak(seed, "warm-up")  # statements compiled and cached
    small_peak, big_peak = peak(small, "small-copy"), peak(big, "big-copy")
    extra_nodes = 4 * 211 + 1 - 211
    assert (big_peak - small_peak) / extra_nodes < 600
    copied = service.resolve(home.id, ["big-copy", "b3", "s9", "f19.txt"])
    assert copied is not None and copied.size == len("content 19")


def test_space_usage_counts_live_files_only_whatever_the_trash_holds(
    service: FileService, actor: Actor, home: NodeView, database: Database
) -> None:
    """Quota usage is summed per owner without walking the tree; it must equal the walk from
    the space's root after every kind of change, trash within trash included."""

    def check(expected: int) -> None:
        assert service.usage(actor.user_id)[0] == expected
        assert service.subtree_size(home.id) == expected

    a = service.create_folder(actor, home, "a")
    b = service.create_folder(actor, a, "b")
    put(service, actor, home, "top.txt", b"1" * 10)
    put(service, actor, a, "in-a.txt", b"2" * 100)
    put(service, actor, b, "in-b.txt", b"3" * 1000)
    early = put(service, actor, b, "trashed-early.txt", b"4" * 10000)
    check(11110)
    put(service, actor, b, "in-b.txt", b"5" * 3000)  # a new version replaces the old size
    check(13110)
    service.delete(actor, early.id)  # a file in the trash
    check(3110)
    service.delete(actor, b.id)  # a folder holding a trashed file and a live one
    check(110)
    service.delete(actor, a.id)  # and the folder above it
    check(10)
    # A group's space does not count, though its rows carry the member who made it.
    with database.write() as session:
        group = Group(name=f"g-{uuid.uuid4().hex[:6]}")
        session.add(group)
        session.flush()
        group_id = group.id
    root = service.group_root_id(group_id, actor.user_id)
    group_root = service.resolve(root, [])
    assert group_root is not None
    put(service, actor, group_root, "shared.txt", b"6" * 500)
    check(10)


def test_the_running_total_follows_every_change_to_a_space(
    service: FileService, actor: Actor, home: NodeView, database: Database
) -> None:
    """``users.home_bytes`` is kept by each change in its own transaction; after every kind of
    change it must equal the sum from the rows, and usage the walk of the tree."""
    trash = TrashService(database, service)
    history = VersionService(database, service)
    users = Base.metadata.tables["users"]

    def account_updated() -> object:
        with database.connect() as conn:
            return conn.scalar(sa.select(users.c.updated_at).where(users.c.id == actor.user_id))

    updated = account_updated()

    def check(expected: int) -> None:
        with database.connect() as conn:
            kept = conn.scalar(sa.select(users.c.home_bytes).where(users.c.id == actor.user_id))
            counted = usage.bytes_below(conn, home.id)
        assert kept == counted
        assert account_updated() == updated  # usage is not a change to the account
        assert service.usage(actor.user_id)[0] == service.subtree_size(home.id) == expected

    def entry(name: str) -> uuid.UUID:
        """The one item deleted under ``name``."""
        (found,) = (e for e in trash.listing(actor.user_id, None).entries if e.view.name == name)
        return found.view.id

    docs = service.create_folder(actor, home, "docs")
    a = put(service, actor, docs, "a.txt", b"a" * 100)  # a new file
    put(service, actor, home, "empty.txt", b"")  # an empty one: no version
    check(100)
    put(service, actor, docs, "a.txt", b"A" * 40)  # a smaller new version
    put(service, actor, home, ".DS_Store", b"d" * 7)
    put(service, actor, home, ".DS_Store", b"D" * 9)  # client metadata: replaced in place
    check(49)
    service.copy(actor, docs.id, home, "docs2")  # a folder copied with its file
    service.copy(actor, a.id, home, "a-copy.txt")  # a file copied to a new name
    check(129)
    empty = service.resolve(home.id, ["empty.txt"])
    a_copy = service.resolve(home.id, ["a-copy.txt"])
    assert empty is not None and a_copy is not None
    service.copy(actor, empty.id, home, "a-copy.txt", overwrite=True)  # emptied
    check(89)
    service.copy(actor, a.id, home, "empty.txt", overwrite=True)  # filled
    check(129)
    first = history.history(a.id)[0]
    current = service.resolve(docs.id, ["a.txt"])
    assert current is not None
    history.restore(actor, first, current)  # an old version made current: 40 -> 100 bytes
    history.copy_to(actor, first, home, "a-v1.txt")  # and copied out as a new file
    check(289)
    service.delete(actor, a.id)  # a file to the trash
    check(189)
    docs2 = service.resolve(home.id, ["docs2"])
    assert docs2 is not None
    service.delete(actor, docs2.id)  # a folder to the trash, and its file with it
    check(149)
    trash.restore(actor, a.id, docs, "a.txt", where="/docs/a.txt")  # a file back
    check(249)
    inside = service.resolve(docs2.id, ["a.txt"])
    assert inside is not None
    trash.restore(actor, inside.id, home, "rescued.txt", where="/rescued.txt")  # out of a folder
    check(289)
    service.delete(actor, a.id)
    trash.purge(actor, a.id)  # a trashed file purged
    trash.purge(actor, entry("docs2"))  # a trashed folder purged (now empty)
    check(189)
    folder = service.create_folder(actor, home, "old")
    put(service, actor, folder, "kept.txt", b"k" * 5)
    gone = put(service, actor, folder, "gone.txt", b"g" * 3)
    service.delete(actor, gone.id)
    service.delete(actor, folder.id)
    trash.purge(actor, folder.id)  # a folder holding a live file and a trashed one
    check(189)
    back = service.create_folder(actor, home, "back")
    put(service, actor, back, "one.txt", b"1" * 11)
    put(service, actor, service.create_folder(actor, back, "deeper"), "two.txt", b"2" * 22)
    service.delete(actor, back.id)
    check(189)
    trash.restore(actor, back.id, home, "back", where="/back")  # a folder back, all below it
    check(222)


def test_migration_0005_fills_the_running_total_from_the_rows(
    service: FileService, actor: Actor, home: NodeView, database: Database
) -> None:
    folder = service.create_folder(actor, home, "f")
    put(service, actor, folder, "live.txt", b"l" * 70)
    trashed = put(service, actor, home, "trashed.txt", b"t" * 500)
    put(service, actor, home, "top.txt", b"x" * 3)
    service.delete(actor, trashed.id)
    service.delete(actor, folder.id)  # and with it its file
    downgrade(database, "0004")
    upgrade(database)
    users = Base.metadata.tables["users"]
    with database.connect() as conn:
        kept = conn.scalar(sa.select(users.c.home_bytes).where(users.c.id == actor.user_id))
    assert kept == service.usage(actor.user_id)[0] == 3


def test_a_new_files_view_is_what_reading_it_back_gives(
    service: FileService, actor: Actor, home: NodeView, database: Database
) -> None:
    """A new file's view is built from what the upload wrote, not read back: it must equal
    the stored row, whatever the name, type or space."""
    with database.write() as session:
        group = Group(name=f"g-{uuid.uuid4().hex[:6]}")
        session.add(group)
        session.flush()
        group_id = group.id
    group_root = service.resolve(service.group_root_id(group_id, actor.user_id), [])
    assert group_root is not None
    cases = [
        (home, "plain.bin", None),
        (home, "Re\u0301sume\u0301 \u2603.txt", "text/plain"),  # decomposed, as macOS sends
        (group_root, "shared.png", "image/png"),
    ]
    for parent, name, content_type in cases:
        view, created = service.commit_upload(
            actor, parent, name, store(service, name.encode() * 3), content_type=content_type
        )
        assert created
        with database.connect() as conn:
            assert view == tree.get_node(conn, view.id), name


def test_an_uploads_view_of_an_existing_file_is_what_reading_it_back_gives(
    service: FileService, actor: Actor, home: NodeView, database: Database
) -> None:
    """The view an upload onto an existing file answers with is built from the row it locked
    and what it wrote, not read back: it must equal the stored row after each kind of upload."""
    uploads = [
        ("report.docx", b"first", "application/msword"),  # new (the view test above)
        ("report.docx", b"second", None),  # a new version keeps the type
        ("report.docx", b"third", "text/plain"),  # ... or takes the one sent
        ("report.docx", b"third", None),  # the same bytes: no new version
        (".DS_Store", b"one", None),
        (".DS_Store", b"two", "application/octet-stream"),  # client metadata: replaced
        ("empty.txt", b"", None),
        ("empty.txt", b"", None),  # an empty file again: nothing to do
        ("empty.txt", b"now full", "text/plain"),  # its first version
    ]
    for name, data, content_type in uploads:
        view, _ = service.commit_upload(
            actor, home, name, store(service, data), content_type=content_type
        )
        with database.connect() as conn:
            assert view == tree.get_node(conn, view.id), (name, data)


def _kept_and_counted(database: Database, actor: Actor, home: NodeView) -> tuple[int, int]:
    users = Base.metadata.tables["users"]
    with database.connect() as conn:
        kept = conn.scalar(sa.select(users.c.home_bytes).where(users.c.id == actor.user_id))
        assert kept is not None
        return kept, usage.bytes_below(conn, home.id)


def test_nothing_lands_in_a_folder_that_went_to_the_trash_after_it_was_looked_up(
    service: FileService, actor: Actor, home: NodeView, database: Database
) -> None:
    """A client looks a folder up, then (before its change commits) a folder above it goes to
    the trash. The change must not land in the trash: 409 for an upload and what would be made
    in it, 404 for a move, delete or restore of what was in it (gone from its URL with the
    folder), and the running total stays true (it had counted a file arriving there as live
    for ever)."""
    trash = TrashService(database, service)
    history = VersionService(database, service)
    top = service.create_folder(actor, home, "top")
    inner = service.create_folder(actor, top, "inner")  # looked up before the delete
    old = put(service, actor, inner, "old.txt", b"o" * 10)  # ... as is this file
    first = history.history(old.id)[0]
    put(service, actor, inner, "old.txt", b"O" * 20)
    outside = put(service, actor, home, "outside.txt", b"x" * 100)
    binned = put(service, actor, home, "binned.txt", b"b" * 1000)
    service.delete(actor, binned.id)
    service.delete(actor, top.id)
    assert _kept_and_counted(database, actor, home) == (100, 100)

    changes = {
        "a new file": lambda: put(service, actor, inner, "new.txt", b"n" * 7),
        "a new version": lambda: put(service, actor, inner, "old.txt", b"v" * 7),
        "a folder": lambda: service.create_folder(actor, inner, "sub"),
        "a copy in": lambda: service.copy(actor, outside.id, inner, "copy.txt"),
        "a move in": lambda: service.move(actor, outside.id, inner, "moved.txt"),
        "a move out": lambda: service.move(actor, old.id, home, "out.txt"),
        "a delete": lambda: service.delete(actor, old.id),
        "a version restored": lambda: history.restore(actor, first, old),
        "a version copied in": lambda: history.copy_to(actor, first, inner, "v1.txt"),
        "a restore into it": lambda: trash.restore(
            actor, binned.id, inner, "binned.txt", where="/top/inner/binned.txt"
        ),
    }
    gone = {"a move out", "a delete", "a version restored"}
    for what, change in changes.items():
        with pytest.raises(NotFound if what in gone else Conflict):
            change()
        assert _kept_and_counted(database, actor, home) == (100, 100), what
    assert service.resolve(home.id, ["outside.txt"]) is not None
    assert count(database, Node, Node.parent_id == inner.id) == 1  # old.txt alone


def test_an_upload_racing_the_trash_of_a_folder_above_is_refused(
    service: FileService,
    actor: Actor,
    home: NodeView,
    database: Database,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The trash has counted what it removes but not committed yet; an upload into the folder
    meanwhile must wait for it and then be refused, not add bytes the trash did not count."""
    top = service.create_folder(actor, home, "top")
    inner = service.create_folder(actor, top, "inner")
    put(service, actor, inner, "old.txt", b"o" * 10)
    counted, go = threading.Event(), threading.Event()
    original = node_rows.add_home_bytes

    def add_then_pause(session: object, *args: object) -> None:
        original(session, *args)  # type: ignore[arg-type]
        if threading.current_thread().name == "trash":
            counted.set()
            assert go.wait(30)

    monkeypatch.setattr(node_rows, "add_home_bytes", add_then_pause)
    outcome: dict[str, Any] = {}
    trashing = in_thread("trash", lambda: service.delete(actor, top.id), outcome)
    assert counted.wait(30)
    uploading = in_thread(
        "upload", lambda: put(service, actor, inner, "late.txt", b"l" * 5), outcome
    )
    if database.is_sqlite:
        uploading.join(0.3)  # waits for the trash's write transaction
    else:
        wait_for_a_lock_wait(database)  # on the folder the trash holds
    assert uploading.is_alive()
    go.set()
    trashing.join(30)
    uploading.join(30)
    assert outcome["trash"] is None
    assert isinstance(outcome["upload"], Conflict)
    assert _kept_and_counted(database, actor, home) == (0, 0)


def test_two_folders_moved_into_each_other_at_once_never_make_a_loop(
    service: FileService,
    actor: Actor,
    home: NodeView,
    database: Database,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """x into y and y into x, each having locked its own folder before looking at the other's
    place: one wins, the other is refused (409), and the tree stays a tree. On PostgreSQL the
    two deadlock; the loser used to fail with the server's deadlock error (a 500) and is now
    run again, which finds the winner's move. SQLite runs the two one after the other."""
    x = service.create_folder(actor, home, "x")
    y = service.create_folder(actor, home, "y")
    both_locked = threading.Barrier(2)
    waited: set[str] = set()  # a retry (after the deadlock) does not wait again
    original = tree.hold_chain

    def hold_after_both_locked(session: object, folder_id: uuid.UUID) -> list[uuid.UUID]:
        me = threading.current_thread().name
        if not database.is_sqlite and folder_id in (x.id, y.id) and me not in waited:
            waited.add(me)
            both_locked.wait(10)  # both moving folders are locked by now
        return original(session, folder_id)  # type: ignore[arg-type]

    monkeypatch.setattr(tree, "hold_chain", hold_after_both_locked)
    outcome: dict[str, BaseException | None] = {}

    def move(name: str, node: NodeView, into: NodeView) -> None:
        try:
            service.move(actor, node.id, into, node.name)
            outcome[name] = None
        except BaseException as exc:
            outcome[name] = exc

    threads = [
        threading.Thread(target=move, args=("x", x, y), name="move-x"),
        threading.Thread(target=move, args=("y", y, x), name="move-y"),
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    refused = [name for name, exc in outcome.items() if isinstance(exc, (Conflict, Forbidden))]
    moved = [name for name, exc in outcome.items() if exc is None]
    assert len(refused) == 1 and len(moved) == 1, outcome
    # The one moved is reachable from the home folder, inside the other.
    outer, inner = ("y", "x") if moved == ["x"] else ("x", "y")
    assert service.resolve(home.id, [outer, inner]) is not None


@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
def test_writers_do_not_wait_for_a_transaction_that_only_refers_to_their_rows(
    service: FileService, actor: Actor, home: NodeView, database: Database
) -> None:
    """A logbook row being written about a file (a batch of download rows, say) holds, until
    its transaction ends, PostgreSQL's key-share lock on the file and on the user it names.
    Writers locked the rows they change FOR UPDATE, which waits for that lock: with a third
    transaction in the ring, PostgreSQL aborted one of them as a deadlock, a 500 for an
    upload or lost download rows in the logbook. They now lock FOR NO KEY UPDATE (they never
    change a row's id), which does not wait for it."""
    folder = service.create_folder(actor, home, "docs")
    doc = put(service, actor, folder, "doc.txt", b"one")
    set_quota(database, actor.user_id, 1000)

    def fail_rather_than_wait(conn: sa.Connection) -> None:
        conn.exec_driver_sql("SET LOCAL lock_timeout = '2s'")

    event.listen(database.engine, "begin", fail_rather_than_wait)
    try:
        with Session(database.engine) as referring, referring.begin():
            referring.add(LogEntry(op_type=Op.FILE_DOWNLOAD, user_id=actor.user_id, node_id=doc.id))
            referring.flush()
            service.commit_upload(
                actor, folder, "doc.txt", store(service, b"two"), enforce_quota=True
            )
            service.move(actor, doc.id, folder, "renamed.txt")
            service.delete(actor, doc.id)
    finally:
        event.remove(database.engine, "begin", fail_rather_than_wait)
    assert versions(database, doc.id) == [(1, 3), (2, 3)]
    assert service.resolve(home.id, ["docs", "renamed.txt"]) is None


@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
def test_a_folder_busy_with_uploads_can_still_be_moved(
    service: FileService, actor: Actor, home: NodeView, database: Database
) -> None:
    """Each upload holds the folders above it (FOR SHARE) until it commits, and a MOVE or
    DELETE of one of them waits for those holds to end. PostgreSQL let every new upload take
    its share beside the ones held, whatever waited: with a few clients uploading into a
    folder, their holds overlapped without a gap and a COPY of it waited 58 s, until they
    stopped. Now an upload that comes after the mover waits for it."""
    folder = service.create_folder(actor, home, "busy")
    first_open, second_in, moved = (threading.Event() for _ in range(3))
    release_first, release_second = threading.Event(), threading.Event()
    outcome: dict[str, BaseException | None] = {}

    def hold(name: str, opened: threading.Event, release: threading.Event) -> None:
        try:
            with database.write() as session:
                tree.hold_chain(session, folder.id)  # as an upload into the folder does
                opened.set()
                assert release.wait(30)
            outcome[name] = None
        except BaseException as exc:
            outcome[name] = exc
        finally:
            opened.set()

    def move() -> None:
        try:
            service.move(actor, folder.id, home, "renamed")
            outcome["move"] = None
        except BaseException as exc:
            outcome["move"] = exc
        moved.set()

    threads = [threading.Thread(target=hold, args=("first", first_open, release_first))]
    threads[0].start()
    assert first_open.wait(30)
    threads.append(threading.Thread(target=move))
    threads[1].start()
    wait_for_a_lock_wait(database)  # the move waits for the first upload
    threads.append(threading.Thread(target=hold, args=("second", second_in, release_second)))
    threads[2].start()
    # The second upload either got its hold at once (the mover then waits for it too) or
    # queues behind the mover: two transactions wait then.
    query = sa.text(
        "SELECT count(*) FROM pg_stat_activity"
        " WHERE datname = current_database() AND wait_event_type = 'Lock'"
    )
    while not second_in.is_set():
        with database.connect() as conn:
            if conn.scalar(query) == 2:
                break
        threading.Event().wait(0.01)
    release_first.set()  # the upload that was there first commits; the second is still open
    assert moved.wait(10), "the move waited for an upload that came after it"
    release_second.set()
    for thread in threads:
        thread.join(30)
    assert outcome == {"first": None, "move": None, "second": None}
    assert service.resolve(home.id, ["renamed"]) is not None


# A long-running server's plans: psycopg prepares a statement at its 5th run, PostgreSQL may
# then plan it once for all parameters, and keeps that plan while the table grows.
_GENERIC_PLANS = sa.text("SET LOCAL plan_cache_mode = force_generic_plan")


def _grow(database: Database, outer: NodeView) -> None:
    """49 more folders beside the one in ``outer``, and 100 files in each of the 50: the nodes
    table grows from a few rows to 5,000. Each of those files gets a version and a dead
    property, so file_versions and dead_properties grow as much."""
    columns = "id, parent_id, name, name_key, kind, owner_id, space, size, created_at, modified_at"
    values = {"outer": outer.id, "owner": outer.owner_id}
    with database.write() as session:
        session.execute(
            sa.text(
                f"INSERT INTO nodes ({columns}) SELECT gen_random_uuid(), :outer, 'd' || i,"
                " 'd' || i, 'folder', :owner, 'home', 0, now(), now()"
                " FROM generate_series(1, 49) AS i"
            ),
            values,
        )
        session.execute(
            sa.text(
                f"INSERT INTO nodes ({columns}) SELECT gen_random_uuid(), folder.id, 'f' || i,"
                " 'f' || i, 'file', :owner, 'home', 0, now(), now()"
                " FROM nodes AS folder, generate_series(1, 100) AS i"
                " WHERE folder.parent_id = :outer"
            ),
            values,
        )
        session.execute(
            sa.text(
                "INSERT INTO blobs (id, sha256, md5, sha1, size_bytes, storage_key, created_at)"
                " VALUES (gen_random_uuid(), repeat('0', 64), repeat('0', 32), repeat('0', 40),"
                " 0, 'grown', now())"
            )
        )
        grown_files = "FROM nodes AS file WHERE file.parent_id IN (SELECT id FROM nodes"
        grown_files += " WHERE parent_id = :outer) AND file.name ~ '^f[0-9]+$'"
        session.execute(
            sa.text(
                "INSERT INTO file_versions (id, node_id, version_no, blob_id, size, uploaded_at)"
                " SELECT gen_random_uuid(), file.id, 1,"
                f" (SELECT id FROM blobs WHERE storage_key = 'grown'), 0, now() {grown_files}"
            ),
            values,
        )
        session.execute(
            sa.text(
                "INSERT INTO dead_properties (id, node_id, name, value)"
                f" SELECT gen_random_uuid(), file.id, '{{x:}}p', '<v/>' {grown_files}"
            ),
            values,
        )


@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
def test_holding_the_folders_above_reads_only_those_rows(
    database: Database, files: FileService, actor: Actor, home: NodeView
) -> None:
    """Every request finds its path, and every upload, MKCOL, MOVE and DELETE below a space's
    root holds the folders above its target and looks up the name it writes to. On PostgreSQL
    each must be a lookup by key: joined with the recursive walk up, the planner scanned the
    whole nodes table instead (until it held some 30,000 rows), and names were looked up in
    every folder, so each upload got slower with every file stored."""
    outer = files.create_folder(actor, home, "outer")
    inner = files.create_folder(actor, outer, "inner")

    def hold_the_chain(session: Session) -> None:
        path = tree.resolve_chain(session, home.id, ["outer", "inner", "f7"])
        assert [view.id if view else None for view in path[:2]] == [outer.id, inner.id]
        found = tree.hold_chain_for_child(session, inner.id, "f7")
        assert found is None or (found.name == "f7" and found.parent_id == inner.id)
        assert path[2] == found
        assert tree.hold_chain(session, inner.id) == [inner.id, outer.id, home.id]
        assert not tree.in_trash(session, inner.id)

    with database.write() as session:
        session.execute(_GENERIC_PLANS)
        for _ in range(8):
            hold_the_chain(session)
    _grow(database, outer)
    with database.write() as session:
        session.execute(_GENERIC_PLANS)
        before = pg_reads(session.connection(), "nodes")
        for _ in range(8):
            hold_the_chain(session)
        after = pg_reads(session.connection(), "nodes")
        assert tree.hold_chain_for_child(session, inner.id, "f7") is not None
    assert after.scanned == before.scanned
    assert after.entries - before.entries <= 8 * 4 * 10  # a few keys per statement, not the table


# What the test below runs: each looks up a few nodes by key...
_LOOKUPS = (
    "new file",
    "new version",
    "folder",
    "move",
    "copy",
    "properties",
    "mtime",
    "folder copy",
    "folder move",
    "delete",
    "folder delete",
    "purge",
    "place in its space",
    "rights",
    "package pins",
    "by ids",
)
# ... or reads the members of one folder (or what is below it), and only those.
_FOLDER_READS = ("listing", "folder sizes", "children properties", "subtree size")
# The tables _grow fills.
_GROWN = ("nodes", "file_versions", "dead_properties")


@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
def test_each_request_reads_only_the_rows_it_needs(
    database: Database,
    files: FileService,
    actor: Actor,
    home: NodeView,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Uploads, MKCOL, MOVE, COPY, PROPPATCH, DELETE, listings, and the walks up and down the
    tree of the trash, locks, sharing and packages, on PostgreSQL, planned while the nodes
    table was small (as on a new server) and run again once it holds 5,000 rows: each
    transaction must find its nodes by key. A new file's parent, the file whose size its
    owner's usage follows, and the folder whose size a PROPFIND reports were looked up by id
    beside ``deleted_at IS NULL``; PostgreSQL planned that as a scan of the live-name index
    (partial on that condition), so every upload read every live name. Nodes asked for by a
    list of ids, and the walks down a folder (the bytes a DELETE takes off its owner's usage,
    the rows a COPY copies), were scans of the table or of that index.

    Not here: searches of many rows, such as the trash listing (test_trash_queries). A plan
    made for a small table is the right one for it then; PostgreSQL plans it again after
    ANALYZE, or on a new connection (database.reconnect_after_seconds)."""
    outer = files.create_folder(actor, home, "outer")
    inner = files.create_folder(actor, outer, "inner")
    trash = TrashService(database, files)
    namespace = NamespaceService(database, files)
    reads: dict[str, list[tuple[int, int]]] = {}
    doing = [""]
    write = database.write

    @contextmanager
    def planned_generically() -> Iterator[Session]:
        with write() as session:
            session.execute(_GENERIC_PLANS)
            conn = session.connection()
            before = {table: pg_reads(conn, table) for table in _GROWN}
            yield session
            after = {table: pg_reads(conn, table) for table in _GROWN}
            scanned = sum(after[t].scanned - before[t].scanned for t in _GROWN)
            entries = after["nodes"].entries - before["nodes"].entries
            reads.setdefault(doing[0], []).append((scanned, entries))

    @contextmanager
    def connection_planned_generically() -> Iterator[sa.Connection]:
        with planned_generically() as session:
            yield session.connection()

    def get_nodes(ids: list[uuid.UUID]) -> None:
        with database.connect() as conn:
            assert len(tree.get_nodes(conn, ids)) == len(ids)

    def pins(folder: NodeView) -> None:
        with database.read() as session:
            assert package_rows.pins_below(session, folder, "p")

    def run(change: str, do: Callable[..., Any], *args: Any) -> Any:
        doing[0] = change
        return do(*args)

    def each_request(tag: str) -> None:
        for i in range(8):
            name = f"{tag}-{i}"
            new = run("new file", put, files, actor, inner, f"new-{name}", name.encode())
            run("new version", put, files, actor, inner, "same", name.encode())
            folder = run("folder", files.create_folder, actor, inner, f"dir-{name}")
            run("move", files.move, actor, new.id, folder, "moved")
            run("copy", files.copy, actor, new.id, inner, f"copy-{name}")
            run("properties", files.set_dead_properties, actor, folder.id, {"{x:}p": b"<v/>"})
            run("mtime", files.set_mtime, actor, folder.id, dt.datetime(2020, 1, 1, tzinfo=dt.UTC))
            run("folder copy", files.copy, actor, folder.id, inner, f"copied-{name}")
            run("folder move", files.move, actor, folder.id, outer, f"moved-{name}")
            copied = files.resolve(inner.id, [f"copied-{name}"])
            assert copied is not None
            run("place in its space", namespace.space_path, copied.id)
            run("rights", namespace.rights_on, namespace.context(actor), [copied.id])
            run("package pins", pins, copied)
            run("listing", files.children, inner)
            run("folder sizes", files.child_folder_sizes, inner.id)
            run("children properties", files.children_dead_properties, inner.id)
            run("by ids", get_nodes, [inner.id, copied.id])
            run("subtree size", files.subtree_size, inner.id)
            run("delete", files.delete, actor, new.id)
            run("folder delete", files.delete, actor, folder.id)
            run("purge", trash.purge, actor, folder.id)

    for entry_point, patched in (
        ("write", planned_generically),
        ("read", planned_generically),
        ("connect", connection_planned_generically),
    ):
        monkeypatch.setattr(database, entry_point, patched)
    each_request("small")
    with monkeypatch.context() as unpatched:
        unpatched.setattr(database, "write", write)
        _grow(database, outer)
    reads.clear()
    each_request("grown")
    assert sorted(reads) == sorted(_LOOKUPS + _FOLDER_READS)
    scanned = {done: max(seq for seq, _ in found) for done, found in reads.items()}
    assert scanned == dict.fromkeys(reads, 0)
    entries = {done: max(n for _, n in found) for done, found in reads.items()}
    assert max(entries[done] for done in _LOOKUPS) <= 60, entries  # a few keys per statement
    members = len(files.children(inner))
    assert max(entries[done] for done in _FOLDER_READS) <= 3 * members, (members, entries)


def test_a_copy_onto_a_name_a_put_takes_meanwhile_replaces_that_file(
    service: FileService,
    actor: Actor,
    home: NodeView,
    database: Database,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A PUT creates a file without waiting for a COPY's hold on the name: on PostgreSQL one
    committed between the COPY finding the name free and writing its copy, and the COPY, with
    Overwrite: T, was refused (412, "exists"). It runs again, and replaces the new file."""
    if database.engine.dialect.name != "postgresql":
        pytest.skip("SQLite's writers take turns: a PUT cannot land inside a COPY")
    source = put(service, actor, home, "source.txt", b"the copy")
    real = files_module.occupant_at
    looks: list[str] = []

    def after_a_put_lands(session: Session, folder: NodeView, name: str, **kw: Any) -> Any:
        looks.append(name)
        if len(looks) == 1:  # the name is free; then another client's PUT commits
            outcome: dict[str, Any] = {}
            landed = in_thread("put", lambda: put(service, actor, home, name, b"put"), outcome)
            landed.join(10)
            assert outcome == {"put": None}
            return None
        return real(session, folder, name, **kw)

    monkeypatch.setattr(files_module, "occupant_at", after_a_put_lands)
    replaced = service.copy(actor, source.id, home, "dest.txt", overwrite=True)
    assert replaced is not None and replaced.name == "dest.txt"
    assert versions(database, replaced.id) == [(1, 3), (2, 8)]  # the PUT's, then the copy's
    assert looks == ["dest.txt", "dest.txt"]
