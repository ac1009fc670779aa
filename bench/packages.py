"""A 2 GiB package streamed over HTTP from a ``davserver serve`` subprocess, with the server's
RSS sampled during the download: memory must stay flat whatever the package's size.

The run PUTs ``--files`` files of ``--file-mib`` MiB through HTTP (every 1 MiB block starts
with a salt and its index, so nothing deduplicates), pins them with one COPY of their folder
into ``/packages/bench/``, then:

1. HEAD of the zip: Content-Length and ETag before any byte, and how long that took;
2. GET of the whole zip, read into a 1 MiB buffer and discarded: MB/s, and the server's RSS
   (process tree, sampled every 20 ms) before and at its peak;
3. a resumed GET from half-way (``Range: bytes=N-`` with ``If-Range``): MB/s and RSS;
4. untimed checks: the byte count, the zip signatures at the start and in the end record, and
   the salt/index of one block of each file read back by Range at its offset in the zip.

    .venv/bin/python bench/packages.py                      # 8 x 256 MiB on SQLite
    .venv/bin/python bench/packages.py --db postgresql      # the same on PostgreSQL
    .venv/bin/python bench/packages.py --files 2 --file-mib 64   # quick
"""

from __future__ import annotations

import argparse
import json
import secrets
import struct
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from core import (
    MIB,
    OK_PUT,
    PG_DEFAULT,
    Client,
    HttpError,
    RssSampler,
    Server,
    big_body,
    start_davserver,
    stop_servers,
)

ZIP_NAME = "/packages/bench.zip"


def upload(client: Client, count: int, size: int) -> tuple[float, list[int]]:
    """PUT ``count`` files of ``size`` bytes into /files/pkg/; (seconds, salts)."""
    client.expect("MKCOL", "/files/pkg/", (201,))
    salts = []
    started = time.perf_counter()
    for index in range(count):
        salt = secrets.randbits(63)
        resp = client.send(
            "PUT",
            f"/files/pkg/f{index:02d}.bin",
            big_body(size, salt),
            {"Content-Length": str(size), "Content-Type": "application/octet-stream"},
        )
        resp.read()
        client.finish(resp)
        if resp.status not in OK_PUT:
            raise HttpError(f"PUT f{index:02d}.bin -> {resp.status}")
        salts.append(salt)
    return time.perf_counter() - started, salts


def stream(server: Server, headers: dict[str, str] | None = None) -> dict[str, Any]:
    """GET the zip (or a range of it), discarding the bytes; MB/s and the server's RSS."""
    client = server.client()
    buffer = memoryview(bytearray(MIB))
    try:
        with RssSampler(server.pid) as rss:
            started = time.perf_counter()
            resp = client.send("GET", ZIP_NAME, headers=headers)
            first = time.perf_counter() - started
            got = 0
            while count := resp.readinto(buffer):
                got += count
            seconds = time.perf_counter() - started
        if resp.status not in (200, 206):
            raise HttpError(f"GET {ZIP_NAME} -> {resp.status}")
        if got != int(resp.headers["Content-Length"]):
            raise HttpError(f"got {got} bytes of {resp.headers['Content-Length']}")
        return {
            "status": resp.status,
            "bytes": got,
            "seconds": seconds,
            "mbps": got / seconds / 1e6,
            "first_byte_ms": first * 1000,
            "rss_before_mib": rss.before / 1024,
            "rss_peak_mib": rss.peak / 1024,
            "rss_growth_mib": (rss.peak - rss.before) / 1024,
            "rss_samples": rss.samples,
        }
    finally:
        client.close()


def check(server: Server, size: int, salts: list[int], file_size: int) -> None:
    """The zip's signatures, and one block of each file found where the zip says it is."""
    client = server.client()
    try:
        _, _, start = client.expect("GET", ZIP_NAME, (206,), headers={"Range": "bytes=0-3"})
        _, _, end = client.expect("GET", ZIP_NAME, (206,), headers={"Range": "bytes=-22"})
        if start != b"PK\x03\x04" or b"PK\x05\x06" not in end:
            raise HttpError("the zip's signatures are not where they belong")
        # Each entry: local header (30 bytes + name + 9-byte timestamp extra) then the data.
        offset = 0
        for index, salt in enumerate(salts):
            name_length = len(f"pkg/f{index:02d}.bin")
            extra = 9 + (20 if file_size >= 0xFFFFFFFF else 0)
            data = offset + 30 + name_length + extra
            block = (index * 7) % (file_size // MIB)
            at = data + block * MIB
            rng = {"Range": f"bytes={at}-{at + 15}"}
            _, _, got = client.expect("GET", ZIP_NAME, (206,), headers=rng)
            if got != struct.pack("<QQ", salt, block):
                raise HttpError(f"f{index:02d}.bin block {block}: wrong bytes at {at}")
            offset = data + file_size
        if offset >= size:
            raise HttpError("the entries reach past the zip's end")
    finally:
        client.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=8)
    parser.add_argument("--file-mib", type=int, default=256)
    parser.add_argument("--db", choices=("sqlite", "postgresql"), default="sqlite")
    parser.add_argument("--pg-url", default=PG_DEFAULT)
    parser.add_argument("--dav-env", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args()
    file_size = args.file_mib * MIB
    with tempfile.TemporaryDirectory(prefix="davbench-pkg-") as tmp:
        server = Server("davserver", Path(tmp) / "dav", secrets.token_urlsafe(12))
        try:
            start_davserver(server, sys.executable, args.db, args.pg_url, args.dav_env)
            client = server.client()
            put_seconds, salts = upload(client, args.files, file_size)
            client.expect("MKCOL", "/packages/bench/", (201,))
            copy = {"Destination": f"http://127.0.0.1:{server.port}/packages/bench/pkg"}
            client.expect("COPY", "/files/pkg/", (201,), headers=copy)
            started = time.perf_counter()
            _, head, _ = client.expect("HEAD", ZIP_NAME, (200,))
            head_ms = (time.perf_counter() - started) * 1000
            client.close()
            size, etag = int(head["Content-Length"]), head["ETag"]
            whole = stream(server)
            half = size // 2
            resumed = stream(server, {"Range": f"bytes={half}-", "If-Range": etag})
            if resumed["status"] != 206 or resumed["bytes"] != size - half:
                raise HttpError(f"the resumed GET answered {resumed['status']}")
            check(server, size, salts, file_size)
        finally:
            stop_servers([server], args.pg_url)
    figures = {
        "db": args.db,
        "files": args.files,
        "file_mib": args.file_mib,
        "zip_bytes": size,
        "put_mbps": args.files * file_size / put_seconds / 1e6,
        "head_ms": head_ms,
        "get": whole,
        "resume": resumed,
    }
    if args.json:
        print(json.dumps(figures, indent=2))
        return 0
    print(
        f"package of {args.files} x {args.file_mib} MiB = {size / 2**30:.2f} GiB zip, {args.db}"
        f" (uploaded at {figures['put_mbps']:.0f} MB/s)"
    )
    print(f"  HEAD: Content-Length {size}, ETag {etag}, in {head_ms:.1f} ms")
    for label, run in (("GET whole", whole), (f"GET from {half}", resumed)):
        print(
            f"  {label:16s} {run['mbps']:7.0f} MB/s  first byte {run['first_byte_ms']:6.1f} ms"
            f"  server RSS {run['rss_before_mib']:.0f} MiB before, peak {run['rss_peak_mib']:.0f}"
            f" MiB (+{run['rss_growth_mib']:.1f}; {run['rss_samples']} samples)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
