"""The shared bounds on days, byte counts and client times, as a table."""

from __future__ import annotations

import datetime as dt

import pytest

from davserver.errors import BadRequest
from davserver.services.bounds import (
    MAX_BYTES,
    MAX_DAYS,
    check_bytes,
    check_days,
    days_from_now,
    from_epoch,
    parse_time,
)


@pytest.mark.parametrize(
    ("days", "at_least", "ok"),
    [
        (0, 0, True),
        (0, 1, False),
        (1, 1, True),
        (-1, 0, False),
        (MAX_DAYS, 0, True),
        (MAX_DAYS + 1, 0, False),
        (10**30, 0, False),
        (True, 0, False),
        (1.5, 0, False),
        ("7", 0, False),
    ],
)
def test_check_days(days: object, at_least: int, ok: bool) -> None:
    if ok:
        assert check_days(days, at_least=at_least) == days  # type: ignore[arg-type]
    else:
        with pytest.raises(BadRequest, match=f"from {at_least} to {MAX_DAYS}"):
            check_days(days, at_least=at_least)  # type: ignore[arg-type]


def test_days_from_now_reaches_the_longest_expiry_and_none_for_zero() -> None:
    assert days_from_now(0) is None
    latest = days_from_now(MAX_DAYS)
    assert latest is not None and latest.year < 9999
    with pytest.raises(BadRequest):
        days_from_now(3_000_000)


@pytest.mark.parametrize(
    ("size", "ok"), [(0, True), (MAX_BYTES, True), (MAX_BYTES + 1, False), (-1, False)]
)
def test_check_bytes(size: int, ok: bool) -> None:
    if ok:
        assert check_bytes(size) == size
    else:
        with pytest.raises(BadRequest, match="8 EiB"):
            check_bytes(size)


@pytest.mark.parametrize(
    ("seconds", "expected"),
    [
        (0, dt.datetime(1970, 1, 1, tzinfo=dt.UTC)),
        (253402300799, dt.datetime(9999, 12, 31, 23, 59, 59, tzinfo=dt.UTC)),
        (-62135596800, dt.datetime(1, 1, 1, tzinfo=dt.UTC)),
        (253402300800, None),
        (-62135596801, None),
        (1e20, None),
        (float("inf"), None),
        (float("nan"), None),
    ],
)
def test_from_epoch(seconds: float, expected: dt.datetime | None) -> None:
    if expected is not None:
        assert from_epoch(seconds) == expected
    else:
        with pytest.raises(BadRequest):
            from_epoch(seconds)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2026-11-27T10:00", dt.datetime(2026, 11, 27, 10, tzinfo=dt.UTC)),
        ("2026-11-27T10:00+01:00", dt.datetime(2026, 11, 27, 9, tzinfo=dt.UTC)),
        ("0001-01-01T00:00:00Z", dt.datetime(1, 1, 1, tzinfo=dt.UTC)),
        ("9999-12-31T23:59:59Z", dt.datetime(9999, 12, 31, 23, 59, 59, tzinfo=dt.UTC)),
        # Written in the years 1 and 9999, but before and after them in UTC: the database
        # layer's conversion to UTC raised OverflowError (a 500 from /api/v1/audit?since=).
        ("0001-01-01T00:00:00+14:00", None),
        ("9999-12-31T23:59:59-14:00", None),
        ("yesterday", None),
    ],
)
def test_parse_time(text: str, expected: dt.datetime | None) -> None:
    if expected is not None:
        assert parse_time(text) == expected
    else:
        with pytest.raises(BadRequest):
            parse_time(text)
