"""Soak: a long-running davserver under normal and abusive traffic, watched for what grows.

A self-hosted server runs for months, so anything that grows with every request (open files,
threads, memory, temp files, database connections or rows that nothing ever removes) is a
bug. This starts ``davserver serve`` (SQLite in a fresh data folder, or ``--db postgresql``
on a fresh database) and drives ``--clients`` connections at once through ``--rounds``
rounds of ``--cycles`` cycles each. One cycle is 32 requests of a mixed workload:

* normal: small and medium PUTs onto a bounded set of names (so most are new versions), a
  GET with Range, PROPFIND Depth 1, PROPPATCH, MKCOL + COPY + MOVE + DELETE, LOCK, a PUT with
  the token and UNLOCK, a locked file deleted by its holder, a thumbnail (the image gets a
  new version four times a round, so the image workers convert again);
* other credentials: a PROPFIND with an API key as the Basic password, and a GET with a Bearer
  access token, traded for a new pair (refresh) every cycle;
* abusive: Basic auth with an unknown user (401), malformed XML bodies for PROPFIND,
  PROPPATCH and LOCK, a LOCK of one second never unlocked, uploads cut off mid-body (with
  Content-Length and chunked: the client closes the socket), and downloads abandoned after a
  few KiB of a multi-MiB file, of a folder's ``?zip`` and of a package's zip.

After each round, once the server is idle (``--settle`` seconds), it prints the server's
process tree: RSS, open fds, threads and processes; the files in the blob store's ``tmp/``
(upload staging), the SQLite WAL's size, the rows of ``locks`` (and how many of them have
expired), ``sessions``, ``login_throttle`` and ``logbook``, and on PostgreSQL the connections
in ``pg_stat_activity`` for the database (and how many sit idle in a transaction). Rows that
record work (logbook, versions) grow by design, and so do refresh tokens: each refresh keeps
the one it replaced until its expiry (30 days), to catch its reuse; the housekeeping sweep
deletes them then. The others should reach a plateau. A figure
of those that rose in every round is named at the end (with at least three rounds).

The failed-login limit per address is raised so that every bad login is a counted 401, as
from the many addresses behind a trusted proxy (with the default 20 the soak's own address
would be refused with 429 after the first cycle), and the failure window and the ban last
10 s instead of 15 min, so that the rows of forgotten failures can be seen to go within a
round. ``--dav-env`` overrides either.

    .venv/bin/python bench/soak.py                    # SQLite, 5 rounds x 25 cycles x 4 clients
    .venv/bin/python bench/soak.py --db postgresql    # a fresh PostgreSQL database, dropped after
    .venv/bin/python bench/soak.py --rounds 20 --cycles 100 --json soak.json

The default run takes about 2 minutes on two cores (3 on PostgreSQL). Exit status 3 when a
request got a 5xx answer or failed on the client side, or a figure rose in every round (all
listed under the table).
"""

from __future__ import annotations

import argparse
import base64
import collections
import io
import itertools
import json
import os
import secrets
import shutil
import socket
import sqlite3
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from core import (
    LOCK_BODY,
    MIB,
    PG_DEFAULT,
    USER,
    Server,
    pg_conninfo,
    process_tree,
    rss_kib,
    start_davserver,
    stop_servers,
)

PORT = 9110
BIG_FOLDER = "/files/soak-big/"
BIG_FILE = BIG_FOLDER + "big.bin"
PACKAGE_ZIP = "/packages/soak.zip"
IMAGE = "/files/soak-image.png"
XML = {"Content-Type": 'application/xml; charset="utf-8"'}
JSON = {"Content-Type": "application/json"}
PROPPATCH_BODY = (
    b'<?xml version="1.0" encoding="utf-8"?>\n<D:propertyupdate xmlns:D="DAV:"'
    b' xmlns:Z="urn:soak:"><D:set><D:prop><Z:colour>%d</Z:colour></D:prop></D:set>'
    b"</D:propertyupdate>"
)
MALFORMED = (
    b'<?xml version="1.0"?><D:propfind xmlns:D="DAV:"><D:prop>',  # cut short
    b"<D:propertyupdate><D:set></D:propertyupdate>",  # unbound prefix, mismatched tags
    b"not xml at all \x00\xff",
    b'<!DOCTYPE x [<!ENTITY a "aaaaaaaaaa">]><x>&a;&a;&a;</x>',  # an entity: refused
)


