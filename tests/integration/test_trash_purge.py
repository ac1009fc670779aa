"""Purging a big trash item goes a batch of rows at a time, each batch a transaction of its own:
other writers get their turn meanwhile, the item is gone from the trash from the start, and a
purge that stopped half-way is finished by running the purge again. Both engines."""

from __future__ import annotations

import datetime as dt
import threading
import uuid
from typing import Any

import pytest
import sqlalchemy as sa

from davserver.db import Base, Database
from davserver.errors import NotFound
from davserver.services import trash as trash_module
from davserver.services import trash_purge
from davserver.services.actor import Actor
from davserver.services.audit import read_logbook
from davserver.services.files import FileService
from davserver.services.trash import TrashService
from davserver.services.tree import NodeView

_n = Base.metadata.tables["nodes"]
_v = Base.metadata.tables["file_versions"]


def _upload(files: FileService, actor: Actor, folder: NodeView, name: str) -> NodeView:
    writer = files.blobs.writer()
    writer.write(f"{name} in {folder.name}".encode())
    view, _created = files.commit_upload(actor, folder, name, writer.finish())
    return view


def _big_item(files: FileService, actor: Actor, home: NodeView) -> dict[str, Any]:
    """``big/`` with 3 folders of 4 files (one of them nested), and ``big/a/early.txt``,
    deleted before ``big/`` was: a trash item of its own. ``big/`` is in the trash."""
    big = files.create_folder(actor, home, "big")
    a = files.create_folder(actor, big, "a")
    b = files.create_folder(actor, big, "b")
    c = files.create_folder(actor, b, "c")
    inner = [_upload(files, actor, folder, f"f{i}.txt") for folder in (a, b, c) for i in range(4)]
    early = _upload(files, actor, a, "early.txt")
    files.delete(actor, early.id)
    files.delete(actor, big.id)
    return {"big": big, "c": c, "inner": inner, "early": early}


def _rows_left(database: Database, ids: list[uuid.UUID]) -> tuple[int, int]:
    """(nodes, versions) of ``ids`` still in the database."""
    with database.connect() as conn:
        nodes = conn.scalar(sa.select(sa.func.count()).where(_n.c.id.in_(ids)))
        versions = conn.scalar(sa.select(sa.func.count()).where(_v.c.node_id.in_(ids)))
    return int(nodes or 0), int(versions or 0)


def _came_back_whole(files: FileService, home: NodeView) -> None:
    """``big/b/`` of ``_big_item``, restored as ``b/``, holds all it held: ``c/`` with its 4
    files and 4 files of its own."""
    back = files.resolve(home.id, ["b"])
    assert back is not None
    assert sorted(child.name for child in files.children(back)) == [
        "c",
        *(f"f{i}.txt" for i in range(4)),
    ]
    c = files.resolve(back.id, ["c"])
    assert c is not None and len(files.children(c)) == 4


def _purge_rows(database: Database, node_id: uuid.UUID) -> list[Any]:
    return [row for row in read_logbook(database, node_id=node_id) if row.op == "node:purge"]


