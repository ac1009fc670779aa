"""The cost of rechecking reshares on a server with many other users' grants and nodes.

A grant whose granter held SHARE only through another grant may stop standing when that grant
goes, or when the item moves out of the folder it was given on. Three questions are asked then:
who shared on (``spaces_of_grants_by``), whether a move out of a folder left a reshare
unsupported (``recheck_moved``), and the full pass over one space's grants
(``revoke_unsupported``). Each should cost what the space holds, not what the server holds.

The bench fills a fresh database with ``--users`` other users, each with ``--nodes`` folders in
their home and ``--grants`` of them granted to others (so ``users x grants`` grants in all), then
gives alice a small space: ``pub/`` granted to bob with SHARE, ``pub/inner`` reshared by bob
to carol, and ``vault/``. It times each question ``--reps`` times in a transaction that is
rolled back, and prints the median and the slowest in milliseconds.

    .venv/bin/python bench/regrant.py                        # SQLite, 400,000 nodes
    .venv/bin/python bench/regrant.py --db postgresql        # a fresh database, dropped after
    .venv/bin/python bench/regrant.py --users 50 --reps 3    # quick
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from trash_purge import PG_DEFAULT, database_url

from davserver.db import Database
from davserver.db.migrate import upgrade
from davserver.db.types import utcnow
from davserver.models import Grant, Node, User
from davserver.services import grant_support, tree

_n = Node.__table__
_g = Grant.__table__
_u = User.__table__


def _node(
    node_id: uuid.UUID, parent: uuid.UUID | None, name: str, owner: uuid.UUID
) -> dict[str, Any]:
    now = utcnow()
    return {
        "id": node_id, "parent_id": parent, "name": name, "name_key": name, "kind": "folder",
        "owner_id": owner, "space": "home", "size": 0, "created_at": now, "modified_at": now,
    }  # fmt: skip


def _grant(node: uuid.UUID, to: uuid.UUID, by: uuid.UUID, share: bool = False) -> dict[str, Any]:
    return {
        "id": uuid.uuid4(), "node_id": node, "user_id": to, "group_id": None, "can_read": True,
        "can_download": True, "can_write": False, "can_share": share, "granted_by": by,
        "granted_at": utcnow(), "expires_at": None,
    }  # fmt: skip


def fill(db: Database, users: int, nodes: int, grants: int, seed: int) -> dict[str, uuid.UUID]:
    """The other users' homes, folders and grants, then alice's small shared space."""
    rng = random.Random(seed)
    names = ["alice", "bob", "carol", *(f"user{i}" for i in range(users))]
    ids = {name: uuid.uuid4() for name in names}
    homes = {name: uuid.uuid4() for name in names}
    with db.engine.begin() as conn:
        conn.execute(
            _u.insert(),
            [{"id": ids[n], "username": n, "password_hash": "x"} for n in names],
        )
        conn.execute(_n.insert(), [_node(homes[n], None, n, ids[n]) for n in names])
        others = names[3:]
        for name in others:
            folders = [uuid.uuid4() for _ in range(nodes)]
            rows = [_node(f, homes[name], f"d{i}", ids[name]) for i, f in enumerate(folders)]
            conn.execute(_n.insert(), rows)
            conn.execute(
                _g.insert(),
                [
                    _grant(f, ids[rng.choice(others)], ids[name], share=True)
                    for f in rng.sample(folders, grants)
                ],
            )
        facts = {"alice": ids["alice"], "pub": uuid.uuid4(), "vault": uuid.uuid4()}
        inner = uuid.uuid4()
        conn.execute(
            _n.insert(),
            [
                _node(facts["pub"], homes["alice"], "pub", ids["alice"]),
                _node(inner, facts["pub"], "inner", ids["alice"]),
                _node(facts["vault"], homes["alice"], "vault", ids["alice"]),
            ],
        )
        conn.execute(
            _g.insert(),
            [
                _grant(facts["pub"], ids["bob"], ids["alice"], share=True),
                _grant(inner, ids["carol"], ids["bob"]),
            ],
        )
        facts["bob"] = ids["bob"]
    if not db.is_sqlite:
        with db.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.exec_driver_sql("VACUUM ANALYZE")
    return facts


def timed(db: Database, run: Callable[[Any], object], reps: int) -> tuple[float, float, object]:
    times, found = [], None
    for _ in range(reps):
        with db.read() as session:
            began = time.perf_counter()
            found = run(session)
            times.append((time.perf_counter() - began) * 1000)
            session.rollback()
    return statistics.median(times), max(times), found


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", choices=("sqlite", "postgresql"), default="sqlite")
    parser.add_argument("--pg-url", default=PG_DEFAULT)
    parser.add_argument("--users", type=int, default=200)
    parser.add_argument("--nodes", type=int, default=2000)
    parser.add_argument("--grants", type=int, default=1000)
    parser.add_argument("--reps", type=int, default=7)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, database_url(args.db, args.pg_url, tmp) as url:
        db = Database(url)
        upgrade(db)
        began = time.perf_counter()
        facts = fill(db, args.users, args.nodes, args.grants, args.seed)
        print(
            f"{args.db}: {args.users * args.nodes:,} nodes and {args.users * args.grants:,} "
            f"grants of others written in {time.perf_counter() - began:.0f} s; "
            f"median and slowest of {args.reps}, ms"
        )
        alice = grant_support.space_of(facts["alice"], None)
        cases: list[tuple[str, Callable[[Any], object]]] = [
            (
                "spaces_of_grants_by(bob)",
                lambda s: grant_support.spaces_of_grants_by(s, [facts["bob"]]),
            ),
            (
                "recheck_moved(pub -> vault)",
                lambda s: grant_support.recheck_moved(
                    s, None, alice, facts["pub"], tree.chain_ids(s, facts["vault"]), "bench"
                ),
            ),
            (
                "revoke_unsupported(alice)",
                lambda s: grant_support.revoke_unsupported(s, None, [alice], "bench"),
            ),
        ]
        print(f"{'question':32} {'median':>8} {'slowest':>8}  answer")
        for name, run in cases:
            median, slowest, found = timed(db, run, args.reps)
            print(f"{name:32} {median:8.1f} {slowest:8.1f}  {found}")
        db.dispose()
    return 0


if __name__ == "__main__":
    sys.exit(main())
