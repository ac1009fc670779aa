"""Effective permissions: what one user may do with one node, as a pure function.

Rights come from, in order of strength:

- the ``admin`` role: everything, everywhere;
- owning the space: a user's own files (home space) are theirs entirely; in a group's space the
  members may read, download and write, and the group's admins may share as well;
- grants on the node or any ancestor, to the user or to one of their groups, unless expired.

Rights only add up going down the tree: a grant on a folder covers everything below it.
Holding any right implies READ (you cannot act on what you cannot see). Then restrictions
apply: a ``moderator`` reads everywhere and may move content to the trash; a ``viewer`` never
writes, whatever its grants; a read-only API key reads and downloads at most.
"""

from __future__ import annotations

import datetime as dt
import enum
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from davserver.errors import Forbidden, NotFound


class Perm(enum.IntFlag):
    NONE = 0
    READ = 1  # see it in listings and read its properties
    DOWNLOAD = 2  # its bytes: GET, Range, older versions, packages, COPY out of it
    WRITE = 4  # change it, create inside it, rename, delete, PROPPATCH, LOCK
    SHARE = 8  # grant others at most what you hold
    TRASH = 16  # move it to the trash without WRITE (moderators)

    @classmethod
    def parse(cls, names: Iterable[str]) -> Perm:
        """``["read", "download"]`` -> READ|DOWNLOAD; ValueError on an unknown name."""
        rights = cls.NONE
        for name in names:
            name = name.strip().lower()
            if name == "all":
                rights |= GRANTABLE
            elif name.upper() in GRANTABLE_NAMES:
                rights |= cls[name.upper()]
            elif name:
                raise ValueError(
                    f"unknown right {name!r}; rights are {', '.join(GRANTABLE_NAMES).lower()}"
                )
        return rights

    def names(self) -> list[str]:
        return [m.name.lower() for m in GRANTABLE_MEMBERS if m in self and m.name]


def rights_of_grant(row: Any) -> Perm:
    """The rights a grant row (or any object with ``can_read`` .. ``can_share``) gives."""
    rights = Perm.NONE
    for flag, perm in (
        (row.can_read, Perm.READ),
        (row.can_download, Perm.DOWNLOAD),
        (row.can_write, Perm.WRITE),
        (row.can_share, Perm.SHARE),
    ):
        if flag:
            rights |= perm
    return rights


GRANTABLE_NAMES = ("READ", "DOWNLOAD", "WRITE", "SHARE")
GRANTABLE_MEMBERS = (Perm.READ, Perm.DOWNLOAD, Perm.WRITE, Perm.SHARE)
GRANTABLE = Perm.READ | Perm.DOWNLOAD | Perm.WRITE | Perm.SHARE
EVERYTHING = GRANTABLE | Perm.TRASH
READ_ONLY = Perm.READ | Perm.DOWNLOAD
GROUP_MEMBER = Perm.READ | Perm.DOWNLOAD | Perm.WRITE


@dataclass(frozen=True)
class GrantRule:
    """One grant as the rules see it: to a user or to a group, with rights and an expiry."""

    node_id: uuid.UUID
    rights: Perm
    user_id: uuid.UUID | None = None
    group_id: uuid.UUID | None = None
    expires_at: dt.datetime | None = None


@dataclass(frozen=True)
class Principal:
    """Who asks: the user, their roles, their groups ({group id: is group admin})."""

    user_id: uuid.UUID
    roles: frozenset[str] = frozenset()
    groups: Mapping[uuid.UUID, bool] | None = None
    read_only: bool = False


@dataclass(frozen=True)
class SpaceOwner:
    """Whose space a node is in: a user's home, or a group's."""

    owner_id: uuid.UUID
    group_id: uuid.UUID | None = None


def grant_applies(grant: GrantRule, who: Principal, now: dt.datetime) -> bool:
    if grant.expires_at is not None and grant.expires_at <= now:
        return False
    if grant.user_id is not None:
        return grant.user_id == who.user_id
    return grant.group_id is not None and grant.group_id in (who.groups or {})


def effective_permissions(
    who: Principal,
    space: SpaceOwner,
    grants: Iterable[GrantRule],
    now: dt.datetime,
) -> Perm:
    """What ``who`` may do with a node in ``space`` given the grants on it and its ancestors."""
    return restrict(who, base_permissions(who, space) | granted(who, grants, now))


def base_permissions(who: Principal, space: SpaceOwner) -> Perm:
    """What the roles and the ownership of the space give, before any grant."""
    if "admin" in who.roles:
        return EVERYTHING
    rights = Perm.NONE
    if space.group_id is None and space.owner_id == who.user_id:
        rights = EVERYTHING
    elif space.group_id is not None and space.group_id in (who.groups or {}):
        rights = GROUP_MEMBER | (Perm.SHARE if (who.groups or {})[space.group_id] else Perm.NONE)
    if "moderator" in who.roles:
        rights |= Perm.READ | Perm.TRASH
    return rights


def granted(who: Principal, grants: Iterable[GrantRule], now: dt.datetime) -> Perm:
    """The union of the rights of the grants that apply to ``who`` (the raw rights)."""
    rights = Perm.NONE
    for grant in grants:
        if grant_applies(grant, who, now):
            rights |= grant.rights
    return rights


def restrict(who: Principal, rights: Perm) -> Perm:
    """Implied READ, then the viewer and read-only-key restrictions."""
    if rights & ~Perm.READ:
        rights |= Perm.READ
    if "admin" in who.roles and not who.read_only:
        return rights
    if "viewer" in who.roles:
        rights &= ~(Perm.WRITE | Perm.TRASH)
    if who.read_only:
        rights &= READ_ONLY
    return rights


def require(rights: Perm, needed: Perm, action: str) -> None:
    """Allow ``action`` when ``rights`` hold any of ``needed``.

    Raises NotFound when the item is not even readable (it must look missing), else Forbidden.
    """
    if rights & needed:
        return
    if not rights & Perm.READ:
        raise NotFound("not found")
    raise Forbidden(f"you may not {action} this item")