def test_another_writer_commits_between_the_batches_of_a_big_purge(
    database: Database,
    files: FileService,
    actor: Actor,
    home: NodeView,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The purge of a 64,000-file folder was one transaction: on SQLite every other writer
    waited for its write lock the whole 4-6 s (past 30 s, some 300,000 files, they failed
    with 503). Now, after its first batch, a small upload from another thread commits while
    the purge still has batches to go; on SQLite it would wait for the lock (and this test
    time out) if the purge held its transaction between the batches."""
    made = _big_item(files, actor, home)
    monkeypatch.setattr(trash_purge, "_DELETE_BATCH", 3)
    events: list[str] = []
    batch = trash_purge.remove_batch

    def counted_batch(*args: Any) -> Any:
        emptied, done = batch(*args)
        events.append("batch")
        return emptied, done

    uploaded: list[NodeView] = []

    def small_put() -> None:
        uploaded.append(_upload(files, actor, home, "meanwhile.txt"))
        events.append("put")

    between = trash_purge._between_batches

    def let_a_put_in(db: Database, seconds: float) -> None:
        if events.count("batch") == 1:
            other = threading.Thread(target=small_put)
            other.start()
            other.join(timeout=20)
            assert not other.is_alive(), "the upload waited for the purge"
        between(db, seconds)

    monkeypatch.setattr(trash_purge, "remove_batch", counted_batch)
    monkeypatch.setattr(trash_purge, "_between_batches", let_a_put_in)
    trash = TrashService(database, files)
    removed = trash.purge(actor, made["big"].id)

    assert removed == 1 + 3 + 12  # big, its folders and files; not early.txt
    assert events.index("put") == 1 and events.count("batch") >= 5
    assert uploaded and files.resolve(home.id, ["meanwhile.txt"]) is not None
    ids = [made["big"].id, made["c"].id, *(view.id for view in made["inner"])]
    assert _rows_left(database, ids) == (0, 0)
    # The item deleted earlier from big/a stays in the trash, now in the folder big/ was in.
    listing = trash.listing(actor.user_id)
    assert [(e.view.id, e.original_path) for e in listing.entries] == [
        (made["early"].id, "/files/early.txt")
    ]
    assert len(_purge_rows(database, made["big"].id)) == 1


class Stop(Exception):
    """The purge's process ends here (a crash, a restart)."""


def test_an_interrupted_purge_is_hidden_and_finished_by_purging_again(
    database: Database,
    files: FileService,
    actor: Actor,
    home: NodeView,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A purge that stops after some of its batches leaves the item marked: it is in nobody's
    trash listing, neither it nor anything in it can be restored, its logbook row is written
    once; the next ``purge_expired`` (housekeeping's, ``davserver trash purge``), whatever the
    retention, removes the rest."""
    made = _big_item(files, actor, home)
    used = files.usage(actor.user_id)  # what is in the trash counts for nothing, half-purged too
    monkeypatch.setattr(trash_purge, "_DELETE_BATCH", 3)
    batch = trash_purge.remove_batch
    calls: list[int] = []

    def stopping_batch(*args: Any) -> Any:
        calls.append(1)
        if len(calls) == 3:
            raise Stop
        return batch(*args)

    monkeypatch.setattr(trash_purge, "remove_batch", stopping_batch)
    trash = TrashService(database, files)
    with pytest.raises(Stop):
        trash.purge(actor, made["big"].id)
    monkeypatch.setattr(trash_purge, "remove_batch", batch)

    ids = [made["big"].id, made["c"].id, *(view.id for view in made["inner"])]
    nodes_left, versions_left = _rows_left(database, ids)
    assert 0 < nodes_left < len(ids) and 0 < versions_left < 12  # half-way
    listing = trash.listing(actor.user_id)
    assert [entry.view.id for entry in listing.entries] == [made["early"].id]
    for node_id in (made["big"].id, made["c"].id):
        with pytest.raises(NotFound):
            trash.restore(actor, node_id, home, "back", where="/files/back")
    assert trash.purge_expired(dry_run=True, older_than=None).items_finished == 0
    assert files.usage(actor.user_id) == used

    report = trash.purge_expired()  # retention 0: only the unfinished purge
    assert (report.items_finished, report.items_purged) == (1, 0)
    assert _rows_left(database, ids) == (0, 0)
    assert len(_purge_rows(database, made["big"].id)) == 1
    assert trash.purge_expired().items_finished == 0
    assert files.usage(actor.user_id) == used
    # The earlier item is whole and can come back.
    [entry] = trash.listing(actor.user_id).entries
    assert entry.view.id == made["early"].id
    back = trash.restore_original(actor, entry)
    assert files.resolve(home.id, [back.name]) is not None


def test_a_marked_item_is_finished_by_a_purge_of_it_without_a_second_logbook_row(
    database: Database,
    files: FileService,
    actor: Actor,
    home: NodeView,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Two purges of one item (a client's DELETE retried, the sweep meeting an item being
    purged) write one logbook row and leave nothing behind."""
    made = _big_item(files, actor, home)
    monkeypatch.setattr(trash_purge, "_DELETE_BATCH", 3)
    trash = TrashService(database, files)
    between = trash_purge._between_batches
    seen: list[int] = []

    def purge_again_meanwhile(db: Database, seconds: float) -> None:
        seen.append(1)
        if len(seen) == 1:  # after the first batch
            trash.purge(None, made["big"].id)
        between(db, seconds)

    monkeypatch.setattr(trash_purge, "_between_batches", purge_again_meanwhile)
    trash.purge(actor, made["big"].id)
    ids = [made["big"].id, made["c"].id, *(view.id for view in made["inner"])]
    assert _rows_left(database, ids) == (0, 0)
    assert len(_purge_rows(database, made["big"].id)) == 1
    with pytest.raises(NotFound):
        trash.purge(actor, made["big"].id)


def _someone_waits_for_a_lock(database: Database) -> bool:
    """PostgreSQL: whether another backend of this database is waiting for a row lock."""
    query = sa.text(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
        " AND wait_event_type = 'Lock' AND pid <> pg_backend_pid()"
    )
    with database.engine.connect() as conn:
        return bool(conn.scalar(query))


@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)  # SQLite: one writer at a time
def test_a_folder_restored_from_an_item_as_its_purge_begins_comes_back_whole(
    database: Database,
    files: FileService,
    actor: Actor,
    home: NodeView,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """PostgreSQL runs a restore and a purge side by side. A restore of big/b/ that had
    checked big/ was not being purged, but not yet committed, when the purge marked big/ and
    listed its folders: the purge then emptied big/b/ after it had come back. The restore
    now holds big/'s row, so the mark waits for it. (SQLite runs one writer at a time.)"""
    made = _big_item(files, actor, home)
    b = files.resolve(made["big"].id, ["b"])
    assert b is not None
    held, go = threading.Event(), threading.Event()
    hold = trash_module.hold_unpurged

    def held_then_waits(session: Any, item_id: uuid.UUID) -> bool:
        found = hold(session, item_id)
        held.set()
        assert go.wait(20)
        return found

    monkeypatch.setattr(trash_module, "hold_unpurged", held_then_waits)
    trash = TrashService(database, files)
    restored: list[NodeView] = []
    restoring = threading.Thread(
        target=lambda: restored.append(trash.restore(actor, b.id, home, "b", where="/files/b"))
    )
    restoring.start()
    assert held.wait(20)
    monkeypatch.setattr(trash_module, "hold_unpurged", hold)
    purging = threading.Thread(target=lambda: trash.purge(actor, made["big"].id))
    purging.start()
    for _ in range(400):  # until the purge waits for the restore's locks
        if _someone_waits_for_a_lock(database):
            break
        threading.Event().wait(0.05)
    go.set()
    restoring.join(20)
    purging.join(60)
    assert restored and not purging.is_alive()
    _came_back_whole(files, home)


@pytest.mark.parametrize("swept", [True, False], ids=["housekeeping", "no-housekeeping"])
def test_a_listing_leaves_the_rows_of_a_big_expired_item_to_housekeeping(
    database: Database,
    files: FileService,
    actor: Actor,
    home: NodeView,
    monkeypatch: pytest.MonkeyPatch,
    swept: bool,
) -> None:
    """A listing purges the expired items it finds. Batched, the purge of a big one would
    keep the listing (a client's PROPFIND of /trash/) waiting for every batch: 10 s for
    64,000 files, minutes for 300,000. Where housekeeping runs, an item bigger than one batch
    is only marked: gone from the trash at once, its rows removed by the next sweep. Small
    items, and any without housekeeping, go at once as before."""
    made = _big_item(files, actor, home)
    small = _upload(files, actor, home, "small.txt")
    files.delete(actor, small.id)
    monkeypatch.setattr(trash_purge, "_DELETE_BATCH", 3)
    trash = TrashService(database, files, retention_days=1, swept=swept)
    long_ago = trash_module.utcnow() - dt.timedelta(days=2)
    with database.write() as session:
        session.execute(
            sa.update(_n).where(_n.c.id.in_([made["big"].id, small.id])).values(deleted_at=long_ago)
        )
    expired = trash.expired(trash.listing(actor.user_id))
    assert {e.view.id for e in expired} == {made["big"].id, small.id}

    assert trash.purge_items([e.view.id for e in expired], reason="expired") == 2

    assert [e.view.id for e in trash.listing(actor.user_id).entries] == [made["early"].id]
    assert _rows_left(database, [small.id]) == (0, 0)
    ids = [made["big"].id, made["c"].id, *(view.id for view in made["inner"])]
    assert _rows_left(database, ids) == ((0, 0) if not swept else (14, 12))
    report = trash.purge_expired()  # the sweep
    assert report.items_finished == (1 if swept else 0)
    assert _rows_left(database, ids) == (0, 0)
    assert len(_purge_rows(database, made["big"].id)) == 1


def test_small_expired_items_are_purged_together(
    database: Database,
    files: FileService,
    actor: Actor,
    home: NodeView,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Expired items were purged one at a time, in two transactions each (a durable commit
    each: 1,000 one-file items took 5.4 s on SQLite, 10 s on PostgreSQL). Small ones now go
    a group at a time, marked in one transaction and removed in another, each with its
    logbook row; a bigger one goes on its own, and an item deleted from inside a folder
    before it is an item of its own still."""
    made = _big_item(files, actor, home)  # 16 nodes, and early.txt deleted from inside it
    singles = []
    for i in range(3):
        single = _upload(files, actor, home, f"single{i}.txt")
        files.delete(actor, single.id)
        singles.append(single)
    folder = files.create_folder(actor, home, "small")
    inside = _upload(files, actor, folder, "inside.txt")
    files.delete(actor, folder.id)
    # Groups of 4; small: at most 10 nodes. Oldest first: [early, big, single0, single1], then
    # [single2, small]: 2 + (1 + 1 for big) + 2 transactions, where one at a time took 12.
    monkeypatch.setattr(trash_purge, "_TOGETHER", 4)
    monkeypatch.setattr(trash_purge, "_DELETE_BATCH", 40)
    writes: list[int] = []
    write = database.write

    def counted() -> Any:
        writes.append(1)
        return write()

    monkeypatch.setattr(database, "write", counted)
    report = TrashService(database, files).purge_expired(older_than=dt.timedelta(0))
    assert (report.items_purged, report.nodes_removed, report.versions_removed) == (6, 22, 17)
    assert len(writes) == 6
    everything = [made["big"].id, made["c"].id, made["early"].id, folder.id, inside.id]
    everything += [view.id for view in (*made["inner"], *singles)]
    assert _rows_left(database, everything) == (0, 0)
    purged = {
        item: [
            (row.details["nodes"], row.details["versions"]) for row in _purge_rows(database, item)
        ]
        for item in (made["big"].id, made["early"].id, folder.id, *(s.id for s in singles))
    }
    assert purged == {
        made["big"].id: [(16, 12)],
        made["early"].id: [(1, 1)],
        folder.id: [(2, 1)],
        **{single.id: [(1, 1)] for single in singles},
    }


def test_a_folder_restored_before_a_group_of_items_is_marked_comes_back_whole(
    database: Database,
    files: FileService,
    actor: Actor,
    home: NodeView,
) -> None:
    """A group purge checks its items, then marks them. It listed each item's folders as it
    checked it, and emptied them after the mark: a folder restored out of an item in between
    came back, and then lost everything in it (found by a review; the restore answered 201).
    The folders are listed once the items are marked, when no restore can take one out."""
    made = _big_item(files, actor, home)
    b = files.resolve(made["big"].id, ["b"])
    assert b is not None
    trash = TrashService(database, files)
    write = files.run_write
    restored: list[NodeView] = []
    began: list[bool] = []

    def restore_first(work: Any) -> Any:
        if not began:  # the group's first write: its mark
            began.append(True)
            restored.append(trash.restore(actor, b.id, home, "b", where="/files/b"))
        return write(work)

    files.run_write = restore_first  # type: ignore[method-assign]
    report = trash.purge_expired(older_than=dt.timedelta(0))
    assert restored and report.items_purged == 2  # big/ (without b/) and big/a/early.txt
    _came_back_whole(files, home)
    assert _rows_left(database, [made["big"].id, *(v.id for v in made["inner"][:4])]) == (0, 0)
