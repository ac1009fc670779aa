"""Who is acting: the authenticated user and where the request came from."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Actor:
    user_id: uuid.UUID
    username: str
    roles: frozenset[str] = field(default_factory=frozenset)
    session_id: uuid.UUID | None = None
    remote_addr: str | None = None
    user_agent: str | None = None

    @property
    def is_admin(self) -> bool:
        return "admin" in self.roles
