"""Which client a request came from behind a trusted proxy (``app._take_forwarded_address``)."""

from __future__ import annotations

import pytest

from davserver.app import _take_forwarded_address
from davserver.config import trusted_networks


@pytest.mark.parametrize("proxy", ["127.0.0.1", "::ffff:127.0.0.1"])
def test_a_proxy_is_trusted_however_its_ipv4_address_is_written(proxy: str) -> None:
    """Listening on ``::``, cheroot gives an IPv4 client's address as ``::ffff:127.0.0.1``:
    the proxy at 127.0.0.1 was trusted by no one, every client had its address, and one
    password guesser had them all refused."""
    environ = {"REMOTE_ADDR": proxy, "HTTP_X_FORWARDED_FOR": "203.0.113.7"}
    _take_forwarded_address(environ, trusted_networks("127.0.0.1"))
    assert environ["REMOTE_ADDR"] == "203.0.113.7"


def test_an_untrusted_sender_keeps_its_own_address() -> None:
    environ = {"REMOTE_ADDR": "::ffff:192.0.2.9", "HTTP_X_FORWARDED_FOR": "203.0.113.7"}
    _take_forwarded_address(environ, trusted_networks("127.0.0.1"))
    assert environ["REMOTE_ADDR"] == "::ffff:192.0.2.9"
