"""Permissions and sharing over real HTTP, on both engines: grants of each single right on a
file and on a folder, every WebDAV method as the grantee, and the edge cases of issue 4."""

from __future__ import annotations

import concurrent.futures
import datetime as dt
import http.client
import json
import re
import socket
import time
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote, unquote

import pytest
import sqlalchemy as sa

from davserver.models import Grant, ImageVariant, LogEntry, Node, Op
from tests import images
from tests.conftest import ENGINES
from tests.servers import InprocServer, Response, basic_auth_header, http_request, run_inproc_server
from tests.webdav import statements

PROPPATCH = (
    b'<?xml version="1.0"?><D:propertyupdate xmlns:D="DAV:" xmlns:x="urn:x">'
    b"<D:set><D:prop><x:color>red</x:color></D:prop></D:set></D:propertyupdate>"
)
PROPFIND_COLOR = (
    b'<?xml version="1.0"?><D:propfind xmlns:D="DAV:" xmlns:x="urn:x">'
    b"<D:prop><x:color/></D:prop></D:propfind>"
)
OC_SIZE = (
    b'<?xml version="1.0"?><D:propfind xmlns:D="DAV:" xmlns:oc="http://owncloud.org/ns">'
    b"<D:prop><oc:size/><D:resourcetype/></D:prop></D:propfind>"
)
LOCK = (
    b'<?xml version="1.0"?><D:lockinfo xmlns:D="DAV:"><D:lockscope><D:exclusive/>'
    b"</D:lockscope><D:locktype><D:write/></D:locktype></D:lockinfo>"
)


