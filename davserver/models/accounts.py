"""Accounts: users, roles, groups, login sessions, refresh tokens, API keys, revoked tokens."""

from __future__ import annotations

import datetime as dt
import uuid

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column

from davserver.db.base import Base
from davserver.db.types import (
    InetType,
    UTCDateTime,
    created_at,
    timestamp,
    timestamp_or_none,
    utcnow,
    uuid_pk,
)

SYSTEM_ROLES = ("admin", "moderator", "user", "viewer")


class User(Base):
    __tablename__ = "users"
    __table_args__ = (
        sa.CheckConstraint("length(username) >= 3", name="username_min_length"),
        sa.CheckConstraint("email IS NULL OR email LIKE '%_@_%'", name="email_format"),
        sa.CheckConstraint("quota_bytes IS NULL OR quota_bytes >= 0", name="quota_not_negative"),
    )

    id: Mapped[uuid_pk]
    username: Mapped[str] = mapped_column(sa.String(150), unique=True)
    email: Mapped[str | None] = mapped_column(sa.String(320), unique=True)
    password_hash: Mapped[str | None] = mapped_column(sa.String(255))
    is_active: Mapped[bool] = mapped_column(default=True)
    last_login_at: Mapped[timestamp_or_none]
    created_at: Mapped[created_at]
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)
    deleted_at: Mapped[timestamp_or_none]
    # None means unlimited; usage counts the logical bytes of the user's current files.
    quota_bytes: Mapped[int | None] = mapped_column(sa.BigInteger)
    # Quota usage: the bytes of the live files of the user's own space (not in the trash),
    # kept by every change in its own transaction (davserver.services.usage).
    home_bytes: Mapped[int] = mapped_column(sa.BigInteger, default=0, server_default="0")


class Role(Base):
    __tablename__ = "roles"

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(sa.String(50), unique=True)
    description: Mapped[str] = mapped_column(sa.String(255), default="")
    is_system: Mapped[bool] = mapped_column(default=False)


class UserRole(Base):
    __tablename__ = "user_roles"

    user_id: Mapped[uuid.UUID] = mapped_column(
        sa.ForeignKey("users.id", ondelete="CASCADE"), primary_key=True
    )
    role_id: Mapped[int] = mapped_column(
        sa.ForeignKey("roles.id", ondelete="CASCADE"), primary_key=True
    )
    assigned_by: Mapped[uuid.UUID | None] = mapped_column(
        sa.ForeignKey("users.id", ondelete="SET NULL")
    )
    assigned_at: Mapped[created_at]


class Group(Base):
    __tablename__ = "groups"

    id: Mapped[uuid_pk]
    name: Mapped[str] = mapped_column(sa.String(150), unique=True)
    description: Mapped[str] = mapped_column(sa.Text, default="")
    created_by: Mapped[uuid.UUID | None] = mapped_column(
        sa.ForeignKey("users.id", ondelete="SET NULL")
    )
    created_at: Mapped[created_at]


# Names and addresses are unique ignoring case, for every writer (the services check first, to
# answer with a clear message). Usernames and group names are ASCII; SQLite's lower() folds
# ASCII only, so e-mail addresses differing in non-ASCII case are caught on PostgreSQL alone.
sa.Index("uq_users_username_lower", sa.func.lower(User.username), unique=True)
sa.Index("uq_users_email_lower", sa.func.lower(User.email), unique=True)
sa.Index("uq_groups_name_lower", sa.func.lower(Group.name), unique=True)


class GroupMember(Base):
    __tablename__ = "group_members"

    group_id: Mapped[uuid.UUID] = mapped_column(
        sa.ForeignKey("groups.id", ondelete="CASCADE"), primary_key=True
    )
    user_id: Mapped[uuid.UUID] = mapped_column(
        sa.ForeignKey("users.id", ondelete="CASCADE"), primary_key=True, index=True
    )
    is_admin: Mapped[bool] = mapped_column(default=False)
    added_at: Mapped[created_at]


