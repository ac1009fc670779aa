"""``server.workers``: several server processes on one port, as one server to every client.

What a user relies on: connections land on every worker; what one worker writes or locks the
others see at once; a worker that dies is replaced while the others keep answering; SIGTERM
stops them all cleanly; killing the parent leaves no worker behind.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from davserver.config import ConfigError, load_settings
from davserver.workers import check_supported, worker_count
from tests.conftest import ENGINES
from tests.integration.test_dav_http import Connection
from tests.servers import (
    HOST,
    REPO_ROOT,
    LiveServer,
    basic_auth_header,
    free_port,
    http_request,
    run_live_server,
)
from tests.unit.test_metrics import sample

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="worker processes need Linux (SO_REUSEPORT)"
)

WORKERS = 2
SERVE = [sys.executable, "-m", "davserver", "serve"]
LOCK = (
    b'<?xml version="1.0"?><D:lockinfo xmlns:D="DAV:"><D:lockscope><D:exclusive/>'
    b"</D:lockscope><D:locktype><D:write/></D:locktype></D:lockinfo>"
)


@pytest.fixture(params=ENGINES)
def server(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[LiveServer]:
    with run_live_server(
        request.param, tmp_path, extra_env={"DAVSERVER_SERVER_WORKERS": str(WORKERS)}
    ) as srv:
        yield srv


# --- which process is which ------------------------------------------------------------------


def _state_and_parent(pid: int) -> tuple[str, int] | None:
    """A process's state letter and parent from /proc; None once it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    state, ppid = stat.rpartition(")")[2].split()[:2]
    return state, int(ppid)


def _alive(pid: int) -> bool:
    found = _state_and_parent(pid)
    return found is not None and found[0] != "Z"


def children(pid: int) -> set[int]:
    """Live (not zombie) processes whose parent is ``pid``."""
    return {
        int(entry.name)
        for entry in Path("/proc").iterdir()
        if entry.name.isdigit()
        and (found := _state_and_parent(int(entry.name))) is not None
        and found[1] == pid
        and found[0] != "Z"
    }


def workers_of(server: LiveServer, count: int = WORKERS, timeout: float = 30.0) -> set[int]:
    """The server's worker processes, once there are ``count`` of them."""
    assert server.process is not None
    deadline = time.monotonic() + timeout
    while True:
        found = children(server.process.pid)
        if len(found) == count or time.monotonic() > deadline:
            assert len(found) == count, f"workers {found}" + server.diagnostics()
            return found
        time.sleep(0.1)


def socket_inodes(pid: int) -> set[str]:
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    return inodes


def holder_of(conn: Connection, workers: set[int]) -> int:
    """The worker whose end of the TCP connection ``conn`` is (by /proc/net/tcp)."""
    assert conn.conn.sock is not None
    return holder_of_socket(conn.conn.sock, workers)


def holder_of_socket(sock: socket.socket, workers: set[int]) -> int:
    """The worker holding the other end of the connected socket ``sock``."""
    client_port = sock.getsockname()[1]
    server_port = sock.getpeername()[1]
    inode = None
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            # The server's end: its own port, and the client's as the remote one. The client's
            # port alone also names connections of other servers on this machine.
            local, remote = (int(f.rsplit(":", 1)[1], 16) for f in fields[1:3])
            if (local, remote) == (server_port, client_port) and fields[3] == "01":
                inode = fields[9]
    assert inode is not None, "the connection is not in /proc/net/tcp"
    holders = [pid for pid in workers if inode in socket_inodes(pid)]
    assert len(holders) == 1, holders
    return holders[0]


def connections_on_each(server: LiveServer, workers: set[int]) -> dict[int, Connection]:
    """One open connection to each worker (opening more until each has one), having answered."""
    held: dict[int, Connection] = {}
    for _ in range(64):
        conn = Connection(server)
        assert conn.request("PROPFIND", "/files/", headers={"Depth": "0"}).status == 207
        holder = holder_of(conn, workers)
        if holder in held:
            conn.close()  # cheroot keeps only so many idle connections (keep_alive_conn_limit)
            continue
        held[holder] = conn
        if len(held) == len(workers):
            return held
    raise AssertionError(f"64 connections did not reach every worker: {held}")


