"""Locks hold whichever URL reaches an item: the owner's ``/files/``, a grantee's
``/shared/<owner>/``, an admin's ``/users/<owner>/``, a group's ``/groups/`` and
``/shared/@<group>/``. Two people editing one shared document must not both get a lock."""

from __future__ import annotations

import datetime as dt
import re
import threading
import time
import unicodedata
import uuid
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import pytest
import sqlalchemy as sa

from davserver.db.types import utcnow
from davserver.housekeeping import Housekeeper
from davserver.models import Grant, LogEntry, Node, User
from providers.lock_space import RequestLockSpace
from tests.conftest import ENGINES
from tests.integration.test_sharing_http import People
from tests.servers import InprocServer, Response, run_inproc_server

LOCK = (
    b'<?xml version="1.0"?><D:lockinfo xmlns:D="DAV:"><D:lockscope><D:exclusive/>'
    b"</D:lockscope><D:locktype><D:write/></D:locktype>"
    b"<D:owner><D:href>tester</D:href></D:owner></D:lockinfo>"
)
LOCKROOT = re.compile(rb"<(?:\w+:)?lockroot>\s*<(?:\w+:)?href>([^<]*)</", re.S)


@pytest.fixture(scope="module", params=ENGINES)
def server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[InprocServer]:
    with run_inproc_server(request.param, tmp_path_factory.mktemp(f"locks-{request.param}")) as s:
        yield s


@pytest.fixture
def p(server: InprocServer) -> People:
    people = People(server)
    people.passwords[server.user] = server.password  # the admin
    return people


def lock(p: People, who: str, path: str, depth: str = "0") -> Response:
    return p.call(who, "LOCK", path, LOCK, {"Timeout": "Second-600", "Depth": depth})


def token_of(response: Response) -> str:
    assert response.status == 200, response.body
    return response.headers["Lock-Token"].strip("<>")


def with_token(token: str) -> dict[str, str]:
    return {"If": f"(<{token}>)"}


def lockroots(p: People, who: str, path: str, depth: str = "0") -> list[str]:
    response = p.call(who, "PROPFIND", path, None, {"Depth": depth})
    assert response.status == 207
    return [href.decode().rstrip("/") for href in LOCKROOT.findall(response.body)]


def shared_folder(p: People, *, above: str = "") -> tuple[str, str]:
    """Alice's folder ``[above/]proj`` with ``doc.txt``, shared with bob for writing;
    returns (alice's URL, bob's URL) of the folder."""
    base = f"/files/{above}" if above else "/files"
    if above:
        assert p.call(p.alice, "MKCOL", base + "/").status == 201
    folder = f"{base}/proj-{uuid.uuid4().hex[:6]}"
    assert p.call(p.alice, "MKCOL", folder + "/").status == 201
    assert p.put(p.alice, folder + "/doc.txt") == 201
    assert p.grant(p.alice, folder, p.bob, "write") == 201
    return folder, f"/shared/{p.alice}/{folder.rsplit('/', 1)[1]}"


def test_a_lock_taken_through_a_share_holds_for_the_owner_and_an_admin(p: People) -> None:
    mine, bobs = shared_folder(p)
    token = token_of(lock(p, p.bob, bobs + "/doc.txt"))

    assert p.put(p.alice, mine + "/doc.txt", b"alice's edit") == 423
    assert lock(p, p.alice, mine + "/doc.txt").status == 423
    admins = f"/users/{p.alice}/{mine.removeprefix('/files/')}/doc.txt"
    assert p.put(p.server.user, admins, b"admin's edit") == 423
    # Each sees the lock at the URL they use.
    assert lockroots(p, p.alice, mine + "/doc.txt") == [mine + "/doc.txt"]
    assert lockroots(p, p.bob, bobs + "/", depth="1") == [bobs + "/doc.txt"]

    headers = with_token(token)
    assert p.call(p.bob, "PUT", bobs + "/doc.txt", b"bob's edit", headers).status == 204
    unlock = p.call(p.bob, "UNLOCK", bobs + "/doc.txt", None, {"Lock-Token": f"<{token}>"})
    assert unlock.status == 204
    assert p.put(p.alice, mine + "/doc.txt", b"alice's edit") == 204