class LoginSession(Base):
    """One client session: a run of requests from one client with one credential."""

    __tablename__ = "sessions"

    id: Mapped[uuid_pk]
    user_id: Mapped[uuid.UUID] = mapped_column(
        sa.ForeignKey("users.id", ondelete="CASCADE"), index=True
    )
    started_at: Mapped[created_at]
    last_seen_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    expires_at: Mapped[timestamp_or_none]
    ended_at: Mapped[timestamp_or_none]
    user_agent: Mapped[str] = mapped_column(sa.String(512), default="")
    ip: Mapped[str | None] = mapped_column(InetType)
    token_hash: Mapped[str | None] = mapped_column(sa.String(64), unique=True)
    # How the client signed in: password, apikey (Basic with a key) or token (Bearer).
    auth_method: Mapped[str] = mapped_column(
        sa.String(16), default="password", server_default="password"
    )
    api_key_id: Mapped[uuid.UUID | None] = mapped_column(
        sa.ForeignKey("api_keys.id", ondelete="SET NULL")
    )


class RefreshToken(Base):
    """A 30-day refresh token; each use replaces it, and reuse revokes its whole family."""

    __tablename__ = "refresh_tokens"

    id: Mapped[uuid_pk]
    user_id: Mapped[uuid.UUID] = mapped_column(
        sa.ForeignKey("users.id", ondelete="CASCADE"), index=True
    )
    session_id: Mapped[uuid.UUID | None] = mapped_column(
        sa.ForeignKey("sessions.id", ondelete="SET NULL")
    )
    family_id: Mapped[uuid.UUID] = mapped_column(sa.Uuid, index=True)
    token_hash: Mapped[str] = mapped_column(sa.String(64), unique=True)
    issued_at: Mapped[created_at]
    expires_at: Mapped[timestamp]
    revoked_at: Mapped[timestamp_or_none]
    replaced_by_id: Mapped[uuid.UUID | None] = mapped_column(
        sa.ForeignKey("refresh_tokens.id", ondelete="SET NULL")
    )


class RevokedToken(Base):
    """An access token revoked before its expiry (kept until it would have expired)."""

    __tablename__ = "revoked_tokens"

    jti: Mapped[str] = mapped_column(sa.String(64), primary_key=True)
    user_id: Mapped[uuid.UUID | None] = mapped_column(sa.ForeignKey("users.id", ondelete="CASCADE"))
    revoked_at: Mapped[created_at]
    expires_at: Mapped[timestamp]


class ApiKey(Base):
    """An API key usable as a Basic password; only its SHA-256 is stored."""

    __tablename__ = "api_keys"
    __table_args__ = (sa.CheckConstraint("scope IN ('read', 'readwrite')", name="scope_known"),)

    id: Mapped[uuid_pk]
    user_id: Mapped[uuid.UUID] = mapped_column(
        sa.ForeignKey("users.id", ondelete="CASCADE"), index=True
    )
    name: Mapped[str] = mapped_column(sa.String(150))
    key_hash: Mapped[str] = mapped_column(sa.String(64), unique=True)
    prefix: Mapped[str] = mapped_column(sa.String(16))
    scope: Mapped[str] = mapped_column(sa.String(16), default="readwrite")
    created_at: Mapped[created_at]
    expires_at: Mapped[timestamp_or_none]
    last_used_at: Mapped[timestamp_or_none]
    is_active: Mapped[bool] = mapped_column(default=True)


class LoginThrottle(Base):
    """Failed logins counted per account or per client address, shared by every process.

    ``key`` is ``user:<username>`` or ``addr:<ip>``. Failures inside one window count towards a
    ban; a ban lasts until ``banned_until``.
    """

    __tablename__ = "login_throttle"

    key: Mapped[str] = mapped_column(sa.String(200), primary_key=True)
    failures: Mapped[int] = mapped_column(default=0)
    window_started_at: Mapped[timestamp]
    banned_until: Mapped[timestamp_or_none]
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)


class InstanceSecret(Base):
    """Secrets every server process of one deployment shares (the token signing key)."""

    __tablename__ = "instance_secrets"

    name: Mapped[str] = mapped_column(sa.String(64), primary_key=True)
    value: Mapped[str] = mapped_column(sa.String(255))
    created_at: Mapped[created_at]
