"""Engines and sessions per database URL.

``Database.read()`` and ``Database.write()`` each give one transaction. On SQLite a write
transaction starts with ``BEGIN IMMEDIATE``, so two writers queue on the database lock instead of
failing with "database is locked" when a reader tries to upgrade; reads stay concurrent (WAL).
A process's own SQLite writers first queue in arrival order (``davserver.db.writer_queue``).
On PostgreSQL both are ordinary READ COMMITTED transactions; writers that must serialize on a row
take ``SELECT ... FOR UPDATE``.

``Database.connect()`` is for quick single-statement reads: no transaction (autocommit), so each
statement sees everything committed before it. Between ``begin_request()`` and ``end_request()``
all of a request's quick reads share one pooled connection instead of checking one out each.
"""

from __future__ import annotations

import contextvars
import logging
import os
import sqlite3
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, sessionmaker

from davserver.config import ConfigError
from davserver.db.writer_queue import WriterQueue
from davserver.errors import StorageFull, Unavailable

_BACKENDS = ("sqlite", "postgresql")
_PG_DISK_FULL = "53100"
_WRITE_OPTION = "davserver_write"
_AUTOCOMMIT_OPTION = "davserver_autocommit"
# How long a SQLite writer waits for the database before it gives up (Unavailable, a 503).
BUSY_TIMEOUT = 30.0
_BUSY = "the database is busy with other changes; try again"
_OUT_OF_REACH = "the database is not answering; try again"
_SERVER_GOING = frozenset({"57P01", "57P02", "57P03"})  # admin/crash shutdown, cannot connect now
_RUN_AGAIN = frozenset({"40P01", "40001"})  # deadlock_detected, serialization_failure

log = logging.getLogger(__name__)
T = TypeVar("T")


def unusable(exc: sa.exc.DBAPIError | sa.exc.OperationalError) -> str:
    """What to tell the user when the database is out of reach (down, a wrong address, a file
    that cannot be opened) or refused the work: the driver's first line, no traceback."""
    said = str(exc.orig if exc.orig is not None else exc).strip().splitlines()
    return f"cannot use the database: {said[0] if said else exc}"


def check_url(url: str, *, option: str = "database.url") -> sa.URL:
    """``url`` parsed, or ConfigError naming what is wrong with it (and ``option``, where
    it was given): not a URL, a database other than SQLite and PostgreSQL, or a driver that
    is not installed."""
    example = "postgresql+psycopg://user:password@host:5432/name or sqlite:///path"
    try:
        parsed = sa.make_url(url)
    except (sa.exc.ArgumentError, ValueError):  # not shown: it may hold a password
        raise ConfigError(f"{option} is not a database URL; expected {example}") from None
    shown = parsed.render_as_string(hide_password=True)
    try:
        parsed.get_dialect()
    except sa.exc.NoSuchModuleError:
        raise ConfigError(
            f"{option} {shown}: no database driver {parsed.drivername!r}; use {example}"
        ) from None
    if parsed.get_backend_name() not in _BACKENDS:
        raise ConfigError(
            f"{option} {shown}: only SQLite and PostgreSQL are supported; use {example}"
        )
    return parsed


def is_in_memory(url: sa.URL) -> bool:
    """Whether ``url`` names a SQLite database that lives only as long as its connection
    (``sqlite://``, ``:memory:``, a ``mode=memory`` URI)."""
    if url.get_backend_name() != "sqlite":
        return False
    path = url.database or ""
    return path in ("", ":memory:") or "mode=memory" in path or url.query.get("mode") == "memory"


def _create_private_file(url: sa.URL) -> None:
    """Create a new SQLite database file readable and writable by its owner only: it holds
    password and key hashes, and with the usual umask (022) SQLite made it readable by every
    local user. SQLite gives the -wal and -shm files the database file's mode. An existing
    file is left as it is; a file that cannot be made is left for SQLite to report."""
    path = url.database or ""
    if is_in_memory(url) or path.startswith("file:"):
        return
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    except OSError:  # there already, or a folder that is missing or not ours
        return


