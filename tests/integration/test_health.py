"""``GET /api/v1/health``: what a load balancer asks each server process, without signing in."""

from __future__ import annotations

import json
import logging

import pytest
import sqlalchemy as sa

from davserver.models import LogEntry
from davserver.services import health
from tests.servers import InprocServer, http_request


def ask(server: InprocServer, method: str = "GET") -> tuple[int, dict[str, str] | None]:
    response = http_request(method, server.url + "/api/v1/health")
    assert response.headers["Cache-Control"] == "no-store"
    return response.status, json.loads(response.body) if response.body else None


def logbook_rows(server: InprocServer) -> int:
    """The logbook's rows, once the downloads earlier tests made on this server are written
    (they are logged in batches, and a batch landing between two counts failed the test)."""
    server.application.files.read_log.flush()
    with server.application.db.read() as session:
        return int(session.scalar(sa.select(sa.func.count()).select_from(LogEntry)) or 0)


def test_a_serving_process_is_healthy_to_anyone(inproc_server: InprocServer) -> None:
    before = logbook_rows(inproc_server)
    assert ask(inproc_server) == (200, {"status": "ok", "database": "ok", "blob_store": "ok"})
    assert ask(inproc_server, "HEAD") == (200, None)
    assert logbook_rows(inproc_server) == before  # asked every few seconds: nothing recorded


def test_a_failing_part_is_503_naming_it_and_logged(
    inproc_server: InprocServer, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def no_disk() -> None:
        raise OSError("Read-only file system: '/srv/blobs/tmp'")

    monkeypatch.setattr(inproc_server.application.services.blobs, "check", no_disk)
    with caplog.at_level(logging.WARNING, logger=health.__name__):
        status, body = ask(inproc_server)
    assert (status, body) == (503, {"status": "failing", "database": "ok", "blob_store": "failing"})
    # As every other 503 of the server: when to ask again (a proxy's retry honours it).
    retry = http_request("GET", inproc_server.url + "/api/v1/health").headers.get("Retry-After")
    assert retry is not None and 1 <= int(retry) <= 60, retry
    assert "Read-only file system" in caplog.text  # the reason goes to the log, not to anyone

    def no_database(_db: object) -> None:
        raise sa.exc.OperationalError("SELECT 1", {}, Exception("connection refused"))

    monkeypatch.setattr(health, "_answers", no_database)
    status, body = ask(inproc_server)
    assert status == 503 and body is not None and body["database"] == "failing"
