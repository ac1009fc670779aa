"""One user's namespace: what ``/files/``, ``/groups/`` and ``/shared/`` hold for them, and the
effective permissions of every node reached through it.

    /files/...                     the user's own space
    /groups/<group>/...            a group's space, for its members (admins and moderators: all)
    /users/<name>/...              every user's own space, for admins and moderators
    /shared/<owner>/<name>/...     the top-most items other users granted to this user or to
                                   one of their groups, per owner (``@<group>`` for items
                                   of a group's space)

An ``AccessContext`` is built once per request: the user's groups and the grants that apply to
them (two queries). From then on the rights of a node follow from its parent's rights and the
grants on the node itself (rights only add up going down), so listing a folder of any size
costs no query per member. A node the user may not read is answered as missing.
"""

from __future__ import annotations

import datetime as dt
import posixpath
import re
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import sqlalchemy as sa

from davserver.db import Base, Database
from davserver.db.dialect import by_dialect, for_bind
from davserver.db.types import FOREVER, NEVER, utcnow
from davserver.errors import NotFound
from davserver.models import NodeKind
from davserver.services import tree
from davserver.services.account_rules import account_key
from davserver.services.accounts import user_with_roles
from davserver.services.actor import Actor
from davserver.services.files import FileService
from davserver.services.permissions import (
    EVERYTHING,
    GRANTABLE_MEMBERS,
    Perm,
    Principal,
    SpaceOwner,
    base_permissions,
    restrict,
    rights_of_grant,
)
from davserver.services.tree import NodeView

SPACES = ("files", "groups", "shared")
# More spaces (the trash, version history, packages) plug in with NamespaceService.add_space: a
# resolver is given the service, the access context and the names after the space's own, and
# returns what each prefix is, starting with the space itself (Virtual, Reached, or an item of
# its own that the provider registers a resource for).
SpaceResolver = Callable[["NamespaceService", "AccessContext", list[str]], list[Any]]
# A space whose folders list many members may find them together: given the same, it returns
# the members of the folder at those names (see NamespaceService.members), or None.
MemberFinder = Callable[
    ["NamespaceService", "AccessContext", list[str]], "list[tuple[str, Reached]] | None"
]


class AccessContext:
    """The user's groups and applicable grants, loaded on first need.

    In the user's own space (and for admins) nothing can add to the rights they already have,
    so a request there never loads them.
    """

    def __init__(
        self,
        actor: Actor,
        now: dt.datetime,
        load: Callable[[], tuple[dict[uuid.UUID, tuple[str, bool]], dict[uuid.UUID, Perm]]],
    ) -> None:
        self.actor = actor
        self.now = now
        self._load = load
        self._alone = Principal(actor.user_id, actor.roles, {}, actor.read_only)
        # The most this user may ever hold (roles and key scope cap it); nothing adds to it.
        self.ceiling = restrict(self._alone, EVERYTHING)
        self._shared: dict[str, dict[str, uuid.UUID]] | None = None
        self._visible_groups: dict[str, uuid.UUID] | None = None

    @cached_property
    def _loaded(self) -> tuple[dict[uuid.UUID, tuple[str, bool]], dict[uuid.UUID, Perm]]:
        return self._load()

    @property
    def groups(self) -> dict[uuid.UUID, tuple[str, bool]]:
        """group id -> (name, is group admin), for the user's own groups."""
        return self._loaded[0]

    @property
    def grants(self) -> dict[uuid.UUID, Perm]:
        """node id -> the raw rights granted on it to the user or their groups (unexpired)."""
        return self._loaded[1]

    @cached_property
    def principal(self) -> Principal:
        groups = {gid: admin for gid, (_, admin) in self.groups.items()}
        return Principal(self.actor.user_id, self.actor.roles, groups, self.actor.read_only)

    def top(self, view: NodeView) -> Perm:
        """Rights on a node reached from the top of a space or a share (no ancestor known)."""
        space = SpaceOwner(view.owner_id, view.group_id)
        if base_permissions(self._alone, space) == EVERYTHING:
            return self.ceiling
        rights = base_permissions(self.principal, space) | self.grants.get(view.id, Perm.NONE)
        return restrict(self.principal, rights)

    def below(self, parent_rights: Perm, child: NodeView) -> Perm:
        """Rights on a child: its parent's, plus what is granted on the child itself."""
        if parent_rights == self.ceiling:
            return parent_rights
        extra = self.grants.get(child.id)
        return parent_rights if extra is None else restrict(self.principal, parent_rights | extra)


