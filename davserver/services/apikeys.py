"""API keys: long random secrets a user gives a script or a DAV client in place of a password.

A key reads ``dav_`` + 43 URL-safe characters (32 random bytes). Only its SHA-256
(``key_hash``) is stored, with its first 12 characters (``prefix``) to recognise it in
listings; the key itself is returned once, by ``create``. A key is ``read`` (never writes) or
``readwrite``, may expire, and is revoked by clearing ``is_active``; revoked keys stay listed.
Deleting a user revokes their keys (``UserAdminService.delete_user``).

Users manage their own keys; admins (and the local command line, actor None) anyone's.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import enum
import hashlib
import secrets
import unicodedata
import uuid
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from davserver.db import Database
from davserver.db.types import utcnow
from davserver.errors import AlreadyExists, BadRequest, Conflict, Forbidden, NotFound
from davserver.models import ApiKey, LoginSession, Op, User
from davserver.services.account_rules import audit_details, iso
from davserver.services.actor import Actor
from davserver.services.audit import record_audit

KEY_MARKER = "dav_"
PREFIX_LENGTH = 12
SCOPES = ("read", "readwrite")
MAX_KEY_NAME_LENGTH = 150


def key_hash(plaintext: str) -> str:
    """The stored form of a key: the hex SHA-256 of its UTF-8 bytes."""
    return hashlib.sha256(plaintext.encode()).hexdigest()


def new_key() -> str:
    """A fresh key: ``dav_`` + ``secrets.token_urlsafe(32)``."""
    return KEY_MARKER + secrets.token_urlsafe(32)


class KeyStatus(enum.StrEnum):
    ACTIVE = "active"
    EXPIRED = "expired"
    REVOKED = "revoked"


@dataclass(frozen=True)
class ApiKeyInfo:
    """What may be shown of a key: never the key, never its hash."""

    id: uuid.UUID
    username: str
    name: str
    prefix: str
    scope: str
    status: KeyStatus
    created_at: dt.datetime
    expires_at: dt.datetime | None
    last_used_at: dt.datetime | None

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def key_status(key: ApiKey, now: dt.datetime) -> KeyStatus:
    if not key.is_active:
        return KeyStatus.REVOKED
    if key.expires_at is not None and key.expires_at <= now:
        return KeyStatus.EXPIRED
    return KeyStatus.ACTIVE


class ApiKeyService:
    def __init__(self, db: Database) -> None:
        self.db = db

    def create(
        self,
        actor: Actor | None,
        user_id: uuid.UUID,
        name: str,
        *,
        scope: str = "readwrite",
        expires_at: dt.datetime | None = None,
    ) -> tuple[ApiKeyInfo, str]:
        """A new key for the user; returns what may be shown of it and the key (only now).

        Raises BadRequest (empty or long name, control characters in it, unknown scope, expiry
        not in the future),
        Forbidden (another user's key, actor not an admin, or signed in with an API key),
        NotFound (no such user),
        Conflict (user deleted) or AlreadyExists (the user has an active key of that name).
        """
        if actor is not None and actor.auth_method == "apikey":
            # Else a key given out for a day (or stolen) could mint itself a lasting one.
            raise Forbidden("an API key cannot create API keys: sign in with your password")
        name = name.strip()
        if not name or len(name) > MAX_KEY_NAME_LENGTH:
            raise BadRequest(f"a key name has 1 to {MAX_KEY_NAME_LENGTH} characters")
        if any(unicodedata.category(ch) == "Cc" for ch in name):
            # It is printed in listings, an admin's terminal among them: no escape sequences.
            raise BadRequest("a key name may not contain control characters")
        if scope not in SCOPES:
            raise BadRequest(f"unknown scope {scope!r}; scopes are {', '.join(SCOPES)}")
        now = utcnow()
        if expires_at is not None and (expires_at.tzinfo is None or expires_at <= now):
            raise BadRequest("a key expires at a moment in the future (with its time zone)")
        plaintext = new_key()
        with self.db.write() as session:
            user = _owner(session, actor, user_id)
            if user.deleted_at is not None:
                raise Conflict(f"user {user.username!r} is deleted")
            # An expired key is listed as expired, not active: its name is free again.
            clash = session.scalar(
                sa.select(ApiKey.id).where(
                    ApiKey.user_id == user.id,
                    ApiKey.name == name,
                    ApiKey.is_active.is_(True),
                    sa.or_(ApiKey.expires_at.is_(None), ApiKey.expires_at > now),
                )
            )
            if clash is not None:
                raise AlreadyExists(f"{user.username!r} already has an active key named {name!r}")
            key = ApiKey(
                user_id=user.id,
                name=name,
                key_hash=key_hash(plaintext),
                prefix=plaintext[:PREFIX_LENGTH],
                scope=scope,
                expires_at=expires_at,
                is_active=True,
            )
            session.add(key)
            session.flush()
            info = _info(key, user.username, now)
            record_audit(
                session,
                actor,
                Op.APIKEY_CREATE,
                details=audit_details(
                    actor,
                    None,
                    {"name": name, "scope": scope, "expires_at": iso(expires_at)},
                    user=user.username,
                    user_id=str(user.id),
                    key_id=str(key.id),
                    prefix=key.prefix,
                ),
            )
        return info, plaintext

    def list_keys(self, user_id: uuid.UUID, *, actor: Actor | None = None) -> list[ApiKeyInfo]:
        """Every key of the user, revoked and expired ones included, newest first."""
        now = utcnow()
        with self.db.read() as session:
            user = _owner(session, actor, user_id)
            keys = session.scalars(
                sa.select(ApiKey)
                .where(ApiKey.user_id == user.id)
                .order_by(ApiKey.created_at.desc(), ApiKey.prefix)
            ).all()
            return [_info(key, user.username, now) for key in keys]

    def revoke(self, actor: Actor | None, user_id: uuid.UUID, key: str) -> ApiKeyInfo:
        """Revoke one of the user's keys, named by its id, its prefix or the whole key.

        The key stops working on the next request, and its sessions end. Raises NotFound
        (no such key of this user, or it is revoked already: a second DELETE answers as the
        API's other ones do), Conflict (a prefix shared by several keys) or Forbidden (another
        user's key, or another key than the one the actor signed in with).
        """
        with self.db.write() as session:
            user = _owner(session, actor, user_id)
            row = _find_key(session, user.id, key.strip())
            if not row.is_active:
                raise NotFound(f"the key {row.prefix}… is already revoked")
            if actor is not None and actor.auth_method == "apikey" and row.id != actor.api_key_id:
                # A key given out for a day (or stolen) would revoke the lasting ones.
                raise Forbidden(
                    "an API key can revoke only itself: sign in with your password to revoke"
                    " another key"
                )
            row.is_active = False
            session.flush()
            result = session.execute(
                sa.update(LoginSession)
                .where(
                    LoginSession.user_id == user.id,
                    LoginSession.api_key_id == row.id,
                    LoginSession.ended_at.is_(None),
                )
                .values(ended_at=utcnow())
            )
            ended = int(result.rowcount)  # type: ignore[attr-defined]
            record_audit(
                session,
                actor,
                Op.APIKEY_REVOKE,
                details=audit_details(
                    actor,
                    {"is_active": True},
                    {"is_active": False, "ended_sessions": ended},
                    user=user.username,
                    user_id=str(user.id),
                    key_id=str(row.id),
                    prefix=row.prefix,
                    name=row.name,
                ),
            )
            return _info(row, user.username, utcnow())


def _owner(session: Session, actor: Actor | None, user_id: uuid.UUID) -> User:
    if actor is not None and actor.user_id != user_id and not actor.is_admin:
        raise Forbidden("only admins manage other users' API keys")
    user = session.get(User, user_id)
    if user is None:
        raise NotFound(f"no user with id {user_id}")
    return user


def _find_key(session: Session, user_id: uuid.UUID, ref: str) -> ApiKey:
    mine = sa.select(ApiKey).where(ApiKey.user_id == user_id)
    try:
        key_id = uuid.UUID(ref)
    except ValueError:
        key_id = None
    if key_id is not None:
        found = session.scalars(mine.where(ApiKey.id == key_id)).all()
    elif len(ref) > PREFIX_LENGTH:
        found = session.scalars(mine.where(ApiKey.key_hash == key_hash(ref))).all()
    else:
        found = session.scalars(mine.where(ApiKey.prefix == ref)).all()
    if not found:
        raise NotFound(f"no API key {ref[:PREFIX_LENGTH]!r} for this user")
    if len(found) > 1:
        raise Conflict(f"several keys start with {ref!r}; give the key's id")
    return found[0]


def _info(key: ApiKey, username: str, now: dt.datetime) -> ApiKeyInfo:
    return ApiKeyInfo(
        id=key.id,
        username=username,
        name=key.name,
        prefix=key.prefix,
        scope=key.scope,
        status=key_status(key, now),
        created_at=key.created_at,
        expires_at=key.expires_at,
        last_used_at=key.last_used_at,
    )
