"""Running davserver for end-to-end tests: a real subprocess, or in-process on a cheroot thread.

Both give the same interface (``DavServer``): ``url``, ``files_url``, ``user``, ``password``,
``auth``, ``data_dir``, ``db_url``, plus ``request()`` for raw HTTP and ``fresh_dir()`` for a new
unique collection under ``/files/``. The in-process one also exposes ``app`` (``app.db``,
``app.files``) so tests can look at the rows behind what a client did.

Each server gets its own temporary data folder and its own fresh database
(``tests.dbs.fresh_database_url``), so servers never share state with each other or with a
developer's ``./data``.
"""

from __future__ import annotations

import base64
import http.client
import os
import secrets
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
import urllib.parse
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from tests.dbs import fresh_database_url

if TYPE_CHECKING:
    from cheroot import wsgi

    from davserver.app import Application

REPO_ROOT = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"
START_TIMEOUT = 30.0
STOP_TIMEOUT = 15.0
TEST_USER = "davtest"


@dataclass(frozen=True)
class Response:
    status: int
    headers: Mapping[str, str]
    body: bytes


@dataclass
class DavServer:
    """A running davserver reachable over HTTP on loopback."""

    engine: str
    url: str  # "http://127.0.0.1:PORT", no trailing slash
    user: str
    password: str
    data_dir: Path
    db_url: str

    @property
    def files_url(self) -> str:
        return self.url + "/files/"

    @property
    def auth(self) -> tuple[str, str]:
        return (self.user, self.password)

    @property
    def port(self) -> int:
        return int(urllib.parse.urlsplit(self.url).port or 80)

    def request(
        self,
        method: str,
        url_or_path: str,
        body: bytes | None = None,
        headers: Mapping[str, str] | None = None,
        *,
        auth: bool = True,
        timeout: float = 30.0,
    ) -> Response:
        """One HTTP request with Basic auth; ``url_or_path`` is a full URL or a path."""
        return http_request(
            method,
            url_or_path if "://" in url_or_path else self.url + url_or_path,
            body,
            headers,
            auth=self.auth if auth else None,
            timeout=timeout,
        )

    def fresh_dir(self, prefix: str = "t") -> str:
        """MKCOL ``/files/<prefix>-<random>/`` and return its URL (with the trailing slash)."""
        url = f"{self.files_url}{prefix}-{uuid.uuid4().hex[:12]}/"
        response = self.request("MKCOL", url)
        if response.status != 201:
            raise AssertionError(
                f"MKCOL {url} answered {response.status}: {response.body[:500]!r}"
                + self.diagnostics()
            )
        return url

    def diagnostics(self) -> str:
        """Extra text for assertion messages (the server's log, where there is one)."""
        return ""


@dataclass
class LiveServer(DavServer):
    """``python -m davserver serve`` in a subprocess."""

    process: subprocess.Popen[bytes] | None = None
    stdout_path: Path = field(default_factory=Path)
    stderr_path: Path = field(default_factory=Path)
    s3_bucket: str = ""  # where its blobs are, when in an S3 store

    def stderr_text(self, start: int = 0) -> str:
        """The server's stderr from byte offset ``start``."""
        try:
            with open(self.stderr_path, "rb") as fh:
                fh.seek(start)
                return fh.read().decode("utf-8", "replace")
        except OSError:
            return ""

    def stderr_size(self) -> int:
        try:
            return self.stderr_path.stat().st_size
        except OSError:
            return 0

    def diagnostics(self) -> str:
        return "\n--- server stderr (tail) ---\n" + tail(self.stderr_text(), 40)

    def cli(self, *args: str) -> str:
        """Run ``python -m davserver ARGS`` on this server's database; what it printed
        (AssertionError when it fails)."""
        done = subprocess.run(
            [sys.executable, "-m", "davserver", *args],
            cwd=self.data_dir,
            env=_server_env(self.data_dir, self.db_url, self.user, self.password),
            capture_output=True,
            text=True,
            timeout=120,
        )
        if done.returncode != 0:
            command = " ".join(args)
            raise AssertionError(f"davserver {command} exited {done.returncode}: {done.stderr}")
        return done.stdout


@dataclass
class InprocServer(DavServer):
    """The application built in this process, served by cheroot on a background thread."""

    app: Application | None = None
    server: wsgi.Server | None = None
    thread: threading.Thread | None = None

    @property
    def application(self) -> Application:
        assert self.app is not None
        return self.app