def _everyone(actor: Actor) -> bool:
    return True


def may_see_all_users(actor: Actor) -> bool:
    return actor.is_admin or "moderator" in actor.roles


def _shared_members(
    service: NamespaceService, ctx: AccessContext, rest: list[str]
) -> list[tuple[str, Reached]] | None:
    """The members of ``/shared/<owner>/``: the items that owner granted the user, from one
    statement."""
    if len(rest) != 1:
        return None
    entries = service.shared(ctx).get(rest[0], {})
    with service.db.connect() as conn:
        views = tree.get_nodes(conn, list(entries.values()))
    return readable(ctx, [(name, views.get(node_id)) for name, node_id in entries.items()])


def _groups_members(
    service: NamespaceService, ctx: AccessContext, rest: list[str]
) -> list[tuple[str, Reached]] | None:
    """The members of ``/groups/``: the space of each group the user sees, from two
    statements (a group without a space yet gets one, as on first use)."""
    if rest:
        return None
    groups = service.visible_groups(ctx)
    with service.db.connect() as conn:
        roots = tree.group_roots(conn)
    missing = [group_id for group_id in groups.values() if group_id not in roots]
    made = service.files.group_root_ids(missing, ctx.actor.user_id)
    if made:
        with service.db.connect() as conn:
            views = tree.get_nodes(conn, made).values()
        roots.update((view.group_id, view) for view in views if view.group_id is not None)
    return readable(ctx, [(name, roots.get(group_id)) for name, group_id in sorted(groups.items())])


def readable(
    ctx: AccessContext, named: list[tuple[str, NodeView | None]]
) -> list[tuple[str, Reached]]:
    """Each named node the user may read, reached from the top of its space or share (as
    ``NamespaceService.descend`` reaches where it starts)."""
    found = []
    for name, view in named:
        rights = ctx.top(view) if view is not None else Perm.NONE
        if view is not None and rights & Perm.READ:
            found.append((name, Reached(view, rights)))
    return found


@dataclass(frozen=True)
class Virtual:
    """A read-only folder that only lists names: ``/``, ``/groups/``, ``/shared/``, an owner."""

    names: list[str]


@dataclass(frozen=True)
class Reached:
    """A node reached through the namespace, with the user's rights on it."""

    view: NodeView
    rights: Perm


