"""The trash's queries read the trashed rows only, however many live nodes there are, on both
engines: the sweep's purge of everyone's expired items, one user's purge and /trash/ listings."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Callable
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy import event

from davserver.db import Base, Database
from davserver.db.types import utcnow
from davserver.models import Group, LogEntry, User
from davserver.services import trash as trash_module
from davserver.services import trash_purge
from davserver.services.actor import Actor
from davserver.services.audit import read_logbook
from davserver.services.files import FileService
from davserver.services.namespace import NamespaceService
from davserver.services.trash import TrashService
from davserver.services.tree import NodeView
from tests.dbs import pg_reads

LIVE = 12000
_n = Base.metadata.tables["nodes"]


def _rows(
    parent: uuid.UUID,
    owner: uuid.UUID,
    count: int,
    *,
    group: uuid.UUID | None = None,
    deleted: tuple[dt.datetime, uuid.UUID] | None = None,
) -> list[dict[str, Any]]:
    """``count`` files in ``parent``, live or (``deleted``: when, by whom) in the trash."""
    now = utcnow()
    deleted_at, deleted_by = deleted if deleted else (None, None)
    rows = []
    for _ in range(count):
        name = uuid.uuid4().hex
        rows.append(
            {
                "id": uuid.uuid4(),
                "parent_id": parent,
                "name": name,
                "name_key": name,
                "kind": "file",
                "owner_id": owner,
                "space": "group" if group else "home",
                "group_id": group,
                "size": 0,
                "created_at": now,
                "modified_at": now,
                "deleted_at": deleted_at,
                "deleted_by": deleted_by,
            }
        )
    return rows


def _run_watched(database: Database, call: Callable[[], int]) -> tuple[int, list[Any]]:
    """What ``call`` returns, and the statements it ran that look for trashed nodes (each with
    its parameters)."""
    seen: list[tuple[str, Any]] = []

    def listener(_c: object, _cur: object, statement: str, parameters: Any, *_a: object) -> None:
        if "deleted_at IS NOT NULL" in statement:
            seen.append((statement, parameters))

    event.listen(database.engine, "before_cursor_execute", listener)
    try:
        return call(), seen
    finally:
        event.remove(database.engine, "before_cursor_execute", listener)


def _how_it_reads_nodes(database: Database, statement: str, parameters: Any) -> str | None:
    """None when ``statement`` finds its rows of nodes through an index, without reading the
    whole table or a whole index; else what it does instead."""
    with database.engine.begin() as conn:
        if database.is_sqlite:
            plan = [
                row[-1]
                for row in conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {statement}", parameters)
            ]
            scans = [step for step in plan if step.startswith("SCAN nodes")]
            return f"plan {plan}" if scans else None
        before = pg_reads(conn, "nodes")
        conn.exec_driver_sql(statement, parameters).all()
        after = pg_reads(conn, "nodes")
    scanned = after.scanned - before.scanned
    blocks = after.index_blocks - before.index_blocks
    # A block or two per index looked up; an index of every node takes some 13 here.
    return f"{scanned} rows scanned, {blocks} index blocks read" if scanned or blocks > 4 else None


_MORE_LIVE_FILES = sa.text(
    "INSERT INTO nodes (id, parent_id, name, name_key, kind, owner_id, space, size, created_at,"
    " modified_at) SELECT gen_random_uuid(), :folder, md5(i::text), md5(i::text), 'file', :owner,"
    " 'home', 0, now(), now() FROM generate_series(1, 90000) AS i"
)


def test_purging_and_listing_the_trash_read_only_trashed_rows(
    database: Database, files: FileService, actor: Actor, home: NodeView
) -> None:
    """Every housekeeping sweep purges everyone's expired items, and every /trash/ request
    lists the user's: with an index holding every node (owner_id first), the sweep read all
    the nodes (PostgreSQL: the whole table or the whole index; SQLite: the table), and a
    listing that includes group items read the whole table."""
    with database.write() as session:
        bob = User(username="bob", password_hash="x")
        team = Group(name="team")
        session.add_all([bob, team])
        session.flush()
        bob_id, team_id = bob.id, team.id
    bob_home = files.home_id(bob_id)
    team_root = files.group_root_id(team_id, actor.user_id)
    old, fresh = utcnow() - dt.timedelta(days=60), utcnow() - dt.timedelta(days=1)
    alice = actor.user_id
    rows = [
        *_rows(home.id, alice, LIVE // 2),
        *_rows(bob_home, bob_id, LIVE // 4),
        *_rows(team_root, alice, LIVE // 4, group=team_id),
        *_rows(home.id, alice, 10, deleted=(old, alice)),
        *_rows(home.id, alice, 3, deleted=(fresh, alice)),
        *_rows(bob_home, bob_id, 10, deleted=(old, bob_id)),
        *_rows(team_root, alice, 5, group=team_id, deleted=(old, alice)),
        *_rows(team_root, alice, 5, group=team_id, deleted=(old, bob_id)),
    ]
    with database.engine.begin() as conn:
        conn.execute(_n.insert(), rows)
        if not database.is_sqlite:  # where a scan costs: PostgreSQL plans one below ~50,000
            conn.execute(_MORE_LIVE_FILES, {"folder": home.id, "owner": alice})

    trash = TrashService(database, files)
    month = dt.timedelta(days=30)
    # What each finds: 30 expired items in all; alice's 13 (3 of them recent), and the 5
    # group items she deleted.
    calls: dict[str, tuple[Callable[[], int], int]] = {
        "the sweep's purge": (
            lambda: trash.purge_expired(older_than=month, dry_run=True).items_purged,
            30,
        ),
        "one user's purge": (
            lambda: trash.purge_expired(older_than=month, user_id=alice, dry_run=True).items_purged,
            15,
        ),
        "listing, any group": (lambda: len(trash.listing(alice, None).entries), 18),
        "listing, alice's groups": (lambda: len(trash.listing(alice, [team_id]).entries), 18),
        "listing, no group": (lambda: len(trash.listing(alice, []).entries), 13),
    }
    problems = {}
    # PostgreSQL: without statistics (autovacuum, which gathers them, may be off), and with.
    for statistics in ("none", "analysed"):
        if statistics == "analysed" and not database.is_sqlite:
            with database.engine.begin() as conn:
                conn.exec_driver_sql("ANALYZE nodes")
        for label, (call, expected) in calls.items():
            found, statements = _run_watched(database, call)
            assert (found, len(statements)) == (expected, 1), label
            problem = _how_it_reads_nodes(database, *statements[0])
            if problem is not None:
                problems[f"{label}, statistics: {statistics}"] = problem
    assert problems == {}


def test_the_purge_meets_each_expired_item_once_oldest_first(
    database: Database,
    files: FileService,
    actor: Actor,
    home: NodeView,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The purge reads the expired items a batch at a time; an item it leaves in place (a dry
    run leaves them all, a pinned one stays) must not come round again, nor stop it."""
    old = utcnow() - dt.timedelta(days=60)
    rows = [
        *_rows(home.id, actor.user_id, 3, deleted=(old, actor.user_id)),  # one instant: ids decide
        *_rows(home.id, actor.user_id, 4, deleted=(old + dt.timedelta(hours=1), actor.user_id)),
        *_rows(home.id, actor.user_id, 2, deleted=(utcnow(), actor.user_id)),  # not expired
    ]
    with database.engine.begin() as conn:
        conn.execute(_n.insert(), rows)
    monkeypatch.setattr(trash_purge, "_PURGE_BATCH", 2)
    trash = TrashService(database, files)
    met: list[uuid.UUID] = []
    monkeypatch.setattr(trash, "_purge_counted", lambda node_id, *_a, **_k: met.append(node_id))
    monkeypatch.setattr(trash, "_purge_small", lambda node_ids, *_a, **_k: list(node_ids))
    expired = sorted(rows[:7], key=lambda row: (row["deleted_at"], row["id"]))
    trash.purge_expired(older_than=dt.timedelta(days=30))
    assert met == [row["id"] for row in expired]
    met.clear()
    trash.purge_expired(older_than=dt.timedelta(days=30), user_id=actor.user_id)
    assert met == [row["id"] for row in expired]


