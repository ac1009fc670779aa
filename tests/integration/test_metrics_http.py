"""GET /metrics: Prometheus's text format for admins, over real HTTP (SQLite; what is counted
does not depend on the database). Several worker processes: tests/integration/test_workers.py."""

from __future__ import annotations

import socket
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from davserver.http_request import MAX_HEADER_BYTES
from davserver.metrics import render
from tests.servers import InprocServer, basic_auth_header, http_request, run_inproc_server
from tests.unit.test_metrics import sample


@pytest.fixture
def srv(tmp_path: Path) -> Iterator[InprocServer]:
    with run_inproc_server("sqlite", tmp_path) as server:
        yield server


def scrape(srv: InprocServer, user: str, password: str, method: str = "GET") -> tuple[int, str]:
    response = http_request(
        method, srv.url + "/metrics", None, {"Authorization": basic_auth_header(user, password)}
    )
    return response.status, response.body.decode()


def _all_answered(srv: InprocServer) -> None:
    """Wait until the server has ended every request so far. A request is counted as answered
    when the server closes its response, just after the last byte went out: the client may
    have sent its next request by then (on a busy machine, the scrape saw two in flight)."""
    deadline = time.monotonic() + 10
    while sample(render(srv.application.metrics.board), "davserver_http_requests_in_flight"):
        assert time.monotonic() < deadline, "requests still in flight after 10 s"
        time.sleep(0.01)


def test_an_admin_reads_what_was_answered(srv: InprocServer) -> None:
    assert srv.request("PUT", "/files/a.txt", b"12345").status == 201
    for _ in range(3):
        assert srv.request("GET", "/files/a.txt").status == 200
    assert srv.request("GET", "/files/missing.txt").status == 404
    assert srv.request("PROPFIND", "/files/", None, {"Depth": "0"}).status == 207
    _all_answered(srv)

    status, text = scrape(srv, srv.user, srv.password)

    assert status == 200
    requests = "davserver_http_requests_total"
    assert sample(text, requests, 'method="GET",code="2xx"') == 3
    assert sample(text, requests, 'method="GET",code="4xx"') == 1
    assert sample(text, requests, 'method="PUT",code="2xx"') == 1
    assert sample(text, "davserver_http_request_duration_seconds_count", 'method="GET"') == 4
    assert sample(text, "davserver_http_response_bytes_total", 'method="GET"') >= 15
    assert sample(text, "davserver_http_requests_in_flight") == 1  # the scrape itself
    assert sample(text, "davserver_worker_processes") == 1
    assert sample(text, "davserver_blob_store_free_bytes") > 0
    # The scrape is counted too, once answered.
    _all_answered(srv)
    _, again = scrape(srv, srv.user, srv.password)
    assert sample(again, requests, 'method="GET",code="2xx"') == 4


def test_the_metrics_are_for_admins_and_an_admins_read_only_key(srv: InprocServer) -> None:
    app = srv.application
    name = f"user{uuid.uuid4().hex[:6]}"
    app.services.users.create_user(None, name, password="a-password-1")
    assert scrape(srv, name, "a-password-1")[0] == 403
    anonymous = http_request("GET", srv.url + "/metrics", None, {})
    assert anonymous.status == 401
    admin = app.services.users.user_id(srv.user)
    _, key = app.services.api_keys.create(None, admin, "prometheus", scope="read")
    status, text = scrape(srv, srv.user, key)
    assert status == 200 and "davserver_http_requests_total" in text
    assert scrape(srv, srv.user, srv.password, "POST")[0] == 405


def test_metrics_can_be_turned_off(tmp_path: Path) -> None:
    with run_inproc_server("sqlite", tmp_path, server__metrics=False) as server:
        assert scrape(server, server.user, server.password)[0] == 404


def test_requests_refused_before_the_application_are_counted(srv: InprocServer) -> None:
    """A request cheroot itself refuses (a malformed request line, headers past the limit)
    never reaches the application, and /metrics did not count it: a client sending broken
    requests did not show at all."""
    huge = b"x" * (MAX_HEADER_BYTES + 1)
    refused = (
        (b"NOT A REQUEST LINE\r\n\r\n", b"HTTP/1.1 400"),
        (b"GET /files/ HTTP/1.1\r\nHost: h\r\nX-Big: " + huge + b"\r\n\r\n", b"HTTP/1.1 413"),
    )
    for request, answer in refused:
        with socket.create_connection(("127.0.0.1", srv.port), timeout=10) as conn:
            conn.sendall(request)
            assert conn.recv(100).startswith(answer)
    _all_answered(srv)
    _, text = scrape(srv, srv.user, srv.password)
    requests = "davserver_http_requests_total"
    assert sample(text, requests, 'method="OTHER",code="4xx"') == 1
    assert sample(text, requests, 'method="GET",code="4xx"') == 1
    assert sample(text, "davserver_http_requests_in_flight") == 1  # the scrape itself
