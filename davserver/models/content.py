"""File content: blobs (bytes, once per SHA-256), file versions, image variants."""

from __future__ import annotations

import uuid

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column

from davserver.db.base import Base
from davserver.db.types import created_at, timestamp_or_none, uuid_pk


class Blob(Base):
    """Bytes stored once per distinct SHA-256; shared by every version with the same content."""

    __tablename__ = "blobs"
    __table_args__ = (sa.CheckConstraint("size_bytes >= 0", name="size_not_negative"),)

    id: Mapped[uuid_pk]
    sha256: Mapped[str] = mapped_column(sa.String(64), unique=True)
    md5: Mapped[str] = mapped_column(sa.String(32))
    sha1: Mapped[str] = mapped_column(sa.String(40))
    size_bytes: Mapped[int] = mapped_column(sa.BigInteger)
    storage_key: Mapped[str] = mapped_column(sa.String(255))
    created_at: Mapped[created_at]
    # CRC-32 of the bytes (zip entries need it before their data); None until computed.
    crc32: Mapped[int | None] = mapped_column(sa.BigInteger)


class FileVersion(Base):
    __tablename__ = "file_versions"
    __table_args__ = (
        sa.UniqueConstraint("node_id", "version_no"),
        sa.CheckConstraint("version_no >= 1", name="version_no_positive"),
    )

    id: Mapped[uuid_pk]
    node_id: Mapped[uuid.UUID] = mapped_column(sa.ForeignKey("nodes.id", ondelete="CASCADE"))
    version_no: Mapped[int]
    blob_id: Mapped[uuid.UUID] = mapped_column(sa.ForeignKey("blobs.id"), index=True)
    size: Mapped[int] = mapped_column(sa.BigInteger)
    uploaded_by: Mapped[uuid.UUID | None] = mapped_column(
        sa.ForeignKey("users.id", ondelete="SET NULL")
    )
    uploaded_at: Mapped[created_at]
    session_id: Mapped[uuid.UUID | None] = mapped_column(
        sa.ForeignKey("sessions.id", ondelete="SET NULL")
    )
    # The client's modification time for this version (X-OC-Mtime, PROPPATCH), if it gave one.
    mtime: Mapped[timestamp_or_none]


class ImageVariant(Base):
    """A thumbnail or preview rendered from one source blob, itself stored as a blob."""

    __tablename__ = "image_variants"
    __table_args__ = (
        sa.UniqueConstraint(
            "source_blob_id", "variant_type", "max_size", "format", "quality_level"
        ),
    )

    id: Mapped[uuid_pk]
    version_id: Mapped[uuid.UUID | None] = mapped_column(
        sa.ForeignKey("file_versions.id", ondelete="SET NULL"), index=True
    )
    source_blob_id: Mapped[uuid.UUID] = mapped_column(sa.ForeignKey("blobs.id"))
    variant_type: Mapped[str] = mapped_column(sa.String(16))  # thumbnail | preview
    max_size: Mapped[int]
    quality_level: Mapped[int]
    format: Mapped[str] = mapped_column(sa.String(8))  # jpeg | png | webp
    blob_id: Mapped[uuid.UUID] = mapped_column(sa.ForeignKey("blobs.id"), index=True)
    width: Mapped[int]
    height: Mapped[int]
    # The source image's size (before it was turned upright): whether the variant shows every
    # pixel of it. None for variants made before migration 0010.
    source_width: Mapped[int | None]
    source_height: Mapped[int | None]
    size_bytes: Mapped[int] = mapped_column(sa.BigInteger)
    created_at: Mapped[created_at]