class NamespaceService:
    def __init__(self, db: Database, files: FileService) -> None:
        self.db = db
        self.files = files
        self._extra: dict[str, SpaceResolver] = {}
        self._visible: dict[str, Callable[[Actor], bool]] = {}
        self._members: dict[str, MemberFinder] = {
            "groups": _groups_members,
            "shared": _shared_members,
        }

    def add_space(
        self,
        name: str,
        resolver: SpaceResolver,
        visible: Callable[[Actor], bool] | None = None,
        members: MemberFinder | None = None,
    ) -> None:
        """Serve ``/<name>/...`` through ``resolver`` (see ``SpaceResolver``); ``visible``
        says whom ``/`` shows it to (everyone by default); ``members`` finds the members of
        its virtual folders together (see ``members``)."""
        self._extra[name] = resolver
        if members is not None:
            self._members[name] = members
        if visible is not None:
            self._visible[name] = visible

    @property
    def spaces(self) -> list[str]:
        """Every space there is."""
        return [*SPACES, *self._extra]

    def spaces_for(self, actor: Actor) -> list[str]:
        """What ``/`` lists for this user."""
        return [s for s in self.spaces if self._visible.get(s, _everyone)(actor)]

    def context(self, actor: Actor) -> AccessContext:
        """The access context of one request; its groups and grants are read on first need."""
        now = utcnow()

        def load() -> tuple[dict[uuid.UUID, tuple[str, bool]], dict[uuid.UUID, Perm]]:
            with self.db.connect() as conn:
                groups = {
                    row.id: (row.name, bool(row.is_admin))
                    for row in conn.execute(_MY_GROUPS, {"user_id": actor.user_id})
                }
                grants: dict[uuid.UUID, Perm] = defaultdict(lambda: Perm.NONE)
                for row in conn.execute(
                    _MY_GRANTS, {"user_id": actor.user_id, "groups": list(groups), "now": now}
                ):
                    grants[row.node_id] |= rights_of_grant(row)
            return groups, dict(grants)

        return AccessContext(actor, now, load)

    def context_of_user(
        self, user_id: uuid.UUID, missing: str = "no such user", *, active: bool = False
    ) -> AccessContext:
        """The access context of a user the command line acts for (with their roles, as if
        they had signed in); NotFound, saying ``missing``, when there is no such user (or,
        ``active``, when the account is disabled)."""
        with self.db.connect() as conn:
            rows = conn.execute(user_with_roles().where(_users.c.id == user_id)).all()
        if not rows or (active and not rows[0].is_active):
            raise NotFound(missing)
        roles = frozenset(row.role for row in rows if row.role)
        return self.context(Actor(user_id, rows[0].username, roles))

    # -- resolving paths

    def resolve(self, ctx: AccessContext, parts: Sequence[str]) -> Any:
        """What a path (split into names) is for this user: Virtual, Reached, an item of an
        added space, or None when missing or unreadable."""
        if not parts:
            return Virtual(self.spaces_for(ctx.actor))
        return self.resolve_prefixes(ctx, parts)[-1]

    def resolve_prefixes(self, ctx: AccessContext, parts: Sequence[str]) -> list[Any]:
        """``resolve`` of every prefix of ``parts`` (``parts[:1]`` .. ``parts``), in one go:
        WebDAV asks for a path's parent right after the path."""
        found: list[Any] = []
        space, rest = parts[0], list(parts[1:])
        if space in self._extra:
            found = list(self._extra[space](self, ctx, rest))
        elif space == "files":
            found = self.descend(ctx, self.files.home_id(ctx.actor.user_id), rest)
        elif space == "groups":
            groups = self.visible_groups(ctx)
            found = [Virtual(sorted(groups))]
            if rest and rest[0] in groups:
                root = self.files.group_root_id(groups[rest[0]], ctx.actor.user_id)
                found += self.descend(ctx, root, rest[1:])
        elif space == "shared":
            shared = self.shared(ctx)
            found = [Virtual(sorted(shared))]
            entries = shared.get(rest[0]) if rest else None
            if entries is not None:
                found.append(Virtual(sorted(entries)))
                entry = _entry(entries, rest[1]) if len(rest) > 1 else None
                if entry is not None:
                    found += self.descend(ctx, entry, rest[2:])
        found = found[: len(parts)]
        return found + [None] * (len(parts) - len(found))

    def members(self, ctx: AccessContext, parts: Sequence[str]) -> list[tuple[str, Reached]] | None:
        """The readable members of the virtual folder at ``parts`` by name, each as
        ``resolve_prefixes`` of its path reaches it, from a few statements however many there
        are; None for one whose members are best looked up one by one (``/``, ``/shared/``).
        Those that may list many: ``/groups/``, ``/shared/<owner>/`` (every item one owner
        granted the user), and an admin's ``/users/``."""
        finder = self._members.get(parts[0]) if parts else None
        return finder(self, ctx, list(parts[1:])) if finder is not None else None

    def descend(
        self, ctx: AccessContext, start_id: uuid.UUID, rest: list[str]
    ) -> list[Virtual | Reached | None]:
        """The node ``start_id`` and those at each prefix of ``rest`` below it, with their
        rights summed along the way; stops at the first missing or unreadable one."""
        with self.db.connect() as conn:
            start, *chain = tree.resolve_from(conn, start_id, rest)
        if start is None:
            return []
        rights = ctx.top(start)
        found: list[Virtual | Reached | None] = []
        for view in [start, *chain]:
            if view is None:
                break
            if view is not start:
                rights = ctx.below(rights, view)
            if not rights & Perm.READ:
                break
            found.append(Reached(view, rights))
        return found

    def children(self, ctx: AccessContext, parent: Reached) -> list[Reached]:
        """The readable children of a folder, each with its rights (one query)."""
        members = self.files.children(parent.view)
        out = []
        readable: dict[Perm, bool] = {}  # Perm arithmetic is slow; members mostly share rights
        for child in members:
            rights = ctx.below(parent.rights, child)
            seen = readable.get(rights)
            if seen is None:
                seen = readable[rights] = bool(rights & Perm.READ)
            if seen:
                out.append(Reached(child, rights))
        return out

    def locate(self, space: str, path: str) -> NodeView:
        """The node at ``path`` in ``space``: a username for their home, ``@group`` for a
        group's space, either in any case (as every command finds users and groups; the path
        is exact, as in the URL). For administration (the command line), no rights involved."""
        parts = [p for p in path.split("/") if p]
        with self.db.connect() as conn:
            if space.startswith("@"):
                group_id = conn.execute(
                    sa.select(_groups.c.id).where(
                        sa.func.lower(_groups.c.name) == account_key(space[1:])
                    )
                ).scalar()
                root_id = conn.execute(
                    sa.select(_n.c.id).where(_n.c.group_id == group_id, _n.c.parent_id.is_(None))
                ).scalar()
                if group_id is None or root_id is None:
                    raise NotFound(f"no group space {space!r} (or it holds nothing yet)")
            else:
                user_id = conn.execute(
                    sa.select(_users.c.id).where(
                        sa.func.lower(_users.c.username) == account_key(space),
                        _users.c.deleted_at.is_(None),
                    )
                ).scalar()
                if user_id is None:
                    raise NotFound(f"no user {space!r}")
                root_id = self.files.home_id(user_id)
            found = tree.resolve(conn, root_id, parts)
        if found is None:
            raise NotFound(f"nothing at {space}:{path}")
        return found

    def space_path(self, node_id: uuid.UUID) -> tuple[str | None, list[str]]:
        """Where a node sits in its space: the group's name (None in a user's own space) and
        the names from the space's root down to the node (none for the root). One query."""
        with self.db.connect() as conn:
            rows = conn.execute(for_bind(_PATH_UP, conn), {"node_id": node_id}).all()
        if not rows:
            raise NotFound("the item no longer exists")
        return rows[0].group_name, [row.name for row in rows if row.parent_id is not None]

    def rights_now(
        self, user_id: uuid.UUID, node_ids: Iterable[uuid.UUID]
    ) -> dict[uuid.UUID, Perm] | None:
        """``rights_on`` for a user as their grants, groups and roles stand now, where a
        request's access context holds them as they were when it began; None when the
        account is disabled (or gone)."""
        try:
            fresh = self.context_of_user(user_id, active=True)
        except NotFound:
            return None
        return self.rights_on(fresh, node_ids)

    def rights_on(self, ctx: AccessContext, node_ids: Iterable[uuid.UUID]) -> dict[uuid.UUID, Perm]:
        """The user's rights on nodes known by id, whatever path reaches them (one query).

        The base rights of each node's space, plus the grants on the node and every ancestor,
        as ``ctx.top`` and ``ctx.below`` sum them along a path. A node that is missing, deleted
        or below a deleted folder gets Perm.NONE.
        """
        ids = list(dict.fromkeys(node_ids))
        rights = dict.fromkeys(ids, Perm.NONE)
        if not ids:
            return rights
        with self.db.connect() as conn:
            chains = _live_ancestries(conn, ids)
        for node_id, chain in chains.items():
            start = next(row for row in chain if row.node_id == node_id)
            space = SpaceOwner(start.owner_id, start.group_id)
            total = base_permissions(ctx.principal, space)
            if total == EVERYTHING:
                rights[node_id] = ctx.ceiling
                continue
            for row in chain:
                total |= ctx.grants.get(row.node_id, Perm.NONE)
            rights[node_id] = restrict(ctx.principal, total)
        return rights

    def live(self, node_ids: Iterable[uuid.UUID]) -> set[uuid.UUID]:
        """Those of ``node_ids`` that exist and are not in the trash (nor below a folder that
        is)."""
        ids = list(dict.fromkeys(node_ids))
        if not ids:
            return set()
        with self.db.connect() as conn:
            return set(_live_ancestries(conn, ids))

    def widens_reach(self, here: uuid.UUID, there: uuid.UUID, now: dt.datetime) -> bool:
        """Whether the grants on ``there`` and the folders above it give some user or group a
        right, or a right for longer, than those on ``here`` and the folders above it do
        (grants in force at ``now``; a user and a group are different grantees, whoever is in
        the group): an item moved from below ``here`` to below ``there``, in the same space,
        would reach them.

        Grants on the item itself and below it move with it and are not counted."""
        with self.db.connect() as conn:
            chains = _live_ancestries(conn, [here, there])
            ids = {row.node_id for chain in chains.values() for row in chain}
            grants = conn.execute(_GRANTS_ON, {"ids": list(ids), "now": now}).all()

        def reach(node_id: uuid.UUID) -> dict[tuple[uuid.UUID, Perm], dt.datetime]:
            """(grantee, right) -> until when the grants on the chain give it."""
            chain = {row.node_id for row in chains.get(node_id, ())}
            until: dict[tuple[uuid.UUID, Perm], dt.datetime] = {}
            for grant in grants:
                if grant.node_id not in chain:
                    continue
                ends = grant.expires_at or FOREVER
                for right in GRANTABLE_MEMBERS:
                    if rights_of_grant(grant) & right:
                        key = (grant.user_id or grant.group_id, right)
                        until[key] = max(until.get(key, ends), ends)
            return until

        before = reach(here)
        return any(ends > before.get(key, NEVER) for key, ends in reach(there).items())

    def held_until(self, ctx: AccessContext, node: NodeView, rights: Perm) -> dt.datetime | None:
        """Until when the user holds every one of ``rights`` on ``node``: None for good (by
        role, ownership of the space, membership of its group, or a grant without expiry),
        else the earliest, over the rights, of the latest expiry of the grants giving each.

        A grantee sharing on passes it on (``SharingService.grant``), so that what they grant
        ends when their own rights do. Rights the user does not hold at all are not counted.
        """
        space = SpaceOwner(node.owner_id, node.group_id)
        lasting = base_permissions(ctx.principal, space)
        wanted = [r for r in GRANTABLE_MEMBERS if r & rights and not r & lasting]
        if not wanted:
            return None
        with self.db.connect() as conn:
            chain = _live_ancestries(conn, [node.id]).get(node.id, [])
            rows = conn.execute(
                _MY_GRANT_EXPIRIES,
                {
                    "ids": [row.node_id for row in chain],
                    "user_id": ctx.actor.user_id,
                    "groups": list(ctx.groups),
                    "now": ctx.now,
                },
            ).all()
        until: dt.datetime | None = None
        for right in wanted:
            # Any right implies READ, so every grant gives it.
            giving = [r for r in rows if right == Perm.READ or rights_of_grant(r) & right]
            if not giving or any(r.expires_at is None for r in giving):
                continue
            latest = max(r.expires_at for r in giving)
            until = latest if until is None else min(until, latest)
        return until

    # -- the virtual folders

    def visible_groups(self, ctx: AccessContext) -> dict[str, uuid.UUID]:
        """{name: id} of the groups whose space the user sees: their own, or all for admins
        and moderators."""
        if ctx._visible_groups is not None:
            return ctx._visible_groups  # a listing of /groups/ asks for each member
        if may_see_all_users(ctx.actor):
            with self.db.connect() as conn:
                found = {row.name: row.id for row in conn.execute(_ALL_GROUPS)}
        else:
            found = {name: gid for gid, (name, _) in ctx.groups.items()}
        ctx._visible_groups = found
        return found

    def shared(self, ctx: AccessContext) -> dict[str, dict[str, uuid.UUID]]:
        """{owner username or @group: {entry name: node id}}: the top-most live nodes granted to the
        user, other than their own.

        Entries of one owner with the same name are each told apart by the start of their
        node's id: ``doc (1f3a9c0e).txt`` (the extension last, so programs still know the
        type), ``name (1f3a9c0e)`` for a folder. Such a name never passes to another item:
        numbered in order (``doc (2).txt``), the names shifted when one of them was deleted
        or unshared, and an editor's save to the old URL wrote into another file."""
        if ctx._shared is not None:
            return ctx._shared
        granted = [nid for nid, rights in ctx.grants.items() if rights]
        result: dict[str, dict[str, uuid.UUID]] = {}
        if granted:
            with self.db.connect() as conn:
                ancestries = _live_ancestries(conn, granted)
                # A space's root (its own whole chain) has no name to be listed by: a grant
                # on one, made before they were refused, neither lists nor hides anything.
                roots = {start for start, chain in ancestries.items() if len(chain) == 1}
                tops = [
                    start
                    for start, chain in ancestries.items()
                    if start not in roots
                    and not any(
                        r.node_id in ctx.grants and r.node_id not in (start, *roots) for r in chain
                    )
                ]
                entries = conn.execute(_ENTRIES, {"ids": tops}).all() if tops else []
            by_owner: dict[str, list[Any]] = defaultdict(list)
            for row in sorted(entries, key=lambda r: (r.username, r.name, str(r.id))):
                if row.owner_id == ctx.actor.user_id and row.group_id is None:
                    continue  # the user's own files are in /files/
                # A group's items are listed under @group, not under the member who happened
                # to create the group's space.
                by_owner[row.username if row.group_id is None else f"@{row.group_name}"].append(row)
            for owner, rows in by_owner.items():
                result[owner] = _entry_names(rows)
        ctx._shared = result
        return result