class _RequestConnection:
    """The read connection one request shares, opened on first use."""

    def __init__(self) -> None:
        self.connection: sa.Connection | None = None


# libpq's connection parameters that bound how long a PostgreSQL out of reach holds a request
# (then Unavailable, a 503): without them a server that accepted connections but did not answer
# held each request for libpq's 130 s connect, and one cut off mid-query until TCP gave up
# (minutes). Each may be set otherwise in the database URL (``?connect_timeout=30``).
PG_CONNECT_DEFAULTS: dict[str, int] = {
    "connect_timeout": 10,  # seconds to connect
    "keepalives": 1,  # probe an idle connection ...
    "keepalives_idle": 30,  # ... after 30 s idle,
    "keepalives_interval": 10,  # every 10 s,
    "keepalives_count": 3,  # 3 unanswered: dead
    "tcp_user_timeout": 30_000,  # ms data sent may stay unacknowledged
}


def pg_connect_args(url: sa.URL) -> dict[str, int]:
    """``PG_CONNECT_DEFAULTS`` but those the URL sets itself."""
    return {key: value for key, value in PG_CONNECT_DEFAULTS.items() if key not in url.query}


class Database:
    """One engine and its session factory; shared by every thread of a server process."""

    def __init__(
        self,
        url: str,
        *,
        pool_size: int = 10,
        max_connections: int | None = None,
        echo: bool = False,
        ping_after_idle: float = 1.0,
        reconnect_after: float = 600.0,
        durable_commits: bool = True,
    ) -> None:
        """``durable_commits``: SQLite flushes each commit to disk (synchronous=FULL), so a
        commit survives a power cut, not only a crash (NORMAL, when False). PostgreSQL's
        commits are durable by its own settings."""
        self.url = check_url(url)
        self.is_sqlite = self.url.get_backend_name() == "sqlite"
        if self.is_sqlite:
            _create_private_file(self.url)
        kwargs: dict[str, Any] = {"echo": echo, "future": True}
        # At most max_connections at once (davserver.capacity), pool_size of them kept open.
        limit = max_connections if max_connections is not None else pool_size + 64
        kwargs["pool_size"] = min(pool_size, limit)
        kwargs["max_overflow"] = limit - kwargs["pool_size"]
        if self.is_sqlite:
            kwargs["connect_args"] = {"check_same_thread": False, "timeout": BUSY_TIMEOUT}
            kwargs["poolclass"] = sa.pool.QueuePool
        else:
            # Newest first: a pool reuses the connection it just got back, which needs no check
            # (_ping_when_idle), and lets the ones it has not needed lately sit idle.
            kwargs["pool_use_lifo"] = True
            # A connection's prepared statements keep the plans they were given (psycopg
            # prepares a statement at its 5th run) until ANALYZE changes the table's statistics;
            # replacing the connection now and then bounds how long a plan made for a small
            # table can outlive it, when autovacuum is off.
            kwargs["pool_recycle"] = reconnect_after if reconnect_after > 0 else -1
            kwargs["connect_args"] = pg_connect_args(self.url)
        self.engine: Engine = sa.create_engine(self.url, **kwargs)
        if self.is_sqlite:
            _configure_sqlite(self.engine, synchronous="FULL" if durable_commits else "NORMAL")
        else:
            _ping_when_idle(self.engine, ping_after_idle)
        self._write_engine = self.engine.execution_options(**{_WRITE_OPTION: True})
        # Quick reads need no BEGIN/ROLLBACK round trips. SQLite's driver already runs without
        # implicit transactions here (see _configure_sqlite), so only the BEGIN is skipped.
        self._read_engine = (
            self.engine.execution_options(**{_AUTOCOMMIT_OPTION: True})
            if self.is_sqlite
            else self.engine.execution_options(isolation_level="AUTOCOMMIT")
        )
        self._request: contextvars.ContextVar[_RequestConnection | None] = contextvars.ContextVar(
            f"davserver_db_request_{id(self)}", default=None
        )
        self._read_sessions = sessionmaker(self.engine, expire_on_commit=False)
        self._write_sessions = sessionmaker(self._write_engine, expire_on_commit=False)
        self._writers = WriterQueue() if self.is_sqlite else None

    @contextmanager
    def read(self) -> Iterator[Session]:
        """A read-only transaction; rolled back at the end. Unavailable when PostgreSQL is out
        of reach (``_out_of_reach``), as for ``write`` and ``connect``."""
        with _out_of_reach(), self._read_sessions() as session:
            try:
                yield session
            finally:
                session.rollback()

    @contextmanager
    def write(self) -> Iterator[Session]:
        """A read-write transaction, committed when the block ends without an exception.

        A database whose disk is full raises StorageFull, and a SQLite database that other
        writers kept for longer than the busy timeout (30 s) Unavailable: rolled back, nothing
        changed. On SQLite the transaction first waits its turn among this process's writers,
        and holds the database's write lock from the start of the block: what it reads, before
        its first statement too, is what it changes (lazily, BEGIN IMMEDIATE waited for the
        first statement, and a check made before it, through another connection, could be
        overtaken by another process's commit)."""
        if self._writers is not None and not self._writers.acquire(BUSY_TIMEOUT):
            raise Unavailable(_BUSY)
        try:
            with _out_of_reach(), self._write_sessions() as session, session.begin():
                if self.is_sqlite:
                    session.connection()  # BEGIN IMMEDIATE now
                yield session
        except sa.exc.OperationalError as exc:
            if _disk_full(exc):
                raise StorageFull("the server's database storage is full") from exc
            if getattr(exc.orig, "sqlite_errorcode", None) == sqlite3.SQLITE_BUSY:
                raise Unavailable(_BUSY) from exc
            raise
        finally:
            if self._writers is not None:
                self._writers.release()

    def write_until_done(self, work: Callable[[Session], T], attempts: int = 4) -> T:
        """``work`` in a write transaction (``write``), run again when PostgreSQL aborted it
        to break a deadlock, or for a serialization failure (``may_run_again``), up to
        ``attempts`` times in all."""
        for attempt in range(attempts):
            try:
                with self.write() as session:
                    return work(session)
            except sa.exc.DBAPIError as exc:
                if attempt == attempts - 1 or not may_run_again(exc):
                    raise
        raise AssertionError("unreachable")

    @property
    def writers_waiting(self) -> int:
        """How many of this process's SQLite writers wait for their turn (0 on PostgreSQL)."""
        return self._writers.waiting if self._writers is not None else 0

    def write_connection(self) -> sa.Connection:
        """A Core connection whose transactions begin as ``write()``'s do: on SQLite with
        ``BEGIN IMMEDIATE``, holding the database's write lock from the start (migrations)."""
        return self._write_engine.connect()

    @contextmanager
    def connect(self) -> Iterator[sa.Connection]:
        """A Core connection for quick single-statement reads (cheaper than a Session)."""
        with _out_of_reach():
            shared = self._request.get()
            if shared is None:
                with self._read_engine.connect() as conn:
                    yield conn
                return
            if shared.connection is None:
                shared.connection = self._read_engine.connect()
            yield shared.connection

    def begin_request(self) -> None:
        """From here on (in this thread's context) quick reads share one connection."""
        self.end_request()
        self._request.set(_RequestConnection())

    def end_request(self) -> None:
        """Give the request's shared read connection back to the pool."""
        shared = self._request.get()
        self._request.set(None)
        if shared is not None and shared.connection is not None:
            shared.connection.close()

    def dispose(self) -> None:
        self.engine.dispose()