# --------------------------------------------------------------------------- the server's figures


def proc_figures(pid: int) -> dict[str, int]:
    """RSS (KiB), open fds, threads and processes of ``pid`` and its descendants."""
    pids = process_tree(pid)
    fds = threads = 0
    for p in pids:
        try:
            fds += len(os.listdir(f"/proc/{p}/fd"))
            with open(f"/proc/{p}/status", "rb") as fh:
                for line in fh:
                    if line.startswith(b"Threads:"):
                        threads += int(line.split()[1])
        except OSError:  # it ended meanwhile
            continue
    return {"rss_kib": rss_kib(pids), "fds": fds, "threads": threads, "procs": len(pids)}


ROW_QUERIES = {
    "locks": "SELECT count(*) FROM locks",
    "locks_expired": "SELECT count(*) FROM locks WHERE expire >= 0 AND expire < {now}",
    "sessions": "SELECT count(*) FROM sessions",
    "throttle": "SELECT count(*) FROM login_throttle",
    "logbook": "SELECT count(*) FROM logbook",
    "versions": "SELECT count(*) FROM file_versions",
    "refresh_tokens": "SELECT count(*) FROM refresh_tokens",
}


def db_figures(server: Server, pg_url: str) -> dict[str, int]:
    """Rows of the tables that should plateau (and two that grow by design); on PostgreSQL
    also the database's other connections, all and idle in a transaction."""
    queries = {key: sql.format(now=time.time()) for key, sql in ROW_QUERIES.items()}
    if server.db_name is None:
        return sqlite_figures(server.workdir / "davserver.sqlite3", queries)
    conninfo = pg_conninfo(pg_url).rsplit("/", 1)[0] + "/" + server.db_name
    return pg_figures(conninfo, queries)


def sqlite_figures(path: Path, queries: dict[str, str]) -> dict[str, int]:
    conn = sqlite3.connect(path, timeout=30)
    try:
        out = {key: int(conn.execute(sql).fetchone()[0]) for key, sql in queries.items()}
    finally:
        conn.close()
    wal = path.with_name(path.name + "-wal")
    out["wal_kib"] = wal.stat().st_size // 1024 if wal.exists() else 0
    return out


def pg_figures(conninfo: str, queries: dict[str, str]) -> dict[str, int]:
    import psycopg  # installed with davserver

    out: dict[str, int] = {}
    with psycopg.connect(conninfo, autocommit=True) as conn:
        for key, sql in queries.items():
            row = conn.execute(sql).fetchone()
            assert row is not None
            out[key] = int(row[0])
        row = conn.execute(
            "SELECT count(*), count(*) FILTER (WHERE state LIKE 'idle in transaction%')"
            " FROM pg_stat_activity WHERE datname = current_database()"
            " AND pid <> pg_backend_pid()"
        ).fetchone()
        assert row is not None
        out["pg_conns"], out["pg_idle_tx"] = int(row[0]), int(row[1])
    return out


def staging_files(server: Server) -> int:
    """Files in the blob store's upload staging folder."""
    tmp = server.workdir / "blobs" / "tmp"
    return len(os.listdir(tmp)) if tmp.exists() else 0


def figures(server: Server, pg_url: str) -> dict[str, int]:
    return {
        **proc_figures(server.pid),
        "tmp_files": staging_files(server),
        **db_figures(server, pg_url),
    }


# --------------------------------------------------------------------------- raw sockets


