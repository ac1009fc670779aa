"""Bounds on what people and clients type: days, byte counts, client times, descriptions.

Python's datetimes end with the year 9999 and the database's integer columns at 2**63 - 1
(BigInteger on both engines), so a number beyond either is refused here as BadRequest,
before anything is computed or stored, instead of surfacing as an OverflowError or a
database error halfway through a request. Every front (WebDAV, the JSON API, the command
line) parses through these.
"""

from __future__ import annotations

import datetime as dt
import math
import unicodedata

from davserver.config import MAX_DAYS as MAX_DAYS  # the settings' bounds too
from davserver.config import MAX_SECONDS as MAX_SECONDS
from davserver.db.types import utcnow
from davserver.errors import BadRequest

# The database's largest integer (BigInteger, SQLite's INTEGER): quotas and sizes, LIMITs.
MAX_INTEGER = 2**63 - 1
MAX_BYTES = MAX_INTEGER


def check_days(days: int, *, at_least: int, what: str = "a number of days") -> int:
    """``days`` when it is a whole number from ``at_least`` to MAX_DAYS; BadRequest if not."""
    if isinstance(days, bool) or not isinstance(days, int) or not at_least <= days <= MAX_DAYS:
        raise BadRequest(f"{what} is a whole number from {at_least} to {MAX_DAYS}")
    return days


def days_from_now(days: int | None) -> dt.datetime | None:
    """The moment ``days`` (checked, 0 or more) from now; None for None or 0 (never)."""
    return utcnow() + dt.timedelta(days=check_days(days, at_least=0)) if days else None


def spelled_number(digits: str, at_most: int) -> int | None:
    """The number ASCII ``digits`` spell, or None past ``at_most``; their length is checked
    before ``int``, which refuses 4,300 digits."""
    digits = digits.lstrip("0") or "0"
    if len(digits) > len(str(at_most)) or int(digits) > at_most:
        return None
    return int(digits)


def check_bytes(size: int, *, what: str = "a size") -> int:
    """``size`` when it fits the database's byte columns (0 to MAX_BYTES); BadRequest if not."""
    if not 0 <= size <= MAX_BYTES:
        raise BadRequest(f"{what} is 0 to {MAX_BYTES} bytes (8 EiB): {size}")
    return size


def from_epoch(seconds: float) -> dt.datetime:
    """The UTC time ``seconds`` after 1970 names; BadRequest when it is not a finite number of
    seconds within the years 1 to 9999."""
    if not math.isfinite(seconds):
        raise BadRequest(f"not a time: {seconds}")
    try:
        return dt.datetime.fromtimestamp(seconds, dt.UTC)
    except (ValueError, OverflowError, OSError):
        raise BadRequest(f"a time outside the years 1 to 9999: {seconds:.0f}") from None


def parse_time(text: str, *, what: str = "a time") -> dt.datetime:
    """An ISO 8601 time (``2026-11-27T10:00``, with an offset or in UTC without one) as an
    aware datetime in UTC; BadRequest for anything else, and for a time whose offset takes it
    outside the years 1 to 9999 in UTC (``0001-01-01T00:00+14:00``), which the database
    layer, storing UTC, could not convert."""
    try:
        value = dt.datetime.fromisoformat(text)
    except ValueError:
        raise BadRequest(f"{what} is an ISO 8601 time such as 2026-11-27T10:00Z") from None
    if value.tzinfo is None:
        return value.replace(tzinfo=dt.UTC)
    try:
        return value.astimezone(dt.UTC)
    except OverflowError:
        raise BadRequest(f"{what} is outside the years 1 to 9999 in UTC: {text}") from None


# Descriptions of packages and groups: printed in listings, an admin's terminal among them.
MAX_DESCRIPTION_LENGTH = 1024


def check_description(text: str) -> str:
    """A package's or group's description as it is stored; BadRequest when it is longer than
    ``MAX_DESCRIPTION_LENGTH`` characters or holds a control character (it is printed in
    listings, an admin's terminal among them: no escape sequences, no line breaks)."""
    if len(text) > MAX_DESCRIPTION_LENGTH:
        raise BadRequest(f"a description has at most {MAX_DESCRIPTION_LENGTH} characters")
    if any(unicodedata.category(ch) == "Cc" for ch in text):
        raise BadRequest("a description may not contain control characters")
    return text
