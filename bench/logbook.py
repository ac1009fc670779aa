"""Reading a large logbook: how long ``read_logbook`` (``davserver audit`` and
``GET /api/v1/audit``) takes for each kind of filter, the statement it ran, on one engine.

It fills a fresh database with ``--rows`` synthetic logbook rows over 90 days (``--users``
users; mostly downloads and uploads, some sign-ins and locks, few shares and admin rows about
accounts, no package rows at all), then times each query ``--reps`` times and prints the median
and the slowest in milliseconds. The cases are the ones an admin asks: the newest rows, one
operation or a family of them (common, rare, none), one user (busy or quiet, with or without
what admins did to the account), one file, a day's window, and a page deep in the past
(``--before`` the id of a row near the oldest).

    .venv/bin/python bench/logbook.py                        # SQLite, 1,000,000 rows
    .venv/bin/python bench/logbook.py --db postgresql        # a fresh database, dropped after
    .venv/bin/python bench/logbook.py --rows 200000 --reps 3 # quick
"""

from __future__ import annotations

import argparse
import datetime as dt
import random
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import sqlalchemy as sa

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from trash_purge import PG_DEFAULT, database_url

from davserver.db import Database
from davserver.db.migrate import upgrade
from davserver.models import LogEntry, User
from davserver.models.logbook import Op
from davserver.services.audit import read_logbook

# How often each operation occurs (weights); package:* never does, so asking for it must not
# read the logbook.
MIX: dict[Op, float] = {
    Op.FILE_DOWNLOAD: 40,
    Op.FILE_VERSION_CREATE: 15,
    Op.FILE_CREATE: 10,
    Op.FOLDER_CREATE: 2,
    Op.NODE_MOVE: 2,
    Op.NODE_DELETE: 2,
    Op.NODE_PROPPATCH: 3,
    Op.LOCK_CREATE: 5,
    Op.LOCK_DELETE: 5,
    Op.LOGIN_SUCCESS: 4,
    Op.SESSION_START: 4,
    Op.SESSION_END: 2,
    Op.TOKEN_REFRESH: 3,
    Op.LOGIN_FAILURE: 1.5,
    Op.LOGIN_BAN: 0.05,
    Op.GRANT_CREATE: 0.3,
    Op.GRANT_REVOKE: 0.1,
    Op.USER_UPDATE: 0.2,
    Op.USER_PASSWORD_SET: 0.1,
    Op.APIKEY_CREATE: 0.05,
}
SPAN = dt.timedelta(days=90)
BATCH = 20_000


def as_written(row: dict[str, Any]) -> dict[str, Any]:
    """``row`` with the columns this revision's logbook has (``account_id`` came with
    migration 0011, and the bench also measures the revisions before it), each given: a
    statement inserting many rows takes the columns of the first."""
    if "account_id" not in LogEntry.__table__.c:
        row.pop("account_id", None)
    else:
        row.setdefault("account_id", None)
    return row


