"""WsgiDAV's lock manager, letting the holder of a member's lock change the folder above it.

RFC 4918 (9.6.1, 9.9.2, 7.4): a DELETE or MOVE of a folder whose member is locked succeeds when
the request submits that member's lock token (``If: <member-url> (<token>)``). WsgiDAV 4.4
refuses every locked member with 423 whatever was submitted, so a client holding the lock on a
file could not delete or move the folder it is in; only checks of the folder itself and the
folders above it used the submitted tokens. Here members are checked as those are: a member's
lock conflicts unless its owner submitted its token.

Every check of a request's write permission is remembered by the lock storage, and made again
in each of the request's write transactions when a lock was taken meanwhile (``recheck``, the
request's ``davserver.services.write_fence``): WsgiDAV keeps a LOCK from landing between its
check and the write only in its own process.

And a LOCK's Timeout header is read as RFC 4918 (10.7) writes it (``read_timeout_header``).
"""

from __future__ import annotations

import re
from typing import Any

from sqlalchemy.orm import Session
from wsgidav import util
from wsgidav.dav_error import (
    HTTP_LOCKED,
    DAVError,
    DAVErrorCondition,
    PRECONDITION_CODE_LockConflict,
)
from wsgidav.lock_man.lock_manager import LockManager as WsgiDavLockManager

from providers.lock_storage import SqlLockStorage

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
    def recheck(self, session: Session) -> None:
        """The request's checks of its write permission, made again in the write transaction
        of ``session`` when a lock was taken since they were made (``SqlLockStorage.
        checks_to_repeat``): DAVError(423) for the first that now fails."""
        if not isinstance(self.storage, SqlLockStorage):
            return
        for check in self.storage.checks_to_repeat(session):
            conflicts = self._conflicts(check.url, check.depth, list(check.tokens), check.principal)
            if conflicts.hrefs:
                raise DAVError(HTTP_LOCKED, err_condition=conflicts)

    def _get_write_conflicts(
        self, url: str, depth: str, token_list: list[str], principal: str | None
    ) -> Any:
        # Every check WsgiDAV makes of a write (check_write_permission, write_transaction).
        if isinstance(self.storage, SqlLockStorage):
            self.storage.remember_check(url, depth, token_list, principal)
        return self._conflicts(url, depth, token_list, principal)

    def _conflicts(self, url: str, depth: str, token_list: list[str], principal: str | None) -> Any:
        """The locks a write to ``url`` (and, with Depth infinity, below it) conflicts with.

        A lock holds up a write unless its owner submitted its token; and a shared one not
        when the request submits another lock covering the same resource (RFC 4918 6.2: each
        holder of a shared lock may write). WsgiDAV asked for every lock's token, so of two
        holders of shared locks on a file neither could write alone. A member's locks are
        judged with the locks that cover the member: those of ``url`` and above it with Depth
        infinity, and those on the folders between."""
        covering = []
        u = url
        while u:
            covering += [
                lock
                for lock in self.get_url_lock_list(u)
                if u == url or lock["depth"] == "infinity"
            ]
            u = util.get_uri_parent(u)
        conflicts = DAVErrorCondition(PRECONDITION_CODE_LockConflict)
        for lock in _refused(covering, token_list, principal):
            conflicts.add_href(lock["root"])
        if depth != "infinity":
            return conflicts
        below = self.storage.get_lock_list(
            url, include_root=False, include_children=True, token_only=False
        )
        by_root: dict[str, list[dict[str, Any]]] = {}
        for lock in below:
            by_root.setdefault(lock["root"].rstrip("/"), []).append(lock)
        above = [lock for lock in covering if lock["depth"] == "infinity"]
        top = url.rstrip("/")
        for root in sorted(by_root):
            on_it = list(by_root[root])
            folder = root.rsplit("/", 1)[0]
            while len(folder) > len(top):  # the locked folders between url and the member
                on_it += [lock for lock in by_root.get(folder, ()) if lock["depth"] == "infinity"]
                folder = folder.rsplit("/", 1)[0]
            refused = _refused(above + on_it, token_list, principal)
            if any(lock in refused for lock in by_root[root]):
                conflicts.add_href(by_root[root][0]["root"])
        return conflicts


def _refused(
    locks: list[dict[str, Any]], tokens: list[str], principal: str | None
) -> list[dict[str, Any]]:
    """Those of ``locks`` (all covering one resource) that hold up a write to it."""
    submitted = [lock["principal"] == principal and lock["token"] in tokens for lock in locks]
    holds_one = any(submitted)
    return [
        lock
        for lock, own in zip(locks, submitted, strict=True)
        if not own and not (holds_one and lock["scope"] == "shared")
    ]
