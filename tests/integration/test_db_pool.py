"""Pooled PostgreSQL connections: checked only after sitting idle, replaced when the server
dropped them (a restart, a failover, ``idle_session_timeout``)."""

from __future__ import annotations

import logging
import os
import socket
import stat
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from davserver.db import Database
from davserver.db.engine import PG_CONNECT_DEFAULTS, pg_connect_args
from davserver.errors import Unavailable
from tests.dbs import fresh_pg_database, pg_admin, pg_reads, require_pg
from tests.servers import LiveServer, run_inproc_server

pytestmark = pytest.mark.postgres


@pytest.fixture
def pg_url() -> Iterator[str]:
    require_pg()
    with fresh_pg_database() as url:
        yield url


def _backend_pid(db: Database) -> int:
    with db.connect() as conn:
        return int(conn.exec_driver_sql("SELECT pg_backend_pid()").scalar_one())


def _terminate(pid: int) -> None:
    with pg_admin() as conn:
        assert conn.execute(sa.text("SELECT pg_terminate_backend(:pid)"), {"pid": pid}).scalar()


def _count_pings(db: Database, monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    pings: list[Any] = []
    ping = db.engine.dialect.do_ping

    def counted(dbapi_connection: Any) -> bool:
        pings.append(dbapi_connection)
        return ping(dbapi_connection)

    monkeypatch.setattr(db.engine.dialect, "do_ping", counted)
    return pings


def test_a_connection_the_server_dropped_is_replaced_before_use(pg_url: str) -> None:
    db = Database(pg_url, pool_size=1, ping_after_idle=0.05)
    try:
        dropped = _backend_pid(db)
        _terminate(dropped)
        time.sleep(0.2)
        replacement = _backend_pid(db)  # no error: the check found it dead and reconnected
        assert replacement != dropped
        with db.write() as session:  # and a write transaction runs on the new one
            assert session.execute(sa.text("SELECT pg_backend_pid()")).scalar() == replacement
    finally:
        db.dispose()


def test_a_connection_in_steady_use_is_not_checked(
    pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The check is a round trip: a busy server (a small PUT checks out two connections)
    would pay it on every request."""
    db = Database(pg_url, pool_size=1, ping_after_idle=60)
    try:
        pings = _count_pings(db, monkeypatch)
        pids = {_backend_pid(db) for _ in range(20)}
        assert len(pids) == 1 and pings == []
    finally:
        db.dispose()


def test_after_a_quiet_spell_one_connection_is_checked_and_then_reused(
    pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The pool hands out the connection it got back last: after a quiet spell one check,
    not one per pooled connection as they come round in turn."""
    db = Database(pg_url, pool_size=3, ping_after_idle=0.2)
    try:
        with db.connect() as a, db.connect() as b, db.connect() as c:
            assert len({conn.connection.dbapi_connection for conn in (a, b, c)}) == 3
        time.sleep(0.4)
        pings = _count_pings(db, monkeypatch)
        pids = {_backend_pid(db) for _ in range(10)}
        assert len(pids) == 1 and len(pings) == 1
    finally:
        db.dispose()


def test_zero_checks_a_connection_at_every_use(
    pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = Database(pg_url, pool_size=1, ping_after_idle=0)
    try:
        pings = _count_pings(db, monkeypatch)
        for _ in range(20):
            _backend_pid(db)
        assert len(pings) == 19  # not the first use: that connection was just made
    finally:
        db.dispose()


@pytest.mark.parametrize("live_server", ["postgresql"], indirect=True)
def test_a_running_server_survives_the_database_dropping_its_connections(
    live_server: LiveServer,
) -> None:
    """What a PostgreSQL restart or failover does to every server process: each worker's
    pooled connections die. The next requests must be answered, not fail with a 500."""
    folder = live_server.fresh_dir()
    assert live_server.request("PUT", f"{folder}before.txt", b"before").status == 201
    database = sa.make_url(live_server.db_url).database
    with pg_admin() as conn:
        dropped = conn.execute(
            sa.text(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                " WHERE datname = :db AND pid <> pg_backend_pid()"
            ),
            {"db": database},
        ).scalar()
    assert dropped
    time.sleep(1.5)  # past database.ping_after_idle_seconds (1 by default)
    for n in range(6):  # several connections, so both workers are met
        put = live_server.request("PUT", f"{folder}after-{n}.txt", b"after")
        assert put.status == 201, put.body
    got = live_server.request("GET", f"{folder}before.txt")
    assert (got.status, got.body) == (200, b"before")


def test_a_plan_made_while_a_table_was_small_goes_with_its_connection(pg_url: str) -> None:
    """psycopg prepares a statement at its 5th run on a connection, and PostgreSQL may plan it
    once for all parameters (here: always). Made while the table was small, the plan is a scan,
    and it stays one while the table grows, until ANALYZE (autovacuum, when it is on) or a new
    connection: ``database.reconnect_after_seconds`` bounds how long that can last."""
    reconnect_after = 4.0  # seconds: time enough to see the old plan on a busy machine
    db = Database(pg_url, pool_size=1, ping_after_idle=60, reconnect_after=reconnect_after)

    @sa.event.listens_for(db.engine, "connect")
    def _generic_plans(dbapi_connection: Any, _record: Any) -> None:
        with dbapi_connection.cursor() as cursor:
            cursor.execute("SET plan_cache_mode = force_generic_plan")
        dbapi_connection.commit()

    lookup = sa.text("SELECT v FROM t WHERE k IN (:a, :b)")

    def rows_scanned() -> int:
        with db.write() as session:
            before = pg_reads(session.connection(), "t")
            assert session.execute(lookup, {"a": 7, "b": 9}).all() is not None
            return pg_reads(session.connection(), "t").scanned - before.scanned

    try:
        connected = time.monotonic()
        with db.write() as session:
            session.execute(sa.text("CREATE TABLE t (k integer, v integer)"))
            session.execute(sa.text("INSERT INTO t SELECT i, i FROM generate_series(1, 10) i"))
            # Statistics of a small table (the last ones, with autovacuum off), as a migration
            # that makes an index leaves them.
            session.execute(sa.text("CREATE INDEX t_k ON t (k)"))
        for _ in range(6):
            rows_scanned()
        other = sa.create_engine(pg_url)  # the pooled connection's plan is not touched
        with other.begin() as conn:
            conn.execute(sa.text("INSERT INTO t SELECT i, i FROM generate_series(11, 50000) i"))
        other.dispose()
        scanned = rows_scanned()
        assert time.monotonic() - connected < reconnect_after, "too slow to see the plan kept"
        assert scanned == 50_000  # the plan made for 10 rows
        time.sleep(max(0.0, connected + reconnect_after + 0.2 - time.monotonic()))
        assert rows_scanned() == 0  # a new connection, a new plan: the index
    finally:
        db.dispose()


def test_a_new_sqlite_database_is_private_to_its_owner(tmp_path: Path) -> None:
    """It holds password and key hashes; with umask 022 it (and its -wal) was world-readable:
    the server's own and the one ``db copy`` makes. One that exists keeps its mode."""
    path = tmp_path / "new.sqlite3"
    db = Database(f"sqlite:///{path}")
    try:
        with db.write() as session:
            session.execute(sa.text("CREATE TABLE t (x INTEGER)"))
            session.execute(sa.text("INSERT INTO t VALUES (1)"))
        for made in (path, path.with_name(path.name + "-wal")):
            assert stat.S_IMODE(made.stat().st_mode) == 0o600, made
    finally:
        db.dispose()
    shared = tmp_path / "shared.sqlite3"
    shared.touch(mode=0o640)
    Database(f"sqlite:///{shared}").dispose()
    assert stat.S_IMODE(shared.stat().st_mode) == 0o640 & ~current_umask()


def current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_a_database_out_of_reach_is_a_503_not_a_500(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Every request needs the database; while PostgreSQL refuses connections (a restart, a
    failover, a network cut), each got a bare 500 and its traceback in the log, as for a bug.
    Now a 503 with Retry-After, one WARNING line each, and service again once it is back."""
    require_pg()
    with run_inproc_server("postgresql", tmp_path) as server:
        assert server.request("PROPFIND", "/files/", headers={"Depth": "0"}).status == 207
        database = sa.make_url(server.db_url).database
        with pg_admin() as conn:
            conn.execute(sa.text(f'ALTER DATABASE "{database}" ALLOW_CONNECTIONS false'))
            conn.execute(
                sa.text(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                    " WHERE datname = :db AND pid <> pg_backend_pid()"
                ),
                {"db": database},
            )
        try:
            caplog.clear()
            with caplog.at_level(logging.WARNING):
                for method, path in (("PROPFIND", "/files/"), ("GET", "/api/v1/keys")):
                    answer = server.request(method, path, headers={"Depth": "0"})
                    assert answer.status == 503, (method, answer.status, answer.body[:300])
                    assert answer.headers.get("Retry-After"), answer.headers
                    assert b"database" in answer.body, answer.body
            errors = [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]
            assert not errors, [r.getMessage() for r in errors]
            assert any("database" in r.getMessage() for r in caplog.records)
        finally:
            with pg_admin() as conn:
                conn.execute(sa.text(f'ALTER DATABASE "{database}" ALLOW_CONNECTIONS true'))
        assert server.request("PROPFIND", "/files/", headers={"Depth": "0"}).status == 207


def test_a_postgresql_that_accepts_but_never_answers_is_unavailable_soon(tmp_path: Path) -> None:
    """A PostgreSQL whose port accepts connections but never answers (a hung server, a
    half-dead proxy) held every request for libpq's default of 130 s, the health check too.
    The connection attempt now gives up (Unavailable, a 503) after ``connect_timeout``: 10 s
    unless the URL sets it (1 s here)."""
    with socket.socket() as hole:
        hole.bind(("127.0.0.1", 0))
        hole.listen(16)  # accepts (the kernel does) and never says a word
        port = hole.getsockname()[1]
        url = sa.make_url(f"postgresql+psycopg://postgres@127.0.0.1:{port}/x?connect_timeout=1")
        assert pg_connect_args(url)["tcp_user_timeout"] == 30_000
        assert "connect_timeout" not in pg_connect_args(url)  # the URL's own
        assert pg_connect_args(url.difference_update_query(["connect_timeout"])) == (
            PG_CONNECT_DEFAULTS
        )
        db = Database(url.render_as_string(hide_password=False))
        try:
            started = time.monotonic()
            with pytest.raises(Unavailable), db.read() as session:
                session.execute(sa.text("SELECT 1"))
            assert time.monotonic() - started < 10
        finally:
            db.dispose()
