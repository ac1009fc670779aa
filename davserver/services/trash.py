"""The trash: what a user deleted, restoring it, purging it, and ``/trash/`` in their namespace.

    /trash/                   the user's deleted items, in the order they were deleted
    /trash/<name>             one deleted item: a file, or a folder with all that was in it
    /trash/<name>/sub/...     inside a deleted folder (read-only)

Deleting sets ``deleted_at`` on the deleted item's row only (``FileService.delete``); what is
below it stays as it is, hidden by its deleted ancestor. So a folder goes to the trash whole and
comes back whole, one UPDATE each way, and an item deleted before its folder was stays a trash
item of its own (restoring the folder does not bring it back).

Whose trash: the items deleted from the user's own space, whoever deleted them (the user, a
grantee with write, a moderator), and the items the user deleted from a group's space while
they still see that group. Other members of the group do not see those.

Names: an item is listed under its own name with the time it was deleted (UTC, to the
millisecond) before the extension, ``a (2026-11-27 04.00.31.207).txt``, so the operating system
still knows the type and namesakes are told apart. The name depends on nothing but the item, so
it stays the same for as long as the item is in the trash whatever else comes and goes: a client
that lists the trash and then purges or restores (or retries) always acts on the item it listed.
Namesakes deleted in the same millisecond are listed with the start of their id too (``a
(2026-11-27 04.00.31.207 3f2a9c1b).txt``), a name every item answers to; a name two items could
take finds neither.

Restoring puts an item into a live folder of the same space under the name given, never
replacing anything: Conflict when the name is taken or the folder is gone (a folder in the
trash itself must be restored first). Purging removes an item for good
(``davserver.services.trash_purge``, which ``TrashService`` builds on): a user's expired
items when they list /trash/, everyone's by ``davserver trash purge`` and the housekeeping.
"""

from __future__ import annotations

import datetime as dt
import posixpath
import re
import uuid
from collections import Counter
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from davserver.db import Base
from davserver.db.dialect import NO_KEY_UPDATE, is_postgres
from davserver.db.types import utcnow
from davserver.errors import Conflict, Forbidden, NotFound
from davserver.models import Node, Op
from davserver.services import tree
from davserver.services.actor import Actor
from davserver.services.audit import record_audit
from davserver.services.grant_support import recheck_moved, space_of
from davserver.services.namespace import AccessContext, NamespaceService
from davserver.services.node_rows import view_of
from davserver.services.trash_purge import TrashPurge, hold_unpurged, trash_item, trash_items
from davserver.services.tree import NodeView, check_name, name_key
from davserver.services.usage import add_home_bytes, bytes_below, check_quota

SPACE = "trash"


@dataclass(frozen=True)
class TrashEntry:
    """One item in a user's trash."""

    name: str  # its name in /trash/: its own name and when it was deleted (trash_names)
    view: NodeView  # the deleted node itself
    deleted_at: dt.datetime
    deleted_by: str | None  # username; None once that user is gone
    original_path: str  # where it was, in the namespace: /files/docs/a.txt

    @property
    def original_folder(self) -> str:
        return posixpath.dirname(self.original_path)


@dataclass(frozen=True)
class TrashRoot:
    """``/trash/`` itself; its entries are listed only when asked for (``TrashService.listing``)."""

    user_id: uuid.UUID


@dataclass(frozen=True)
class TrashListing:
    """A user's trash: the entries in deletion order, found by name (NFC)."""

    entries: tuple[TrashEntry, ...]
    by_key: dict[str, TrashEntry] = field(compare=False, repr=False)

    def find(self, name: str) -> TrashEntry | None:
        return self.by_key.get(name_key(name))


@dataclass(frozen=True)
class TrashedNode:
    """A node inside a deleted folder: readable, not restorable on its own."""

    view: NodeView
    entry: TrashEntry


def suffixed(name: str, suffix: str, *, is_folder: bool) -> str:
    """``a.txt`` -> ``a (suffix).txt``; folders and names without an extension: ``a (suffix)``."""
    stem, ext = (name, "") if is_folder else posixpath.splitext(name)
    return f"{stem} ({suffix}){ext}"


