"""Password hashes: new ones argon2id, imported bcrypt ones verified and replaced."""

from __future__ import annotations

import pytest
from passlib.hash import argon2, bcrypt

from auth import passwords
from auth.passwords import PasswordHasher


@pytest.fixture(scope="module")
def hasher() -> PasswordHasher:
    return PasswordHasher()


@pytest.mark.parametrize("prefix", ["$2y$", "$2b$", "$2a$"])
def test_a_bcrypt_hash_of_a_long_password_verifies_by_its_first_72_bytes(
    hasher: PasswordHasher, prefix: str
) -> None:
    """PHP's password_hash, like every bcrypt before, read the first 72 bytes of a longer
    password; the bcrypt library now refuses more (ValueError), which read as a wrong password:
    such an imported user could never sign in. The replacement hash is of the whole password."""
    password = "correct horse battery staple, and then a good deal more than that: " + "ä" * 12
    assert len(password.encode()) > 72
    stored = bcrypt.using(rounds=4).hash(password.encode()[:72]).replace("$2b$", prefix, 1)
    ok, replacement = hasher.verify(password, stored)
    assert ok and replacement is not None and argon2.identify(replacement)
    assert hasher.verify(password, replacement) == (True, None)
    assert hasher.verify(password[:60], replacement)[0] is False
    assert hasher.verify("x" + password[1:], stored) == (False, None)


def test_a_short_password_against_bcrypt_and_argon2(hasher: PasswordHasher) -> None:
    stored = bcrypt.using(rounds=4).hash("short one")
    ok, replacement = hasher.verify("short one", stored)
    assert ok and replacement is not None
    assert hasher.verify("short one", replacement) == (True, None)
    assert hasher.verify("short two", stored) == (False, None)
    assert hasher.verify("a\udc80b", stored) == (False, None)  # a lone surrogate


def test_a_password_verifies_in_either_unicode_form(hasher: PasswordHasher) -> None:
    """Typed on a Mac, "Café" may arrive decomposed (e + U+0301), on Windows composed (é):
    the same password to its owner. Passwords are hashed in NFC and compared in NFC."""
    composed, decomposed = "Caf\u00e9 au lait", "Cafe\u0301 au lait"
    stored = hasher.hash(decomposed)
    assert hasher.verify(composed, stored) == (True, None)
    assert hasher.verify(decomposed, stored) == (True, None)
    assert hasher.verify("Cafe au lait", stored) == (False, None)


@pytest.mark.parametrize(
    ("set_as", "typed"),
    [("Cafe\u0301 au lait", "Caf\u00e9 au lait"), ("Caf\u00e9 au lait", "Cafe\u0301 au lait")],
)
def test_a_hash_made_before_normalizing_verifies_in_either_form_and_is_replaced(
    hasher: PasswordHasher, set_as: str, typed: str
) -> None:
    """A hash stored before passwords were normalized is of the form its owner typed then:
    either form verifies against it, and the replacement is the NFC one."""
    stored = argon2.using(memory_cost=1024, rounds=1).hash(set_as)
    ok, replacement = hasher.verify(typed, stored)
    assert ok and replacement is not None
    assert hasher.verify(typed, replacement) == (True, None)
    assert hasher.verify(set_as, replacement) == (True, None)
    assert hasher.verify("Cafe au lait", stored) == (False, None)


def test_an_unknown_user_costs_what_a_wrong_non_ascii_password_costs(
    hasher: PasswordHasher, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A wrong non-ASCII password is tried in each of its forms against a user's hash; an
    unknown user's was tried once against the dummy hash, so the time told whether the
    account existed. Both run as many hashes."""
    real = passwords._context
    runs: list[str] = []

    class Counting:
        def verify(self, secret: str, stored: str) -> bool:
            runs.append("verify")
            return bool(real.verify(secret, stored))

        def verify_and_update(self, secret: str, stored: str) -> tuple[bool, str | None]:
            runs.append("verify")
            return real.verify_and_update(secret, stored)  # type: ignore[no-any-return]

    stored = hasher.hash("the right password")
    monkeypatch.setattr(passwords, "_context", Counting())
    wrong = "wrong pa\u0301ssword"  # not composed: tried composed and as typed
    assert hasher.verify(wrong, stored) == (False, None)
    for_a_user = len(runs)
    runs.clear()
    assert hasher.verify(wrong, None) == (False, None)
    assert len(runs) == for_a_user == 2