def _entry(entries: dict[str, uuid.UUID], name: str) -> uuid.UUID | None:
    """The node of the entry ``name`` names, as a folder finds its children: by name_key, so
    a decomposed (NFD, macOS) name finds the entry listed composed."""
    found = entries.get(name)
    if found is not None:
        return found
    key = tree.name_key(name)
    return next((node for entry, node in entries.items() if tree.name_key(entry) == key), None)


def _entry_names(rows: Sequence[Any]) -> dict[str, uuid.UUID]:
    """{entry name: node id} of one owner's shared nodes (rows with id, name and kind): a
    name held by one keeps it; namesakes (by name_key, as lookups find them) are each
    tagged with their id's first 8 hex digits, or all 32 should that name be taken too.

    A tag is the node's for good: a name that looks tagged (``doc (3606ae9d).txt``) is given
    as it is only to the node whose id the tag begins; another node so named is tagged too.
    Otherwise a file shared under such a name took over the URL of a namesake's entry."""
    held = Counter(tree.name_key(row.name) for row in rows)
    names: dict[str, uuid.UUID] = {}
    keys: set[str] = set()
    for row in rows:
        is_folder = row.kind == NodeKind.FOLDER.value
        claimed = _claimed_tag(row.name, is_folder=is_folder)
        name = row.name
        if held[tree.name_key(name)] > 1 or not row.id.hex.startswith(claimed or ""):
            name = _tagged(row.name, row.id.hex[:8], is_folder=is_folder)
            if tree.name_key(name) in keys:
                name = _tagged(row.name, row.id.hex, is_folder=is_folder)
        names[name] = row.id
        keys.add(tree.name_key(name))
    return names


