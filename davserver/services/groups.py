"""Group administration: groups, their members, and which members are group admins.

Group names follow the username rules (``davserver.services.users.check_name``): they are the
``<group>`` of ``/groups/<group>/``. Each change is one transaction with its logbook row.

Deleting a group removes its memberships and grants with it, and its space's root folder; a
group whose space still holds items (trash included) is not deleted, because its files would
go with it.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from davserver.db import Database
from davserver.errors import AlreadyExists, Conflict, NotFound
from davserver.models import Group, GroupMember, Node, Op, User
from davserver.services.account_rules import (
    UserStatus,
    account_key,
    audit_details,
    check_name,
    find_live_user,
    find_user,
    require_admin,
    serialize_account_changes,
    user_status,
)
from davserver.services.actor import Actor
from davserver.services.audit import record_audit
from davserver.services.bounds import check_description
from davserver.services.grant_support import revoke_unsupported, spaces_of_grants_by
from davserver.services.lock_rows import group_namespace, release_locks_of

if TYPE_CHECKING:
    from davserver.services.lock_reach import LockReach
    from davserver.services.permissions import SpaceOwner


@dataclass(frozen=True)
class GroupInfo:
    id: uuid.UUID
    name: str
    description: str
    members: int
    created_at: dt.datetime

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class GroupMemberInfo:
    username: str
    is_admin: bool
    status: UserStatus
    added_at: dt.datetime

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class GroupDetail(GroupInfo):
    created_by: str | None
    member_list: list[GroupMemberInfo]


def find_group(session: Session, name: str) -> Group:
    """The group of that name, in any case (names are unique ignoring case); NotFound if none."""
    found = session.scalar(sa.select(Group).where(sa.func.lower(Group.name) == account_key(name)))
    if found is None:
        raise NotFound(f"no group {name!r}")
    return found


class GroupAdminService:
    def __init__(self, db: Database, locks: LockReach | None = None) -> None:
        self.db = db
        self.locks = locks  # releases the locks of those who may no longer write

    # -------------------------------------------------------------------------- reads

    def list_groups(self) -> list[GroupInfo]:
        """Every group, sorted by name, with its number of members."""
        members = (
            sa.select(GroupMember.group_id, sa.func.count().label("n"))
            .group_by(GroupMember.group_id)
            .subquery()
        )
        query = (
            sa.select(Group, sa.func.coalesce(members.c.n, 0))
            .outerjoin(members, members.c.group_id == Group.id)
            .order_by(sa.func.lower(Group.name))
        )
        with self.db.read() as session:
            return [_group_info(group, count) for group, count in session.execute(query)]

    def show_group(self, name: str) -> GroupDetail:
        """One group with its members (admins first, then by name); NotFound if none."""
        with self.db.read() as session:
            group = find_group(session, name)
            rows = session.execute(
                sa.select(User, GroupMember.is_admin, GroupMember.added_at)
                .join(GroupMember, GroupMember.user_id == User.id)
                .where(GroupMember.group_id == group.id)
                .order_by(GroupMember.is_admin.desc(), sa.func.lower(User.username))
            ).all()
            creator = (
                session.scalar(sa.select(User.username).where(User.id == group.created_by))
                if group.created_by
                else None
            )
            # Views are built inside: the read transaction's end expires the rows.
            info = _group_info(group, len(rows))
            return GroupDetail(
                **{f.name: getattr(info, f.name) for f in dataclasses.fields(GroupInfo)},
                created_by=creator,
                member_list=[
                    GroupMemberInfo(
                        username=user.username,
                        is_admin=is_admin,
                        status=user_status(user),
                        added_at=added_at,
                    )
                    for user, is_admin, added_at in rows
                ],
            )

    # -------------------------------------------------------------------------- changes

    def create_group(self, actor: Actor | None, name: str, *, description: str = "") -> GroupInfo:
        """A new, empty group; AlreadyExists when the name is taken (ignoring case)."""
        require_admin(actor)
        check_name(name, "group name")
        description = check_description(description)
        with self.db.write() as session:
            serialize_account_changes(session)
            taken = session.scalar(
                sa.select(Group.id).where(sa.func.lower(Group.name) == account_key(name)).limit(1)
            )
            if taken is not None:
                raise AlreadyExists(f"the group name {name!r} is taken")
            group = Group(
                name=name,
                description=description,
                created_by=actor.user_id if actor is not None else None,
            )
            session.add(group)
            session.flush()
            record_audit(
                session,
                actor,
                Op.GROUP_CREATE,
                details=audit_details(
                    actor,
                    None,
                    {"description": description},
                    group=name,
                    group_id=str(group.id),
                ),
            )
            return _group_info(group, 0)

    def delete_group(self, actor: Actor | None, name: str) -> None:
        """Delete a group, its memberships and grants; Conflict while its space holds items."""
        require_admin(actor)
        with self.db.write() as session:
            serialize_account_changes(session)
            group = find_group(session, name)
            # Before counting: a write into the space holds its group's row (the foreign key
            # of the nodes it inserts) until it commits, so the count waits for it and sees
            # its items; one that starts later waits for this delete and finds no group.
            session.execute(sa.select(Group.id).where(Group.id == group.id).with_for_update())
            items = session.scalar(
                sa.select(sa.func.count())
                .select_from(Node)
                .where(Node.group_id == group.id, Node.parent_id.is_not(None))
            )
            if items:
                raise Conflict(
                    f"group {group.name!r} still has {items} item(s) in /groups/{group.name}/ "
                    "(trash included); move or purge them first"
                )
            members = [
                {"user": username, "is_admin": is_admin}
                for username, is_admin in session.execute(
                    sa.select(User.username, GroupMember.is_admin)
                    .join(GroupMember, GroupMember.user_id == User.id)
                    .where(GroupMember.group_id == group.id)
                    .order_by(User.username)
                )
            ]
            before = {"description": group.description, "members": members}
            record_audit(
                session,
                actor,
                Op.GROUP_DELETE,
                details=audit_details(
                    actor, before, None, group=group.name, group_id=str(group.id)
                ),
            )
            member_ids = session.scalars(
                sa.select(GroupMember.user_id).where(GroupMember.group_id == group.id)
            ).all()
            # Memberships, grants and the empty root folder go by ON DELETE CASCADE.
            session.execute(sa.delete(Group).where(Group.id == group.id))
            because = f"the group {group.name} was deleted"
            gave_on = spaces_of_grants_by(session, member_ids)
            revoke_unsupported(session, actor, gave_on, because)
            usernames = [str(m["user"]) for m in members]
        if self.locks is not None:
            self.locks.release(actor, principals=usernames, spaces=gave_on, because=because)

    def add_member(
        self, actor: Actor | None, group_name: str, username: str, *, admin: bool = False
    ) -> GroupMemberInfo:
        """Add a user (not deleted) to a group, as group admin if ``admin``."""
        require_admin(actor)
        with self.db.write() as session:
            serialize_account_changes(session)
            group = find_group(session, group_name)
            user = find_live_user(session, username)
            if session.get(GroupMember, (group.id, user.id)) is not None:
                raise AlreadyExists(f"{user.username!r} is already a member of {group.name!r}")
            member = GroupMember(group_id=group.id, user_id=user.id, is_admin=admin)
            session.add(member)
            session.flush()
            record_audit(
                session,
                actor,
                Op.GROUP_MEMBER_ADD,
                details=audit_details(
                    actor,
                    None,
                    {"is_admin": admin},
                    group=group.name,
                    group_id=str(group.id),
                    user=user.username,
                    user_id=str(user.id),
                ),
            )
            return GroupMemberInfo(user.username, admin, user_status(user), member.added_at)

    def remove_member(self, actor: Actor | None, group_name: str, username: str) -> None:
        """Take a user out of a group; NotFound when they are not a member."""
        require_admin(actor)
        with self.db.write() as session:
            group, user, member = self._membership(session, group_name, username)
            # Locks they took on the group's files: no one else may unlock them.
            released = release_locks_of(
                session, user.username, namespace=group_namespace(group.name)
            )
            record_audit(
                session,
                actor,
                Op.GROUP_MEMBER_REMOVE,
                details=audit_details(
                    actor,
                    {"is_admin": member.is_admin},
                    {"released_locks": released},
                    group=group.name,
                    group_id=str(group.id),
                    user=user.username,
                    user_id=str(user.id),
                ),
            )
            session.delete(member)
            session.flush()
            because = f"{user.username} left the group {group.name}"
            gave_on = spaces_of_grants_by(session, [user.id])
            revoke_unsupported(session, actor, gave_on, because)
        # Their locks elsewhere, on what the group was granted, and those of the people they
        # shared on with, whose grants went above: no one else who writes there could break them.
        if self.locks is not None:
            self.locks.release(actor, principals=[user.username], spaces=gave_on, because=because)

    def set_group_admin(
        self, actor: Actor | None, group_name: str, username: str, *, admin: bool = True
    ) -> GroupMemberInfo:
        """Make a member a group admin (or, ``admin=False``, an ordinary member again)."""
        require_admin(actor)
        with self.db.write() as session:
            group, user, member = self._membership(session, group_name, username)
            if member.is_admin == admin:
                state = "an admin" if admin else "not an admin"
                raise Conflict(f"{user.username!r} is already {state} of {group.name!r}")
            member.is_admin = admin
            session.flush()
            because = f"{user.username} is no longer an admin of the group {group.name}"
            spaces: set[SpaceOwner] = set()
            if not admin:  # what they shared as the group's admin now needs a grant of theirs
                spaces = spaces_of_grants_by(session, [user.id])
                revoke_unsupported(session, actor, spaces, because)
            record_audit(
                session,
                actor,
                Op.GROUP_ADMIN_SET,
                details=audit_details(
                    actor,
                    {"is_admin": not admin},
                    {"is_admin": admin},
                    group=group.name,
                    group_id=str(group.id),
                    user=user.username,
                    user_id=str(user.id),
                ),
            )
            info = GroupMemberInfo(user.username, admin, user_status(user), member.added_at)
        if spaces and self.locks is not None:  # of those they had shared with
            self.locks.release(actor, spaces=spaces, because=because)
        return info

    def _membership(
        self, session: Session, group_name: str, username: str
    ) -> tuple[Group, User, GroupMember]:
        group = find_group(session, group_name)
        user = find_user(session, username)  # deleted users may still leave groups
        member = session.get(GroupMember, (group.id, user.id))
        if member is None:
            raise NotFound(f"{user.username!r} is not a member of {group.name!r}")
        return group, user, member


def _group_info(group: Group, members: int) -> GroupInfo:
    return GroupInfo(
        id=group.id,
        name=group.name,
        description=group.description,
        members=int(members),
        created_at=group.created_at,
    )
