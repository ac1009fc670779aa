"""davserver.server: the line a started server prints."""

from __future__ import annotations

import pytest

from davserver.server import announce


@pytest.mark.parametrize(
    ("host", "url"),
    [
        ("127.0.0.1", "http://127.0.0.1:8080/"),
        ("localhost", "http://localhost:8080/"),
        ("::1", "http://[::1]:8080/"),
        ("::", "http://[::]:8080/"),
    ],
)
def test_the_announced_address_is_a_url_to_open(
    host: str, url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """An IPv6 address was printed bare (http://::1:8080/): no browser or client opens it."""
    announce(False, host, 8080)
    assert capsys.readouterr().out == f"davserver listening on {url}\n"
