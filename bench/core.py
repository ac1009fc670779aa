"""Core benchmark: davserver against stock WsgiDAV (FilesystemProvider) in one run.

Both servers run on 127.0.0.1 as separate processes, each on a fresh temp folder, and are driven
by the same keep-alive http.client code with Basic auth. Every round runs each workload on both
servers, alternating which goes first; the report shows medians with [min-max] over the rounds
and the davserver/stock ratio computed inside each round. See bench/README.md.

    .venv/bin/python bench/core.py            # 3 rounds, 1 GiB, 2000 x 4 KiB, 2000/10000 members
    .venv/bin/python bench/core.py --quick    # smoke run with small sizes
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import ctypes
import functools
import http.client
import json
import os
import platform
import re
import secrets
import shutil
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any, Literal

HERE = Path(__file__).resolve().parent
PROJECT = HERE.parent
VENV_PYTHON = PROJECT / ".venv" / "bin" / "python"
MIB = 1024 * 1024
# The RSS target is "under 150 MB"; RSS is shown in MiB, so the limit is 143.05 MiB.
RSS_LIMIT_MIB = 150e6 / MIB
CLK_TCK = os.sysconf("SC_CLK_TCK")
USER = "bench"
PG_DEFAULT = "postgresql+psycopg://postgres@127.0.0.1:5432"
DAVSERVER = "davserver"
STOCK = "stock"

LOCK_BODY = (
    b'<?xml version="1.0" encoding="utf-8"?>\n<D:lockinfo xmlns:D="DAV:"><D:lockscope>'
    b"<D:exclusive/></D:lockscope><D:locktype><D:write/></D:locktype>"
    b"<D:owner><D:href>bench</D:href></D:owner></D:lockinfo>"
)
PROPFIND_ALLPROP = (
    b'<?xml version="1.0" encoding="utf-8"?>\n<D:propfind xmlns:D="DAV:"><D:allprop/></D:propfind>'
)
RESPONSE_RE = re.compile(rb"<(?:[A-Za-z_][\w.-]*:)?response[\s>]")
OK_PUT = (200, 201, 204)


# --------------------------------------------------------------------------- sizes


@dataclass(frozen=True)
class Sizes:
    big_bytes: int
    small_count: int
    small_bytes: int
    members: tuple[int, ...]
    propfind_reps: int


FULL = Sizes(1024 * MIB, small_count=2000, small_bytes=4096, members=(2000, 10000), propfind_reps=5)
QUICK = Sizes(64 * MIB, small_count=200, small_bytes=4096, members=(200, 1000), propfind_reps=3)


def human_bytes(n: int) -> str:
    if n % (1024 * MIB) == 0:
        return f"{n // (1024 * MIB)} GiB"
    if n % MIB == 0:
        return f"{n // MIB} MiB"
    if n % 1024 == 0:
        return f"{n // 1024} KiB"
    return f"{n} B"


# --------------------------------------------------------------------------- /proc


def _ppid_map() -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as fh:
                raw = fh.read()
        except OSError:
            continue
        ppid = int(raw[raw.rindex(b")") + 2 :].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    return children


def process_tree(root: int) -> list[int]:
    """The pid and all its descendants."""
    children = _ppid_map()
    out = [root]
    i = 0
    while i < len(out):
        out.extend(children.get(out[i], ()))
        i += 1
    return out


def rss_kib(pids: Sequence[int]) -> int:
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/status", "rb") as fh:
                for line in fh:
                    if line.startswith(b"VmRSS:"):
                        total += int(line.split()[1])
                        break
        except OSError:
            continue
    return total


def cpu_times(pids: Sequence[int]) -> tuple[float, float]:
    """(user, system) CPU seconds of the processes, including their reaped children."""
    user = system = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat", "rb") as fh:
                raw = fh.read()
        except OSError:
            continue
        fields = raw[raw.rindex(b")") + 2 :].split()
        # fields[0] is field 3 (state); utime, stime, cutime, cstime are fields 14..17
        user += int(fields[11]) + int(fields[13])
        system += int(fields[12]) + int(fields[14])
    return user / CLK_TCK, system / CLK_TCK


class CpuMeter:
    """CPU used by the server process tree and by this (client) process inside a `with`."""

    def __init__(self, pids: Sequence[int]) -> None:
        self.pids = pids
        self.user = self.system = self.client = 0.0

    @property
    def server(self) -> float:
        return self.user + self.system

    def __enter__(self) -> CpuMeter:
        self._u, self._s = cpu_times(self.pids)
        self._c = sum(os.times()[:2])
        return self

    def __exit__(self, *exc: object) -> None:
        u, s = cpu_times(self.pids)
        self.user, self.system = u - self._u, s - self._s
        self.client = sum(os.times()[:2]) - self._c


class RssSampler:
    """Samples VmRSS of a process tree every `interval` seconds in a thread; peak in KiB."""

    def __init__(self, pid: int, interval: float = 0.02) -> None:
        self.pid = pid
        self.interval = interval
        self.pids = process_tree(pid)
        self.before = rss_kib(self.pids)
        self.peak = self.before
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def _run(self) -> None:
        n = 0
        while not self._stop.wait(self.interval):
            n += 1
            if n % 50 == 0:  # pick up new child processes about once a second
                self.pids = process_tree(self.pid)
            self.peak = max(self.peak, rss_kib(self.pids))
            self.samples += 1

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_kib(self.pids))


# --------------------------------------------------------------------------- HTTP client


class HttpError(RuntimeError):
    pass


class SetupTimeout(RuntimeError):
    pass


class Client:
    """One keep-alive HTTP/1.1 connection with Basic auth; reconnects only when it must."""

    def __init__(self, port: int, password: str, timeout: float = 600.0) -> None:
        self.port = port
        self.timeout = timeout
        token = base64.b64encode(f"{USER}:{password}".encode()).decode()
        self.auth = {"Authorization": f"Basic {token}"}
        self.conn: http.client.HTTPConnection | None = None
        self.connects = 0

    def connection(self) -> http.client.HTTPConnection:
        if self.conn is None:
            self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=self.timeout)
            self.conn.connect()
            self.conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.connects += 1
        return self.conn

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None

    def send(
        self, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None
    ) -> http.client.HTTPResponse:
        """Send a request and return the response with its body still unread."""
        conn = self.connection()
        try:
            conn.request(method, path, body=body, headers={**self.auth, **(headers or {})})
            return conn.getresponse()
        except BaseException:
            self.close()
            raise

    def finish(self, resp: http.client.HTTPResponse) -> None:
        if resp.will_close:
            self.close()

    def request(
        self, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None
    ) -> tuple[int, http.client.HTTPMessage, bytes]:
        resp = self.send(method, path, body, headers)
        try:
            data = resp.read()
        except BaseException:
            self.close()
            raise
        self.finish(resp)
        return resp.status, resp.headers, data

    def expect(
        self,
        method: str,
        path: str,
        ok: Sequence[int],
        body: Any = None,
        headers: dict[str, str] | None = None,
    ) -> tuple[int, http.client.HTTPMessage, bytes]:
        status, hdrs, data = self.request(method, path, body, headers)
        if status not in ok:
            snippet = data[:300].decode("utf-8", "replace").strip()
            raise HttpError(f"{method} {path} -> {status} {snippet}")
        return status, hdrs, data


def query_count(headers: http.client.HTTPMessage) -> int | None:
    value = headers.get("X-Query-Count")
    if value is None:
        return None
    try:
        return int(value.strip())
    except ValueError:
        return None


# --------------------------------------------------------------------------- servers


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _die_with_parent() -> None:
    """preexec_fn: SIGTERM the server if the bench process dies without cleaning up."""
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


@dataclass
class Server:
    name: str
    workdir: Path
    password: str
    port: int = 0
    proc: subprocess.Popen[bytes] | None = None
    log_path: Path | None = None
    db_name: str | None = None
    dead: str | None = None
    errors: list[str] = field(default_factory=list)
    setup: dict[str, Any] = field(default_factory=dict)
    rounds: list[dict[str, Any]] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def client(self, timeout: float = 600.0) -> Client:
        return Client(self.port, self.password, timeout)

    def log_tail(self, lines: int = 25) -> str:
        if self.log_path is None or not self.log_path.exists():
            return ""
        text = self.log_path.read_text("utf-8", "replace").splitlines()
        return "\n".join("    | " + line for line in text[-lines:])

    def check_alive(self) -> None:
        if self.proc is not None and self.proc.poll() is not None:
            self.dead = f"process exited with code {self.proc.returncode}"
            raise HttpError(f"{self.name}: {self.dead}")

    def start(self, cmd: list[str], env: dict[str, str], ready_timeout: float) -> None:
        self.env = env
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = self.port or free_port()  # a port set beforehand is kept
        self.log_path = self.workdir.parent / f"{self.name}.log"
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                [*cmd, "--port", str(self.port)],
                cwd=self.workdir,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=_die_with_parent,
            )
        self.wait_ready(ready_timeout)

    def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        last = "no answer"
        while time.monotonic() < deadline:
            try:
                self.check_alive()
            except HttpError:
                tail = self.log_tail()
                raise HttpError(f"{self.name} did not start: {self.dead}\n{tail}") from None
            try:
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=2)
                conn.request("OPTIONS", "/")
                status = conn.getresponse().status
                conn.close()
                if status < 500:
                    return
                last = f"OPTIONS / -> {status}"
            except OSError as exc:
                last = str(exc)
            time.sleep(0.2)
        raise HttpError(f"{self.name} not ready after {timeout:.0f} s ({last})\n{self.log_tail()}")

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
        # children that left the group still belong to the session's process group id
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)


def pg_conninfo(base_url: str) -> str:
    """SQLAlchemy URL (without database) -> libpq URL of the maintenance database."""
    url = re.sub(r"^postgresql\+\w+://", "postgresql://", base_url.rstrip("/"))
    return url + "/postgres"


def pg_create_db(base_url: str, name: str) -> None:
    _pg_admin(base_url, "CREATE DATABASE {}", name)


def pg_drop_db(base_url: str, name: str) -> None:
    _pg_admin(base_url, "DROP DATABASE IF EXISTS {} WITH (FORCE)", name)


def stop_servers(servers: Sequence[Server], pg_url: str) -> None:
    """Stop each server, then drop the PostgreSQL database it had (``--db postgresql``); a
    database that cannot be dropped is reported, and the others still are."""
    for s in servers:
        s.stop()
    for s in servers:
        if s.db_name:
            try:
                pg_drop_db(pg_url, s.db_name)
            except Exception as exc:
                print(f"could not drop database {s.db_name}: {exc}", file=sys.stderr)


def _pg_admin(
    base_url: str,
    template: Literal["CREATE DATABASE {}", "DROP DATABASE IF EXISTS {} WITH (FORCE)"],
    name: str,
) -> None:
    import psycopg  # installed with davserver
    from psycopg import sql

    with psycopg.connect(pg_conninfo(base_url), autocommit=True) as conn:
        conn.execute(sql.SQL(template).format(sql.Identifier(name)))


def start_stock(server: Server, python: str, *, fsync: bool = False) -> None:
    env = {**os.environ, "BENCH_PASSWORD": server.password}
    data = server.workdir / "files"
    data.mkdir(parents=True)
    cmd = [python, str(HERE / "stock_server.py"), "--host", "127.0.0.1", "--root", str(data)]
    if fsync:
        cmd.append("--fsync")
    server.start(cmd, env, ready_timeout=60)


def start_object_store(running: contextlib.ExitStack, store: str, base: Path) -> list[str]:
    """Start ``store`` (SeaweedFS or moto's server, as the tests run them) with a fresh
    bucket, stopped and emptied when ``running`` closes; the --dav-env items that put
    davserver's blobs there."""
    sys.path.insert(0, str(HERE.parent))
    from tests.s3 import fresh_bucket, run_s3_endpoint, server_env

    folder = base / store
    folder.mkdir(parents=True)
    endpoint = running.enter_context(run_s3_endpoint(folder, store))
    bucket = running.enter_context(fresh_bucket(endpoint.url))
    print(f"  blobs in {store} at {endpoint.url}, bucket {bucket}", flush=True)
    return [f"{key}={value}" for key, value in server_env(endpoint.url, bucket).items()]


def start_davserver(
    server: Server, python: str, db: str, pg_url: str, extra_env: Sequence[str] = ()
) -> None:
    env = {
        **os.environ,
        "DAVSERVER_DATA_DIR": str(server.workdir),
        "DAVSERVER_ADMIN_USER": USER,
        "DAVSERVER_ADMIN_PASSWORD": server.password,
        "DAVSERVER_LOGGING_QUERY_HEADER": "true",
    }
    env.pop("DAVSERVER_DATABASE_URL", None)
    for item in extra_env:
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"--dav-env {item!r}: expected KEY=VALUE")
        env[key] = value
    if db == "postgresql":
        server.db_name = f"davserver_bench_{secrets.token_hex(4)}"
        pg_create_db(pg_url, server.db_name)
        env["DAVSERVER_DATABASE_URL"] = f"{pg_url.rstrip('/')}/{server.db_name}"
    cmd = [python, "-m", "davserver", "serve", "--host", "127.0.0.1"]
    server.start(cmd, env, ready_timeout=180)


