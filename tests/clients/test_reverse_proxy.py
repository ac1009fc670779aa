"""davserver behind nginx, configured as README.md's "Behind a reverse proxy (nginx)" says.

The configuration is read from the README's ``nginx`` block, so the documented one is the one
tested: the test only fills in a free port, a self-signed certificate and davserver's address
(and fails, naming the line, if the README no longer has what it fills in). nginx terminates
TLS and passes requests on to a real ``davserver serve`` started with
``server.trusted_proxies=127.0.0.1``: on SQLite, and on PostgreSQL with two workers, as
production would run. Through it:

* litmus's five suites pass (MOVE and COPY name their Destination by the proxy's https URL);
* uploads with a Content-Length and chunked ones stream through (nginx logs a warning whenever
  it keeps a request or answer body on its disk: there is none), and read back byte for byte;
* an upload cut off half-way stores nothing and leaves the file's version as it was;
* the logbook has the client's address (a client on 127.0.0.2), not the proxy's.

Needs nginx (Debian package nginx-light; ``./dev test`` installs it), openssl and litmus:
without them the tests skip, unless the environment variable CI is set, where they fail.
"""

from __future__ import annotations

import dataclasses
import hashlib
import http.client
import json
import os
import re
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.certificates import self_signed
from tests.clients.test_litmus import SUITES, check_litmus
from tests.conftest import ENGINES
from tests.servers import HOST, LiveServer, basic_auth_header, free_port, run_live_server, tail

README = Path(__file__).resolve().parents[2] / "README.md"
NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
HAVE_NGINX = os.access(NGINX, os.X_OK)
START_TIMEOUT = 15.0
MIB = 1024 * 1024

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not HAVE_NGINX and not os.environ.get("CI"),
        reason=f"nginx is not installed at {NGINX} (apt-get install nginx-light; ./dev test does)",
    ),
]


@dataclasses.dataclass
class Proxied:
    """nginx on ``url`` (https) in front of ``server``; ``view`` is the server as clients
    reach it through nginx (its requests, fresh folders and litmus go there)."""

    url: str
    port: int
    server: LiveServer
    view: LiveServer
    cafile: Path
    error_log: Path

    def connection(self, source: str = HOST) -> http.client.HTTPSConnection:
        """A connection to nginx from the address ``source`` (any of 127.0.0.0/8)."""
        context = ssl.create_default_context(cafile=str(self.cafile))
        return http.client.HTTPSConnection(
            HOST, self.port, context=context, timeout=60, source_address=(source, 0)
        )

    def warnings(self) -> list[str]:
        return [line for line in self.error_log.read_text().splitlines() if "[warn]" in line]


def readme_nginx_config() -> str:
    """The README's ``nginx`` code block."""
    found = re.search(r"```nginx\n(.*?)```", README.read_text(encoding="utf-8"), re.S)
    assert found is not None, "README.md has no ```nginx block (Behind a reverse proxy)"
    return found.group(1)


def _fill_in(config: str, pattern: str, value: str) -> str:
    """``config`` with the one line matching ``pattern`` replaced by ``value``."""
    filled, count = re.subn(pattern, value, config, flags=re.M)
    assert count == 1, f"README's nginx block: expected one line like {pattern!r}, found {count}"
    return filled


def nginx_config(tmp: Path, port: int, upstream: str, cert: Path, key: Path) -> str:
    """nginx's whole configuration: the README's block, filled in for this test, in a main
    context that keeps every file nginx writes in ``tmp`` and runs it in the foreground."""
    block = readme_nginx_config()
    block = _fill_in(block, r"^(\s*)listen 443 ssl;", rf"\g<1>listen {HOST}:{port} ssl;")
    block = _fill_in(block, r"^(\s*)ssl_certificate\s+\S+;", rf"\g<1>ssl_certificate {cert};")
    block = _fill_in(
        block, r"^(\s*)ssl_certificate_key\s+\S+;", rf"\g<1>ssl_certificate_key {key};"
    )
    block = _fill_in(block, r"^(\s*)server 127\.0\.0\.1:8080;", rf"\g<1>server {upstream};")
    return f"""daemon off;
pid {tmp}/nginx.pid;
error_log {tmp}/error.log warn;
events {{}}
http {{
    access_log {tmp}/access.log;
    client_body_temp_path {tmp}/client_body;
    proxy_temp_path {tmp}/proxy;
{block}
}}
"""


