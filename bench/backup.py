"""``davserver backup`` of a running server: the first run, a run with nothing new, and one
after more uploads, into the same folder.

Starts ``davserver serve`` on a fresh data folder, PUTs ``--files`` files of 4 KiB and one of
``--big-mib`` MiB over HTTP, then runs ``davserver backup`` three times into one folder, the
third after ``--more`` new files. Prints, per run, the command's own report (seconds for the
database and in all, blobs copied and kept) and the wall time of the whole command, start-up
included.

    .venv/bin/python bench/backup.py                       # SQLite, 5,000 files + 256 MiB
    .venv/bin/python bench/backup.py --db postgresql       # a fresh database, dropped after
"""

from __future__ import annotations

import argparse
import json
import secrets
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from core import (
    MIB,
    PG_DEFAULT,
    VENV_PYTHON,
    Server,
    big_body,
    put_files,
    start_davserver,
    stop_servers,
)


def backup(server: Server, python: str, folder: Path) -> tuple[dict[str, object], float]:
    """One ``davserver backup`` on the server's settings: its report and its wall time."""
    started = time.perf_counter()
    done = subprocess.run(
        [python, "-m", "davserver", "backup", str(folder), "--json", "--quiet"],
        cwd=server.workdir,
        env=server.env,
        capture_output=True,
        text=True,
        check=False,
    )
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"davserver backup failed ({done.returncode}): {done.stderr[-2000:]}")
    report: dict[str, object] = json.loads(done.stdout)
    return report, wall


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--files", type=int, default=5000, help="4 KiB files before the first run")
    p.add_argument("--big-mib", type=int, default=256, help="size of the one big file")
    p.add_argument("--more", type=int, default=100, help="files added before the third run")
    p.add_argument("--db", choices=("sqlite", "postgresql"), default="sqlite")
    p.add_argument("--pg-url", default=PG_DEFAULT)
    p.add_argument("--python", default=str(VENV_PYTHON))
    args = p.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-backup-") as tmp:
        server = Server("davserver", Path(tmp) / "live", secrets.token_urlsafe(12))
        try:
            start_davserver(server, args.python, args.db, args.pg_url)
            client = server.client()
            client.expect("MKCOL", "/files/small/", (201,))
            put_files(client, "/files/small/", args.files, 4096, tag=1)
            client.expect("PUT", "/files/big.bin", (201,), big_body(args.big_mib * MIB, salt=2))
            folder = Path(tmp) / "backup"
            runs = [("first", *backup(server, args.python, folder))]
            runs.append(("nothing new", *backup(server, args.python, folder)))
            put_files(client, "/files/small/", args.more, 4096, tag=3, start=args.files)
            runs.append((f"{args.more} new files", *backup(server, args.python, folder)))
            client.close()
        finally:
            stop_servers([server], args.pg_url)

    print(
        f"davserver backup on {args.db}: {args.files} files of 4 KiB and one of "
        f"{args.big_mib} MiB\n"
    )
    print(
        f"{'run':<16}{'database s':>12}{'total s':>10}{'copied':>9}{'MiB':>9}{'kept':>8}"
        f"{'wall s':>9}"
    )
    for name, report, wall in runs:
        mib = int(str(report["bytes_copied"])) / MIB
        print(
            f"{name:<16}{report['database_seconds']:>12}{report['seconds']:>10}"
            f"{report['blobs_copied']:>9}{mib:>9.1f}{report['blobs_kept']:>8}{wall:>9.2f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
