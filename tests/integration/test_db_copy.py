"""``davserver db copy``: a deployment moves from SQLite to PostgreSQL (and back) with every
row, and the copy serves what the original served."""

from __future__ import annotations

import datetime as dt
import json
import os
import queue
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from davserver.cli import main
from davserver.db import Base, Database
from davserver.db import copy as db_copy
from davserver.db.copy import copy_database
from davserver.db.migrate import upgrade
from davserver.errors import Conflict
from davserver.models import DeadProperty, LogEntry
from davserver.models import User as UserRow
from davserver.services.maintenance import MaintenanceService
from davserver.services.store_owner import StoreOfAnotherDatabase
from tests.conftest import ENGINES
from tests.dbs import fresh_database_url
from tests.images import jpeg
from tests.servers import InprocServer, basic_auth_header, http_request, run_inproc_server
from tests.webdav import LOCK_BODY, User, make_user

DIRECTIONS = [
    pytest.param(("sqlite", "postgresql"), marks=pytest.mark.postgres, id="sqlite-to-postgresql"),
    pytest.param(("postgresql", "sqlite"), marks=pytest.mark.postgres, id="postgresql-to-sqlite"),
]
DEAD_PROP = (
    b'<?xml version="1.0"?><D:propertyupdate xmlns:D="DAV:" xmlns:Z="urn:example">'
    b"<D:set><D:prop><Z:colour>teal</Z:colour></D:prop></D:set></D:propertyupdate>"
)


@dataclass
class Deployment:
    """What the source server held, to be found again on the copy."""

    server: InprocServer
    alice: User
    bob: User
    api_key: str
    refresh_token: str
    package_zip: bytes


def api(server: InprocServer, who: tuple[str, str], method: str, path: str, payload: Any) -> Any:
    body = json.dumps(payload).encode()
    headers = {"Authorization": basic_auth_header(*who), "Content-Type": "application/json"}
    response = http_request(method, server.url + "/api/v1" + path, body, headers)
    assert response.status in (200, 201), (path, response.status, response.body[:300])
    return json.loads(response.body)


def populate(server: InprocServer) -> Deployment:
    """Users, a group, folders, versions, a thumbnail, a dead property, a lock, a share, a
    package, a trashed file, an API key and a rotated refresh token."""
    alice, bob = make_user(server, "alice"), make_user(server, "bob")
    assert alice("MKCOL", "/files/docs/").status == 201
    assert alice("MKCOL", "/files/docs/deep/").status == 201
    assert alice.put("/files/docs/a.txt", b"first") == 201
    assert alice.put("/files/docs/a.txt", b"second") == 204
    assert alice.put("/files/docs/deep/photo.jpg", jpeg(320, 240)) == 201
    assert alice("GET", "/files/docs/deep/photo.jpg?thumbnail=64").status == 200
    assert alice("PROPPATCH", "/files/docs/a.txt", DEAD_PROP).status == 207
    assert alice("LOCK", "/files/docs/locked.txt", LOCK_BODY).status == 201
    assert alice.put("/files/gone.txt", b"to the trash") == 201
    assert alice("DELETE", "/files/gone.txt").status == 204
    who = (alice.name, alice.password)
    share = {"path": "/files/docs", "user": bob.name, "rights": ["read", "download"]}
    api(server, who, "POST", "/grants", share)
    assert alice("MKCOL", "/packages/release/").status == 201
    copied = alice("COPY", "/files/docs/", None, alice.destination("/packages/release/docs"))
    assert copied.status == 201
    package_zip = alice.get("/packages/release.zip")
    key = api(server, who, "POST", "/keys", {"name": "rclone"})["key"]
    login = {"username": alice.name, "password": alice.password}
    tokens = api(server, who, "POST", "/token", login)
    rotated = api(server, who, "POST", "/token/refresh", {"refresh_token": tokens["refresh_token"]})
    return Deployment(server, alice, bob, key, rotated["refresh_token"], package_zip)