def _wait_for_port(port: int, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"nginx exited with {process.returncode}: {log.read_text()}")
        try:
            socket.create_connection((HOST, port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise AssertionError(f"nginx did not listen on {port} within {START_TIMEOUT:.0f} s")


@pytest.fixture(scope="module", params=ENGINES)
def proxied(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Proxied]:
    if not HAVE_NGINX:
        pytest.fail(f"CI is set, so the proxy tests must run, but {NGINX} is missing")
    tmp = tmp_path_factory.mktemp(f"proxy-{request.param}")
    extra = {"DAVSERVER_SERVER_TRUSTED_PROXIES": HOST}
    if request.param == "postgresql":
        extra["DAVSERVER_SERVER_WORKERS"] = "2"
    with run_live_server(request.param, tmp / "davserver", extra) as server:
        cert, key = self_signed(tmp)
        nginx_dir = tmp / "nginx"
        nginx_dir.mkdir()
        port = free_port()
        conf = nginx_dir / "nginx.conf"
        conf.write_text(nginx_config(nginx_dir, port, f"{HOST}:{server.port}", cert, key))
        error_log = nginx_dir / "error.log"
        # -e: the log for what goes wrong before the configuration is read (else /var/log/nginx).
        process = subprocess.Popen(
            [NGINX, "-p", str(nginx_dir), "-c", str(conf), "-e", str(error_log)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,  # what it says goes to error_log (-e) as well
        )
        try:
            _wait_for_port(port, process, error_log)
            url = f"https://{HOST}:{port}"
            view = dataclasses.replace(server, url=url)
            yield Proxied(url, port, server, view, cert, error_log)
        finally:
            process.send_signal(signal.SIGQUIT)  # graceful: finish what is in flight
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


@pytest.mark.parametrize("suite", SUITES)
def test_litmus_through_the_proxy(suite: str, proxied: Proxied, tmp_path: Path) -> None:
    check_litmus(suite, proxied.view, tmp_path)


def _request(
    proxied: Proxied,
    method: str,
    path: str,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
    *,
    source: str = HOST,
) -> tuple[int, bytes]:
    conn = proxied.connection(source)
    try:
        sent = {"Authorization": basic_auth_header(*proxied.server.auth), **(headers or {})}
        conn.request(method, path, body=body, headers=sent)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def _folder(proxied: Proxied) -> str:
    """A fresh folder's path, made through the proxy."""
    url = proxied.view.fresh_dir("proxy")
    return url[len(proxied.url) :]


def test_move_and_copy_take_the_destination_by_the_proxys_url(proxied: Proxied) -> None:
    folder = _folder(proxied)
    assert _request(proxied, "PUT", f"{folder}a.txt", b"through nginx")[0] == 201
    moved = {"Destination": f"{proxied.url}{folder}b.txt"}
    status, body = _request(proxied, "MOVE", f"{folder}a.txt", headers=moved)
    assert status == 201, body
    copied = {"Destination": f"{proxied.url}{folder}c%20d.txt", "Overwrite": "F"}
    status, body = _request(proxied, "COPY", f"{folder}b.txt", headers=copied)
    assert status == 201, body
    assert _request(proxied, "GET", f"{folder}c%20d.txt") == (200, b"through nginx")
    assert _request(proxied, "GET", f"{folder}a.txt")[0] == 404


def _put_streamed(proxied: Proxied, path: str, data: bytes, *, chunked: bool) -> int:
    """PUT ``data`` in 1 MiB pieces, with a Content-Length or chunked (as Finder sends)."""
    conn = proxied.connection()
    try:
        conn.putrequest("PUT", path)
        conn.putheader("Authorization", basic_auth_header(*proxied.server.auth))
        if chunked:
            conn.putheader("Transfer-Encoding", "chunked")
        else:
            conn.putheader("Content-Length", str(len(data)))
        conn.endheaders()
        for start in range(0, len(data), MIB):
            piece = data[start : start + MIB]
            conn.send(b"%x\r\n%s\r\n" % (len(piece), piece) if chunked else piece)
        if chunked:
            conn.send(b"0\r\n\r\n")
        response = conn.getresponse()
        response.read()
        return response.status
    finally:
        conn.close()


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_uploads_and_downloads_stream_through(proxied: Proxied, chunked: bool) -> None:
    folder = _folder(proxied)
    data = secrets.token_bytes(24 * MIB + 123)
    before = len(proxied.warnings())
    assert _put_streamed(proxied, f"{folder}big.bin", data, chunked=chunked) == 201
    status, body = _request(proxied, "GET", f"{folder}big.bin")
    assert status == 200
    assert hashlib.sha256(body).hexdigest() == hashlib.sha256(data).hexdigest()
    # "a client request body is buffered to a temporary file", "an upstream response is
    # buffered to a temporary file": what the README's buffering lines are there to prevent.
    assert proxied.warnings()[before:] == []


def _cut_off_put(proxied: Proxied, path: str) -> None:
    """A PUT that announces 8 MiB, sends 1 MiB and hangs up."""
    context = ssl.create_default_context(cafile=str(proxied.cafile))
    auth = basic_auth_header(*proxied.server.auth)
    head = (
        f"PUT {path} HTTP/1.1\r\nHost: {HOST}:{proxied.port}\r\n"
        f"Authorization: {auth}\r\nContent-Length: {8 * MIB}\r\n\r\n"
    )
    with (
        socket.create_connection((HOST, proxied.port)) as raw,
        context.wrap_socket(raw, server_hostname=HOST) as tls,
    ):
        tls.sendall(head.encode() + secrets.token_bytes(MIB))
        time.sleep(0.3)  # for nginx to pass it on


def _uploads_settled(server: LiveServer) -> None:
    """Wait until no upload is in the server's blob tmp/ folder: the cut-off ones are over
    (whatever the server made of them; its answer went nowhere)."""
    tmp = server.data_dir / "blobs" / "tmp"
    deadline = time.monotonic() + 15
    time.sleep(0.5)
    while any(tmp.iterdir()):
        assert time.monotonic() < deadline, f"uploads still in {tmp}: {list(tmp.iterdir())}"
        time.sleep(0.1)


def test_an_upload_cut_off_at_the_proxy_stores_nothing(proxied: Proxied) -> None:
    folder = _folder(proxied)
    assert _request(proxied, "PUT", f"{folder}doc.bin", b"version one")[0] == 201
    _cut_off_put(proxied, f"{folder}doc.bin")
    _cut_off_put(proxied, f"{folder}new.bin")
    _uploads_settled(proxied.server)
    assert _request(proxied, "GET", f"{folder}doc.bin") == (200, b"version one")
    assert _request(proxied, "GET", f"{folder}new.bin")[0] == 404
    versions = f"/versions{folder}doc.bin/"
    status, body = _request(proxied, "PROPFIND", versions, headers={"Depth": "1"})
    assert status == 207
    assert body.count(b"<D:response>") == 2, body  # the folder and version 1 only


def test_the_logbook_has_the_clients_address_not_the_proxys(proxied: Proxied) -> None:
    folder = _folder(proxied)
    status, _ = _request(proxied, "PUT", f"{folder}from-afar.txt", b"hi", source="127.0.0.2")
    assert status == 201
    rows = json.loads(proxied.server.cli("audit", "--op", "file:create", "--limit", "20", "--json"))
    mine = [row for row in rows if row["details"].get("name") == "from-afar.txt"]
    assert [row["remote_addr"] for row in mine] == ["127.0.0.2"], tail(json.dumps(rows), 20)
