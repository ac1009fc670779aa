"""Accounts: the first admin, roles, and checking Basic credentials (a password or an API key)."""

from __future__ import annotations

import datetime as dt
import hashlib
import secrets
from collections.abc import Sequence
from typing import Any, Protocol

import sqlalchemy as sa
from sqlalchemy.orm import Session

from davserver.db import Base, Database
from davserver.db.types import utcnow
from davserver.errors import Unauthorized
from davserver.models import SYSTEM_ROLES, ApiKey, Op, Role, User, UserRole
from davserver.services.account_rules import (
    account_key,
    check_name,
    check_password,
    serialize_account_changes,
)
from davserver.services.actor import Actor
from davserver.services.apikeys import KEY_MARKER, key_hash
from davserver.services.audit import record_audit
from davserver.services.throttle import LoginThrottle


class Hasher(Protocol):
    def hash(self, password: str) -> str: ...

    def verify(self, password: str, stored_hash: str | None) -> tuple[bool, str | None]: ...


class CredentialMemo(Protocol):
    def matches(self, username: str, password: str, password_hash: str) -> bool: ...

    def remember(self, username: str, password: str, password_hash: str) -> None: ...


class AccountService:
    def __init__(
        self, db: Database, hasher: Hasher, memo: CredentialMemo, throttle: LoginThrottle
    ) -> None:
        self.db = db
        self.hasher = hasher
        self.memo = memo
        self.throttle = throttle

    def ensure_roles(self, session: Session) -> dict[str, int]:
        """The system roles, created when missing; {name: id}."""
        existing: dict[str, int] = {
            name: id_ for name, id_ in session.execute(sa.select(Role.name, Role.id))
        }
        for name in SYSTEM_ROLES:
            if name not in existing:
                role = Role(name=name, description=f"system role {name}", is_system=True)
                session.add(role)
                session.flush()
                existing[name] = role.id
        return existing

    def ensure_admin(self, username: str, password: str | None) -> str | None:
        """Create the first admin if no user of that name exists, with ``password`` if it
        passes the password rules (BadRequest else: "ab" made an account, while no one could
        set such a password later).

        Returns the generated password when one had to be made (to be shown once), else None.
        An existing account is left as it is. Servers started together on a new database
        each call this: one at a time (``serialize_account_changes``), so the next finds the
        roles and the admin the first made instead of inserting them again.
        """
        check_name(username)
        with self.db.write() as session:
            serialize_account_changes(session)
            roles = self.ensure_roles(session)
            # In any case: names are unique ignoring case (``Admin`` is the account ``admin``).
            taken = sa.func.lower(User.username) == account_key(username)
            if session.scalar(sa.select(User.id).where(taken)):
                return None
            generated = None
            if not password:
                generated = password = secrets.token_urlsafe(18)
            user = User(username=username, password_hash=self.hasher.hash(check_password(password)))
            session.add(user)
            session.flush()
            for role in ("admin", "user"):
                session.add(UserRole(user_id=user.id, role_id=roles[role]))
            record_audit(
                session,
                None,
                Op.USER_CREATE,
                details={
                    "username": username,
                    "user_id": str(user.id),  # as every row about an account has
                    "roles": ["admin", "user"],
                    "bootstrap": True,
                },
            )
            return generated

    def authenticate_basic(
        self,
        username: str,
        secret: str,
        *,
        remote_addr: str | None = None,
        user_agent: str | None = None,
    ) -> Actor:
        """The actor for Basic credentials: a password, or an API key in the password's place.

        Raises Unauthorized (the same for an unknown user, a wrong password, a revoked key) or
        TooManyRequests while the account or the address is locked after repeated failures.
        """
        if secret.startswith(KEY_MARKER):
            actor = self._authenticate_key(username, secret, remote_addr, user_agent)
            if actor is not None:
                return actor
        return self.authenticate_password(
            username, secret, remote_addr=remote_addr, user_agent=user_agent
        )

    def authenticate_password(
        self,
        username: str,
        password: str,
        *,
        remote_addr: str | None = None,
        user_agent: str | None = None,
    ) -> Actor:
        """The actor for a valid, active username and password (``sign_in``)."""
        return self.sign_in(username, password, remote_addr=remote_addr, user_agent=user_agent)[0]

    def sign_in(
        self,
        username: str,
        password: str,
        *,
        remote_addr: str | None = None,
        user_agent: str | None = None,
    ) -> tuple[Actor, str]:
        """The actor for a valid, active username and password, and the hash it was verified
        against, for ``still_signed_in``.

        The name is matched ignoring case, as it is unique ignoring case; the actor carries
        its stored spelling. A pair verified recently is recognised from the credential memo
        without hashing; the user row is still read on every call, so a disabled account or a
        changed password takes effect on the next request. Before any hash is computed the
        throttle is asked, and every failure is counted (per account ignoring case too), one
        attempt of an account or address after another (``LoginThrottle.one_at_a_time``).
        """
        if "\x00" in username:  # no name holds one, and PostgreSQL refuses it in a query
            raise Unauthorized("unknown user or wrong password")
        rows, stored_hash = self._account(username)
        if stored_hash and self.memo.matches(username, password, stored_hash):
            return _password_actor(rows, remote_addr, user_agent, stored_hash), stored_hash
        with self.throttle.one_at_a_time(username, remote_addr):
            # A client's requests sent at once wait for its first: then they are recognised,
            # by the hash it may have replaced (an imported one, hashed again at its login).
            rows, stored_hash = self._account(username)
            if stored_hash and self.memo.matches(username, password, stored_hash):
                return _password_actor(rows, remote_addr, user_agent, stored_hash), stored_hash
            self.throttle.check(username, remote_addr)
            ok, new_hash = self.hasher.verify(password, stored_hash)  # unknown users cost the same
            if not ok or stored_hash is None:
                self.throttle.record_failure(username, remote_addr, user_agent, "bad credentials")
                raise Unauthorized("unknown user or wrong password")
            actor = _password_actor(rows, remote_addr, user_agent, stored_hash)
            verified = self._record_login(actor, stored_hash, new_hash)
            self.memo.remember(username, password, verified)
        return _password_actor(rows, remote_addr, user_agent, verified), verified

    def _account(self, username: str) -> tuple[Sequence[sa.Row[Any]], str | None]:
        """The user's rows (one per role) and, when active, their password hash."""
        with self.db.connect() as conn:
            rows = conn.execute(_BY_USERNAME, {"name_key": account_key(username)}).all()
        return rows, rows[0].password_hash if rows and rows[0].is_active else None

    def still_signed_in(self, session: Session, actor: Actor, verified_hash: str) -> None:
        """Unauthorized unless the user's row, read and locked in the caller's transaction,
        still holds ``verified_hash`` and is active: a password change, a disable or a delete
        committed since ``sign_in`` verified the password ends every session there is when it
        commits, so a session begun after it (a token login in flight) would outlive it.
        Those lock the row before they end the sessions (``UserService``), so on PostgreSQL
        one of the two waits for the other; SQLite's writers queue anyway."""
        row = session.execute(
            sa.select(User.password_hash, User.is_active)
            .where(User.id == actor.user_id, User.deleted_at.is_(None))
            .with_for_update()
        ).first()
        if row is None or not row.is_active or row.password_hash != verified_hash:
            raise Unauthorized("unknown user or wrong password")

    def _authenticate_key(
        self, username: str, key: str, remote_addr: str | None, user_agent: str | None
    ) -> Actor | None:
        """The actor for a valid API key of this user; None when the key is unknown."""
        now = utcnow()
        with self.db.connect() as conn:
            rows = conn.execute(_BY_KEY, {"key_hash": key_hash(key), "now": now}).all()
        if not rows or rows[0].username.lower() != account_key(username):  # as for passwords
            return None
        key_row = rows[0]
        if not (key_row.is_active and key_row.key_active):
            return None
        if key_row.last_used_at is None or now - key_row.last_used_at > _KEY_USE_RESOLUTION:
            with self.db.write() as session:
                session.execute(
                    sa.update(ApiKey).where(ApiKey.id == key_row.key_id).values(last_used_at=now)
                )
        return actor_from_rows(
            rows,
            remote_addr,
            user_agent,
            auth_method="apikey",
            api_key_id=key_row.key_id,
            read_only=key_row.scope == "read",
        )

    def _record_login(self, actor: Actor, stored_hash: str, new_hash: str | None) -> str:
        """The login's time, and ``new_hash`` (the password hashed again with the current
        parameters) in place of ``stored_hash``; the hash the row holds now. Unauthorized when
        the row no longer holds ``stored_hash`` or is disabled: a password change or a disable
        committed while the password was being verified (the rehash put the old password
        back)."""
        with self.db.write() as session:
            self.still_signed_in(session, actor, stored_hash)
            values: dict[str, object] = {"last_login_at": utcnow()}
            if new_hash:
                values["password_hash"] = new_hash
            session.execute(sa.update(User).where(User.id == actor.user_id).values(**values))
            self.throttle.clear(session, actor.username)
            record_audit(
                session,
                actor,
                Op.LOGIN_SUCCESS,
                details={"hash_upgraded": True} if new_hash else None,
            )
        return new_hash or stored_hash


