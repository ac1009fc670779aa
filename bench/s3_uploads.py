"""Uploads into an S3 store: small PUTs over parallel connections, and one big PUT.

davserver on SQLite (or --db postgresql) with its blobs in SeaweedFS, started for the run as the
tests start it. Each round PUTs ``--small`` files of 4 KiB over ``--parallel`` keep-alive
connections at once into a new folder, then one file of ``--big-mib`` MiB. With ``--delay-ms``
every answer from the store comes that much later (a proxy in between), as from a store across
a network rather than on the same machine. ``--tree`` runs the server from another checkout
(PYTHONPATH), to compare two versions of the code with one script.

Prints, per round and as medians: small files/s and p50 latency, big PUT MB/s and seconds.

    .venv/bin/python bench/s3_uploads.py --rounds 3
    .venv/bin/python bench/s3_uploads.py --delay-ms 20 --tree /tmp/old-checkout
"""

from __future__ import annotations

import argparse
import contextlib
import os
import secrets
import socket
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

sys.path.insert(0, str(Path(__file__).resolve().parent))

import core
from core import (
    MIB,
    PG_DEFAULT,
    VENV_PYTHON,
    Server,
    big_body,
    put_files,
    run_at_once,
    start_davserver,
)

SMALL_BYTES = 4096


class DelayProxy:
    """A TCP proxy to ``upstream`` that holds each chunk the upstream sends for ``delay``
    seconds: every request's answer comes that much later."""

    def __init__(self, upstream: tuple[str, int], port: int, delay: float) -> None:
        self.upstream = upstream
        self.delay = delay
        self.listener = socket.create_server(("127.0.0.1", port))
        self.port = self.listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            server = socket.create_connection(self.upstream)
            for sock in (client, server):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            threading.Thread(target=self._pump, args=(client, server, 0.0), daemon=True).start()
            threading.Thread(
                target=self._pump, args=(server, client, self.delay), daemon=True
            ).start()

    @staticmethod
    def _pump(source: socket.socket, target: socket.socket, delay: float) -> None:
        with contextlib.suppress(OSError):
            while data := source.recv(256 * 1024):
                if delay:
                    time.sleep(delay)
                target.sendall(data)
        for sock in (source, target):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self.listener.close()


def port_source(spec: str) -> Callable[[], int]:
    """``free_port`` replaced by the ports of ``spec`` ("9130-9139"), one after another."""
    first, _, last = spec.partition("-")
    ports = iter(range(int(first), int(last or first) + 1))

    def next_port() -> int:
        try:
            return next(ports)
        except StopIteration:
            raise SystemExit(f"--ports {spec}: not enough ports") from None

    return next_port


def small_round(server: Server, folder: str, count: int, parallel: int, tag: int) -> dict[str, Any]:
    setup = server.client()
    try:
        setup.expect("MKCOL", folder, (201,))
    finally:
        setup.close()
    per = count // parallel
    latencies: list[list[float]] = [[] for _ in range(parallel)]

    def upload(i: int) -> None:
        client = server.client()
        try:
            _, latencies[i], _ = put_files(client, folder, per, SMALL_BYTES, tag, start=i * per)
        finally:
            client.close()

    seconds, errors = run_at_once(upload, parallel)
    if errors:
        raise errors[0]
    every = [x for each in latencies for x in each]
    return {"small_fps": len(every) / seconds, "small_p50_ms": statistics.median(every) * 1000}


def big_round(server: Server, path: str, size: int, tag: int) -> dict[str, Any]:
    client = server.client()
    try:
        started = time.perf_counter()
        client.expect("PUT", path, core.OK_PUT, big_body(size, tag), {"Content-Length": str(size)})
        seconds = time.perf_counter() - started
    finally:
        client.close()
    return {"big_mbps": size / seconds / 1e6, "big_s": seconds}


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--small", type=int, default=400, help="small files per round")
    p.add_argument("--parallel", type=int, default=4, help="connections for the small PUTs")
    p.add_argument("--big-mib", type=int, default=256, help="size of the big PUT (0: none)")
    p.add_argument("--delay-ms", type=float, default=0.0, help="added to each S3 answer")
    p.add_argument("--db", choices=("sqlite", "postgresql"), default="sqlite")
    p.add_argument("--pg-url", default=PG_DEFAULT)
    p.add_argument("--tree", help="run the server from this checkout (default: this one)")
    p.add_argument("--ports", help="take the ports from this range, e.g. 9130-9139")
    p.add_argument("--python", default=str(VENV_PYTHON))
    return p.parse_args()


def main() -> int:
    args = parse_args()
    if args.ports:
        core.free_port = port_source(args.ports)
        sys.path.insert(0, str(core.HERE.parent))
        import tests.s3

        tests.s3.free_port = core.free_port
    with tempfile.TemporaryDirectory(prefix="s3-uploads-") as tmp, contextlib.ExitStack() as run:
        base = Path(tmp)
        env = core.start_object_store(run, "seaweedfs", base)
        if args.delay_ms:
            key = "DAVSERVER_S3_ENDPOINT_URL="
            url = urlsplit(next(e for e in env if e.startswith(key)).removeprefix(key))
            assert url.hostname is not None and url.port is not None
            proxy = DelayProxy((url.hostname, url.port), core.free_port(), args.delay_ms / 1000)
            run.callback(proxy.close)
            env = [e for e in env if not e.startswith(key)]
            env.append(f"{key}http://127.0.0.1:{proxy.port}")
        if args.tree:
            env.append(f"PYTHONPATH={Path(args.tree).resolve()}")
        server = Server("davserver", base / "davserver", secrets.token_urlsafe(12))
        run.callback(core.stop_servers, [server], args.pg_url)
        start_davserver(server, args.python, args.db, args.pg_url, env)
        print(
            f"  tree {args.tree or core.PROJECT}, {args.db}, delay {args.delay_ms} ms,"
            f" {args.small} x 4 KiB over {args.parallel}, big {args.big_mib} MiB",
            flush=True,
        )
        results: list[dict[str, Any]] = []
        for r in range(args.rounds):
            row = small_round(server, f"/files/small-r{r}/", args.small, args.parallel, r)
            if args.big_mib:
                row |= big_round(server, f"/files/big-r{r}.bin", args.big_mib * MIB, 1000 + r)
            results.append(row)
            print("  round", r + 1, "  ".join(f"{k} {v:.1f}" for k, v in row.items()), flush=True)
        print("median ", end="")
        for key in results[0]:
            values = sorted(row[key] for row in results)
            low, high = values[0], values[-1]
            print(f" {key} {statistics.median(values):.1f} [{low:.1f}-{high:.1f}]", end="")
        print()
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    raise SystemExit(main())