def test_a_commands_purge_is_told_apart_from_the_sweep_in_the_logbook(
    database: Database, files: FileService, actor: Actor, home: NodeView
) -> None:
    """``davserver trash purge`` marks its rows ``via: cli``, as the other commands do; the
    server's own sweep does not. Both rows had been the same."""
    trash = TrashService(database, files)
    for name, via in (("by-cli", "cli"), ("by-sweep", None)):
        files.delete(actor, files.create_folder(actor, home, name).id)
        trash.purge_expired(older_than=dt.timedelta(0), via=via)
    with database.read() as session:
        rows = session.scalars(
            sa.select(LogEntry.details)
            .where(LogEntry.op_type == "node:purge")
            .order_by(LogEntry.id)
        ).all()
    assert [(row["name"], row.get("via")) for row in rows] == [
        ("by-cli", "cli"),
        ("by-sweep", None),
    ]


def test_an_item_purged_while_the_trash_is_listed_is_left_out(
    database: Database,
    files: FileService,
    actor: Actor,
    home: NodeView,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A listing reads the trashed items, then their rows, in separate statements; a purge (the
    housekeeping sweep, another client's DELETE in /trash/) may commit in between. Each
    /trash/ PROPFIND, and each MOVE or DELETE in /trash/ (they find their item in the
    listing), then failed with a KeyError, a 500. The purged item is left out instead."""
    kept = files.create_folder(actor, home, "kept")
    gone = files.create_folder(actor, home, "gone")
    files.delete(actor, kept.id)
    files.delete(actor, gone.id)
    trash = TrashService(database, files)
    get_nodes = trash_module.tree.get_nodes

    def purged_meanwhile(conn: Any, node_ids: Any) -> Any:
        if gone.id in node_ids:
            trash.purge(None, gone.id)
        return get_nodes(conn, node_ids)

    monkeypatch.setattr(trash_module.tree, "get_nodes", purged_meanwhile)
    listing = trash.listing(actor.user_id)
    assert [entry.view.id for entry in listing.entries] == [kept.id]


def test_one_trash_item_is_found_without_reading_the_whole_trash(
    database: Database,
    files: FileService,
    actor: Actor,
    home: NodeView,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A MOVE, DELETE or PROPFIND of /trash/<name> finds its item among those deleted in the
    millisecond its name gives; it read every item of the trash (3.5 s a request with 50,000
    in it, so emptying such a trash one item at a time took days)."""
    start = utcnow() - dt.timedelta(days=1)
    with database.write() as session:
        for i in range(40):
            deleted = (start + dt.timedelta(seconds=i), actor.user_id)
            session.execute(sa.insert(_n), _rows(home.id, actor.user_id, 1, deleted=deleted))
    wanted = files.create_folder(actor, home, "wanted")
    files.delete(actor, wanted.id)
    namesake = files.create_folder(actor, home, "wanted")
    files.delete(actor, namesake.id)
    trash = TrashService(database, files)
    namespace = NamespaceService(database, files)
    listing = trash.listing(actor.user_id)
    assert len(listing.entries) == 42
    looked_up: list[int] = []
    get_nodes = trash_module.tree.get_nodes

    def counted(conn: Any, node_ids: Any) -> Any:
        looked_up.append(len(node_ids))
        return get_nodes(conn, node_ids)

    monkeypatch.setattr(trash_module.tree, "get_nodes", counted)
    ctx = namespace.context(actor)
    for entry in listing.entries:
        found = trash.resolve(namespace, ctx, [entry.name])
        assert found[-1] == entry
    assert max(looked_up) <= 2  # the namesakes deleted in the same millisecond, at most
    assert len(trash.resolve(namespace, ctx, ["wanted"])) == 1  # no time: no item
    assert len(trash.resolve(namespace, ctx, ["wanted (2020-13-45 99.99.99.999)"])) == 1


def test_a_purged_files_logbook_rows_keep_its_ids(
    database: Database, files: FileService, actor: Actor, home: NodeView
) -> None:
    """The logbook is the record of what happened: purging a file, or pruning one of its
    versions, must not rewrite it. Its rows pointed at nodes and versions with ON DELETE SET
    NULL, so after a purge ``davserver audit --node <id>`` found nothing of the file's uploads,
    and each purged node or version meant an UPDATE of every row about it."""
    trash = TrashService(database, files)
    folder = files.create_folder(actor, home, "kept-history")
    versions = []
    for content in (b"first", b"second"):
        writer = files.blobs.writer()
        writer.write(content)
        view, _created = files.commit_upload(actor, folder, "report.txt", writer.finish())
        versions.append(view)
    file_id = versions[-1].id
    files.delete(actor, folder.id)
    trash.purge_expired(older_than=dt.timedelta(0))

    rows = read_logbook(database, node_id=file_id)
    uploads = [row for row in rows if row.op.startswith("file:")]
    assert len(uploads) == 2, rows
    assert all(row.version_id is not None for row in uploads)
    folder_rows = read_logbook(database, node_id=folder.id)
    assert {row.op for row in folder_rows} >= {"folder:create", "node:delete", "node:purge"}
