"""The rules of a file's history as tables: coalescing, retention, entry names, trash names."""

from __future__ import annotations

import datetime as dt
import uuid

import pytest

from davserver.services.trash import suffixed
from davserver.services.version_rules import (
    VersionFacts,
    VersionPolicy,
    coalesce_reason,
    versions_to_prune,
)
from davserver.services.versions import entry_name, parse_entry_name

NOW = dt.datetime(2026, 6, 15, 12, 0, tzinfo=dt.UTC)
ALICE, BOB = uuid.uuid4(), uuid.uuid4()


def ago(**delta: float) -> dt.datetime:
    return NOW - dt.timedelta(**delta)


def version(
    no: int, *, by: uuid.UUID = ALICE, at: dt.datetime = NOW, size: int = 10
) -> VersionFacts:
    return VersionFacts(uuid.UUID(int=no), no, size, by, at)


PLAIN, WINDOW = VersionPolicy(), VersionPolicy(coalesce_seconds=60)
# (case, policy, who made the current version, how long ago (s), its size, when the uploader's
# lock was taken (s ago, None: no lock), why alice's upload replaces it)
COALESCING = [
    ("no lock, no window", PLAIN, ALICE, 5, 10, None, None),
    ("made under the lock", PLAIN, ALICE, 5, 10, 9, "lock"),
    ("made before the lock", PLAIN, ALICE, 20, 10, 9, None),
    ("another user's version", PLAIN, BOB, 5, 10, 9, None),
    ("empty placeholder", PLAIN, ALICE, 20, 0, 9, "placeholder"),
    ("old empty version", PLAIN, ALICE, 7200, 0, 9, None),
    ("within the window", WINDOW, ALICE, 30, 10, None, "window"),
    ("past the window", WINDOW, ALICE, 90, 10, None, None),
    ("window, another user", WINDOW, BOB, 5, 10, None, None),
]


@pytest.mark.parametrize(("case", "policy", "by", "made", "size", "lock", "expected"), COALESCING)
def test_coalescing(
    case: str,
    policy: VersionPolicy,
    by: uuid.UUID,
    made: int,
    size: int,
    lock: int | None,
    expected: str | None,
) -> None:
    current = version(1, by=by, at=ago(seconds=made), size=size)
    lock_since = ago(seconds=lock) if lock is not None else None
    assert coalesce_reason(policy, current, ALICE, lock_since, NOW) == expected, case


def numbers(doomed: list[VersionFacts]) -> list[int]:
    return sorted(v.version_no for v in doomed)


def test_keep_last_keeps_the_newest_and_the_current() -> None:
    history = [version(n, at=ago(hours=10 - n)) for n in range(1, 8)]
    policy = VersionPolicy(keep_last=3)
    assert numbers(versions_to_prune(policy, history, current_id=history[-1].id, now=NOW)) == [
        1,
        2,
        3,
        4,
    ]
    # A current version older than the kept ones (restored from long ago) stays too.
    assert numbers(versions_to_prune(policy, history, current_id=history[0].id, now=NOW)) == [
        2,
        3,
        4,
    ]
    # Pinned versions stay.
    pinned = [history[1].id]
    doomed = versions_to_prune(policy, history, current_id=history[-1].id, pinned=pinned, now=NOW)
    assert numbers(doomed) == [1, 3, 4]
    assert versions_to_prune(VersionPolicy(), history, current_id=None, now=NOW) == []


def test_thinning_keeps_the_last_of_each_old_day() -> None:
    day = dt.timedelta(days=1)
    history = [
        version(1, at=NOW - 40 * day),
        version(2, at=NOW - 40 * day + dt.timedelta(hours=3)),
        version(3, at=NOW - 39 * day),
        version(4, at=NOW - 2 * day),
        version(5, at=NOW - 2 * day + dt.timedelta(hours=1)),  # recent: not thinned
        version(6, at=NOW),
    ]
    policy = VersionPolicy(thin_after_days=30)
    assert numbers(versions_to_prune(policy, history, current_id=history[-1].id, now=NOW)) == [1]
    both = VersionPolicy(keep_last=4, thin_after_days=30)
    assert numbers(versions_to_prune(both, history, current_id=history[-1].id, now=NOW)) == [1, 2]


ENTRY_NAMES = [
    ("report.docx", 3, "report.v3.docx"),
    ("Makefile", 12, "Makefile.v12"),
    ("archive.tar.gz", 1, "archive.tar.v1.gz"),
    (".bashrc", 2, ".bashrc.v2"),
    ("Übersicht März 2026.xlsx", 7, "Übersicht März 2026.v7.xlsx"),
    ("report.v3.docx", 1, "report.v3.v1.docx"),
]


@pytest.mark.parametrize(("name", "number", "entry"), ENTRY_NAMES)
def test_entry_names_round_trip(name: str, number: int, entry: str) -> None:
    assert entry_name(name, number) == entry
    assert parse_entry_name(name, entry) == number


@pytest.mark.parametrize(
    "entry", ["report.docx", "report.v.docx", "report.v03.docx", "report.v3.pdf", "other.v3.docx"]
)
def test_other_names_are_not_entries(entry: str) -> None:
    assert parse_entry_name("report.docx", entry) is None


def test_trash_namesakes_keep_their_extension() -> None:
    assert suffixed("a.txt", "2", is_folder=False) == "a (2).txt"
    assert suffixed("Makefile", "3", is_folder=False) == "Makefile (3)"
    assert suffixed("photos.2024", "2", is_folder=True) == "photos.2024 (2)"