def test_the_owners_lock_on_a_folder_above_a_share_holds_for_the_grantee(p: People) -> None:
    top = f"top-{uuid.uuid4().hex[:6]}"
    _, bobs = shared_folder(p, above=top)
    token = token_of(lock(p, p.alice, f"/files/{top}/", depth="infinity"))

    assert p.put(p.bob, bobs + "/doc.txt", b"bob's edit") == 423
    assert p.put(p.bob, bobs + "/new.txt") == 423
    assert lock(p, p.bob, bobs + "/doc.txt").status == 423
    assert p.call(p.bob, "DELETE", bobs + "/doc.txt").status == 423
    # Bob cannot reach alice's folder above his share: the lock shows on the share itself.
    assert lockroots(p, p.bob, bobs + "/") == [bobs]

    unlock = p.call(p.alice, "UNLOCK", f"/files/{top}/", None, {"Lock-Token": f"<{token}>"})
    assert unlock.status == 204
    assert p.put(p.bob, bobs + "/doc.txt", b"bob's edit") == 204


def test_the_grantees_token_does_not_work_at_another_place(p: People) -> None:
    """A token is good for what it locks, and only for the one who took it."""
    mine, bobs = shared_folder(p)
    headers = with_token(token_of(lock(p, p.bob, bobs + "/doc.txt")))
    # A file of bob's own is another file: the If header does not hold there.
    own = f"/files/own-{uuid.uuid4().hex[:6]}.txt"
    assert p.put(p.bob, own) == 201
    assert p.call(p.bob, "PUT", own, b"x", headers).status == 412
    # Alice's URL is the locked file, but the lock is bob's: If headers are matched against
    # the requester's own locks, so the condition fails.
    assert p.call(p.alice, "PUT", mine + "/doc.txt", b"x", headers).status == 412


def test_deleting_a_locked_shared_file_drops_its_lock(p: People) -> None:
    mine, bobs = shared_folder(p)
    token = token_of(lock(p, p.bob, bobs + "/doc.txt"))
    assert p.call(p.bob, "DELETE", bobs + "/doc.txt", None, with_token(token)).status == 204
    assert p.put(p.alice, mine + "/doc.txt", b"new") == 201
    assert lockroots(p, p.alice, mine + "/doc.txt") == []


def test_a_lock_through_a_groups_share_holds_for_its_members(p: People) -> None:
    name = f"plan-{uuid.uuid4().hex[:6]}.txt"
    in_group = f"/groups/{p.team}/{name}"
    assert p.put(p.alice, in_group) == 201
    assert p.grant(p.alice, in_group, p.carol, "write") == 201
    token = token_of(lock(p, p.carol, f"/shared/@{p.team}/{name}"))

    assert p.put(p.bob, in_group, b"bob's edit") == 423
    assert lockroots(p, p.bob, in_group) == [in_group]
    headers = with_token(token)
    assert p.call(p.carol, "PUT", f"/shared/@{p.team}/{name}", b"carol", headers).status == 204


def test_the_owner_or_an_admin_can_break_a_grantees_lock(p: People) -> None:
    # Bob's editor locked alice's document for a week, then crashed: alice could not write
    # her own file until the lock expired. (Had his grant been revoked, his lock would have
    # gone with it: test_a_lock_whose_holder_may_no_longer_write_there_is_released.)
    mine, bobs = shared_folder(p)
    doc = mine + "/doc.txt"
    headers = {"Timeout": "Second-604800", "Depth": "0"}
    token = token_of(p.call(p.bob, "LOCK", bobs + "/doc.txt", LOCK, headers))
    assert p.put(p.alice, doc, b"alice's edit") == 423
    unlock = {"Lock-Token": f"<{token}>"}
    # Someone who may only write there (carol, through a grant) cannot break it.
    assert p.grant(p.alice, mine, p.carol, "write") == 201
    carols = f"/shared/{p.alice}/{mine.rsplit('/', 1)[1]}/doc.txt"
    assert p.call(p.carol, "UNLOCK", carols, None, unlock).status == 403
    # The owner can; a wrong token is still a conflict.
    assert p.call(p.alice, "UNLOCK", doc, None, {"Lock-Token": "<opaquelocktoken:x>"}).status == 409
    assert p.call(p.alice, "UNLOCK", doc, None, unlock).status == 204
    assert p.put(p.alice, doc, b"alice's edit") == 204
    # And an admin, through /users/.
    bobs_token, token = token, token_of(lock(p, p.carol, carols))
    admins = f"/users/{p.alice}/{doc.removeprefix('/files/')}"
    unlock = {"Lock-Token": f"<{token}>"}
    assert p.call(p.server.user, "UNLOCK", admins, None, unlock).status == 204
    assert p.put(p.alice, doc, b"alice's second edit") == 204
    # One row each in the logbook, about the document, by who did it.
    app = p.server.application
    with app.db.connect() as conn:
        rows = conn.execute(
            sa.select(LogEntry.op_type, User.username, LogEntry.node_id, LogEntry.details)
            .join(User, User.id == LogEntry.user_id)
            .where(LogEntry.op_type.startswith("lock:"))
            .order_by(LogEntry.id)
        ).all()
    doc_id = app.services.namespace.locate(p.alice, doc.removeprefix("/files")).id
    assert [
        (op, who, node == doc_id, details.get("holder"))
        for op, who, node, details in rows
        if details["token"] in (bobs_token, token)
    ] == [
        ("lock:create", p.bob, True, None),
        ("lock:delete", p.alice, True, p.bob),
        ("lock:create", p.carol, True, None),
        ("lock:delete", p.server.user, True, p.carol),
    ]