# The tag ``_tagged`` gives: 8 or 32 hex digits in parentheses at the end of the stem.
_TAG = re.compile(r" \(([0-9a-f]{8}|[0-9a-f]{32})\)$")


def _claimed_tag(name: str, *, is_folder: bool) -> str | None:
    """The id digits a name's tag names (``doc (3606ae9d).txt``: ``3606ae9d``), or None."""
    stem = name if is_folder else posixpath.splitext(name)[0]
    found = _TAG.search(stem)
    return found[1] if found else None


def _tagged(name: str, tag: str, *, is_folder: bool) -> str:
    """``doc.txt`` -> ``doc (tag).txt``; a folder, or a name without an extension:
    ``name (tag)``."""
    stem, ext = (name, "") if is_folder else posixpath.splitext(name)
    return f"{stem} ({tag}){ext}"


_n = Base.metadata.tables["nodes"]
_g = Base.metadata.tables["grants"]
_groups = Base.metadata.tables["groups"]
_members = Base.metadata.tables["group_members"]
_users = Base.metadata.tables["users"]

_MY_GROUPS = (
    sa.select(_groups.c.id, _groups.c.name, _members.c.is_admin)
    .join(_members, _members.c.group_id == _groups.c.id)
    .where(_members.c.user_id == sa.bindparam("user_id", type_=sa.Uuid))
)
_ALL_GROUPS = sa.select(_groups.c.id, _groups.c.name)
# The grants that apply to the user: to them or to one of their groups, and not expired.
_APPLIES_TO_ME = sa.and_(
    sa.or_(
        _g.c.user_id == sa.bindparam("user_id", type_=sa.Uuid),
        _g.c.group_id.in_(sa.bindparam("groups", expanding=True, type_=sa.Uuid)),
    ),
    sa.or_(_g.c.expires_at.is_(None), _g.c.expires_at > sa.bindparam("now")),
)
_MY_GRANTS = sa.select(
    _g.c.node_id, _g.c.can_read, _g.c.can_download, _g.c.can_write, _g.c.can_share
).where(_APPLIES_TO_ME)
_GRANTS_ON = sa.select(
    _g.c.node_id,
    _g.c.user_id,
    _g.c.group_id,
    _g.c.can_read,
    _g.c.can_download,
    _g.c.can_write,
    _g.c.can_share,
    _g.c.expires_at,
).where(
    _g.c.node_id.in_(sa.bindparam("ids", expanding=True, type_=sa.Uuid)),
    sa.or_(_g.c.expires_at.is_(None), _g.c.expires_at > sa.bindparam("now")),
)
_MY_GRANT_EXPIRIES = sa.select(
    _g.c.can_read, _g.c.can_download, _g.c.can_write, _g.c.can_share, _g.c.expires_at
).where(_g.c.node_id.in_(sa.bindparam("ids", expanding=True, type_=sa.Uuid)), _APPLIES_TO_ME)


