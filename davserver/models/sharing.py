"""Grants and packages: who may do what with a node, and named bundles of pinned versions."""

from __future__ import annotations

import datetime as dt
import uuid

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column

from davserver.db.base import Base
from davserver.db.types import UTCDateTime, created_at, timestamp_or_none, utcnow, uuid_pk


class Grant(Base):
    """Rights on a node (and everything below it) for exactly one user or one group."""

    __tablename__ = "grants"
    __table_args__ = (
        sa.CheckConstraint("(user_id IS NULL) <> (group_id IS NULL)", name="one_grantee"),
        # One grant per item and grantee: a new grant replaces the old (NULLs are distinct,
        # so a user's grants and a group's do not meet).
        sa.Index("uq_grants_node_user", "node_id", "user_id", unique=True),
        sa.Index("uq_grants_node_group", "node_id", "group_id", unique=True),
        sa.Index("ix_grants_granted_by", "granted_by"),  # who shared on (grant_support)
    )

    id: Mapped[uuid_pk]
    node_id: Mapped[uuid.UUID] = mapped_column(sa.ForeignKey("nodes.id", ondelete="CASCADE"))
    user_id: Mapped[uuid.UUID | None] = mapped_column(
        sa.ForeignKey("users.id", ondelete="CASCADE"), index=True
    )
    group_id: Mapped[uuid.UUID | None] = mapped_column(
        sa.ForeignKey("groups.id", ondelete="CASCADE"), index=True
    )
    can_read: Mapped[bool] = mapped_column(default=False)
    can_download: Mapped[bool] = mapped_column(default=False)
    can_write: Mapped[bool] = mapped_column(default=False)
    can_share: Mapped[bool] = mapped_column(default=False)
    granted_by: Mapped[uuid.UUID | None] = mapped_column(
        sa.ForeignKey("users.id", ondelete="SET NULL")
    )
    granted_at: Mapped[created_at]
    expires_at: Mapped[timestamp_or_none]


class Package(Base):
    """A named, expiring set of pinned file versions, served as one zip (``/packages/``)."""

    __tablename__ = "packages"
    __table_args__ = (sa.UniqueConstraint("created_by", "name"),)

    id: Mapped[uuid_pk]
    name: Mapped[str] = mapped_column(sa.String(255))
    description: Mapped[str] = mapped_column(sa.Text, default="")
    created_by: Mapped[uuid.UUID] = mapped_column(sa.ForeignKey("users.id", ondelete="CASCADE"))
    created_at: Mapped[created_at]
    expires_at: Mapped[timestamp_or_none]
    # Bumped by every change to the items: the zip's Last-Modified (If-Range by date). Null
    # is allowed only so that adding it did not rebuild the table on SQLite (which would have
    # cleared the references to it); the service always sets it.
    modified_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, default=utcnow)
    # Unused: archives are streamed from the pinned blobs, never stored.
    archive_blob_id: Mapped[uuid.UUID | None] = mapped_column(sa.ForeignKey("blobs.id"))


class PackageItem(Base):
    """One pinned file version inside a package, at a path inside the archive."""

    __tablename__ = "package_items"
    __table_args__ = (sa.UniqueConstraint("package_id", "path_in_archive"),)

    id: Mapped[uuid_pk]
    package_id: Mapped[uuid.UUID] = mapped_column(sa.ForeignKey("packages.id", ondelete="CASCADE"))
    node_id: Mapped[uuid.UUID | None] = mapped_column(
        sa.ForeignKey("nodes.id", ondelete="SET NULL"), index=True
    )
    # No ondelete: a pinned version cannot be deleted while a package holds it. None pins an
    # empty file (empty files have no version), or, with node_id None too, a file purged from
    # its owner's trash while another user's package held it (the pin was released).
    version_id: Mapped[uuid.UUID | None] = mapped_column(
        sa.ForeignKey("file_versions.id"), index=True
    )
    path_in_archive: Mapped[str] = mapped_column(sa.String(1024))
    # The file's modification time when it was pinned: a later PROPPATCH of the file's time
    # must not change the package's bytes.
    mtime: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    added_at: Mapped[created_at]