@pytest.mark.parametrize(
    ("taken_at", "released_at"),
    [("alias", "alias"), ("files", "alias"), ("alias", "files")],
)
def test_an_admin_unlocks_their_own_file_through_either_of_its_urls(
    p: People, taken_at: str, released_at: str
) -> None:
    """An admin's own files are at /files/ and at /users/<admin>/ (an admin who maps
    /users/ sees everyone's). A lock taken through one URL holds through both, and UNLOCK at
    either must release it: at /users/<admin>/ it answered 409 (lock-token-matches-request-uri)
    even at the URL the lock was taken at, so it stayed until it timed out."""
    admin = p.server.user
    name = f"mine-{uuid.uuid4().hex[:6]}.txt"
    urls = {"files": f"/files/{name}", "alias": f"/users/{admin}/{name}"}
    assert p.put(admin, urls["files"]) == 201
    token = token_of(lock(p, admin, urls[taken_at]))
    assert lockroots(p, admin, urls[released_at]) == [urls[released_at]]

    unlock = p.call(admin, "UNLOCK", urls[released_at], None, {"Lock-Token": f"<{token}>"})
    assert unlock.status == 204, (unlock.status, unlock.body[:300])
    assert lockroots(p, admin, urls["files"]) == []
    assert p.put(admin, urls["alias"], b"unlocked") == 204


def test_a_folders_lock_shows_in_the_lockdiscovery_of_everything_it_covers(p: People) -> None:
    """RFC 4918 (7.7, 14.12): a lock with depth infinity locks every member, and their
    ``lockdiscovery`` lists it with its ``lockroot``, as Apache and SabreDAV answer; members
    showed an empty lockdiscovery, so a client checking before it edits saw no lock and met a
    423 only on saving."""
    alice = p.alice
    top = f"/files/team-{uuid.uuid4().hex[:6]}"
    assert p.call(alice, "MKCOL", top + "/").status == 201
    assert p.call(alice, "MKCOL", top + "/sub/").status == 201
    assert p.put(alice, top + "/sub/doc.txt") == 201
    token = token_of(lock(p, alice, top + "/", depth="infinity"))

    for depth, path in (("0", "/sub/doc.txt"), ("0", "/sub/"), ("1", "/sub/")):
        response = p.call(alice, "PROPFIND", top + path, None, {"Depth": depth})
        assert response.status == 207
        entries = response.body.count(b"<D:response>")
        assert response.body.count(token.encode()) == entries, response.body[:2000]
        assert [r.decode().rstrip("/") for r in LOCKROOT.findall(response.body)] == [top] * entries
    # A lock that does not cover the member (depth 0 on the folder) is not listed there.
    assert p.call(alice, "UNLOCK", top + "/", None, {"Lock-Token": f"<{token}>"}).status == 204
    shallow = token_of(lock(p, alice, top + "/sub/", depth="0"))
    assert lockroots(p, alice, top + "/sub/doc.txt") == []
    assert lockroots(p, alice, top + "/sub/") == [top + "/sub"]
    assert (
        p.call(alice, "UNLOCK", top + "/sub/", None, {"Lock-Token": f"<{shallow}>"}).status == 204
    )


