"""How long ``davserver user import`` holds the database's write lock.

An import is one transaction, all or nothing: while it runs, a live server's writes wait for
it (on SQLite they fail after ``database.busy_timeout``). The bench imports ``--users`` users
(bcrypt hashes, two roles each) into a fresh database and prints the whole import's seconds
and those spent inside the write transaction.

    .venv/bin/python bench/user_import.py                    # SQLite, 20,000 users
    .venv/bin/python bench/user_import.py --db postgresql    # a fresh database, dropped after
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from passlib.hash import bcrypt

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from trash_purge import PG_DEFAULT, database_url

from davserver.bootstrap import prepare
from davserver.config import load_settings
from davserver.db import Database


def held_writes(db: Database) -> list[float]:
    """The seconds of every write transaction ``db`` runs from now on."""
    spans: list[float] = []
    write = db.write

    @contextlib.contextmanager
    def timed(*args: object, **kwargs: object) -> Iterator[object]:
        started = time.perf_counter()
        with write(*args, **kwargs) as session:  # type: ignore[arg-type]
            yield session
        spans.append(time.perf_counter() - started)

    db.write = timed  # type: ignore[method-assign]
    return spans


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--users", type=int, default=20_000)
    p.add_argument("--db", choices=("sqlite", "postgresql"), default="sqlite")
    p.add_argument("--pg-url", default=PG_DEFAULT)
    args = p.parse_args()
    digest = bcrypt.using(rounds=4).hash("a password")
    lines = ["username,password_hash,roles\n"]
    lines += [f"user{i:06d},{digest},user viewer\n" for i in range(args.users)]
    with tempfile.TemporaryDirectory() as tmp, database_url(args.db, args.pg_url, tmp) as url:
        settings = load_settings(
            None, env={}, data_dir=tmp, database__url=url, admin__user="admin",
            admin__password="admin-password",
        )  # fmt: skip
        app, _ = prepare(settings)
        try:
            spans = held_writes(app.db)
            started = time.perf_counter()
            report = app.services.user_import.import_csv(None, lines)
            total = time.perf_counter() - started
        finally:
            app.close()
    print(
        f"{len(report.imported):,} users imported ({args.db}) in {total:.2f} s;"
        f" the write transaction held {max(spans):.2f} s"
    )


if __name__ == "__main__":
    main()
