"""The rules for passwords that every way of setting one goes through."""

from __future__ import annotations

import pytest

from davserver.errors import BadRequest
from davserver.services.account_rules import check_password


@pytest.mark.parametrize(
    ("password", "message"),
    [
        ("short", "at least 8"),
        ("\udcff\udcfe\udcfdabcdefgh", "not UTF-8"),  # bytes read from stdin that were not text
        ("ab\x00cdefghijk", "NUL"),  # Basic carries it, but no token request could
        ("é" * 513, "at most 1024 bytes"),
    ],
)
def test_a_password_that_could_not_be_used_everywhere_is_refused(
    password: str, message: str
) -> None:
    with pytest.raises(BadRequest) as refused:
        check_password(password)
    assert message in str(refused.value)


def test_a_long_unicode_password_within_the_limit_is_kept() -> None:
    password = "pässwörd " * 50
    assert check_password(password) == password