def _ancestry(postgres: bool) -> sa.Select[Any]:
    """(start, node, deleted_at, owner, group) for each given node and every ancestor of it."""
    columns = ("parent_id", "deleted_at", "owner_id", "group_id")
    up = (
        sa.select(_n.c.id.label("start_id"), _n.c.id.label("node_id"), *(_n.c[c] for c in columns))
        .where(_n.c.id.in_(sa.bindparam("ids", expanding=True, type_=sa.Uuid)))
        .cte("up", recursive=True)
    )
    steps, above = tree.walk_step(up, ("id", *columns), up=True, postgres=postgres)
    up = up.union_all(
        sa.select(up.c.start_id, above.c.id, *(above.c[c] for c in columns)).select_from(steps)
    )
    return sa.select(up.c.start_id, up.c.node_id, up.c.deleted_at, up.c.owner_id, up.c.group_id)


_ANCESTRY = by_dialect(_ancestry)


def _path_up(postgres: bool) -> sa.Select[Any]:
    """A node and its ancestors, the space's root first, with the root's group name."""
    columns = ("id", "parent_id", "name", "group_id")
    up = (
        sa.select(*(_n.c[c] for c in columns), sa.literal(0).label("depth"))
        .where(_n.c.id == sa.bindparam("node_id", type_=sa.Uuid))
        .cte("path_up", recursive=True)
    )
    steps, above = tree.walk_step(up, columns, up=True, postgres=postgres)
    up = up.union_all(sa.select(*(above.c[c] for c in columns), up.c.depth + 1).select_from(steps))
    return (
        sa.select(up.c.parent_id, up.c.name, _groups.c.name.label("group_name"))
        .outerjoin(_groups, _groups.c.id == up.c.group_id)
        .order_by(up.c.depth.desc())
    )