def tail(text: str, lines: int) -> str:
    return "\n".join(text.splitlines()[-lines:])


def basic_auth_header(user: str, password: str) -> str:
    token = base64.b64encode(f"{user}:{password}".encode()).decode("ascii")
    return f"Basic {token}"


def http_request(
    method: str,
    url: str,
    body: bytes | None = None,
    headers: Mapping[str, str] | None = None,
    *,
    auth: tuple[str, str] | None = None,
    timeout: float = 30.0,
) -> Response:
    """A single request on a fresh connection; any HTTP status is returned, not raised."""
    parts = urllib.parse.urlsplit(url)
    conn: http.client.HTTPConnection
    if parts.scheme == "https":  # a test server's own certificate: not checked
        unchecked = ssl._create_unverified_context()
        conn = http.client.HTTPSConnection(
            parts.hostname or HOST, parts.port, timeout=timeout, context=unchecked
        )
    else:
        conn = http.client.HTTPConnection(parts.hostname or HOST, parts.port, timeout=timeout)
    sent = dict(headers or {})
    if auth is not None:
        sent.setdefault("Authorization", basic_auth_header(*auth))
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    try:
        conn.request(method, path, body=body, headers=sent)
        resp = conn.getresponse()
        return Response(resp.status, dict(resp.getheaders()), resp.read())
    finally:
        conn.close()


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def _check_files_root(server: DavServer) -> None:
    """The server answers and the test user can list /files/; raise with diagnostics if not."""
    response = server.request("PROPFIND", "/files/", headers={"Depth": "0"})
    if response.status != 207:
        raise RuntimeError(
            f"davserver ({server.engine}) is up but PROPFIND /files/ as {server.user!r} "
            f"answered {response.status}: {response.body[:500]!r}" + server.diagnostics()
        )


# --- a real subprocess ----------------------------------------------------------------------


def _server_env(data_dir: Path, db_url: str, user: str, password: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DAVSERVER_")}
    env.update(
        DAVSERVER_DATA_DIR=str(data_dir),
        DAVSERVER_DATABASE_URL=db_url,
        DAVSERVER_ADMIN_USER=user,
        DAVSERVER_ADMIN_PASSWORD=password,
        PYTHONUNBUFFERED="1",
        PYTHONPATH=os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH")) if p),
    )
    return env


def _wait_until_answering(server: LiveServer, timeout: float) -> None:
    """Poll until the server answers any HTTP request; raise with its stderr on failure."""
    assert server.process is not None
    deadline = time.monotonic() + timeout
    last_error = "no attempt"
    while time.monotonic() < deadline:
        code = server.process.poll()
        if code is not None:
            raise ServerExited(code, server.stderr_text())
        try:
            http_request("OPTIONS", server.url + "/", timeout=2.0)
            return
        except OSError as exc:
            last_error = f"{type(exc).__name__}: {exc}"
        time.sleep(0.1)
    raise RuntimeError(
        f"davserver ({server.engine}) did not answer on {server.url} within {timeout:.0f} s "
        f"(last error: {last_error})" + server.diagnostics()
    )


class ServerExited(RuntimeError):
    def __init__(self, code: int, stderr: str) -> None:
        super().__init__(
            f"davserver exited with status {code} before answering\n"
            f"--- server stderr ---\n{tail(stderr, 60)}"
        )
        self.code = code
        self.stderr = stderr


def _stop_process(server: LiveServer) -> None:
    """SIGTERM, then check that it exits (cleanly) within STOP_TIMEOUT."""
    proc = server.process
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=STOP_TIMEOUT)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=STOP_TIMEOUT)
        raise RuntimeError(
            f"davserver ({server.engine}) did not exit within {STOP_TIMEOUT:.0f} s of SIGTERM; "
            "killed it" + server.diagnostics()
        ) from None
    if proc.returncode not in (0, -signal.SIGTERM):
        raise RuntimeError(
            f"davserver ({server.engine}) exited with status {proc.returncode} on SIGTERM"
            + server.diagnostics()
        )


