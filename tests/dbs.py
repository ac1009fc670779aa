"""Test databases: a fresh SQLite file or a fresh PostgreSQL database per test session.

PostgreSQL comes from DAVSERVER_TEST_PG (default: the local server at 127.0.0.1:5432, user
postgres, database test). Each test run creates its own database ``davserver_t_<random>`` and
drops it at the end. Without a reachable server the PostgreSQL tests skip with the reason,
unless the environment variable CI is set: then they fail.
"""

from __future__ import annotations

import os
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, NamedTuple

import pytest
import sqlalchemy as sa

PG_ADMIN_URL = os.environ.get(
    "DAVSERVER_TEST_PG", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)


def pg_unavailable_reason() -> str | None:
    """None when PostgreSQL answers, else why not."""
    engine = sa.create_engine(PG_ADMIN_URL, connect_args={"connect_timeout": 3})
    try:
        with engine.connect() as conn:
            conn.exec_driver_sql("SELECT 1")
        return None
    except Exception as exc:  # any failure to reach it is a reason to skip
        return f"PostgreSQL at {PG_ADMIN_URL} is not reachable: {str(exc).splitlines()[0]}"
    finally:
        engine.dispose()


def require_pg() -> None:
    """Skip (or, under CI, fail) the calling test when PostgreSQL is unreachable."""
    reason = pg_unavailable_reason()
    if reason is None:
        return
    if os.environ.get("CI"):
        pytest.fail(f"CI is set, so PostgreSQL tests must run: {reason}")
    pytest.skip(reason)


@contextmanager
def pg_admin() -> Iterator[sa.Connection]:
    """An autocommit connection to the PostgreSQL server as its administrator."""
    admin = sa.create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            yield conn
    finally:
        admin.dispose()


@contextmanager
def fresh_pg_database() -> Iterator[str]:
    """Create an empty PostgreSQL database, yield its URL, drop it afterwards."""
    name = f"davserver_t_{secrets.token_hex(6)}"
    with pg_admin() as conn:
        conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    try:
        yield sa.make_url(PG_ADMIN_URL).set(database=name).render_as_string(hide_password=False)
    finally:
        with pg_admin() as conn:
            conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


class Reads(NamedTuple):
    """What this PostgreSQL backend read of one table in the current transaction so far."""

    scanned: int  # rows read by sequential scans
    entries: int  # index entries returned, over all the table's indexes
    index_blocks: int  # index blocks fetched (from the cache or the disk)


def pg_reads(conn: sa.Connection, table: str) -> Reads:
    """``table``'s read counters for this transaction (``pg_stat_xact_*``): take them before
    and after a statement, in the same transaction, to see what it read."""
    row = conn.execute(
        sa.text(
            "SELECT (SELECT seq_tup_read FROM pg_stat_xact_user_tables WHERE relid = t.oid),"
            " (SELECT coalesce(sum(pg_stat_get_xact_tuples_returned(indexrelid)), 0)"
            "  FROM pg_index WHERE indrelid = t.oid),"
            " (SELECT coalesce(sum(pg_stat_get_xact_blocks_fetched(indexrelid)), 0)"
            "  FROM pg_index WHERE indrelid = t.oid)"
            " FROM pg_class AS t WHERE t.oid = CAST(:table AS regclass)"
        ),
        {"table": table},
    ).one()
    return Reads(*(int(n) for n in row))


@contextmanager
def fresh_database_url(engine: str, tmp_dir: str) -> Iterator[str]:
    """An empty database of the given engine ("sqlite" or "postgresql")."""
    if engine == "sqlite":
        yield f"sqlite:///{tmp_dir}/davserver.sqlite3"
    else:
        require_pg()
        with fresh_pg_database() as url:
            yield url


def wait_for_a_lock_wait(database: Any) -> None:
    """Until some transaction on ``database`` (PostgreSQL) waits for a lock: a race test's
    second party has reached the row the first one holds."""
    query = sa.text(
        "SELECT count(*) FROM pg_stat_activity"
        " WHERE datname = current_database() AND wait_event_type = 'Lock'"
    )
    for _ in range(300):
        with database.connect() as conn:
            if conn.scalar(query):
                return
        time.sleep(0.01)
    raise AssertionError("no transaction came to wait for a lock")


def in_thread(name: str, work: Callable[[], object], outcome: dict[str, Any]) -> threading.Thread:
    """``work`` started in a thread called ``name``; what it raised (or None) in ``outcome``."""

    def target() -> None:
        try:
            work()
            outcome[name] = None
        except BaseException as exc:
            outcome[name] = exc

    thread = threading.Thread(target=target, name=name)
    thread.start()
    return thread
