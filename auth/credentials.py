"""A short-lived cache of verified Basic credentials.

WebDAV clients send the password with every request; hashing it each time would cost an
argon2id run (about 20 ms and 19 MiB) per request. A successful verification is remembered under an
HMAC of (username, password) with a per-process random key, so the password itself is never
kept, together with the password hash it was checked against: when the stored hash changes
(a new password) the entry no longer matches. An entry lives while it is used at least once
per TTL.
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
        """True when this pair was verified against ``password_hash`` and used within the TTL.

        Each match extends the entry: a client that keeps coming back (a mounted drive) is not
        hashed again, so it keeps working while failed guesses have locked the account.
        """
        if self._ttl <= 0:
            return False
        key = self._digest(username, password)
        entry = self._entries.get(key)
        now = time.monotonic()
        if (
            entry is None
            or entry.expires <= now
            or not hmac.compare_digest(entry.password_hash, password_hash)
        ):
            return False
        self._entries[key] = CachedCredential(entry.password_hash, now + self._ttl)
        return True

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
