"""PackageCache: a package's view is read once while its row stays the same, read again when
the row changes, read once by requests that miss together, and the views kept stay bounded."""

from __future__ import annotations

import datetime as dt
import threading
import time
import uuid
from collections.abc import Sequence
from typing import Any, NamedTuple

from davserver.services.package_archive import PackageArchive, PackageView, PinnedItem
from davserver.services.package_cache import PackageCache

WHEN = dt.datetime(2026, 11, 29, 12, 0, tzinfo=dt.UTC)


class Row(NamedTuple):
    """The columns of ``LIVE_PACKAGES`` that matter here."""

    id: uuid.UUID
    name: str
    modified_at: dt.datetime


def view(row: Row, items: int) -> PackageView:
    pinned = tuple(
        PinnedItem(uuid.uuid4(), f"f{i}", None, None, None, 0, None, "", 0, None, WHEN, WHEN)
        for i in range(items)
    )
    return PackageView(row.id, row.name, "", uuid.uuid4(), "alice", WHEN, None, WHEN, pinned)


class Reader:
    """``PackageCache.views``' read callback, counting what it read."""

    def __init__(self, items: int = 1, pause: float = 0.0) -> None:
        self.items = items
        self.pause = pause
        self.read: list[uuid.UUID] = []
        self.lock = threading.Lock()

    def __call__(self, rows: Sequence[Any]) -> dict[uuid.UUID, PackageView]:
        time.sleep(self.pause)
        with self.lock:
            self.read += [row.id for row in rows]
        return {row.id: view(row, self.items) for row in rows}


def row(name: str = "p", when: dt.datetime = WHEN) -> Row:
    return Row(uuid.uuid4(), name, when)


def test_a_view_is_read_again_only_when_its_row_changed() -> None:
    cache, reader = PackageCache(), Reader()
    first, other = row("first"), row("other")
    got = cache.views([first, other], reader)
    assert [v.id for v in got] == [first.id, other.id] and reader.read == [first.id, other.id]
    assert cache.views([other, first], reader) == [got[1], got[0]]  # the same objects
    assert len(reader.read) == 2
    changed = first._replace(modified_at=WHEN + dt.timedelta(microseconds=1))
    renamed = other._replace(name="renamed")
    again = cache.views([changed, renamed], reader)
    assert reader.read[2:] == [changed.id, renamed.id]
    assert again[0] is not got[0] and again[1] is not got[1]
    assert cache.views([changed], reader) == [again[0]]
    # The old row again (a request that read it before the change) is a miss too.
    assert cache.views([first], reader)[0] is not again[0] and len(reader.read) == 5


def test_requests_missing_together_read_once() -> None:
    cache, reader = PackageCache(), Reader(pause=0.2)
    wanted = row()
    got: list[PackageView] = []

    def ask() -> None:
        got.extend(cache.views([wanted], reader))

    threads = [threading.Thread(target=ask) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert reader.read == [wanted.id]
    assert len(got) == 8 and all(v is got[0] for v in got)
    assert cache._reads == {}  # nothing left behind


def test_the_views_kept_are_bounded_by_their_items_and_their_idle_time() -> None:
    cache, reader = PackageCache(max_items=10, idle_seconds=3600), Reader(items=4)
    a, b, c = row("a"), row("b"), row("c")
    cache.views([a], reader)
    cache.views([b], reader)
    cache.views([a], reader)  # a is now the most recent
    cache.views([c], reader)  # 12 items: b, the least recent, goes
    assert len(reader.read) == 3
    cache.views([a, c], reader)
    assert len(reader.read) == 3
    cache.views([b], reader)
    assert reader.read[-1] == b.id and len(reader.read) == 4
    big = Reader(items=50)
    huge = row("huge")
    cache.views([huge], big)  # bigger than the bound alone: kept, alone
    cache.views([huge], big)
    assert big.read == [huge.id] and cache._held == 50
    idle = PackageCache(idle_seconds=0.05)
    cache_reader = Reader()
    idle.views([a], cache_reader)
    time.sleep(0.1)
    idle.views([a], cache_reader)
    assert cache_reader.read == [a.id, a.id]


def test_a_kept_view_is_laid_out_once_and_replaced_with_its_crc32s() -> None:
    cache, reader = PackageCache(), Reader()
    wanted = row()
    kept = cache.views([wanted], reader)[0]
    laid: list[PackageView] = []

    def lay_out(which: PackageView) -> PackageArchive:
        laid.append(which)
        return PackageArchive(which, None, "etag")  # type: ignore[arg-type]

    def slowly() -> PackageArchive:
        time.sleep(0.2)
        return lay_out(kept)

    got: list[PackageArchive] = []
    threads = [
        threading.Thread(target=lambda: got.append(cache.archive(kept, slowly))) for _ in range(6)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    first = got[0]
    assert all(archive is first for archive in got) and laid == [kept]  # laid out once
    assert cache.archive(kept, lambda: lay_out(kept)) is first and laid == [kept]
    stranger = view(row(), 1)  # not kept (a folder's zip): laid out every time
    cache.archive(stranger, lambda: lay_out(stranger))
    cache.archive(stranger, lambda: lay_out(stranger))
    assert laid == [kept, stranger, stranger]
    ready = view(wanted, 1)
    cache.replace(kept, ready)
    assert cache.views([wanted], reader) == [ready] and len(reader.read) == 1
    assert cache.archive(ready, lambda: lay_out(ready)) is not first
    cache.replace(kept, view(wanted, 1))  # no longer the one kept: nothing changes
    assert cache.views([wanted], reader) == [ready]