def assert_serves(server: InprocServer, deployment: Deployment) -> None:
    """``server`` (on another database: a copy, an upgrade) serves what ``populate`` made."""
    alice = User(server, deployment.alice.name, deployment.alice.password)
    bob = User(server, deployment.bob.name, deployment.bob.password)
    assert alice.get("/files/docs/a.txt") == b"second"
    assert alice.get("/files/docs/a.txt?version=1") == b"first"
    assert (
        alice.propfind("/files/docs/a.txt", "0")["/files/docs/a.txt"].get("{urn:example}colour")
        == "teal"
    )
    assert alice.put("/files/docs/locked.txt", b"no token") == 423
    assert bob.get(f"/shared/{alice.name}/docs/a.txt") == b"second"
    assert alice.get("/packages/release.zip") == deployment.package_zip
    trash = alice.propfind("/trash/")
    assert any(path.startswith("/trash/gone (") for path in trash), trash
    thumb = alice("GET", "/files/docs/deep/photo.jpg?thumbnail=64")
    assert thumb.status == 200
    with_key = User(server, alice.name, deployment.api_key)
    assert with_key.get("/files/docs/a.txt") == b"second"
    refreshed = http_request(
        "POST",
        server.url + "/api/v1/token/refresh",
        json.dumps({"refresh_token": deployment.refresh_token}).encode(),
        {"Content-Type": "application/json"},
    )
    assert refreshed.status == 200, refreshed.body
    # New rows get new ids (the logbook's sequence starts past the copied ones).
    assert alice.put("/files/docs/new.txt", b"written on the copy") == 201
    assert alice.get("/files/docs/new.txt") == b"written on the copy"


