"""effective_permissions as a table: who, which space, which grants -> which rights."""

from __future__ import annotations

import datetime as dt
import uuid

import pytest

from davserver.services.permissions import (
    EVERYTHING,
    GrantRule,
    Perm,
    Principal,
    SpaceOwner,
    effective_permissions,
)

NOW = dt.datetime(2026, 11, 26, 12, 0, tzinfo=dt.UTC)
ALICE, BOB, CAROL = (uuid.UUID(int=i) for i in (1, 2, 3))
TEAM, OTHERS = uuid.UUID(int=10), uuid.UUID(int=11)
NODE = uuid.UUID(int=100)
R, D, W, S, T = Perm.READ, Perm.DOWNLOAD, Perm.WRITE, Perm.SHARE, Perm.TRASH
HOME = SpaceOwner(ALICE)
TEAM_SPACE = SpaceOwner(ALICE, group_id=TEAM)
PAST, FUTURE = NOW - dt.timedelta(seconds=1), NOW + dt.timedelta(days=1)


def to_bob(rights: Perm, expires: dt.datetime | None = None) -> GrantRule:
    return GrantRule(NODE, rights, user_id=BOB, expires_at=expires)


def to_group(group: uuid.UUID, rights: Perm) -> GrantRule:
    return GrantRule(NODE, rights, group_id=group)


def bob(
    *roles: str, groups: dict[uuid.UUID, bool] | None = None, read_only: bool = False
) -> Principal:
    return Principal(BOB, frozenset(roles or ("user",)), groups or {}, read_only)


CASES: list[tuple[str, Principal, SpaceOwner, list[GrantRule], Perm]] = [
    ("owner has everything", Principal(ALICE), HOME, [], EVERYTHING),
    ("stranger has nothing", bob(), HOME, [], Perm.NONE),
    ("read grant", bob(), HOME, [to_bob(R)], R),
    ("download implies read", bob(), HOME, [to_bob(D)], R | D),
    ("write implies read", bob(), HOME, [to_bob(W)], R | W),
    ("share implies read", bob(), HOME, [to_bob(S)], R | S),
    ("grants add up", bob(), HOME, [to_bob(R), to_bob(W)], R | W),
    ("expired grant ignored", bob(), HOME, [to_bob(W, PAST)], Perm.NONE),
    ("unexpired grant counts", bob(), HOME, [to_bob(W, FUTURE)], R | W),
    ("another user's grant", bob(), HOME, [GrantRule(NODE, W, user_id=CAROL)], Perm.NONE),
    ("group grant to a member", bob(groups={TEAM: False}), HOME, [to_group(TEAM, D)], R | D),
    (
        "group grant to a non-member",
        bob(groups={OTHERS: False}),
        HOME,
        [to_group(TEAM, D)],
        Perm.NONE,
    ),
    (
        "user and group grants add up",
        bob(groups={TEAM: False}),
        HOME,
        [to_bob(W), to_group(TEAM, D)],
        R | D | W,
    ),
    ("group member in its space", bob(groups={TEAM: False}), TEAM_SPACE, [], R | D | W),
    ("group admin in its space", bob(groups={TEAM: True}), TEAM_SPACE, [], R | D | W | S),
    ("non-member in a group space", bob(), TEAM_SPACE, [], Perm.NONE),
    ("admin everywhere", bob("admin"), HOME, [], EVERYTHING),
    ("moderator reads and trashes", bob("moderator"), HOME, [], R | T),
    ("moderator keeps its grants", bob("moderator"), HOME, [to_bob(D)], R | D | T),
    ("viewer never writes", bob("viewer"), HOME, [to_bob(W | D)], R | D),
    ("viewer in its group space", bob("viewer", groups={TEAM: True}), TEAM_SPACE, [], R | D | S),
    ("read-only key clamps", bob(read_only=True), HOME, [to_bob(W | S | D)], R | D),
    ("read-only key clamps the owner", Principal(ALICE, read_only=True), HOME, [], R | D),
    ("read-only key clamps an admin", bob("admin", read_only=True), HOME, [], R | D),
]


@pytest.mark.parametrize(
    ("who", "space", "grants", "expected"),
    [pytest.param(*case[1:], id=case[0]) for case in CASES],
)
def test_effective_permissions(
    who: Principal, space: SpaceOwner, grants: list[GrantRule], expected: Perm
) -> None:
    assert effective_permissions(who, space, grants, NOW) == expected


def test_rights_parse_and_print() -> None:
    assert Perm.parse(["read", "Download"]) == R | D
    assert Perm.parse(["all"]) == R | D | W | S
    assert (R | W).names() == ["read", "write"]
    with pytest.raises(ValueError, match="unknown right"):
        Perm.parse(["fly"])
