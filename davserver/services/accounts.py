"""Accounts: the first admin, roles, and checking a username and password."""

from __future__ import annotations

import secrets
import uuid
from typing import Protocol

import sqlalchemy as sa
from sqlalchemy.orm import Session

from davserver.db import Base, Database
from davserver.db.types import utcnow
from davserver.errors import BadRequest
from davserver.models import SYSTEM_ROLES, Op, Role, User, UserRole
from davserver.services.actor import Actor
from davserver.services.audit import record_audit

MIN_USERNAME_LENGTH = 3


class Hasher(Protocol):
    def hash(self, password: str) -> str: ...

    def verify(self, password: str, stored_hash: str | None) -> tuple[bool, str | None]: ...


class CredentialMemo(Protocol):
    def matches(self, username: str, password: str, password_hash: str) -> bool: ...

    def remember(self, username: str, password: str, password_hash: str) -> None: ...


class AccountService:
    def __init__(self, db: Database, hasher: Hasher, memo: CredentialMemo) -> None:
        self.db = db
        self.hasher = hasher
        self.memo = memo

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
        """Create the first admin if no user of that name exists.

        Returns the generated password when one had to be made (to be shown once), else None.
        An existing account is left as it is.
        """
        if len(username) < MIN_USERNAME_LENGTH:
            raise BadRequest(f"usernames have at least {MIN_USERNAME_LENGTH} characters")
        with self.db.write() as session:
            roles = self.ensure_roles(session)
            if session.scalar(sa.select(User.id).where(User.username == username)):
                return None
            generated = None
            if not password:
                generated = password = secrets.token_urlsafe(18)
            user = User(username=username, password_hash=self.hasher.hash(password))
            session.add(user)
            session.flush()
            for role in ("admin", "user"):
                session.add(UserRole(user_id=user.id, role_id=roles[role]))
            record_audit(
                session,
                None,
                Op.USER_CREATE,
                details={"username": username, "roles": ["admin", "user"], "bootstrap": True},
            )
            return generated

    def authenticate(
        self,
        username: str,
        password: str,
        *,
        remote_addr: str | None = None,
        user_agent: str | None = None,
    ) -> Actor | None:
        """The actor for a valid, active username and password; None otherwise.

        A pair verified recently is recognised from the credential memo without hashing; the
        user row is still read on every call, so a disabled account or a changed password
        takes effect on the next request.
        """
        with self.db.connect() as conn:
            rows = conn.execute(_USER_WITH_ROLES, {"username": username}).all()
        if not rows or not rows[0].is_active or not rows[0].password_hash:
            self.hasher.verify(password, None)  # same cost as a wrong password
            return None
        user_id, stored_hash = rows[0].id, rows[0].password_hash
        roles = frozenset(row.role for row in rows if row.role)
        if not self.memo.matches(username, password, stored_hash):
            ok, new_hash = self.hasher.verify(password, stored_hash)
            if not ok:
                return None
            self._record_login(user_id, new_hash)
            self.memo.remember(username, password, new_hash or stored_hash)
        return Actor(
            user_id=user_id,
            username=username,
            roles=roles,
            remote_addr=remote_addr,
            user_agent=user_agent,
        )

    def _record_login(self, user_id: uuid.UUID, new_hash: str | None) -> None:
        values: dict[str, object] = {"last_login_at": utcnow()}
        if new_hash:
            values["password_hash"] = new_hash
        with self.db.write() as session:
            session.execute(sa.update(User).where(User.id == user_id).values(**values))


_users = Base.metadata.tables["users"]
_user_roles = Base.metadata.tables["user_roles"]
_roles = Base.metadata.tables["roles"]
# One row per role (or one row with no role): the user and their roles in one query.
_USER_WITH_ROLES = (
    sa.select(_users.c.id, _users.c.password_hash, _users.c.is_active, _roles.c.name.label("role"))
    .select_from(_users)
    .outerjoin(_user_roles, _user_roles.c.user_id == _users.c.id)
    .outerjoin(_roles, _roles.c.id == _user_roles.c.role_id)
    .where(_users.c.username == sa.bindparam("username"), _users.c.deleted_at.is_(None))
)
