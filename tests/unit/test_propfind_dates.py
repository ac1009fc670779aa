"""The listing's own date formatting writes exactly what WsgiDAV's would."""

from __future__ import annotations

import random

from wsgidav import util

from providers.propfind import http_date, rfc3339_time


def test_dates_match_wsgidavs_formatting() -> None:
    rng = random.Random(4918)
    moments = [0.0, 951782400.0, 4102444799.0] + [rng.uniform(0, 4.2e9) for _ in range(20000)]
    for epoch in moments:
        assert http_date(epoch) == util.get_rfc1123_time(epoch)
        assert rfc3339_time(epoch) == util.get_rfc3339_time(epoch)


def test_dates_match_at_the_ends_of_the_range_clients_may_set() -> None:
    """PROPPATCH and X-OC-Mtime accept the years 1 to 9999: a year below 1000 is written
    with four digits, as an HTTP date must be."""
    for epoch in (-62135596800.0, -30610224000.0, 253402300799.0):
        assert http_date(epoch) == util.get_rfc1123_time(epoch)
    assert http_date(-62135596800.0) == "Mon, 01 Jan 0001 00:00:00 GMT"
    # WsgiDAV's strftime writes "1-01-01..." there; RFC 3339 wants four digits, as here.
    assert rfc3339_time(-62135596800.0) == "0001-01-01T00:00:00Z"
