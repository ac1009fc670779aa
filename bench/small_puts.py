"""Small PUTs only: davserver beside stock WsgiDAV, stock with durable writes, and the floor.

Issue 2 asks for 4 KiB PUTs over one keep-alive connection at 1.0x stock WsgiDAV, while each
PUT writes a version and a logbook row and makes its blob durable before the commit. This puts
that target beside what the stack itself allows. Four servers, each on a fresh temp folder, in
interleaved rounds (the order alternates), each round N PUTs of 4 KiB into a new folder:

- **stock**: bench/stock_server.py, WsgiDAV 4.4's FilesystemProvider (what core.py measures);
- **stock-fsync**: the same with --fsync (each PUT's file and folder flushed before the answer);
- **floor**: bench/floor_server.py, cheroot and a bare WSGI function doing only what the target
  requires (three hashes, a durable blob, one SQLite transaction of five statements), with no
  WebDAV, accounts, permissions, locks or quota;
- **davserver**: `davserver serve` on SQLite (or --db postgresql).

Prints files/s, p50 and server CPU per PUT (medians [min-max] over the rounds), and each one's
ratio to stock, computed within each round.

    .venv/bin/python bench/small_puts.py                 # 5 rounds of 2,000 PUTs, ~2 min
    .venv/bin/python bench/small_puts.py --rounds 3 --count 500
"""

from __future__ import annotations

import argparse
import os
import secrets
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from core import (
    HERE,
    PG_DEFAULT,
    VENV_PYTHON,
    CpuMeter,
    Server,
    process_tree,
    put_files,
    start_davserver,
    start_stock,
    stop_servers,
)

STOCK, STOCK_FSYNC, FLOOR, DAVSERVER = "stock", "stock-fsync", "floor", "davserver"
SIZE = 4096


def start(server: Server, args: argparse.Namespace) -> None:
    if server.name in (STOCK, STOCK_FSYNC):
        start_stock(server, args.python, fsync=server.name == STOCK_FSYNC)
    elif server.name == FLOOR:
        server.workdir.mkdir(parents=True)
        cmd = [args.python, str(HERE / "floor_server.py"), "--root", str(server.workdir)]
        server.start(cmd, {**os.environ, "BENCH_PASSWORD": server.password}, ready_timeout=60)
    else:
        start_davserver(server, args.python, args.db, args.pg_url)


def one_round(server: Server, r: int, count: int) -> dict[str, float]:
    client = server.client()
    try:
        folder = f"/files/small-r{r}/"
        client.expect("MKCOL", folder, (201,))
        with CpuMeter(process_tree(server.pid)) as cpu:
            secs, latencies, _ = put_files(client, folder, count, SIZE, tag=r)
    finally:
        client.close()
    return {
        "fps": count / secs,
        "p50": statistics.median(latencies) * 1000,
        "cpu": cpu.server * 1000 / count,
    }


def summary(values: list[float]) -> str:
    med = statistics.median(values)
    return f"{med:8.2f} [{min(values):.2f}-{max(values):.2f}]"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--count", type=int, default=2000, help="PUTs per round and server")
    p.add_argument("--db", choices=("sqlite", "postgresql"), default="sqlite")
    p.add_argument("--pg-url", default=PG_DEFAULT)
    p.add_argument("--python", default=str(VENV_PYTHON))
    args = p.parse_args()
    base = Path(tempfile.mkdtemp(prefix="davbench-small-"))
    password = secrets.token_urlsafe(16)
    servers = [Server(n, base / n, password) for n in (STOCK, STOCK_FSYNC, FLOOR, DAVSERVER)]
    results: dict[str, list[dict[str, float]]] = {s.name: [] for s in servers}
    try:
        for s in servers:
            start(s, args)
        for s in servers:  # warm-up, untimed
            one_round(s, 0, min(200, args.count))
        for r in range(1, args.rounds + 1):
            order = servers if r % 2 else servers[::-1]
            for s in order:
                results[s.name].append(one_round(s, r, args.count))
            line = "  ".join(f"{s.name} {results[s.name][-1]['fps']:.0f}" for s in servers)
            print(f"round {r}/{args.rounds}: files/s {line}", flush=True)
    finally:
        stop_servers(servers, args.pg_url)
        shutil.rmtree(base, ignore_errors=True)
    print(
        f"\n{args.rounds} rounds x {args.count} PUTs of 4 KiB, one connection, davserver on"
        f" {args.db}; medians [min-max]\n"
    )
    print(f"{'server':12s} {'files/s':>22s} {'p50 ms':>22s} {'CPU ms/PUT':>22s} {'x stock':>22s}")
    stock = results[STOCK]
    for s in servers:
        rounds = results[s.name]
        ratio = [mine["fps"] / theirs["fps"] for mine, theirs in zip(rounds, stock, strict=True)]
        print(
            f"{s.name:12s} {summary([x['fps'] for x in rounds]):>22s}"
            f" {summary([x['p50'] for x in rounds]):>22s}"
            f" {summary([x['cpu'] for x in rounds]):>22s} {summary(ratio):>22s}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
