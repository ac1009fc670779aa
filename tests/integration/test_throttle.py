"""Login throttling on both engines: per account, per address, windows and bans, in the logbook."""

from __future__ import annotations

import datetime as dt

import pytest
import sqlalchemy as sa

from davserver.db import Database
from davserver.errors import TooManyRequests
from davserver.models import LogEntry, Op, User
from davserver.services.audit import read_logbook
from davserver.services.throttle import LoginThrottle, ThrottlePolicy


def throttle(database: Database, **policy: object) -> LoginThrottle:
    defaults: dict[str, object] = {
        "max_failures_per_user": 3,
        "max_failures_per_address": 5,
        "window": dt.timedelta(minutes=5),
        "ban": dt.timedelta(minutes=10),
    }
    return LoginThrottle(database, ThrottlePolicy(**{**defaults, **policy}))  # type: ignore[arg-type]


def fail(t: LoginThrottle, user: str, addr: str) -> bool:
    """One failure; True when it started a ban."""
    try:
        t.record_failure(user, addr, "test-agent", "bad credentials")
    except TooManyRequests:
        return True
    return False


def test_account_is_banned_after_its_limit_from_any_address(database: Database) -> None:
    t = throttle(database)
    assert [fail(t, "alice", f"10.0.0.{i}") for i in range(3)] == [False, False, True]
    with pytest.raises(TooManyRequests) as refused:
        t.check("alice", "10.0.0.99")
    assert 590 <= refused.value.retry_after <= 600
    t.check("bob", "10.0.0.99")  # others are not affected
    with pytest.raises(TooManyRequests):
        t.check("Alice", None)  # usernames are counted case-insensitively


def test_address_is_banned_after_its_limit_whatever_the_accounts(database: Database) -> None:
    t = throttle(database)
    started = [fail(t, f"user{i}", "192.0.2.7") for i in range(5)]
    assert started == [False, False, False, False, True]
    with pytest.raises(TooManyRequests):
        t.check("someone-else", "192.0.2.7")
    t.check("someone-else", "192.0.2.8")


def test_an_ipv6_client_is_counted_by_its_64_bit_prefix(database: Database) -> None:
    """One IPv6 client has a whole /64 to pick addresses from; counted per address, it could
    send each guess from a new one and never meet the address limit."""
    t = throttle(database)
    started = [fail(t, f"user{i}", f"2001:db8:1:2::{i + 1:x}") for i in range(5)]
    assert started == [False, False, False, False, True]
    with pytest.raises(TooManyRequests):
        t.check("someone-else", "2001:db8:1:2:ffff:ffff:ffff:ffff")
    t.check("someone-else", "2001:db8:1:3::1")  # the next /64 is another client
    t.check("someone-else", "::ffff:192.0.2.1")  # an IPv4 address written as IPv6: itself


def test_failures_outside_the_window_start_a_new_count(database: Database) -> None:
    t = throttle(database, window=dt.timedelta(seconds=-1))  # every failure opens a new window
    assert [fail(t, "carol", "10.1.1.1") for _ in range(6)] == [False] * 6
    t.check("carol", "10.1.1.1")


def test_a_ban_ends_on_schedule(database: Database) -> None:
    t = throttle(database, ban=dt.timedelta(seconds=-1))  # already over when set
    assert [fail(t, "dave", "10.2.2.2") for _ in range(3)] == [False, False, True]
    t.check("dave", "10.2.2.2")


def test_success_clears_the_account_count(database: Database) -> None:
    t = throttle(database)
    fail(t, "erin", "10.3.3.3")
    fail(t, "erin", "10.3.3.3")
    with database.write() as session:
        t.clear(session, "erin")
    assert [fail(t, "erin", "10.3.3.3") for _ in range(3)] == [False, False, True]


def test_success_after_a_ban_ended_clears_the_count_too(database: Database) -> None:
    """A ban leaves its row (with its end in the past) once over: a password that works must
    clear that row too, or one typo after the failures since would ban the account again."""
    t = throttle(database, ban=dt.timedelta(seconds=-1))  # over as soon as it starts
    assert [fail(t, "gail", "10.5.5.5") for _ in range(3)] == [False, False, True]
    fail(t, "gail", "10.5.5.5")
    fail(t, "gail", "10.5.5.5")
    with database.write() as session:
        t.clear(session, "gail")
    assert [fail(t, "gail", "10.5.5.5") for _ in range(3)] == [False, False, True]


def test_a_ban_in_force_is_not_cleared_by_a_late_success(database: Database) -> None:
    """A success verified just before another process banned the account lifts nothing."""
    t = throttle(database)
    assert [fail(t, "hal", "10.6.6.6") for _ in range(3)] == [False, False, True]
    with database.write() as session:
        t.clear(session, "hal")
    with pytest.raises(TooManyRequests):
        t.check("hal", None)


def test_each_failure_and_ban_is_in_the_logbook(database: Database) -> None:
    t = throttle(database)
    for _ in range(3):
        fail(t, "frank", "10.4.4.4")
    with database.read() as session:
        rows = session.execute(
            sa.select(LogEntry.op_type, LogEntry.remote_addr, LogEntry.details).order_by(
                LogEntry.id
            )
        ).all()
    assert [r.op_type for r in rows] == [Op.LOGIN_FAILURE.value] * 3 + [Op.LOGIN_BAN.value]
    assert all(str(r.remote_addr) == "10.4.4.4" for r in rows)
    assert rows[0].details == {"username": "frank", "reason": "bad credentials"}
    assert rows[-1].details["key"] == "user:frank"


def test_failures_and_bans_are_in_the_history_of_the_account_they_count_against(
    database: Database,
) -> None:
    """A name typed in any case, or with a letter that folds to the account's (the Kelvin sign
    to k), counts against the account and bans it: its history (``audit --user``) shows the
    failures and the ban. A name no account has is in nobody's."""
    with database.write() as session:
        karl = User(username="karl", password_hash="x")
        session.add(karl)
        session.flush()
        karl_id = karl.id
    t = throttle(database)
    assert [fail(t, typed, "10.0.0.1") for typed in ("KARL", "karl", "\u212aarl")] == [
        False,
        False,
        True,
    ]
    assert not fail(t, "nobody-has-it", "10.0.0.2")
    rows = read_logbook(database, user_id=karl_id)
    assert [row.op for row in rows] == ["auth:login:ban"] + ["auth:login:failure"] * 3
    assert rows[0].details["key"] == "user:karl"
    with database.connect() as conn:
        log = LogEntry.__table__
        unknown = conn.scalar(
            sa.select(log.c.account_id).where(
                log.c.details["username"].as_string() == "nobody-has-it"
            )
        )
    assert unknown is None