# --- the tests -------------------------------------------------------------------------------


def test_connections_reach_every_worker_and_they_see_each_others_writes_and_locks(
    server: LiveServer,
) -> None:
    workers = workers_of(server)
    held = connections_on_each(server, workers)
    first, second = (held[pid] for pid in sorted(workers))
    folder = server.fresh_dir()

    # Written through one worker, read through the other at once.
    assert first.request("PUT", folder + "doc.txt", b"version one").status == 201
    response = second.request("GET", folder + "doc.txt")
    assert (response.status, response.body) == (200, b"version one")

    # A lock taken through one worker holds on the other; its token works there.
    response = first.request("LOCK", folder + "doc.txt", LOCK, {"Timeout": "Second-60"})
    assert response.status == 200
    token = response.headers["Lock-Token"]
    assert second.request("PUT", folder + "doc.txt", b"no token").status == 423
    assert second.request("PUT", folder + "doc.txt", b"two", {"If": f"({token})"}).status == 204
    assert second.request("UNLOCK", folder + "doc.txt", None, {"Lock-Token": token}).status == 204
    response = first.request("GET", folder + "doc.txt")
    assert (response.status, response.body) == (200, b"two")
    for conn in held.values():
        conn.close()


def test_a_worker_that_dies_is_replaced_while_the_others_answer(server: LiveServer) -> None:
    workers = workers_of(server)
    held = connections_on_each(server, workers)
    victim, survivor = sorted(workers)
    log_start = server.stderr_size()

    os.kill(victim, signal.SIGKILL)
    # The surviving worker's connection answers straight away.
    assert held[survivor].request("PROPFIND", "/files/", headers={"Depth": "0"}).status == 207

    assert server.process is not None
    deadline = time.monotonic() + 30
    now = children(server.process.pid)
    while victim in now or len(now) < WORKERS:
        assert time.monotonic() < deadline, f"not replaced: {now}" + server.diagnostics()
        time.sleep(0.1)
        now = children(server.process.pid)
    assert survivor in now
    log = server.stderr_text(log_start)
    assert f"worker {victim} exited (signal SIGKILL)" in log
    # New connections are answered, by the replacement too.
    replacement = (now - {victim, survivor}).pop()
    reached = connections_on_each(server, now)
    assert reached[replacement].request("PUT", "/files/after.txt", b"replaced").status == 201
    for conn in [*held.values(), *reached.values()]:
        conn.close()


def test_metrics_count_every_worker_whichever_answers_the_scrape(server: LiveServer) -> None:
    """A scrape reaches whichever worker the kernel picks: each answers for all of them, and a
    worker that replaces a dead one carries its totals on (Prometheus reads a counter that
    goes back as a restart)."""
    workers = workers_of(server)
    held = connections_on_each(server, workers)
    for conn in held.values():
        for _ in range(4):
            assert conn.request("OPTIONS", "/files/").status == 200

    def options(conn: Connection) -> float:
        response = conn.request("GET", "/metrics")
        assert response.status == 200, response.body[:300]
        text = response.body.decode()
        assert sample(text, "davserver_worker_processes") == WORKERS
        return sample(text, "davserver_http_requests_total", 'method="OPTIONS",code="2xx"')

    # A request is counted when the server closes its response, just after the client has
    # it: the last OPTIONS may land a moment after a scrape on the other worker.
    deadline = time.monotonic() + 5
    while (seen := {pid: options(conn) for pid, conn in held.items()}) != dict.fromkeys(held, 8):
        if time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert seen == dict.fromkeys(held, 8)

    victim, survivor = sorted(workers)
    os.kill(victim, signal.SIGKILL)
    assert server.process is not None
    deadline = time.monotonic() + 30
    while victim in (now := children(server.process.pid)) or len(now) < WORKERS:
        assert time.monotonic() < deadline, f"not replaced: {now}" + server.diagnostics()
        time.sleep(0.1)
    replacement = (now - {victim, survivor}).pop()
    reached = connections_on_each(server, now)
    assert options(reached[replacement]) == options(reached[survivor]) == 8  # nothing new
    for conn in [*held.values(), *reached.values()]:
        conn.close()