@contextmanager
def run_live_server(
    engine: str, tmp_dir: Path, extra_env: Mapping[str, str] | None = None
) -> Iterator[LiveServer]:
    """Start ``python -m davserver serve`` on a free port with its own data folder and database.

    ``extra_env`` sets more ``DAVSERVER_*`` options (with a certificate, ``url`` is https). Yields
    once the server answers HTTP and the test user can list /files/; on exit terminates the
    process and raises if it does not exit cleanly.
    """
    scheme = "https" if (extra_env or {}).get("DAVSERVER_SERVER_SSL_CERTIFICATE") else "http"
    data_dir = tmp_dir / "data"
    data_dir.mkdir(parents=True, exist_ok=True)
    password = secrets.token_urlsafe(16)
    with fresh_database_url(engine, str(tmp_dir)) as db_url:
        env = {**_server_env(data_dir, db_url, TEST_USER, password), **(extra_env or {})}
        server: LiveServer | None = None
        try:
            for attempt in range(3):
                port = free_port()
                server = LiveServer(
                    engine=engine,
                    url=f"{scheme}://{HOST}:{port}",
                    user=TEST_USER,
                    password=password,
                    data_dir=data_dir,
                    db_url=db_url,
                    stdout_path=tmp_dir / f"server-{attempt}.stdout",
                    stderr_path=tmp_dir / f"server-{attempt}.stderr",
                )
                with open(server.stdout_path, "wb") as out, open(server.stderr_path, "wb") as err:
                    # cwd is the data folder, so a developer's ./config.yaml is never read.
                    command = [sys.executable, "-m", "davserver", "serve"]
                    server.process = subprocess.Popen(
                        [*command, "--host", HOST, "--port", str(port)],
                        cwd=data_dir,
                        env=env,
                        stdin=subprocess.DEVNULL,
                        stdout=out,
                        stderr=err,
                    )
                try:
                    _wait_until_answering(server, START_TIMEOUT)
                    break
                except ServerExited as exc:
                    # Lost the race for the port to another process: try another one.
                    if "Address already in use" in exc.stderr and attempt < 2:
                        continue
                    raise
            assert server is not None
            _check_files_root(server)
            yield server
        finally:
            if server is not None:
                _stop_process(server)


# --- in this process -------------------------------------------------------------------------


@contextmanager
def run_inproc_server(
    engine: str,
    tmp_dir: Path,
    *,
    migrate_in_child: bool = False,
    existing: tuple[str, str] | None = None,
    **overrides: object,
) -> Iterator[InprocServer]:
    """Build the application with ``prepare()`` and serve it by cheroot on a thread.

    ``overrides`` are settings in ``load_settings`` form (``auth__ban_seconds=2``);
    ``migrate_in_child`` as ``davserver serve`` does (only before this process has threads).
    ``existing`` (database URL, test user's password) serves a database made before, with the
    blobs in ``tmp_dir``, instead of a fresh one.
    """
    from davserver.bootstrap import prepare
    from davserver.config import load_settings
    from davserver.server import make_server
    from davserver.tls import tls_enabled

    data_dir = tmp_dir / "data"
    data_dir.mkdir(parents=True, exist_ok=True)
    password = existing[1] if existing else secrets.token_urlsafe(16)
    database = nullcontext(existing[0]) if existing else fresh_database_url(engine, str(tmp_dir))
    with database as db_url:
        settings = load_settings(
            None,
            env={},
            data_dir=str(data_dir),
            database__url=db_url,
            admin__user=TEST_USER,
            admin__password=password,
            **overrides,
        )
        app, _ = prepare(settings, migrate_in_child=migrate_in_child)
        try:
            server = make_server(app, HOST, 0)
            server.prepare()  # binds: bind_addr now holds the real port
            port = int(server.bind_addr[1])
            thread = threading.Thread(target=server.serve, name=f"davserver-{engine}", daemon=True)
            thread.start()
            info = InprocServer(
                engine=engine,
                url=f"{'https' if tls_enabled(settings.server) else 'http'}://{HOST}:{port}",
                user=TEST_USER,
                password=password,
                data_dir=data_dir,
                db_url=db_url,
                app=app,
                server=server,
                thread=thread,
            )
            try:
                _check_files_root(info)
                yield info
            finally:
                server.stop()
                thread.join(STOP_TIMEOUT)
                if thread.is_alive():
                    raise RuntimeError(f"in-process davserver ({engine}) did not stop")
        finally:
            app.close()
