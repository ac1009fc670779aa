"""User administration: accounts, roles, passwords, e-mail addresses, quotas, soft deletion.

Every change is one transaction together with its logbook row, whose ``details`` hold the
target and the values ``before`` and ``after``. ``actor`` is the signed-in admin, or None for
the local command line (its rows say ``"via": "cli"``: whoever can run it can read the
database anyway). Name, e-mail and password rules are in ``account_rules``.

Deletion is soft: the row stays with ``deleted_at`` set, the name stays reserved, the user's
files stay where they are (still owned by the row), the user's API keys are revoked and the
e-mail address is freed for another account. There is always an active admin: removing the
admin role from the last one, or disabling or deleting them, is refused.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from davserver.db import Database
from davserver.db.types import utcnow
from davserver.errors import AlreadyExists, BadRequest, Conflict
from davserver.models import (
    ApiKey,
    Group,
    GroupMember,
    LoginSession,
    Op,
    RefreshToken,
    Role,
    User,
    UserRole,
)
from davserver.services.account_rules import (
    DEFAULT_ROLES,
    RolesLoader,
    UserStatus,
    account_key,
    audit_details,
    check_email,
    check_name,
    check_password,
    find_live_user,
    find_user,
    generate_password,
    hold_account_row,
    iso,
    require_admin,
    serialize_account_changes,
    user_status,
)
from davserver.services.accounts import Hasher
from davserver.services.actor import Actor
from davserver.services.audit import record_audit
from davserver.services.grant_support import revoke_unsupported, spaces_of_grants_by
from davserver.services.lock_rows import release_locks_of
from davserver.services.sharing import drop_grants_of_deleted_user
from davserver.services.throttle import lift_account_ban

if TYPE_CHECKING:
    from davserver.services.lock_reach import LockReach

# ------------------------------------------------------------------------------ views


@dataclass(frozen=True)
class UserInfo:
    id: uuid.UUID
    username: str
    email: str | None
    status: UserStatus
    roles: list[str]
    quota_bytes: int | None
    created_at: dt.datetime
    last_login_at: dt.datetime | None

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class Membership:
    group: str
    is_admin: bool


@dataclass(frozen=True)
class UserDetail(UserInfo):
    groups: list[Membership]
    active_api_keys: int
    updated_at: dt.datetime
    deleted_at: dt.datetime | None


def user_roles(session: Session, user_ids: Iterable[uuid.UUID]) -> dict[uuid.UUID, list[str]]:
    """Each user's role names, sorted."""
    ids = list(user_ids)
    roles: dict[uuid.UUID, list[str]] = {user_id: [] for user_id in ids}
    if not ids:
        return roles
    rows = session.execute(
        sa.select(UserRole.user_id, Role.name)
        .join(Role, Role.id == UserRole.role_id)
        .where(UserRole.user_id.in_(ids))
        .order_by(Role.name)
    )
    for user_id, name in rows:
        roles[user_id].append(name)
    return roles


def user_info(user: User, roles: list[str]) -> UserInfo:
    return UserInfo(
        id=user.id,
        username=user.username,
        email=user.email,
        status=user_status(user),
        roles=roles,
        quota_bytes=user.quota_bytes,
        created_at=user.created_at,
        last_login_at=user.last_login_at,
    )


def known_roles(
    session: Session, ensure_roles: RolesLoader, names: Iterable[str]
) -> dict[str, int]:
    """{name: id} for the given role names; BadRequest naming the unknown ones."""
    available = ensure_roles(session)
    wanted = list(dict.fromkeys(names))
    unknown = [name for name in wanted if name not in available]
    if unknown:
        raise BadRequest(
            f"unknown role(s) {', '.join(unknown)}; roles are {', '.join(sorted(available))}"
        )
    return {name: available[name] for name in wanted}


