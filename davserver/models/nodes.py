"""The tree: one row per folder or file, plus the dead properties clients store on them."""

from __future__ import annotations

import datetime as dt
import enum
import uuid

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column

from davserver.db.base import Base
from davserver.db.types import UTCDateTime, created_at, timestamp_or_none, utcnow, uuid_pk


class NodeKind(enum.StrEnum):
    FOLDER = "folder"
    FILE = "file"


class Space(enum.StrEnum):
    HOME = "home"  # a user's own space, /files/
    GROUP = "group"  # a group's space, /groups/<group>/


def _trashed_only(name: str, *columns: str) -> sa.Index:
    """An index of the trashed rows only: the live ones, nearly all, cost it nothing."""
    trashed = sa.text("deleted_at IS NOT NULL")
    return sa.Index(name, *columns, sqlite_where=trashed, postgresql_where=trashed)


class Node(Base):
    """A folder or a file.

    Children point at their parent (an adjacency list), so MOVE of a folder is one UPDATE
    whatever its size. A deleted item keeps its parent and gets ``deleted_at``; its descendants
    stay untouched and are hidden because their ancestor is deleted, so a restore is one UPDATE
    too. ``name_key`` is the NFC form of the name: lookups use it, so composed and decomposed
    spellings of a name find the same item.
    """

    __tablename__ = "nodes"
    __table_args__ = (
        sa.CheckConstraint("kind IN ('folder', 'file')", name="kind_known"),
        sa.CheckConstraint("space IN ('home', 'group')", name="space_known"),
        sa.CheckConstraint("size >= 0", name="size_not_negative"),
        sa.Index(
            "uq_nodes_live_name",
            "parent_id",
            "name_key",
            unique=True,
            sqlite_where=sa.text("deleted_at IS NULL"),
            postgresql_where=sa.text("deleted_at IS NULL"),
        ),
        sa.Index(
            "uq_nodes_home_root",
            "owner_id",
            unique=True,
            sqlite_where=sa.text("parent_id IS NULL AND space = 'home'"),
            postgresql_where=sa.text("parent_id IS NULL AND space = 'home'"),
        ),
        sa.Index(
            "uq_nodes_group_root",
            "group_id",
            unique=True,
            sqlite_where=sa.text("parent_id IS NULL AND space = 'group'"),
            postgresql_where=sa.text("parent_id IS NULL AND space = 'group'"),
        ),
        # A query uses these only when its WHERE says ``deleted_at IS NOT NULL`` (on SQLite,
        # each branch of an OR must say it).
        _trashed_only("ix_nodes_trash", "owner_id", "deleted_at"),  # a user's trash
        _trashed_only("ix_nodes_trash_deleter", "deleted_by", "deleted_at"),  # group items
        _trashed_only("ix_nodes_trash_expiry", "deleted_at", "id"),  # the sweep's purge order
        # A home's nodes: the grants in a user's space are found through them (grant_support).
        # Home nodes only, so that a group's trash is still read by ix_nodes_trash_deleter.
        sa.Index(
            "ix_nodes_home_space",
            "owner_id",
            sqlite_where=sa.text("group_id IS NULL"),
            postgresql_where=sa.text("group_id IS NULL"),
        ),
        # The trash items being purged (a few at most): housekeeping finishes interrupted ones.
        sa.Index(
            "ix_nodes_purging",
            "id",
            sqlite_where=sa.text("purge_started_at IS NOT NULL"),
            postgresql_where=sa.text("purge_started_at IS NOT NULL"),
        ),
    )

    id: Mapped[uuid_pk]
    parent_id: Mapped[uuid.UUID | None] = mapped_column(
        sa.ForeignKey("nodes.id", ondelete="CASCADE"), index=True
    )
    name: Mapped[str] = mapped_column(sa.String(1024))
    name_key: Mapped[str] = mapped_column(sa.String(1024))
    kind: Mapped[str] = mapped_column(sa.String(8))
    owner_id: Mapped[uuid.UUID] = mapped_column(sa.ForeignKey("users.id", ondelete="CASCADE"))
    space: Mapped[str] = mapped_column(sa.String(8), default=Space.HOME)
    group_id: Mapped[uuid.UUID | None] = mapped_column(
        sa.ForeignKey("groups.id", ondelete="CASCADE")
    )
    mime_type: Mapped[str | None] = mapped_column(sa.String(255))
    current_version_id: Mapped[uuid.UUID | None] = mapped_column(
        sa.ForeignKey("file_versions.id", use_alter=True, ondelete="SET NULL"), index=True
    )
    size: Mapped[int] = mapped_column(sa.BigInteger, default=0)
    # The modification time the client asked for (X-OC-Mtime, PROPPATCH); None = server time.
    mtime: Mapped[timestamp_or_none]
    created_at: Mapped[created_at]
    modified_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    deleted_at: Mapped[timestamp_or_none]
    deleted_by: Mapped[uuid.UUID | None] = mapped_column(
        sa.ForeignKey("users.id", ondelete="SET NULL")
    )
    # Set on a trash item when its purge began: it is no longer in the trash for anyone, and
    # its rows are being removed a batch at a time (services.trash_purge).
    purge_started_at: Mapped[timestamp_or_none]

    @property
    def is_folder(self) -> bool:
        return self.kind == NodeKind.FOLDER


# The longest dead property name (Clark notation) the column holds.
MAX_PROPERTY_NAME = 512


class DeadProperty(Base):
    """A PROPPATCH-ed property, stored per node so it follows renames and moves."""

    __tablename__ = "dead_properties"
    __table_args__ = (sa.UniqueConstraint("node_id", "name"),)

    id: Mapped[uuid_pk]
    node_id: Mapped[uuid.UUID] = mapped_column(sa.ForeignKey("nodes.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(sa.String(MAX_PROPERTY_NAME))  # {namespace}local
    value: Mapped[bytes] = mapped_column(sa.LargeBinary)  # the serialized XML element