def trash_names(view: NodeView, deleted_at: dt.datetime) -> tuple[str, str, str]:
    """An item's names in /trash/, each made from the item alone: with the time it was
    deleted (UTC, to the millisecond: a client deleting the same name in a loop does it
    several times a second), with the first 8 hex digits of its id too (for namesakes deleted
    in the same millisecond), and with its whole id (should even those meet)."""
    when = deleted_at.astimezone(dt.UTC)
    stamp = f"{when.strftime(_STAMP_SECONDS)}.{when.microsecond // 1000:03d}"

    def name(suffix: str) -> str:
        return suffixed(view.name, suffix, is_folder=view.is_folder)

    return name(stamp), name(f"{stamp} {view.id.hex[:8]}"), name(f"{stamp} {view.id.hex}")


class TrashService(TrashPurge):
    # ------------------------------------------------------------------ reads

    def resolve(
        self, namespace: NamespaceService, ctx: AccessContext, rest: list[str]
    ) -> list[Any]:
        """The ``/trash/`` space (``NamespaceService.add_space``): what each prefix is."""
        found: list[Any] = [TrashRoot(ctx.actor.user_id)]
        if not rest:
            return found  # ``/`` lists the spaces: no query for the trash's entries
        entry = self.entry_named(namespace, ctx, rest[0])
        if entry is None:
            return found
        found.append(entry)
        if len(rest) > 1 and entry.view.is_folder:
            with self.db.connect() as conn:
                chain = tree.resolve_chain(conn, entry.view.id, rest[1:])
            for view in chain:
                if view is None:
                    break
                found.append(TrashedNode(view, entry))
        return found

    def listing_for(
        self,
        namespace: NamespaceService,
        ctx: AccessContext,
        *,
        deleted_within: Sequence[tuple[dt.datetime, dt.datetime]] | None = None,
    ) -> TrashListing:
        """What ``/trash/`` holds for the user of ``ctx``: group items only from the groups
        they still see, and from the groups they are an admin of, whoever deleted them."""
        managed = [gid for gid, (_name, is_admin) in ctx.groups.items() if is_admin]
        groups = namespace.visible_groups(ctx).values()
        return self.listing(ctx.actor.user_id, groups, managed, deleted_within=deleted_within)

    def entry_named(
        self, namespace: NamespaceService, ctx: AccessContext, name: str
    ) -> TrashEntry | None:
        """The entry of ``listing_for`` that ``name`` names, or None. Only the items deleted
        in a millisecond the name gives are read: every item that could take the name, or
        a name it could be mistaken for, has its time of deletion in it (``trash_names``).
        Each MOVE, DELETE or PROPFIND of a trash item read the whole trash: 3.5 s each with
        50,000 items in it."""
        windows = deletion_windows(name)
        if not windows:
            return None
        return self.listing_for(namespace, ctx, deleted_within=windows).find(name)

    def listing(
        self,
        user_id: uuid.UUID,
        group_ids: Collection[uuid.UUID] | None = None,
        managed_groups: Collection[uuid.UUID] = (),
        *,
        deleted_within: Sequence[tuple[dt.datetime, dt.datetime]] | None = None,
    ) -> TrashListing:
        """A user's trash: items deleted from their space, those they deleted from the
        groups ``group_ids`` (None: from any group), and anything deleted from the spaces of
        ``managed_groups`` (those they are an admin of: what a member since removed, or
        someone the group shared a folder with, deleted there stays within the group's
        reach); with ``deleted_within``, only those deleted in one of these [start, end)
        periods. Three queries."""
        # An item being purged is gone from the trash, whatever of it is still there.
        query = trash_items(user_id, group_ids, managed_groups).where(
            _n.c.purge_started_at.is_(None)
        )
        if deleted_within is not None:
            query = query.where(
                sa.or_(
                    sa.false(),
                    *(
                        sa.and_(_n.c.deleted_at >= start, _n.c.deleted_at < end)
                        for start, end in deleted_within
                    ),
                )
            )
        with self.db.connect() as conn:
            rows = conn.execute(query.order_by(_n.c.deleted_at, _n.c.id)).all()
            views = tree.get_nodes(conn, [row.id for row in rows])
            # Each statement reads the database as it is then: an item purged in between is
            # gone from the second, and from the listing.
            rows = [row for row in rows if row.id in views]
            places = _locations(conn, [views[row.id].parent_id for row in rows])
        names = {row.id: trash_names(views[row.id], row.deleted_at) for row in rows}
        holders = Counter(name_key(name) for choices in names.values() for name in choices)
        entries: list[TrashEntry] = []
        by_key: dict[str, TrashEntry] = {}
        for row in rows:
            view, choices = views[row.id], names[row.id]
            folder = places.get(view.parent_id) if view.parent_id else None
            entry = TrashEntry(
                name=next(name for name in choices if holders[name_key(name)] == 1),
                view=view,
                deleted_at=row.deleted_at,
                deleted_by=row.username,
                original_path=f"{folder or '/files'}/{view.name}",
            )
            entries.append(entry)
            # A name two items could take finds neither: never the wrong one.
            by_key.update((name_key(n), entry) for n in choices if holders[name_key(n)] == 1)
        return TrashListing(tuple(entries), by_key)

    def children(self, folder: NodeView) -> list[NodeView]:
        """What a deleted folder (or a folder inside one) holds: its rows that are still live."""
        return self.files.children(folder)

    def expired(self, listing: TrashListing) -> list[TrashEntry]:
        """The entries deleted longer ago than the retention period (with the trash off,
        all of them)."""
        if not self.enabled:
            return list(listing.entries)
        if self.retention_days <= 0:
            return []
        cutoff = utcnow() - dt.timedelta(days=self.retention_days)
        return [e for e in listing.entries if e.deleted_at < cutoff]

    # ----------------------------------------------------------------- writes

    def restore(
        self,
        actor: Actor | None,
        node_id: uuid.UUID,
        folder: NodeView,
        name: str,
        *,
        where: str,
    ) -> NodeView:
        """Bring a trashed item (or a node inside a trashed folder) back as ``folder/name``:
        one UPDATE. ``where`` names the destination in messages.

        NotFound when it is no longer in the trash; Conflict when the folder is gone or the
        name taken; Forbidden when the folder is in another space; QuotaExceeded.
        """
        if actor is not None:
            actor.require_write()
        check_name(name)

        def work(session: Session) -> NodeView:
            # The trash item it is or is in, held before the node itself: the order in which
            # a purge locks them (see _hold_unpurged).
            item_id = trash_item(session, node_id)
            if item_id is not None and item_id != node_id and not hold_unpurged(session, item_id):
                item_id = None
            node = session.get(Node, node_id, with_for_update=NO_KEY_UPDATE)
            if (
                item_id is None
                or node is None
                or node.purge_started_at is not None
                or trash_item(session, node_id) != item_id  # restored meanwhile
            ):
                raise NotFound("that item is no longer in the trash")
            parent = session.get(Node, folder.id)
            if parent is None:
                raise Conflict(f"cannot restore to {where}: its folder no longer exists")
            if not parent.is_folder:
                raise Conflict(f"cannot restore to {where}: {parent.name!r} is a file")
            try:
                # Held until the restore commits: a folder above going to the trash meanwhile
                # would not count what comes back. A folder restored into itself meets itself
                # here too (it is in the trash).
                chain = tree.hold_chain(session, parent.id)
            except Conflict:
                raise Conflict(f"cannot restore to {where}: its folder no longer exists") from None
            if (node.owner_id, node.group_id) != (parent.owner_id, parent.group_id):
                raise Forbidden("items can only be restored into the space they were deleted from")
            taken = session.scalar(
                sa.select(_n.c.id).where(
                    _n.c.parent_id == parent.id,
                    _n.c.name_key == name_key(name),
                    _n.c.deleted_at.is_(None),
                )
            )
            if taken is not None:
                raise Conflict(f"cannot restore to {where}: that name is taken; choose another")
            if parent.group_id is None:  # what comes back counts against the owner's quota
                growth = bytes_below(session, node.id)
                check_quota(session, parent.owner_id, growth)
                add_home_bytes(session, node.owner_id, node.space, growth)
            before = {"parent_id": str(node.parent_id), "name": node.name}
            deleted_at = node.deleted_at
            node.deleted_at = None
            node.deleted_by = None
            deleted_from = node.parent_id
            node.parent_id = parent.id
            node.name = name
            node.name_key = name_key(name)
            session.flush()
            if deleted_from is not None:  # back elsewhere: the grants there no longer reach it
                space = space_of(node.owner_id, node.group_id)
                because = f"{name!r} was restored to {where}"
                recheck_moved(session, actor, space, deleted_from, chain, because)
            record_audit(
                session,
                actor,
                Op.NODE_RESTORE,
                node_id=node.id,
                details={
                    "before": before,
                    "after": {"parent_id": str(parent.id), "name": name, "path": where},
                    "deleted_at": deleted_at.isoformat() if deleted_at else None,
                    # No actor: ``davserver trash restore`` (as other commands mark theirs).
                    **({"via": "cli"} if actor is None else {}),
                },
            )
            return view_of(session, node.id)

        return self.files.run_write(work)

    def restore_original(self, actor: Actor | None, entry: TrashEntry) -> NodeView:
        """Restore ``entry`` where it was deleted from, under its own name."""
        parent_id = entry.view.parent_id
        folder = self.files.resolve(parent_id, []) if parent_id else None
        if folder is not None:
            with self.db.read() as session:
                if tree.in_trash(session, folder.id):
                    folder = None
        if folder is None:
            raise Conflict(
                f"cannot restore {entry.name} to {entry.original_path}: the folder "
                f"{entry.original_folder} is in the trash itself; restore that first, "
                "or restore this item somewhere else"
            )
        return self.restore(
            actor, entry.view.id, folder, entry.view.name, where=entry.original_path
        )