@pytest.mark.parametrize("space", ["files", "group", "shared"])
@pytest.mark.parametrize(("taken", "used"), [("nfc", "nfd"), ("nfd", "nfc"), ("nfd", "nfd")])
def test_a_lock_holds_whichever_unicode_form_spells_the_url(
    p: People, space: str, taken: str, used: str
) -> None:
    """A name with an accent reaches one item whether a client spells it composed (NFC,
    Windows, Linux) or decomposed (NFD, macOS). A lock taken through one spelling did not hold
    through the other: a Mac overwrote, deleted or re-locked a file a Windows editor had locked,
    without its token, and saw no lock in its lockdiscovery."""
    folder = f"fé-{uuid.uuid4().hex[:6]}"
    owner, bases = (
        p.alice,
        {
            "files": (f"/files/{folder}", f"/files/{folder}"),
            "group": (f"/groups/{p.team}/{folder}", f"/groups/{p.team}/{folder}"),
            "shared": (f"/files/{folder}", f"/shared/{p.alice}/{folder}"),
        }[space],
    )
    user = p.bob if space == "shared" else owner
    assert p.call(owner, "MKCOL", quote(bases[0]) + "/").status == 201
    assert p.put(owner, quote(bases[0] + "/café.txt")) == 201
    if space == "shared":
        assert p.grant(owner, bases[0], p.bob, "write") == 201

    def url(form: str, name: str = "café.txt") -> str:
        return quote(unicodedata.normalize(form.upper(), f"{bases[1]}/{name}"))

    token = token_of(lock(p, user, url(taken)))
    other = {"files": user, "group": p.bob, "shared": owner}[space]
    if other != user:  # someone else, through their own URL (composed)
        assert p.put(other, quote(bases[0] + "/café.txt"), b"edit") == 423
    assert p.call(user, "PUT", url(used), b"edit").status == 423
    assert p.call(user, "DELETE", url(used)).status == 423
    assert lock(p, user, url(used)).status == 423
    assert lockroots(p, user, url(used)) == [url(used)]
    assert p.call(user, "PUT", url(used), b"edit", with_token(token)).status == 204
    unlock = p.call(user, "UNLOCK", url(used), None, {"Lock-Token": f"<{token}>"})
    assert unlock.status == 204, (unlock.status, unlock.body[:300])
    assert p.call(user, "PUT", url(taken), b"free").status == 204

    # A folder's depth-infinity lock holds for the names below it, spelled either way.
    def folder_url(form: str) -> str:
        return quote(unicodedata.normalize(form.upper(), bases[1]))

    token = token_of(lock(p, user, folder_url(taken) + "/", depth="infinity"))
    assert p.call(user, "PUT", url(used, "né.txt"), b"new").status == 423
    assert lockroots(p, user, url(used)) == [folder_url(used)]
    unlock = p.call(user, "UNLOCK", folder_url(used) + "/", None, {"Lock-Token": f"<{token}>"})
    assert unlock.status == 204, (unlock.status, unlock.body[:300])


def test_the_locks_of_a_member_who_leaves_or_a_user_who_goes_go_with_them(p: People) -> None:
    """A member removed from the group, or a user disabled or deleted, can no longer unlock
    what they locked, and others could not either: the group's file stayed locked for up to
    a week (``dav.lock_max_timeout``). Their locks now end with the membership (those in the
    group's space) or the account (all)."""
    groups, users = p.server.app.services.groups, p.server.app.services.users
    in_group = f"/groups/{p.team}/plan-{uuid.uuid4().hex[:6]}.txt"
    assert p.put(p.alice, in_group) == 201
    own = f"/files/own-{uuid.uuid4().hex[:6]}.txt"
    assert p.put(p.bob, own) == 201
    token_of(lock(p, p.bob, in_group))
    own_token = token_of(lock(p, p.bob, own))
    assert p.put(p.alice, in_group, b"alice's edit") == 423

    groups.remove_member(None, p.team, p.bob)
    assert p.put(p.alice, in_group, b"alice's edit") == 204
    assert p.call(p.bob, "PUT", own, b"bob's", with_token(own_token)).status == 204  # kept

    groups.add_member(None, p.team, p.bob)
    token_of(lock(p, p.bob, in_group))
    users.disable_user(None, p.bob)
    assert p.put(p.alice, in_group, b"after bob was disabled") == 204
    users.enable_user(None, p.bob)
    token_of(lock(p, p.bob, in_group))
    users.delete_user(None, p.bob)
    assert p.put(p.alice, in_group, b"after bob was deleted") == 204
    with p.server.app.db.read() as session:
        details = session.scalars(
            sa.select(LogEntry.details)
            .where(LogEntry.op_type.in_(["group:member:remove", "user:disable", "user:delete"]))
            .order_by(LogEntry.id.desc())
            .limit(3)
        ).all()
    # Disabled: the group's file and bob's own; deleted: the group's file he locked again.
    assert [d["after"]["released_locks"] for d in details] == [1, 2, 1]


