"""Purging a large item from the trash: how long it takes, how long it holds the database, and
what another writer waits meanwhile.

Each round builds a trashed folder of ``--files`` files (one version and one blob each) in
``--folders`` subfolders, straight into the database, then purges it with
``TrashService.purge`` (what DELETE /trash/<name> does) while another thread makes small
writes (an empty folder each, in a loop) in the same user's space. Printed per round: the
purge's total time, its longest write transaction (time inside ``Database.write``) and how
many it ran, and the other writer's longest wait and number of writes; then medians.

With ``--items N`` a round instead puts N files in the trash, each an item of its own, and
purges them as expired (``purge_expired``, what housekeeping, ``davserver trash purge`` and a
listing of /trash/ do): the cost per item.

    .venv/bin/python bench/trash_purge.py                       # SQLite, 64,000 files, 3 rounds
    .venv/bin/python bench/trash_purge.py --db postgresql       # a fresh database, dropped after
    .venv/bin/python bench/trash_purge.py --files 300000 --rounds 1
    .venv/bin/python bench/trash_purge.py --items 2000           # many small items
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import hashlib
import secrets
import statistics
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import sqlalchemy as sa

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from davserver.blobstore import FileSystemBlobStore
from davserver.db import Base, Database
from davserver.db.migrate import upgrade
from davserver.db.types import utcnow
from davserver.models import User
from davserver.services import trash_purge as trash_module
from davserver.services.actor import Actor
from davserver.services.files import FileService
from davserver.services.trash import TrashService

PG_DEFAULT = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
_n = Base.metadata.tables["nodes"]
_v = Base.metadata.tables["file_versions"]
_b = Base.metadata.tables["blobs"]


@contextlib.contextmanager
def database_url(kind: str, pg_url: str, tmp: str) -> Iterator[str]:
    if kind == "sqlite":
        yield f"sqlite:///{tmp}/bench.sqlite3"
        return
    name = f"davserver_bench_{secrets.token_hex(4)}"
    admin = sa.create_engine(pg_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    try:
        yield sa.make_url(pg_url).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.dispose()


def build_trashed_folder(
    db: Database, home: uuid.UUID, owner: uuid.UUID, files: int, folders: int, tag: str
) -> uuid.UUID:
    """A folder in ``home`` holding ``files`` files in ``folders`` subfolders, in the trash."""
    now = utcnow()
    top = uuid.uuid4()

    def node(node_id: uuid.UUID, parent: uuid.UUID, name: str, kind: str) -> dict[str, Any]:
        return {
            "id": node_id,
            "parent_id": parent,
            "name": name,
            "name_key": name,
            "kind": kind,
            "owner_id": owner,
            "space": "home",
            "size": 0,
            "created_at": now,
            "modified_at": now,
        }

    subfolders = [uuid.uuid4() for _ in range(folders)]
    with db.engine.begin() as conn:
        conn.execute(_n.insert(), [node(top, home, f"big-{tag}", "folder")])
        conn.execute(
            _n.insert(), [node(f, top, f"d{i}", "folder") for i, f in enumerate(subfolders)]
        )
        for start in range(0, files, 10000):
            nodes = []
            for i in range(start, min(files, start + 10000)):
                row = node(uuid.uuid4(), subfolders[i % folders], f"f{i}.txt", "file")
                nodes.append({**row, "size": 100})
            _insert_files(conn, nodes, owner, tag)
        conn.execute(
            _n.update().where(_n.c.id == top).values(deleted_at=utcnow(), deleted_by=owner)
        )
    if not db.is_sqlite:
        with db.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.exec_driver_sql("VACUUM ANALYZE")
    return top


def build_trashed_files(db: Database, home: uuid.UUID, owner: uuid.UUID, count: int) -> None:
    """``count`` files of ``home`` in the trash, each an item of its own (one version, one
    blob each)."""
    now = utcnow()
    nodes = [
        {"id": uuid.uuid4(), "parent_id": home, "name": f"item{i}.txt", "name_key": f"item{i}.txt",
         "kind": "file", "owner_id": owner, "space": "home", "size": 100, "created_at": now,
         "modified_at": now, "deleted_at": now, "deleted_by": owner}
        for i in range(count)
    ]  # fmt: skip
    with db.engine.begin() as conn:
        _insert_files(conn, nodes, owner, "item")


def _insert_files(
    conn: sa.Connection, nodes: list[dict[str, Any]], owner: uuid.UUID, tag: str
) -> None:
    """Insert the file ``nodes``, each with a version of 100 bytes and a blob of its own."""
    now = utcnow()
    blobs, versions = [], []
    for i, row in enumerate(nodes):
        blob_id = uuid.uuid4()
        digest = hashlib.sha256(f"{tag}-{i}-{row['id']}".encode()).hexdigest()
        blobs.append(
            {"id": blob_id, "sha256": digest, "md5": digest[:32], "sha1": digest[:40],
             "size_bytes": 100, "storage_key": digest, "created_at": now}
        )  # fmt: skip
        versions.append(
            {"id": uuid.uuid4(), "node_id": row["id"], "version_no": 1, "blob_id": blob_id,
             "size": 100, "uploaded_by": owner, "uploaded_at": now}
        )  # fmt: skip
    conn.execute(_n.insert(), nodes)
    conn.execute(_b.insert(), blobs)
    conn.execute(_v.insert(), versions)
    conn.execute(
        _n.update()
        .where(_n.c.id == sa.bindparam("nid"))
        .values(current_version_id=sa.bindparam("vid")),
        [{"nid": v["node_id"], "vid": v["id"]} for v in versions],
    )


class WriteTimer:
    """Times each ``Database.write`` transaction of the threads it is told to watch."""

    def __init__(self, db: Database) -> None:
        self.original = db.write
        self.watched: dict[int, list[float]] = {}
        db.write = self.write  # type: ignore[method-assign]

    @contextlib.contextmanager
    def write(self) -> Iterator[Any]:
        started = time.perf_counter()
        try:
            with self.original() as session:
                yield session
        finally:
            spans = self.watched.get(threading.get_ident())
            if spans is not None:
                spans.append(time.perf_counter() - started)

    def watch(self) -> list[float]:
        return self.watched.setdefault(threading.get_ident(), [])


def one_round(args: argparse.Namespace, tmp: str, r: int) -> dict[str, float]:
    with database_url(args.db, args.pg_url, tmp) as url:
        db = Database(url)
        upgrade(db)
        with db.write() as session:
            user = User(username="bench", password_hash="x")
            session.add(user)
            session.flush()
            actor = Actor(user_id=user.id, username="bench")
        files = FileService(db, FileSystemBlobStore(Path(tmp) / f"blobs{r}", fsync=False))
        home_id = files.home_id(actor.user_id)
        home = files.resolve(home_id, [])
        assert home is not None
        if args.items:
            build_trashed_files(db, home_id, actor.user_id, args.items)
        else:
            top = build_trashed_folder(db, home_id, actor.user_id, args.files, args.folders, str(r))
        trash = TrashService(db, files)
        timer = WriteTimer(db)
        stop = threading.Event()
        waits: list[float] = []

        def other_writer() -> None:
            i = 0
            while not stop.is_set():
                started = time.perf_counter()
                files.create_folder(actor, home, f"w{r}-{i}")
                waits.append(time.perf_counter() - started)
                i += 1
                time.sleep(0.01)

        writer = threading.Thread(target=other_writer)
        if args.no_writer:
            stop.set()
        spans = timer.watch()
        writer.start()
        time.sleep(0.1)
        started = time.perf_counter()
        if args.items:
            report = trash.purge_expired(older_than=dt.timedelta(0))
            assert report.items_purged == args.items, report
        else:
            removed = trash.purge(actor, top)
            assert removed == args.files + args.folders + 1, removed
        total = time.perf_counter() - started
        stop.set()
        writer.join()
        with db.connect() as conn:
            left = conn.scalar(sa.select(sa.func.count()).select_from(_v))
        assert left == 0, left
        db.dispose()
    return {
        "total_s": total,
        "longest_tx_s": max(spans),
        "transactions": len(spans),
        "other_longest_wait_s": max(waits, default=0.0),
        "other_writes": len(waits),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--db", choices=("sqlite", "postgresql"), default="sqlite")
    parser.add_argument("--pg-url", default=PG_DEFAULT)
    parser.add_argument("--files", type=int, default=64000)
    parser.add_argument("--folders", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--items", type=int, default=0, help="purge this many one-file items instead (expired)"
    )
    parser.add_argument("--no-writer", action="store_true", help="no other writer meanwhile")
    parser.add_argument("--batch", type=int, help="rows per purge transaction (_DELETE_BATCH)")
    parser.add_argument("--pause-share", type=float, help="of a batch's time (_PAUSE_SHARE)")
    args = parser.parse_args()
    if args.batch is not None:
        trash_module._DELETE_BATCH = args.batch
    if args.pause_share is not None:
        trash_module._PAUSE_SHARE = args.pause_share
    results = []
    for r in range(args.rounds):
        with tempfile.TemporaryDirectory(prefix="trash-purge-") as tmp:
            result = one_round(args, tmp, r)
        results.append(result)
        print(f"round {r + 1}: " + ", ".join(f"{k} {v:.3f}" for k, v in result.items()), flush=True)
    what = (
        f"{args.items} one-file items"
        if args.items
        else f"{args.files} files in {args.folders} folders"
    )
    print(f"{args.db}, {what}, {args.rounds} rounds:")
    for key in results[0]:
        values = [res[key] for res in results]
        print(
            f"  {key:22} median {statistics.median(values):8.3f}"
            f"  [{min(values):.3f}-{max(values):.3f}]"
        )


if __name__ == "__main__":
    main()