def _password_actor(
    rows: Sequence[sa.Row[Any]], remote_addr: str | None, user_agent: str | None, verified: str
) -> Actor:
    """The actor signed in by a password verified against the hash ``verified``."""
    credential = hashlib.sha256(verified.encode()).hexdigest()[:16]
    return actor_from_rows(
        rows, remote_addr, user_agent, auth_method="password", credential=credential
    )


def actor_from_rows(
    rows: Sequence[sa.Row[Any]],
    remote_addr: str | None,
    user_agent: str | None,
    **credential: Any,
) -> Actor:
    """The actor for a user's rows from ``user_with_roles()`` (one row per role)."""
    return Actor(
        user_id=rows[0].id,
        username=rows[0].username,
        roles=frozenset(row.role for row in rows if row.role),
        remote_addr=remote_addr,
        user_agent=user_agent,
        quota_bytes=rows[0].quota_bytes,
        **credential,
    )


# A key's last use is recorded to this resolution, so a busy key is not a write per request.
_KEY_USE_RESOLUTION = dt.timedelta(minutes=5)

_users = Base.metadata.tables["users"]
_user_roles = Base.metadata.tables["user_roles"]
_roles = Base.metadata.tables["roles"]
_keys = Base.metadata.tables["api_keys"]


def user_with_roles() -> sa.Select[Any]:
    """Live users with their roles: one row per role (or one row with no role)."""
    return (
        sa.select(
            _users.c.id,
            _users.c.username,
            _users.c.password_hash,
            _users.c.is_active,
            _users.c.quota_bytes,
            _roles.c.name.label("role"),
        )
        .select_from(_users)
        .outerjoin(_user_roles, _user_roles.c.user_id == _users.c.id)
        .outerjoin(_roles, _roles.c.id == _user_roles.c.role_id)
        .where(_users.c.deleted_at.is_(None))
    )


_BY_USERNAME = user_with_roles().where(sa.func.lower(_users.c.username) == sa.bindparam("name_key"))


_BY_KEY = (
    user_with_roles()
    .add_columns(
        _keys.c.id.label("key_id"),
        _keys.c.scope,
        _keys.c.last_used_at,
        sa.and_(
            _keys.c.is_active,
            sa.or_(_keys.c.expires_at.is_(None), _keys.c.expires_at > sa.bindparam("now")),
        ).label("key_active"),
    )
    .join(_keys, _keys.c.user_id == _users.c.id)
    .where(_keys.c.key_hash == sa.bindparam("key_hash"))
)