def test_a_lock_whose_holder_may_no_longer_write_there_is_released(p: People) -> None:
    """bob locked a file of alice's that he could write through a grant to his group, or to
    him; he left the group, or the grant was revoked, lowered or ran out. He could no longer
    reach the file to unlock it, and carol, who may write there, could not break his lock:
    her saves got 423 for up to a week. His lock goes with his right to write, with a row in
    the logbook saying why; a lock he may still write under stays."""
    groups = p.server.app.services.groups
    folder = f"/files/gp-{uuid.uuid4().hex[:6]}"
    assert p.call(p.alice, "MKCOL", folder + "/").status == 201
    for name in ("a.txt", "b.txt", "c.txt", "d.txt"):
        assert p.put(p.alice, f"{folder}/{name}") == 201
    assert p.grant(p.alice, folder, p.team, "write", group=True) == 201
    assert p.grant(p.alice, folder, p.carol, "write") == 201
    assert p.grant(p.alice, f"{folder}/b.txt", p.bob, "write") == 201
    carols = bobs = f"/shared/{p.alice}/{folder.rsplit('/', 1)[1]}"
    for name in ("a.txt", "b.txt"):
        token_of(lock(p, p.bob, f"{bobs}/{name}"))
        assert p.put(p.carol, f"{carols}/{name}", b"carol") == 423
    groups.remove_member(None, p.team, p.bob)
    assert p.put(p.carol, f"{carols}/a.txt", b"carol") == 204  # bob's lock went
    assert p.put(p.carol, f"{carols}/b.txt", b"carol") == 423  # his own grant still covers it
    # His own grant lowered to read, then (after he locks again) revoked: the lock goes.
    assert p.grant(p.alice, f"{folder}/b.txt", p.bob, "read") == 201
    assert p.put(p.carol, f"{carols}/b.txt", b"carol") == 204
    assert p.grant(p.alice, f"{folder}/c.txt", p.bob, "write") == 201
    token_of(lock(p, p.bob, f"/shared/{p.alice}/c.txt"))
    assert p.put(p.carol, f"{carols}/c.txt", b"carol") == 423
    assert p.revoke(p.alice, f"{folder}/c.txt", p.bob) == 204
    assert p.put(p.carol, f"{carols}/c.txt", b"carol") == 204
    # A grant that ran out: the next housekeeping sweep releases what it held.
    assert p.grant(p.alice, f"{folder}/d.txt", p.bob, "write") == 201
    token_of(lock(p, p.bob, f"/shared/{p.alice}/d.txt"))
    with p.server.app.db.write() as session:
        session.execute(
            sa.update(Grant)
            .where(Grant.node_id.in_(node_ids(p, f"{folder}/d.txt")))
            .values(expires_at=utcnow() - dt.timedelta(seconds=1))
        )
    assert p.put(p.carol, f"{carols}/d.txt", b"carol") == 423
    in_group = f"/groups/{p.team}/kept-{uuid.uuid4().hex[:6]}.txt"  # one the sweep keeps
    assert p.put(p.alice, in_group) == 201
    token_of(lock(p, p.alice, in_group))
    Housekeeper(p.server.app.services, 0).run_once()
    assert p.put(p.carol, f"{carols}/d.txt", b"carol") == 204
    assert lockroots(p, p.alice, in_group) == [in_group]
    with p.server.app.db.read() as session:
        because = session.scalars(
            sa.select(LogEntry.details["because"].as_string())
            .where(
                LogEntry.op_type == "lock:delete", LogEntry.details["holder"].as_string() == p.bob
            )
            .order_by(LogEntry.id)
        ).all()
    assert because == [
        f"{p.bob} left the group {p.team}",
        f"{p.bob}'s grant was changed",
        "a grant was revoked",
        "its holder may no longer write there",
    ]


