"""A renewed TLS certificate is served without a restart.

What a user relies on: certbot (or any renewal) replaces the certificate and key files and the
server's new connections get the new pair, within ``server.tls_reload_seconds`` or at once on
SIGHUP, while connections already open go on; a pair caught half-written, or a key that is not
the certificate's, is logged and the certificate in service kept; with ``server.workers`` every
worker takes the new one. TLS does not touch the database: these run on SQLite.
"""

from __future__ import annotations

import http.client
import os
import signal
import socket
import ssl
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.certificates import der_of, self_signed
from tests.integration.test_workers import holder_of_socket, workers_of
from tests.servers import HOST, LiveServer, basic_auth_header, run_live_server

WAIT = 20.0


@contextmanager
def tls_server(tmp_path: Path, **options: str) -> Iterator[tuple[LiveServer, Path, Path]]:
    """A live server on a fresh certificate (``tmp_path/live``, as certbot's live/ folder);
    ``options`` are more DAVSERVER_SERVER_* settings, by their lower-case suffix."""
    live = tmp_path / "live"
    live.mkdir()
    cert, key = self_signed(live)
    env = {
        "DAVSERVER_SERVER_SSL_CERTIFICATE": str(cert),
        "DAVSERVER_SERVER_SSL_PRIVATE_KEY": str(key),
        **{f"DAVSERVER_SERVER_{name.upper()}": value for name, value in options.items()},
    }
    with run_live_server("sqlite", tmp_path, extra_env=env) as server:
        yield server, cert, key


def renew(tmp_path: Path, cert: Path, key: Path, *, replace: str = "both") -> Path:
    """A new certificate and key, moved over ``cert`` and ``key`` (``replace``: "both", or only
    the "certificate"); the new certificate's path as made (still there when only it moved)."""
    folder = tmp_path / f"renewal-{time.monotonic_ns()}"
    folder.mkdir()
    new_cert, new_key = self_signed(folder)
    kept = folder / "kept.pem"
    kept.write_bytes(new_cert.read_bytes())
    if replace == "both":
        os.replace(new_key, key)
    os.replace(new_cert, cert)
    return kept


def presented(server: LiveServer) -> bytes:
    """The certificate a new connection to ``server`` is given (DER)."""
    with tls_socket(server) as sock:
        der = sock.getpeercert(binary_form=True)
    assert der is not None
    return der


@contextmanager
def tls_socket(server: LiveServer) -> Iterator[ssl.SSLSocket]:
    unchecked = ssl._create_unverified_context()  # self-signed, and about to change
    raw = socket.create_connection((HOST, server.port), timeout=30)
    with unchecked.wrap_socket(raw) as sock:
        yield sock


def wait_for(condition: Callable[[], bool], server: LiveServer, what: str) -> None:
    deadline = time.monotonic() + WAIT
    while not condition():
        assert time.monotonic() < deadline, f"{what} within {WAIT:.0f} s" + server.diagnostics()
        time.sleep(0.1)


def get_root(conn: http.client.HTTPSConnection, server: LiveServer) -> int:
    conn.request("PROPFIND", "/files/", headers={
        "Depth": "0", "Authorization": basic_auth_header(*server.auth)})  # fmt: skip
    response = conn.getresponse()
    response.read()
    return response.status


def test_a_renewed_certificate_is_served_to_new_connections_while_open_ones_go_on(
    tmp_path: Path,
) -> None:
    with tls_server(tmp_path, tls_reload_seconds="1") as (server, cert, key):
        old = der_of(cert)
        assert presented(server) == old
        unchecked = ssl._create_unverified_context()
        kept_open = http.client.HTTPSConnection(HOST, server.port, context=unchecked, timeout=30)
        assert get_root(kept_open, server) == 207

        new = der_of(renew(tmp_path, cert, key))
        wait_for(lambda: presented(server) == new, server, "the renewed certificate served")
        assert get_root(kept_open, server) == 207  # the connection made before goes on
        kept_open.close()
        assert server.request("PROPFIND", "/files/", headers={"Depth": "0"}).status == 207
        assert "TLS: serving the certificate in" in server.stderr_text()