@pytest.fixture(params=DIRECTIONS)
def copied(
    request: pytest.FixtureRequest,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> Iterator[tuple[Deployment, str, dict[str, Any]]]:
    """A populated server on one engine, moved (copied while it runs, taking the blob store)
    into a fresh database on the other by the command line; yields the source, the target's
    URL and the command's JSON."""
    source_engine, target_engine = request.param
    with (
        run_inproc_server(source_engine, tmp_path) as server,
        fresh_database_url(target_engine, str(tmp_path)) as target_url,
    ):
        deployment = populate(server)
        monkeypatch.setenv("DAVSERVER_DATABASE_URL", server.db_url)
        monkeypatch.setenv("DAVSERVER_DATA_DIR", str(server.data_dir))
        capsys.readouterr()
        move = ["db", "copy", "--to", target_url, "--take-blob-store", "--json"]
        status = main(["--config", os.devnull, *move])
        out, err = capsys.readouterr()
        assert status == 0, err
        assert "db copy: nodes:" in err  # progress, per table
        report = json.loads(out)
        assert report["took_blob_store"] is True
        yield deployment, target_url, report


def rows_of(url: str) -> dict[str, list[dict[str, Any]]]:
    """Every row of every table, ordered by primary key."""
    db = Database(url)
    try:
        with db.engine.connect() as conn:
            return {
                table.name: [
                    dict(row._mapping)
                    for row in conn.execute(sa.select(table).order_by(*table.primary_key))
                ]
                for table in Base.metadata.sorted_tables
            }
    finally:
        db.dispose()


def test_every_row_arrives_as_it_was(copied: tuple[Deployment, str, dict[str, Any]]) -> None:
    deployment, target_url, report = copied
    source, target = rows_of(deployment.server.db_url), rows_of(target_url)
    copy_rows = [row for row in target["logbook"] if row["op_type"] == "maintenance:copy"]
    assert len(copy_rows) == 1 and copy_rows[0]["details"]["rows"] == report["rows"]
    target["logbook"] = [row for row in target["logbook"] if row not in copy_rows]
    # Rows the source wrote after the copy began (the download log's batch) are not in it.
    source["logbook"] = source["logbook"][: len(target["logbook"])]
    # The copy is a database of its own, to which the blob store now belongs (store_owner).
    identities = []
    for rows in (source, target):
        [identity] = [row for row in rows["instance_secrets"] if row["name"] == "database-id"]
        rows["instance_secrets"].remove(identity)
        identities.append(identity["value"])
    assert identities[0] != identities[1]
    assert (deployment.server.data_dir / "blobs" / "database-id").read_text().strip() == identities[
        1
    ]
    for table in Base.metadata.sorted_tables:
        for mine, theirs in zip(target[table.name], source[table.name], strict=True):
            assert mine == theirs, {k: (mine[k], theirs[k]) for k in mine if mine[k] != theirs[k]}
    assert report["rows"]["nodes"] == len(source["nodes"]) > 5


def test_the_copy_serves_what_the_original_served(
    copied: tuple[Deployment, str, dict[str, Any]], tmp_path: Path
) -> None:
    deployment, target_url, _ = copied
    source = deployment.server
    engine = "postgresql" if target_url.startswith("postgresql") else "sqlite"
    with run_inproc_server(engine, tmp_path, existing=(target_url, source.password)) as server:
        assert_serves(server, deployment)


def test_gc_on_the_old_settings_cannot_delete_what_the_copy_stored(
    copied: tuple[Deployment, str, dict[str, Any]],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """After a move, a cron job still holding the old settings ran gc on the old database,
    and every blob uploaded to the copy since, having no row there, went as an orphan. The
    store now belongs to the copy: gc and fsck on the old database refuse it, and so does a
    server started on it; the copy serves and collects as before."""
    deployment, target_url, _ = copied
    source = deployment.server
    engine = "postgresql" if target_url.startswith("postgresql") else "sqlite"
    env = {"storage__blob_dir": str(source.data_dir / "blobs")}
    with run_inproc_server(engine, tmp_path, existing=(target_url, source.password), **env) as new:
        after = make_user(new, "after")
        assert after.put("/files/after-the-move.bin", b"uploaded after the move") == 201
        capsys.readouterr()
        for command in (["gc", "--grace", "0"], ["fsck"]):
            assert main(["--config", os.devnull, *command]) == 2, command
            said = capsys.readouterr().err
            assert "belongs to another database" in said and len(said.splitlines()) == 1, said
        assert after.get("/files/after-the-move.bin") == b"uploaded after the move"
        with (
            pytest.raises(StoreOfAnotherDatabase),
            run_inproc_server(
                "sqlite" if engine == "postgresql" else "postgresql",
                tmp_path / "old",
                existing=(source.db_url, source.password),
                **env,
            ),
        ):
            pass
        assert (
            MaintenanceService(new.app.db, new.app.blobs).collect_garbage(grace=dt.timedelta(0)).ok
        )
        assert after.get("/files/after-the-move.bin") == b"uploaded after the move"


@pytest.mark.parametrize("direction", DIRECTIONS)
def test_a_copy_goes_only_into_an_empty_database_and_fails_whole(
    direction: tuple[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source_engine, target_engine = direction
    with (
        run_inproc_server(source_engine, tmp_path) as server,
        fresh_database_url(target_engine, str(tmp_path)) as target_url,
    ):
        populate(server)
        source, target = Database(server.db_url), Database(target_url)
        try:
            upgrade(target)

            def broken(*_args: object) -> None:
                raise RuntimeError("the disk went away")

            # A copy that fails half-way leaves the target as it was: empty.
            with monkeypatch.context() as patch:
                patch.setattr(db_copy, "_set_forward_references", broken)
                with pytest.raises(RuntimeError, match="went away"):
                    copy_database(source, target, Base.metadata)
            assert count(target, UserRow) == 0

            copy_database(source, target, Base.metadata)
            users, log = count(target, UserRow), count(target, LogEntry)
            with pytest.raises(Conflict, match=r"holds data already \(\d+ row\(s\) in users\)"):
                copy_database(source, target, Base.metadata)
            assert (count(target, UserRow), count(target, LogEntry)) == (users, log)
        finally:
            source.dispose()
            target.dispose()


@pytest.mark.postgres
def test_of_two_copies_into_one_database_the_second_finds_it_taken(tmp_path: Path) -> None:
    """The second, started while the first was writing, found the target empty too, and
    failed on a duplicate key (a screenful of SQL parameters) once the first committed."""
    with (
        run_inproc_server("sqlite", tmp_path) as server,
        fresh_database_url("postgresql", str(tmp_path)) as target_url,
    ):
        make_user(server, "alice")
        source, first_target, second_target = (
            Database(server.db_url),
            Database(target_url),
            Database(target_url),
        )
        upgrade(first_target)
        writing, outcome = threading.Event(), queue.Queue[BaseException | None]()

        def slow(table: str, rows: int) -> None:
            if not writing.is_set():
                writing.set()
                time.sleep(1.0)  # the second starts meanwhile

        def second() -> None:
            writing.wait(30)
            try:
                copy_database(source, second_target, Base.metadata)
            except BaseException as exc:
                outcome.put(exc)
            else:
                outcome.put(None)

        thread = threading.Thread(target=second)
        thread.start()
        try:
            copy_database(source, first_target, Base.metadata, progress=slow)
        finally:
            thread.join(60)
            for db in (source, first_target, second_target):
                db.dispose()
        assert isinstance(outcome.get(timeout=1), Conflict)


@pytest.mark.postgres
def test_a_row_the_target_refuses_is_named_in_one_line_and_nothing_is_copied(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """SQLite keeps strings longer than their column (a dead property name an older server
    let in); PostgreSQL refuses them. That was a traceback with every parameter of the
    batch; it is one line naming the table, and the target stays empty."""
    with (
        run_inproc_server("sqlite", tmp_path) as server,
        fresh_database_url("postgresql", str(tmp_path)) as target_url,
    ):
        alice = make_user(server, "alice")
        assert alice.put("/files/a.txt", b"a") == 201
        assert alice("PROPPATCH", "/files/a.txt", DEAD_PROP).status == 207
        source = Database(server.db_url)
        try:
            with source.write() as session:
                session.execute(sa.update(DeadProperty).values(name="{urn:x}" + "p" * 600))
        finally:
            source.dispose()
        monkeypatch.setenv("DAVSERVER_DATABASE_URL", server.db_url)
        monkeypatch.setenv("DAVSERVER_DATA_DIR", str(server.data_dir))
        capsys.readouterr()
        assert main(["--config", os.devnull, "db", "copy", "--to", target_url, "--quiet"]) == 1
        warning, refusal = capsys.readouterr().err.splitlines()
        # The server is still running on the source: the command says so before it copies.
        assert warning.startswith("davserver: warning: the database is open")
        assert refusal.startswith("davserver: the target refused a row, so nothing was copied:")
        assert "dead_properties: value too long" in refusal
        target = Database(target_url)
        try:
            assert count(target, UserRow) == 0
        finally:
            target.dispose()


def count(db: Database, model: type[Any]) -> int:
    with db.read() as session:
        return int(session.scalar(sa.select(sa.func.count()).select_from(model)) or 0)


def test_the_command_refuses_to_copy_a_database_onto_itself(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"sqlite:///{tmp_path / 'one.sqlite3'}"
    monkeypatch.setenv("DAVSERVER_DATABASE_URL", url)
    assert main(["--config", os.devnull, "db", "copy", "--to", url]) == 2
    assert "--to names the database being copied" in capsys.readouterr().err


@pytest.mark.parametrize(
    "to", ["sqlite://", "sqlite:///:memory:", "sqlite:///file:copy?mode=memory&uri=true"]
)
def test_the_command_refuses_a_target_that_vanishes_when_it_ends(
    to: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # An in-memory database took every row and said so, then was gone with the process.
    monkeypatch.setenv("DAVSERVER_DATABASE_URL", f"sqlite:///{tmp_path / 'one.sqlite3'}")
    assert main(["--config", os.devnull, "db", "copy", "--to", to]) == 2
    assert "--to names an in-memory SQLite database" in capsys.readouterr().err


def test_the_command_names_the_option_holding_a_bad_url(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("DAVSERVER_DATABASE_URL", f"sqlite:///{tmp_path / 'one.sqlite3'}")
    assert main(["--config", os.devnull, "db", "copy", "--to", "mysql://x@db/name"]) == 2
    assert "davserver: --to mysql://x@db/name: only SQLite" in capsys.readouterr().err


def test_the_command_says_where_the_blobs_must_be_when_the_settings_name_none(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Copying a backup's database from another folder said to keep the blobs where they
    are, naming ./data/blobs, which did not exist; a backup keeps its blobs beside it."""
    source = tmp_path / "backup" / "davserver.sqlite3"
    source.parent.mkdir()
    upgrade(Database(f"sqlite:///{source}"))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DAVSERVER_DATABASE_URL", f"sqlite:///{source}")
    target = f"sqlite:///{tmp_path / 'copy.sqlite3'}"
    # Asked to take a store there is none of, it stops before copying.
    take = ["db", "copy", "--to", target, "--quiet", "--take-blob-store"]
    assert main(["--config", os.devnull, *take]) == 2
    said = capsys.readouterr().err
    assert "--take-blob-store" in said and "does not exist" in said, said
    assert main(["--config", os.devnull, "db", "copy", "--to", target, "--quiet"]) == 0
    said = capsys.readouterr().out
    assert "set storage.blob_dir" in said and "does not exist" in said, said


@pytest.mark.parametrize("target_engine", ENGINES)
def test_a_copy_of_a_backup_leaves_the_store_to_the_database_in_use(
    target_engine: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A backup keeps the identity of the database it was taken from, and ``db copy`` of it
    handed the store the settings named, the live one, to the copy: the live server's gc,
    fsck and restart were refused, and a gc on the copy deleted what the live server had
    uploaded since the backup. The store now moves only with --take-blob-store, or when the
    copy claims it because it replaces the live database."""
    with (
        run_inproc_server("sqlite", tmp_path / "live") as live,
        fresh_database_url(target_engine, str(tmp_path)) as copy_url,
    ):
        alice = make_user(live, "alice")
        assert alice.put("/files/before.txt", b"before the backup") == 201

        def davserver(*argv: str, url: str) -> tuple[int, str, str]:
            """One command on the database ``url``, with the live server's blob store."""
            monkeypatch.setenv("DAVSERVER_DATABASE_URL", url)
            monkeypatch.setenv("DAVSERVER_DATA_DIR", str(live.data_dir))
            capsys.readouterr()
            status = main(["--config", os.devnull, *argv])
            out, err = capsys.readouterr()
            return status, out, err

        folder = tmp_path / "backup"
        assert davserver("backup", str(folder), url=live.db_url)[0] == 0
        backup_url = f"sqlite:///{folder / 'davserver.sqlite3'}"
        status, out, err = davserver("db", "copy", "--to", copy_url, "--quiet", url=backup_url)
        assert status == 0, err
        assert "still belongs to the database copied from" in out, out
        assert alice.put("/files/after.txt", b"after the backup") == 201

        # The live database keeps its store; the copy may not collect from it.
        assert davserver("gc", "--grace", "0", url=live.db_url)[0] == 0
        assert davserver("fsck", url=live.db_url)[0] == 0
        status, _, err = davserver("gc", "--grace", "0", url=copy_url)
        assert status == 2 and "belongs to another database" in err, err
        assert "claim-blob-store" in err and len(err.splitlines()) == 1, err
        assert alice.get("/files/after.txt") == b"after the backup"

        # When the copy does replace the live database, it claims the store.
        live_id = (live.data_dir / "blobs" / "database-id").read_text().strip()
        status, out, _ = davserver("db", "claim-blob-store", "--json", url=copy_url)
        claimed = json.loads(out)
        assert status == 0 and claimed["before"] == live_id != claimed["database_id"], claimed
        assert davserver("gc", "--dry-run", url=live.db_url)[0] == 2
        assert davserver("gc", "--dry-run", url=copy_url)[0] == 0
        status, out, _ = davserver("db", "claim-blob-store", url=copy_url)
        assert status == 0 and "already belongs to this database" in out, out


def test_taking_the_store_of_a_third_database_is_refused_before_copying(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Settings that name another database's blob store beside the database being copied are
    a mistake: the copy would take a store none of its rows name."""
    with (
        run_inproc_server("sqlite", tmp_path / "one") as one,
        run_inproc_server("sqlite", tmp_path / "two") as two,
    ):
        mark = two.data_dir / "blobs" / "database-id"
        theirs = mark.read_text()
        monkeypatch.setenv("DAVSERVER_DATABASE_URL", one.db_url)
        monkeypatch.setenv("DAVSERVER_STORAGE_BLOB_DIR", str(two.data_dir / "blobs"))
        target = tmp_path / "copy.sqlite3"
        argv = ["db", "copy", "--to", f"sqlite:///{target}", "--quiet", "--take-blob-store"]
        capsys.readouterr()
        assert main(["--config", os.devnull, *argv]) == 2
        warning, said = capsys.readouterr().err.splitlines()  # the warning: one still runs
        assert warning.startswith("davserver: warning: the database is open"), warning
        assert "belongs to another database" in said and "nothing was copied" in said, said
        assert mark.read_text() == theirs
        if target.exists():
            copy = Database(f"sqlite:///{target}")
            try:
                assert sa.inspect(copy.engine).get_table_names() == []
            finally:
                copy.dispose()
