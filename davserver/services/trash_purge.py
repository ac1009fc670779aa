"""Purging the trash: removing a trashed item's rows for good.

A purge removes the item, everything that went to the trash with it, their versions and
properties; blobs stay until ``davserver gc`` finds nothing else uses them. The item is marked
first (``purge_started_at``: out of the trash from then on), then its rows go a batch at a
time, each batch a transaction (see ``TrashPurge.purge``). An item deleted from a folder before
the folder was is not purged with it: it stays in the trash under its own name, moved (still
deleted) into the folder the purged item was in. An item holding a version that a package of
the trash's owner pins cannot be purged (they can remove it from the package). Other users'
packages cannot deliver a deleted file anyway and only they could change them: a purge releases
their pins (the item stays in their package, answering 403 as deleted).
Items deleted more than ``retention_days`` ago are purged: a user's when they list /trash/,
everyone's by ``davserver trash purge`` (run it from cron) and the server's housekeeping.

``TrashService`` (``davserver.services.trash``: listing and restoring) builds on ``TrashPurge``.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import time
import uuid
from collections.abc import Collection, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from davserver.db import Base, Database
from davserver.db.dialect import by_dialect, for_bind
from davserver.db.types import utcnow
from davserver.errors import Conflict, NotFound
from davserver.models import Op, Space
from davserver.services import tree
from davserver.services.actor import Actor
from davserver.services.audit import record_audit
from davserver.services.files import FileService
from davserver.services.maintenance import Progress, ProgressCallback, batched
from davserver.services.purge_rows import (
    FOREIGN_PINS,
    SUBTREE_COUNTS,
    folders_deepest_first,
    holder,
    remove_batch,
)
from davserver.services.tree import NodeView

log = logging.getLogger(__name__)


@dataclass
class PurgeReport:
    """What ``purge_expired`` removed (with ``dry_run``: would remove)."""

    dry_run: bool
    older_than_days: int
    items_purged: int = 0
    nodes_removed: int = 0
    versions_removed: int = 0
    items_pinned: int = 0  # kept: a package pins a version in them
    items_finished: int = 0  # purges that had stopped half-way, finished now
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def count_purged(self, nodes: int, versions: int) -> None:
        """One more item purged, of ``nodes`` nodes and ``versions`` versions."""
        self.items_purged += 1
        self.nodes_removed += nodes
        self.versions_removed += versions


@dataclass(frozen=True)
class _Found:
    """A trash item as a purge found it before marking it (``TrashPurge._check``)."""

    node_id: uuid.UUID
    name: str
    deleted_at: dt.datetime
    nodes: int  # in its subtree, itself included
    versions: int
    released: int = 0  # other users' package pins it releases
    marked: bool = False  # already: a purge of it stopped half-way


class TrashPurge:
    def __init__(
        self,
        db: Database,
        files: FileService,
        *,
        retention_days: int = 0,
        swept: bool = False,
        enabled: bool = True,
    ) -> None:
        """``swept``: the server's housekeeping runs ``purge_expired`` now and then, which
        finishes purges left half-way; then a listing leaves big expired items to it.
        ``enabled`` False (``trash.enabled``): ``delete`` purges at once, and everything in
        the trash is expired."""
        self.db = db
        self.files = files
        self.retention_days = retention_days
        self.swept = swept
        self.enabled = enabled

    def delete(self, actor: Actor, node_id: uuid.UUID, *, seen: NodeView | None = None) -> None:
        """DELETE of a live item: to the trash (``FileService.delete``), or with the trash
        off, for good at once, as a DELETE of it in the trash would (the logbook has both
        rows). An item that one of the deleting user's packages pins cannot be purged: it stays
        in the trash until the package lets go of it, and the next sweep purges it then."""
        self.files.delete(actor, node_id, seen=seen)
        if self.enabled:
            return
        try:
            self._purge(
                actor,
                node_id,
                reason="deleted",
                via=None,
                now_up_to=_DELETE_BATCH if self.swept else None,
            )
        except Conflict as exc:
            log.info("kept in the trash: %s", exc)

    def purge(
        self,
        actor: Actor | None,
        node_id: uuid.UUID,
        *,
        reason: str = "purged",
        via: str | None = None,
        now_up_to: int | None = None,
    ) -> int:
        """Remove a trashed item and everything below it for good; returns the number of
        nodes removed. NotFound when it is not in the trash; Conflict when a package pins one
        of its versions. ``via`` ("cli") marks the logbook row of a command's purge. With
        ``now_up_to``, an item of more nodes is only marked, its rows left for the next
        ``purge_expired``.

        First the item is marked (``purge_started_at``) and the logbook row written, in one
        short transaction: from then on it is gone from the trash for everyone (not listed,
        not restorable). Then its rows go, ``_DELETE_BATCH`` at a time, each batch a
        transaction of its own, so other writers take turns with the purge however big the
        item is (on SQLite they wait for the database's one write lock). Should this stop
        half-way, a purge of the marked item again (``purge_expired``, as housekeeping and
        ``davserver trash purge`` run it) finishes it; an item already marked is finished
        without a second logbook row."""
        return self._purge(actor, node_id, reason=reason, via=via, now_up_to=now_up_to)[0]

    def _purge(
        self,
        actor: Actor | None,
        node_id: uuid.UUID,
        *,
        reason: str,
        via: str | None,
        now_up_to: int | None,
    ) -> tuple[int, int]:
        """``purge``; the numbers of nodes and of versions removed."""
        if actor is not None:
            actor.require_write()
        nodes, versions = self._mark_purged(actor, node_id, reason=reason, via=via)
        if now_up_to is None or nodes <= now_up_to:
            self._remove(node_id)
        return nodes, versions

    def _mark_purged(
        self, actor: Actor | None, node_id: uuid.UUID, *, reason: str, via: str | None
    ) -> tuple[int, int]:
        """Check and mark the item (see ``purge``); the numbers of its nodes and versions
        (of what is left of it, when it was marked already)."""
        with self.db.connect() as conn:
            found = self._check(conn, node_id)
        if not found.marked and not self.files.run_write(
            lambda session: self._mark(session, actor, found, reason=reason, via=via)
        ):
            raise NotFound("that item is not in the trash")  # purged, or restored meanwhile
        return found.nodes, found.versions

    def _check(self, conn: sa.Connection, node_id: uuid.UUID) -> _Found:
        """What a purge of the item needs to know before it marks it: NotFound when it is not
        in the trash, Conflict when a package of its owner pins a version in it. Its subtree
        is counted outside the write transaction, which then holds the write lock for two
        statements: what a trashed item holds cannot change (nothing writes inside the
        trash; a node restored from it meanwhile is simply not purged), and packages pin
        live files only."""
        row = conn.execute(
            sa.select(
                _n.c.name,
                _n.c.deleted_at,
                _n.c.owner_id,
                _n.c.group_id,
                _n.c.deleted_by,
                _n.c.purge_started_at,
            ).where(_n.c.id == node_id)
        ).first()
        if row is None or row.deleted_at is None:
            raise NotFound("that item is not in the trash")
        params = {"root_id": node_id, "holder_id": holder(row), "now": utcnow()}
        nodes, versions, pins = conn.execute(for_bind(SUBTREE_COUNTS, conn), params).one()
        found = _Found(node_id, row.name, row.deleted_at, int(nodes), int(versions))
        if row.purge_started_at is not None:
            return dataclasses.replace(found, marked=True)  # the rest goes below
        if pins:
            raise Conflict(
                f"{row.name!r} holds versions that your packages pin; remove them from "
                "the packages first"
            )
        # Other users' packages cannot deliver it any more (it is deleted: 403) and only
        # they could change them: their pins go with the rows (remove_batch), the items
        # stay listed there as deleted.
        released = len(conn.execute(for_bind(FOREIGN_PINS, conn), params).all())
        return dataclasses.replace(found, released=released)

    def _mark(
        self, session: Session, actor: Actor | None, found: _Found, *, reason: str, via: str | None
    ) -> bool:
        """Mark the item ``_check`` found and write its logbook row; False when it is no
        longer in the trash (purged, or restored meanwhile). Marked by another purge
        meanwhile, which wrote the row: True, and nothing written."""
        current = session.execute(
            sa.select(_n.c.deleted_at, _n.c.purge_started_at)
            .where(_n.c.id == found.node_id)
            .with_for_update()
        ).first()
        if current is None or current.deleted_at != found.deleted_at:
            return False
        if current.purge_started_at is not None:
            return True
        session.execute(
            sa.update(_n).where(_n.c.id == found.node_id).values(purge_started_at=utcnow())
        )
        record_audit(
            session,
            actor,
            Op.NODE_PURGE,
            node_id=found.node_id,
            details={
                "node_id": str(found.node_id),
                "name": found.name,
                "deleted_at": found.deleted_at.isoformat(),
                "nodes": found.nodes,
                "versions": found.versions,
                "released_pins": found.released,
                "reason": reason,
                **({"via": via} if via else {}),
            },
        )
        return True

    def _purge_small(
        self,
        node_ids: Sequence[uuid.UUID],
        report: PurgeReport,
        *,
        reason: str,
        via: str | None = None,
    ) -> list[uuid.UUID]:
        """Purge the small items of ``node_ids`` (at most ``_TOGETHER``) together: all marked
        in one transaction (a logbook row each), then all removed in another, where one at a
        time took two transactions an item (a durable commit each: 5 ms on SQLite, 10 ms on
        PostgreSQL). An item is small when that many of its size fit in one batch of rows.
        Returns the bigger ones, left to be purged one at a time."""
        small_enough = _DELETE_BATCH // _TOGETHER
        small: list[_Found] = []
        bigger: list[uuid.UUID] = []
        with self.db.connect() as conn:
            for node_id in node_ids:
                try:
                    found = self._check(conn, node_id)
                except NotFound:
                    continue  # gone with a folder purged before it
                except Conflict:
                    report.items_pinned += 1
                    continue
                if found.nodes > small_enough:
                    bigger.append(node_id)
                    continue
                small.append(found)
        if not small:
            return bigger

        def mark(session: Session) -> list[_Found]:
            return [
                found
                for found in small
                if found.marked or self._mark(session, None, found, reason=reason, via=via)
            ]

        marked = self.files.run_write(mark)

        def remove(session: Session) -> None:
            # Each item's folders as they are now that it is marked: one restored out of it
            # before is no longer below it, and no restore can take one out any more.
            for found in marked:
                folders = folders_deepest_first(session, found.node_id)
                remove_batch(session, found.node_id, folders, _DELETE_BATCH)

        self.files.run_write(remove)
        for found in marked:
            report.count_purged(found.nodes, found.versions)
        return bigger

    def _remove(self, node_id: uuid.UUID) -> None:
        """Remove the rows of the marked item ``node_id`` a batch at a time: the files and
        emptied folders of its deepest folders first, the item itself last."""
        with self.db.connect() as conn:
            folders = folders_deepest_first(conn, node_id)
        while True:
            started = time.monotonic()
            emptied, done = self.files.run_write(
                lambda session: remove_batch(session, node_id, folders, _DELETE_BATCH)
            )
            if done:
                return
            del folders[:emptied]
            _between_batches(self.db, time.monotonic() - started)

    def purge_expired(
        self,
        *,
        older_than: dt.timedelta | None = None,
        user_id: uuid.UUID | None = None,
        dry_run: bool = False,
        progress: ProgressCallback | None = None,
        via: str | None = None,
    ) -> PurgeReport:
        """Purge every item deleted longer ago than ``older_than`` (default: the retention
        period; nothing when that is 0), of everyone or of one user's trash, one after the
        other (``davserver trash purge`` with ``via`` "cli", and the server's sweep). First,
        whatever the retention, finish the purges that stopped half-way (see ``purge``)."""
        if older_than is None and not self.enabled:
            older_than = dt.timedelta(0)
        elif older_than is None:
            older_than = dt.timedelta(days=self.retention_days) if self.retention_days else None
        report = PurgeReport(dry_run, older_than.days if older_than is not None else 0)
        started = time.monotonic()
        if not dry_run:
            for node_id in self._unfinished(user_id):
                self._remove(node_id)
                report.items_finished += 1
        if older_than is not None:
            cutoff = utcnow() - older_than
            done = 0
            for group in batched(self._expired(cutoff, user_id), _TOGETHER):
                bigger = group
                if not dry_run:
                    bigger = self._purge_small(group, report, reason="expired", via=via)
                for node_id in bigger:
                    self._purge_counted(node_id, dry_run, report, via=via)
                done += len(group)
                if progress is not None:
                    progress(Progress("items", done))
        report.seconds = round(time.monotonic() - started, 3)
        return report

    def _expired(self, cutoff: dt.datetime, user_id: uuid.UUID | None) -> Iterator[uuid.UUID]:
        """The items deleted before ``cutoff`` (of one user's trash, or of all), oldest first,
        read a batch at a time after the last one seen (an item left in place, such as a pinned
        one, is not met again). LIMIT makes PostgreSQL walk ix_nodes_trash_expiry in order even
        on a table it has no statistics of; without it, it scanned every node and sorted."""
        query = trash_items(user_id, None) if user_id else sa.select(_n.c.id, _n.c.deleted_at)
        query = query.where(_n.c.deleted_at.is_not(None), _n.c.deleted_at < cutoff)
        query = query.order_by(_n.c.deleted_at, _n.c.id).limit(_PURGE_BATCH)
        page = query
        while True:
            with self.db.connect() as conn:
                rows = conn.execute(page).all()
            yield from (row.id for row in rows)
            if len(rows) < _PURGE_BATCH:
                return
            last = rows[-1]
            page = query.where(sa.tuple_(_n.c.deleted_at, _n.c.id) > (last.deleted_at, last.id))

    def _unfinished(self, user_id: uuid.UUID | None) -> list[uuid.UUID]:
        """The items marked as being purged (of one user's trash, or of all)."""
        query = trash_items(user_id, None) if user_id else sa.select(_n.c.id)
        with self.db.connect() as conn:
            return list(conn.scalars(query.where(_n.c.purge_started_at.is_not(None))))

    def purge_items(self, node_ids: Sequence[uuid.UUID], *, reason: str) -> int:
        """Purge these trash items (the expired ones of a listing); returns how many went. They
        are gone from the trash at once; where housekeeping runs (``swept``) the rows of an
        item bigger than one batch are left to it, so a listing waits for one batch per item
        at most (a purge of 64,000 files takes 10 s, of 300,000 minutes)."""
        report = PurgeReport(False, self.retention_days)
        now_up_to = _DELETE_BATCH if self.swept else None
        for group in batched(node_ids, _TOGETHER):
            for node_id in self._purge_small(group, report, reason=reason):
                self._purge_counted(node_id, False, report, reason=reason, now_up_to=now_up_to)
        return report.items_purged

    def _purge_counted(
        self,
        node_id: uuid.UUID,
        dry_run: bool,
        report: PurgeReport,
        *,
        reason: str = "expired",
        via: str | None = None,
        now_up_to: int | None = None,
    ) -> None:
        try:
            if dry_run:
                with self.db.connect() as conn:
                    found = self._check(conn, node_id)
                nodes, versions = found.nodes, found.versions
            else:
                # The purge counts the subtree itself: a second recursive count would read it
                # twice.
                nodes, versions = self._purge(
                    None, node_id, reason=reason, via=via, now_up_to=now_up_to
                )
        except NotFound:
            return  # gone with a folder purged before it
        except Conflict:
            report.items_pinned += 1
            return
        report.count_purged(int(nodes), int(versions))


def trash_items(
    user_id: uuid.UUID,
    group_ids: Collection[uuid.UUID] | None,
    managed_groups: Collection[uuid.UUID] = (),
) -> sa.Select[Any]:
    """(id, deleted_at, username of the deleter) of the items in ``user_id``'s trash."""
    # Each branch says the row is trashed: SQLite takes a partial index (ix_nodes_trash,
    # ix_nodes_trash_deleter) for a branch of an OR only when that branch implies its WHERE.
    trashed = _n.c.deleted_at.is_not(None)
    mine = sa.and_(trashed, _n.c.owner_id == user_id, _n.c.space == Space.HOME.value)
    theirs = sa.and_(trashed, _n.c.deleted_by == user_id, _n.c.group_id.is_not(None))
    if group_ids is not None:
        theirs = sa.and_(theirs, _n.c.group_id.in_(list(group_ids))) if group_ids else sa.false()
    branches = [mine, theirs]
    if managed_groups:
        branches.append(sa.and_(trashed, _n.c.group_id.in_(list(managed_groups))))
    return (
        sa.select(_n.c.id, _n.c.deleted_at, _users.c.username)
        .outerjoin(_users, _users.c.id == _n.c.deleted_by)
        .where(sa.or_(*branches))
    )


def _between_batches(db: Database, seconds: float) -> None:
    """After a purge's batch that took ``seconds``, on SQLite: a pause of a quarter of that
    (at most ``_MAX_PAUSE``). This process's writers queue for their turn and get it before
    the next batch (``Database.write``); another process's (a CLI command) sleeps between its
    tries for the write lock (up to 100 ms each) and would seldom find it free if the next
    batch took it at once. PostgreSQL's writers wait for the rows they change only."""
    if db.is_sqlite:
        time.sleep(min(seconds * _PAUSE_SHARE, _MAX_PAUSE))


def trash_item(session: Session, node_id: uuid.UUID) -> uuid.UUID | None:
    """The trash item the node is or is in: the nearest of it and the folders above it with
    a ``deleted_at``; None when it is live (or gone)."""
    chain = session.execute(for_bind(_CHAIN_UP, session), {"node_id": node_id}).all()
    return next((row.id for row in chain if row.deleted_at is not None), None)


def hold_unpurged(session: Session, item_id: uuid.UUID) -> bool:
    """Share-lock the trash item's row until the caller commits (PostgreSQL) and tell
    whether it is still in the trash with no purge begun. A purge marking it (FOR UPDATE)
    waits, and reads what is below it once the caller is done; a caller coming after the
    mark waits for it and sees it. Else a node restored from inside an item as its purge
    began could be emptied by the purge after it came back."""
    row = session.execute(
        sa.select(_n.c.deleted_at, _n.c.purge_started_at)
        .where(_n.c.id == item_id)
        .with_for_update(read=True)
    ).first()
    return row is not None and row.deleted_at is not None and row.purge_started_at is None


def _chain_up(postgres: bool) -> sa.Select[Any]:
    """(id, deleted_at) of :node_id and each folder above it, nearest first."""
    columns = ("id", "parent_id", "deleted_at")
    start = sa.select(*(_n.c[c] for c in columns), sa.literal(0).label("depth"))
    up = start.where(_n.c.id == sa.bindparam("node_id", type_=sa.Uuid)).cte("up", True)
    steps, above = tree.walk_step(up, columns, up=True, postgres=postgres)
    up = up.union_all(sa.select(*(above.c[c] for c in columns), up.c.depth + 1).select_from(steps))
    return sa.select(up.c.id, up.c.deleted_at).order_by(up.c.depth)


_n = Base.metadata.tables["nodes"]
_users = Base.metadata.tables["users"]
_CHAIN_UP = by_dialect(_chain_up)
_PURGE_BATCH = 500
# Small items are purged _TOGETHER at a time (TrashPurge._purge_small): those small enough that
# the group's rows fit in one batch (_DELETE_BATCH).
_TOGETHER = 100
_DELETE_BATCH = 5000  # rows per transaction of a purge (with their versions and properties)
_PAUSE_SHARE = 0.25  # of a batch's time, paused after it on SQLite (TrashPurge._remove)
_MAX_PAUSE = 0.1  # seconds