_PATH_UP = by_dialect(_path_up)


def _live_ancestries(conn: sa.Connection, ids: list[uuid.UUID]) -> dict[uuid.UUID, list[Any]]:
    """{node: rows of it and its ancestors} for the given nodes that are live: neither they
    nor an ancestor is in the trash (a missing node has no entry either).

    The nodes are read by id, then the ancestries of their distinct parents: a package of
    64,000 files in one folder walks up from one parent, not from every file (which read a
    row per file and level). Ids go in batches that stay below PostgreSQL's limit of 65,535
    parameters."""
    nodes: list[Any] = []
    for start in range(0, len(ids), _ID_BATCH):
        nodes += conn.execute(_NODES_BY_ID, {"ids": ids[start : start + _ID_BATCH]}).all()
    parents = list({row.parent_id for row in nodes if row.parent_id is not None})
    above: dict[uuid.UUID, list[Any]] = defaultdict(list)
    for start in range(0, len(parents), _ID_BATCH):
        batch = {"ids": parents[start : start + _ID_BATCH]}
        for row in conn.execute(for_bind(_ANCESTRY, conn), batch):
            above[row.start_id].append(row)
    live_above = {
        parent: chain
        for parent, chain in above.items()
        if all(row.deleted_at is None for row in chain)
    }
    chains: dict[uuid.UUID, list[Any]] = {}
    for row in nodes:
        if row.deleted_at is not None:
            continue
        if row.parent_id is None:
            chains[row.node_id] = [row]
        elif row.parent_id in live_above:
            chains[row.node_id] = [row, *live_above[row.parent_id]]
    return chains


_ID_BATCH = 10_000
_NODES_BY_ID = sa.select(
    _n.c.id.label("node_id"), _n.c.parent_id, _n.c.deleted_at, _n.c.owner_id, _n.c.group_id
).where(_n.c.id.in_(sa.bindparam("ids", expanding=True, type_=sa.Uuid)))


_ENTRIES = (
    sa.select(
        _n.c.id,
        _n.c.name,
        _n.c.kind,
        _n.c.owner_id,
        _n.c.group_id,
        _users.c.username,
        _groups.c.name.label("group_name"),
    )
    .join(_users, _users.c.id == _n.c.owner_id)
    .outerjoin(_groups, _groups.c.id == _n.c.group_id)
    .where(_n.c.id.in_(sa.bindparam("ids", expanding=True, type_=sa.Uuid)))
)
