"""The logbook: every state change is recorded in the same transaction as the change."""

from __future__ import annotations

import uuid
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from davserver.db import Base
from davserver.db.types import utcnow
from davserver.models import LogEntry, Op
from davserver.services.actor import Actor


def record_audit(
    session: Session,
    actor: Actor | None,
    op: Op,
    *,
    node_id: uuid.UUID | None = None,
    version_id: uuid.UUID | None = None,
    package_id: uuid.UUID | None = None,
    details: dict[str, Any] | None = None,
    remote_addr: str | None = None,
    user_agent: str | None = None,
) -> None:
    """Add a logbook row to ``session``; it commits or rolls back with the change itself.

    ``remote_addr`` and ``user_agent`` describe the client when there is no actor (a failed
    login); with an actor, the actor's own are used.
    """
    session.execute(
        _INSERT,
        {
            "occurred_at": utcnow(),
            "user_id": actor.user_id if actor else None,
            "session_id": actor.session_id if actor else None,
            "op_type": op.value,
            "node_id": node_id,
            "version_id": version_id,
            "package_id": package_id,
            "remote_addr": actor.remote_addr if actor else remote_addr,
            "user_agent": ((actor.user_agent if actor else user_agent) or "")[:512] or None,
            "details": details or {},
        },
    )


_INSERT = sa.insert(Base.metadata.tables[LogEntry.__tablename__])
