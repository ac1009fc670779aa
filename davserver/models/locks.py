"""WebDAV locks, in the database so that every server process sees the same ones."""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column

from davserver.db.base import Base
from davserver.db.types import created_at


class DavLock(Base):
    __tablename__ = "locks"
    __table_args__ = (
        sa.CheckConstraint("depth IN ('0', 'infinity')", name="depth_known"),
        sa.Index("ix_locks_namespace_root", "namespace", "root"),
    )

    token: Mapped[str] = mapped_column(sa.String(128), primary_key=True)
    # URLs are per user (everyone has a /files/), so a lock's URL means something only within
    # the namespace of the user whose URL space it was taken in.
    namespace: Mapped[str] = mapped_column(sa.String(64), default="")
    root: Mapped[str] = mapped_column(sa.String(4096))  # the locked URL path
    depth: Mapped[str] = mapped_column(sa.String(8))
    scope: Mapped[str] = mapped_column(sa.String(16))  # exclusive | shared
    type: Mapped[str] = mapped_column(sa.String(16), default="write")
    owner: Mapped[bytes] = mapped_column(sa.LargeBinary)  # the client's <owner> XML
    principal: Mapped[str] = mapped_column(sa.String(150))
    timeout: Mapped[float] = mapped_column(sa.Float)
    expire: Mapped[float] = mapped_column(sa.Float, index=True)  # epoch seconds
    created_at: Mapped[created_at]
