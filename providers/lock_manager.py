"""WsgiDAV's lock manager, letting the holder of a member's lock change the folder above it.

RFC 4918 (9.6.1, 9.9.2, 7.4): a DELETE or MOVE of a folder whose member is locked succeeds when
the request submits that member's lock token (``If: <member-url> (<token>)``). WsgiDAV 4.4
refuses every locked member with 423 whatever was submitted, so a client holding the lock on a
file could not delete or move the folder it is in; only checks of the folder itself and the
folders above it used the submitted tokens. Here members are checked as those are: a member's
lock conflicts unless its owner submitted its token.

And a LOCK's Timeout header is read as RFC 4918 (10.7) writes it (``read_timeout_header``).
"""

from __future__ import annotations

import re
from typing import Any

from wsgidav import util
from wsgidav.lock_man.lock_manager import LockManager as WsgiDavLockManager

_SECONDS = re.compile(r"second-(\d+)", re.IGNORECASE)


def read_timeout_header(value: str) -> int | None:
    """The timeout a LOCK's Timeout header asks for: seconds, -1 for Infinite (and for more
    seconds than WsgiDAV takes as finite), None when none of its values can be read (the
    server's default then applies). WsgiDAV's reader took the first digits of a value, so
    ``Second-1e3`` asked for one second. It is replaced here by this one."""
    for part in value.split(","):
        part = part.strip()
        if part.lower() == "infinite":
            return -1
        found = _SECONDS.fullmatch(part)
        if found is not None and int(found[1]) > 0:
            seconds = int(found[1])
            return -1 if seconds > util.MAX_FINITE_TIMEOUT_LIMIT else seconds
    return None


util.read_timeout_value_header = read_timeout_header


class LockManager(WsgiDavLockManager):
    def _get_write_conflicts(
        self, url: str, depth: str, token_list: list[str], principal: str | None
    ) -> Any:
        conflicts = super()._get_write_conflicts(url, "0", token_list, principal)
        if depth == "infinity":
            below = self.storage.get_lock_list(
                url, include_root=False, include_children=True, token_only=False
            )
            for lock in below:
                if lock["principal"] != principal or lock["token"] not in token_list:
                    conflicts.add_href(lock["root"])
        return conflicts