# --------------------------------------------------------------------------- workloads


def big_body(total: int, salt: int) -> Iterator[bytes | bytearray | memoryview]:
    """`total` bytes in 1 MiB chunks; every chunk starts with (salt, index), so none repeats."""
    buf = bytearray(os.urandom(MIB))
    view = memoryview(buf)
    sent = 0
    index = 0
    while sent < total:
        n = min(MIB, total - sent)
        struct.pack_into("<QQ", buf, 0, salt, index)
        yield buf if n == MIB else view[:n]
        sent += n
        index += 1


def run_at_once(work: Callable[[int], object], count: int) -> tuple[float, list[BaseException]]:
    """``work(0)`` .. ``work(count - 1)``, each on a thread of its own, started together;
    (the seconds until the last ended, what any of them raised)."""
    errors: list[BaseException] = []

    def run(index: int) -> None:
        try:
            work(index)
        except BaseException as exc:  # returned to the caller
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(index,)) for index in range(count)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return time.perf_counter() - started, errors


def put_files(
    client: Client, folder: str, count: int, size: int, tag: int, start: int = 0
) -> tuple[float, list[float], list[int]]:
    """PUT `count` files of `size` bytes one after another; (seconds, latencies, query counts)."""
    body = bytearray(os.urandom(size))
    lat: list[float] = []
    qcs: list[int] = []
    t_start = time.perf_counter()
    for i in range(start, start + count):
        struct.pack_into("<QQ", body, 0, tag, i)
        t0 = time.perf_counter()
        _, hdrs, _ = client.expect("PUT", f"{folder}f{i:05d}.bin", OK_PUT, bytes(body))
        lat.append(time.perf_counter() - t0)
        qc = query_count(hdrs)
        if qc is not None:
            qcs.append(qc)
    return time.perf_counter() - t_start, lat, qcs