@contextmanager
def _out_of_reach() -> Iterator[None]:
    """PostgreSQL out of reach (down, restarting, failing over, the network cut, the
    database gone) as Unavailable, a 503 with Retry-After and one WARNING line: it was a 500
    with a traceback, as for a bug, on every request."""
    try:
        yield
    except sa.exc.DBAPIError as exc:
        _raise_if_out_of_reach(exc)
        raise


def _raise_if_out_of_reach(exc: sa.exc.DBAPIError) -> None:
    """Raise Unavailable for an error of the connection rather than of the statement: one
    that invalidated the connection, or a psycopg error with a connection's SQLSTATE (class
    08; 57P01-57P03: the server shutting down, or starting) or none at all (no connection
    was made). Deadlocks and serialization failures are left to the callers that retry."""
    orig = exc.orig
    state = getattr(orig, "sqlstate", None)
    psycopg = type(orig).__module__.startswith("psycopg") and isinstance(
        exc, sa.exc.OperationalError | sa.exc.InterfaceError
    )
    connection = state is None or state.startswith("08") or state in _SERVER_GOING
    if exc.connection_invalidated or (psycopg and connection):
        said = str(orig if orig is not None else exc).strip().splitlines()
        log.warning("%s: %s", _OUT_OF_REACH, said[0] if said else type(exc).__name__)
        raise Unavailable(_OUT_OF_REACH) from exc