class People:
    def __init__(self, server: InprocServer) -> None:
        self.server = server
        self.passwords: dict[str, str] = {}
        suffix = uuid.uuid4().hex[:6]
        self.alice, self.bob, self.carol, self.dave = (
            f"{n}{suffix}" for n in ("alice", "bob", "carol", "dave")
        )
        self.team = f"team{suffix}"
        users = server.app.services.users
        for name in (self.alice, self.bob, self.carol):
            self.passwords[name] = f"pw-{uuid.uuid4().hex}"
            users.create_user(None, name, password=self.passwords[name])
        self.passwords[self.dave] = f"pw-{uuid.uuid4().hex}"
        users.create_user(None, self.dave, password=self.passwords[self.dave], roles=["viewer"])
        groups = server.app.services.groups
        groups.create_group(None, self.team)
        groups.add_member(None, self.team, self.bob)
        groups.add_member(None, self.team, self.alice, admin=True)

    def call(
        self,
        who: str,
        method: str,
        path: str,
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> Response:
        sent = {"Authorization": basic_auth_header(who, self.passwords[who]), **(headers or {})}
        return http_request(method, self.server.url + path, body, sent)

    def api(self, who: str, method: str, path: str, payload: Any = None) -> tuple[int, Any]:
        body = json.dumps(payload).encode() if payload is not None else None
        response = self.call(
            who, method, "/api/v1" + path, body, {"Content-Type": "application/json"}
        )
        return response.status, json.loads(response.body) if response.body else None

    def node_commits(self, run: Any) -> int:
        """How many transactions that wrote ``nodes`` rows the server committed while
        ``run()`` ran (not counting others, such as the download log's flush)."""
        wrote: set[int] = set()
        seen: list[int] = []

        def noted(conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
            if statement.lstrip().upper().startswith("INSERT INTO NODES"):
                wrote.add(id(conn))

        def committed(conn: Any) -> None:
            if id(conn) in wrote:
                wrote.discard(id(conn))
                seen.append(1)

        engine = self.server.app.db.engine
        sa.event.listen(engine, "before_cursor_execute", noted)
        sa.event.listen(engine, "commit", committed)
        try:
            run()
        finally:
            sa.event.remove(engine, "before_cursor_execute", noted)
            sa.event.remove(engine, "commit", committed)
        return len(seen)

    def grant(self, who: str, path: str, to: str, *rights: str, group: bool = False) -> int:
        payload = {"path": path, ("group" if group else "user"): to, "rights": list(rights)}
        status, _ = self.api(who, "POST", "/grants", payload)
        return status

    def revoke(self, who: str, path: str, to: str, *, group: bool = False) -> int:
        status, _ = self.api(
            who, "DELETE", f"/grants?path={path}&{'group' if group else 'user'}={to}"
        )
        return status

    def rights_on(self, path: str) -> dict[str, list[str]]:
        """grantee -> rights of the grants on ``path`` of alice's space, as alice lists them."""
        status, listed = self.api(self.alice, "GET", f"/grants?path={path}")
        assert status == 200
        return {g["grantee"]: g["rights"] for g in listed["grants"]}

    def put(self, who: str, path: str, data: bytes = b"content") -> int:
        return self.call(who, "PUT", path, data).status


@pytest.fixture(scope="module", params=ENGINES)
def server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[InprocServer]:
    tmp = tmp_path_factory.mktemp(f"share-{request.param}")
    with run_inproc_server(request.param, tmp, logging__query_header=True) as srv:
        yield srv


@pytest.fixture
def people(server: InprocServer) -> People:
    return People(server)


# -- the matrix: each single right on a file and on a folder, each method as the grantee

RIGHTS = ["read", "download", "write", "share"]
# method -> expected status per right (read, download, write, share)
FILE_CELLS: dict[str, tuple[int, int, int, int]] = {
    "OPTIONS": (200, 200, 200, 200),
    "PROPFIND": (207, 207, 207, 207),
    "HEAD": (200, 200, 200, 200),  # what HEAD tells is what PROPFIND tells
    "GET": (403, 200, 403, 403),
    "PUT": (403, 403, 204, 403),
    "PROPPATCH": (403, 403, 207, 403),
    "LOCK": (403, 403, 200, 403),
    "COPY out": (403, 201, 403, 403),
    # Renaming needs write on the folder it is in, which the grant does not cover.
    "MOVE rename": (403, 403, 403, 403),
    "DELETE": (403, 403, 204, 403),
}
FOLDER_CELLS: dict[str, tuple[int, int, int, int]] = {
    "PROPFIND": (207, 207, 207, 207),
    "PROPFIND Depth 1": (207, 207, 207, 207),
    "GET child": (403, 200, 403, 403),
    "PROPPATCH child": (403, 403, 207, 403),
    "LOCK child": (403, 403, 200, 403),
    "PUT child": (403, 403, 201, 403),
    "MKCOL child": (403, 403, 201, 403),
    "MOVE child": (403, 403, 201, 403),
    "COPY out": (403, 201, 403, 403),
    "DELETE child": (403, 403, 204, 403),
    "DELETE": (403, 403, 204, 403),
}


def run_cell(p: People, kind: str, method: str, right: str) -> int:
    name = f"{kind}-{right}-{uuid.uuid4().hex[:6]}"
    if kind == "file":
        assert p.put(p.alice, f"/files/{name}") == 201
    else:
        assert p.call(p.alice, "MKCOL", f"/files/{name}/").status == 201
        assert p.put(p.alice, f"/files/{name}/child.txt") == 201
    assert p.grant(p.alice, f"/files/{name}", p.bob, right) == 201
    shared = f"/shared/{p.alice}/{name}"
    child = f"{shared}/child.txt"
    out = {"Destination": f"{p.server.url}/files/copy-{uuid.uuid4().hex[:6]}"}
    requests: dict[str, tuple[str, str, bytes | None, dict[str, str]]] = {
        "OPTIONS": ("OPTIONS", shared, None, {}),
        "HEAD": ("HEAD", shared, None, {}),
        "MOVE rename": ("MOVE", shared, None, {"Destination": p.server.url + shared + "-x"}),
        "PROPFIND": ("PROPFIND", shared, None, {"Depth": "0"}),
        "GET": ("GET", shared, None, {}),
        "GET child": ("GET", child, None, {}),
        "PROPFIND Depth 1": ("PROPFIND", shared + "/", None, {"Depth": "1"}),
        "PROPPATCH child": ("PROPPATCH", child, PROPPATCH, {}),
        "LOCK child": ("LOCK", child, LOCK, {"Timeout": "Second-60"}),
        "PUT": ("PUT", shared, b"changed", {}),
        "PUT child": ("PUT", f"{shared}/new.txt", b"new", {}),
        "MKCOL child": ("MKCOL", f"{shared}/sub/", None, {}),
        "MOVE child": ("MOVE", child, None, {"Destination": p.server.url + f"{shared}/moved.txt"}),
        "PROPPATCH": ("PROPPATCH", shared, PROPPATCH, {}),
        "LOCK": ("LOCK", shared, LOCK, {"Timeout": "Second-60"}),
        "COPY out": ("COPY", shared, None, out),
        "DELETE child": ("DELETE", child, None, {}),
        "DELETE": ("DELETE", shared, None, {}),
    }
    method_name, path, body, headers = requests[method]
    return p.call(p.bob, method_name, path, body, headers).status


@pytest.mark.parametrize("method", list(FILE_CELLS))
def test_matrix_file(people: People, method: str) -> None:
    got = tuple(run_cell(people, "file", method, right) for right in RIGHTS)
    assert got == FILE_CELLS[method], dict(zip(RIGHTS, got, strict=True))


@pytest.mark.parametrize("method", list(FOLDER_CELLS))
def test_matrix_folder(people: People, method: str) -> None:
    got = tuple(run_cell(people, "folder", method, right) for right in RIGHTS)
    assert got == FOLDER_CELLS[method], dict(zip(RIGHTS, got, strict=True))


# -- what others see


def test_unshared_items_answer_like_missing(people: People) -> None:
    p = people
    assert p.put(p.alice, "/files/private.txt") == 201
    assert p.call(p.carol, "GET", f"/shared/{p.alice}/private.txt").status == 404
    assert p.call(p.carol, "PROPFIND", f"/shared/{p.alice}/", headers={"Depth": "0"}).status == 404
    assert p.call(p.carol, "DELETE", f"/shared/{p.alice}/private.txt").status == 404


def test_a_space_has_one_url_whatever_case_its_owners_name_is_typed_in(people: People) -> None:
    """Owner and group names are found in any case on the command line, but a URL is the
    spelling its listing gives: clients compare URLs byte for byte, and a second URL for one
    item would be a second item to a sync client (and two lock roots)."""
    p = people
    assert p.put(p.alice, "/files/note.txt") == 201
    assert p.grant(p.alice, "/files/note.txt", p.bob, "read", "download") == 201
    assert p.put(p.alice, f"/groups/{p.team}/plan.txt") == 201
    assert p.call(p.bob, "GET", f"/shared/{p.alice}/note.txt").status == 200
    assert p.call(p.bob, "GET", f"/groups/{p.team}/plan.txt").status == 200
    assert p.call(p.bob, "GET", f"/shared/{p.alice.upper()}/note.txt").status == 404
    assert p.call(p.bob, "GET", f"/groups/{p.team.upper()}/plan.txt").status == 404


def test_listing_shows_only_the_shared_child(people: People) -> None:
    p = people
    assert p.call(p.alice, "MKCOL", "/files/mixed/").status == 201
    for name in ("shared.txt", "p1.txt", "p2.txt"):
        assert p.put(p.alice, f"/files/mixed/{name}") == 201
    assert p.grant(p.alice, "/files/mixed/shared.txt", p.bob, "read") == 201
    listing = p.call(p.bob, "PROPFIND", f"/shared/{p.alice}/", headers={"Depth": "1"})
    assert listing.status == 207
    assert b"shared.txt" in listing.body and b"p1.txt" not in listing.body
    assert (
        p.call(p.bob, "PROPFIND", f"/shared/{p.alice}/mixed", headers={"Depth": "0"}).status == 404
    )
    root = p.call(p.bob, "PROPFIND", "/shared/", headers={"Depth": "1"})
    assert p.alice.encode() in root.body


def test_copy_into_another_users_tree_needs_write_there(people: People) -> None:
    p = people
    assert p.call(p.alice, "MKCOL", "/files/inbox/").status == 201
    assert p.call(p.alice, "MKCOL", "/files/readonly/").status == 201
    assert p.grant(p.alice, "/files/inbox", p.bob, "write") == 201
    assert p.grant(p.alice, "/files/readonly", p.bob, "read") == 201
    assert p.put(p.bob, "/files/mine.txt", b"from bob") == 201
    into = f"{p.server.url}/shared/{p.alice}/readonly/mine.txt"
    assert p.call(p.bob, "COPY", "/files/mine.txt", headers={"Destination": into}).status == 403
    into = f"{p.server.url}/shared/{p.alice}/inbox/mine.txt"
    assert p.call(p.bob, "COPY", "/files/mine.txt", headers={"Destination": into}).status == 201
    assert p.call(p.alice, "GET", "/files/inbox/mine.txt").body == b"from bob"
    with p.server.app.db.read() as session:
        owners = set(
            session.scalars(
                sa.select(Node.owner_id).where(Node.name == "mine.txt", Node.deleted_at.is_(None))
            )
        )
    ids = {p.server.app.services.users.user_id(n) for n in (p.alice, p.bob)}
    assert owners == ids  # bob's original and alice's copy


# -- MOVE into another space: a copy there, the source to its own trash (RFC 4918 9.9)


def rows_named(p: People, name: str) -> list[sa.Row[Any]]:
    """(parent_id, group_id) of the rows, live or in a trashed folder, named ``name``."""
    with p.server.app.db.read() as session:
        query = sa.select(Node.parent_id, Node.group_id).where(Node.name == name)
        return list(session.execute(query))


def test_a_folder_moved_into_a_group_takes_its_history_and_leaves_the_quota(
    people: People,
) -> None:
    """Finder, Explorer and GNOME Files drag items between the folders of one mounted drive
    with MOVE. Between ``/files/`` and ``/groups/<group>/`` it was refused (403, "copy them
    instead"), and a drag of a folder failed. It moves now: every version and dead property
    goes along, the mover's quota is freed, and the original waits in the mover's trash."""
    p = people
    users = p.server.app.services.users
    bob = users.user_id(p.bob)
    assert p.call(p.bob, "MKCOL", "/files/report/").status == 201
    assert p.put(p.bob, "/files/report/draft.txt", b"one") == 201
    assert p.put(p.bob, "/files/report/draft.txt", b"two!") == 204
    assert p.call(p.bob, "PROPPATCH", "/files/report/draft.txt", PROPPATCH).status == 207
    used_before = p.server.app.files.usage(bob)[0]

    into = {"Destination": f"{p.server.url}/groups/{p.team}/report/"}
    moved = p.call(p.bob, "MOVE", "/files/report/", headers=into)

    assert moved.status == 201, moved.body
    assert p.call(p.bob, "PROPFIND", "/files/report/", headers={"Depth": "0"}).status == 404
    moved_file = f"/groups/{p.team}/report/draft.txt"
    assert p.call(p.alice, "GET", moved_file).body == b"two!"
    assert p.call(p.alice, "GET", moved_file + "?version=1").body == b"one"
    props = p.call(p.alice, "PROPFIND", moved_file, PROPFIND_COLOR, {"Depth": "0"})
    assert b">red<" in props.body
    assert p.server.app.files.usage(bob)[0] == used_before - 4
    (copy,) = [row for row in rows_named(p, "draft.txt") if row.group_id is not None]
    # The original is in bob's trash.
    trash = p.call(p.bob, "PROPFIND", "/trash/", headers={"Depth": "1"})
    assert b"report" in trash.body
    with p.server.app.db.read() as session:
        details = session.scalars(
            sa.select(LogEntry.details).where(
                LogEntry.op_type == Op.NODE_MOVE.value, LogEntry.node_id == copy.parent_id
            )
        ).one()
    assert details["after"]["name"] == "report" and "source" in details


def test_moving_out_of_a_share_needs_download_and_leaves_the_owner_a_trashed_original(
    people: People,
) -> None:
    """Moving an item out of a folder shared with you puts its bytes in your own space, out of
    the owner's reach and control: it needs the download right, as a COPY out does. The
    owner finds the original in their trash."""
    p = people
    assert p.call(p.alice, "MKCOL", "/files/drop/").status == 201
    assert p.put(p.alice, "/files/drop/secret.txt", b"eyes only") == 201
    assert p.put(p.alice, "/files/drop/plan.txt", b"the plan") == 201
    assert p.grant(p.alice, "/files/drop", p.bob, "read", "write") == 201
    assert p.grant(p.alice, "/files/drop/plan.txt", p.bob, "read", "write", "download") == 201
    shared = f"/shared/{p.alice}/"

    def move(name: str) -> Response:
        into = {"Destination": f"{p.server.url}/files/{name}"}
        return p.call(p.bob, "MOVE", shared + "drop/" + name, headers=into)

    refused = move("secret.txt")
    assert refused.status == 403
    assert b"download right" in refused.body
    assert p.call(p.alice, "GET", "/files/drop/secret.txt").body == b"eyes only"
    assert p.call(p.bob, "GET", "/files/secret.txt").status == 404
    # Nor by way of a folder of the owner's where bob may download: two MOVEs did it.
    assert p.call(p.alice, "MKCOL", "/files/open/").status == 201
    assert p.grant(p.alice, "/files/open", p.bob, "read", "write", "download") == 201
    into = {"Destination": f"{p.server.url}/shared/{p.alice}/open/secret.txt"}
    assert p.call(p.bob, "MOVE", shared + "drop/secret.txt", headers=into).status == 403
    assert p.call(p.bob, "GET", f"/shared/{p.alice}/open/secret.txt").status == 404
    assert p.call(p.alice, "GET", "/files/drop/secret.txt").body == b"eyes only"
    # Nor onto a file he may download, in the same folder: moved onto a file, the bytes
    # become its newest version.
    assert p.put(p.alice, "/files/drop/notes.txt", b"notes") == 201
    assert p.grant(p.alice, "/files/drop/notes.txt", p.bob, "read", "download") == 201
    onto = {"Destination": f"{p.server.url}{shared}drop/notes.txt", "Overwrite": "T"}
    refused = p.call(p.bob, "MOVE", shared + "drop/secret.txt", headers=onto)
    assert refused.status == 403, (refused.status, refused.body[:300])
    assert p.call(p.bob, "GET", shared + "drop/notes.txt").body == b"notes"
    assert p.call(p.alice, "GET", "/files/drop/secret.txt").body == b"eyes only"

    assert move("plan.txt").status == 201
    assert p.call(p.bob, "GET", "/files/plan.txt").body == b"the plan"
    assert p.call(p.alice, "GET", "/files/drop/plan.txt").status == 404
    trash = p.call(p.alice, "PROPFIND", "/trash/", headers={"Depth": "1"})
    assert b"plan.txt" in trash.body


def test_a_writer_who_may_not_download_cannot_move_an_item_where_others_reach_it(
    people: People,
) -> None:
    """bob may write in two of alice's folders and download in neither; carol (or a group)
    may read and download in the second. bob's MOVE of a file from the first into the second
    let carol download what neither was given: moving where grants reach someone more is
    sharing, and needs the download right, as a COPY does. Moves that reach nobody new
    (within a folder, or between folders with the same grantees) stay open to him."""
    p = people
    for folder in ("first", "second", "same"):
        assert p.call(p.alice, "MKCOL", f"/files/{folder}/").status == 201
        assert p.grant(p.alice, f"/files/{folder}", p.bob, "read", "write") == 201
    assert p.put(p.alice, "/files/first/secret.txt", b"alice only") == 201
    assert p.put(p.alice, "/files/first/doc.txt", b"alice's doc") == 201
    assert p.put(p.alice, "/files/second/public.txt", b"for carol") == 201
    assert p.grant(p.alice, "/files/second", p.carol, "read", "download") == 201
    shared = f"{p.server.url}/shared/{p.alice}/"

    def move(source: str, dest: str, overwrite: str = "F") -> Response:
        headers = {"Destination": shared + dest, "Overwrite": overwrite}
        return p.call(p.bob, "MOVE", f"/shared/{p.alice}/{source}", headers=headers)

    for dest, overwrite in (("second/secret.txt", "F"), ("second/public.txt", "T")):
        refused = move("first/secret.txt", dest, overwrite)
        assert refused.status == 403 and b"download right" in refused.body, refused.status
    refused = move("first/", "second/first/")  # a whole folder, with what is in it
    assert refused.status == 403, refused.status
    assert p.call(p.carol, "GET", f"/shared/{p.alice}/second/public.txt").body == b"for carol"
    assert p.call(p.alice, "GET", "/files/first/secret.txt").body == b"alice only"
    # A file of its own granted to someone: overwriting it gives them the bytes too.
    assert p.put(p.alice, "/files/first/card.txt", b"for the team") == 201
    assert p.grant(p.alice, "/files/first/card.txt", p.team, "read", group=True) == 201
    assert move("first/secret.txt", "first/card.txt", "T").status == 403
    assert p.call(p.alice, "GET", "/files/first/card.txt").body == b"for the team"
    # A group reached where a user was not: the same.
    assert p.grant(p.alice, "/files/same", p.team, "read", group=True) == 201
    assert move("first/secret.txt", "same/secret.txt").status == 403
    assert p.revoke(p.alice, "/files/same", p.team, group=True) == 204
    # Reaching someone for longer: carol's grant ends tomorrow where the file is, never
    # where bob would move it.
    for folder, days in (("soon", 1), ("later", 0)):
        assert p.call(p.alice, "MKCOL", f"/files/{folder}/").status == 201
        assert p.grant(p.alice, f"/files/{folder}", p.bob, "read", "write") == 201
        grant = {"path": f"/files/{folder}", "user": p.carol, "rights": ["read", "download"]}
        status, _ = p.api(
            p.alice, "POST", "/grants", {**grant, "expires_days": days} if days else grant
        )
        assert status == 201
    assert p.put(p.alice, "/files/soon/brief.txt", b"for a day") == 201
    assert move("soon/brief.txt", "later/brief.txt").status == 403
    assert move("soon/brief.txt", "soon/renamed.txt").status == 201
    # Reaching nobody new: a rename, and a move between folders shared alike.
    assert move("first/doc.txt", "first/renamed.txt").status == 201
    assert move("first/renamed.txt", "same/doc.txt").status == 201
    assert p.call(p.alice, "GET", "/files/same/doc.txt").body == b"alice's doc"


def test_a_long_upload_that_outlived_its_writers_grant_stores_nothing(people: People) -> None:
    """bob began a long upload into alice's folder; his grant was revoked before its last
    byte arrived. The upload was judged by the rights it began with and landed: 201, a file
    of bob's bytes in alice's folder after she had taken his access away. An upload that took
    more than a second is judged again when it is recorded."""
    p = people
    assert p.call(p.alice, "MKCOL", "/files/inbox/").status == 201
    assert p.put(p.alice, "/files/inbox/kept.txt", b"alice's") == 201
    assert p.grant(p.alice, "/files/inbox", p.bob, "read", "write") == 201
    body = b"b" * 100_000
    for name in ("late.txt", "kept.txt"):  # a new file, and a new version of one
        path = f"/shared/{p.alice}/inbox/{name}"
        status = slow_put(
            p, p.bob, path, body, after=lambda: p.revoke(p.alice, "/files/inbox", p.bob)
        )
        assert status == b"403", (name, status)
        assert p.grant(p.alice, "/files/inbox", p.bob, "read", "write") == 201
    assert p.call(p.alice, "GET", "/files/inbox/late.txt").status == 404
    assert p.call(p.alice, "GET", "/files/inbox/kept.txt").body == b"alice's"
    # Its file deleted meanwhile: made again, as a short upload's is (not "you may no longer
    # write here"); its account disabled meanwhile: refused.
    assert p.put(p.alice, "/files/inbox/gone.txt", b"alice's") == 201
    deleting = lambda: p.call(p.alice, "DELETE", "/files/inbox/gone.txt")  # noqa: E731
    assert slow_put(p, p.alice, "/files/inbox/gone.txt", body, after=deleting) == b"201"
    users = p.server.app.services.users
    disabling = lambda: users.disable_user(None, p.bob)  # noqa: E731
    assert slow_put(p, p.bob, f"/shared/{p.alice}/inbox/off.txt", body, after=disabling) == b"403"
    users.enable_user(None, p.bob)
    assert p.call(p.alice, "GET", "/files/inbox/off.txt").status == 404
    # A quota set while it ran (alice had none when it began) holds for it too: 507.
    assert (
        slow_put(
            p,
            p.bob,
            f"/shared/{p.alice}/inbox/big.txt",
            body,
            after=lambda: p.server.app.services.users.set_quota(None, p.alice, 50_000),
        )
        == b"507"
    )
    assert p.call(p.alice, "GET", "/files/inbox/big.txt").status == 404


def slow_put(p: People, who: str, path: str, body: bytes, *, after: Any) -> bytes:
    """PUT ``body`` as ``who``, its first KB, then ``after()``, the rest over a second after
    the first; the status of the answer."""
    with socket.create_connection(("127.0.0.1", p.server.port), timeout=30) as sock:
        head = [
            f"PUT {path} HTTP/1.1",
            "Host: 127.0.0.1",
            f"Authorization: {basic_auth_header(who, p.passwords[who])}",
            f"Content-Length: {len(body)}",
        ]
        sock.sendall(("\r\n".join(head) + "\r\n\r\n").encode() + body[:1000])
        time.sleep(0.5)
        after()
        time.sleep(0.7)  # over a second since the body began
        sock.sendall(body[1000:])
        return sock.makefile("rb").readline().split()[1]


def test_an_office_save_pattern_gives_no_bytes_to_a_writer_who_may_not_download_them(
    people: People,
) -> None:
    """An office save's three MOVEs swap two files' contents (the document takes the saved
    bytes back, the .tmp the document's old ones). Done by a grantee who may write in the
    folder but download only one of the files, that swap would put the other's bytes on the
    file they may download: the save is then two plain renames."""
    p = people
    assert p.call(p.alice, "MKCOL", "/files/p2/").status == 201
    assert p.put(p.alice, "/files/p2/secret.docx", b"TOP-SECRET-DOC") == 201
    assert p.put(p.alice, "/files/p2/mine.txt", b"bob may read this") == 201
    assert p.grant(p.alice, "/files/p2", p.bob, "read", "write") == 201
    assert p.grant(p.alice, "/files/p2/mine.txt", p.bob, "read", "download") == 201
    shared = f"/shared/{p.alice}/p2/"

    def move(source: str, dest: str) -> int:
        into = {"Destination": f"{p.server.url}{shared}{dest}"}
        return p.call(p.bob, "MOVE", shared + source, headers=into).status

    assert p.call(p.bob, "GET", shared + "secret.docx").status == 403
    # The secret moved away to a .tmp name, the downloadable file onto its name.
    assert move("secret.docx", "secret.tmp") == 201
    assert move("mine.txt", "secret.docx") == 201
    assert p.call(p.bob, "GET", shared + "secret.tmp").status == 403
    assert p.call(p.bob, "GET", shared + "secret.docx").body == b"bob may read this"
    assert p.call(p.alice, "GET", "/files/p2/secret.tmp").body == b"TOP-SECRET-DOC"
    # The other way round: the downloadable file is the document, a file bob may not
    # download the saved content.
    assert p.put(p.alice, "/files/p2/d.txt", b"downloadable") == 201
    assert p.put(p.alice, "/files/p2/y.txt", b"not for bob") == 201
    assert p.grant(p.alice, "/files/p2/d.txt", p.bob, "read", "download") == 201
    assert move("d.txt", "d.tmp") == 201
    assert move("y.txt", "d.txt") == 201
    assert p.call(p.bob, "GET", shared + "d.tmp").body == b"downloadable"
    assert p.call(p.bob, "GET", shared + "d.txt").status == 403
    assert p.call(p.alice, "GET", "/files/p2/d.txt").body == b"not for bob"
    # Where bob may download both, the save keeps the document's history as for the owner.
    assert p.put(p.alice, "/files/p2/doc.txt", b"first draft") == 201
    assert p.put(p.alice, "/files/p2/new.txt", b"second draft") == 201
    assert p.grant(p.alice, "/files/p2", p.bob, "read", "write", "download") == 201
    assert move("doc.txt", "doc.tmp") == 201
    assert move("new.txt", "doc.txt") == 201
    assert p.call(p.bob, "GET", shared + "doc.txt").body == b"second draft"
    assert p.call(p.bob, "GET", shared + "doc.txt?version=1").body == b"first draft"


def test_a_moved_file_whose_content_was_emptied_keeps_its_history(people: People) -> None:
    """An editor saving an empty document over a file (a temporary file renamed over it)
    leaves it with its history and no current version; moved to another space, it arrived
    with no versions at all."""
    p = people
    assert p.put(p.bob, "/files/doc.txt", b"one") == 201
    assert p.put(p.bob, "/files/doc.txt", b"two!") == 204
    assert p.put(p.bob, "/files/.doc.txt.tmp", b"") == 201
    onto = {"Destination": f"{p.server.url}/files/doc.txt", "Overwrite": "T"}
    assert p.call(p.bob, "MOVE", "/files/.doc.txt.tmp", headers=onto).status == 204
    into = {"Destination": f"{p.server.url}/groups/{p.team}/doc.txt"}
    assert p.call(p.bob, "MOVE", "/files/doc.txt", headers=into).status == 201
    moved = f"/groups/{p.team}/doc.txt"
    assert p.call(p.alice, "GET", moved).body == b""
    assert p.call(p.alice, "GET", moved + "?version=1").body == b"one"
    assert p.call(p.alice, "GET", moved + "?version=2").body == b"two!"


def test_a_move_into_another_space_over_the_quota_changes_nothing(people: People) -> None:
    p = people
    p.server.app.services.users.set_quota(None, p.bob, 100)
    assert p.put(p.alice, f"/groups/{p.team}/big.bin", b"g" * 200) == 201
    assert p.put(p.alice, f"/groups/{p.team}/doc.txt", b"group doc, version 2") == 201
    assert p.put(p.bob, "/files/doc.txt", b"bob's doc") == 201
    into = {"Destination": f"{p.server.url}/files/big.bin"}
    assert p.call(p.bob, "MOVE", f"/groups/{p.team}/big.bin", headers=into).status == 507
    assert p.call(p.alice, "GET", f"/groups/{p.team}/big.bin").body == b"g" * 200
    assert p.call(p.bob, "GET", "/files/big.bin").status == 404
    assert p.server.app.files.usage(p.server.app.services.users.user_id(p.bob))[0] == 9
    # Onto a file of the other space: it becomes that file's newest version.
    onto = {"Destination": f"{p.server.url}/files/doc.txt", "Overwrite": "F"}
    assert p.call(p.bob, "MOVE", f"/groups/{p.team}/doc.txt", headers=onto).status == 412
    onto["Overwrite"] = "T"
    assert p.call(p.bob, "MOVE", f"/groups/{p.team}/doc.txt", headers=onto).status == 204
    assert p.call(p.bob, "GET", "/files/doc.txt").body == b"group doc, version 2"
    assert p.call(p.bob, "GET", "/files/doc.txt?version=1").body == b"bob's doc"
    assert p.call(p.alice, "GET", f"/groups/{p.team}/doc.txt").status == 404


@pytest.mark.parametrize(
    "climb",
    ["/files/..", "/files/%2e%2e", "/files/./sub/../..", "{url}/files/.."],
)
def test_a_destination_that_climbs_with_dots_is_checked_where_it_lands(
    people: People, climb: str
) -> None:
    """WsgiDAV resolves ``..`` in a Destination; the rights must be those of where it lands."""
    p = people
    assert p.call(p.alice, "MKCOL", "/files/readonly/").status == 201
    assert p.put(p.alice, "/files/readonly/doc.txt", b"alice's") == 201
    assert p.grant(p.alice, "/files/readonly", p.bob, "read") == 201
    assert p.put(p.bob, "/files/mine.txt", b"from bob") == 201
    prefix = climb.format(url=p.server.url) + f"/shared/{p.alice}/readonly"
    for name in ("new.txt", "doc.txt"):
        into = {"Destination": f"{prefix}/{name}"}
        assert p.call(p.bob, "COPY", "/files/mine.txt", headers=into).status == 403
    assert p.call(p.alice, "GET", "/files/readonly/doc.txt").body == b"alice's"
    assert p.call(p.alice, "GET", "/files/readonly/new.txt").status == 404


def test_copy_into_own_space_counts_against_the_quota(people: People) -> None:
    p = people
    p.server.app.services.users.set_quota(None, p.bob, 1000)
    assert p.put(p.alice, f"/groups/{p.team}/big.bin", b"g" * 600) == 201
    assert p.put(p.alice, "/files/big.bin", b"a" * 600) == 201
    assert p.grant(p.alice, "/files/big.bin", p.bob, "read", "download") == 201
    assert p.put(p.bob, "/files/small.bin", b"s" * 10) == 201

    def copy(source: str, dest: str) -> int:
        into = {"Destination": p.server.url + dest}
        return p.call(p.bob, "COPY", source, headers=into).status

    assert copy(f"/groups/{p.team}/big.bin", "/files/from-group.bin") == 201
    refused = [
        (f"/groups/{p.team}/big.bin", "/files/again.bin"),
        (f"/shared/{p.alice}/big.bin", "/files/from-share.bin"),
        ("/files/from-group.bin", "/files/copy.bin"),
        ("/files/from-group.bin", "/files/small.bin"),  # onto an existing file
    ]
    assert [copy(source, dest) for source, dest in refused] == [507] * len(refused)
    users = p.server.app.services.users
    assert p.server.app.files.usage(users.user_id(p.bob)) == (610, 1000)
    listing = p.call(p.bob, "PROPFIND", "/files/", headers={"Depth": "1"}).body
    assert b"again.bin" not in listing and b"from-share.bin" not in listing
    assert p.call(p.bob, "GET", "/files/small.bin").body == b"s" * 10


def test_read_only_grantee_cannot_move_copy_out_or_lock(people: People) -> None:
    p = people
    assert p.put(p.alice, "/files/doc.txt", b"alice's") == 201
    assert p.grant(p.alice, "/files/doc.txt", p.bob, "read") == 201
    shared = f"/shared/{p.alice}/doc.txt"
    assert (
        p.call(p.bob, "MOVE", shared, headers={"Destination": p.server.url + "/files/x"}).status
        == 403
    )
    assert (
        p.call(p.bob, "COPY", shared, headers={"Destination": p.server.url + "/files/x"}).status
        == 403
    )
    assert p.call(p.bob, "LOCK", shared, LOCK).status == 403
    # So the owner is never blocked by them.
    assert p.put(p.alice, "/files/doc.txt", b"still alice's") == 204


def test_viewer_never_writes_whatever_its_grants(people: People) -> None:
    p = people
    assert p.call(p.alice, "MKCOL", "/files/for-dave/").status == 201
    assert p.grant(p.alice, "/files/for-dave", p.dave, "write", "download") == 201
    shared = f"/shared/{p.alice}/for-dave"
    assert p.call(p.dave, "PROPFIND", shared, headers={"Depth": "0"}).status == 207
    assert p.call(p.dave, "PUT", f"{shared}/x.txt", b"x").status == 403
    assert p.call(p.dave, "LOCK", shared, LOCK).status == 403
    assert p.call(p.dave, "PUT", "/files/own.txt", b"x").status == 403


def test_resharing_is_capped_by_what_the_grantee_holds(people: People) -> None:
    p = people
    assert p.put(p.alice, "/files/reshare.txt") == 201
    assert p.grant(p.alice, "/files/reshare.txt", p.bob, "read", "share") == 201
    shared = f"/shared/{p.alice}/reshare.txt"
    assert p.grant(p.bob, shared, p.carol, "read", "write") == 403
    assert p.grant(p.bob, shared, p.carol, "download") == 403
    assert p.grant(p.bob, shared, p.carol, "read") == 201
    assert p.call(p.carol, "PROPFIND", shared, headers={"Depth": "0"}).status == 207
    # Without share, no resharing at all.
    assert p.grant(p.carol, shared, p.dave, "read") == 403


def test_a_sharer_cannot_lower_or_revoke_what_the_owner_granted(people: People) -> None:
    p = people
    assert p.call(p.alice, "MKCOL", "/files/plans/").status == 201
    assert p.grant(p.alice, "/files/plans", p.bob, "read", "share") == 201
    assert p.grant(p.alice, "/files/plans", p.carol, "read", "download", "write") == 201
    assert p.grant(p.alice, "/files/plans", p.dave, "read") == 201
    shared = f"/shared/{p.alice}/plans"
    # Not even a grant bob could have made himself (dave's read), nor his own (which he may
    # only decline whole: test_a_grantee_may_decline_what_was_shared_with_them).
    for grantee, rights in ((p.carol, ["read"]), (p.dave, ["read"]), (p.bob, ["read"])):
        status, body = p.api(
            p.bob, "POST", "/grants", {"path": shared, "user": grantee, "rights": rights}
        )
        assert status == 403 and f"made by {p.alice}" in body["message"], body
        if grantee != p.bob:
            assert p.revoke(p.bob, shared, grantee) == 403
    assert p.rights_on("/files/plans") == {
        p.bob: ["read", "share"],
        p.carol: ["read", "download", "write"],
        p.dave: ["read"],
    }
    assert p.put(p.carol, f"{shared}/still-mine.txt") == 201
    # The owner still replaces and revokes as before.
    assert p.grant(p.alice, "/files/plans", p.carol, "read") == 201
    assert p.put(p.carol, f"{shared}/no-more.txt") == 403
    assert p.revoke(p.alice, "/files/plans", p.carol) == 204
    assert p.rights_on("/files/plans") == {p.bob: ["read", "share"], p.dave: ["read"]}


def test_a_grantee_may_decline_what_was_shared_with_them(people: People) -> None:
    """bob could not remove alice's grant to him (403 "you may not change the sharing"): a
    share he did not want stayed in his /shared/ for good. He may remove his own grant now,
    and only his: not another grantee's, nor a group's he is in; and a grant that is not
    there is refused as one that is, to whoever may not share."""
    p = people
    assert p.put(p.alice, "/files/unwanted.txt", b"spam") == 201
    assert p.grant(p.alice, "/files/unwanted.txt", p.bob, "read") == 201
    assert p.grant(p.alice, "/files/unwanted.txt", p.carol, "read") == 201
    assert p.grant(p.alice, "/files/unwanted.txt", p.team, "read", group=True) == 201
    entry = f"/shared/{p.alice}/unwanted.txt"
    for other in (("user", p.carol), ("group", p.team), ("user", p.dave)):
        status, _ = p.api(p.bob, "DELETE", f"/grants?path={entry}&{other[0]}={other[1]}")
        assert status == 403, (other, status)
    status, _ = p.api(p.bob, "DELETE", f"/grants?path={entry}&user={p.bob}")
    assert status == 204
    assert sorted(p.rights_on("/files/unwanted.txt")) == sorted([p.carol, "@" + p.team])
    with p.server.app.db.read() as session:
        row = session.scalars(
            sa.select(LogEntry.details)
            .where(LogEntry.op_type == Op.GRANT_REVOKE.value)
            .order_by(LogEntry.id.desc())
        ).first()
    assert row is not None and row["grantee"] == p.bob


def test_grants_sent_at_once_leave_one_grant_that_a_revoke_removes(people: People) -> None:
    """Two grants to bob on one folder sent at once each found no grant there and each
    inserted one (PostgreSQL): a later lowering or revoke changed one row, and bob kept the
    other's rights. The database holds one grant per item and grantee, and a grant that
    loses that race replaces the winner's, as if it had come second."""
    p = people
    assert p.call(p.alice, "MKCOL", "/files/raced/").status == 201
    assert p.put(p.alice, "/files/raced/x.txt", b"x") == 201
    sets = [("read",), ("read", "download", "write"), ("read", "download")] * 3
    for grantee, group in ((p.bob, False), (p.team, True)):
        with concurrent.futures.ThreadPoolExecutor(len(sets)) as pool:
            sent = [
                pool.submit(p.grant, p.alice, "/files/raced", grantee, *rights, group=group)
                for rights in sets
            ]
        assert [future.result() for future in sent] == [201] * len(sets)
    with p.server.app.db.read() as session:
        node = session.scalars(sa.select(Node.id).where(Node.name == "raced")).one()
        grantees = session.execute(
            sa.select(Grant.user_id, Grant.group_id).where(Grant.node_id == node)
        ).all()
    assert len(grantees) == 2, grantees
    assert p.revoke(p.alice, "/files/raced", p.bob) == 204
    assert p.revoke(p.alice, "/files/raced", p.team, group=True) == 204
    assert p.call(p.bob, "GET", f"/shared/{p.alice}/raced/x.txt").status == 404
    with p.server.app.db.read() as session, pytest.raises(sa.exc.IntegrityError):
        for _ in range(2):
            session.add(Grant(node_id=node, user_id=grantees[0].user_id, can_read=True))
            session.flush()


def test_a_sharer_manages_the_grants_they_made(people: People) -> None:
    p = people
    assert p.call(p.alice, "MKCOL", "/files/reshared/").status == 201
    assert p.grant(p.alice, "/files/reshared", p.bob, "read", "download", "share") == 201
    shared = f"/shared/{p.alice}/reshared"
    assert p.grant(p.bob, shared, p.carol, "read") == 201
    assert p.grant(p.bob, shared, p.carol, "read", "download") == 201  # replaces his own
    assert p.grant(p.bob, shared, p.carol, "read", "write") == 403  # still capped
    assert p.rights_on("/files/reshared")[p.carol] == ["read", "download"]
    assert p.revoke(p.bob, shared, p.carol) == 204
    assert p.call(p.carol, "PROPFIND", shared, headers={"Depth": "0"}).status == 404
    # Once the owner replaced bob's grant, it is the owner's: bob no longer changes it.
    assert p.grant(p.bob, shared, p.carol, "read") == 201
    assert p.grant(p.alice, "/files/reshared", p.carol, "read", "write") == 201
    assert p.revoke(p.bob, shared, p.carol) == 403
    assert p.rights_on("/files/reshared")[p.carol] == ["read", "write"]
    # And the owner revokes what bob granted, as does an admin.
    assert p.grant(p.bob, shared, p.dave, "read") == 201
    assert p.revoke(p.alice, "/files/reshared", p.dave) == 204
    admin = f"adm{uuid.uuid4().hex[:6]}"
    p.passwords[admin] = f"pw-{uuid.uuid4().hex}"
    p.server.app.services.users.create_user(
        None, admin, password=p.passwords[admin], roles=["admin"]
    )
    assert p.grant(p.bob, shared, p.dave, "read") == 201
    assert p.revoke(admin, f"/users/{p.alice}/reshared", p.dave) == 204
    assert p.rights_on("/files/reshared") == {
        p.bob: ["read", "download", "share"],
        p.carol: ["read", "write"],
    }


def test_a_sharer_cannot_lower_or_revoke_a_group_grant_the_owner_made(people: People) -> None:
    p = people
    assert p.call(p.alice, "MKCOL", "/files/for-team/").status == 201
    assert p.grant(p.alice, "/files/for-team", p.carol, "read", "share") == 201
    assert p.grant(p.alice, "/files/for-team", p.team, "read", "write", group=True) == 201
    shared = f"/shared/{p.alice}/for-team"
    assert p.grant(p.carol, shared, p.team, "read", group=True) == 403
    assert p.revoke(p.carol, shared, p.team, group=True) == 403
    assert p.rights_on("/files/for-team")["@" + p.team] == ["read", "write"]
    assert p.put(p.bob, f"{shared}/team-note.txt") == 201
    assert p.revoke(p.alice, "/files/for-team", p.team, group=True) == 204


def test_in_a_group_space_its_admins_manage_every_grant(people: People) -> None:
    p = people
    item = f"/groups/{p.team}/agenda.txt"
    assert p.put(p.bob, item) == 201  # bob owns the file; alice is the group's admin
    assert p.grant(p.alice, item, p.carol, "read", "share") == 201
    shared = f"/shared/@{p.team}/agenda.txt"
    assert p.grant(p.carol, shared, p.dave, "read") == 201
    assert p.grant(p.alice, item, p.dave, "read", "download") == 201  # replaces carol's
    assert p.revoke(p.carol, shared, p.dave) == 403
    assert p.revoke(p.alice, item, p.dave) == 204
    assert p.revoke(p.alice, item, p.carol) == 204


def test_expired_grant_is_ignored(people: People) -> None:
    p = people
    assert p.put(p.alice, "/files/expiring.txt") == 201
    assert p.grant(p.alice, "/files/expiring.txt", p.bob, "download") == 201
    assert p.call(p.bob, "GET", f"/shared/{p.alice}/expiring.txt").status == 200
    with p.server.app.db.write() as session:
        session.execute(
            sa.update(Grant)
            .where(Grant.user_id == p.server.app.services.users.user_id(p.bob))
            .values(expires_at=dt.datetime.now(dt.UTC) - dt.timedelta(seconds=1))
        )
    assert p.call(p.bob, "GET", f"/shared/{p.alice}/expiring.txt").status == 404


def test_who_else_has_access_is_for_those_who_may_share(people: People) -> None:
    p = people
    assert p.put(p.alice, "/files/confidential.txt") == 201
    assert p.grant(p.alice, "/files/confidential.txt", p.bob, "read") == 201
    assert p.grant(p.alice, "/files/confidential.txt", p.carol, "read", "share") == 201
    assert p.grant(p.alice, "/files/confidential.txt", p.team, "download", group=True) == 201
    shared = f"/shared/{p.alice}/confidential.txt"

    def grantees(who: str) -> list[str]:
        status, listed = p.api(who, "GET", f"/grants?path={shared}")
        assert status == 200, listed
        return sorted(g["grantee"] for g in listed["grants"])

    # A reader sees the grants that reach them (their own, their groups'), not the others.
    assert grantees(p.bob) == sorted([p.bob, "@" + p.team])
    # Whoever may share sees them all, as the owner does.
    assert grantees(p.carol) == sorted([p.bob, p.carol, "@" + p.team])
    assert sorted(p.rights_on("/files/confidential.txt")) == grantees(p.carol)
    # The owner's read-only key lists them all too: listing is reading.
    status, key = p.api(p.alice, "POST", "/keys", {"name": "audit", "scope": "read"})
    assert status == 201
    p.passwords[p.alice] = key["key"]
    assert sorted(p.rights_on("/files/confidential.txt")) == grantees(p.carol)


def test_revoke_names_its_grantee_as_grant_does(people: People) -> None:
    p = people
    assert p.put(p.alice, "/files/named.txt") == 201
    # Names are unique ignoring case: a grant to BOB is bob's, and so is its revoke.
    assert p.grant(p.alice, "/files/named.txt", p.bob.upper(), "read") == 201
    assert p.grant(p.alice, "/files/named.txt", p.team.upper(), "read", group=True) == 201
    # Exactly one grantee, as for a grant: not silently the user of the two.
    for query in ("", f"&user={p.bob}&group={p.team}"):
        status, body = p.api(p.alice, "DELETE", f"/grants?path=/files/named.txt{query}")
        assert (status, body["error"]) == (400, "bad_request"), body
    assert p.rights_on("/files/named.txt") == {p.bob: ["read"], "@" + p.team: ["read"]}
    assert p.revoke(p.alice, "/files/named.txt", p.bob.upper()) == 204
    assert p.revoke(p.alice, "/files/named.txt", p.team.upper(), group=True) == 204
    assert p.rights_on("/files/named.txt") == {}


def test_a_reshare_never_outlives_the_sharers_own_grant(people: People) -> None:
    # Bob may share for a week: a grant he makes (to carol, or to a group he is in, which
    # would give him back the access) must end with his, however long he asks for.
    p = people
    assert p.call(p.alice, "MKCOL", "/files/for-a-week/").status == 201
    payload = {"path": "/files/for-a-week", "user": p.bob, "expires_days": 7}
    status, bobs = p.api(p.alice, "POST", "/grants", {**payload, "rights": ["read", "share"]})
    assert status == 201
    shared = f"/shared/{p.alice}/for-a-week"
    for asked in ({}, {"expires_days": 36500}):
        status, made = p.api(
            p.bob, "POST", "/grants", {"path": shared, "user": p.carol, "rights": ["read"], **asked}
        )
        assert status == 201 and made["expires_at"] == bobs["expires_at"], made
        status, made = p.api(
            p.bob, "POST", "/grants", {"path": shared, "group": p.team, "rights": ["read"], **asked}
        )
        assert status == 201 and made["expires_at"] == bobs["expires_at"], made
    # A shorter expiry stays as asked.
    status, made = p.api(
        p.bob,
        "POST",
        "/grants",
        {"path": shared, "user": p.carol, "rights": ["read"], "expires_days": 1},
    )
    assert status == 201 and made["expires_at"] < bobs["expires_at"]
    # With a lasting right from another grant (his group's, without expiry), no cap.
    assert p.grant(p.alice, "/files/for-a-week", p.team, "read", "share", group=True) == 201
    status, made = p.api(
        p.bob, "POST", "/grants", {"path": shared, "user": p.dave, "rights": ["read"]}
    )
    assert status == 201 and made["expires_at"] is None, made
    # The owner's grants are never capped.
    status, made = p.api(
        p.alice, "POST", "/grants", {**payload, "rights": ["read"], "expires_days": 3650}
    )
    assert status == 201 and made["expires_at"] > bobs["expires_at"]


def test_a_reshare_ends_with_the_sharers_grant_when_that_is_given_an_expiry(
    people: People,
) -> None:
    """Bob shared on (to carol, who shared on to dave) while his own grant had no expiry;
    alice then gives his grant one: what was shared on from it ends then too, however far
    down, and a logbook row says so. A grant that lasts by another grant does not."""
    p = people
    assert p.call(p.alice, "MKCOL", "/files/open-ended/").status == 201
    assert p.put(p.alice, "/files/open-ended/doc.txt") == 201
    assert p.grant(p.alice, "/files/open-ended", p.bob, "read", "download", "share") == 201
    shared = f"/shared/{p.alice}/open-ended"
    assert p.grant(p.bob, shared, p.carol, "read", "download", "share") == 201
    assert p.grant(p.carol, shared, p.dave, "read") == 201
    assert p.grant(p.alice, "/files/open-ended", p.team, "read", group=True) == 201

    def expiries() -> dict[str, str | None]:
        status, listed = p.api(p.alice, "GET", "/grants?path=/files/open-ended")
        assert status == 200, listed
        return {g["grantee"]: g["expires_at"] for g in listed["grants"]}

    assert set(expiries().values()) == {None}
    rights = ["read", "download", "share"]
    payload = {"path": "/files/open-ended", "user": p.bob, "rights": rights, "expires_days": 2}
    status, bobs = p.api(p.alice, "POST", "/grants", payload)
    assert status == 201 and bobs["expires_at"] is not None
    ends = bobs["expires_at"]
    assert expiries() == {p.bob: ends, p.carol: ends, p.dave: ends, "@" + p.team: None}
    assert p.call(p.dave, "PROPFIND", shared, headers={"Depth": "0"}).status == 207
    with p.server.app.db.read() as session:
        changed = session.scalars(
            sa.select(LogEntry.details).where(LogEntry.op_type == Op.GRANT_CREATE.value)
        ).all()
    capped = [d for d in changed if d.get("because") == f"{p.bob}'s grant was changed"]
    assert sorted(d["grantee"] for d in capped) == sorted([p.carol, p.dave])
    assert all(d["after"] == {"expires_at": ends} for d in capped)

    # When bob's grant is over, so are theirs (bob still reads it as a member of the team).
    with p.server.app.db.write() as session:
        session.execute(
            sa.update(Grant)
            .where(Grant.expires_at.is_not(None))
            .values(expires_at=dt.datetime.now(dt.UTC) - dt.timedelta(seconds=1))
        )
    for who in (p.carol, p.dave):
        assert p.call(who, "PROPFIND", shared, headers={"Depth": "0"}).status == 404


def test_a_reshare_with_lasting_support_is_not_given_an_expiry(people: People) -> None:
    """Bob may share by his group's grant too, which does not expire: giving his own grant an
    expiry leaves what he shared on as it was."""
    p = people
    assert p.call(p.alice, "MKCOL", "/files/held-twice/").status == 201
    assert p.grant(p.alice, "/files/held-twice", p.bob, "read", "share") == 201
    assert p.grant(p.alice, "/files/held-twice", p.team, "read", "share", group=True) == 201
    assert p.grant(p.bob, f"/shared/{p.alice}/held-twice", p.carol, "read") == 201
    payload = {"path": "/files/held-twice", "user": p.bob, "rights": ["read", "share"]}
    status, _ = p.api(p.alice, "POST", "/grants", {**payload, "expires_days": 1})
    assert status == 201
    status, listed = p.api(p.alice, "GET", "/grants?path=/files/held-twice")
    assert status == 200
    assert {g["grantee"]: g["expires_at"] is None for g in listed["grants"]} == {
        p.bob: False,
        "@" + p.team: True,
        p.carol: True,
    }


def test_a_reshare_goes_when_its_item_leaves_what_the_sharer_may_share(people: People) -> None:
    """Bob may share in alice's /files/pub/ and shared pub/inner on to carol. Alice moves
    inner within pub: carol keeps it. Alice moves it out of pub, or restores it from the trash
    outside pub: bob may not share it there, so carol's grant goes, with a logbook row."""
    p = people
    for folder in ("pub", "pub/inner", "pub/deeper", "pub/other", "vault"):
        assert p.call(p.alice, "MKCOL", f"/files/{folder}/").status == 201
    assert p.put(p.alice, "/files/pub/inner/i.txt", b"inner") == 201
    assert p.put(p.alice, "/files/pub/other/o.txt", b"other") == 201
    assert p.grant(p.alice, "/files/pub", p.bob, "read", "download", "share") == 201
    for name in ("inner", "other"):
        assert p.grant(p.bob, f"/shared/{p.alice}/pub/{name}", p.carol, "download") == 201
    inner, other = f"/shared/{p.alice}/inner/i.txt", f"/shared/{p.alice}/other/o.txt"
    assert p.call(p.carol, "GET", inner).body == b"inner"

    def move(source: str, destination: str) -> int:
        headers = {"Destination": p.server.url + destination}
        return p.call(p.alice, "MOVE", source, headers=headers).status

    assert move("/files/pub/inner/", "/files/pub/deeper/inner/") == 201
    assert p.call(p.carol, "GET", inner).body == b"inner"
    assert move("/files/pub/deeper/inner/", "/files/vault/inner/") == 201
    assert p.call(p.carol, "GET", inner).status == 404
    assert p.rights_on("/files/vault/inner") == {}

    assert p.call(p.alice, "DELETE", "/files/pub/other/").status == 204
    trash = p.call(p.alice, "PROPFIND", "/trash/", headers={"Depth": "1"})
    entry = re.findall(r"<[^>]*href>([^<]*/trash/[^<]*other[^<]*)<", trash.body.decode())
    assert len(entry) == 1, trash.body
    assert move(entry[0], "/files/vault/other/") == 201
    assert p.call(p.carol, "GET", other).status == 404
    assert p.rights_on("/files/vault/other") == {}
    assert p.rights_on("/files/pub") == {p.bob: ["read", "download", "share"]}
    with p.server.app.db.read() as session:
        revoked = session.scalars(
            sa.select(LogEntry.details).where(LogEntry.op_type == Op.GRANT_REVOKE.value)
        ).all()
    reasons = sorted(d["because"] for d in revoked if d["grantee"] == p.carol)
    assert reasons == ["'inner' was moved", "'other' was restored to /files/vault/other"]


@pytest.mark.parametrize("how", ["move", "restore"])
def test_a_reshare_goes_when_its_item_leaves_the_grant_a_right_it_gives_came_from(
    people: People, how: str
) -> None:
    """Bob may write in alice's w (by a grant to him, or to his team) and share w/x (by
    another grant, on x), and gave carol write on x. Alice moves x out of w, or deletes it and
    restores it elsewhere: bob no longer holds write on x, so carol's grant goes. A grant
    without SHARE on the folder left held the reshare up too: the recheck looked for SHARE
    there only, and carol kept writing into alice's folder."""
    p = people
    for folder in ("w", "w/x", "elsewhere"):
        assert p.call(p.alice, "MKCOL", f"/files/{folder}/").status == 201
    to_team = how == "restore"
    writer = p.team if to_team else p.bob
    assert p.grant(p.alice, "/files/w", writer, "read", "write", group=to_team) == 201
    assert p.grant(p.alice, "/files/w/x", p.bob, "read", "share") == 201
    assert p.grant(p.bob, f"/shared/{p.alice}/w/x", p.carol, "read", "write") == 201
    if how == "move":
        headers = {"Destination": p.server.url + "/files/elsewhere/x/"}
        assert p.call(p.alice, "MOVE", "/files/w/x/", headers=headers).status == 201
    else:
        assert p.call(p.alice, "DELETE", "/files/w/x/").status == 204
        listing = p.call(p.alice, "PROPFIND", "/trash/", headers={"Depth": "1"}).body.decode()
        entry = re.findall(r"<[^>]*href>([^<]*/trash/x[^<]*)<", listing)
        assert len(entry) == 1, listing
        headers = {"Destination": p.server.url + "/files/elsewhere/x/"}
        assert p.call(p.alice, "MOVE", entry[0], headers=headers).status == 201
    assert p.rights_on("/files/elsewhere/x") == {p.bob: ["read", "share"]}
    assert p.call(p.carol, "PUT", f"/shared/{p.alice}/x/new.txt", b"carol's").status == 409
    shared = p.call(p.carol, "PROPFIND", f"/shared/{p.alice}/x", headers={"Depth": "0"})
    assert shared.status == 404


def test_a_reshare_of_write_goes_when_its_granter_becomes_a_viewer(people: People) -> None:
    """A viewer may not write, whatever their grants say: bob made a viewer, carol's write
    that bob gave her goes with it (it stood until some other change rechecked the space)."""
    p = people
    assert p.call(p.alice, "MKCOL", "/files/v/").status == 201
    assert p.grant(p.alice, "/files/v", p.bob, "read", "write", "share") == 201
    assert p.grant(p.bob, f"/shared/{p.alice}/v", p.carol, "read", "write") == 201
    assert p.grant(p.bob, f"/shared/{p.alice}/v", p.dave, "read") == 201
    p.server.app.services.users.add_role(None, p.bob, "viewer")
    assert p.rights_on("/files/v") == {p.bob: ["read", "write", "share"], p.dave: ["read"]}
    assert p.call(p.carol, "PUT", f"/shared/{p.alice}/v/new.txt", b"carol's").status == 409


def test_a_move_rereads_the_spaces_grants_only_if_its_grantee_shared_on_in_it(
    people: People,
) -> None:
    """Bob may share in alice's s and shared his own file with carol, nothing of alice's. A
    move out of s leaves no reshare of alice's space to recheck: the space's grants are not
    read (at 200,000 grants on a server that pass took 1.5 s on SQLite). Once bob reshares in
    s, the same move reads them, and carol's grant goes."""
    p = people
    for folder in ("s", "s/a", "s/b", "away"):
        assert p.call(p.alice, "MKCOL", f"/files/{folder}/").status == 201
    assert p.grant(p.alice, "/files/s", p.bob, "read", "download", "share") == 201
    assert p.put(p.bob, "/files/own.txt") == 201
    assert p.grant(p.bob, "/files/own.txt", p.carol, "read") == 201

    def moved(name: str) -> list[str]:
        headers = {"Destination": f"{p.server.url}/files/away/{name}/"}
        with statements(p.server) as seen:
            assert p.call(p.alice, "MOVE", f"/files/s/{name}/", headers=headers).status == 201
        return [s for s in seen if "ORDER BY grants.granted_at" in s]

    assert moved("a") == []
    assert p.grant(p.bob, f"/shared/{p.alice}/s/b", p.carol, "read") == 201
    assert len(moved("b")) == 1
    assert p.rights_on("/files/away/b") == {}


def test_a_reshare_goes_when_a_purge_moves_its_item_out_of_the_sharers_folder(
    people: People,
) -> None:
    """Bob may share in alice's pp/a, and shared pp/a/inner on to carol. Alice deletes inner,
    then a, then purges a: the purge moves inner (a trash item of its own) up into pp, out of
    what bob may share, and a restore from there puts it back in pp, where it is. Carol's
    grant goes with the purge."""
    p = people
    for folder in ("pp", "pp/a", "pp/a/inner"):
        assert p.call(p.alice, "MKCOL", f"/files/{folder}/").status == 201
    assert p.put(p.alice, "/files/pp/a/inner/i.txt", b"inner") == 201
    assert p.grant(p.alice, "/files/pp/a", p.bob, "read", "download", "share") == 201
    assert p.grant(p.bob, f"/shared/{p.alice}/a/inner", p.carol, "download") == 201
    assert p.call(p.carol, "GET", f"/shared/{p.alice}/inner/i.txt").body == b"inner"
    assert p.call(p.alice, "DELETE", "/files/pp/a/inner/").status == 204
    assert p.call(p.alice, "DELETE", "/files/pp/a/").status == 204

    def in_trash(name: str) -> str:
        listing = p.call(p.alice, "PROPFIND", "/trash/", headers={"Depth": "1"}).body.decode()
        hrefs = re.findall(r"<[^>]*href>([^<]*/trash/[^<]*)<", listing)
        found = [h for h in hrefs if h.rstrip("/").rsplit("/", 1)[-1].startswith(name)]
        assert len(found) == 1, hrefs
        return found[0]

    assert p.call(p.alice, "DELETE", in_trash("a")).status == 204
    assert p.rights_on("/files/pp") == {}
    destination = {"Destination": p.server.url + "/files/pp/inner/"}
    assert p.call(p.alice, "MOVE", in_trash("inner"), headers=destination).status == 201
    assert p.rights_on("/files/pp/inner") == {}
    assert p.call(p.carol, "GET", f"/shared/{p.alice}/inner/i.txt").status == 404


def test_group_grant_and_removed_member_on_a_kept_alive_connection(people: People) -> None:
    p = people
    assert p.put(p.alice, "/files/for-team.txt", b"team stuff") == 201
    assert p.grant(p.alice, "/files/for-team.txt", p.team, "download", group=True) == 201
    conn = http.client.HTTPConnection("127.0.0.1", p.server.port, timeout=30)
    auth = {"Authorization": basic_auth_header(p.bob, p.passwords[p.bob])}
    path = f"/shared/{p.alice}/for-team.txt"
    try:
        conn.request("GET", path, headers=auth)
        first = conn.getresponse()
        assert (first.status, first.read()) == (200, b"team stuff")
        p.server.app.services.groups.remove_member(None, p.team, p.bob)
        conn.request("GET", path, headers=auth)  # the same connection
        second = conn.getresponse()
        second.read()
        assert second.status == 404
    finally:
        conn.close()
    assert p.call(p.carol, "GET", path).status == 404


def test_revoke_takes_effect_on_the_next_request_and_is_logged(people: People) -> None:
    p = people
    assert p.put(p.alice, "/files/revoked.txt") == 201
    assert p.grant(p.alice, "/files/revoked.txt", p.bob, "read", "download") == 201
    assert p.grant(p.alice, "/files/revoked.txt", p.bob, "read") == 201  # replaces
    assert p.call(p.bob, "GET", f"/shared/{p.alice}/revoked.txt").status == 403
    status, listing = p.api(p.alice, "GET", "/grants?path=/files/revoked.txt")
    assert status == 200 and [g["rights"] for g in listing["grants"]] == [["read"]]
    status, _ = p.api(p.alice, "DELETE", f"/grants?path=/files/revoked.txt&user={p.bob}")
    assert status == 204
    assert p.call(p.bob, "GET", f"/shared/{p.alice}/revoked.txt").status == 404
    with p.server.app.db.read() as session:
        rows = session.execute(
            sa.select(LogEntry.op_type, LogEntry.details)
            .where(LogEntry.op_type.in_([Op.GRANT_CREATE.value, Op.GRANT_REVOKE.value]))
            .order_by(LogEntry.id)
        ).all()
    mine = [r for r in rows if r.details.get("grantee") == p.bob][-3:]
    assert [r.op_type for r in mine] == ["share:grant:create"] * 2 + ["share:grant:revoke"]
    assert mine[1].details["before"]["rights"] == ["read", "download"]
    assert mine[1].details["after"]["rights"] == ["read"]
    assert mine[2].details["after"] is None


def test_revoking_a_sharer_revokes_what_they_shared_on(people: People) -> None:
    # Bob gave the folder on to his own group and to carol, carol to dave: when alice revokes
    # bob, none of them may keep it, bob least of all through his group.
    p = people
    assert p.call(p.alice, "MKCOL", "/files/handed-on/").status == 201
    assert p.call(p.alice, "MKCOL", "/files/handed-on/sub/").status == 201
    assert p.put(p.alice, "/files/handed-on/sub/doc.txt") == 201
    assert p.grant(p.alice, "/files/handed-on", p.bob, "read", "download", "share") == 201
    assert p.grant(p.alice, "/files/handed-on", p.dave, "read") == 201  # alice's own
    shared = f"/shared/{p.alice}/handed-on"
    assert p.grant(p.bob, shared, p.team, "read", "download", "share", group=True) == 201
    assert p.grant(p.bob, f"{shared}/sub", p.carol, "read", "share") == 201
    carols = f"/shared/{p.alice}/sub"
    assert p.grant(p.carol, carols, p.dave, "read") == 201  # replaced below
    assert p.grant(p.alice, "/files/handed-on/sub", p.dave, "read") == 201  # now alice's
    assert p.call(p.bob, "GET", f"{shared}/sub/doc.txt").status == 200

    assert p.revoke(p.alice, "/files/handed-on", p.bob) == 204
    assert p.call(p.bob, "GET", f"{shared}/sub/doc.txt").status == 404
    assert p.call(p.carol, "PROPFIND", carols, headers={"Depth": "0"}).status == 404
    assert p.rights_on("/files/handed-on") == {p.dave: ["read"]}
    assert p.rights_on("/files/handed-on/sub") == {p.dave: ["read"]}  # alice's stays
    with p.server.app.db.read() as session:
        revoked = session.scalars(
            sa.select(LogEntry.details).where(LogEntry.op_type == Op.GRANT_REVOKE.value)
        ).all()
    cascaded = [d for d in revoked if d.get("because") == f"{p.bob}'s grant was revoked"]
    assert sorted(d["grantee"] for d in cascaded) == sorted([p.carol, "@" + p.team])

    # Lowering a grant so that it no longer shares does the same.
    assert p.grant(p.alice, "/files/handed-on", p.bob, "read", "share") == 201
    assert p.grant(p.bob, shared, p.carol, "read") == 201
    assert p.grant(p.alice, "/files/handed-on", p.bob, "read", "download") == 201
    assert p.rights_on("/files/handed-on") == {p.bob: ["read", "download"], p.dave: ["read"]}


def test_a_deleted_users_grants_and_reshares_go(people: People) -> None:
    # Bob is deleted: the grant to him goes, and so do those he made from it (carol's, and
    # dave's from carol) or from his group's grant (carol's on the team file); each is in the
    # logbook. What he shared of his own files stays, like the files.
    p = people
    assert p.call(p.alice, "MKCOL", "/files/to-bob/").status == 201
    assert p.put(p.alice, "/files/to-bob/doc.txt") == 201
    assert p.put(p.alice, "/files/to-team.txt") == 201
    assert p.put(p.bob, "/files/bobs.txt") == 201
    assert p.grant(p.alice, "/files/to-bob", p.bob, "read", "share") == 201
    assert p.grant(p.alice, "/files/to-team.txt", p.team, "read", "share", group=True) == 201
    assert p.grant(p.bob, f"/shared/{p.alice}/to-bob", p.carol, "read", "share") == 201
    assert p.grant(p.carol, f"/shared/{p.alice}/to-bob/doc.txt", p.dave, "read") == 201
    assert p.grant(p.bob, f"/shared/{p.alice}/to-team.txt", p.carol, "read") == 201
    assert p.grant(p.bob, "/files/bobs.txt", p.carol, "read") == 201

    p.server.app.services.users.delete_user(None, p.bob)
    assert p.rights_on("/files/to-bob") == {}
    assert p.rights_on("/files/to-bob/doc.txt") == {}
    assert p.rights_on("/files/to-team.txt") == {"@" + p.team: ["read", "share"]}
    for path in ("to-bob", "doc.txt", "to-team.txt"):
        status = p.call(p.carol, "PROPFIND", f"/shared/{p.alice}/{path}", headers={"Depth": "0"})
        assert status.status == 404, path
    assert (
        p.call(p.carol, "PROPFIND", f"/shared/{p.bob}/bobs.txt", headers={"Depth": "0"}).status
        == 207
    )
    with p.server.app.db.read() as session:
        revoked = session.scalars(
            sa.select(LogEntry.details).where(LogEntry.op_type == Op.GRANT_REVOKE.value)
        ).all()
        [deleted] = session.scalars(
            sa.select(LogEntry.details).where(LogEntry.op_type == Op.USER_DELETE.value)
        ).all()[-1:]
    mine = [d for d in revoked if p.bob in d.get("because", "")]
    assert sorted((d["grantee"], d["because"]) for d in mine) == sorted(
        [
            (p.bob, f"{p.bob} was deleted"),
            (p.carol, f"{p.bob} was deleted"),  # his own, made from his grant
            (p.carol, f"{p.bob} was deleted"),  # and from his group's
        ]
    )
    assert [
        d["grantee"] for d in revoked if d.get("because") == f"{p.carol}'s grant was revoked"
    ] == [p.dave]
    assert deleted["user"] == p.bob and deleted["after"]["revoked_grants"] == 4


def test_what_a_member_shared_on_from_their_groups_grant_ends_with_it(people: People) -> None:
    """A member given share through a grant to their group shares on from it. When the
    group's grant is revoked, or the member leaves the group, what they shared on goes, and
    what was shared on from that, to users and to groups alike: none of it did (a revoke
    reached only what was shared on from a grant to a user), so access outlived the revoke.
    Two grantees who shared with each other do not keep each other's access, and nobody
    grants themselves (a grant to oneself from a group's grant was kept after it)."""
    p = people
    revoked_before = len(revoke_reasons(p))
    for folder in ("g2", "g3"):
        assert p.call(p.alice, "MKCOL", f"/files/{folder}/").status == 201
        assert p.put(p.alice, f"/files/{folder}/s.txt", b"secret") == 201
        assert (
            p.grant(p.alice, f"/files/{folder}", p.team, "read", "download", "share", group=True)
            == 201
        )
    g2, g3 = f"/shared/{p.alice}/g2", f"/shared/{p.alice}/g3"
    assert p.grant(p.bob, g2, p.bob, "read", "download", "share") == 400
    assert p.grant(p.bob, g2, p.carol, "read", "download", "share") == 201
    assert p.grant(p.carol, g2, p.dave, "read") == 201
    assert p.grant(p.carol, g2, p.bob, "read", "download", "share") == 201  # and back
    assert p.call(p.carol, "GET", f"{g2}/s.txt").status == 200

    assert p.revoke(p.alice, "/files/g2", p.team, group=True) == 204
    for who in (p.bob, p.carol):
        assert p.call(who, "GET", f"{g2}/s.txt").status == 404, who
    assert p.call(p.dave, "PROPFIND", g2, headers={"Depth": "0"}).status == 404
    assert p.rights_on("/files/g2") == {}

    assert p.grant(p.bob, g3, p.carol, "read", "download") == 201
    p.server.app.services.groups.remove_member(None, p.team, p.bob)
    assert p.call(p.carol, "GET", f"{g3}/s.txt").status == 404
    assert p.rights_on("/files/g3") == {"@" + p.team: ["read", "download", "share"]}
    assert sorted(revoke_reasons(p)[revoked_before:]) == sorted(
        [
            ("@" + p.team, ""),  # alice's revoke
            (p.carol, f"{p.bob}'s grant was revoked"),
            (p.bob, f"{p.carol}'s grant was revoked"),
            (p.dave, f"{p.carol}'s grant was revoked"),
            (p.carol, f"{p.bob} left the group {p.team}"),
        ]
    )


def test_a_revoke_reaches_what_was_shared_on_through_a_group(people: People) -> None:
    """Bob shares on to his group what alice gave him, and carol, a member, on to dave: once
    alice revokes bob, dave's access goes too."""
    p = people
    p.server.app.services.groups.add_member(None, p.team, p.carol)
    assert p.call(p.alice, "MKCOL", "/files/sh4/").status == 201
    assert p.put(p.alice, "/files/sh4/s.txt", b"secret") == 201
    assert p.grant(p.alice, "/files/sh4", p.bob, "read", "download", "share") == 201
    shared = f"/shared/{p.alice}/sh4"
    assert p.grant(p.bob, shared, p.team, "read", "download", "share", group=True) == 201
    assert p.grant(p.carol, shared, p.dave, "read") == 201
    assert p.call(p.dave, "PROPFIND", shared, headers={"Depth": "0"}).status == 207

    assert p.revoke(p.alice, "/files/sh4", p.bob) == 204
    assert p.call(p.dave, "PROPFIND", shared, headers={"Depth": "0"}).status == 404
    assert p.call(p.carol, "GET", f"{shared}/s.txt").status == 404
    assert p.rights_on("/files/sh4") == {}


def revoke_reasons(p: People) -> list[tuple[str, str]]:
    """(grantee, because) of every grant revoked so far, oldest first."""
    with p.server.app.db.read() as session:
        rows = session.scalars(
            sa.select(LogEntry.details)
            .where(LogEntry.op_type == Op.GRANT_REVOKE.value)
            .order_by(LogEntry.id)
        ).all()
    return [(d["grantee"], d.get("because", "")) for d in rows]


def test_group_space_is_for_members(people: People) -> None:
    p = people
    assert p.put(p.bob, f"/groups/{p.team}/plan.txt", b"plan") == 201
    assert p.call(p.alice, "GET", f"/groups/{p.team}/plan.txt").body == b"plan"
    assert p.call(p.carol, "GET", f"/groups/{p.team}/plan.txt").status == 404
    listing = p.call(p.bob, "PROPFIND", "/groups/", headers={"Depth": "1"})
    assert p.team.encode() in listing.body
    assert (
        p.team.encode() not in p.call(p.carol, "PROPFIND", "/groups/", headers={"Depth": "1"}).body
    )
    # The group admin may share out of the group's space; a plain member may not.
    assert p.grant(p.bob, f"/groups/{p.team}/plan.txt", p.carol, "read") == 403
    assert p.grant(p.alice, f"/groups/{p.team}/plan.txt", p.carol, "read") == 201
    assert (
        p.call(p.carol, "PROPFIND", f"/shared/@{p.team}/plan.txt", headers={"Depth": "0"}).status
        == 207
    )


def test_clients_see_their_rights(people: People) -> None:
    p = people
    assert p.call(p.alice, "MKCOL", "/files/rights/").status == 201
    assert p.grant(p.alice, "/files/rights", p.bob, "read", "write") == 201
    body = (
        b'<?xml version="1.0"?><D:propfind xmlns:D="DAV:" xmlns:oc="http://owncloud.org/ns">'
        b"<D:prop><oc:permissions/><D:current-user-privilege-set/></D:prop></D:propfind>"
    )
    bob = p.call(p.bob, "PROPFIND", f"/shared/{p.alice}/rights", body, {"Depth": "0"})
    assert bob.status == 207
    # The shared entry itself cannot be renamed or moved (no N, V); what is inside it can.
    assert b">SGDCK</" in bob.body
    assert b"write-content" in bob.body and b"download" not in bob.body
    renamed = {"Destination": f"{p.server.url}/shared/{p.alice}/renamed"}
    assert p.call(p.bob, "MOVE", f"/shared/{p.alice}/rights", headers=renamed).status == 403
    assert p.put(p.bob, f"/shared/{p.alice}/rights/in.txt") == 201
    inside = p.call(p.bob, "PROPFIND", f"/shared/{p.alice}/rights/in.txt", body, {"Depth": "0"})
    assert b">SGDNVW</" in inside.body
    renamed = {"Destination": f"{p.server.url}/shared/{p.alice}/rights/out.txt"}
    assert p.call(p.bob, "MOVE", f"/shared/{p.alice}/rights/in.txt", headers=renamed).status == 201
    alice = p.call(p.alice, "PROPFIND", "/files/rights", body, {"Depth": "0"})
    assert b">RGDNVCK</" in alice.body and b"ds:share" in alice.body


def test_a_grantees_listing_costs_the_same_queries_whatever_its_size(people: People) -> None:
    p = people
    counts = {}
    assert p.call(p.bob, "PROPFIND", "/files/", headers={"Depth": "0"}).status == 207  # sign in
    for size in (5, 150):
        folder = f"/files/big-{size}"
        assert p.call(p.alice, "MKCOL", folder + "/").status == 201
        for i in range(size):
            assert p.put(p.alice, f"{folder}/f{i:04d}.txt", b"x") == 201
        assert p.grant(p.alice, folder, p.bob, "read") == 201
        # One member also granted directly: its rights come from the same query.
        assert p.grant(p.alice, f"{folder}/f0001.txt", p.bob, "download") == 201
        listing = p.call(
            p.bob, "PROPFIND", f"/shared/{p.alice}/big-{size}/", headers={"Depth": "1"}
        )
        assert listing.status == 207 and listing.body.count(b"<D:response>") == size + 1
        counts[size] = int(listing.headers["X-Query-Count"])
    assert counts[5] == counts[150], counts


def test_listing_what_an_owner_shared_costs_the_same_queries_whatever_its_number(
    people: People,
) -> None:
    """``/shared/<owner>/`` lists every item the owner granted the user, each from its own
    rows. Its members were looked up one by one: two statements each (2,010 for 1,001)."""
    p = people
    assert p.call(p.bob, "PROPFIND", "/files/", headers={"Depth": "0"}).status == 207  # sign in
    counts, made = {}, 0
    for total in (2, 12):
        for i in range(made, total):
            if i % 2:
                assert p.put(p.alice, f"/files/doc{i:02d}.txt", b"x" * i) == 201
                path = f"/files/doc{i:02d}.txt"
            else:
                assert p.call(p.alice, "MKCOL", f"/files/dir{i:02d}/").status == 201
                path = f"/files/dir{i:02d}"
            assert p.grant(p.alice, path, p.bob, "read") == 201
        made = total
        listing = p.call(p.bob, "PROPFIND", f"/shared/{p.alice}/", headers={"Depth": "1"})
        assert listing.status == 207 and listing.body.count(b"<D:response>") == total + 1
        counts[total] = int(listing.headers["X-Query-Count"])
        # What Nextcloud's client asks: oc:size was summed member by member.
        sized = p.call(p.bob, "PROPFIND", f"/shared/{p.alice}/", OC_SIZE, {"Depth": "1"})
        assert sized.status == 207
        counts[-total] = int(sized.headers["X-Query-Count"])
    assert counts[2] == counts[12] and counts[-2] == counts[-12], counts
    assert p.put(p.alice, "/files/dir00/inside.bin", b"x" * 7) == 201
    sized = p.call(p.bob, "PROPFIND", f"/shared/{p.alice}/", OC_SIZE, {"Depth": "1"})
    sizes = {
        r.findtext("{DAV:}href"): r.findtext(".//{http://owncloud.org/ns}size")
        for r in ET.fromstring(sized.body)
    }
    assert sizes[f"/shared/{p.alice}/dir00/"] == "7"
    assert sizes[f"/shared/{p.alice}/dir02/"] == "0"
    assert sizes[f"/shared/{p.alice}/doc03.txt"] == "3"
    # What each member says is its own: a file's length, a folder, a dead property.
    assert p.call(p.alice, "PROPPATCH", "/files/doc03.txt", PROPPATCH).status == 207
    listing = p.call(p.bob, "PROPFIND", f"/shared/{p.alice}/", headers={"Depth": "1"})
    members = {
        response.findtext("{DAV:}href"): response for response in ET.fromstring(listing.body)
    }
    doc = members[f"/shared/{p.alice}/doc03.txt"]
    assert doc.findtext(".//{DAV:}getcontentlength") == "3"
    assert doc.find(".//{urn:x}color") is not None
    assert members[f"/shared/{p.alice}/doc05.txt"].find(".//{urn:x}color") is None
    folder = members[f"/shared/{p.alice}/dir04/"]
    assert folder.find(".//{DAV:}resourcetype/{DAV:}collection") is not None


def test_listing_an_items_grants_costs_the_same_queries_whatever_their_number(
    people: People,
) -> None:
    p = people
    assert p.put(p.alice, "/files/many-grants.txt") == 201
    counts = {}
    for grantees in ([p.bob], [p.carol, p.dave]):
        for grantee in grantees:
            assert p.grant(p.alice, "/files/many-grants.txt", grantee, "read") == 201
        listing = p.call(p.alice, "GET", "/api/v1/grants?path=/files/many-grants.txt")
        assert listing.status == 200
        grants = json.loads(listing.body)["grants"]
        assert {(g["grantee"], g["granted_by"]) for g in grants} >= {
            (name, p.alice) for name in grantees
        }
        counts[len(grants)] = int(listing.headers["X-Query-Count"])
    assert list(counts) == [1, 3] and counts[1] == counts[3], counts
    status, _ = p.api(p.alice, "DELETE", f"/grants?path=/files/many-grants.txt&user={p.carol}")
    assert status == 204
    status, listed = p.api(p.alice, "GET", "/grants?path=/files/many-grants.txt")
    assert [g["grantee"] for g in listed["grants"]] == [p.bob, p.dave]


def test_a_revoke_costs_the_same_statements_whatever_the_space_holds(people: People) -> None:
    """A revoke finds what no longer stands among the grants of the space: in a few
    statements, not one per grant (each grant's folders were read on their own: 210
    statements to revoke one of 200)."""
    p = people
    assert p.call(p.alice, "MKCOL", "/files/crowd/").status == 201
    counts = []
    for files in (2, 12):
        for n in range(files):
            name = f"/files/crowd/f{files}-{n}.txt"
            assert p.put(p.alice, name) == 201
            assert p.grant(p.alice, name, p.bob, "read") == 201
        revoked = p.call(
            p.alice, "DELETE", f"/api/v1/grants?path=/files/crowd/f{files}-0.txt&user={p.bob}"
        )
        assert revoked.status == 204
        counts.append(int(revoked.headers["X-Query-Count"]))
    assert counts[0] == counts[1], counts


def test_read_only_grantee_sees_thumbnails_but_not_the_original_or_a_preview(
    people: People,
) -> None:
    p = people
    assert p.put(p.alice, "/files/photo.jpg", images.jpeg(120, 80)) == 201
    assert p.grant(p.alice, "/files/photo.jpg", p.bob, "read") == 201
    shared = f"/shared/{p.alice}/photo.jpg"
    thumb = p.call(p.bob, "GET", shared + "?thumbnail=64")
    assert thumb.status == 200 and thumb.headers["Content-Type"] == "image/jpeg"
    assert p.call(p.bob, "GET", shared).status == 403
    assert p.call(p.bob, "GET", shared + "?a=thumbnail=64").status == 403
    assert p.call(p.carol, "GET", shared + "?thumbnail=64").status == 404
    # A preview (1024 or 2048 px) is the picture itself: it needs download too.
    refused = p.call(p.bob, "GET", shared + "?preview=1024")
    assert refused.status == 403 and b"needs the download right" in refused.body
    assert p.call(p.bob, "HEAD", shared + "?preview=1024").status == 403
    assert p.grant(p.alice, "/files/photo.jpg", p.bob, "read", "download") == 201
    assert p.call(p.bob, "GET", shared + "?preview=1024").status == 200


def test_a_thumbnail_that_is_the_whole_picture_needs_the_download_right(people: People) -> None:
    """Reading is enough for a thumbnail, but the thumbnail of an image no bigger than the
    thumbnail is the picture itself, pixel for pixel (an icon, a signature, a QR code): a
    grantee who may only read got it whole. Refused to them; a bigger image's thumbnail is
    theirs to see, and with download every thumbnail is."""
    p = people
    pictures = {
        "small.png": images.png_with_alpha(60, 30),
        "exact.jpg": images.jpeg(64, 64),  # as big as the thumbnail, not smaller
        "turned.jpg": images.exif_rotated_jpeg(64, 32),  # stored 64 x 32, shown 32 x 64
        "big.jpg": images.jpeg(640, 64),
    }
    for name, data in pictures.items():
        assert p.put(p.alice, f"/files/{name}", data) == 201
        assert p.grant(p.alice, f"/files/{name}", p.bob, "read") == 201
    # The owner's own thumbnails first: cached, and one made before sizes were kept.
    for name in pictures:
        assert p.call(p.alice, "GET", f"/files/{name}?thumbnail=64").status == 200
    with p.server.app.db.write() as session:
        session.execute(sa.update(ImageVariant).values(source_width=None, source_height=None))
    for name in pictures:
        answer = p.call(p.bob, "GET", f"/shared/{p.alice}/{name}?thumbnail=64")
        if name == "big.jpg":
            assert answer.status == 200, (name, answer.status)
            assert images.decode(answer.body).size == (64, 6)
        else:
            assert answer.status == 403, (name, answer.status, answer.body[:200])
            assert b"needs the download right" in answer.body
    for name in pictures:
        assert p.grant(p.alice, f"/files/{name}", p.bob, "read", "download") == 201
        assert p.call(p.bob, "GET", f"/shared/{p.alice}/{name}?thumbnail=64").status == 200


def test_copy_or_move_onto_or_into_itself_through_another_url_is_refused(
    people: People,
) -> None:
    """An admin reaches their own files at /files/ and at /users/<name>/: the same node
    under two URLs is the same node (WsgiDAV compares only the URLs)."""
    p = people
    admin = f"adm{uuid.uuid4().hex[:6]}"
    p.passwords[admin] = f"pw-{uuid.uuid4().hex}"
    p.server.app.services.users.create_user(
        None, admin, password=p.passwords[admin], roles=["user", "admin"]
    )
    assert p.call(admin, "MKCOL", "/files/proj/").status == 201
    assert p.put(admin, "/files/proj/doc.txt", b"v1") == 201
    assert p.put(admin, "/files/proj/doc.txt", b"v2") == 204
    assert p.grant(admin, "/files/proj", p.carol, "read") == 201
    alias = f"/users/{admin}"
    refused = [
        ("COPY", f"{alias}/proj/", "/files/proj/"),
        ("MOVE", f"{alias}/proj/", "/files/proj/"),
        ("COPY", f"{alias}/proj/doc.txt", "/files/proj/doc.txt"),
        ("MOVE", f"{alias}/proj/doc.txt", "/files/proj/doc.txt"),
        ("COPY", f"{alias}/proj/", "/files/proj/inside/"),
        ("MOVE", "/files/proj/", f"{alias}/proj/inside/"),
    ]
    statuses = [
        p.call(admin, method, source, headers={"Destination": p.server.url + dest}).status
        for method, source, dest in refused
    ]
    assert statuses == [403] * len(refused)
    versions = p.call(admin, "PROPFIND", "/versions/files/proj/doc.txt/", headers={"Depth": "1"})
    assert b"doc.v1.txt" in versions.body and b"doc.v2.txt" in versions.body
    # The original is where it was, with its history and its share.
    listing = p.call(p.carol, "PROPFIND", f"/shared/{admin}/proj/", headers={"Depth": "1"})
    assert listing.status == 207 and b"doc.txt" in listing.body
    trash = p.call(admin, "PROPFIND", "/trash/", headers={"Depth": "1"})
    assert b"proj" not in trash.body and b"doc.txt" not in trash.body
    # A case-only rename names the node too, under another name: that is a move.
    renamed = {"Destination": p.server.url + "/files/Proj/"}
    assert p.call(admin, "MOVE", f"{alias}/proj/", headers=renamed).status in (201, 204)
    assert p.call(admin, "GET", "/files/Proj/doc.txt").body == b"v2"


def test_moderators_and_admins_reach_every_users_space(people: People) -> None:
    p = people
    users = p.server.app.services.users
    moderator, admin = f"mod{uuid.uuid4().hex[:6]}", f"adm{uuid.uuid4().hex[:6]}"
    for name, role in ((moderator, "moderator"), (admin, "admin")):
        p.passwords[name] = f"pw-{uuid.uuid4().hex}"
        users.create_user(None, name, password=p.passwords[name], roles=["user", role])
    assert p.put(p.alice, "/files/report.txt", b"alice's report") == 201
    assert p.put(p.alice, "/files/spam.txt", b"spam") == 201
    mine = f"/users/{p.alice}"
    listing = p.call(moderator, "PROPFIND", "/users/", headers={"Depth": "1"})
    assert listing.status == 207 and p.alice.encode() in listing.body
    assert p.bob.encode() in listing.body and p.carol.encode() in listing.body
    missing = p.call(moderator, "PROPFIND", "/users/nobody-here/", headers={"Depth": "0"})
    assert missing.status == 404
    # A moderator sees everything and may trash it, but neither downloads nor writes.
    assert p.call(moderator, "PROPFIND", f"{mine}/report.txt", headers={"Depth": "0"}).status == 207
    assert p.call(moderator, "GET", f"{mine}/report.txt").status == 403
    assert p.call(moderator, "PUT", f"{mine}/report.txt", b"edited").status == 403
    assert p.call(moderator, "DELETE", f"{mine}/spam.txt").status == 204
    assert p.call(p.alice, "GET", "/files/spam.txt").status == 404
    # An admin may do anything.
    assert p.call(admin, "GET", f"{mine}/report.txt").body == b"alice's report"
    # Others do not even see the space.
    assert p.call(p.bob, "PROPFIND", "/users/", headers={"Depth": "0"}).status == 404
    root = p.call(p.bob, "PROPFIND", "/", headers={"Depth": "1"})
    assert b"/users/" not in root.body and b"/shared/" in root.body


def test_listing_every_users_space_costs_the_same_queries_whatever_their_number(
    people: People,
) -> None:
    """An admin's ``/users/`` lists every user's space. Each was looked up on its own: four
    statements a user (2,000 users, 8,000 statements); and while any space held a lock, the
    locks of each space were read on their own too."""
    p = people
    users = p.server.app.services.users
    admin = f"adm{uuid.uuid4().hex[:6]}"
    p.passwords[admin] = f"pw-{uuid.uuid4().hex}"
    users.create_user(None, admin, password=p.passwords[admin], roles=["user", "admin"])
    locked = p.call(p.alice, "LOCK", "/files/", LOCK, {"Depth": "infinity"})
    assert locked.status == 200

    def listing() -> Response:
        found = p.call(admin, "PROPFIND", "/users/", headers={"Depth": "1"})
        assert found.status == 207
        return found

    def sized() -> str:
        found = p.call(admin, "PROPFIND", "/users/", OC_SIZE, {"Depth": "1"})
        assert found.status == 207
        return found.headers["X-Query-Count"]

    listing()  # the spaces of users who never signed in are made on first use
    before, sized_before = listing(), sized()
    for i in range(10):
        users.create_user(None, f"extra{i}{admin}", password=None)
    assert p.node_commits(listing) == 1  # the ten new spaces, made together
    after = listing()
    assert after.headers["X-Query-Count"] == before.headers["X-Query-Count"]
    assert sized() == sized_before
    assert after.body.count(b"<D:response>") == before.body.count(b"<D:response>") + 10
    members = {r.findtext("{DAV:}href"): r for r in ET.fromstring(after.body)}
    space = members[f"/users/extra3{admin}/"]
    assert space.find(".//{DAV:}resourcetype/{DAV:}collection") is not None
    assert p.call(admin, "PUT", f"/users/extra3{admin}/a.txt", b"a").status == 201
    # alice's space shows her lock; the others none.
    assert members[f"/users/{p.alice}/"].find(".//{DAV:}activelock") is not None
    assert space.find(".//{DAV:}activelock") is None
    token = locked.headers["Lock-Token"]
    assert p.call(p.alice, "UNLOCK", "/files/", headers={"Lock-Token": token}).status == 204


def test_listing_every_group_space_costs_the_same_queries_whatever_their_number(
    people: People,
) -> None:
    """``/groups/`` lists a space for each group the user is in (every group, for an admin).
    Each was looked up on its own, and for an admin each lookup read every group again:
    6,011 statements and 14 s for 2,000 groups."""
    p = people
    users, groups = p.server.app.services.users, p.server.app.services.groups
    admin = f"adm{uuid.uuid4().hex[:6]}"
    p.passwords[admin] = f"pw-{uuid.uuid4().hex}"
    users.create_user(None, admin, password=p.passwords[admin], roles=["user", "admin"])

    def listing(who: str) -> Response:
        found = p.call(who, "PROPFIND", "/groups/", headers={"Depth": "1"})
        assert found.status == 207
        return found

    def count(found: Response) -> tuple[str, int]:
        return found.headers["X-Query-Count"], found.body.count(b"<D:response>")

    def sized() -> tuple[str, int]:
        found = p.call(admin, "PROPFIND", "/groups/", OC_SIZE, {"Depth": "1"})
        assert found.status == 207
        return count(found)

    for who in (admin, p.bob):
        listing(who)  # a group's space is made on first use
    before = {who: count(listing(who)) for who in (admin, p.bob)}
    sized_before = sized()
    added = [f"crowd{i}{admin}" for i in range(10)]
    for name in added:
        groups.create_group(None, name)
        groups.add_member(None, name, p.bob)
    # The new groups' spaces are made by the first listing, in one transaction (one each made
    # 2,000 spaces in 4.7 s on PostgreSQL).
    assert p.node_commits(lambda: listing(admin)) == 1
    listing(p.bob)
    after = {who: count(listing(who)) for who in (admin, p.bob)}
    for who in (admin, p.bob):
        assert after[who] == (before[who][0], before[who][1] + 10), (who, before, after)
    assert sized() == (sized_before[0], sized_before[1] + 10)
    # bob's listing holds his groups, each a folder he may write in.
    members = {r.findtext("{DAV:}href"): r for r in ET.fromstring(listing(p.bob).body)}
    assert f"/groups/{p.team}/" in members and f"/groups/{added[3]}/" in members
    assert len(members) == 1 + 1 + 10
    assert p.put(p.bob, f"/groups/{added[3]}/a.txt", b"a") == 201
    assert p.call(p.carol, "PROPFIND", f"/groups/{added[3]}/", headers={"Depth": "0"}).status == 404


def _share_two_namesakes(p: People) -> dict[str, str]:
    """alice shares /files/a/doc.txt and /files/b/doc.txt with bob (download, write);
    returns the names bob's /shared/<alice>/ lists them under (escaped), by folder."""
    for folder in ("a", "b"):
        assert p.call(p.alice, "MKCOL", f"/files/{folder}/").status == 201
        assert p.put(p.alice, f"/files/{folder}/doc.txt", f"from {folder}".encode()) == 201
        assert p.grant(p.alice, f"/files/{folder}/doc.txt", p.bob, "download", "write") == 201
    hrefs = shared_entries(p, p.bob)
    assert len(hrefs) == 2 and all(TAGGED.fullmatch(h) for h in hrefs), hrefs
    return {p.call(p.bob, "GET", f"/shared/{p.alice}/{h}").body.decode()[5:]: h for h in hrefs}


# A namesake's entry: doc (<the first 8 hex digits of its id>).txt, escaped.
TAGGED = re.compile(r"doc%20\([0-9a-f]{8}\)\.txt")


def shared_entries(p: People, who: str) -> list[str]:
    """The names (escaped) ``who``'s /shared/<alice>/ lists."""
    listing = p.call(who, "PROPFIND", f"/shared/{p.alice}/", headers={"Depth": "1"})
    return re.findall(rf"<D:href>/shared/{p.alice}/([^<]+)</D:href>", listing.body.decode())


def test_an_upload_to_a_renamed_namesake_entry_is_a_version_of_its_file(people: People) -> None:
    """The second of two shared namesakes is listed under another name; an upload to that
    entry is a new version of the file it shows, never a new file beside the original (in a
    folder the grantee may not even write in)."""
    p = people
    second = _share_two_namesakes(p)["b"]
    assert p.put(p.bob, f"/shared/{p.alice}/{second}", b"edited by bob") == 204
    assert p.call(p.alice, "GET", "/files/b/doc.txt").body == b"edited by bob"
    assert p.call(p.alice, "GET", "/files/a/doc.txt").body == b"from a"
    for place in ("a", "b"):
        listing = p.call(p.alice, "PROPFIND", f"/files/{place}/", headers={"Depth": "1"})
        assert listing.body.count(b"<D:href>") == 2, listing.body  # the folder and doc.txt


def test_a_shared_namesake_keeps_its_extension(people: People) -> None:
    """Two shared files of one name are each ``doc (<id>).txt``: programs still know their
    type (``doc.txt (2)`` opens with nothing)."""
    p = people
    entry = _share_two_namesakes(p)["a"]
    answer = p.call(p.bob, "PROPFIND", f"/shared/{p.alice}/{entry}", headers={"Depth": "0"})
    assert b"<D:getcontenttype>text/plain" in answer.body
    assert p.call(p.alice, "MKCOL", "/files/c/").status == 201
    for folder in ("/files/c/photos.2024", "/files/photos.2024"):
        assert p.call(p.alice, "MKCOL", folder + "/").status == 201
        assert p.grant(p.alice, folder, p.bob, "read") == 201
    folders = [h for h in shared_entries(p, p.bob) if h.startswith("photos")]
    assert len(folders) == 2, folders
    assert all(re.fullmatch(r"photos\.2024%20\([0-9a-f]{8}\)/", h) for h in folders), folders


def test_a_namesake_entry_never_passes_to_another_file(people: People) -> None:
    """carol had alice's two doc.txt files as ``doc.txt`` and ``doc (2).txt``; alice deleted
    the first, and ``doc.txt`` named the second at once: carol's editor saved its copy of the
    first over the second (204). Each namesake is named by its own id now: the entry of the
    deleted file is gone (its save refused), the other's entry still names the other."""
    p = people
    names = _share_two_namesakes(p)
    assert p.call(p.alice, "DELETE", "/files/a/doc.txt").status == 204
    gone = f"/shared/{p.alice}/{names['a']}"
    assert p.call(p.bob, "GET", gone).status == 404
    assert p.put(p.bob, gone, b"bob's edit of a") in (403, 404, 409)
    assert p.call(p.alice, "GET", "/files/b/doc.txt").body == b"from b"
    # Alone now, the other file has the plain name; its tagged one no longer answers.
    assert shared_entries(p, p.bob) == ["doc.txt"]
    assert p.call(p.bob, "GET", f"/shared/{p.alice}/{names['b']}").status == 404
    assert p.call(p.bob, "GET", f"/shared/{p.alice}/doc.txt").body == b"from b"
    # A file named like a tag it does not hold (a copy saved as it was listed, say) is
    # tagged as well: it took over the entry of the file whose tag it spelt.
    assert p.call(p.alice, "MKCOL", "/files/c/").status == 201
    assert p.put(p.alice, "/files/c/doc.txt", b"from c") == 201
    assert p.grant(p.alice, "/files/c/doc.txt", p.bob, "download", "write") == 201
    tagged = {
        p.call(p.bob, "GET", f"/shared/{p.alice}/{h}").body: h for h in shared_entries(p, p.bob)
    }
    lookalike = unquote(tagged[b"from c"])
    assert p.put(p.alice, f"/files/c/{quote(lookalike)}", b"lookalike") == 201
    assert p.grant(p.alice, f"/files/c/{lookalike}", p.bob, "download") == 201
    entries = shared_entries(p, p.bob)
    assert len(entries) == 3 and tagged[b"from c"] in entries, entries
    assert p.call(p.bob, "GET", f"/shared/{p.alice}/{tagged[b'from c']}").body == b"from c"
    (other,) = [e for e in entries if e not in tagged.values()]
    assert re.fullmatch(r"doc%20\([0-9a-f]{8}\)%20\([0-9a-f]{8}\)\.txt", other), other
    assert p.call(p.bob, "GET", f"/shared/{p.alice}/{other}").body == b"lookalike"


def test_quota_properties_are_those_of_the_space_the_item_is_in(people: People) -> None:
    """A client decides from ``quota-available-bytes`` whether an upload fits (the ownCloud
    and Nextcloud clients skip one that does not; ``rclone about``): in a shared folder it is
    what the owner's quota leaves, in a group's space (which has no quota) the disk's, never
    the grantee's own."""
    p = people
    users = p.server.app.services.users
    users.set_quota(None, p.alice, 100_000)
    users.set_quota(None, p.bob, 1_000)
    assert p.call(p.alice, "MKCOL", "/files/inbox/").status == 201
    assert p.put(p.alice, "/files/inbox/a.bin", b"a" * 30_000) == 201
    assert p.grant(p.alice, "/files/inbox", p.bob, "write") == 201
    assert p.put(p.bob, "/files/mine.bin", b"b" * 100) == 201
    body = (
        b'<?xml version="1.0"?><D:propfind xmlns:D="DAV:"><D:prop>'
        b"<D:quota-used-bytes/><D:quota-available-bytes/></D:prop></D:propfind>"
    )

    def quota(path: str) -> tuple[int, int]:
        answer = p.call(p.bob, "PROPFIND", path, body, {"Depth": "0"})
        assert answer.status == 207, answer.body
        text = answer.body.decode()
        used = re.search(r"quota-used-bytes[^>]*>(\d+)<", text)
        available = re.search(r"quota-available-bytes[^>]*>(\d+)<", text)
        assert used and available, text
        return int(used.group(1)), int(available.group(1))

    assert quota("/files/") == (100, 900)
    assert quota(f"/shared/{p.alice}/inbox/") == (30_000, 70_000)
    assert quota(f"/groups/{p.team}/")[1] > 1_000  # what bob may upload there: 2 000 bytes fit
    assert p.put(p.bob, f"/groups/{p.team}/two-k.bin", b"g" * 2_000) == 201
    assert p.put(p.bob, f"/shared/{p.alice}/inbox/big.bin", b"x" * 70_001) == 507


def test_the_history_of_a_renamed_namesake_entry_answers_what_it_lists(people: People) -> None:
    """``/versions/shared/<owner>/doc (2).txt/`` lists the versions of the file the entry
    shows; each listed entry answers GET, ``?version=N`` on the entry works, and a grantee
    with write restores a version onto it."""
    p = people
    second = _share_two_namesakes(p)["b"]
    history = f"/versions/shared/{p.alice}/{second}/"
    before = p.call(p.bob, "GET", f"/shared/{p.alice}/{second}").body
    assert p.put(p.bob, f"/shared/{p.alice}/{second}", b"version 2") == 204
    listing = p.call(p.bob, "PROPFIND", history, headers={"Depth": "1"})
    assert listing.status == 207
    entries = re.findall(r"<D:href>([^<]+[^/])</D:href>", listing.body.decode())
    assert len(entries) == 2, listing.body
    assert [p.call(p.bob, "GET", href).body for href in sorted(entries)] == [before, b"version 2"]
    old = p.call(p.bob, "GET", f"/shared/{p.alice}/{second}?version=1")
    assert (old.status, old.body) == (200, before)
    restore = {"Destination": f"{p.server.url}/shared/{p.alice}/{second}"}
    assert p.call(p.bob, "COPY", sorted(entries)[0], headers=restore).status == 204
    assert p.call(p.bob, "GET", f"/shared/{p.alice}/{second}").body == before


def test_a_refusal_tells_clients_why_in_the_body_they_read(people: People) -> None:
    """rclone and the ownCloud/Nextcloud clients read the reason of an error from SabreDAV's
    ``<d:error><s:message>`` (what Nextcloud sends); an HTML page they print whole. A browser
    (Accept: text/html) still gets the page."""
    p = people
    assert p.put(p.alice, "/files/look.txt") == 201
    assert p.grant(p.alice, "/files/look.txt", p.bob, "read") == 201
    refused = p.call(p.bob, "GET", f"/shared/{p.alice}/look.txt")
    assert refused.status == 403
    assert refused.headers["Content-Type"].startswith("application/xml")
    root = ET.fromstring(refused.body)
    assert root.tag == "{DAV:}error"
    assert root.findtext("{http://sabredav.org/ns}message") == "you may not download this item"
    missing = p.call(p.bob, "GET", f"/shared/{p.alice}/nothing.txt")
    assert missing.status == 404 and ET.fromstring(missing.body).tag == "{DAV:}error"
    page = p.call(p.bob, "GET", f"/shared/{p.alice}/look.txt", headers={"Accept": "text/html"})
    assert page.status == 403 and page.headers["Content-Type"].startswith("text/html")
    assert b"you may not download this item" in page.body
    # The one failure of a COPY, MOVE or DELETE, which WsgiDAV answers with its page itself.
    assert p.call(p.alice, "MKCOL", "/files/outer/").status == 201
    assert p.put(p.alice, "/files/outer/inner.txt") == 201
    into = {"Destination": f"{p.server.url}/files/outer", "Overwrite": "T"}
    moved = p.call(p.alice, "MOVE", "/files/outer/inner.txt", headers=into)
    assert moved.status == 403
    assert moved.headers["Content-Type"].startswith("application/xml")
    message = ET.fromstring(moved.body).findtext("{http://sabredav.org/ns}message")
    assert message == "the destination is a folder the source is in"
    assert int(moved.headers["Content-Length"]) == len(moved.body)


def test_a_shared_entry_answers_to_its_nfd_name_as_files_do(people: People) -> None:
    """macOS sends names decomposed (NFD); ``/files/`` finds the NFC name they stand for, and
    ``/shared/<owner>/<entry>`` must too. Two entries of one name, one NFC and one NFD, are
    told apart like any namesakes."""
    p = people
    nfc, nfd = "caf%C3%A9.txt", "cafe%CC%81.txt"
    assert p.put(p.alice, f"/files/{nfc}", b"coffee") == 201
    assert p.grant(p.alice, "/files/caf\u00e9.txt", p.bob, "download") == 201
    assert p.call(p.bob, "GET", f"/shared/{p.alice}/{nfd}").body == b"coffee"
    assert p.call(p.alice, "MKCOL", "/files/mac/").status == 201
    assert p.put(p.alice, f"/files/mac/{nfd}", b"decomposed") == 201
    assert p.grant(p.alice, "/files/mac/cafe\u0301.txt", p.bob, "download") == 201
    hrefs = shared_entries(p, p.bob)
    assert len(hrefs) == 2 and all(re.search(r"%20\([0-9a-f]{8}\)\.txt$", h) for h in hrefs)
    bodies = {p.call(p.bob, "GET", f"/shared/{p.alice}/{h}").body for h in hrefs}
    assert bodies == {b"coffee", b"decomposed"}


def test_a_space_itself_cannot_be_shared(people: People) -> None:
    # It was granted, and the grantee's /shared/<owner>/ then listed a nameless entry (its
    # href the folder's own) that no path reached.
    p = people
    assert p.put(p.alice, "/files/in-home.txt") == 201
    assert p.put(p.alice, f"/groups/{p.team}/in-group.txt") == 201
    for path in ("/files", "/files/", f"/groups/{p.team}"):
        status, body = p.api(
            p.alice, "POST", "/grants", {"path": path, "user": p.carol, "rights": ["read"]}
        )
        assert (status, body["error"]) == (400, "bad_request"), (path, body)
    assert (
        p.call(p.carol, "PROPFIND", "/shared/", headers={"Depth": "1"}).body.count(b"<D:response>")
        == 1
    )


def test_a_grant_on_a_space_made_before_is_left_out_of_the_listing(people: People) -> None:
    # Such a grant (made before it was refused; here straight in the database) put a
    # nameless entry in /shared/<owner>/, its href the folder's own, that no path reached.
    # Worse, it hid every share of that owner's below it.
    p = people
    assert p.put(p.alice, "/files/shared-below.txt") == 201
    assert p.grant(p.alice, "/files/shared-below.txt", p.carol, "read") == 201
    services = p.server.app.services
    home = services.files.home_id(services.users.user_id(p.alice))
    with services.db.write() as session:
        session.add(Grant(node_id=home, user_id=services.users.user_id(p.carol), can_read=True))
    listing = p.call(p.carol, "PROPFIND", f"/shared/{p.alice}/", headers={"Depth": "1"})
    assert listing.status == 207
    hrefs = re.findall(rb"<D:href>([^<]*)</D:href>", listing.body)
    assert hrefs == [f"/shared/{p.alice}/".encode(), f"/shared/{p.alice}/shared-below.txt".encode()]


def test_the_grants_of_no_path_are_a_400_naming_it(people: People) -> None:
    # They were a 404 "no item ''", as if the path given did not exist.
    p = people
    for method, query in [("GET", ""), ("GET", "?path="), ("DELETE", f"?user={p.bob}")]:
        status, body = p.api(p.alice, method, f"/grants{query}")
        assert (status, body["error"]) == (400, "bad_request"), (method, query)
        assert "path" in body["message"]


def test_the_same_grant_again_changes_nothing_and_logs_nothing(people: People) -> None:
    """A script that makes sure a share exists, every night, must not fill the logbook."""
    p = people
    assert p.put(p.alice, "/files/nightly.txt") == 201
    assert p.grant(p.alice, "/files/nightly.txt", p.bob, "read") == 201

    def state() -> tuple[int, list[dt.datetime]]:
        with p.server.app.db.read() as session:
            node = session.scalar(
                sa.select(Node.id)
                .where(Node.name == "nightly.txt", Node.deleted_at.is_(None))
                .join(Grant, Grant.node_id == Node.id)
            )
            rows = session.scalar(
                sa.select(sa.func.count())
                .select_from(LogEntry)
                .where(LogEntry.node_id == node, LogEntry.op_type == Op.GRANT_CREATE)
            )
            granted = list(
                session.scalars(sa.select(Grant.granted_at).where(Grant.node_id == node))
            )
        return int(rows or 0), granted

    before = state()
    assert p.grant(p.alice, "/files/nightly.txt", p.bob, "read") == 201
    assert state() == before
    # A change is still a change.
    assert p.grant(p.alice, "/files/nightly.txt", p.bob, "read", "download") == 201
    assert state()[0] == before[0] + 1