def test_a_certificate_without_its_key_is_not_served_until_the_key_arrives(
    tmp_path: Path,
) -> None:
    """A renewal that writes the certificate first, then the key: between the two the files do
    not belong together. The server keeps what it serves, says why once, and takes the pair
    when it is whole."""
    with tls_server(tmp_path, tls_reload_seconds="1") as (server, cert, key):
        old = der_of(cert)
        kept = renew(tmp_path, cert, key, replace="certificate")
        wait_for(
            lambda: "is not the key of server.ssl_certificate" in server.stderr_text(),
            server,
            "the mismatch logged",
        )
        time.sleep(2.5)  # two more looks at the same files
        assert presented(server) == old
        assert server.stderr_text().count("is not the key of server.ssl_certificate") == 1

        os.replace(kept.with_name("key.pem"), key)
        new = der_of(cert)
        wait_for(lambda: presented(server) == new, server, "the whole pair served")


def test_sighup_loads_the_certificate_at_once(tmp_path: Path) -> None:
    with tls_server(tmp_path, tls_reload_seconds="0") as (server, cert, key):
        assert server.process is not None
        old = der_of(cert)
        new = der_of(renew(tmp_path, cert, key))
        time.sleep(1.5)
        assert presented(server) == old  # 0: no looking on its own
        server.process.send_signal(signal.SIGHUP)
        wait_for(lambda: presented(server) == new, server, "the certificate loaded on SIGHUP")
        assert server.process.poll() is None


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="workers need Linux")
def test_sighup_to_the_parent_renews_every_workers_certificate(tmp_path: Path) -> None:
    with tls_server(tmp_path, tls_reload_seconds="0", workers="2") as (server, cert, key):
        assert server.process is not None
        workers = workers_of(server, 2)
        new = der_of(renew(tmp_path, cert, key))
        server.process.send_signal(signal.SIGHUP)

        def every_worker_presents_the_new_one() -> bool:
            seen: dict[int, bytes] = {}
            for _ in range(64):
                with tls_socket(server) as sock:
                    holder = holder_of_socket(sock, workers)
                    seen[holder] = sock.getpeercert(binary_form=True) or b""
                if len(seen) == len(workers):
                    return all(der == new for der in seen.values())
            raise AssertionError(f"64 connections did not reach every worker: {set(seen)}")

        wait_for(every_worker_presents_the_new_one, server, "every worker on the new certificate")
        assert workers_of(server, 2) == workers  # reloaded, not replaced


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="workers need Linux")
def test_a_worker_dying_while_the_key_does_not_match_leaves_the_others_serving(
    tmp_path: Path,
) -> None:
    """Between a renewal's certificate and its key, a worker that dies (the OOM killer, a
    crash) is replaced by one that cannot load the pair: after three such quick deaths the
    parent stopped every worker, and the server was gone. Now the others serve on and a
    replacement is tried again later, and starts once the key is there."""
    with tls_server(tmp_path, tls_reload_seconds="1", workers="2") as (server, cert, key):
        assert server.process is not None
        victim, survivor = sorted(workers_of(server, 2))
        kept = renew(tmp_path, cert, key, replace="certificate")
        os.kill(victim, signal.SIGKILL)
        wait_for(
            lambda: "the other workers serve on" in server.stderr_text(),
            server,
            "replacements put off",
        )
        assert server.process.poll() is None
        assert survivor in workers_of(server, 1)
        unchecked = ssl._create_unverified_context()
        conn = http.client.HTTPSConnection(HOST, server.port, context=unchecked, timeout=30)
        assert get_root(conn, server) == 207
        conn.close()

        os.replace(kept.with_name("key.pem"), key)  # the renewal done
        assert len(workers_of(server, 2, timeout=WAIT)) == 2
        assert server.process.poll() is None
