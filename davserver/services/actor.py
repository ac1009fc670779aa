"""Who is acting: the authenticated user and where the request came from."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field

from davserver.errors import Forbidden

# Where a request's Actor travels in the WSGI environ, from the authenticator to the providers.
ENVIRON_KEY = "davserver.actor"


@dataclass(frozen=True)
class Actor:
    user_id: uuid.UUID
    username: str
    roles: frozenset[str] = field(default_factory=frozenset)
    session_id: uuid.UUID | None = None
    remote_addr: str | None = None
    user_agent: str | None = None
    # How this request signed in: password, apikey or token; a read-only API key never writes.
    auth_method: str = "password"
    api_key_id: uuid.UUID | None = None
    read_only: bool = False
    # The user's own quota as read when they signed in for this request (None: unlimited).
    quota_bytes: int | None = None
    # Which password signed in (a digest of the hash it was verified against): a request
    # after a password change is in a session of its own, not in one the change ended.
    credential: str = ""

    @property
    def is_admin(self) -> bool:
        return "admin" in self.roles

    @property
    def may_write(self) -> bool:
        """False for read-only API keys and for viewers, whatever they were granted."""
        return not self.read_only and ("viewer" not in self.roles or self.is_admin)

    def require_write(self) -> None:
        """Raise Forbidden unless this actor may change anything at all."""
        if not self.may_write:
            raise Forbidden(
                "this API key is read-only" if self.read_only else "viewers cannot change files"
            )
