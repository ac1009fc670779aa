"""Packages as read for their zips, kept for the requests that follow in this process.

Reading a package of many files is a row per item from the database, a ``PinnedItem`` per
item (about 1 KB each: 60 MB for 64,000 files) and, for its zip, a pass over them all for the
layout and the ETag: seconds of CPU for 64,000 files. A download manager opening eight
connections for one zip, or a client resuming a cut download, paid that on every request, and
eight at once held eight copies.

``PackageCache`` keeps the views of recently read packages, and their laid-out zips, by
package id, checked against the package's row, which every request reads anyway: every change
to a package's items updates its ``modified_at`` (``packages._items_changed`` and
``purge_rows._release_pins``), and its name, description, expiry and creator's name are
columns of the row too. A row that differs from the one a view was read with is a miss, and
the view is read again. Requests that miss on the same package at once read it once: the
others wait for that read. What must be fresh on every request is not kept here: the rights
on the items and whether their bytes are in the blob store.

The views kept hold at most ``max_items`` items together (the newest one alone when it is
bigger); a view not asked for in ``idle_seconds`` goes at the next read.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from typing import Any

from davserver.services.package_archive import PackageArchive, PackageView

MAX_ITEMS = 100_000
IDLE_SECONDS = 600.0


@dataclass
class _Entry:
    row: tuple[Any, ...]  # the package's row the view was read with
    view: PackageView
    used: float  # time.monotonic() of the last read
    archive: PackageArchive | None = None


@dataclass
class _Read:
    """A read of one package's items under way: who waits on it, and its lock."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    users: int = 0


class PackageCache:
    def __init__(self, max_items: int = MAX_ITEMS, idle_seconds: float = IDLE_SECONDS) -> None:
        self.max_items = max_items
        self.idle_seconds = idle_seconds
        self._entries: OrderedDict[uuid.UUID, _Entry] = OrderedDict()  # least recent first
        self._held = 0  # items in the views kept
        self._reads: dict[uuid.UUID, _Read] = {}
        self._lock = threading.Lock()

    def views(
        self,
        rows: Sequence[Any],
        read: Callable[[Sequence[Any]], dict[uuid.UUID, PackageView]],
    ) -> list[PackageView]:
        """The views of package ``rows`` (``LIVE_PACKAGES``), in their order: those kept
        for an equal row, and ``read(rows)`` for the others (``{id: view}``), which are kept."""
        found = self._kept(rows)
        missing = [row for row in rows if row.id not in found]
        if missing:
            with self._reading([row.id for row in missing]):
                found |= self._kept(missing)  # read by another request meanwhile
                missing = [row for row in missing if row.id not in found]
                if missing:
                    loaded = read(missing)
                    for row in missing:
                        found[row.id] = self._keep(row, loaded[row.id])
        return [found[row.id] for row in rows]

    def archive(self, view: PackageView, lay_out: Callable[[], PackageArchive]) -> PackageArchive:
        """``lay_out()``, the zip of ``view``, made once for a view that is kept (requests
        asking at once wait for the first one's)."""
        kept, archive = self._kept_archive(view)
        if archive is not None:
            return archive
        if not kept:
            return lay_out()  # a folder's zip, or a view no longer kept
        with self._reading([view.id]):
            kept, archive = self._kept_archive(view)
            if archive is None:
                archive = lay_out()
                with self._lock:
                    entry = self._entries.get(view.id)
                    if entry is not None and entry.view is view:
                        entry.archive = archive
        return archive

    def _kept_archive(self, view: PackageView) -> tuple[bool, PackageArchive | None]:
        """(whether ``view`` is kept, the archive kept with it)."""
        with self._lock:
            entry = self._entries.get(view.id)
            if entry is None or entry.view is not view:
                return False, None
            return True, entry.archive

    def replace(self, old: PackageView, new: PackageView) -> None:
        """Keep ``new`` instead of ``old``: the same package, from the same row, with more
        known of its items (their CRC-32s)."""
        with self._lock:
            entry = self._entries.get(old.id)
            if entry is not None and entry.view is old:
                entry.view, entry.archive = new, None

    def _kept(self, rows: Sequence[Any]) -> dict[uuid.UUID, PackageView]:
        now = time.monotonic()
        found = {}
        with self._lock:
            self._drop_idle(now)
            for row in rows:
                entry = self._entries.get(row.id)
                if entry is not None and entry.row == tuple(row):
                    entry.used = now
                    self._entries.move_to_end(row.id)
                    found[row.id] = entry.view
        return found

    def _keep(self, row: Any, view: PackageView) -> PackageView:
        with self._lock:
            old = self._entries.pop(row.id, None)
            if old is not None:
                self._held -= len(old.view.items)
            self._entries[row.id] = _Entry(tuple(row), view, time.monotonic())
            self._held += len(view.items)
            while self._held > self.max_items and len(self._entries) > 1:
                self._forget_oldest()
        return view

    def _drop_idle(self, now: float) -> None:
        while self._entries:
            oldest = next(iter(self._entries.values()))
            if now - oldest.used < self.idle_seconds:
                return
            self._forget_oldest()

    def _forget_oldest(self) -> None:
        _, entry = self._entries.popitem(last=False)
        self._held -= len(entry.view.items)

    @contextmanager
    def _reading(self, ids: list[uuid.UUID]) -> Iterator[None]:
        """Hold the reads of packages ``ids`` (in one order: no two requests wait on each
        other crosswise)."""
        ids = sorted(set(ids))
        with self._lock:
            reads = [self._reads.setdefault(package_id, _Read()) for package_id in ids]
            for read in reads:
                read.users += 1
        try:
            with ExitStack() as held:
                for read in reads:
                    held.enter_context(read.lock)
                yield
        finally:
            with self._lock:
                for package_id, read in zip(ids, reads, strict=True):
                    read.users -= 1
                    if not read.users:
                        del self._reads[package_id]
