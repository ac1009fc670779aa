"""A short-lived cache of verified Basic credentials.

WebDAV clients send the password with every request; hashing it each time would cost an
argon2 run (~100 ms, 64 MiB) per request. A successful verification is remembered under an
HMAC of (username, password) with a per-process random key, so the password itself is never
kept, together with the password hash it was checked against: when the stored hash changes
(a new password) the entry no longer matches.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
import time
from dataclasses import dataclass


@dataclass(frozen=True)
class CachedCredential:
    password_hash: str
    expires: float


class CredentialCache:
    def __init__(self, *, ttl_seconds: float = 300.0, max_entries: int = 10_000) -> None:
        self._key = secrets.token_bytes(32)
        self._ttl = ttl_seconds
        self._max = max_entries
        self._entries: dict[bytes, CachedCredential] = {}
        self._lock = threading.Lock()

    def _digest(self, username: str, password: str) -> bytes:
        message = (
            username.encode("utf-8", "surrogatepass")
            + b"\0"
            + password.encode("utf-8", "surrogatepass")
        )
        return hmac.new(self._key, message, hashlib.sha256).digest()

    def matches(self, username: str, password: str, password_hash: str) -> bool:
        """True when this pair was verified against ``password_hash`` within the TTL."""
        if self._ttl <= 0:
            return False
        entry = self._entries.get(self._digest(username, password))
        return (
            entry is not None
            and entry.expires > time.monotonic()
            and hmac.compare_digest(entry.password_hash, password_hash)
        )

    def remember(self, username: str, password: str, password_hash: str) -> None:
        if self._ttl <= 0:
            return
        with self._lock:
            if len(self._entries) >= self._max:
                now = time.monotonic()
                self._entries = {k: v for k, v in self._entries.items() if v.expires > now}
                if len(self._entries) >= self._max:
                    self._entries.clear()
            self._entries[self._digest(username, password)] = CachedCredential(
                password_hash, time.monotonic() + self._ttl
            )