def fill(db: Database, rows: int, users: int, seed: int) -> dict[str, Any]:
    """The users and ``rows`` logbook rows; what the queries ask about."""
    rng = random.Random(seed)
    start = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    people = [
        {"id": uuid.uuid4(), "username": f"user{i:04d}", "created_at": start, "updated_at": start}
        for i in range(users)
    ]
    quiet = {"id": uuid.uuid4(), "username": "quiet", "created_at": start, "updated_at": start}
    admin = people[0]
    ops, weights = list(MIX), list(MIX.values())
    nodes = [uuid.uuid4() for _ in range(5_000)]
    # A Zipf-like spread: a few users do most of the work.
    busy = [1.0 / (rank + 1) for rank in range(users)]
    with db.write() as session:
        session.execute(sa.insert(User.__table__), [*people, quiet])
    step = SPAN / rows
    written = 0
    while written < rows:
        batch = []
        for i in range(written, min(rows, written + BATCH)):
            op = rng.choices(ops, weights)[0]
            who = rng.choices(people, busy)[0]
            row: dict[str, Any] = {
                "occurred_at": start + step * i,
                "user_id": who["id"],
                "op_type": op.value,
                "node_id": None,
                "remote_addr": "192.0.2.7",
                "details": {},
            }
            if op.value.startswith(("file:", "folder:", "node:", "lock:")):
                row["node_id"] = rng.choice(nodes)
            elif op in (Op.LOGIN_FAILURE, Op.LOGIN_BAN):
                row["user_id"] = None
                target = rng.choice(people)
                name = target["username"]
                failed = op is Op.LOGIN_FAILURE
                row["details"] = {"username": name} if failed else {"key": "user:" + name}
                row["account_id"] = target["id"]
            elif op.value.startswith(("user:", "apikey:")) or op is Op.SESSION_END:
                row["user_id"] = admin["id"]
                target = rng.choice(people)
                row["details"] = {"user_id": str(target["id"])}
                row["account_id"] = target["id"]
            batch.append(as_written(row))
        with db.write() as session:
            session.execute(sa.insert(LogEntry.__table__), batch)
        written += len(batch)
    # The quiet account: three rows of its own and one an admin wrote about it, long ago.
    with db.write() as session:
        session.execute(
            sa.insert(LogEntry.__table__),
            [
                as_written({"occurred_at": start + dt.timedelta(hours=h), "user_id": quiet["id"],
                 "op_type": Op.LOGIN_SUCCESS.value, "remote_addr": "192.0.2.8", "details": {}})
                for h in (1, 2, 3)
            ] + [
                as_written({"occurred_at": start + dt.timedelta(hours=4), "user_id": admin["id"],
                 "op_type": Op.USER_UPDATE.value, "remote_addr": "192.0.2.7",
                 "details": {"user_id": str(quiet["id"])}, "account_id": quiet["id"]}),
            ],
        )  # fmt: skip
    log = LogEntry.__table__
    with db.connect() as conn:
        total = conn.scalar(sa.select(sa.func.count()).select_from(log))
        deep = conn.scalar(sa.select(log.c.id).order_by(log.c.id).offset(rows // 20).limit(1))
        node = conn.scalar(
            sa.select(log.c.node_id).where(log.c.node_id.is_not(None)).order_by(log.c.id).limit(1)
        )
        busiest = conn.scalar(
            sa.select(sa.func.count()).select_from(log).where(log.c.user_id == people[1]["id"])
        )
        if not db.is_sqlite:
            conn.exec_driver_sql("ANALYZE logbook")
        else:
            conn.exec_driver_sql("ANALYZE")
        conn.commit()
    return {
        "total": total,
        "admin": admin["id"],
        "busy": people[1]["id"],
        "busy_rows": busiest,
        "quiet": quiet["id"],
        "deep": deep,
        "node": node,
        "day": start + dt.timedelta(days=45),
    }


def cases(facts: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    day = facts["day"]
    return [
        ("newest 100", {}),
        ("--op file (common family)", {"op": "file"}),
        ("--op file:download", {"op": "file:download"}),
        ("--op share:grant:create (rare)", {"op": "share:grant:create"}),
        ("--op share (rare family)", {"op": "share"}),
        ("--op package (no rows)", {"op": "package"}),
        (f"--user busy ({facts['busy_rows']} rows)", {"user_id": facts["busy"]}),
        ("--user busy, admin's view", {"user_id": facts["busy"], "about_user": True}),
        ("--user quiet (4 rows, long ago)", {"user_id": facts["quiet"]}),
        ("--user quiet, admin's view", {"user_id": facts["quiet"], "about_user": True}),
        ("--node (one file)", {"node_id": facts["node"]}),
        ("--since/--until one day", {"since": day, "until": day + dt.timedelta(days=1)}),
        ("--before a row near the oldest", {"before": facts["deep"]}),
        ("--op share --before near the oldest", {"op": "share", "before": facts["deep"]}),
        (
            "--user busy --before near the oldest",
            {"user_id": facts["busy"], "before": facts["deep"]},
        ),
    ]


def timed(run: Callable[[], object], reps: int) -> tuple[float, float, int]:
    times, found = [], 0
    for _ in range(reps):
        began = time.perf_counter()
        found = len(run())  # type: ignore[arg-type]
        times.append((time.perf_counter() - began) * 1000)
    return statistics.median(times), max(times), found


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", choices=("sqlite", "postgresql"), default="sqlite")
    parser.add_argument("--pg-url", default=PG_DEFAULT)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--users", type=int, default=200)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, database_url(args.db, args.pg_url, tmp) as url:
        db = Database(url)
        upgrade(db)
        began = time.perf_counter()
        facts = fill(db, args.rows, args.users, args.seed)
        print(
            f"{args.db}: {facts['total']:,} logbook rows written in "
            f"{time.perf_counter() - began:.0f} s; median and slowest of {args.reps} reads, ms"
        )
        print(f"{'query (100 rows at most)':44} {'median':>8} {'slowest':>8} {'rows':>5}")
        for name, filters in cases(facts):
            median, slowest, found = timed(lambda f=filters: read_logbook(db, **f), args.reps)
            print(f"{name:44} {median:8.1f} {slowest:8.1f} {found:5d}")
        db.dispose()
    return 0


if __name__ == "__main__":
    sys.exit(main())