def count_responses(body: bytes) -> int:
    return len(RESPONSE_RE.findall(body))


def propfind(client: Client, folder: str) -> tuple[float, bytes, int | None]:
    t0 = time.perf_counter()
    _, hdrs, data = client.expect(
        "PROPFIND",
        folder,
        (207,),
        PROPFIND_ALLPROP,
        {"Depth": "1", "Content-Type": 'application/xml; charset="utf-8"'},
    )
    return time.perf_counter() - t0, data, query_count(hdrs)


class Bench:
    def __init__(self, args: argparse.Namespace, sizes: Sizes, servers: list[Server]) -> None:
        self.args = args
        self.sizes = sizes
        self.servers = servers
        self.salt: dict[tuple[str, int], int] = {}

    def log(self, msg: str) -> None:
        print(msg, flush=True)

    # ---- setup, once per server

    def setup(self, s: Server) -> None:
        c = s.client()
        try:
            # sanity: auth works, a small file round-trips byte for byte
            probe = os.urandom(self.sizes.small_bytes)
            c.expect("PUT", "/files/probe.bin", OK_PUT, probe)
            _, hdrs, got = c.expect("GET", "/files/probe.bin", (200,))
            if got != probe:
                raise HttpError(f"GET returned {len(got)} bytes that differ from the PUT")
            s.setup["probe_get_qc"] = query_count(hdrs)
            deadline = time.monotonic() + self.args.setup_timeout
            for n in self.sizes.members:
                folder = f"/files/pf{n}/"
                c.expect("MKCOL", folder, (201,))
                t0 = time.perf_counter()
                last_note = t0
                done = 0
                put_secs = 0.0
                while done < n:
                    if time.monotonic() > deadline:
                        raise SetupTimeout(
                            f"creating {folder}: only {done} of {n} members after the"
                            f" --setup-timeout of {self.args.setup_timeout:.0f} s"
                            f" ({done / put_secs if put_secs else 0:.0f} files/s)"
                        )
                    batch = min(250, n - done)
                    secs, _, _ = put_files(
                        c, folder, batch, self.sizes.small_bytes, tag=10**9 + n, start=done
                    )
                    done += batch
                    put_secs += secs
                    if time.perf_counter() - last_note > 15 and done < n:
                        last_note = time.perf_counter()
                        self.log(
                            f"  {s.name:9s} ... {done}/{n} members in {folder}"
                            f" ({done / put_secs:.0f} files/s)"
                        )
                total = time.perf_counter() - t0
                secs_pf, data, qc = propfind(c, folder)  # warm-up, and check the member count
                got_n = count_responses(data)
                s.setup[f"pf{n}_ready"] = True
                s.setup[f"pf{n}_create_s"] = total
                s.setup[f"pf{n}_create_fps"] = n / put_secs
                s.setup[f"pf{n}_warmup_ms"] = secs_pf * 1000
                s.setup[f"pf{n}_warmup_qc"] = qc
                s.setup[f"pf{n}_responses"] = got_n
                note = "" if got_n == n + 1 else f"  (!! expected {n + 1} <response>s)"
                if got_n != n + 1:
                    s.errors.append(f"setup: PROPFIND {folder} returned {got_n} responses")
                qctext = f", X-Query-Count {qc}" if qc is not None else ""
                self.log(
                    f"  {s.name:9s} created {n} members in {total:.1f} s"
                    f" ({n / put_secs:.0f} files/s); warm-up PROPFIND {secs_pf * 1000:.0f} ms,"
                    f" {len(data):,} bytes, {got_n} responses{qctext}{note}"
                )
        except SetupTimeout as exc:
            s.errors.append(f"setup: {exc}; the larger PROPFIND folders are skipped")
            self.log(f"  {s.name:9s} SETUP TIMEOUT: {exc}; the larger PROPFIND folders are skipped")
        finally:
            c.close()

    # ---- workloads; each returns metrics for one server in one round

    def big_path(self, r: int) -> str:
        return f"/files/big-r{r + 1}.bin"

    def w_put_big(self, s: Server, r: int) -> dict[str, Any]:
        n = self.sizes.big_bytes
        salt = secrets.randbits(63)
        c = s.client()
        try:
            with RssSampler(s.pid) as rss, CpuMeter(rss.pids) as cpu:
                t0 = time.perf_counter()
                resp = c.send(
                    "PUT",
                    self.big_path(r),
                    big_body(n, salt),
                    {"Content-Length": str(n), "Content-Type": "application/octet-stream"},
                )
                resp.read()
                secs = time.perf_counter() - t0
            if resp.status not in OK_PUT:
                raise HttpError(f"PUT {self.big_path(r)} -> {resp.status}")
            self.salt[(s.name, r)] = salt
            return {
                "put_mbps": n / secs / 1e6,
                "put_s": secs,
                "put_cpu_per_gib": cpu.server * (1024 * MIB) / n,
                "put_sys_per_gib": cpu.system * (1024 * MIB) / n,
                "put_client_cpu_per_gib": cpu.client * (1024 * MIB) / n,
                "put_rss_before": rss.before / 1024,
                "put_rss_peak": rss.peak / 1024,
                "put_rss_growth": (rss.peak - rss.before) / 1024,
                "put_qc": query_count(resp.headers),
            }
        finally:
            c.close()

    def w_get_big(self, s: Server, r: int) -> dict[str, Any]:
        if (s.name, r) not in self.salt:
            raise HttpError("skipped: the PUT of this round failed")
        n = self.sizes.big_bytes
        buf = memoryview(bytearray(MIB))
        c = s.client()
        try:
            with RssSampler(s.pid) as rss, CpuMeter(rss.pids) as cpu:
                t0 = time.perf_counter()
                resp = c.send("GET", self.big_path(r))
                got = 0
                while True:
                    k = resp.readinto(buf)
                    if not k:
                        break
                    got += k
                secs = time.perf_counter() - t0
            c.finish(resp)
            if resp.status != 200:
                raise HttpError(f"GET {self.big_path(r)} -> {resp.status}")
            if got != n:
                raise HttpError(f"GET {self.big_path(r)} returned {got} bytes, expected {n}")
            self.verify_chunks(c, s, r)
            return {
                "get_mbps": n / secs / 1e6,
                "get_s": secs,
                "get_cpu_per_gib": cpu.server * (1024 * MIB) / n,
                "get_sys_per_gib": cpu.system * (1024 * MIB) / n,
                "get_client_cpu_per_gib": cpu.client * (1024 * MIB) / n,
                "get_rss_before": rss.before / 1024,
                "get_rss_peak": rss.peak / 1024,
                "get_rss_growth": (rss.peak - rss.before) / 1024,
                "get_qc": query_count(resp.headers),
            }
        finally:
            c.close()

    def verify_chunks(self, c: Client, s: Server, r: int) -> None:
        """Untimed: a few Range GETs check that the stored bytes are the ones sent."""
        salt = self.salt[(s.name, r)]
        chunks = (self.sizes.big_bytes + MIB - 1) // MIB
        for index in sorted({0, chunks // 2, chunks - 1}):
            off = index * MIB
            rng = {"Range": f"bytes={off}-{off + 15}"}
            resp = c.send("GET", self.big_path(r), headers=rng)
            if resp.status != 206:
                c.close()  # do not read a whole-file 200 answer
                raise HttpError(f"Range GET -> {resp.status}, expected 206")
            data = resp.read()
            c.finish(resp)
            if data != struct.pack("<QQ", salt, index):
                raise HttpError(f"content check failed at offset {off}: got {data[:16]!r}")

    def delete_big(self, s: Server, r: int) -> None:
        """Remove the big file, bytes included. davserver's DELETE moves it to the trash and
        keeps its blob, so its trash is purged and its blobs collected, as stock's DELETE
        removes its file: otherwise davserver's copy stays in the page cache, and on these VMs
        the next round's big PUT then fills the page cache from memory the hypervisor took
        back, which costs stock as much when it keeps its files (README)."""
        c = s.client()
        try:
            c.expect("DELETE", self.big_path(r), (200, 204, 404))
        finally:
            c.close()
        if s.name == DAVSERVER:
            for command in (["trash", "purge", "--older-than", "0"], ["gc", "--grace", "0"]):
                subprocess.run(
                    [self.args.python, "-m", "davserver", *command, "--quiet"],
                    cwd=s.workdir,
                    env=s.env,
                    check=True,
                    stdout=subprocess.DEVNULL,
                )

    def w_small(self, s: Server, r: int) -> dict[str, Any]:
        folder = f"/files/small-r{r + 1}/"
        c = s.client()
        try:
            c.expect("MKCOL", folder, (201,))
            connects0 = c.connects
            with CpuMeter(process_tree(s.pid)) as cpu:
                secs, lat, qcs = put_files(
                    c, folder, self.sizes.small_count, self.sizes.small_bytes, r
                )
            n = self.sizes.small_count
            return {
                "small_fps": n / secs,
                "small_p50_ms": statistics.median(lat) * 1000,
                "small_p99_ms": sorted(lat)[int(0.99 * (len(lat) - 1))] * 1000,
                "small_cpu_ms": cpu.server * 1000 / n,
                "small_client_cpu_ms": cpu.client * 1000 / n,
                "small_qc": statistics.median(qcs) if qcs else None,
                "small_qc_max": max(qcs) if qcs else None,
                "small_connections": c.connects - connects0,
            }
        finally:
            c.close()

    def w_small_parallel(self, s: Server, r: int) -> dict[str, Any]:
        """The small PUTs again, split over ``--parallel`` keep-alive connections at once (as
        rclone's four transfers do): the rate a server sustains when it is not waiting on one
        client's round trips."""
        k = self.args.parallel
        folder = f"/files/parallel-r{r + 1}/"
        per = self.sizes.small_count // k
        setup = s.client()
        try:
            setup.expect("MKCOL", folder, (201,))
        finally:
            setup.close()
        latencies: list[list[float]] = [[] for _ in range(k)]

        def upload(i: int) -> None:
            c = s.client()
            try:
                _, latencies[i], _ = put_files(
                    c, folder, per, self.sizes.small_bytes, r, start=i * per
                )
            finally:
                c.close()

        with CpuMeter(process_tree(s.pid)) as cpu:
            secs, errors = run_at_once(upload, k)
        if errors:
            raise errors[0]
        lat = sorted(x for each in latencies for x in each)
        return {
            "par_fps": len(lat) / secs,
            "par_p50_ms": statistics.median(lat) * 1000,
            "par_p99_ms": lat[int(len(lat) * 0.99)] * 1000,
            "par_max_ms": lat[-1] * 1000,
            "par_cpu_ms": cpu.server * 1000 / len(lat),
        }

    def w_propfind(self, s: Server, r: int, members: int, locked: bool = False) -> dict[str, Any]:
        """PROPFIND the folder ``propfind_reps`` times; with ``locked``, while one member holds
        an exclusive lock (every member's lockdiscovery must then be looked up)."""
        folder = f"/files/pf{members}/"
        if not s.setup.get(f"pf{members}_ready"):
            raise HttpError(f"skipped: {folder} was not created in the setup")
        c = s.client()
        member = f"{folder}f00000.bin"
        token = ""
        try:
            if locked:
                _, hdrs, _ = c.expect("LOCK", member, (200,), LOCK_BODY, {"Timeout": "Second-600"})
                token = hdrs.get("Lock-Token", "")
            times: list[float] = []
            qcs: list[int] = []
            size = 0
            data = b""
            with CpuMeter(process_tree(s.pid)) as cpu:
                for _ in range(self.sizes.propfind_reps):
                    secs, data, qc = propfind(c, folder)
                    times.append(secs)
                    size = len(data)
                    if qc is not None:
                        qcs.append(qc)
            responses = count_responses(data)
            if responses != members + 1:
                s.errors.append(
                    f"round {r + 1}: PROPFIND {folder} returned {responses} responses,"
                    f" expected {members + 1}"
                )
            k = f"pf{members}" + ("_locked" if locked else "")
            return {
                f"{k}_ms": statistics.median(times) * 1000,
                f"{k}_samples_ms": [t * 1000 for t in times],
                f"{k}_bytes": size,
                f"{k}_responses": responses,
                f"{k}_qc": max(qcs) if qcs else None,
                f"{k}_cpu_ms": cpu.server * 1000 / self.sizes.propfind_reps,
            }
        finally:
            if token:
                c.expect("UNLOCK", member, (204,), None, {"Lock-Token": token})
            c.close()

    # ---- driver

    def units(self) -> list[tuple[str, Callable[[Server, int], dict[str, Any]]]]:
        big = human_bytes(self.sizes.big_bytes)
        small = f"{self.sizes.small_count} x {human_bytes(self.sizes.small_bytes)}"
        out: list[tuple[str, Callable[[Server, int], dict[str, Any]]]] = [
            (f"PUT {big}", self.w_put_big),
            (f"GET {big}", self.w_get_big),
            (f"PUT {small}", self.w_small),
        ]
        if self.args.parallel > 1:
            out.append((f"PUT {small} x{self.args.parallel}", self.w_small_parallel))
        for n in self.sizes.members:
            out.append((f"PROPFIND {n}", functools.partial(self.w_propfind, members=n)))
        most = self.sizes.members[-1]
        out.append(
            (
                f"PROPFIND {most} locked",
                functools.partial(self.w_propfind, members=most, locked=True),
            )
        )
        return out

    def run_unit(self, s: Server, r: int, name: str, fn: Callable[..., dict[str, Any]]) -> None:
        if s.dead:
            return
        if not self.args.no_sync:
            os.sync()  # untimed: do not let one server's dirty pages slow down the next one
        try:
            s.check_alive()
            metrics = fn(s, r)
        except Exception as exc:
            msg = f"round {r + 1} {name}: {type(exc).__name__}: {exc}"
            s.errors.append(msg)
            self.log(f"  [r{r + 1}] {name:16s} {s.name:9s} ERROR {exc}")
            with contextlib.suppress(HttpError):
                s.check_alive()
            if s.dead:
                self.log(f"  {s.name} died: {s.dead}\n{s.log_tail()}")
            return
        s.rounds[r].update(metrics)
        self.log(f"  [r{r + 1}] {name:16s} {s.name:9s} {describe(metrics)}")

    def run(self) -> None:
        units = self.units()
        for s in self.servers:
            s.rounds = [{} for _ in range(self.args.rounds)]
        for r in range(self.args.rounds):
            self.log(f"round {r + 1}/{self.args.rounds}")
            for u, (name, fn) in enumerate(units):
                order = self.servers if (r + u) % 2 == 0 else self.servers[::-1]
                for s in order:
                    self.run_unit(s, r, name, fn)
                if fn == self.w_get_big:
                    for s in self.servers:  # untimed: free the disk before the next round
                        with contextlib.suppress(Exception):
                            if not s.dead:
                                self.delete_big(s, r)


def describe(m: dict[str, Any]) -> str:
    parts = []
    for key, fmt in (
        ("put_mbps", "{:.0f} MB/s"),
        ("get_mbps", "{:.0f} MB/s"),
        ("put_cpu_per_gib", "cpu {:.2f} s/GiB"),
        ("put_sys_per_gib", "(sys {:.2f})"),
        ("get_cpu_per_gib", "cpu {:.2f} s/GiB"),
        ("get_sys_per_gib", "(sys {:.2f})"),
        ("small_fps", "{:.0f} files/s"),
        ("small_p50_ms", "p50 {:.2f} ms"),
        ("small_cpu_ms", "cpu {:.2f} ms/PUT"),
        ("par_fps", "{:.0f} files/s"),
        ("par_p50_ms", "p50 {:.2f} ms"),
        ("par_cpu_ms", "cpu {:.2f} ms/PUT"),
    ):
        if m.get(key) is not None:
            parts.append(fmt.format(m[key]))
    for pre in ("put", "get"):
        if f"{pre}_rss_peak" in m:
            parts.append(f"RSS {m[f'{pre}_rss_before']:.0f}->{m[f'{pre}_rss_peak']:.0f} MiB")
    for key, val in m.items():
        if re.fullmatch(r"pf\d+_ms", key):
            k = key[:-3]
            parts.append(f"{val:.1f} ms, {m[k + '_bytes']:,} B, cpu {m[k + '_cpu_ms']:.0f} ms")
    qc = [f"{k}={v:g}" for k, v in m.items() if k.endswith("_qc") and v is not None]
    if qc:
        parts.append("X-Query-Count " + " ".join(qc))
    return "  ".join(parts)


# --------------------------------------------------------------------------- report


@dataclass(frozen=True)
class Row:
    key: str
    label: str
    unit: str
    ratio: bool = False
    target: tuple[str, float] | None = None  # on the median ratio davserver/stock
    abs_target: tuple[str, float] | None = None  # on davserver's worst round
    setup: bool = False  # a value measured once, before the rounds


def rows_for(sizes: Sizes) -> list[Row]:
    big = human_bytes(sizes.big_bytes)
    rows = [
        Row("put_mbps", f"1. PUT {big} (streamed)", "MB/s", True, (">=", 0.8)),
        Row("put_cpu_per_gib", "   server CPU per GiB", "cpu-s", True),
        Row("put_sys_per_gib", "     of which kernel", "cpu-s", True),
        Row("put_client_cpu_per_gib", "   client CPU per GiB", "cpu-s"),
        Row("get_mbps", f"2. GET {big} (1 MiB readinto)", "MB/s", True, (">=", 1.5)),
        Row("get_cpu_per_gib", "   server CPU per GiB", "cpu-s", True),
        Row("get_sys_per_gib", "     of which kernel", "cpu-s", True),
        Row("get_client_cpu_per_gib", "   client CPU per GiB", "cpu-s"),
        Row("started_rss_mib", "3. RSS right after start", "MiB", setup=True),
        Row("put_rss_before", "   RSS before the PUT", "MiB"),
        Row("put_rss_peak", "   peak RSS during the PUT", "MiB", abs_target=("<", RSS_LIMIT_MIB)),
        Row("put_rss_growth", "   growth during the PUT", "MiB"),
        Row("get_rss_before", "   RSS before the GET", "MiB"),
        Row("get_rss_peak", "   peak RSS during the GET", "MiB", abs_target=("<", RSS_LIMIT_MIB)),
        Row("get_rss_growth", "   growth during the GET", "MiB"),
        Row(
            "small_fps",
            f"4. PUT {sizes.small_count} x {human_bytes(sizes.small_bytes)}, 1 conn",
            "files/s",
            True,
            (">=", 1.0),
        ),
        Row("small_p50_ms", "   p50 latency", "ms", True),
        Row("small_p99_ms", "   p99 latency", "ms", True),
        Row("small_cpu_ms", "   server CPU per PUT", "cpu-ms", True),
        Row("small_qc", "   X-Query-Count per PUT (median)", "stmts"),
        Row("par_fps", "   the same over parallel connections", "files/s", True),
        Row("par_p50_ms", "   p50 latency", "ms", True),
        Row("par_p99_ms", "   p99 latency", "ms", True),
        Row("par_max_ms", "   slowest PUT", "ms", True),
        Row("par_cpu_ms", "   server CPU per PUT", "cpu-ms", True),
    ]
    for i, n in enumerate(sizes.members):
        head = "5." if i == 0 else "  "
        rows += [
            Row(f"pf{n}_ms", f"{head} PROPFIND depth 1, {n} members", "ms", True, ("<=", 0.5)),
            Row(f"pf{n}_bytes", "   response size", "bytes", True),
            Row(f"pf{n}_cpu_ms", "   server CPU per PROPFIND", "cpu-ms", True),
            Row(f"pf{n}_qc", "   X-Query-Count", "stmts"),
        ]
    most = sizes.members[-1]
    rows += [
        Row(
            f"pf{most}_locked_ms",
            "   ... with one member locked",
            "ms",
            True,
            ("<=", 0.5),
        ),
        Row(f"pf{most}_locked_cpu_ms", "   server CPU per PROPFIND", "cpu-ms", True),
    ]
    return rows


def fmt_num(x: float, unit: str = "") -> str:
    if unit == "bytes":
        return f"{x:,.0f}"
    if unit == "stmts" and float(x).is_integer():
        return f"{x:.0f}"
    ax = abs(x)
    if ax >= 100:
        return f"{x:.0f}"
    if ax >= 10:
        return f"{x:.1f}"
    return f"{x:.2f}"


def summarize(values: Sequence[float | None], unit: str = "") -> str:
    vals = [v for v in values if v is not None]
    if not vals:
        return "-"
    med = statistics.median(vals)
    if len(vals) == 1 or min(vals) == max(vals):
        return fmt_num(med, unit)
    return f"{fmt_num(med, unit)} [{fmt_num(min(vals), unit)}-{fmt_num(max(vals), unit)}]"


def per_round(s: Server | None, key: str, setup: bool = False) -> list[float | None]:
    if s is None:
        return []
    if setup:
        return [s.setup.get(key)]
    return [rd.get(key) for rd in s.rounds]


def ratios(dav: Server | None, stock: Server | None, key: str) -> list[float]:
    out = []
    for a, b in zip(per_round(dav, key), per_round(stock, key), strict=False):
        if a is not None and b is not None and b != 0:
            out.append(a / b)
    return out


def check(op: str, value: float, limit: float) -> bool:
    return {
        ">=": value >= limit,
        "<=": value <= limit,
        "<": value < limit,
        ">": value > limit,
    }[op]


def build_report(sizes: Sizes, servers: list[Server]) -> tuple[str, list[dict[str, Any]]]:
    by_name = {s.name: s for s in servers}
    dav, stock = by_name.get(DAVSERVER), by_name.get(STOCK)
    verdicts: list[dict[str, Any]] = []
    header = (
        f"{'workload':38s} {'unit':7s} {'davserver':>22s} {'stock':>22s}"
        f"  {'ratio dav/stock':>18s}  {'target':>9s}  verdict"
    )
    lines = [header, "-" * len(header)]
    for row in rows_for(sizes):
        dav_vals = per_round(dav, row.key, row.setup)
        stock_vals = per_round(stock, row.key, row.setup)
        if not any(v is not None for v in dav_vals + stock_vals):
            continue
        rat = ratios(dav, stock, row.key) if row.ratio else []
        ratio_txt = summarize(rat) if rat else "-"
        target_txt, verdict = "", ""
        if row.target:
            op, limit = row.target
            target_txt = f"{op} {limit:.4g}"
            verdict = "n/a"
            if rat:
                ok = check(op, statistics.median(rat), limit)
                verdict = "PASS" if ok else "FAIL"
                verdicts.append(
                    {
                        "check": f"{row.label.strip()} ratio",
                        "target": target_txt,
                        "value": statistics.median(rat),
                        "pass": ok,
                    }
                )
        elif row.abs_target:
            op, limit = row.abs_target
            target_txt = f"{op} {limit:.4g}"
            verdict = "n/a"
            vals = [v for v in dav_vals if v is not None]
            if vals:
                worst = max(vals)
                ok = check(op, worst, limit)
                verdict = "PASS" if ok else "FAIL"
                verdicts.append(
                    {
                        "check": f"davserver {row.label.strip()} (worst round)",
                        "target": f"{target_txt} MiB",
                        "value": worst,
                        "pass": ok,
                    }
                )
        lines.append(
            f"{row.label:38s} {row.unit:7s} {summarize(dav_vals, row.unit):>22s}"
            f" {summarize(stock_vals, row.unit):>22s}  {ratio_txt:>18s}  {target_txt:>9s}"
            f"  {verdict}"
        )
    # X-Query-Count must not grow with the member count. A request now and then also touches
    # its client session's row (at most once a minute: two statements more) whatever it asks,
    # so the fewest statements per size are compared.
    if dav is not None and len(sizes.members) >= 2:
        lo, hi = sizes.members[0], sizes.members[-1]
        q_lo = [v for v in per_round(dav, f"pf{lo}_qc") if v is not None]
        q_hi = [v for v in per_round(dav, f"pf{hi}_qc") if v is not None]
        if q_lo and q_hi:
            ok = min(q_hi) <= min(q_lo)
            text = f"X-Query-Count PROPFIND {lo}: {min(q_lo):g}, {hi}: {min(q_hi):g} (fewest)"
            verdicts.append(
                {
                    "check": "PROPFIND X-Query-Count independent of member count",
                    "target": f"{hi} <= {lo}",
                    "value": text,
                    "pass": ok,
                }
            )
            lines.append(f"{text} (must not grow)  {'PASS' if ok else 'FAIL'}")
        else:
            why = "no X-Query-Count header" if dav.rounds and not q_lo + q_hi else "no result"
            lines.append(f"X-Query-Count PROPFIND {lo} vs {hi}: {why}  n/a")
    # a failed absolute-RSS check: say whether the transfer or earlier requests caused it
    if dav is not None and any(
        not v["pass"] for v in verdicts if str(v["check"]).startswith("davserver")
    ):
        growth = [
            v
            for key in ("put_rss_growth", "get_rss_growth")
            for v in per_round(dav, key)
            if v is not None
        ]
        before = [v for v in per_round(dav, "put_rss_before") if v is not None]
        if growth and before:
            lines.append(
                f"note: davserver's RSS grew at most {max(growth):.1f} MiB during the transfers;"
                f" it was already {min(before):.0f}-{max(before):.0f} MiB before them"
                f" (started at {dav.setup.get('started_rss_mib', 0):.0f} MiB; the setup's and"
                " earlier rounds' PROPFINDs run before)"
            )
    return "\n".join(lines), verdicts


# --------------------------------------------------------------------------- main


class Interrupted(BaseException):
    pass


def _on_signal(signum: int, _frame: FrameType | None) -> None:
    raise Interrupted(f"signal {signum}")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="Benchmark davserver against stock WsgiDAV (FilesystemProvider).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--rounds", type=int, default=None, help="rounds (default 3, --quick 2)")
    p.add_argument("--quick", action="store_true", help="smoke run: 64 MiB, 200 files, 200/1000")
    p.add_argument("--servers", choices=("both", DAVSERVER, STOCK), default="both")
    p.add_argument(
        "--stock-fsync",
        action="store_true",
        help="make the stock server fsync each PUT's file and folder, as davserver does"
        " (then it is no longer stock: a reference for durable small PUTs)",
    )
    p.add_argument(
        "--db",
        choices=("sqlite", "postgresql"),
        default="sqlite",
        help="davserver's database; postgresql creates and drops a fresh database",
    )
    p.add_argument("--pg-url", default=PG_DEFAULT, help="PostgreSQL server for --db postgresql")
    p.add_argument("--big-mib", type=int, help="size of the big PUT/GET file in MiB")
    p.add_argument("--small-count", type=int, help="number of small files PUT per round")
    p.add_argument(
        "--parallel",
        type=int,
        default=0,
        help="also PUT the small files over K connections at once (4: rclone's transfers);"
        " off by default: its memory stays in the server for the next round's RSS figures",
    )
    p.add_argument("--members", help="comma-separated PROPFIND folder sizes, e.g. 2000,10000")
    p.add_argument("--propfind-reps", type=int, help="PROPFINDs per folder per round")
    p.add_argument("--json", metavar="FILE", help="save the raw numbers as JSON")
    p.add_argument("--tmpdir", help="parent folder for the temp data folders (default: $TMPDIR)")
    p.add_argument("--keep", action="store_true", help="keep the temp folders and server logs")
    p.add_argument(
        "--setup-timeout",
        type=float,
        default=900,
        help="seconds per server for creating the PROPFIND folders; larger ones are skipped after",
    )
    p.add_argument(
        "--dav-env",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra environment for davserver, e.g. DAVSERVER_STORAGE_FSYNC=false (repeatable)",
    )
    p.add_argument("--no-sync", action="store_true", help="skip os.sync() between workloads")
    p.add_argument(
        "--s3",
        choices=("seaweedfs", "moto"),
        help="put davserver's blobs in this S3-compatible store, started for the run as the"
        " tests start it (stock stays on its local disk)",
    )
    p.add_argument(
        "--python",
        default=str(VENV_PYTHON if VENV_PYTHON.exists() else sys.executable),
        help="interpreter for both servers",
    )
    args = p.parse_args(argv)
    if args.rounds is None:
        args.rounds = 2 if args.quick else 3
    if args.rounds < 1:
        p.error("--rounds must be >= 1")
    return args


def sizes_from(args: argparse.Namespace) -> Sizes:
    base = QUICK if args.quick else FULL
    return Sizes(
        big_bytes=args.big_mib * MIB if args.big_mib else base.big_bytes,
        small_count=args.small_count or base.small_count,
        small_bytes=base.small_bytes,
        members=(
            tuple(int(x) for x in args.members.split(",") if x.strip())
            if args.members
            else base.members
        ),
        propfind_reps=args.propfind_reps or base.propfind_reps,
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    sizes = sizes_from(args)
    handled = (signal.SIGTERM, signal.SIGHUP, signal.SIGINT)
    previous = {sig: signal.getsignal(sig) for sig in handled}
    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGHUP, _on_signal)

    base = Path(tempfile.mkdtemp(prefix="davbench-", dir=args.tmpdir))
    password = secrets.token_urlsafe(16)
    names = [DAVSERVER, STOCK] if args.servers == "both" else [args.servers]
    servers = [Server(name, base / name, password) for name in names]
    started: list[Server] = []
    object_store = contextlib.ExitStack()
    t_begin = time.monotonic()
    print(
        f"davserver bench: {args.rounds} round(s), big file {human_bytes(sizes.big_bytes)},"
        f" {sizes.small_count} x {human_bytes(sizes.small_bytes)} PUTs, PROPFIND on"
        f" {'/'.join(map(str, sizes.members))} members x {sizes.propfind_reps},"
        f" davserver db {args.db},"
        f" stock{' with --fsync (each PUT durable, not stock)' if args.stock_fsync else ''},"
        f" data in {base}",
        flush=True,
    )
    try:
        if args.s3:
            args.dav_env = [*args.dav_env, *start_object_store(object_store, args.s3, base)]
        for s in servers:
            started.append(s)
            try:
                if s.name == STOCK:
                    start_stock(s, args.python, fsync=args.stock_fsync)
                else:
                    start_davserver(s, args.python, args.db, args.pg_url, args.dav_env)
                tree = process_tree(s.pid)
                s.setup["processes"] = len(tree)
                s.setup["started_rss_mib"] = rss_kib(tree) / 1024
                print(
                    f"  {s.name:9s} pid {s.pid} on port {s.port}, {len(tree)} process(es),"
                    f" RSS {s.setup['started_rss_mib']:.1f} MiB",
                    flush=True,
                )
            except Exception as exc:
                s.dead = f"did not start: {exc}"
                s.errors.append(s.dead)
                print(f"  {s.name:9s} FAILED TO START: {exc}", flush=True)
        live = [s for s in servers if not s.dead]
        if not live:
            print("no server is running; giving up", file=sys.stderr)
            return 1
        print("setup (once per server, untimed):", flush=True)
        for s in live:
            try:
                t0 = time.monotonic()
                Bench(args, sizes, servers).setup(s)
                s.setup["seconds"] = time.monotonic() - t0
            except Exception as exc:
                s.dead = f"setup failed: {type(exc).__name__}: {exc}"
                s.errors.append(s.dead)
                print(f"  {s.name:9s} SETUP FAILED: {exc}\n{s.log_tail()}", flush=True)
        bench = Bench(args, sizes, [s for s in servers if not s.dead])
        if not bench.servers:
            return 1
        bench.run()

        table, verdicts = build_report(sizes, servers)
        elapsed = time.monotonic() - t_begin
        print()
        print(
            f"Results: median [min-max] over {args.rounds} round(s); ratios computed per round;"
            f" MB = 10^6 bytes; RSS of the server process tree; total {elapsed:.0f} s"
        )
        print(table)
        for s in servers:
            for e in s.errors:
                print(f"!! {s.name}: {e}")
        if args.json:
            dump = {
                "meta": {
                    "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                    "host": platform.node(),
                    "cpus": os.cpu_count(),
                    "kernel": platform.release(),
                    "python": platform.python_version(),
                    "db": args.db,
                    "stock_fsync": args.stock_fsync,
                    "rounds": args.rounds,
                    "sizes": sizes.__dict__,
                    "elapsed_s": elapsed,
                },
                "servers": {
                    s.name: {"setup": s.setup, "rounds": s.rounds, "errors": s.errors}
                    for s in servers
                },
                "ratios": {
                    row.key: ratios(
                        next((s for s in servers if s.name == DAVSERVER), None),
                        next((s for s in servers if s.name == STOCK), None),
                        row.key,
                    )
                    for row in rows_for(sizes)
                    if row.ratio
                },
                "verdicts": verdicts,
            }
            Path(args.json).write_text(json.dumps(dump, indent=2, default=str) + "\n")
            print(f"raw numbers saved to {args.json}")
        return 0 if not any(s.errors for s in servers) else 3
    except (KeyboardInterrupt, Interrupted) as exc:
        print(f"\ninterrupted ({str(exc) or 'Ctrl-C'}); cleaning up", file=sys.stderr, flush=True)
        return 130
    finally:
        for sig in handled:
            signal.signal(sig, signal.SIG_IGN)  # finish the cleanup even if asked twice
        stop_servers(started, args.pg_url)
        object_store.close()
        if args.keep:
            print(f"kept {base}", file=sys.stderr)
        else:
            shutil.rmtree(base, ignore_errors=True)
        for sig, handler in previous.items():
            signal.signal(sig, handler)


if __name__ == "__main__":
    sys.exit(main())