def test_sigterm_stops_every_worker(server: LiveServer) -> None:
    assert server.process is not None
    workers = workers_of(server)
    server.process.send_signal(signal.SIGTERM)
    assert server.process.wait(timeout=40) == 0
    assert not [pid for pid in workers if _alive(pid)]


def test_workers_stop_when_their_parent_is_killed(server: LiveServer) -> None:
    assert server.process is not None
    workers = workers_of(server)
    server.process.kill()
    server.process.wait(timeout=10)
    deadline = time.monotonic() + 30
    while left := [pid for pid in workers if _alive(pid)]:
        assert time.monotonic() < deadline, f"workers {left} outlived their parent"
        time.sleep(0.1)


# Loaded by every server process (PYTHONPATH): each upload, once its bytes are in, notes that
# it is held and waits for the release file before it is committed.
HOLD_UPLOADS = """
import os, time
from pathlib import Path
from davserver.services.files import FileService

_commit = FileService.commit_upload

def _held(self, *args, **kwargs):
    Path(os.environ["HELD_FILE"]).touch()
    while not Path(os.environ["RELEASE_FILE"]).exists():
        time.sleep(0.01)
    return _commit(self, *args, **kwargs)

FileService.commit_upload = _held
"""


@pytest.mark.parametrize("workers", [1, WORKERS])
def test_sigterm_lets_the_requests_in_progress_finish(tmp_path: Path, workers: int) -> None:
    """On SIGTERM the server stops after its open requests (up to 25 s).
    A worker process used to close its application and leave (os._exit) as soon as it stopped
    listening: an upload in progress was cut off, its client saw the connection reset and
    nothing was saved. A single process closed the application (the database pool, the
    logbook's batch of downloads) under its last requests."""
    hooks = tmp_path / "hooks"
    hooks.mkdir()
    (hooks / "sitecustomize.py").write_text(HOLD_UPLOADS)
    held, release = tmp_path / "held", tmp_path / "release"
    env = {
        "DAVSERVER_SERVER_WORKERS": str(workers),
        "PYTHONPATH": os.pathsep.join([str(hooks), str(REPO_ROOT)]),
        "HELD_FILE": str(held),
        "RELEASE_FILE": str(release),
    }
    with run_live_server("sqlite", tmp_path, extra_env=env) as server:
        assert server.process is not None
        answered: list[int] = []

        def upload() -> None:
            auth = (server.user, server.password)
            put = http_request("PUT", server.url + "/files/late.txt", b"saved", auth=auth)
            answered.append(put.status)

        uploading = threading.Thread(target=upload)
        uploading.start()
        deadline = time.monotonic() + 30
        while not held.exists():
            assert time.monotonic() < deadline, "the upload never arrived" + server.diagnostics()
            time.sleep(0.01)
        log_start = server.stderr_size()
        server.process.send_signal(signal.SIGTERM)
        while "finishing open requests" not in server.stderr_text(log_start):
            assert server.process.poll() is None, (
                "it left with the upload open" + server.diagnostics()
            )
            assert time.monotonic() < deadline, "it never stopped" + server.diagnostics()
            time.sleep(0.01)
        release.touch()
        uploading.join(30)
        assert answered == [201]
        assert server.process.wait(timeout=30) == 0


def test_sigterm_lets_an_upload_still_sending_its_body_finish(tmp_path: Path) -> None:
    """cheroot stopped reading the requests still open 5 s after SIGTERM (its default
    shutdown_timeout): an upload whose body was still on its way was cut (curl: connection
    reset), where the README promised it would finish. It gets 25 s now."""
    with run_live_server("sqlite", tmp_path) as server:
        assert server.process is not None
        body = b"u" * 200_000
        with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
            head = [
                "PUT /files/slow.bin HTTP/1.1",
                f"Host: 127.0.0.1:{server.port}",
                f"Authorization: {basic_auth_header(server.user, server.password)}",
                f"Content-Length: {len(body)}",
            ]
            sock.sendall(("\r\n".join(head) + "\r\n\r\n").encode() + body[:1000])
            time.sleep(0.5)
            server.process.send_signal(signal.SIGTERM)
            time.sleep(6)  # longer than cheroot's own 5 s
            sock.sendall(body[1000:])
            status = sock.makefile("rb").readline().split()[1:2]
        assert status == [b"201"], [*status, server.diagnostics()]
        assert server.process.wait(timeout=30) == 0