def may_run_again(exc: sa.exc.DBAPIError) -> bool:
    """Whether PostgreSQL aborted the transaction to break a deadlock (40P01) or for a
    serialization failure (40001): it can run again, and should."""
    return getattr(exc.orig, "sqlstate", None) in _RUN_AGAIN


def _disk_full(exc: sa.exc.DBAPIError) -> bool:
    """Whether the database refused a write for want of disk space (SQLite's SQLITE_FULL,
    PostgreSQL's disk_full)."""
    orig = exc.orig
    return (
        getattr(orig, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL
        or getattr(orig, "sqlstate", None) == _PG_DISK_FULL
    )


def _ping_when_idle(engine: Engine, idle_seconds: float) -> None:
    """Check a pooled connection before use, but only one that sat unused for ``idle_seconds``.

    The server may have dropped it meanwhile (a restart, a failover, ``idle_session_timeout``,
    a firewall): a failed check replaces it, so the request never sees the dead one. SQLAlchemy's
    ``pool_pre_ping`` checks at every checkout instead, a round trip each, two per small PUT.
    A connection that was in use a moment ago is alive unless the server went away within that
    moment; then the one request on it fails and SQLAlchemy drops the whole pool's connections.
    """
    stamp = "davserver_idle_since"

    @event.listens_for(engine, "checkin")
    def _on_checkin(_dbapi_connection: Any, record: Any) -> None:
        record.info[stamp] = time.monotonic()

    @event.listens_for(engine, "checkout")
    def _on_checkout(dbapi_connection: Any, record: Any, _proxy: Any) -> None:
        since = record.info.get(stamp)  # None: connected for this checkout
        if since is None or time.monotonic() - since < idle_seconds:
            return
        try:
            engine.dialect.do_ping(dbapi_connection)
        except engine.dialect.loaded_dbapi.Error as exc:
            raise sa.exc.DisconnectionError(f"idle connection failed its check: {exc}") from exc


# What SQLite's WAL file is cut back to once a checkpoint has copied it into the database
# (``PRAGMA journal_size_limit``). Without it the file keeps the size of the largest burst
# of writes it ever held (a big trash purge or import: gigabytes) for as long as the server runs.
WAL_SIZE_LIMIT = 64 * 1024 * 1024


def _configure_sqlite(engine: Engine, *, synchronous: str) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Let SQLAlchemy's "begin" event emit BEGIN itself (pysqlite's own is deferred).
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA synchronous={synchronous}")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute(f"PRAGMA busy_timeout={int(BUSY_TIMEOUT * 1000)}")
        cursor.execute(f"PRAGMA journal_size_limit={WAL_SIZE_LIMIT}")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: sa.Connection) -> None:
        options = conn.get_execution_options()
        if options.get(_AUTOCOMMIT_OPTION):
            return
        conn.exec_driver_sql("BEGIN IMMEDIATE" if options.get(_WRITE_OPTION) else "BEGIN")
