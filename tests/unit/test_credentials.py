"""The credential cache: a verified pair is recognised while in use, never across a new hash."""

from __future__ import annotations

import pytest

from auth import credentials
from auth.credentials import CredentialCache


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    fake = Clock()
    monkeypatch.setattr(credentials.time, "monotonic", fake)
    return fake


def test_a_remembered_pair_matches_only_its_hash(clock: Clock) -> None:
    cache = CredentialCache(ttl_seconds=300)
    cache.remember("alice", "secret", "$argon2id$old")
    assert cache.matches("alice", "secret", "$argon2id$old")
    assert not cache.matches("alice", "secret", "$argon2id$new")  # password changed
    assert not cache.matches("alice", "other", "$argon2id$old")
    assert not cache.matches("bob", "secret", "$argon2id$old")


def test_use_extends_an_entry_and_idleness_ends_it(clock: Clock) -> None:
    cache = CredentialCache(ttl_seconds=300)
    cache.remember("alice", "secret", "h")
    for _ in range(5):  # a mounted drive asking every 4 minutes, for 20 minutes
        clock.now += 240
        assert cache.matches("alice", "secret", "h")
    clock.now += 301
    assert not cache.matches("alice", "secret", "h")


def test_a_zero_ttl_caches_nothing(clock: Clock) -> None:
    cache = CredentialCache(ttl_seconds=0)
    cache.remember("alice", "secret", "h")
    assert not cache.matches("alice", "secret", "h")