# A server whose housekeeping sweep takes ten minutes: it notes the sweeping process first.
SLOW_SWEEP = """
import os, sys, time
from davserver.housekeeping import Housekeeper

def slow(self):
    with open(os.environ["SWEEP_PID_FILE"], "w") as fh:
        fh.write(str(os.getpid()))
    time.sleep(600)

Housekeeper.run_once = slow
from davserver.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_a_long_sweep_holds_up_neither_a_replacement_nor_a_stop(tmp_path: Path) -> None:
    """Purging a large expired trash can take minutes. The parent sweeps in a child process of
    its own, so meanwhile it still replaces a dead worker, and SIGTERM ends the sweep with the
    rest instead of waiting for it."""
    sweep_pid_file = tmp_path / "sweep.pid"
    serve = ["serve", "--workers", str(WORKERS), "--host", HOST, "--port", str(free_port())]
    with open(tmp_path / "stderr", "wb") as err:
        proc = subprocess.Popen(
            [sys.executable, "-c", SLOW_SWEEP, *serve],
            cwd=tmp_path,
            env=server_env(tmp_path, SWEEP_PID_FILE=str(sweep_pid_file)),
            stdout=subprocess.DEVNULL,
            stderr=err,
        )
    try:
        deadline = time.monotonic() + 60
        while not sweep_pid_file.exists() or not sweep_pid_file.read_text():
            assert proc.poll() is None, (tmp_path / "stderr").read_text()
            assert time.monotonic() < deadline, "no sweep started"
            time.sleep(0.1)
        sweeper = int(sweep_pid_file.read_text())
        assert sweeper in children(proc.pid)  # a child sweeps, not the parent
        workers = children(proc.pid) - {sweeper}
        assert len(workers) == WORKERS

        victim = min(workers)
        os.kill(victim, signal.SIGKILL)
        deadline = time.monotonic() + 15
        while len(now := children(proc.pid) - {sweeper, victim}) < WORKERS:
            assert time.monotonic() < deadline, f"not replaced during the sweep: {now}"
            time.sleep(0.1)
        assert _alive(sweeper)

        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0
        assert not [pid for pid in {sweeper, *now} if _alive(pid)]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


# --- configuration -----------------------------------------------------------------------------


def test_worker_count() -> None:
    assert worker_count(1) == 1
    assert worker_count(3) == 3
    assert worker_count(0) == (os.cpu_count() or 1)
    with pytest.raises(ConfigError, match=r"server\.workers: expected a number from 0"):
        load_settings(None, env={"DAVSERVER_SERVER_WORKERS": "-1"})


def test_workers_need_linux(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "platform", "darwin")
    check_supported(1)  # one process needs nothing special
    with pytest.raises(ConfigError, match="need Linux"):
        check_supported(2)
    with pytest.raises(ConfigError, match="need Linux"):
        worker_count(2)


@pytest.mark.parametrize("workers", [1, 2])
def test_a_taken_port_is_one_clear_line(tmp_path: Path, workers: int) -> None:
    with taken_port() as port:
        done = serve_until_it_stops(tmp_path, "--port", str(port), "--workers", str(workers))
    assert done.returncode == 1
    assert f"davserver: cannot listen on {HOST}:{port}:" in done.stderr
    assert "Address already in use" in done.stderr
    assert "Traceback" not in done.stderr


def test_a_second_server_with_workers_on_a_served_port_is_refused(tmp_path: Path) -> None:
    """Worker processes share their port with SO_REUSEPORT, and so did those of a second
    ``serve --workers`` started by mistake on the same port with other settings: it came up,
    and the kernel sent each new connection to either, so files uploaded to one were missing
    on the next request. It is refused as a port taken by any other program is."""
    with run_live_server(
        "sqlite", tmp_path / "first", extra_env={"DAVSERVER_SERVER_WORKERS": str(WORKERS)}
    ) as first:
        second = tmp_path / "second"
        second.mkdir()
        port = str(first.port)
        done = serve_until_it_stops(second, "--port", port, "--workers", str(WORKERS))
    assert done.returncode == 1, done.stderr
    assert f"davserver: cannot listen on {HOST}:{port}:" in done.stderr
    assert "Address already in use" in done.stderr


def test_a_schema_that_cannot_be_brought_up_to_date_stops_the_start(tmp_path: Path) -> None:
    """The migration runs in a child process (the server never loads Alembic); when it fails,
    its error is shown and the server does not start."""
    (tmp_path / "davserver.sqlite3").write_bytes(b"not a database" * 100)
    done = serve_until_it_stops(tmp_path, "--port", "0")
    assert done.returncode == 1
    assert "file is not a database" in done.stderr  # the child's own error
    assert "davserver: bringing the database schema up to date failed" in done.stderr


def serve_until_it_stops(data_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """``davserver serve --host HOST *args`` on a server of its own in ``data_dir``, run until
    it exits (a minute at most), its output captured."""
    return subprocess.run(
        [*SERVE, "--host", HOST, *args],
        cwd=data_dir,
        env=server_env(data_dir),
        capture_output=True,
        text=True,
        timeout=60,
    )


def server_env(data_dir: Path, **extra: str) -> dict[str, str]:
    """This environment without any DAVSERVER_ setting, for a server of its own in
    ``data_dir`` (SQLite) with an admin password, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DAVSERVER_")}
    env.update(
        DAVSERVER_DATA_DIR=str(data_dir),
        DAVSERVER_ADMIN_PASSWORD="x" * 16,
        PYTHONPATH=str(REPO_ROOT),
        **extra,
    )
    return env