# The time of deletion in a trash name (``trash_names``): these, then the milliseconds;
# followed by the id or the end.
_STAMP_SECONDS = "%Y-%m-%d %H.%M.%S"
_STAMP = re.compile(r"\((\d{4}-\d\d-\d\d \d\d\.\d\d\.\d\d\.\d{3})[ )]")


def deletion_windows(name: str) -> list[tuple[dt.datetime, dt.datetime]]:
    """The milliseconds (as [start, end) in UTC) that the times of deletion in the trash name
    ``name`` give: the item it names, if any, was deleted in one of them."""
    windows = []
    for found in _STAMP.finditer(name_key(name)):
        try:
            start = dt.datetime.strptime(found.group(1), f"{_STAMP_SECONDS}.%f")
        except ValueError:
            continue
        start = start.replace(tzinfo=dt.UTC)
        windows.append((start, start + dt.timedelta(milliseconds=1)))
    return windows


def _locations(conn: sa.Connection, folder_ids: list[uuid.UUID | None]) -> dict[uuid.UUID, str]:
    """The namespace path of each folder (``/files/a/b``, ``/groups/team/a``), one query."""
    ids = list({f for f in folder_ids if f is not None})
    if not ids:
        return {}
    up = sa.select(
        _n.c.id.label("start"),
        _n.c.parent_id,
        _n.c.name,
        _n.c.group_id,
        sa.literal(0).label("depth"),
    ).where(_n.c.id.in_(ids))
    chain = up.cte("chain", recursive=True)
    columns = ("parent_id", "name", "group_id")
    steps, above = tree.walk_step(chain, columns, up=True, postgres=is_postgres(conn))
    chain = chain.union_all(
        sa.select(chain.c.start, *(above.c[c] for c in columns), chain.c.depth + 1).select_from(
            steps
        )
    )
    rows = conn.execute(
        sa.select(chain, _groups.c.name.label("group_name"))
        .outerjoin(_groups, _groups.c.id == chain.c.group_id)
        .order_by(chain.c.start, chain.c.depth.desc())
    ).all()
    names: dict[uuid.UUID, list[str]] = {}
    tops: dict[uuid.UUID, str] = {}
    for row in rows:
        if row.parent_id is None:  # the root of the space
            tops[row.start] = f"/groups/{row.group_name}" if row.group_id else "/files"
        else:
            names.setdefault(row.start, []).append(row.name)
    return {start: "/".join([top, *names.get(start, [])]) for start, top in tops.items()}


_n = Base.metadata.tables["nodes"]
_groups = Base.metadata.tables["groups"]
