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
