"""``davserver gc`` and ``davserver fsck`` run in-process: exit statuses, --json, progress."""

from __future__ import annotations

import datetime as dt
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from davserver.blobstore import FileSystemBlobStore
from davserver.blobstore.base import OWNER_KEY
from davserver.cli import main
from davserver.commands import common as commands
from davserver.config import ConfigError
from davserver.db import Base, Database
from davserver.db.types import utcnow
from davserver.models import LogEntry, Op
from davserver.services.audit import record_audit
from tests.blobs import loose_blob, path_of
from tests.servers import run_inproc_server


@pytest.fixture
def data_dir(db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("DAVSERVER_DATABASE_URL", db_url)
    monkeypatch.setenv("DAVSERVER_DATA_DIR", str(tmp_path / "data"))
    return tmp_path / "data"


@pytest.fixture
def run(data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Iterator[Any]:
    assert main(["--config", os.devnull, "db", "upgrade"]) == 0  # commands need a database
    capsys.readouterr()

    def davserver(*argv: str) -> tuple[int, Any, str]:
        """Exit status, stdout (parsed when it is JSON) and stderr of one command."""
        status = main(["--config", os.devnull, *argv])
        out, err = capsys.readouterr()
        return status, json.loads(out) if "--json" in argv else out, err

    yield davserver


def add_loose_blob(db_url: str, data_dir: Path, data: bytes) -> Path:
    """A blob row and file that nothing references, two hours old; returns the file."""
    store = FileSystemBlobStore(data_dir / "blobs", fsync=False)
    db = Database(db_url)
    try:
        loose_blob(db, store, data)
    finally:
        db.dispose()
    return path_of(store, data)


def logged_ops(db_url: str) -> list[str]:
    db = Database(db_url)
    try:
        with db.read() as session:
            return list(
                session.scalars(
                    sa.select(LogEntry.op_type)
                    .where(LogEntry.op_type.like("maintenance:%"))
                    .order_by(LogEntry.id)
                )
            )
    finally:
        db.dispose()


def test_gc_and_fsck_from_the_command_line(run: Any, db_url: str, data_dir: Path) -> None:
    status, report, _ = run("gc", "--json")
    assert status == 0 and report["ok"] and report["blobs_removed"] == 0

    garbage = add_loose_blob(db_url, data_dir, b"nobody uses these bytes")
    damaged = add_loose_blob(db_url, data_dir, b"these bytes will rot")
    with open(damaged, "r+b") as fh:
        fh.write(b"T")

    status, text, _ = run("fsck")
    assert status == 1
    assert "corrupt" in text and damaged.name in text and "problems: 1 corrupt" in text
    assert "1 corrupt blobs moved to the blob store's quarantine/" in text
    quarantined = data_dir / "blobs" / "quarantine" / damaged.name
    assert quarantined.exists() and not damaged.exists()

    # Missing now, and as nothing uses it, garbage for gc to take.
    status, report, _ = run("fsck", "--json")
    assert status == 0 and report["ok"] and report["blobs_checked"] == 2
    assert report["garbage_without_file"] == 1 and report["quarantined"] == 0

    status, report, _ = run("gc", "--dry-run", "--json")
    assert status == 0 and report["dry_run"] and report["blobs_removed"] == 2
    assert garbage.exists()

    status, text, _ = run("gc", "--grace", "86400")
    assert status == 0 and "blobs removed         0 (0 B)" in text

    status, report, _ = run("gc", "--json")
    assert status == 0 and report["blobs_removed"] == 2 and report["blobs_without_file"] == 1
    assert report["bytes_removed"] == len(b"nobody uses these bytes")
    assert not garbage.exists() and quarantined.exists()

    status, report, _ = run("fsck", "--json")
    assert status == 0 and report["ok"] and report["blobs_checked"] == 0
    assert logged_ops(db_url) == ["maintenance:gc"] + ["maintenance:fsck"] * 2 + [
        "maintenance:gc"
    ] * 3 + ["maintenance:fsck"]


def test_fsck_names_foreign_files_and_exits_zero(run: Any, db_url: str, data_dir: Path) -> None:
    add_loose_blob(db_url, data_dir, b"a blob")
    (data_dir / "blobs" / "notes.txt").write_bytes(b"not a blob")
    status, text, _ = run("fsck")
    assert status == 0, text
    assert "foreign    notes.txt  not a blob: left alone" in text and "problems: none" in text
    status, report, _ = run("fsck", "--json")
    assert status == 0 and report["ok"] and report["foreign"] == ["notes.txt"]


def test_gc_exits_non_zero_when_a_file_cannot_be_removed(
    run: Any, db_url: str, data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run("gc", "--json")  # creates the schema
    garbage = add_loose_blob(db_url, data_dir, b"stuck bytes")

    def refuse(self: FileSystemBlobStore, storage_key: str) -> str | None:
        raise PermissionError(13, "Permission denied", storage_key)

    monkeypatch.setattr(FileSystemBlobStore, "set_aside", refuse)
    status, report, err = run("gc", "--json")
    assert status == 1 and not report["ok"] and report["blobs_removed"] == 0
    assert "Permission denied" in err
    assert garbage.exists()
    status, report, _ = run("fsck", "--json")
    assert status == 0 and report["blobs_checked"] == 1  # the row came back with its file


def test_progress_lines_go_to_stderr(
    run: Any, db_url: str, data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run("gc", "--json")
    add_loose_blob(db_url, data_dir, b"x" * 3000)
    monkeypatch.setattr(commands, "PROGRESS_EVERY", 0.0)
    status, report, err = run("fsck", "--json", "--sample", "1")
    assert status == 0 and report["blobs_checked"] == 1
    assert "fsck: hash 1/1, 2.9 KiB of 2.9 KiB (100%)" in err.splitlines()
    status, _, err = run("gc", "--quiet", "--json")
    assert status == 0 and err == ""


def test_bad_arguments_are_refused(run: Any) -> None:
    with pytest.raises(SystemExit) as exit_info:
        run("fsck", "--since", "yesterday")
    assert exit_info.value.code == 2
    for args in (
        ("gc", "--grace", "-5"),
        ("gc", "--grace", "99999999999999999"),  # past what a timedelta holds
        ("gc", "--grace", "9" * 30),
        ("fsck", "--sample", "0"),
        ("fsck", "--sample", "99999999999999999999"),  # past the database's integers
    ):
        with pytest.raises(SystemExit) as exit_info:
            run(*args)
        assert exit_info.value.code == 2, args


def test_recount_fixes_a_running_total_that_is_off(run: Any, db_url: str) -> None:
    run("gc", "--json")
    status, _, _ = run("user", "create", "carla", "--json")
    assert status == 0
    db = Database(db_url)
    try:
        users = Base.metadata.tables["users"]
        with db.write() as session:
            session.execute(users.update().where(users.c.username == "carla").values(home_bytes=7))
    finally:
        db.dispose()
    status, report, _ = run("recount", "--json")
    assert status == 0 and report["off"] == [{"username": "carla", "kept": 7, "counted": 0}]
    status, text, _ = run("recount", "--user", "carla")
    assert status == 0 and text.strip() == "recounted; all were right"
    assert logged_ops(db_url)[-2:] == ["maintenance:recount"] * 2


@pytest.mark.parametrize(
    "url",
    [
        "postgresql+psycopg://postgres@127.0.0.1:1/nothing?connect_timeout=3",  # nobody listens
        "sqlite:////nonexistent/folder/davserver.sqlite3",
    ],
)
@pytest.mark.parametrize("command", [("gc",), ("fsck",), ("recount",), ("trash", "purge")])
def test_a_database_out_of_reach_is_one_line_not_a_traceback(
    url: str,
    command: tuple[str, ...],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("DAVSERVER_DATABASE_URL", url)
    monkeypatch.setenv("DAVSERVER_DATA_DIR", str(tmp_path / "data"))
    status = main(["--config", os.devnull, *command])
    out, err = capsys.readouterr()
    # A SQLite file that is not there is named before anything tries to open it.
    said = "no database at " if url.startswith("sqlite") else "cannot use the database: "
    assert (status, out) == (2 if url.startswith("sqlite") else 1, "")
    assert err.startswith("davserver: " + said) and err.count("\n") == 1
    assert "Traceback" not in err


def test_a_reader_that_stops_early_ends_the_command_quietly(
    run: Any, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """``davserver gc --json | head -3``: the pipe closes before the output is written."""

    def closed(*_args: Any) -> None:
        raise BrokenPipeError(32, "Broken pipe")

    monkeypatch.setattr(commands, "emit_item", closed)
    monkeypatch.setattr("davserver.commands.maintenance.emit_item", closed)
    status, _, err = run("gc")
    assert status == 1 and err == ""


def test_fsck_and_a_dry_run_only_look_at_which_database_the_store_belongs_to(
    run: Any, data_dir: Path
) -> None:
    """fsck and ``gc --dry-run`` marked an unmarked store as this database's, so they failed
    on a store mounted read-only; they only check the mark now. A real gc claims it."""
    mark = data_dir / "blobs" / OWNER_KEY
    for argv in (["fsck"], ["gc", "--dry-run"]):
        status, _, err = run(*argv)
        assert status == 0, err
        assert not mark.exists(), argv
    assert run("gc")[0] == 0
    assert mark.is_file()


@pytest.mark.parametrize("damage", ["not text", "a folder", "empty"])
def test_a_store_mark_that_cannot_be_read_stops_gc_fsck_and_serve_in_one_line(
    damage: str, run: Any, db_url: str, data_dir: Path, tmp_path: Path
) -> None:
    """A mark that was not UTF-8, or a folder, was a traceback from serve, gc and fsck."""
    assert run("gc")[0] == 0  # claims the store
    mark = data_dir / "blobs" / OWNER_KEY
    mark.unlink()
    if damage == "not text":
        mark.write_bytes(b"\xff\xfe\x00 not an identity")
    elif damage == "a folder":
        mark.mkdir()
    else:  # an empty mark names no one: the store is claimed again
        mark.write_bytes(b"")
        assert run("gc")[0] == 0 and mark.read_text().strip()
        return
    for argv in (["gc"], ["gc", "--dry-run"], ["fsck"]):
        status, _, err = run(*argv)
        assert status == 2, (argv, err)
        assert err.startswith("davserver: cannot read which database the blob store"), err
        assert len(err.splitlines()) == 1 and "claim-blob-store" in err, err
    with (
        pytest.raises(ConfigError, match="cannot read which database"),
        run_inproc_server("sqlite", tmp_path, existing=(db_url, "unused-password")),
    ):
        pass


def test_housekeeping_runs_the_sweep_where_the_server_does_not(
    run: Any, db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With ``maintenance.housekeeping_seconds: 0`` no server sweeps, and no command pruned
    the logbook: ``logbook_retention_days`` stopped without a word. ``davserver housekeeping``
    runs the sweep once, from cron."""
    monkeypatch.setenv("DAVSERVER_MAINTENANCE_LOGBOOK_RETENTION_DAYS", "30")
    db = Database(db_url)
    try:
        with db.write() as session:
            for _ in range(3):
                record_audit(session, None, Op.USER_UPDATE, details={"user": "old"})
        with db.write() as session:
            rows = list(session.scalars(sa.select(LogEntry.id)))
            aged = sa.update(LogEntry).values(occurred_at=utcnow() - dt.timedelta(days=31))
            session.execute(aged)
    finally:
        db.dispose()
    status, swept, _ = run("housekeeping", "--json")
    assert status == 0 and swept["logbook_rows"] == len(rows)
    assert logged_ops(db_url) == ["maintenance:logbook:prune"]
    status, again, _ = run("housekeeping")
    assert status == 0 and "logbook rows: 0" in again
