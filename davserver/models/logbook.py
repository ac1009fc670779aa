"""The logbook: one row per state change, login, download and administrative action."""

from __future__ import annotations

import datetime as dt
import enum
import uuid
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column

from davserver.db.base import Base
from davserver.db.types import InetType, JSONType, UTCDateTime, bigint_pk, utcnow


class Op(enum.StrEnum):
    """Operation types, as ``area:object:verb``."""

    FILE_CREATE = "file:create"
    FILE_VERSION_CREATE = "file:version:create"
    FILE_VERSION_REPLACE = "file:version:replace"  # an upload coalesced into the newest version
    FILE_VERSION_RESTORE = "file:version:restore"
    FILE_VERSION_PRUNE = "file:version:prune"
    FILE_DOWNLOAD = "file:download"
    FOLDER_DOWNLOAD = "folder:download"
    FOLDER_CREATE = "folder:create"
    NODE_MOVE = "node:move"
    NODE_COPY = "node:copy"
    NODE_DELETE = "node:delete"
    NODE_RESTORE = "node:restore"  # out of the trash
    NODE_PURGE = "node:purge"  # out of the trash for good
    NODE_PROPPATCH = "node:proppatch"
    LOCK_CREATE = "lock:create"
    LOCK_REFRESH = "lock:refresh"
    LOCK_DELETE = "lock:delete"
    USER_CREATE = "user:create"
    USER_UPDATE = "user:update"
    USER_DISABLE = "user:disable"
    USER_ENABLE = "user:enable"
    USER_DELETE = "user:delete"
    USER_PASSWORD_SET = "user:password:set"
    USER_IMPORT = "user:import"
    ROLE_ASSIGN = "user:role:assign"
    ROLE_REMOVE = "user:role:remove"
    GROUP_CREATE = "group:create"
    GROUP_DELETE = "group:delete"
    GROUP_MEMBER_ADD = "group:member:add"
    GROUP_MEMBER_REMOVE = "group:member:remove"
    GROUP_ADMIN_SET = "group:admin:set"
    APIKEY_CREATE = "apikey:create"
    APIKEY_REVOKE = "apikey:revoke"
    LOGIN_SUCCESS = "auth:login"
    LOGIN_FAILURE = "auth:login:failure"
    LOGIN_BAN = "auth:login:ban"
    TOKEN_ISSUE = "auth:token:issue"
    TOKEN_REFRESH = "auth:token:refresh"
    TOKEN_REUSE = "auth:token:reuse"
    TOKEN_REVOKE = "auth:token:revoke"
    SESSION_START = "auth:session:start"
    SESSION_END = "auth:session:end"
    GRANT_CREATE = "share:grant:create"
    GRANT_REVOKE = "share:grant:revoke"
    PACKAGE_CREATE = "package:create"
    PACKAGE_DELETE = "package:delete"
    PACKAGE_UPDATE = "package:update"
    PACKAGE_ITEM_ADD = "package:item:add"
    PACKAGE_ITEM_REMOVE = "package:item:remove"
    PACKAGE_ITEM_MOVE = "package:item:move"
    PACKAGE_DOWNLOAD = "package:download"
    MAINTENANCE_GC = "maintenance:gc"
    MAINTENANCE_FSCK = "maintenance:fsck"
    MAINTENANCE_RECOUNT = "maintenance:recount"
    MAINTENANCE_COPY = "maintenance:copy"
    MAINTENANCE_BACKUP = "maintenance:backup"
    MAINTENANCE_LOGBOOK_PRUNE = "maintenance:logbook:prune"


class LogEntry(Base):
    __tablename__ = "logbook"
    __table_args__ = (
        sa.Index("ix_logbook_user_time", "user_id", "occurred_at"),
        sa.Index("ix_logbook_node_time", "node_id", "occurred_at"),
        sa.Index("ix_logbook_op_time", "op_type", "occurred_at"),
        # Few rows are about an account (migration 0011): the index holds those only.
        sa.Index(
            "ix_logbook_account_time",
            "account_id",
            "occurred_at",
            sqlite_where=sa.text("account_id IS NOT NULL"),
            postgresql_where=sa.text("account_id IS NOT NULL"),
        ),
    )

    id: Mapped[bigint_pk]
    occurred_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)
    user_id: Mapped[uuid.UUID | None] = mapped_column(
        sa.ForeignKey("users.id", ondelete="SET NULL")
    )
    session_id: Mapped[uuid.UUID | None] = mapped_column(
        sa.ForeignKey("sessions.id", ondelete="SET NULL")
    )
    op_type: Mapped[str] = mapped_column(sa.String(64))
    # What a row is about: ids kept as they were when it happened, with no foreign key, so that
    # purging a file, pruning a version or deleting a package does not rewrite the record of it
    # (``davserver audit --node`` finds a purged file's history by its id). Users and sessions
    # are never deleted, so those two keep theirs.
    node_id: Mapped[uuid.UUID | None] = mapped_column(sa.Uuid)
    version_id: Mapped[uuid.UUID | None] = mapped_column(sa.Uuid)
    package_id: Mapped[uuid.UUID | None] = mapped_column(sa.Uuid)
    # The account a row is about: a failed sign-in under its name, its ban, a reuse of its
    # refresh token, what an admin did to it (``davserver.services.audit``). Set when the row
    # is written, so that reading an account's history walks an index, not the details.
    account_id: Mapped[uuid.UUID | None] = mapped_column(sa.Uuid)
    remote_addr: Mapped[str | None] = mapped_column(InetType)
    user_agent: Mapped[str | None] = mapped_column(sa.String(512))
    details: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