def email_taken(session: Session, email: str, *, other_than: uuid.UUID | None = None) -> bool:
    query = sa.select(User.id).where(sa.func.lower(User.email) == email.lower())
    if other_than is not None:
        query = query.where(User.id != other_than)
    return session.scalar(query.limit(1)) is not None


def name_taken(session: Session, username: str) -> bool:
    """True when a user (deleted ones included: their names stay reserved) has that name."""
    query = sa.select(User.id).where(sa.func.lower(User.username) == account_key(username))
    return session.scalar(query.limit(1)) is not None


# ------------------------------------------------------------------------------ the service


class UserAdminService:
    def __init__(
        self,
        db: Database,
        hasher: Hasher,
        ensure_roles: RolesLoader,
        locks: LockReach | None = None,
    ) -> None:
        self.db = db
        self.hasher = hasher
        self.ensure_roles = ensure_roles
        self.locks = locks  # releases the locks of those who may no longer write

    # -------------------------------------------------------------------------- reads

    def list_users(self, status: UserStatus | None = None) -> list[UserInfo]:
        """Users sorted by name: those of one status, or (None) every user not deleted."""
        query = sa.select(User).order_by(sa.func.lower(User.username))
        if status is UserStatus.DELETED:
            query = query.where(User.deleted_at.is_not(None))
        else:
            query = query.where(User.deleted_at.is_(None))
            if status is not None:
                query = query.where(User.is_active.is_(status is UserStatus.ACTIVE))
        with self.db.read() as session:
            users = session.scalars(query).all()
            roles = user_roles(session, (user.id for user in users))
            # Views are built inside: the read transaction's end expires the rows.
            return [user_info(user, roles[user.id]) for user in users]

    def show_user(self, username: str) -> UserDetail:
        """One user with roles, groups and the number of usable API keys; NotFound if none."""
        with self.db.read() as session:
            user = find_user(session, username)
            roles = user_roles(session, [user.id])[user.id]
            groups = [
                Membership(group=name, is_admin=is_admin)
                for name, is_admin in session.execute(
                    sa.select(Group.name, GroupMember.is_admin)
                    .join(GroupMember, GroupMember.group_id == Group.id)
                    .where(GroupMember.user_id == user.id)
                    .order_by(Group.name)
                )
            ]
            now = utcnow()
            keys = session.scalar(
                sa.select(sa.func.count())
                .select_from(ApiKey)
                .where(
                    ApiKey.user_id == user.id,
                    ApiKey.is_active.is_(True),
                    sa.or_(ApiKey.expires_at.is_(None), ApiKey.expires_at > now),
                )
            )
            info = user_info(user, roles)
            return UserDetail(
                **{f.name: getattr(info, f.name) for f in dataclasses.fields(UserInfo)},
                groups=groups,
                active_api_keys=keys or 0,
                updated_at=user.updated_at,
                deleted_at=user.deleted_at,
            )

    def user_id(self, username: str, *, include_deleted: bool = False) -> uuid.UUID:
        """The id of a user (not deleted, unless ``include_deleted``); NotFound or Conflict."""
        with self.db.read() as session:
            find = find_user if include_deleted else find_live_user
            return find(session, username).id

    # -------------------------------------------------------------------------- changes

    def create_user(
        self,
        actor: Actor | None,
        username: str,
        *,
        email: str | None = None,
        password: str | None = None,
        roles: Iterable[str] = DEFAULT_ROLES,
        quota_bytes: int | None = None,
    ) -> tuple[UserInfo, str | None]:
        """A new active user; returns it and the generated password when none was given.

        Raises BadRequest (invalid name, e-mail, password, quota or unknown role), Forbidden
        (actor not an admin) or AlreadyExists (name or e-mail taken, ignoring case).
        """
        require_admin(actor)
        check_name(username)
        email = check_email(email)
        role_names = sorted(set(roles))
        if quota_bytes is not None and quota_bytes < 0:
            raise BadRequest("a quota cannot be negative")
        generated = None
        if password is None:
            generated = password = generate_password()
        password_hash = self.hasher.hash(check_password(password))
        with self.db.write() as session:
            serialize_account_changes(session)
            role_ids = known_roles(session, self.ensure_roles, role_names)
            if name_taken(session, username):
                raise AlreadyExists(f"the username {username!r} is taken")
            if email is not None and email_taken(session, email):
                raise AlreadyExists(f"the e-mail address {email!r} is already in use")
            user = User(
                username=username,
                email=email,
                password_hash=password_hash,
                quota_bytes=quota_bytes,
            )
            session.add(user)
            session.flush()
            for role_id in role_ids.values():
                session.add(
                    UserRole(user_id=user.id, role_id=role_id, assigned_by=_actor_id(actor))
                )
            session.flush()
            info = user_info(user, role_names)
            record_audit(
                session,
                actor,
                Op.USER_CREATE,
                details=audit_details(
                    actor,
                    None,
                    {"email": email, "roles": role_names, "quota_bytes": quota_bytes},
                    user=username,
                    user_id=str(user.id),
                ),
            )
        return info, generated

    def disable_user(self, actor: Actor | None, username: str) -> UserInfo:
        """Sign the user out of everything from the next request on; the data stays.

        For good: every session ends and every refresh token is revoked, so enabling the user
        again revives none of them (they sign in afresh). API keys are credentials of their
        own, as for a password change: they stay, refused while the user is disabled.
        """
        return self._set_active(actor, username, active=False)

    def enable_user(self, actor: Actor | None, username: str) -> UserInfo:
        return self._set_active(actor, username, active=True)

    def _set_active(self, actor: Actor | None, username: str, *, active: bool) -> UserInfo:
        require_admin(actor)
        with self.db.write() as session:
            serialize_account_changes(session)
            user = find_live_user(session, username)
            hold_account_row(session, user.id)
            if user.is_active == active:
                state = "active" if active else "disabled"
                raise Conflict(f"user {user.username!r} is already {state}")
            after: dict[str, Any] = {"is_active": active}
            if not active:
                self._keep_an_admin(session, user, "disable")
                after["ended_sessions"] = _end_sessions(
                    session, user.id, keep_api_key_sessions=False
                )
                # Its clients can no longer unlock: others would wait for the locks' end.
                after["released_locks"] = release_locks_of(session, user.username)
            else:
                # Its owner's clients, refused meanwhile, may have had it banned.
                after["lifted_ban_until"] = iso(lift_account_ban(session, user.username))
            user.is_active = active
            session.flush()
            record_audit(
                session,
                actor,
                Op.USER_ENABLE if active else Op.USER_DISABLE,
                details=audit_details(
                    actor,
                    {"is_active": not active},
                    after,
                    user=user.username,
                    user_id=str(user.id),
                ),
            )
            return user_info(user, user_roles(session, [user.id])[user.id])

    def delete_user(self, actor: Actor | None, username: str) -> UserInfo:
        """Soft delete: ``deleted_at`` set, inactive, API keys revoked, sessions ended and
        refresh tokens revoked, e-mail address freed (it is in the logbook row), the grants to
        the user and their reshares revoked
        (``drop_grants_of_deleted_user``); the name stays reserved, and the user's files, roles,
        group memberships and the grants they made on their own files stay as they are."""
        require_admin(actor)
        with self.db.write() as session:
            serialize_account_changes(session)
            user = find_live_user(session, username)
            hold_account_row(session, user.id)
            self._keep_an_admin(session, user, "delete")
            before = {"is_active": user.is_active, "deleted_at": None, "email": user.email}
            revoked = list(
                session.scalars(
                    sa.update(ApiKey)
                    .where(ApiKey.user_id == user.id, ApiKey.is_active.is_(True))
                    .values(is_active=False)
                    .returning(ApiKey.prefix)
                )
            )
            gave_on = spaces_of_grants_by(session, [user.id])  # their reshares go below
            dropped = drop_grants_of_deleted_user(session, actor, user.id, user.username)
            ended = _end_sessions(session, user.id, keep_api_key_sessions=False)
            released = release_locks_of(session, user.username)
            user.is_active = False
            user.deleted_at = utcnow()
            user.email = None
            session.flush()
            record_audit(
                session,
                actor,
                Op.USER_DELETE,
                details=audit_details(
                    actor,
                    before,
                    {
                        "is_active": False,
                        "deleted_at": iso(user.deleted_at),
                        "email": None,
                        "revoked_api_keys": sorted(revoked),
                        "revoked_grants": dropped,
                        "ended_sessions": ended,
                        "released_locks": released,
                    },
                    user=user.username,
                    user_id=str(user.id),
                ),
            )
            info = user_info(user, user_roles(session, [user.id])[user.id])
        if self.locks is not None:  # of those they had shared with, whose grants went
            self.locks.release(actor, spaces=gave_on, because=f"{user.username} was deleted")
        return info

    def set_password(self, actor: Actor | None, username: str, password: str | None) -> str | None:
        """A new password (generated and returned when None), in force from the next request.

        A password is changed because it leaked, too: every session started with the old one
        (password and token sessions) ends, and their refresh tokens are revoked, so a token
        client is refused from its next request on. API keys are credentials of their own and
        stay valid.
        """
        require_admin(actor)
        generated = None
        if password is None:
            generated = password = generate_password()
        password_hash = self.hasher.hash(check_password(password))
        with self.db.write() as session:
            user = find_live_user(session, username)
            user.password_hash = password_hash
            session.flush()
            ended = _end_sessions(session, user.id, keep_api_key_sessions=True)
            # Whoever forgot the password may have had the account banned trying others.
            lifted = lift_account_ban(session, user.username)
            # The hashes themselves stay out of the logbook.
            record_audit(
                session,
                actor,
                Op.USER_PASSWORD_SET,
                details=audit_details(
                    actor,
                    None,
                    {
                        "generated": generated is not None,
                        "ended_sessions": ended,
                        "lifted_ban_until": iso(lifted),
                    },
                    user=user.username,
                    user_id=str(user.id),
                ),
            )
        return generated

    def set_email(self, actor: Actor | None, username: str, email: str | None) -> UserInfo:
        """Change or (None or blank) clear the e-mail address; unique ignoring case."""
        require_admin(actor)
        email = check_email(email)
        with self.db.write() as session:
            serialize_account_changes(session)
            user = find_live_user(session, username)
            if email is not None and email_taken(session, email, other_than=user.id):
                raise AlreadyExists(f"the e-mail address {email!r} is already in use")
            before = user.email
            user.email = email
            session.flush()
            self._audit_update(session, actor, user, "email", before, email)
            return user_info(user, user_roles(session, [user.id])[user.id])

    def set_quota(self, actor: Actor | None, username: str, quota_bytes: int | None) -> UserInfo:
        """Set the quota in bytes; None means unlimited. Existing files are never removed."""
        require_admin(actor)
        if quota_bytes is not None and quota_bytes < 0:
            raise BadRequest("a quota cannot be negative")
        with self.db.write() as session:
            user = find_live_user(session, username)
            before = user.quota_bytes
            user.quota_bytes = quota_bytes
            session.flush()
            self._audit_update(session, actor, user, "quota_bytes", before, quota_bytes)
            return user_info(user, user_roles(session, [user.id])[user.id])

    def add_role(self, actor: Actor | None, username: str, role: str) -> UserInfo:
        """Give a role; BadRequest if the role is unknown, Conflict if the user has it."""
        require_admin(actor)
        with self.db.write() as session:
            serialize_account_changes(session)
            role_id = known_roles(session, self.ensure_roles, [role])[role]
            user = find_live_user(session, username)
            before = user_roles(session, [user.id])[user.id]
            if role in before:
                raise Conflict(f"user {user.username!r} already has the role {role!r}")
            session.add(UserRole(user_id=user.id, role_id=role_id, assigned_by=_actor_id(actor)))
            session.flush()
            # A role can take rights away too (a viewer may not write): what the user shared
            # on that they no longer hold goes, as when a role is removed.
            because = f"{user.username} now has the role {role}"
            revoke_unsupported(session, actor, spaces_of_grants_by(session, [user.id]), because)
            return self._audit_roles(session, actor, user, Op.ROLE_ASSIGN, role, before)

    def remove_role(self, actor: Actor | None, username: str, role: str) -> UserInfo:
        """Take a role away; refused for the admin role of the last active admin."""
        require_admin(actor)
        with self.db.write() as session:
            serialize_account_changes(session)
            role_id = known_roles(session, self.ensure_roles, [role])[role]
            user = find_live_user(session, username)
            before = user_roles(session, [user.id])[user.id]
            if role not in before:
                raise Conflict(f"user {user.username!r} does not have the role {role!r}")
            if role == "admin":
                self._keep_an_admin(session, user, "remove the admin role from")
            session.execute(
                sa.delete(UserRole).where(UserRole.user_id == user.id, UserRole.role_id == role_id)
            )
            because = f"{user.username} no longer has the role {role}"
            revoke_unsupported(session, actor, spaces_of_grants_by(session, [user.id]), because)
            return self._audit_roles(session, actor, user, Op.ROLE_REMOVE, role, before)

    # -------------------------------------------------------------------------- internals

    def _keep_an_admin(self, session: Session, user: User, doing: str) -> None:
        """Conflict when ``user`` is an active admin and no other active admin exists.

        The callers hold ``serialize_account_changes``, so two admins cannot each demote the
        other at once and leave none.
        """
        admin_ids = (
            sa.select(UserRole.user_id)
            .join(Role, Role.id == UserRole.role_id)
            .where(Role.name == "admin")
        )
        active_admins = set(
            session.scalars(
                sa.select(User.id).where(
                    User.id.in_(admin_ids), User.is_active.is_(True), User.deleted_at.is_(None)
                )
            )
        )
        if active_admins == {user.id}:
            raise Conflict(
                f"cannot {doing} {user.username!r}: the last active admin "
                "(make another user admin first)"
            )

    def _audit_roles(
        self,
        session: Session,
        actor: Actor | None,
        user: User,
        op: Op,
        role: str,
        before: list[str],
    ) -> UserInfo:
        after = user_roles(session, [user.id])[user.id]
        record_audit(
            session,
            actor,
            op,
            details=audit_details(
                actor,
                {"roles": before},
                {"roles": after},
                user=user.username,
                user_id=str(user.id),
                role=role,
            ),
        )
        return user_info(user, after)

    def _audit_update(
        self, session: Session, actor: Actor | None, user: User, field: str, before: Any, after: Any
    ) -> None:
        record_audit(
            session,
            actor,
            Op.USER_UPDATE,
            details=audit_details(
                actor, {field: before}, {field: after}, user=user.username, user_id=str(user.id)
            ),
        )


def _end_sessions(session: Session, user_id: uuid.UUID, *, keep_api_key_sessions: bool) -> int:
    """End the user's open sessions (but for API keys' when ``keep_api_key_sessions``) and
    revoke every refresh token of the user; returns how many sessions ended."""
    now = utcnow()
    session.execute(
        sa.update(RefreshToken)
        .where(RefreshToken.user_id == user_id, RefreshToken.revoked_at.is_(None))
        .values(revoked_at=now)
    )
    sessions = sa.update(LoginSession).where(
        LoginSession.user_id == user_id, LoginSession.ended_at.is_(None)
    )
    if keep_api_key_sessions:
        sessions = sessions.where(LoginSession.auth_method != "apikey")
    ended = session.execute(sessions.values(ended_at=now))
    return int(ended.rowcount)  # type: ignore[attr-defined]


def _actor_id(actor: Actor | None) -> uuid.UUID | None:
    return actor.user_id if actor is not None else None
