"""Zips of many small files over HTTP: a folder's (``GET /files/big/?zip``) and a package's
(``GET /packages/bench.zip``) of the same files, with time to first byte, total time and the
server's peak RSS.

The folder is filled at the database level, not by HTTP: ``--files`` distinct blobs of a few
bytes are written straight into the server's blob store, and their blob, node and version rows
inserted in one transaction (an upload's rows, without its logbook and quota bookkeeping,
which no zip reads). 64,000 files take a few seconds instead of minutes of PUTs. The package
is then made the ordinary way: MKCOL ``/packages/bench/`` and one COPY of the folder into it.

Each zip is fetched ``--rounds`` times on a fresh keep-alive connection, its RSS (process tree,
every 20 ms) and CPU time sampled; the first answer is checked with ``zipfile`` (entry count, a
CRC test of every entry). Printed per zip: time to first byte, total time, server CPU and peak
RSS (median [min-max] over the rounds), and the RSS before the first round. On a shared
machine wall times swing; ``--compare DIR`` runs a second server on the code of another
checkout (``git worktree add DIR <commit>``), with its own copy of the files, and fetches
from the servers in turn, so that both see the same load.

    .venv/bin/python bench/folder_zip.py                        # 64,000 files, SQLite
    .venv/bin/python bench/folder_zip.py --db postgresql
    .venv/bin/python bench/folder_zip.py --files 5000 --rounds 1   # quick
    .venv/bin/python bench/folder_zip.py --compare /tmp/before     # against another checkout
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import io
import json
import secrets
import statistics
import sys
import tempfile
import time
import uuid
import zipfile
import zlib
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import sqlalchemy as sa
from core import (
    PG_DEFAULT,
    CpuMeter,
    HttpError,
    RssSampler,
    Server,
    run_at_once,
    start_davserver,
    stop_servers,
)

import davserver.models  # noqa: F401  (the tables)
from davserver.blobstore.filesystem import storage_key_for
from davserver.db import Base

FOLDER = "/files/big/"
PACKAGE_ZIP = "/packages/bench.zip"
_BATCH = 2000


def fill(server: Server, db_url: str, count: int, per_folder: int) -> float:
    """``count`` files of distinct bytes under ``FOLDER`` (MKCOL), see ``fill_rows``; the
    seconds it took."""
    started = time.perf_counter()
    client = server.client()
    client.expect("MKCOL", FOLDER, (201,))
    client.close()
    engine = sa.create_engine(db_url)
    try:
        fill_rows(engine, server.workdir / "blobs", "big", count, per_folder)
    finally:
        engine.dispose()
    return time.perf_counter() - started


def fill_rows(engine: sa.Engine, blob_root: Path, folder: str, count: int, per_folder: int) -> None:
    """``count`` files of distinct bytes in the live folder named ``folder`` (``per_folder``
    to a subfolder, 0: all in it), written as rows and blob files under ``blob_root``."""
    nodes, versions, blobs = (Base.metadata.tables[t] for t in ("nodes", "file_versions", "blobs"))
    now = dt.datetime.now(dt.UTC)
    with engine.begin() as conn:
        big = conn.execute(
            sa.select(nodes.c.id, nodes.c.owner_id).where(
                nodes.c.name == folder, nodes.c.deleted_at.is_(None)
            )
        ).one()
        parents = [big.id]
        if per_folder:
            folders = [
                {
                    "id": uuid.uuid4(),
                    "parent_id": big.id,
                    "name": f"d{i:04d}",
                    "name_key": f"d{i:04d}",
                    "kind": "folder",
                    "owner_id": big.owner_id,
                    "space": "home",
                    "size": 0,
                    "created_at": now,
                    "modified_at": now,
                }
                for i in range((count + per_folder - 1) // per_folder)
            ]
            conn.execute(sa.insert(nodes), folders)
            parents = [f["id"] for f in folders]
        for start in range(0, count, _BATCH):
            blob_rows, node_rows, version_rows = [], [], []
            for i in range(start, min(count, start + _BATCH)):
                content = f"file {i}\n".encode()
                sha256 = hashlib.sha256(content).hexdigest()
                key = storage_key_for(sha256)
                path = blob_root / key
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(content)
                blob_id, node_id = uuid.uuid4(), uuid.uuid4()
                name = f"f{i:06d}.txt"
                blob_rows.append(
                    {
                        "id": blob_id,
                        "sha256": sha256,
                        "md5": hashlib.md5(content).hexdigest(),
                        "sha1": hashlib.sha1(content).hexdigest(),
                        "size_bytes": len(content),
                        "storage_key": key,
                        "created_at": now,
                        "crc32": zlib.crc32(content),
                    }
                )
                node_rows.append(
                    {
                        "id": node_id,
                        "parent_id": parents[i // per_folder if per_folder else 0],
                        "name": name,
                        "name_key": name,
                        "kind": "file",
                        "owner_id": big.owner_id,
                        "space": "home",
                        "size": len(content),
                        "created_at": now,
                        "modified_at": now,
                    }
                )
                version_rows.append(
                    {
                        "id": uuid.uuid4(),
                        "node_id": node_id,
                        "version_no": 1,
                        "blob_id": blob_id,
                        "size": len(content),
                        "uploaded_by": big.owner_id,
                        "uploaded_at": now,
                    }
                )
            conn.execute(sa.insert(blobs), blob_rows)
            conn.execute(sa.insert(nodes), node_rows)
            conn.execute(sa.insert(versions), version_rows)
        conn.execute(
            sa.update(nodes)
            .where(nodes.c.kind == "file", nodes.c.current_version_id.is_(None))
            .values(
                current_version_id=sa.select(versions.c.id)
                .where(versions.c.node_id == nodes.c.id)
                .scalar_subquery()
            )
        )


def fetch(server: Server, path: str) -> dict[str, Any]:
    """GET ``path`` on a new connection: first byte, total, server CPU, RSS, and the body."""
    client = server.client()
    body = io.BytesIO()
    try:
        with RssSampler(server.pid) as rss, CpuMeter(rss.pids) as cpu:
            started = time.perf_counter()
            resp = client.send("GET", path)
            first = time.perf_counter() - started
            while chunk := resp.read(1 << 20):
                body.write(chunk)
            total = time.perf_counter() - started
        if resp.status != 200:
            raise HttpError(f"GET {path} -> {resp.status} {body.getvalue()[:300]!r}")
        if body.tell() != int(resp.headers["Content-Length"]):
            raise HttpError(f"GET {path}: {body.tell()} bytes of {resp.headers['Content-Length']}")
    finally:
        client.close()
    return {
        "first_byte_s": first,
        "total_s": total,
        "server_cpu_s": cpu.server,
        "rss_before_mib": rss.before / 1024,
        "rss_peak_mib": rss.peak / 1024,
        "bytes": body.tell(),
        "etag": resp.headers.get("ETag"),
        "body": body,
    }


def resume(server: Server, path: str, etag: str, size: int) -> dict[str, Any]:
    """A resumed download's last MiB (``Range`` with ``If-Range``) on a new connection: how
    long the server takes to answer a byte range of a big zip, and its CPU for it."""
    client = server.client()
    start = max(0, size - (1 << 20))
    headers = {"Range": f"bytes={start}-", "If-Range": etag}
    try:
        with RssSampler(server.pid) as rss, CpuMeter(rss.pids) as cpu:
            started = time.perf_counter()
            resp = client.send("GET", path, headers=headers)
            data = resp.read()
            total = time.perf_counter() - started
        if resp.status != 206 or len(data) != size - start:
            raise HttpError(f"GET {path} {headers} -> {resp.status}, {len(data)} bytes")
    finally:
        client.close()
    return {"total_s": total, "server_cpu_s": cpu.server, "rss_peak_mib": rss.peak / 1024}


def in_parallel(server: Server, path: str, count: int) -> dict[str, Any]:
    """``count`` whole downloads of ``path`` at once, each on its own connection: the slowest
    one's time and the server's peak RSS."""
    with RssSampler(server.pid) as rss, CpuMeter(rss.pids) as cpu:
        total, errors = run_at_once(lambda _: fetch_body(server, path), count)
    if errors:
        raise HttpError(f"{len(errors)} of {count} parallel downloads failed: {errors[0]}")
    return {"total_s": total, "server_cpu_s": cpu.server, "rss_peak_mib": rss.peak / 1024}


def fetch_body(server: Server, path: str) -> float:
    """GET ``path`` whole on a new connection, discarding the bytes; the seconds it took."""
    client = server.client()
    try:
        started = time.perf_counter()
        resp = client.send("GET", path)
        while resp.read(1 << 20):
            pass
        if resp.status != 200:
            raise HttpError(f"GET {path} -> {resp.status}")
        return time.perf_counter() - started
    finally:
        client.close()


def check(body: io.BytesIO, files: int) -> None:
    """The answer is a zip of ``files`` files and the manifest, every CRC right."""
    with zipfile.ZipFile(body) as archive:
        names = archive.namelist()
        if len(names) != files + 1:
            raise HttpError(f"the zip holds {len(names)} entries, not {files} and the manifest")
        bad = archive.testzip()
        if bad is not None:
            raise HttpError(f"{bad}: CRC-32 or header check failed")


def summary(runs: list[dict[str, Any]], key: str, scale: float = 1.0) -> str:
    values = [run[key] * scale for run in runs]
    return f"{statistics.median(values):7.2f} [{min(values):.2f}-{max(values):.2f}]"


def prepare(
    name: str, base: Path, src: str | None, args: argparse.Namespace
) -> tuple[Server, dict[str, str]]:
    """A running server (its code from ``src`` when given) with the files and the package;
    the zips to fetch from it by label."""
    server = Server(name, base / name, secrets.token_urlsafe(12))
    extra = [*args.dav_env, f"PYTHONPATH={src}"] if src else args.dav_env
    start_davserver(server, sys.executable, args.db, args.pg_url, extra)
    db_url = f"sqlite:///{server.workdir / 'davserver.sqlite3'}"
    if server.db_name:
        db_url = f"{args.pg_url.rstrip('/')}/{server.db_name}"
    fill_s = fill(server, db_url, args.files, args.per_folder)
    print(f"{name}: {args.files} files filled in {fill_s:.1f} s ({args.db})", flush=True)
    targets = {"folder ?zip": f"{FOLDER}?zip"}
    if not args.no_package:
        client = server.client()
        client.expect("MKCOL", "/packages/bench/", (201,))
        started = time.perf_counter()
        dest = {"Destination": f"http://127.0.0.1:{server.port}/packages/bench/big"}
        client.expect("COPY", FOLDER, (201,), headers=dest)
        print(f"{name}: package pinned in {time.perf_counter() - started:.1f} s", flush=True)
        client.close()
        targets["package zip"] = PACKAGE_ZIP
    return server, targets


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=64_000)
    parser.add_argument(
        "--per-folder", type=int, default=0, help="files per subfolder (default 0: all in one)"
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--db", choices=("sqlite", "postgresql"), default="sqlite")
    parser.add_argument("--pg-url", default=PG_DEFAULT)
    parser.add_argument("--dav-env", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument(
        "--compare",
        metavar="DIR",
        action="append",
        default=[],
        help="also run a server with davserver imported from DIR (a checkout, e.g. a git"
        " worktree of an earlier commit); the servers are fetched from in turn (repeatable)",
    )
    parser.add_argument("--no-package", action="store_true", help="the folder's zip only")
    parser.add_argument(
        "--parallel",
        type=int,
        default=0,
        metavar="N",
        help="also fetch each zip N times at once per round (slowest time, peak RSS)",
    )
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args()
    trees: dict[str, str | None] = {"this tree": None, **{src: src for src in args.compare}}
    results: dict[str, dict[str, list[dict[str, Any]]]] = {name: {} for name in trees}
    with tempfile.TemporaryDirectory(prefix="davbench-zip-") as tmp:
        servers: list[Server] = []
        try:
            prepared = {}
            for index, (name, src) in enumerate(trees.items()):
                server, targets = prepare(f"dav{index}", Path(tmp), src, args)
                servers.append(server)
                prepared[name] = (server, targets)
            for round_no in range(args.rounds):
                order = list(prepared.items())
                shift = round_no % len(order)  # no tree always goes first
                order = order[shift:] + order[:shift]
                for label in targets:
                    for name, (server, targets) in order:
                        run = fetch(server, targets[label])
                        body = run.pop("body")
                        if round_no == 0:
                            check(body, args.files)
                        results[name].setdefault(label, []).append(run)
                        ranged = resume(server, targets[label], run["etag"], run["bytes"])
                        results[name].setdefault(f"{label} resume", []).append(ranged)
                        if args.parallel:
                            both = in_parallel(server, targets[label], args.parallel)
                            results[name].setdefault(f"{label} x{args.parallel}", []).append(both)
        finally:
            stop_servers(servers, args.pg_url)
    if args.json:
        print(json.dumps({"files": args.files, "db": args.db, "runs": results}, indent=2))
        return 0
    print(f"{args.files} files of a few bytes, {args.db}, {args.rounds} rounds: median [min-max]")
    for name, by_label in results.items():
        print(f"{name}:")
        for label, runs in by_label.items():
            if "bytes" not in runs[0]:  # a resume or parallel downloads
                print(
                    f"  {label:20s} total {summary(runs, 'total_s')} s"
                    f"  server CPU {summary(runs, 'server_cpu_s')} s"
                    f"  peak RSS {summary(runs, 'rss_peak_mib')} MiB"
                )
                continue
            print(
                f"  {label:20s} {runs[0]['bytes'] / 1e6:5.1f} MB"
                f"  first byte {summary(runs, 'first_byte_s')} s"
                f"  total {summary(runs, 'total_s')} s"
                f"  server CPU {summary(runs, 'server_cpu_s')} s"
                f"  peak RSS {summary(runs, 'rss_peak_mib')} MiB"
                f" (before the first: {runs[0]['rss_before_mib']:.0f} MiB)"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