def test_a_lock_goes_when_the_grant_it_was_taken_under_goes_with_anothers(p: People) -> None:
    """The grants a removal or a deletion takes with it (those shared on from the lost one)
    left their holders' locks for the next sweep, an hour away: dave, who had write through
    bob's reshare, kept alice's file locked after bob left the group, and after bob's
    account was deleted."""
    groups, users = p.server.app.services.groups, p.server.app.services.users
    folder = f"/files/re-{uuid.uuid4().hex[:6]}"
    assert p.call(p.alice, "MKCOL", folder + "/").status == 201
    assert p.put(p.alice, f"{folder}/r.txt") == 201
    assert p.grant(p.alice, folder, p.team, "read", "write", "share", group=True) == 201
    assert p.grant(p.alice, folder, p.carol, "write") == 201
    bobs = f"/shared/{p.alice}/{folder.rsplit('/', 1)[1]}"
    assert p.grant(p.bob, bobs, p.dave, "read") == 201  # dave is a viewer: read only
    erin = f"erin{uuid.uuid4().hex[:6]}"
    p.passwords[erin] = f"pw-{uuid.uuid4().hex}"
    users.create_user(None, erin, password=p.passwords[erin])
    assert p.grant(p.bob, bobs, erin, "read", "write") == 201
    token_of(lock(p, erin, f"{bobs}/r.txt"))
    assert p.put(p.carol, f"{bobs}/r.txt", b"carol") == 423
    groups.remove_member(None, p.team, p.bob)
    assert p.put(p.carol, f"{bobs}/r.txt", b"carol") == 204
    # The same through a deleted account: alice's own grant to bob, and bob's to erin.
    groups.add_member(None, p.team, p.bob)
    assert p.grant(p.alice, folder, p.bob, "read", "write", "share") == 201
    assert p.grant(p.bob, bobs, erin, "read", "write") == 201
    token_of(lock(p, erin, f"{bobs}/r.txt"))
    assert p.put(p.carol, f"{bobs}/r.txt", b"carol") == 423
    users.delete_user(None, p.bob)
    assert p.put(p.carol, f"{bobs}/r.txt", b"carol 2") == 204


def node_ids(p: People, path: str) -> list[uuid.UUID]:
    """The node of alice's ``path`` (a file of her home, one level below its root)."""
    folder, name = path.removeprefix("/files/").split("/")
    with p.server.app.db.read() as session:
        parent = sa.select(Node.id).where(Node.name == folder).scalar_subquery()
        return list(
            session.scalars(sa.select(Node.id).where(Node.parent_id == parent, Node.name == name))
        )


def test_a_lock_asked_for_before_a_revoke_and_taken_after_it_is_refused(
    p: People, monkeypatch: pytest.MonkeyPatch
) -> None:
    """bob's LOCK read his rights when it began; alice's revoke, and the release of the
    locks bob may no longer hold, ran before the LOCK stored his lock. It was stored all the
    same, and kept alice from her own file until it expired (an hour) or a housekeeping
    sweep. A lock is taken by the rights its holder has when it is stored."""
    mine, bobs = shared_folder(p)
    original = RequestLockSpace.lock_logger
    revoked: list[int] = []

    def revoke_first(space: RequestLockSpace) -> Any:  # just before the lock is stored
        if not revoked:
            revoked.append(p.revoke(p.alice, mine, p.bob))
        return original(space)

    monkeypatch.setattr(RequestLockSpace, "lock_logger", revoke_first)
    assert lock(p, p.bob, f"{bobs}/doc.txt").status == 403
    assert revoked == [204]
    assert p.put(p.alice, f"{mine}/doc.txt", b"alice") == 204
    assert lockroots(p, p.alice, f"{mine}/doc.txt") == []


def test_a_revoke_while_a_lock_is_being_stored_releases_it(
    p: People, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The revoke committed after bob's LOCK checked his rights and before it stored the
    lock; the release of his locks looked before that too (PostgreSQL), and missed it. It
    waits for the locks being stored where it looks, and releases this one."""
    mine, bobs = shared_folder(p)
    original = RequestLockSpace.writable
    threads: list[threading.Thread] = []
    revoked: list[int] = []

    def revoke_meanwhile(space: RequestLockSpace, url: str) -> bool:
        may = original(space, url)
        if not threads:  # the revoke runs while this transaction stores the lock
            threads.append(threading.Thread(target=lambda: revoked.append(
                p.revoke(p.alice, mine, p.bob))))  # fmt: skip
            threads[0].start()
            time.sleep(0.5)
        return may

    monkeypatch.setattr(RequestLockSpace, "writable", revoke_meanwhile)
    assert lock(p, p.bob, f"{bobs}/doc.txt").status == 200
    threads[0].join(30)
    assert revoked == [204]
    assert p.put(p.alice, f"{mine}/doc.txt", b"alice") == 204
    assert lockroots(p, p.alice, f"{mine}/doc.txt") == []
