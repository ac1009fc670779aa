"""A server never asks PostgreSQL for more connections than it accepts.

The server's role gets CONNECTION LIMIT 30 (as a small hosted PostgreSQL would give), and two
worker processes of 32 threads each take 40 clients uploading at once. Before, the processes
opened connections as their threads needed them, up to 64 each, and about half the uploads
failed with 500 "too many connections for role". Now each process runs the threads the limit
allows, and the clients beyond them wait for a thread.
"""

from __future__ import annotations

import http.client
import os
import secrets
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from davserver.capacity import accepted_connections
from tests.dbs import PG_ADMIN_URL, pg_admin, require_pg
from tests.servers import HOST, basic_auth_header, run_live_server

pytestmark = pytest.mark.postgres

LIMIT = 30
CLIENTS = 40
UPLOADS_EACH = 4


@pytest.fixture
def limited_url() -> Iterator[str]:
    """A database owned by a role of its own that may hold at most LIMIT connections."""
    require_pg()
    name = f"davserver_lim_{secrets.token_hex(5)}"
    with pg_admin() as conn:
        conn.exec_driver_sql(f'CREATE ROLE "{name}" LOGIN CONNECTION LIMIT {LIMIT}')
        conn.exec_driver_sql(f'CREATE DATABASE "{name}" OWNER "{name}"')
    try:
        url = sa.make_url(PG_ADMIN_URL).set(username=name, password=None, database=name)
        yield url.render_as_string(hide_password=False)
    finally:
        with pg_admin() as conn:
            conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            conn.exec_driver_sql(f'DROP ROLE IF EXISTS "{name}"')


def test_the_limit_of_the_servers_role_is_what_postgresql_accepts(limited_url: str) -> None:
    assert accepted_connections(limited_url) == LIMIT
    assert accepted_connections(PG_ADMIN_URL) is not None  # a superuser: max_connections


def test_a_burst_of_uploads_never_exceeds_the_connections_postgresql_accepts(
    tmp_path: Path, limited_url: str
) -> None:
    role = sa.make_url(limited_url).username
    extra = {"DAVSERVER_DATABASE_URL": limited_url, "DAVSERVER_SERVER_WORKERS": "2"}
    with run_live_server("postgresql", tmp_path, extra) as server:
        assert "Serving with 4 threads per process" in server.stderr_text()
        auth = {"Authorization": basic_auth_header(server.user, server.password)}
        assert server.request("MKCOL", "/files/burst/").status == 201

        statuses: Counter[int | str] = Counter()
        peak = [0]
        done = threading.Event()

        def upload(client: int) -> None:
            conn = http.client.HTTPConnection(HOST, server.port, timeout=120)
            try:
                for n in range(UPLOADS_EACH):
                    body = os.urandom(32 * 1024)
                    path = f"/files/burst/c{client}-{n}.bin"
                    conn.request("PUT", path, body=body, headers=auth)
                    answer = conn.getresponse()
                    answer.read()
                    statuses[answer.status] += 1
            except OSError as exc:
                statuses[type(exc).__name__] += 1
            finally:
                conn.close()

        def watch() -> None:
            query = sa.text("SELECT count(*) FROM pg_stat_activity WHERE usename = :role")
            with pg_admin() as conn:
                while not done.is_set():
                    peak[0] = max(peak[0], int(conn.execute(query, {"role": role}).scalar_one()))
                    time.sleep(0.01)

        watcher = threading.Thread(target=watch)
        watcher.start()
        clients = [threading.Thread(target=upload, args=(n,)) for n in range(CLIENTS)]
        for thread in clients:
            thread.start()
        for thread in clients:
            thread.join()
        done.set()
        watcher.join()

        assert statuses == Counter({201: CLIENTS * UPLOADS_EACH}), server.stderr_text()[-3000:]
        assert 0 < peak[0] <= LIMIT
        assert "too many connections" not in server.stderr_text()
