"""Throttling of failed logins, per account and per client address, shared through the database.

Failures are counted in a window; reaching the limit bans the key (``user:<name>`` or
``addr:<ip>``, an IPv6 client's /64) until ``banned_until``. The table is consulted only before
a password would be hashed, so clients whose credentials are already verified (the credential
cache, API keys) pay nothing, and a banned account keeps its already signed-in clients while
guesses are refused.
Unknown usernames are counted like real ones, so a ban does not reveal whether an account exists.

Within one process, the attempts of one account or one address are checked, verified and
counted one after another (``one_at_a_time``): checked side by side, guesses sent at once
passed the check before the first of them had failed (fourteen of twenty, at a limit of three).
Across processes one attempt per process may still be under way when a ban starts.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import ipaddress
import math
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.orm import Session

from davserver.db import Base, Database
from davserver.db.dialect import for_bind, insert_or_ignore, is_postgres
from davserver.db.types import utcnow
from davserver.errors import NotFound, TooManyRequests
from davserver.models import Op
from davserver.services.account_rules import find_user
from davserver.services.audit import record_audit

# Any constant: on PostgreSQL, recording a failed login takes this transaction-level advisory lock.
_FAILURES_LOCK_KEY = 0x7468726F


@dataclass(frozen=True)
class ThrottlePolicy:
    max_failures_per_user: int = 5
    max_failures_per_address: int = 20
    window: dt.timedelta = dt.timedelta(minutes=15)
    ban: dt.timedelta = dt.timedelta(minutes=15)


def _counted_as(username: str) -> str:
    """The name a login's failures count against: any spelling that folds to it (a Kelvin
    sign for a k) is the same account."""
    return username.casefold()


def _keys(username: str, remote_addr: str | None) -> list[str]:
    keys = [f"user:{_counted_as(username)}"[:200]]
    if remote_addr:
        keys.append(f"addr:{_client_of(remote_addr)}"[:200])
    return keys


def _client_of(remote_addr: str) -> str:
    """What counts as one client's address: an IPv6 address's /64 (a host picks any address
    in its prefix, so per address it could send each guess from a new one), an IPv4 address
    as it is (also when written as IPv6, ``::ffff:192.0.2.1``)."""
    try:
        address = ipaddress.ip_address(remote_addr)
    except ValueError:
        return remote_addr
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network((address, 64), strict=False))
    return str(address)


class LoginThrottle:
    def __init__(self, db: Database, policy: ThrottlePolicy) -> None:
        self.db = db
        self.policy = policy
        self._turns = _KeyedLocks()

    def one_at_a_time(
        self, username: str, remote_addr: str | None
    ) -> contextlib.AbstractContextManager[None]:
        """Hold this process's turn for the account and the address: an attempt checks the
        ban, verifies the password and records its outcome inside it, so the next one sees
        that outcome."""
        return self._turns.held(_keys(username, remote_addr))

    def check(self, username: str, remote_addr: str | None) -> None:
        """Raise TooManyRequests while the account or the address is banned."""
        now = utcnow()
        with self.db.connect() as conn:
            until = conn.execute(
                _BANNED_UNTIL, {"keys": _keys(username, remote_addr), "now": now}
            ).scalar()
        if until is not None:
            raise _refusal(until, now)

    def record_failure(
        self, username: str, remote_addr: str | None, user_agent: str | None, reason: str
    ) -> None:
        """Count one failed login, log it, and ban a key that reached its limit.

        Raises TooManyRequests when this failure started a ban.
        """
        now = utcnow()
        limits = {
            "user": self.policy.max_failures_per_user,
            "addr": self.policy.max_failures_per_address,
        }
        banned_until = None
        with self.db.write() as session:
            self._forget_the_past(session, now)
            # The account the failure counts against, if any: the row, and a ban it starts,
            # are in that account's history (``audit --user``).
            try:
                account_id: uuid.UUID | None = find_user(session, _counted_as(username)).id
            except NotFound:
                account_id = None
            record_audit(
                session,
                None,
                Op.LOGIN_FAILURE,
                details={"username": username, "reason": reason},
                remote_addr=remote_addr,
                user_agent=user_agent,
                account_id=account_id,
            )
            for key in _keys(username, remote_addr):
                failures = self._count(session, key, now)
                if failures >= limits[key.partition(":")[0]]:
                    until = now + self.policy.ban
                    session.execute(_BAN, {"k": key, "until": until, "now": now})
                    record_audit(
                        session,
                        None,
                        Op.LOGIN_BAN,
                        details={"key": key, "failures": failures, "until": until.isoformat()},
                        remote_addr=remote_addr,
                        user_agent=user_agent,
                        account_id=account_id if key.startswith("user:") else None,
                    )
                    banned_until = max(banned_until or until, until)
        if banned_until is not None:
            raise _refusal(banned_until, now)

    def clear(self, session: Session, username: str) -> None:
        """A verified password clears the account's failure count (not the address's), in the
        caller's transaction; a ban that is over goes with it, else the failures counted
        since it ended would stay, and one typo later would ban the account again."""
        session.execute(_CLEAR, {"key": _keys(username, None)[0], "now": utcnow()})

    def _forget_the_past(self, session: Session, now: dt.datetime) -> None:
        """Delete the keys whose window and ban are both over: they count nothing any more,
        and guesses at ever new names would otherwise leave a row each for ever.

        A key last changed longer ago than both the window and the ban is over: a window
        starts, and a ban is set, when the row changes. Failures are recorded one at a time
        (SQLite's writers queue; PostgreSQL takes an advisory lock), so no other ``_count``
        finds its row gone between its insert and its update, and two of these deletes never
        wait for each other.
        """
        if is_postgres(session):
            session.execute(sa.select(sa.func.pg_advisory_xact_lock(_FAILURES_LOCK_KEY)))
        over = now - max(self.policy.window, self.policy.ban)
        session.execute(_FORGET, {"over": over})

    def _count(self, session: Session, key: str, now: dt.datetime) -> int:
        """Add one failure to ``key``'s window (a new window when the old one ran out)."""
        session.execute(
            for_bind(_INSERT, session),
            {"key": key, "window_started_at": now, "updated_at": now, "failures": 0},
        )
        row = session.execute(_ROW_FOR_UPDATE, {"key": key}).one()
        started = row.window_started_at
        failures = 1 if now - started > self.policy.window else row.failures + 1
        session.execute(
            _SET_COUNT,
            {
                "k": key,
                "failures": failures,
                "started": started if failures > 1 else now,
                "now": now,
            },
        )
        return failures


class _KeyedLocks:
    """One lock per key, made when first wanted and dropped when no thread holds or awaits it."""

    def __init__(self) -> None:
        self._guard = threading.Lock()
        self._locks: dict[str, tuple[threading.Lock, int]] = {}

    @contextlib.contextmanager
    def held(self, keys: list[str]) -> Iterator[None]:
        """Hold the locks of ``keys``, taken in their order (always the account's first, then
        the address's, so two holders never wait for each other)."""
        taken: list[tuple[str, threading.Lock]] = []
        try:
            for key in keys:
                lock = self._enter(key)
                try:
                    lock.acquire()
                except BaseException:
                    self._leave(key)
                    raise
                taken.append((key, lock))
            yield
        finally:
            for key, lock in reversed(taken):
                lock.release()
                self._leave(key)

    def _enter(self, key: str) -> threading.Lock:
        with self._guard:
            lock, users = self._locks.get(key) or (threading.Lock(), 0)
            self._locks[key] = (lock, users + 1)
            return lock

    def _leave(self, key: str) -> None:
        with self._guard:
            lock, users = self._locks[key]
            if users > 1:
                self._locks[key] = (lock, users - 1)
            else:
                del self._locks[key]


def _refusal(until: dt.datetime, now: dt.datetime) -> TooManyRequests:
    seconds = max(1, math.ceil((until - now).total_seconds()))
    return TooManyRequests("too many failed logins; try again later", retry_after=seconds)


_t = Base.metadata.tables["login_throttle"]
_BANNED_UNTIL = sa.select(sa.func.max(_t.c.banned_until)).where(
    _t.c.key.in_(sa.bindparam("keys", expanding=True)),
    _t.c.banned_until > sa.bindparam("now"),
)
_INSERT = insert_or_ignore(_t, "key")
# FOR UPDATE matters on PostgreSQL; SQLite renders none (BEGIN IMMEDIATE serializes writers).
_ROW_FOR_UPDATE = (
    sa.select(_t.c.failures, _t.c.window_started_at)
    .where(_t.c.key == sa.bindparam("key"))
    .with_for_update()
)
_SET_COUNT = (
    _t.update()
    .where(_t.c.key == sa.bindparam("k"))
    .values(
        failures=sa.bindparam("failures"),
        window_started_at=sa.bindparam("started"),
        updated_at=sa.bindparam("now"),
    )
)
_BAN = (
    _t.update()
    .where(_t.c.key == sa.bindparam("k"))
    .values(
        failures=0,
        window_started_at=sa.bindparam("now"),
        banned_until=sa.bindparam("until"),
        updated_at=sa.bindparam("now"),
    )
)
_FORGET = _t.delete().where(_t.c.updated_at < sa.bindparam("over"))  # updated_at is indexed
_CLEAR = _t.delete().where(
    _t.c.key == sa.bindparam("key"),
    sa.or_(_t.c.banned_until.is_(None), _t.c.banned_until <= sa.bindparam("now")),
)
_LIFT = _t.delete().where(_t.c.key == sa.bindparam("key")).returning(_t.c.banned_until)


def lift_account_ban(session: Session, username: str) -> dt.datetime | None:
    """Forget the account's failures and its ban, in the caller's transaction: an admin who
    sets a new password or enables the account means its owner to sign in now. Returns when
    the ban would have ended, if one was in force."""
    now = utcnow()
    until = session.execute(_LIFT, {"key": _keys(username, None)[0]}).scalar()
    return until if until is not None and until > now else None