@contextmanager
def taken_port() -> Iterator[int]:
    """A port some other program listens on (without SO_REUSEPORT)."""
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        sock.listen()
        yield int(sock.getsockname()[1])


# cheroot's prepare() with a SIGTERM delivered to the process while it runs (the handler is
# in place by then): what a stop just after a start (systemd, a parent stopping its workers)
# meets.
SIGNAL_WHILE_STARTING = """
import os, signal, sys
from cheroot.server import HTTPServer

real_prepare = HTTPServer.prepare

def prepare(self):
    os.kill(os.getpid(), signal.SIGTERM)
    real_prepare(self)

HTTPServer.prepare = prepare
from davserver.cli import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.parametrize("workers", [1, WORKERS])
def test_a_stop_during_the_start_is_not_lost(tmp_path: Path, workers: int) -> None:
    """cheroot's stop() does nothing until prepare() has finished, which then serves for ever:
    a SIGTERM that came while a process was starting was lost. A worker replaced just before a
    stop went on serving until the parent killed it 30 s later; a single server went on."""
    port = str(free_port())
    serve = ["serve", "--workers", str(workers), "--host", HOST, "--port", port]
    with open(tmp_path / "stderr", "wb") as err:
        proc = subprocess.Popen(
            [sys.executable, "-c", SIGNAL_WHILE_STARTING, *serve],
            cwd=tmp_path,
            env=server_env(tmp_path),
            stdout=subprocess.DEVNULL,
            stderr=err,
        )
    try:
        if workers > 1:  # each worker stops itself; the parent then has none left
            assert proc.wait(timeout=20) in (0, 1), (tmp_path / "stderr").read_text()
        else:
            assert proc.wait(timeout=20) == 0, (tmp_path / "stderr").read_text()
    finally:
        left = _serving_on(port)
        for pid in left:  # what the old code left serving, orphaned once its parent was killed
            os.kill(pid, signal.SIGKILL)
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert not left, "processes still serving after the stop"


def _serving_on(port: str) -> list[int]:
    """The processes started with ``--port PORT``, whoever their parent is now."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                args = (entry / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if b"--port" in args and port.encode() in args:
                found.append(int(entry.name))
    return found