def _raw_request(port: int, head: str) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    sock.sendall(head.encode("latin-1"))
    return sock


def cut_upload(port: int, auth: str, path: str, *, chunked: bool, size: int = MIB) -> None:
    """Announce ``size`` bytes (or a chunked body), send a sixteenth of them, hang up."""
    part = os.urandom(size // 16)
    framing = "Transfer-Encoding: chunked" if chunked else f"Content-Length: {size}"
    head = f"PUT {path} HTTP/1.1\r\nHost: soak\r\nAuthorization: {auth}\r\n{framing}\r\n\r\n"
    sock = _raw_request(port, head)
    try:
        sock.sendall(b"%x\r\n%s\r\n" % (len(part), part) if chunked else part)
    finally:
        sock.close()


def abandon_download(port: int, auth: str, path: str, keep: int = 8192) -> int:
    """GET ``path``, read ``keep`` bytes of the answer (head included), hang up; the status."""
    sock = _raw_request(port, f"GET {path} HTTP/1.1\r\nHost: soak\r\nAuthorization: {auth}\r\n\r\n")
    got = b""
    try:
        while len(got) < keep:
            data = sock.recv(keep - len(got))
            if not data:
                break
            got += data
    finally:
        sock.close()
    try:
        return int(got.split(b" ", 2)[1])
    except (IndexError, ValueError):
        return 0


# --------------------------------------------------------------------------- the workload


def png_bytes(seed: int, side: int = 384) -> bytes:
    """A noisy PNG that differs with ``seed`` (each one needs a conversion of its own)."""
    from PIL import Image  # installed with davserver

    image = Image.frombytes("RGB", (side, side), os.urandom(side * side * 3))
    image.putpixel((0, 0), (seed % 256, seed // 256 % 256, 0))
    out = io.BytesIO()
    image.save(out, "PNG", compress_level=1)
    return out.getvalue()


@dataclass
class Tally:
    """Answers of one round by (method, status), and what failed."""

    statuses: collections.Counter[tuple[str, int]] = field(default_factory=collections.Counter)
    failures: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, method: str, status: int) -> None:
        with self.lock:
            self.statuses[(method, status)] += 1

    def fail(self, text: str) -> None:
        with self.lock:
            if len(self.failures) < 20:
                self.failures.append(text)

    @property
    def requests(self) -> int:
        return sum(self.statuses.values())

    def server_errors(self) -> dict[str, int]:
        return {f"{m} {s}": n for (m, s), n in sorted(self.statuses.items()) if s >= 500}


class Worker:
    """One client connection running cycles in its own folder ``/files/soak-cN/``."""

    def __init__(self, server: Server, index: int, args: argparse.Namespace) -> None:
        self.server = server
        self.index = index
        self.args = args
        self.folder = f"/files/soak-c{index}/"
        self.client = server.client(timeout=60)
        self.auth = self.client.auth["Authorization"]
        self.small = bytearray(os.urandom(4096))
        self.medium = bytearray(os.urandom(256 * 1024))
        self.api_key = ""  # setup() makes one per client
        self.tokens: dict[str, str] = {}  # the Bearer pair, from setup(), refreshed each cycle

    def sign_in(self) -> None:
        """An API key of its own, and a Bearer token pair (a session of its own)."""
        body = json.dumps({"name": f"soak-c{self.index}", "scope": "read"}).encode()
        _, _, data = self.client.expect("POST", "/api/v1/keys", (201,), body, JSON)
        self.api_key = json.loads(data)["key"]
        body = json.dumps({"username": USER, "password": self.server.password}).encode()
        _, _, data = self.client.expect("POST", "/api/v1/token", (200,), body, JSON)
        self.tokens = json.loads(data)

    def call(
        self, tally: Tally, method: str, path: str, body: Any = None, **headers: str
    ) -> tuple[int, Any, bytes]:
        status, hdrs, data = self.client.request(method, path, body, headers)
        tally.add(method, status)
        return status, hdrs, data

    def cycle(self, n: int, tally: Tally) -> None:
        c, f, port = self.call, self.folder, self.server.port
        name, other = f"{f}f{n % 8}.bin", f"{f}m{n % 4}.bin"
        self.small[:8] = n.to_bytes(8, "little")
        self.medium[:8] = n.to_bytes(8, "little")
        c(tally, "PUT", name, bytes(self.small))
        c(tally, "PUT", other, bytes(self.medium))
        c(tally, "PUT", name, bytes(self.small[::-1]))  # an overwrite: another version
        c(tally, "GET", other, Range="bytes=1000-65535")
        c(tally, "PROPFIND", f, b"", Depth="1")
        c(tally, "PROPPATCH", name, PROPPATCH_BODY % n, **XML)
        sub = f"{f}d{n}/"
        c(tally, "MKCOL", sub)
        c(tally, "COPY", name, Destination=f"http://127.0.0.1:{port}{sub}copy.bin")
        c(tally, "MOVE", f"{sub}copy.bin", Destination=f"http://127.0.0.1:{port}{sub}moved.bin")
        c(tally, "DELETE", sub)
        status, hdrs, _ = c(tally, "LOCK", name, LOCK_BODY, Timeout="Second-600", **XML)
        token = (hdrs.get("Lock-Token") or "").strip("<> ") if status == 200 else ""
        if token:
            c(tally, "PUT", name, bytes(self.small), If=f"(<{token}>)")
            c(tally, "UNLOCK", name, **{"Lock-Token": f"<{token}>"})
        c(tally, "LOCK", other, LOCK_BODY, Timeout="Second-1", **XML)  # abandoned, expires
        c(tally, "PUT", f"{f}gone.bin", b"x")  # a locked file deleted by its lock's holder
        status, hdrs, _ = c(tally, "LOCK", f"{f}gone.bin", LOCK_BODY, Timeout="Second-600", **XML)
        token = (hdrs.get("Lock-Token") or "").strip("<> ") if status == 200 else ""
        c(tally, "DELETE", f"{f}gone.bin", If=f"(<{token}>)")
        self.other_credentials(other, tally)
        self.abuse(n, tally)
        c(tally, "GET", IMAGE + "?thumbnail=64")

    def other_credentials(self, path: str, tally: Tally) -> None:
        """An API key as the Basic password; a Bearer token, then a refresh of the pair."""
        key = base64.b64encode(f"{USER}:{self.api_key}".encode()).decode()
        self.call(tally, "PROPFIND", self.folder, b"", Depth="0", Authorization=f"Basic {key}")
        bearer = f"Bearer {self.tokens['access_token']}"
        self.call(tally, "GET", path, Range="bytes=0-4095", Authorization=bearer)
        body = json.dumps({"refresh_token": self.tokens["refresh_token"]}).encode()
        status, _, data = self.call(tally, "POST", "/api/v1/token/refresh", body, **JSON)
        if status == 200:
            self.tokens = json.loads(data)

    def abuse(self, n: int, tally: Tally) -> None:
        c, f, port = self.call, self.folder, self.server.port
        for _ in range(2):  # an unknown user, a new name each time
            bad = base64.b64encode(f"nobody{secrets.token_hex(4)}:wrong".encode()).decode()
            c(tally, "PROPFIND", f, b"", Depth="0", Authorization=f"Basic {bad}")
        for i, body in enumerate(MALFORMED):
            method = ("PROPFIND", "PROPPATCH", "LOCK", "PROPFIND")[i]
            c(tally, method, f"{f}f{n % 8}.bin", body, Depth="0", **XML)
        for chunked in (False, True):
            cut_upload(port, self.auth, f"{f}cut-{n % 4}.bin", chunked=chunked)
            tally.add("PUT cut", 0)
        for path in (BIG_FILE, BIG_FOLDER + "?zip", PACKAGE_ZIP):
            tally.add("GET abandoned", abandon_download(port, self.auth, path))

    def run(self, cycles: range, tally: Tally, stop: threading.Event) -> None:
        for n in cycles:
            if stop.is_set():
                return
            try:
                self.cycle(n, tally)
            except Exception as exc:
                tally.fail(f"client {self.index} cycle {n}: {type(exc).__name__}: {exc}")
                self.client.close()


def setup(server: Server, args: argparse.Namespace) -> None:
    """The big file, its folder and a package pinning it, the image and each client's folder."""
    c = server.client()
    try:
        c.expect("MKCOL", BIG_FOLDER, (201,))
        size = args.big_mib * MIB
        c.expect("PUT", BIG_FILE, (201,), os.urandom(size), {"Content-Length": str(size)})
        c.expect("MKCOL", "/packages/soak/", (201,))
        dest = f"http://127.0.0.1:{server.port}/packages/soak/big.bin"
        c.expect("COPY", BIG_FILE, (201,), headers={"Destination": dest})
        c.expect("PUT", IMAGE, (201,), png_bytes(0))
        for i in range(args.clients):
            c.expect("MKCOL", f"/files/soak-c{i}/", (201,))
    finally:
        c.close()


def new_image(server: Server, seed: int) -> None:
    c = server.client()
    try:
        c.expect("PUT", IMAGE, (204,), png_bytes(seed))
    finally:
        c.close()


def run_round(
    server: Server, workers: list[Worker], first: int, cycles: int, stop: threading.Event
) -> Tally:
    tally = Tally()
    threads = [
        threading.Thread(
            target=w.run, args=(range(first, first + cycles), tally, stop), name=f"soak-{i}"
        )
        for i, w in enumerate(workers)
    ]
    for t in threads:
        t.start()
    step = max(1, cycles // 4)
    for k in range(first, first + cycles, step):  # a new image version now and then
        if stop.wait(0.3):
            break
        new_image(server, k + 1)
    for t in threads:
        t.join()
    return tally


# --------------------------------------------------------------------------- the report


COLUMNS: list[tuple[str, str, Callable[[dict[str, Any]], str]]] = [
    ("round", "{:>5}", lambda r: str(r["round"])),
    ("reqs", "{:>6}", lambda r: str(r["requests"])),
    ("req/s", "{:>6}", lambda r: f"{r['requests'] / r['seconds']:.0f}"),
    ("RSS MiB", "{:>8}", lambda r: f"{r['rss_kib'] / 1024:.1f}"),
    ("fds", "{:>5}", lambda r: str(r["fds"])),
    ("thr", "{:>4}", lambda r: str(r["threads"])),
    ("procs", "{:>5}", lambda r: str(r["procs"])),
    ("tmp", "{:>4}", lambda r: str(r["tmp_files"])),
    ("WAL KiB", "{:>8}", lambda r: str(r.get("wal_kib", "-"))),
    ("locks", "{:>6}", lambda r: str(r["locks"])),
    ("expired", "{:>7}", lambda r: str(r["locks_expired"])),
    ("sessions", "{:>8}", lambda r: str(r["sessions"])),
    ("throttle", "{:>8}", lambda r: str(r["throttle"])),
    ("logbook", "{:>8}", lambda r: str(r["logbook"])),
    ("versions", "{:>8}", lambda r: str(r["versions"])),
    ("refresh", "{:>7}", lambda r: str(r["refresh_tokens"])),
    ("pg conns", "{:>8}", lambda r: str(r.get("pg_conns", "-"))),
    ("idle tx", "{:>7}", lambda r: str(r.get("pg_idle_tx", "-"))),
]


# What must reach a plateau (RSS is left to the reader: it moves both ways).
WATCHED = (
    "fds",
    "threads",
    "procs",
    "tmp_files",
    "locks",
    "locks_expired",
    "sessions",
    "throttle",
    "pg_conns",
    "pg_idle_tx",
)


def rising(rows: list[dict[str, Any]]) -> list[str]:
    """The watched figures that rose in every round after the first (three rounds at least)."""
    rounds = rows[1:]
    if len(rounds) < 3:
        return []
    return [
        f"{key} rose in every round: {' '.join(str(r[key]) for r in rounds)}"
        for key in WATCHED
        if key in rounds[0] and all(b[key] > a[key] for a, b in itertools.pairwise(rounds))
    ]


def header() -> str:
    return "  ".join(fmt.format(name) for name, fmt, _ in COLUMNS)


def line(row: dict[str, Any]) -> str:
    return "  ".join(fmt.format(get(row)) for _, fmt, get in COLUMNS)


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--db", choices=("sqlite", "postgresql"), default="sqlite")
    p.add_argument("--pg-url", default=PG_DEFAULT, help="PostgreSQL server for --db postgresql")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--cycles", type=int, default=25, help="cycles per client per round")
    p.add_argument("--clients", type=int, default=4, help="connections at once")
    p.add_argument("--big-mib", type=int, default=8, help="size of the file downloads abandon")
    p.add_argument("--settle", type=float, default=2.0, help="idle seconds before each reading")
    p.add_argument("--port", type=int, default=PORT)
    p.add_argument(
        "--dav-env",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra environment for davserver (repeatable); wins over the soak's own",
    )
    p.add_argument("--json", metavar="FILE", help="save the per-round figures as JSON")
    p.add_argument("--keep", action="store_true", help="keep the data folder and the log")
    return p.parse_args()


def main() -> int:
    args = parse_args()
    base = Path(tempfile.mkdtemp(prefix="davsoak-"))
    server = Server("davserver", base / "davserver", secrets.token_urlsafe(12), port=args.port)
    env = [
        "DAVSERVER_AUTH_MAX_FAILURES_PER_ADDRESS=1000000000",
        "DAVSERVER_AUTH_FAILURE_WINDOW_SECONDS=10",
        "DAVSERVER_AUTH_BAN_SECONDS=10",
        *args.dav_env,
    ]
    stop = threading.Event()
    rows: list[dict[str, Any]] = []
    problems: list[str] = []
    try:
        start_davserver(server, sys.executable, args.db, args.pg_url, env)
        setup(server, args)
        workers = [Worker(server, i, args) for i in range(args.clients)]
        for worker in workers:
            worker.sign_in()
        time.sleep(args.settle)
        rows.append({"round": 0, "requests": 0, "seconds": 1, **figures(server, args.pg_url)})
        print(
            f"soak: {args.db}, {args.rounds} rounds x {args.cycles} cycles x {args.clients}"
            f" clients, user {USER}, data in {base}, server pid {server.pid} port {server.port}"
        )
        print(header())
        print(line(rows[0]), flush=True)
        for r in range(1, args.rounds + 1):
            started = time.perf_counter()
            tally = run_round(server, workers, (r - 1) * args.cycles, args.cycles, stop)
            seconds = time.perf_counter() - started
            server.check_alive()
            time.sleep(args.settle)
            row = {"round": r, "requests": tally.requests, "seconds": seconds}
            rows.append({**row, **figures(server, args.pg_url)})
            print(line(rows[-1]), flush=True)
            problems += [f"round {r}: {k} x{n}" for k, n in tally.server_errors().items()]
            problems += [f"round {r}: {text}" for text in tally.failures]
            if r == args.rounds:
                print("last round's answers:", dict(sorted(tally.statuses.items())))
        for w in workers:
            w.client.close()
    except KeyboardInterrupt:
        stop.set()
        print("interrupted", file=sys.stderr)
        return 130
    finally:
        stop_servers([server], args.pg_url)
        if args.keep:
            print(f"kept {base}", file=sys.stderr)
        else:
            shutil.rmtree(base, ignore_errors=True)
    problems += rising(rows)
    for text in problems:
        print(f"!! {text}")
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "rounds": rows}, indent=2))
    return 3 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
