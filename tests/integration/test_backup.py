"""``davserver backup``: a running server's database and blobs copied into a folder that a
server then runs from, with every file, version and trashed item as it was."""

from __future__ import annotations

import datetime as dt
import errno
import fcntl
import hashlib
import json
import os
import shutil
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
import sqlalchemy as sa

from davserver.blobstore import FileSystemBlobStore
from davserver.cli import main
from davserver.models import Blob, LogEntry
from davserver.services import backup
from davserver.services.fsck import FsckService
from davserver.services.maintenance import MaintenanceService
from davserver.services.store_owner import StoreOfAnotherDatabase
from tests.blobs import loose_blob
from tests.conftest import ENGINES
from tests.dbs import fresh_database_url
from tests.servers import InprocServer, run_inproc_server
from tests.webdav import DS, User


@pytest.fixture(params=ENGINES)
def srv(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[InprocServer]:
    """A server of this test's own, so that its backup holds only what the test put there."""
    with run_inproc_server(request.param, tmp_path / "live") as server:
        yield server


@pytest.fixture
def run(
    srv: InprocServer, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> Any:
    def davserver(*argv: str, data_dir: Path | None = None) -> tuple[int, Any, str]:
        """``davserver ARGV --json`` on the server's settings (or on the data folder
        ``data_dir``): exit status, parsed report, stderr."""
        url = srv.db_url if data_dir is None else f"sqlite:///{data_dir / backup.DATABASE_FILE}"
        monkeypatch.setenv("DAVSERVER_DATABASE_URL", url)
        monkeypatch.setenv("DAVSERVER_DATA_DIR", str(data_dir or srv.data_dir))
        capsys.readouterr()
        status = main(["--config", os.devnull, *argv, "--json"])
        out, err = capsys.readouterr()
        return status, json.loads(out) if out.strip() else None, err

    return davserver


def blob_count(database: Path) -> int:
    with closing(sqlite3.connect(database)) as conn:
        return int(conn.execute("SELECT count(*) FROM blobs").fetchone()[0])


def serve_backup(folder: Path, srv: InprocServer) -> Any:
    """A server on the backup; ``folder`` is ``<parent>/data``, a data folder."""
    assert folder.name == "data"
    url = f"sqlite:///{folder / backup.DATABASE_FILE}"
    return run_inproc_server("sqlite", folder.parent, existing=(url, srv.password))


def test_a_backup_is_a_data_folder_a_server_runs_from(
    srv: InprocServer, run: Any, tmp_path: Path
) -> None:
    user = User(srv, srv.user, srv.password)
    assert user("MKCOL", "/files/docs/").status == 201
    assert user.put("/files/docs/report.txt", b"draft one") == 201
    assert user.put("/files/docs/report.txt", b"draft two, final") == 204
    assert user.put("/files/docs/empty.txt", b"") == 201
    big = os.urandom(3 * 1024 * 1024 + 7)
    assert user.put("/files/big.bin", big) == 201
    assert user.put("/files/deleted.txt", b"in the trash") == 201
    assert user("DELETE", "/files/deleted.txt").status == 204

    folder = tmp_path / "backup" / "data"
    status, report, _ = run("backup", str(folder))
    assert status == 0 and report["ok"], report
    assert report["blobs"] == 4 == report["blobs_copied"]  # two drafts, big.bin, the trashed
    assert report["bytes_copied"] == len(big) + 9 + 16 + 12 and report["blobs_kept"] == 0
    assert sorted(p.name for p in folder.iterdir()) == [backup.BLOB_FOLDER, backup.DATABASE_FILE]
    assert list((folder / backup.BLOB_FOLDER / "tmp").iterdir()) == []

    with serve_backup(folder, srv) as restored:
        again = User(restored, srv.user, srv.password)
        assert again.get("/files/docs/report.txt") == b"draft two, final"
        assert again.get("/files/docs/report.txt?version=1") == b"draft one"
        assert again.get("/files/docs/empty.txt") == b""
        assert again.get("/files/big.bin") == big
        trashed = again.propfind("/trash/")
        assert [p[DS + "original-path"] for p in trashed.values() if DS + "original-path" in p] == [
            "/files/deleted.txt"
        ]
    # The backup is logged by the server it was taken from.
    assert "maintenance:backup" in _ops(srv)


def test_gc_on_a_backup_with_the_live_stores_settings_is_refused(
    srv: InprocServer, run: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A backup shared its database's identity, so gc run on it with the live store's
    settings (``storage.blob_dir`` set, an S3 bucket) took every file uploaded since the
    backup for an orphan and deleted it. The backup has an identity of its own, the same for
    each backup into its folder: gc refuses the live store, and a server run on the backup
    serves its own blobs, after the next backup into the folder too."""
    user = User(srv, srv.user, srv.password)
    assert user.put("/files/before.txt", b"backed up") == 201
    folder = tmp_path / "backup" / "data"
    assert run("backup", str(folder))[0] == 0
    assert user.put("/files/after.txt", b"uploaded after the backup") == 201

    monkeypatch.setenv("DAVSERVER_STORAGE_BLOB_DIR", str(srv.data_dir / "blobs"))
    status, _, err = run("gc", "--grace", "0", data_dir=folder)
    assert status == 2 and "belongs to another database" in err, err
    assert user.get("/files/after.txt") == b"uploaded after the backup"
    monkeypatch.delenv("DAVSERVER_STORAGE_BLOB_DIR")

    for _ in range(2):  # a server on the backup claims its blobs; the next backup keeps them
        with serve_backup(folder, srv) as restored:
            assert User(restored, srv.user, srv.password).get("/files/before.txt") == b"backed up"
        assert run("backup", str(folder))[0] == 0


def test_a_restored_backup_refuses_gc_from_the_backups_other_copies(
    srv: InprocServer, run: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A restore (README: ``cp -a`` of the backup folder) left the live database with the
    backup's identity, which every other copy of the backup (the folder itself, an rsync of it)
    shares: gc run on one of them with the restored store's settings took every file uploaded
    since the restore for an orphan and deleted it. The first server run on the restored copy
    gives it an identity of its own, and takes its blobs along."""
    user = User(srv, srv.user, srv.password)
    assert user.put("/files/before.txt", b"backed up") == 201
    folder = tmp_path / "backup" / "data"
    assert run("backup", str(folder))[0] == 0
    restored, spare = tmp_path / "restored" / "data", tmp_path / "spare" / "data"
    shutil.copytree(folder, restored)
    shutil.copytree(folder, spare)
    with serve_backup(restored, srv) as server:
        again = User(server, srv.user, srv.password)
        assert again.put("/files/after.txt", b"uploaded after the restore") == 201

    monkeypatch.setenv("DAVSERVER_STORAGE_BLOB_DIR", str(restored / backup.BLOB_FOLDER))
    for other in (spare, folder):
        status, _, err = run("gc", "--grace", "0", data_dir=other)
        assert status == 2 and "belongs to another database" in err, err
    monkeypatch.delenv("DAVSERVER_STORAGE_BLOB_DIR")
    status, report, _ = run("fsck", data_dir=restored)
    assert status == 0 and report["ok"], report
    for data in (restored, spare):  # the spare copy is a restore of its own
        with serve_backup(data, srv) as server:
            again = User(server, srv.user, srv.password)
            assert again.get("/files/before.txt") == b"backed up"
    with serve_backup(restored, srv) as server:
        again = User(server, srv.user, srv.password)
        assert again.get("/files/after.txt") == b"uploaded after the restore"


def test_a_restore_refused_its_store_is_still_a_backup_when_started_right(
    srv: InprocServer, run: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A first start on a restored copy with the wrong store's settings (the live one's) is
    refused, and changes nothing: it gave the database its own identity before it looked at
    the store, so the start with the right settings found the backup's store (marked by a gc
    run on the backup) another database's and was refused too."""
    user = User(srv, srv.user, srv.password)
    assert user.put("/files/kept.txt", b"backed up") == 201
    folder = tmp_path / "backup" / "data"
    assert run("backup", str(folder))[0] == 0
    assert run("gc", "--grace", "0", data_dir=folder)[0] == 0  # marks the backup's blobs
    restored = tmp_path / "restored" / "data"
    shutil.copytree(folder, restored)
    live_blobs = str(srv.data_dir / "blobs")
    wrong = run_inproc_server(
        "sqlite",
        restored.parent,
        existing=(f"sqlite:///{restored / backup.DATABASE_FILE}", srv.password),
        storage__blob_dir=live_blobs,
    )
    with pytest.raises(StoreOfAnotherDatabase), wrong:
        pass
    with serve_backup(restored, srv) as server:
        assert User(server, srv.user, srv.password).get("/files/kept.txt") == b"backed up"
    monkeypatch.setenv("DAVSERVER_STORAGE_BLOB_DIR", str(restored / backup.BLOB_FOLDER))
    status, _, err = run("gc", "--grace", "0", data_dir=folder)  # the backup: refused now
    assert status == 2 and "belongs to another database" in err, err


@pytest.mark.postgres
@pytest.mark.parametrize("take", [False, True], ids=["claim-on-serve", "take-blob-store"])
def test_a_backup_restores_into_a_new_postgresql_database(
    srv: InprocServer, run: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, take: bool
) -> None:
    """README's restore for PostgreSQL: ``db copy`` from the backup's database into an empty
    one (with ``--take-blob-store``, or the first server claims the store), the blobs where
    ``storage.blob_dir`` says. The copy is no backup's database: a server on it keeps the
    identity ``db copy`` gave it, which the store names."""
    user = User(srv, srv.user, srv.password)
    assert user.put("/files/kept.txt", b"first") == 201
    assert user.put("/files/kept.txt", b"second") == 204
    folder = tmp_path / "backup" / "data"
    assert run("backup", str(folder))[0] == 0

    with fresh_database_url("postgresql", str(tmp_path)) as target:
        blobs = str(folder / backup.BLOB_FOLDER)
        flags = ("--take-blob-store",) if take else ()
        monkeypatch.setenv("DAVSERVER_STORAGE_BLOB_DIR", blobs)
        status, copied, _ = run("db", "copy", "--to", target, "--quiet", *flags, data_dir=folder)
        monkeypatch.delenv("DAVSERVER_STORAGE_BLOB_DIR")
        assert status == 0 and copied["rows"]["file_versions"] == 2, copied
        existing = (target, srv.password)
        with run_inproc_server(
            "postgresql", tmp_path / "restored", existing=existing, storage__blob_dir=blobs
        ) as restored:
            again = User(restored, srv.user, srv.password)
            assert again.get("/files/kept.txt") == b"second"
            assert again.get("/files/kept.txt?version=1") == b"first"


def test_the_next_backup_copies_only_new_blobs_and_takes_a_new_snapshot(
    srv: InprocServer, run: Any, tmp_path: Path
) -> None:
    user = User(srv, srv.user, srv.password)
    for i in range(5):
        assert user.put(f"/files/f{i}.txt", f"file {i}".encode()) == 201
    folder = tmp_path / "backup" / "data"
    assert run("backup", str(folder))[1]["blobs_copied"] == 5

    assert user.put("/files/later.txt", b"written after the first backup") == 201
    assert user("DELETE", "/files/f0.txt").status == 204
    status, report, _ = run("backup", str(folder))
    assert status == 0 and (report["blobs_copied"], report["blobs_kept"]) == (1, 5), report
    with serve_backup(folder, srv) as restored:
        again = User(restored, srv.user, srv.password)
        assert again.get("/files/later.txt") == b"written after the first backup"
        assert again("GET", "/files/f0.txt").status == 404
        assert again.get("/files/f1.txt") == b"file 1"


def test_a_backup_taken_while_uploads_go_on_is_consistent(
    srv: InprocServer, run: Any, tmp_path: Path
) -> None:
    """Every version the backup's database holds has its bytes in the backup, whatever
    committed while it ran."""
    user = User(srv, srv.user, srv.password)
    for i in range(20):
        assert user.put(f"/files/before-{i}.bin", os.urandom(2000)) == 201
    stop = threading.Event()
    written: list[int] = []

    def upload() -> None:
        while not stop.is_set():
            n = len(written)
            assert user.put(f"/files/during-{n}.bin", os.urandom(3000)) == 201
            written.append(n)

    uploader = threading.Thread(target=upload)
    uploader.start()
    try:
        folder = tmp_path / "backup" / "data"
        status, report, _ = run("backup", str(folder))
    finally:
        stop.set()
        uploader.join(60)
    assert status == 0 and report["ok"], report
    assert written, "no upload ran during the backup"
    assert report["blobs"] == blob_count(folder / backup.DATABASE_FILE) >= 20

    status, fsck, _ = run("fsck", "--quiet", data_dir=folder)
    assert status == 0 and fsck["ok"] and fsck["blobs_checked"] == report["blobs"], fsck


def test_a_missing_or_corrupt_blob_is_reported_and_left_out(
    srv: InprocServer, run: Any, tmp_path: Path
) -> None:
    user = User(srv, srv.user, srv.password)
    assert user.put("/files/rotten.txt", b"these bytes will rot") == 201
    assert user.put("/files/lost.txt", b"these bytes will go") == 201
    assert user.put("/files/fine.txt", b"these bytes stay") == 201
    store = srv.application.services.blobs
    keys = _keys_by_content(srv, [b"these bytes will rot", b"these bytes will go"])
    with open(store.path_of(keys[0]), "r+b") as fh:  # type: ignore[attr-defined]
        fh.write(b"T")
    store.path_of(keys[1]).unlink()  # type: ignore[attr-defined]

    folder = tmp_path / "backup" / "data"
    status, report, _ = run("backup", str(folder))
    assert status == 1 and not report["ok"]
    assert sorted((p["kind"], p["storage_key"]) for p in report["problems"]) == sorted(
        [("corrupt", keys[0]), ("missing", keys[1])]
    )
    assert report["blobs_copied"] == 1 and report["problem_count"] == 2
    assert not (folder / backup.BLOB_FOLDER / keys[0]).exists()
    assert (folder / backup.DATABASE_FILE).exists()  # the rest is backed up
    with serve_backup(folder, srv) as restored:
        assert User(restored, srv.user, srv.password).get("/files/fine.txt") == b"these bytes stay"


def test_an_unused_row_whose_file_is_gone_is_no_problem_of_the_backup(
    srv: InprocServer, run: Any, tmp_path: Path
) -> None:
    """A blob row nothing uses, whose file a gc moved away before it stopped (or while the
    backup ran), failed the backup as a missing blob, though nothing anyone needs is lost
    and the next gc removes the row; fsck of the backup called it missing too."""
    user = User(srv, srv.user, srv.password)
    assert user.put("/files/kept.txt", b"kept bytes") == 201
    store = srv.application.services.blobs
    loose_blob(srv.application.db, store, b"garbage bytes")
    (key,) = _keys_by_content(srv, [b"garbage bytes"])
    store.path_of(key).unlink()  # type: ignore[attr-defined]

    folder = tmp_path / "backup" / "data"
    status, report, _ = run("backup", str(folder))
    assert status == 0 and report["ok"], report
    assert report["garbage_without_file"] == 1 and report["problems"] == []
    with serve_backup(folder, srv) as restored:
        assert User(restored, srv.user, srv.password).get("/files/kept.txt") == b"kept bytes"
        app = restored.application
        checked = FsckService(app.db, app.blobs).check()  # type: ignore[arg-type]
    assert checked.ok and checked.garbage_without_file == 1


def test_a_folder_in_use_or_the_servers_own_is_refused(
    srv: InprocServer, run: Any, tmp_path: Path
) -> None:
    status, _, err = run("backup", str(srv.data_dir))
    assert status == 2 and "the server's own data" in err
    status, _, err = run("backup", str(srv.data_dir.parent))  # blobs are inside it
    assert status == 2 and "the server's own data" in err
    status, _, err = run("backup", str(srv.data_dir / "blobs" / "backup"))
    assert status == 2 and "the server's own data" in err

    folder = tmp_path / "served" / "data"
    User(srv, srv.user, srv.password).put("/files/a.txt", b"a")
    assert run("backup", str(folder))[0] == 0
    before = (folder / backup.DATABASE_FILE).read_bytes()
    (folder / (backup.DATABASE_FILE + "-wal")).write_bytes(b"")  # a server runs from it
    status, _, err = run("backup", str(folder))
    assert status == 1 and "is open" in err
    assert (folder / backup.DATABASE_FILE).read_bytes() == before


def test_a_second_backup_into_a_folder_waits_for_none_and_is_refused(
    srv: InprocServer, run: Any, tmp_path: Path
) -> None:
    """Two backups into one folder at once each deleted the other's partial snapshot, and one
    failed with a 'No such file' of a file it had not named."""
    folder = tmp_path / "shared-target"
    assert run("backup", str(folder))[0] == 0
    before = (folder / backup.DATABASE_FILE).read_bytes()
    held = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(held, fcntl.LOCK_EX)  # as the backup running meanwhile holds it
        status, _, err = run("backup", str(folder))
    finally:
        os.close(held)
    assert status == 1 and "another backup is writing into" in err, err
    assert (folder / backup.DATABASE_FILE).read_bytes() == before
    assert run("backup", str(folder))[0] == 0  # and once it has ended, the next one runs


def test_a_backup_cut_short_leaves_the_previous_one_whole(
    srv: InprocServer, run: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    user, folder, previous = backed_up_once(srv, run, tmp_path)
    assert user.put("/files/second.txt", b"never backed up") == 201

    def interrupted(*_args: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(backup._BlobCopier, "copy", interrupted)
    assert run("backup", str(folder))[0] == 130  # Ctrl-C while the blobs are copied
    assert (folder / backup.DATABASE_FILE).read_bytes() == previous
    assert sorted(p.name for p in folder.iterdir()) == [backup.BLOB_FOLDER, backup.DATABASE_FILE]


def backed_up_once(srv: InprocServer, run: Any, tmp_path: Path) -> tuple[User, Path, bytes]:
    """One file, backed up: the user, the backup folder and its database file's bytes."""
    user = User(srv, srv.user, srv.password)
    assert user.put("/files/first.txt", b"in the first backup") == 201
    folder = tmp_path / "backup" / "data"
    assert run("backup", str(folder))[0] == 0
    return user, folder, (folder / backup.DATABASE_FILE).read_bytes()


def _keys_by_content(srv: InprocServer, contents: list[bytes]) -> list[str]:
    shas = [hashlib.sha256(c).hexdigest() for c in contents]
    with srv.application.services.db.read() as session:
        found = {sha: key for sha, key in session.execute(sa.select(Blob.sha256, Blob.storage_key))}
    return [found[sha] for sha in shas]


def _ops(srv: InprocServer) -> list[str]:
    with srv.application.services.db.read() as session:
        return list(session.scalars(sa.select(LogEntry.op_type)))


def test_a_backup_folder_that_cannot_be_written_stops_the_backup_with_one_line(
    srv: InprocServer, run: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A full or read-only backup disk fails every blob the same way: one line saying so (no
    traceback, no problem per blob blamed on the store), and the previous backup stays."""
    user, folder, previous = backed_up_once(srv, run, tmp_path)
    assert user.put("/files/second.txt", b"does not fit") == 201

    def full(*_args: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(backup.os, "fsync", full)
    status, report, err = run("backup", str(folder))
    assert (status, report) == (1, None)
    assert err.strip().splitlines() == [
        f"davserver backup: cannot write the backup into {folder}: [Errno 28] No space left on"
        " device"
    ]
    assert (folder / backup.DATABASE_FILE).read_bytes() == previous
    assert list((folder / backup.BLOB_FOLDER / "tmp").iterdir()) == []


def test_a_blob_the_store_cannot_read_is_reported_and_the_rest_backed_up(
    srv: InprocServer, run: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    user = User(srv, srv.user, srv.password)
    assert user.put("/files/bad-sector.txt", b"on a bad sector") == 201
    assert user.put("/files/fine.txt", b"readable") == 201
    [bad_key] = _keys_by_content(srv, [b"on a bad sector"])
    opened = FileSystemBlobStore.open

    def open_with_a_bad_sector(store: FileSystemBlobStore, key: str) -> Any:
        if key != bad_key:
            return opened(store, key)
        fh = mock.MagicMock()
        fh.__enter__.return_value.read.side_effect = OSError(errno.EIO, "Input/output error")
        return fh

    monkeypatch.setattr(FileSystemBlobStore, "open", open_with_a_bad_sector)
    folder = tmp_path / "backup" / "data"
    status, report, _ = run("backup", str(folder))
    assert status == 1 and report["blobs_copied"] == 1
    assert [(p["kind"], p["storage_key"], p["detail"]) for p in report["problems"]] == [
        ("unreadable", bad_key, "[Errno 5] Input/output error")
    ]


def test_files_the_new_backup_has_no_row_for_are_removed(
    srv: InprocServer, run: Any, tmp_path: Path
) -> None:
    """A backup that took its snapshot again (gc collected blobs meanwhile) kept the files it
    had copied for the first one, and an earlier backup's files stayed too: ``fsck`` on the
    restored copy reported them as orphans and exited 1, though nothing was wrong. Once the
    new database is in place, files it has no row for go."""
    user = User(srv, srv.user, srv.password)
    assert user.put("/files/kept.txt", b"kept") == 201
    folder = tmp_path / "backup" / "data"
    assert run("backup", str(folder))[0] == 0
    blobs = folder / backup.BLOB_FOLDER
    leftover = blobs / "ab" / ("ab" + "0" * 62)
    leftover.parent.mkdir(exist_ok=True)
    leftover.write_bytes(b"copied for a snapshot taken again")
    status, report, _ = run("backup", str(folder))
    assert status == 0 and report["files_removed"] == 1, report
    assert not leftover.exists()
    assert run("fsck", data_dir=folder)[0] == 0
    with serve_backup(folder, srv) as restored:
        assert User(restored, srv.user, srv.password).get("/files/kept.txt") == b"kept"


def test_a_blob_gc_collects_during_the_backup_makes_it_take_a_new_snapshot(
    srv: InprocServer, tmp_path: Path
) -> None:
    """gc and a nightly backup may well run at the same hour. A file purged after the snapshot
    was taken had its blob collected before the backup copied it: the backup then held a
    version without its bytes and said "missing". It now takes a new snapshot, which no longer
    has that version, and copies what is new in it."""
    user = User(srv, srv.user, srv.password)
    contents = [f"file number {i}".encode() for i in range(4)]
    for i, content in enumerate(contents):
        assert user.put(f"/files/f{i}.txt", content) == 201
    keys = _keys_by_content(srv, contents)
    doomed = max(range(4), key=lambda i: keys[i])  # copied last: after the first tick
    assert user("DELETE", f"/files/f{doomed}.txt").status == 204
    services = srv.application.services
    collected: list[int] = []

    def purge_and_collect_once(_progress: object) -> None:
        if collected:
            return
        services.trash.purge_expired(older_than=dt.timedelta(0))
        gc = MaintenanceService(services.db, services.blobs)
        collected.append(gc.collect_garbage(grace=dt.timedelta(0)).blobs_removed)
        assert user.put("/files/after-the-snapshot.txt", b"new since the snapshot") == 201

    folder = tmp_path / "backup" / "data"
    report = backup.back_up(services.db, services.blobs, folder, progress=purge_and_collect_once)
    assert collected == [1]
    assert report.ok, report
    assert report.snapshots == 2
    assert report.blobs == 4 == blob_count(folder / backup.DATABASE_FILE)
    assert report.blobs_copied == 4  # three files of the first snapshot, one of the second
    with serve_backup(folder, srv) as restored:
        again = User(restored, srv.user, srv.password)
        assert again.get("/files/after-the-snapshot.txt") == b"new since the snapshot"
        for i, content in enumerate(contents):
            if i != doomed:
                assert again.get(f"/files/f{i}.txt") == content
        assert again("GET", f"/files/f{doomed}.txt").status == 404


def test_files_in_the_backup_folder_that_are_no_blobs_are_left_alone(
    srv: InprocServer, run: Any, tmp_path: Path
) -> None:
    """A backup removed every file under FOLDER/blobs/ its database had no row for, photos
    and notes someone kept there included. Only files named as blobs are its to remove."""
    User(srv, srv.user, srv.password).put("/files/kept.txt", b"kept")
    folder = tmp_path / "backup" / "data"
    blobs = folder / backup.BLOB_FOLDER
    (blobs / "photos").mkdir(parents=True)
    (blobs / "photos" / "cat.jpg").write_bytes(b"precious")
    (blobs / "readme.txt").write_bytes(b"notes")
    leftover = blobs / "ab" / ("ab" + "0" * 62)
    leftover.parent.mkdir()
    leftover.write_bytes(b"a blob no row names")
    status, report, _ = run("backup", str(folder))
    assert status == 0 and report["files_removed"] == 1, report
    assert (blobs / "photos" / "cat.jpg").read_bytes() == b"precious"
    assert (blobs / "readme.txt").read_bytes() == b"notes"
    assert not leftover.exists()


def test_a_folder_holding_another_database_is_refused(
    srv: InprocServer, run: Any, tmp_path: Path
) -> None:
    """A backup into a folder holding another server's data (its database file, its blobs)
    replaced that database with the backup and deleted every blob of it. Only an empty
    folder, or one holding an earlier backup of this database into it, takes a backup."""
    user, folder, _ = backed_up_once(srv, run, tmp_path)
    restored = tmp_path / "restored" / "data"  # a restore is another database from now on
    shutil.copytree(folder, restored)
    with serve_backup(restored, srv) as server:
        assert User(server, srv.user, srv.password).put("/files/new.txt", b"only here") == 201
    other = tmp_path / "other"  # a file of that name that is no database at all
    other.mkdir()
    (other / backup.DATABASE_FILE).write_bytes(b"precious")
    postgres_data = tmp_path / "pg-data"  # the blob store of a server on PostgreSQL
    (postgres_data / backup.BLOB_FOLDER / "ab").mkdir(parents=True)
    (postgres_data / backup.BLOB_FOLDER / "database-id").write_text("some-id\n")
    stored = postgres_data / backup.BLOB_FOLDER / "ab" / ("ab" + "1" * 62)
    stored.write_bytes(b"another server's blob")

    for target in (restored, other, postgres_data):
        before = {p: p.read_bytes() for p in target.rglob("*") if p.is_file()}
        status, report, err = run("backup", str(target))
        assert (status, report) == (1, None), err
        assert len(err.strip().splitlines()) == 1 and "not a backup of this database" in err
        assert {p: p.read_bytes() for p in target.rglob("*") if p.is_file()} == before
    with serve_backup(restored, srv) as server:
        assert User(server, srv.user, srv.password).get("/files/new.txt") == b"only here"
    assert user.put("/files/second.txt", b"next night") == 201
    assert run("backup", str(folder))[0] == 0  # the earlier backup into it: taken
