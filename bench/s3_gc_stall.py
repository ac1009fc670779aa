"""How long gc holds SQLite's write lock when the blobs are in S3 (SeaweedFS, started here).

Makes ``--blobs`` small blob rows and objects nothing references, runs gc, and prints the total
time and the longest write transaction: while one is open every other writer waits.

    .venv/bin/python bench/s3_gc_stall.py --blobs 200 --ports 9130-9139
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sqlalchemy import event

import tests.s3 as s3_tests
from davserver.blobstore.s3 import S3BlobStore
from davserver.db import Database
from davserver.db.migrate import upgrade
from davserver.services.maintenance import MaintenanceService
from tests.blobs import loose_blob


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--blobs", type=int, default=200)
    p.add_argument("--ports", help="take the ports from this range, e.g. 9130-9139")
    args = p.parse_args()
    if args.ports:
        first, _, last = args.ports.partition("-")
        ports = iter(range(int(first), int(last or first) + 1))
        s3_tests.free_port = lambda: next(ports)
    with tempfile.TemporaryDirectory(prefix="s3-gc-") as tmp:
        base = Path(tmp)
        with (
            s3_tests.run_s3_endpoint(base, "seaweedfs") as endpoint,
            s3_tests.fresh_bucket(endpoint.url) as bucket,
        ):
            store = S3BlobStore(s3_tests.location(endpoint.url, bucket, "blobs/"), base / "tmp")
            db = Database(f"sqlite:///{base}/db.sqlite")
            upgrade(db)
            for n in range(args.blobs):
                loose_blob(db, store, b"loose blob %d " % n * 100)
            began: dict[int, float] = {}
            held: list[float] = []

            def seen(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
                if statement == "BEGIN IMMEDIATE":
                    began[threading.get_ident()] = time.perf_counter()

            def ended(_conn: Any) -> None:
                started = began.pop(threading.get_ident(), None)
                if started is not None:
                    held.append(time.perf_counter() - started)

            event.listen(db.engine, "before_cursor_execute", seen)
            event.listen(db.engine, "commit", ended)
            started = time.perf_counter()
            report = MaintenanceService(db, store).collect_garbage(grace=dt.timedelta(0))
            seconds = time.perf_counter() - started
            print(
                f"{args.blobs} loose blobs: gc removed {report.blobs_removed} in {seconds:.2f} s;"
                f" longest write transaction {max(held) * 1000:.0f} ms ({len(held)} in all)"
            )
            db.engine.dispose()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
