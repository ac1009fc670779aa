"""WebDAV over real HTTP against the in-process server, with the database rows behind it.

Every test talks raw HTTP (``http.client`` or a socket) to ``inproc_server``, once per engine,
inside its own fresh collection, and where it matters looks at the rows the request left in
``app.db``: versions, blobs, soft-deleted nodes, dead properties, the logbook.
"""

from __future__ import annotations

import email.utils
import gzip
import http.client
import io
import logging
import os
import re
import secrets
import select
import socket
import ssl
import threading
import time
import tracemalloc
import unicodedata
import urllib.parse
import uuid
import xml.etree.ElementTree as ET
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy import event

from davserver.app import Application
from davserver.errors import QuotaExceeded, Unavailable
from davserver.http_request import MAX_HEADER_BYTES
from davserver.models import (
    Blob,
    DavLock,
    DeadProperty,
    FileVersion,
    LogEntry,
    Node,
    Op,
    User,
)
from davserver.services.actor import Actor
from davserver.services.audit import ReadLog
from davserver.services.dead_props import MAX_DEAD_PROPERTY_BYTES
from davserver.services.dead_props import read as read_dead_properties
from davserver.services.tree import NodeView
from providers.propfind import MAX_NAMES, MAX_NAMES_CHARS
from tests.certificates import self_signed
from tests.servers import (
    HOST,
    DavServer,
    InprocServer,
    Response,
    basic_auth_header,
    http_request,
    run_inproc_server,
)

DAV_NS = "{DAV:}"
MS_NS = "{urn:schemas-microsoft-com:}"
OC_FILEID = "{http://owncloud.org/ns}fileid"
CUSTOM_NS = "urn:example:davserver-tests"


# --- URLs and HTTP ---------------------------------------------------------------------------


def q(name: str) -> str:
    """One path segment, percent-encoded (everything but unreserved characters)."""
    return urllib.parse.quote(name, safe="")


def path_of(url: str) -> str:
    return urllib.parse.urlsplit(url).path


def decoded_parts(url: str) -> list[str]:
    return [urllib.parse.unquote(p) for p in path_of(url).split("/") if p]


def call(
    srv: InprocServer,
    method: str,
    url: str,
    body: bytes | None = None,
    headers: Mapping[str, str] | None = None,
    *,
    timeout: float = 10.0,
) -> Response:
    """``srv.request`` that turns a hang or a dropped connection into a test failure."""
    try:
        return srv.request(method, url, body, headers, timeout=timeout)
    except (OSError, http.client.HTTPException) as exc:
        pytest.fail(
            f"{method} {url} got no complete response: {type(exc).__name__}: {exc}",
            pytrace=False,
        )


def no_traceback(response: Response) -> None:
    assert b"Traceback" not in response.body, response.body[:2000]
    assert b'File "' not in response.body, response.body[:2000]


def assert_2xx(response: Response, what: str) -> None:
    assert 200 <= response.status < 300, (
        f"{what} answered {response.status}: {response.body[:500]!r}"
    )


def put(srv: InprocServer, url: str, body: bytes, headers: Mapping[str, str] | None = None) -> int:
    response = call(srv, "PUT", url, body, headers)
    assert response.status in (201, 204), (
        f"PUT {url} answered {response.status}: {response.body[:500]!r}"
    )
    return response.status


def get_body(srv: InprocServer, url: str) -> bytes:
    response = call(srv, "GET", url)
    assert response.status == 200, f"GET {url} answered {response.status}"
    return response.body


class Connection:
    """One keep-alive connection with Basic auth, for many requests in a row."""

    def __init__(self, srv: DavServer, user: str | None = None, password: str | None = None):
        self.conn = http.client.HTTPConnection(HOST, srv.port, timeout=30)
        self.auth = basic_auth_header(user or srv.user, password or srv.password)

    def request(
        self, method: str, url: str, body: bytes | None = None, headers: Mapping[str, str] = {}
    ) -> Response:
        sent = {"Authorization": self.auth, **headers}
        parts = urllib.parse.urlsplit(url)
        target = parts.path + (f"?{parts.query}" if parts.query else "")
        self.conn.request(method, target, body=body, headers=sent)
        resp = self.conn.getresponse()
        return Response(resp.status, dict(resp.getheaders()), resp.read())

    def close(self) -> None:
        self.conn.close()


def as_user(srv: InprocServer, user: str, password: str) -> Callable[..., Response]:
    """``request(method, url, body, headers)`` as another user."""

    def request(
        method: str,
        url: str,
        body: bytes | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> Response:
        full = url if "://" in url else srv.url + url
        return http_request(method, full, body, headers, auth=(user, password), timeout=10.0)

    return request


# --- multistatus -----------------------------------------------------------------------------


@dataclass
class Entry:
    """One <response> of a multistatus: its decoded path and props by status."""

    path: str
    props: dict[str, ET.Element] = field(default_factory=dict)
    status: dict[str, int] = field(default_factory=dict)


def _status_code(text: str | None) -> int:
    parts = (text or "").split()
    return int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0


def parse_multistatus(body: bytes) -> dict[str, Entry]:
    """{decoded path without trailing slash: Entry} of a 207 body."""
    root = ET.fromstring(body)
    assert root.tag == DAV_NS + "multistatus", body[:500]
    entries: dict[str, Entry] = {}
    for response in root.findall(DAV_NS + "response"):
        href = response.findtext(DAV_NS + "href") or ""
        path = urllib.parse.unquote(path_of(href)).rstrip("/") or "/"
        entry = Entry(path)
        for propstat in response.findall(DAV_NS + "propstat"):
            code = _status_code(propstat.findtext(DAV_NS + "status"))
            prop = propstat.find(DAV_NS + "prop")
            for element in prop if prop is not None else []:
                entry.status[element.tag] = code
                if code == 200:
                    entry.props[element.tag] = element
        entries[path] = entry
    return entries


def propfind(
    srv: InprocServer, url: str, depth: str = "1", body: bytes | None = None
) -> dict[str, Entry]:
    headers = {"Depth": depth}
    if body is not None:
        headers["Content-Type"] = "application/xml; charset=utf-8"
    response = call(srv, "PROPFIND", url, body, headers)
    assert response.status == 207, (
        f"PROPFIND {url} answered {response.status}: {response.body[:500]!r}"
    )
    return parse_multistatus(response.body)


def member_names(srv: InprocServer, folder_url: str) -> list[str]:
    """The decoded names a Depth 1 PROPFIND of ``folder_url`` lists (the folder excluded)."""
    folder = urllib.parse.unquote(path_of(folder_url)).rstrip("/")
    return sorted(
        p.rsplit("/", 1)[1] for p in propfind(srv, folder_url) if p != folder and p != "/"
    )


def entry_of(srv: InprocServer, url: str, body: bytes | None = None) -> Entry:
    entries = propfind(srv, url, "0", body)
    assert len(entries) == 1, entries
    return next(iter(entries.values()))


def proppatch_body(set_props: str = "", remove_props: str = "") -> bytes:
    parts = ['<?xml version="1.0" encoding="utf-8"?>']
    parts.append(
        f'<D:propertyupdate xmlns:D="DAV:" xmlns:Z="urn:schemas-microsoft-com:" '
        f'xmlns:X="{CUSTOM_NS}">'
    )
    if set_props:
        parts.append(f"<D:set><D:prop>{set_props}</D:prop></D:set>")
    if remove_props:
        parts.append(f"<D:remove><D:prop>{remove_props}</D:prop></D:remove>")
    parts.append("</D:propertyupdate>")
    return "".join(parts).encode()


LOCK_BODY = (
    b'<?xml version="1.0" encoding="utf-8"?>'
    b'<D:lockinfo xmlns:D="DAV:"><D:lockscope><D:exclusive/></D:lockscope>'
    b"<D:locktype><D:write/></D:locktype><D:owner>tests</D:owner></D:lockinfo>"
)


# --- rows ------------------------------------------------------------------------------------


def user_id(app: Application, username: str) -> uuid.UUID:
    with app.db.read() as session:
        found = session.scalar(sa.select(User.id).where(User.username == username))
    assert found is not None, username
    return found


def node_at(srv: InprocServer, url: str, username: str | None = None) -> NodeView | None:
    """The live node behind a /files/... URL of ``username`` (default: the test user)."""
    app = srv.application
    parts = decoded_parts(url)
    assert parts[:1] == ["files"], url
    home = app.files.home_id(user_id(app, username or srv.user))
    return app.files.resolve(home, parts[1:])


def existing_node(srv: InprocServer, url: str, username: str | None = None) -> NodeView:
    view = node_at(srv, url, username)
    assert view is not None, f"no live node at {url}"
    return view


def version_numbers(app: Application, node_id: uuid.UUID) -> list[int]:
    with app.db.read() as session:
        return list(
            session.scalars(
                sa.select(FileVersion.version_no)
                .where(FileVersion.node_id == node_id)
                .order_by(FileVersion.version_no)
            )
        )


def count_rows(app: Application, model: type, *where: sa.ColumnElement[bool]) -> int:
    with app.db.read() as session:
        return session.scalar(sa.select(sa.func.count()).select_from(model).where(*where)) or 0


def live_children(app: Application, folder_id: uuid.UUID) -> list[str]:
    with app.db.read() as session:
        return sorted(
            session.scalars(
                sa.select(Node.name).where(Node.parent_id == folder_id, Node.deleted_at.is_(None))
            )
        )


def nodes_named(app: Application, name: str) -> int:
    return count_rows(app, Node, Node.name == name)


def last_log_id(app: Application) -> int:
    with app.db.read() as session:
        return session.scalar(sa.select(sa.func.max(LogEntry.id))) or 0


def ops_since(app: Application, since: int) -> list[tuple[str, uuid.UUID | None]]:
    """The changes logged since ``since``; downloads are not changes, and their rows (of this
    test's or an earlier one's GETs) land when their batch is written (``downloads_of``)."""
    with app.db.read() as session:
        rows = session.execute(
            sa.select(LogEntry.op_type, LogEntry.node_id)
            .where(LogEntry.id > since, LogEntry.op_type != "file:download")
            .order_by(LogEntry.id)
        )
        return [(op, node) for op, node in rows]


def wait_for(condition: Callable[[], bool], timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return condition()


@contextmanager
def recorded_statements(app: Application) -> Iterator[list[str]]:
    """Every SQL statement the application's engine runs inside the block."""
    seen: list[str] = []

    def listener(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        seen.append(statement)

    event.listen(app.db.engine, "before_cursor_execute", listener)
    try:
        yield seen
    finally:
        event.remove(app.db.engine, "before_cursor_execute", listener)


@pytest.fixture
def srv(inproc_server: InprocServer) -> InprocServer:
    return inproc_server


@pytest.fixture
def folder(inproc_dav_dir: str) -> str:
    """URL of a fresh, empty collection (with its trailing slash)."""
    return inproc_dav_dir


# --- 1. reading what was written -------------------------------------------------------------


def test_put_get_round_trip_with_etag_range_and_conditional_get(
    srv: InprocServer, folder: str
) -> None:
    data = bytes(range(256)) * 8
    url = folder + "data.bin"
    assert call(srv, "PUT", url, data).status == 201
    got = call(srv, "GET", url)
    assert got.status == 200
    assert got.body == data
    etag = got.headers.get("ETag", "")
    assert len(etag) > 2 and etag.startswith('"') and etag.endswith('"'), etag
    assert got.headers.get("Last-Modified"), got.headers
    assert int(got.headers["Content-Length"]) == len(data)

    listed = entry_of(srv, url).props
    assert listed[DAV_NS + "getetag"].text == etag
    assert listed[DAV_NS + "getcontentlength"].text == str(len(data))

    head = call(srv, "HEAD", url)
    assert head.status == 200
    assert head.body == b""
    for name in ("ETag", "Last-Modified", "Content-Length", "Content-Type"):
        assert head.headers.get(name) == got.headers.get(name), name

    ranged = call(srv, "GET", url, headers={"Range": "bytes=10-19"})
    assert ranged.status == 206
    assert ranged.body == data[10:20]
    assert ranged.headers.get("Content-Range") == f"bytes 10-19/{len(data)}"
    assert ranged.headers.get("Content-Length") == "10"

    not_modified = call(srv, "GET", url, headers={"If-None-Match": etag})
    assert not_modified.status == 304
    assert not_modified.body == b""


@pytest.mark.parametrize("method", ["GET", "HEAD"])
@pytest.mark.parametrize("condition", ["If-None-Match", "If-Modified-Since"])
def test_a_304_carries_the_etag_and_no_content_length(
    srv: InprocServer, folder: str, method: str, condition: str
) -> None:
    """RFC 9110 15.4.5: a 304 carries the ETag a 200 would have (a cache revalidating by
    date learns the tag from it); 8.6: its Content-Length, if any, is the 200's, never the 0
    that was sent. And the connection is kept (WsgiDAV closes it after an answer without a
    Content-Length)."""
    url = folder + "cached.txt"
    put(srv, url, b"some bytes")
    got = call(srv, "GET", url)
    value = got.headers["ETag"] if condition == "If-None-Match" else got.headers["Last-Modified"]
    response = call(srv, method, url, headers={condition: value})
    assert response.status == 304
    assert response.headers.get("ETag") == got.headers["ETag"]
    assert "Content-Length" not in response.headers, response.headers
    assert response.headers.get("Date")
    assert response.headers.get("Connection") != "close", response.headers


def test_a_204_has_no_content_length(srv: InprocServer, folder: str) -> None:
    """RFC 9110 8.6: a server MUST NOT send Content-Length in a 204. And the connection is
    kept (WsgiDAV closes it after an answer without a Content-Length)."""
    url = folder + "replaced.txt"
    put(srv, url, b"first")
    for response in (call(srv, "PUT", url, b"second"), call(srv, "DELETE", url)):
        assert response.status == 204
        assert "Content-Length" not in response.headers, response.headers
        assert response.headers.get("Connection") != "close", response.headers


def test_a_201_has_an_empty_body(srv: InprocServer, folder: str) -> None:
    """A created file, folder or copy was answered with WsgiDAV's HTML page, naming its
    version (which ``suppress_version_info`` hides elsewhere) and the server's local time;
    curl printed it after every upload."""
    url = folder + "new.txt"
    answers = [
        call(srv, "PUT", url, b"content"),
        call(srv, "MKCOL", folder + "sub/"),
        call(srv, "COPY", url, headers={"Destination": path_of(folder) + "copy.txt"}),
    ]
    for response in answers:
        assert response.status == 201
        assert response.body == b"", response.body[:300]
        assert response.headers.get("Content-Length") == "0"


def test_an_uploaded_page_cannot_run_scripts_as_the_server(srv: InprocServer, folder: str) -> None:
    """A file is served with the type its uploader gave: an HTML page shared with a user,
    opened in their browser, ran its scripts on the server's origin, where the browser adds
    that user's Basic credentials to every request (``POST /api/v1/keys`` made a key for
    its author to read). Every answer is sandboxed and may not be sniffed into another type."""
    url = folder + "page.html"
    put(srv, url, b"<script>fetch('/api/v1/keys')</script>", {"Content-Type": "text/html"})
    answers = [
        call(srv, "GET", url),
        call(srv, "HEAD", url),
        call(srv, "GET", url + "?version=1"),
        call(srv, "GET", url.replace("/files/", "/versions/files/", 1) + "/page.v1.html"),
    ]
    for response in answers:
        assert response.status == 200
        policy = response.headers.get("Content-Security-Policy", "")
        assert "sandbox" in policy.split(";")[0] and "default-src 'none'" in policy, policy
        assert response.headers.get("X-Content-Type-Options") == "nosniff"
        # Nor may another site frame it, or load it as a script or an image with the
        # browser's credentials for this server.
        assert "frame-ancestors 'none'" in policy, policy
        assert response.headers.get("Cross-Origin-Resource-Policy") == "same-origin"
    # A sandbox blocks downloads started from the page (Chrome) unless it allows them: a
    # link to a .docx or .zip in the folder listing must still download it.
    listing = call(srv, "GET", folder, headers={"Accept": "text/html"})
    assert listing.status == 200
    sandbox = listing.headers["Content-Security-Policy"].split(";")[0].split()
    assert sandbox == ["sandbox", "allow-downloads"], sandbox


def test_the_folder_listing_links_where_its_names_are_whatever_the_url(
    srv: InprocServer, folder: str
) -> None:
    """A browser resolves a listing's links against the URL it asked for: asked without the
    folder's trailing slash, relative links pointed into the folder above."""
    inner = folder + "a%20b/"
    assert call(srv, "MKCOL", inner).status == 201
    put(srv, inner + "x%7Cy.txt", b"x")
    assert call(srv, "MKCOL", inner + "sub/").status == 201
    base = path_of(inner)
    for url in (inner, inner.rstrip("/")):
        page = call(srv, "GET", url).body.decode()
        links = re.findall(r'href="([^"]*)"', page)
        assert links == [path_of(folder), base + "sub/", base + "x%7Cy.txt"], links
    # At the root too (it joined its path to "/" into "//files/": another host to a browser).
    root_links = re.findall(r'href="([^"]*)"', call(srv, "GET", srv.url + "/").body.decode())
    assert "/files/" in root_links and not [link for link in root_links if "//" in link]
    # The same in a multistatus: "|" is not allowed in a URI (Java's URI class refuses it).
    listed = call(srv, "PROPFIND", inner, headers={"Depth": "1"}).body.decode()
    hrefs = re.findall(r"<D:href>([^<]*)</D:href>", listed)
    assert sorted(hrefs) == [base, base + "sub/", base + "x%7Cy.txt"], hrefs


def test_a_put_with_a_content_coding_is_a_415_and_identity_is_none(
    srv: InprocServer, folder: str
) -> None:
    """RFC 9110 12.5.3: a content coding the server does not apply is answered 415 (with the
    Accept-Encoding it takes); WsgiDAV answered 501 Not Implemented, also to ``identity``, which
    names no coding at all."""
    url = folder + "coded.txt"
    zipped = call(srv, "PUT", url, gzip.compress(b"text"), {"Content-Encoding": "gzip"})
    assert zipped.status == 415, (zipped.status, zipped.body[:300])
    assert zipped.headers.get("Accept-Encoding") == "identity"
    assert call(srv, "GET", url).status == 404
    assert call(srv, "PUT", url, b"text", {"Content-Encoding": "identity"}).status == 201
    assert get_body(srv, url) == b"text"


def test_a_file_is_revalidated_before_a_cached_copy_is_shown(
    srv: InprocServer, folder: str
) -> None:
    """A file answered without Cache-Control but with Last-Modified is fresh in a browser's
    cache for a tenth of its age (RFC 9111 4.2.2): a file last changed ten days ago was shown
    from the cache, unchanged, for a day after someone replaced it. It is to be revalidated
    each time (its ETag makes that a 304)."""
    url = folder + "report.txt"
    put(srv, url, b"first")
    etag = call(srv, "HEAD", url).headers["ETag"]
    for method in ("GET", "HEAD"):
        for headers in ({}, {"If-None-Match": etag}):
            response = call(srv, method, url, headers=headers)
            assert response.status == (304 if headers else 200)
            assert response.headers.get("Cache-Control") == "no-cache", (method, response.headers)


# --- 2. versions and deduplication -----------------------------------------------------------


def test_new_bytes_make_a_version_and_equal_bytes_do_not(srv: InprocServer, folder: str) -> None:
    app = srv.application
    url = folder + "versions.txt"
    put(srv, url, b"first")
    node = existing_node(srv, url)
    assert version_numbers(app, node.id) == [1]
    put(srv, url, b"second")
    assert version_numbers(app, node.id) == [1, 2]
    put(srv, url, b"second")
    assert version_numbers(app, node.id) == [1, 2]
    put(srv, url, b"first")
    assert version_numbers(app, node.id) == [1, 2, 3]
    assert get_body(srv, url) == b"first"


def test_identical_files_share_one_blob_row_and_one_file_on_disk(
    srv: InprocServer, folder: str
) -> None:
    app = srv.application
    data = b"shared bytes " + secrets.token_bytes(32)
    put(srv, folder + "one.bin", data)
    put(srv, folder + "two.bin", data)
    one = existing_node(srv, folder + "one.bin")
    two = existing_node(srv, folder + "two.bin")
    assert one.id != two.id
    assert one.sha256 is not None and one.sha256 == two.sha256
    assert count_rows(app, Blob, Blob.sha256 == one.sha256) == 1
    on_disk = [p for p in app.blobs.root.rglob(one.sha256) if p.is_file()]
    assert len(on_disk) == 1, on_disk
    assert on_disk[0].read_bytes() == data


# --- 3. If-Match -----------------------------------------------------------------------------


def test_if_match_with_stale_etag_is_refused(srv: InprocServer, folder: str) -> None:
    url = folder + "guarded.txt"
    put(srv, url, b"version one")
    stale = call(srv, "GET", url).headers["ETag"]
    put(srv, url, b"version two")
    current = call(srv, "GET", url).headers["ETag"]
    assert stale != current

    refused = call(srv, "PUT", url, b"lost update", {"If-Match": stale})
    assert refused.status == 412
    assert get_body(srv, url) == b"version two"
    assert version_numbers(srv.application, existing_node(srv, url).id) == [1, 2]

    accepted = call(srv, "PUT", url, b"version three", {"If-Match": current})
    assert accepted.status in (200, 204)
    assert get_body(srv, url) == b"version three"


def test_if_none_match_star_still_holds_when_the_upload_is_recorded(
    srv: InprocServer, folder: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``If-None-Match: *`` (create only; GNOME Files and davfs2 send it for a new file) was
    checked when the request began: a client that created the file while the body streamed
    was overwritten, and both were told they had created it."""
    url = folder + "created-once.txt"
    files = srv.application.files
    commit = files.commit_upload

    def someone_else_first(actor: Actor, parent: NodeView, name: str, *a: Any, **k: Any) -> Any:
        writer = files.blobs.writer()
        writer.write(b"theirs")
        commit(actor, parent, name, writer.finish())
        return commit(actor, parent, name, *a, **k)

    monkeypatch.setattr(files, "commit_upload", someone_else_first)
    refused = call(srv, "PUT", url, b"mine", {"If-None-Match": "*"})
    assert refused.status == 412, (refused.status, refused.body[:300])
    monkeypatch.undo()
    assert get_body(srv, url) == b"theirs"
    assert version_numbers(srv.application, existing_node(srv, url).id) == [1]
    assert call(srv, "PUT", url, b"mine", {"If-None-Match": "*"}).status == 412
    assert call(srv, "PUT", folder + "free.txt", b"mine", {"If-None-Match": "*"}).status == 201


@pytest.mark.parametrize(
    "header",
    [
        "bytes=5-2",
        "foo=1-2",
        "bytes=abc",
        "bytes=0-4,10-14",
        "bytes=-0",
        "bytes=1 -2",  # WsgiDAV sent the last 2 bytes
        "bytes=1- 2",  # ... bytes 1 to the end
        "bytes=- 3",  # ... a 416 without Content-Range
        "bytes=1 - ",
    ],
)
def test_a_range_that_is_not_one_valid_byte_range_gets_the_whole_file(
    srv: InprocServer, folder: str, header: str
) -> None:
    """RFC 9110 14.2: a Range the server cannot use is ignored (200, all bytes). WsgiDAV sent
    bytes from the end of the file for 5-2, treated foo= as bytes, refused bytes=abc with 416
    and sent only the last of several ranges under a 206."""
    data = bytes(range(256)) * 4
    put(srv, folder + "ranged.bin", data)
    for method in ("GET", "HEAD"):
        got = call(srv, method, folder + "ranged.bin", headers={"Range": header})
        assert got.status == 200, (method, header, got.status)
        assert got.headers.get("Content-Length") == str(len(data))
        assert "Content-Range" not in got.headers
        assert got.body == (data if method == "GET" else b"")


def test_valid_single_ranges_still_work(srv: InprocServer, folder: str) -> None:
    data = bytes(range(256)) * 4
    put(srv, folder + "ranged.bin", data)
    for header, first, last in (
        ("bytes=10-19", 10, 19),
        ("bytes=1000-", 1000, 1023),
        ("bytes=-5", 1019, 1023),
        ("bytes=1020-5000", 1020, 1023),
        (" Bytes = 10-19 ", 10, 19),
    ):
        got = call(srv, "GET", folder + "ranged.bin", headers={"Range": header})
        assert got.status == 206, (header, got.status)
        assert got.body == data[first : last + 1], header
        assert got.headers["Content-Range"] == f"bytes {first}-{last}/{len(data)}"
    past = call(srv, "GET", folder + "ranged.bin", headers={"Range": "bytes=5000-"})
    assert past.status == 416


def _http_date(epoch: float) -> str:
    return email.utils.formatdate(epoch, usegmt=True)


def test_if_modified_since_and_if_unmodified_since_count_whole_seconds(
    srv: InprocServer, folder: str
) -> None:
    """Last-Modified is in whole seconds; a date equal to it is "not modified since" (304)
    and "unmodified since" (the write goes ahead). WsgiDAV answered 200 to the first."""
    url = folder + "dated.txt"
    put(srv, url, b"dated")
    stamp = call(srv, "GET", url).headers["Last-Modified"]
    seconds = email.utils.parsedate_to_datetime(stamp).timestamp()
    assert call(srv, "GET", url, headers={"If-Modified-Since": stamp}).status == 304
    assert call(srv, "HEAD", url, headers={"If-Modified-Since": stamp}).status == 304
    earlier = _http_date(seconds - 1)
    assert call(srv, "GET", url, headers={"If-Modified-Since": earlier}).status == 200
    # An unreadable date is ignored.
    assert call(srv, "GET", url, headers={"If-Modified-Since": "yesterday"}).status == 200

    assert call(srv, "PUT", url, b"later", {"If-Unmodified-Since": earlier}).status == 412
    assert get_body(srv, url) == b"dated"
    assert call(srv, "PUT", url, b"same second", {"If-Unmodified-Since": stamp}).status == 204
    assert get_body(srv, url) == b"same second"


@pytest.mark.parametrize(
    "date", ["Mon, 01 Jan 10000 00:00:00 GMT", "Mon, 01 Jan 99999999999 00:00:00 GMT"]
)
def test_a_date_past_year_9999_in_a_condition_is_ignored_never_a_500(
    srv: InprocServer, folder: str, date: str
) -> None:
    """A date HTTP can write but Python cannot hold is not a date (RFC 9110 13.1.3: the
    header is then ignored). WsgiDAV's parser raised ValueError or OverflowError on it: a 500
    on every method."""
    url = folder + "far.txt"
    put(srv, url, b"0123456789")
    for header in ("If-Modified-Since", "If-Unmodified-Since"):
        for method, body, expected in (
            ("GET", b"", 200),
            ("HEAD", b"", 200),
            ("PROPFIND", b"", 207),
            ("PUT", b"0123456789", 204),
        ):
            headers = {header: date, "Depth": "0"}
            got = call(srv, method, url, body, headers).status
            assert got == expected, (header, method, got)
    ranged = call(srv, "GET", url, headers={"Range": "bytes=2-3", "If-Range": date})
    assert (ranged.status, ranged.body) == (200, b"0123456789")  # If-Range fails: all of it
    assert call(srv, "MKCOL", folder + "sub", headers={"If-Modified-Since": date}).status == 201


def test_a_new_version_with_an_older_client_time_is_modified_since(
    srv: InprocServer, folder: str
) -> None:
    """Last-Modified is the client's time (X-OC-Mtime), which goes back when a sync writes an
    older copy over a file. ``curl -z`` or a cache asking If-Modified-Since the Last-Modified
    it saw got 304 and kept the old bytes, and a PUT If-Unmodified-Since it overwrote the
    newer upload it never saw. A date the file changed after is not "unmodified since"."""
    url = folder + "synced.txt"
    put(srv, url, b"first bytes", {"X-OC-Mtime": "1600000000"})
    seen = call(srv, "GET", url).headers["Last-Modified"]
    assert call(srv, "GET", url, headers={"If-Modified-Since": seen}).status == 304

    put(srv, url, b"older copy synced over it", {"X-OC-Mtime": "1500000000"})
    fresh = call(srv, "GET", url, headers={"If-Modified-Since": seen})
    assert fresh.status == 200 and fresh.body == b"older copy synced over it"
    refused = call(srv, "PUT", url, b"lost update", {"If-Unmodified-Since": seen})
    assert refused.status == 412
    assert get_body(srv, url) == b"older copy synced over it"

    # The date it answers now is still "not modified since" (304); a date later than the
    # server's clock says nothing (RFC 7232 3.3, as Apache reads it): the whole answer.
    now_seen = call(srv, "GET", url).headers["Last-Modified"]
    assert call(srv, "GET", url, headers={"If-Modified-Since": now_seen}).status == 304
    later = _http_date(time.time() + 60)
    assert call(srv, "GET", url, headers={"If-Modified-Since": later}).status == 200
    assert call(srv, "PUT", url, b"mine", {"If-Unmodified-Since": now_seen}).status == 204


def test_a_client_time_in_the_future_is_never_sent_as_last_modified(
    srv: InprocServer, folder: str
) -> None:
    """A file's client time (X-OC-Mtime) may lie in the future. Last-Modified said it as it
    was, and a client asking If-Modified-Since that date got 304 for bytes changed since.
    Last-Modified is never later than the answer's Date (RFC 9110 8.8.2.1, a MUST), and a
    date later than the server's clock is no reason for a 304; the WebDAV property keeps
    the client's time, which sync clients compare with their own."""
    url = folder + "future.txt"
    year_2100 = "4102444800"
    put(srv, url, b"v1", {"X-OC-Mtime": year_2100})
    answer = call(srv, "GET", url)
    sent = email.utils.parsedate_to_datetime(answer.headers["Last-Modified"]).timestamp()
    assert sent <= email.utils.parsedate_to_datetime(answer.headers["Date"]).timestamp()
    listed = propfind(srv, url, "0")[urllib.parse.unquote(path_of(url))]
    assert "2100" in (listed.props[DAV_NS + "getlastmodified"].text or "")
    put(srv, url, b"v2 changed")
    asked = call(srv, "GET", url, headers={"If-Modified-Since": "Fri, 01 Jan 2100 00:00:00 GMT"})
    assert asked.status == 200 and asked.body == b"v2 changed"

    # Whatever answers: the old version, its entry in /versions/, the file in the trash.
    def sent_no_later_than_its_date(target: str) -> None:
        answer = call(srv, "HEAD", target)
        assert answer.status == 200, (target, answer.status)
        sent = email.utils.parsedate_to_datetime(answer.headers["Last-Modified"]).timestamp()
        assert sent <= email.utils.parsedate_to_datetime(answer.headers["Date"]).timestamp()

    sent_no_later_than_its_date(url + "?version=1")
    sent_no_later_than_its_date(url.replace("/files/", "/versions/files/", 1) + "/future.v1.txt")
    assert call(srv, "DELETE", url).status == 204
    trash = call(srv, "PROPFIND", srv.url + "/trash/", headers={"Depth": "1"}).body.decode()
    trashed = [href for href in re.findall(r"<D:href>([^<]*)</D:href>", trash) if "future" in href]
    sent_no_later_than_its_date(srv.url + trashed[-1])


def test_the_last_modified_sent_for_a_future_client_time_works_as_a_validator(
    srv: InprocServer, folder: str
) -> None:
    """For a file whose client time lies in the future, Last-Modified is the answer's time
    (above). Sent back, it resumes a download (If-Range) and lets a careful PUT through
    (If-Unmodified-Since) while the bytes are unchanged, as for any file; both compared it
    with the client's time, so a resume always restarted and every such PUT was a 412."""
    url = folder + "future-validator.txt"
    put(srv, url, b"0123456789", {"X-OC-Mtime": "4102444800"})  # 2100
    time.sleep(1.1)  # the answer's second is after the upload's
    seen = call(srv, "HEAD", url).headers["Last-Modified"]
    resumed = call(srv, "GET", url, headers={"Range": "bytes=4-", "If-Range": seen})
    assert (resumed.status, resumed.body) == (206, b"456789")
    careful = {"If-Unmodified-Since": seen}
    time.sleep(1.1)  # a change in the very second of the date cannot be told from one before
    assert put(srv, url, b"changed after it", careful) == 204
    # Changed since: the same date resumes nothing and refuses the careful PUT.
    again = call(srv, "GET", url, headers={"Range": "bytes=4-", "If-Range": seen})
    assert (again.status, again.body) == (200, b"changed after it")
    assert call(srv, "PUT", url, b"lost update", careful).status == 412
    assert get_body(srv, url) == b"changed after it"
    # A client clock a few seconds ahead: the date still works once the clock has passed the
    # client's time (it was compared with that time again then).
    near = folder + "near-future.txt"
    put(srv, near, b"0123456789", {"X-OC-Mtime": str(int(time.time()) + 2)})
    time.sleep(1.1)
    seen = call(srv, "HEAD", near).headers["Last-Modified"]
    time.sleep(2.5)  # now past the client's time
    resumed = call(srv, "GET", near, headers={"Range": "bytes=4-", "If-Range": seen})
    assert (resumed.status, resumed.body) == (206, b"456789")
    assert put(srv, near, b"careful", {"If-Unmodified-Since": seen}) == 204


def test_if_range_by_date_resumes_only_bytes_the_server_knows_are_unchanged(
    srv: InprocServer, folder: str
) -> None:
    """RFC 9110 13.1.5: a date in If-Range resumes a download only when it is a strong
    validator. A file's Last-Modified is the client's time (X-OC-Mtime), which a new version
    can carry again unchanged: a download resumed with that date got the tail of the new bytes
    after the head of the old ones, a corrupt file. Such a date now sends the whole file; and
    so does a date the server set itself: a second upload within that second leaves it as it
    was (RFC 9110 13.1.5 counts it strong only in an answer sent a second later)."""
    url = folder + "resumed.txt"
    put(srv, url, b"first version..", {"X-OC-Mtime": "1600000000"})
    seen = call(srv, "GET", url).headers["Last-Modified"]
    put(srv, url, b"second version!", {"X-OC-Mtime": "1600000000"})
    assert call(srv, "GET", url).headers["Last-Modified"] == seen  # the same date, new bytes

    resumed = call(srv, "GET", url, headers={"Range": "bytes=6-", "If-Range": seen})
    assert (resumed.status, resumed.body) == (200, b"second version!")
    assert "Content-Range" not in resumed.headers
    etag = call(srv, "HEAD", url).headers["ETag"]
    by_tag = call(srv, "GET", url, headers={"Range": "bytes=6-", "If-Range": etag})
    assert (by_tag.status, by_tag.body) == (206, b" version!")

    plain = folder + "server-dated.txt"
    put(srv, plain, b"the first one")
    dated = call(srv, "GET", plain).headers["Last-Modified"]
    put(srv, plain, b"one more time")
    resumed = call(srv, "GET", plain, headers={"Range": "bytes=4-", "If-Range": dated})
    assert (resumed.status, resumed.body) == (200, b"one more time")

    # A date a second after the server's last change names those bytes alone: a client time
    # in the future reaches the client as the time of the answer, a second after the upload.
    ahead = folder + "ahead.txt"
    put(srv, ahead, b"from the future", {"X-OC-Mtime": str(int(time.time()) + 3600)})
    time.sleep(1.1)
    answered = call(srv, "GET", ahead).headers["Last-Modified"]
    resumed = call(srv, "GET", ahead, headers={"Range": "bytes=5-", "If-Range": answered})
    assert (resumed.status, resumed.body) == (206, b"the future")


def test_an_upload_keeps_its_own_x_oc_mtime_when_another_lands_in_between(
    srv: InprocServer, folder: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """X-OC-Mtime was applied in a transaction of its own after the upload's: when another
    upload of the file committed in between (two rclone clients syncing one folder), the
    first one's time landed on the second one's version, and the file showed the bytes of
    one upload with the time of the other."""
    from providers.resources import FileResource

    url = folder + "raced.txt"
    set_last_modified = FileResource.set_last_modified
    raced: list[int] = []

    def another_upload_first(self: FileResource, *args: Any, **kwargs: Any) -> Any:
        if not raced:  # the first upload has committed; the other one lands now
            raced.append(0)
            raced[0] = put(srv, url, b"second upload", {"X-OC-Mtime": "1500000000"})
        return set_last_modified(self, *args, **kwargs)

    monkeypatch.setattr(FileResource, "set_last_modified", another_upload_first)
    put(srv, url, b"first upload", {"X-OC-Mtime": "1600000000"})
    assert raced == [204]

    got = call(srv, "GET", url)
    assert got.body == b"second upload"
    assert got.headers["Last-Modified"] == _http_date(1500000000)
    history = url.replace("/files/", "/versions/files/", 1) + "/"
    times = {
        path.rsplit("/", 1)[1]: entry.props[DAV_NS + "getlastmodified"].text
        for path, entry in propfind(srv, history).items()
        if path.endswith(".txt") and not path.endswith("/raced.txt")
    }
    assert times == {
        "raced.v1.txt": _http_date(1600000000),
        "raced.v2.txt": _http_date(1500000000),
    }


def test_if_match_star_needs_something_there(srv: InprocServer, folder: str) -> None:
    """``If-Match: *`` means "only if it exists": a PUT or MKCOL to a free name must not
    create it. WsgiDAV created both."""
    for method, url in (("PUT", folder + "only-if-there.txt"), ("MKCOL", folder + "dir/")):
        refused = call(srv, method, url, b"x" if method == "PUT" else None, {"If-Match": "*"})
        assert refused.status == 412, (method, refused.status)
        assert call(srv, "PROPFIND", url, headers={"Depth": "0"}).status == 404
    put(srv, folder + "there.txt", b"one")
    assert call(srv, "PUT", folder + "there.txt", b"two", {"If-Match": "*"}).status == 204
    assert get_body(srv, folder + "there.txt") == b"two"


def test_if_match_compares_strongly_and_if_none_match_weakly(
    srv: InprocServer, folder: str
) -> None:
    url = folder + "tagged.txt"
    put(srv, url, b"tagged")
    etag = call(srv, "GET", url).headers["ETag"]
    # A weak tag never satisfies If-Match (WsgiDAV stripped the W/ and let the write in).
    assert call(srv, "PUT", url, b"weak", {"If-Match": "W/" + etag}).status == 412
    assert call(srv, "PUT", url, b"strong", {"If-Match": f'"nope", {etag}'}).status == 204
    etag = call(srv, "GET", url).headers["ETag"]
    assert call(srv, "GET", url, headers={"If-None-Match": "W/" + etag}).status == 304
    assert call(srv, "GET", url, headers={"If-None-Match": '"nope"'}).status == 200
    # Create-only: If-None-Match: * refuses a PUT onto an existing file, lets a new one in.
    assert call(srv, "PUT", url, b"over", {"If-None-Match": "*"}).status == 412
    assert get_body(srv, url) == b"strong"
    assert call(srv, "PUT", folder + "fresh.txt", b"new", {"If-None-Match": "*"}).status == 201


def test_preconditions_apply_to_the_requested_resource_only(srv: InprocServer, folder: str) -> None:
    """A MOVE with the source's ETag in If-Match replaces whatever the destination holds, and
    a DELETE of a folder with its ETag list is not checked against its members' tags: WsgiDAV
    checked If-Match against every resource it touched, and refused both."""
    put(srv, folder + "source.txt", b"source")
    put(srv, folder + "target.txt", b"target")
    etag = call(srv, "GET", folder + "source.txt").headers["ETag"]
    moved = call(
        srv,
        "MOVE",
        folder + "source.txt",
        headers={"Destination": path_of(folder) + "target.txt", "If-Match": etag},
    )
    assert moved.status == 204, (moved.status, moved.body[:300])
    assert get_body(srv, folder + "target.txt") == b"source"
    stale = call(
        srv,
        "COPY",
        folder + "target.txt",
        headers={"Destination": path_of(folder) + "copy.txt", "If-Match": '"stale"'},
    )
    assert stale.status == 412


def test_an_if_header_list_tagged_with_an_absolute_url_is_applied(
    srv: InprocServer, folder: str
) -> None:
    """RFC 4918 10.4: a list tagged with a resource's URL applies to that resource, and a tag
    is an absolute URL as often as a path. WsgiDAV compared the tag with the resource's path
    as written, so a tag with the scheme and host (or an escape spelled otherwise) matched
    nothing and its condition was skipped: a PUT or DELETE guarded by a stale ETag went
    through, and a COPY overwrote a destination whose tag no longer matched."""
    url = folder + "a%20b.txt"
    put(srv, url, b"first")
    etag = call(srv, "HEAD", url).headers["ETag"]
    absolute = srv.url + path_of(folder) + "a%20b.txt"
    for tag in (absolute, path_of(folder) + "a%20b.txt", absolute.replace("a%20b", "a%20%62")):
        stale = {"If": f'<{tag}> (["stale"])'}
        assert call(srv, "PUT", url, b"lost", stale).status == 412, tag
        assert call(srv, "DELETE", url, headers=stale).status == 412, tag
        assert get_body(srv, url) == b"first"
    put(srv, folder + "src.txt", b"src")
    copied = call(
        srv,
        "COPY",
        folder + "src.txt",
        headers={"Destination": absolute, "If": f'<{absolute}> (["stale"])'},
    )
    assert copied.status == 412, copied.status
    assert get_body(srv, url) == b"first"
    # A folder's tag applies to it with or without its slash.
    assert call(srv, "MKCOL", folder + "sub/").status == 201
    token = _lock_token(
        call(srv, "LOCK", folder + "sub/", LOCK_BODY, {"Content-Type": "application/xml"})
    )
    guarded = {"If": f"<{srv.url}{path_of(folder)}sub> (Not <{token}>)"}
    assert call(srv, "DELETE", folder + "sub/", headers=guarded).status == 412
    assert call(srv, "UNLOCK", folder + "sub/", headers={"Lock-Token": f"<{token}>"}).status == 204
    # The current tag lets the write in.
    assert call(srv, "PUT", url, b"second", {"If": f"<{absolute}> ([{etag}])"}).status == 204
    assert get_body(srv, url) == b"second"


@pytest.mark.parametrize(
    ("header", "status"),
    [
        ("garbage", 400),
        ("()", 400),
        ("(Not)", 400),
        ('(["x"]) trailing', 400),
        ('(["x"] junk)', 400),
        ("</files/x.txt>", 400),
        ("<http://[::1>(<urn:x>)", 400),
        ("(<not a url>)", 400),
        # Cut off inside the last list: read as far as it goes, and what is cut never holds.
        ('(["not-the-etag"]', 412),
        ('(<urn:uuid:nope> ["x"]', 412),
        ("(<", 412),
        ("(", 412),
        ('(Not ["unquoted', 412),
        ("(Not <DAV:no-lock> No", 412),
    ],
)
def test_a_malformed_if_header_never_lets_a_change_through(
    srv: InprocServer, folder: str, header: str, status: int
) -> None:
    """RFC 4918 10.4: an If header's conditions must all hold for the request to go ahead.
    WsgiDAV read what its patterns found and dropped the rest, so a conditional PUT whose
    header it could not read overwrote the file (a lost update); an unreadable tag URL was a
    500. What cannot be read is a 400; a header cut off inside its last list (litmus cuts
    long ones) is read up to the cut, and the condition cut off never holds."""
    url = folder + "guarded.txt"
    put(srv, url, b"original")
    response = call(srv, "PUT", url, b"lost update", {"If": header})
    assert response.status == status, (header, response.status, response.body[:200])
    if status == 400:
        assert b"If header" in response.body
    assert get_body(srv, url) == b"original"
    assert call(srv, "DELETE", url, headers={"If": header}).status == status
    assert get_body(srv, url) == b"original"


def test_if_headers_in_every_form_rfc_4918_gives_are_read(srv: InprocServer, folder: str) -> None:
    url = folder + "forms.txt"
    put(srv, url, b"v1")
    etag = call(srv, "HEAD", url).headers["ETag"]
    absolute, path = f"{srv.url}{path_of(url)}", path_of(url)
    holds = [
        f"([{etag}])",
        "(Not <DAV:no-lock>)",
        "(Not<DAV:no-lock>)",
        f"(<urn:uuid:nope>) ([{etag}])",
        f"(<urn:uuid:nope>)([{etag}])",
        f"<{absolute}> ([{etag}] Not <DAV:no-lock>)",
        f"<{path}> (not <DAV:no-lock>)\t(<urn:x>)",
        f"  <{absolute}>([{etag}])  ",
        f"([{etag}]) (Not <DAV:no-lock> [{etag[:10]}",  # cut off: the first list holds
    ]
    for header in holds:
        response = call(srv, "PUT", url, b"v1", {"If": header})
        assert response.status == 204, (header, response.status, response.body[:200])
    for header in ('(["other"])', "(<urn:uuid:nope>)", f"<{absolute}> (Not [{etag}])"):
        assert call(srv, "PUT", url, b"v2", {"If": header}).status == 412, header
    assert get_body(srv, url) == b"v1"


@pytest.mark.parametrize("name", ["à.txt", "Åsa.txt", "Рим.txt", "é.txt"])
def test_an_if_header_tag_in_raw_utf_8_names_its_file(
    srv: InprocServer, folder: str, name: str
) -> None:
    """Some clients put a tag's URL in the If header as raw UTF-8. A header is read as
    latin-1, where the bytes 0x85 and 0xA0 (of "à", "Å", Cyrillic "Er") are whitespace to
    Python: such a tag was refused as malformed (400) while "é" passed. And no such tag named
    its file, so its conditions were never evaluated: a stale one let the PUT through."""
    url = folder + q(name)
    put(srv, url, b"v1")
    etag = call(srv, "HEAD", url).headers["ETag"]
    raw_tag = f"{path_of(folder)}{name}".encode().decode("latin-1")
    for condition, status in ((f"[{etag}]", 204), ('["stale"]', 412)):
        response = raw_request(
            srv,
            [f"PUT {path_of(url)} HTTP/1.1", "Content-Length: 2", f"If: <{raw_tag}> ({condition})"],
            b"v2",
        )
        assert response.status == status, (condition, response.status, response.body[:200])
    assert get_body(srv, url) == b"v2"


def test_an_if_header_tag_names_its_file_in_either_unicode_form(
    srv: InprocServer, folder: str
) -> None:
    """A name is one file whether spelt composed (NFC) or decomposed (NFD, macOS); a tag in
    the other form than the request's URL was not taken for this file, so its conditions
    were skipped and a stale ETag let the PUT overwrite newer bytes."""
    composed, decomposed = "caf\u00e9.txt", "cafe\u0301.txt"
    put(srv, folder + q(composed), b"v1")
    etag = call(srv, "HEAD", folder + q(composed)).headers["ETag"]
    for request_name, tag_name in ((composed, decomposed), (decomposed, composed)):
        tag = f"{srv.url}{path_of(folder)}{q(tag_name)}"
        stale = call(srv, "PUT", folder + q(request_name), b"lost", {"If": f'<{tag}> (["stale"])'})
        assert stale.status == 412, (request_name, stale.status)
        current = call(srv, "HEAD", folder + q(request_name)).headers["ETag"]
        fresh = call(srv, "PUT", folder + q(request_name), b"v2", {"If": f"<{tag}> ([{current}])"})
        assert fresh.status == 204, (request_name, fresh.status)
    assert get_body(srv, folder + q(composed)) == b"v2"
    assert etag != call(srv, "HEAD", folder + q(composed)).headers["ETag"]


def test_an_if_header_etag_never_matches_a_folder_which_has_none(
    srv: InprocServer, folder: str
) -> None:
    """RFC 4918 10.4.8: an entity-tag condition holds when the resource has that tag, and a
    folder has none. WsgiDAV took every tag condition on a resource without an ETag as met,
    so a DELETE or MOVE of a folder guarded by a tag went through whatever the tag."""
    assert call(srv, "MKCOL", folder + "kept/").status == 201
    assert call(srv, "DELETE", folder + "kept/", headers={"If": '(["stale"])'}).status == 412
    moved = call(
        srv,
        "MOVE",
        folder + "kept/",
        headers={"Destination": path_of(folder) + "moved/", "If": '(["stale"])'},
    )
    assert moved.status == 412
    assert member_names(srv, folder) == ["kept"]
    assert call(srv, "DELETE", folder + "kept/", headers={"If": '(Not ["stale"])'}).status == 204


# --- 4. uploads cut off ----------------------------------------------------------------------


def _cut_off_put(srv: InprocServer, url: str, *, chunked: bool) -> None:
    """Send a PUT whose body stops after 1000 bytes, then close the connection."""
    tmp_dir = srv.application.blobs.tmp_dir
    before = set(tmp_dir.iterdir())
    payload = b"x" * 1000
    head = [
        f"PUT {path_of(url)} HTTP/1.1",
        f"Host: {HOST}:{srv.port}",
        f"Authorization: {basic_auth_header(srv.user, srv.password)}",
        "Content-Type: application/octet-stream",
    ]
    if chunked:
        head.append("Transfer-Encoding: chunked")
        body = b"%x\r\n" % len(payload) + payload + b"\r\n"  # no terminating 0-chunk
    else:
        head.append("Content-Length: 100000")
        body = payload
    sock = socket.create_connection((HOST, srv.port), timeout=10)
    try:
        sock.sendall("\r\n".join(head).encode("ascii") + b"\r\n\r\n" + body)
        # The server has started writing the body once its temp file shows up.
        wait_for(lambda: bool(set(tmp_dir.iterdir()) - before), timeout=3.0)
    finally:
        sock.close()
    left = wait_for(lambda: not (set(tmp_dir.iterdir()) - before), timeout=5.0)
    assert left, f"temp files left in {tmp_dir}: {sorted(set(tmp_dir.iterdir()) - before)}"
    time.sleep(0.2)  # let a (wrong) commit after the temp file's rename land


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_cut_off_upload_of_a_new_file_stores_nothing(
    srv: InprocServer, folder: str, chunked: bool
) -> None:
    name = f"never-finished-{uuid.uuid4().hex[:8]}.bin"
    url = folder + name
    _cut_off_put(srv, url, chunked=chunked)
    assert node_at(srv, url) is None
    assert call(srv, "GET", url).status == 404
    assert nodes_named(srv.application, name) == 0
    put(srv, folder + "after.txt", b"server still fine")


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_cut_off_upload_onto_an_existing_file_changes_nothing(
    srv: InprocServer, folder: str, chunked: bool
) -> None:
    url = folder + "kept.txt"
    put(srv, url, b"the original content")
    node = existing_node(srv, url)
    _cut_off_put(srv, url, chunked=chunked)
    assert get_body(srv, url) == b"the original content"
    after = existing_node(srv, url)
    assert after.current_version_id == node.current_version_id
    assert version_numbers(srv.application, node.id) == [1]


# --- 5. names --------------------------------------------------------------------------------

ODD_NAMES = [
    "with spaces in it.txt",
    'double "quoted".txt',
    "single 'quoted'.txt",
    "100% sure.txt",
    "%41 not A.txt",
    "hash # sign.txt",
    "question? mark.txt",
    "semi;colon.txt",
    "and & amp.txt",
    "plus + sign.txt",
    "résumé ✓ 日本.txt",
    "encoded %2F slash.txt",
    "<angle> & {braces} [x] =@$!,~`^|.txt",
]


@pytest.mark.parametrize("name", ODD_NAMES)
def test_odd_names_round_trip(srv: InprocServer, folder: str, name: str) -> None:
    url = folder + q(name)
    data = f"content of {name}".encode()
    assert call(srv, "PUT", url, data).status == 201
    assert get_body(srv, url) == data
    assert existing_node(srv, url).name == name
    assert member_names(srv, folder) == [name]
    entry = entry_of(srv, url)
    assert entry.path.rsplit("/", 1)[1] == name
    assert call(srv, "DELETE", url).status == 204
    assert call(srv, "GET", url).status == 404
    assert member_names(srv, folder) == []


@pytest.mark.parametrize("put_form", ["NFD", "NFC"])
def test_nfc_and_nfd_spellings_are_one_file(srv: InprocServer, folder: str, put_form: str) -> None:
    name = "résumé ✓ 日本.txt"
    get_form = "NFC" if put_form == "NFD" else "NFD"
    put_name = unicodedata.normalize(put_form, name)  # type: ignore[arg-type]
    get_name = unicodedata.normalize(get_form, name)  # type: ignore[arg-type]
    assert put_name != get_name
    assert call(srv, "PUT", folder + q(put_name), b"first").status == 201
    assert get_body(srv, folder + q(get_name)) == b"first"
    assert call(srv, "PUT", folder + q(get_name), b"second").status == 204
    assert get_body(srv, folder + q(put_name)) == b"second"
    names = member_names(srv, folder)
    assert len(names) == 1, names
    assert unicodedata.normalize("NFC", names[0]) == unicodedata.normalize("NFC", name)
    parent = existing_node(srv, folder)
    assert len(live_children(srv.application, parent.id)) == 1
    assert call(srv, "DELETE", folder + q(get_name)).status == 204
    assert member_names(srv, folder) == []


def test_name_of_255_characters_works(srv: InprocServer, folder: str) -> None:
    name = "n" * 251 + ".txt"
    assert len(name) == 255
    url = folder + q(name)
    assert call(srv, "PUT", url, b"long").status == 201
    assert get_body(srv, url) == b"long"
    assert member_names(srv, folder) == [name]
    assert call(srv, "MKCOL", folder + q("d" * 255)).status == 201


def test_a_long_name_sent_decomposed_counts_as_its_composed_form(
    srv: InprocServer, folder: str
) -> None:
    """macOS sends names decomposed (NFD): "è" is two code points. A name is looked up by
    its composed form (NFC), and is as long as that: 204 characters of a name that Finder
    sends as 404 were refused as over 255."""
    composed = "è" * 200 + ".txt"
    decomposed = unicodedata.normalize("NFD", composed)
    assert (len(composed), len(decomposed)) == (204, 404)
    assert call(srv, "PUT", folder + q(decomposed), b"finder").status == 201
    assert get_body(srv, folder + q(composed)) == b"finder"
    too_long = unicodedata.normalize("NFD", "è" * 256)
    assert call(srv, "PUT", folder + q(too_long), b"x").status == 400


@pytest.mark.parametrize("method", ["PUT", "MKCOL"])
def test_name_of_300_characters_is_refused_cleanly(
    srv: InprocServer, folder: str, method: str
) -> None:
    url = folder + q("n" * 296 + ".txt")
    response = call(srv, method, url, b"too long" if method == "PUT" else None)
    assert 400 <= response.status < 500, (response.status, response.body[:500])
    no_traceback(response)
    # What went wrong, in words, not the exception's repr.
    assert b"Source exception" not in response.body and b"InvalidName(" not in response.body
    assert member_names(srv, folder) == []


@pytest.mark.parametrize("method", ["PUT", "MKCOL"])
def test_control_characters_in_names_are_refused_cleanly(
    srv: InprocServer, folder: str, method: str
) -> None:
    url = folder + q("bell\x07name.txt")
    response = call(srv, method, url, b"data" if method == "PUT" else None)
    assert response.status == 400, (response.status, response.body[:500])
    no_traceback(response)
    assert member_names(srv, folder) == []  # and the listing is still well-formed XML


@pytest.mark.parametrize("char", ["\ufffe", "\uffff"], ids=["U+FFFE", "U+FFFF"])
@pytest.mark.parametrize("method", ["PUT", "MKCOL", "MOVE", "COPY"])
def test_names_xml_cannot_carry_are_refused_and_the_listing_stays_readable(
    srv: InprocServer, folder: str, method: str, char: str
) -> None:
    """XML 1.0 has no U+FFFE or U+FFFF: a member named with one made every PROPFIND of its
    folder a multistatus that no client could parse (Explorer, Finder, davfs2, rclone)."""
    put(srv, folder + "keep.txt", b"keep")
    url = folder + q(f"odd{char}name.txt")
    if method in ("MOVE", "COPY"):
        headers = {"Destination": srv.url + path_of(url)}
        response = call(srv, method, folder + "keep.txt", headers=headers)
    else:
        response = call(srv, method, url, b"data" if method == "PUT" else None)
    assert response.status == 400, (response.status, response.body[:500])
    no_traceback(response)
    assert member_names(srv, folder) == ["keep.txt"]  # parses the listing's XML


@pytest.mark.parametrize("char", ["\ufffe", "\uffff"], ids=["U+FFFE", "U+FFFF"])
def test_a_name_stored_before_that_rule_is_listed_readably_and_can_be_renamed(
    srv: InprocServer, folder: str, char: str
) -> None:
    """Earlier versions stored such names; after an upgrade, every listing of their folder,
    and of the trash once one was deleted, was still ill-formed XML, so no client could see
    the item to rename it. The name's href is percent-encoded; its text properties show the
    character as U+FFFD."""
    put(srv, folder + "keep.txt", b"keep")
    put(srv, folder + "odd.txt", b"odd")
    odd = f"odd{char}name.txt"
    with srv.application.db.write() as session:  # as an earlier version stored it
        node = session.get(Node, existing_node(srv, folder + "odd.txt").id)
        assert node is not None
        node.name = node.name_key = odd
    base = urllib.parse.unquote(path_of(folder)).rstrip("/")
    entries = propfind(srv, folder)  # parses the listing's XML
    assert sorted(entries) == sorted([base, f"{base}/keep.txt", f"{base}/{odd}"])
    shown = entries[f"{base}/{odd}"].props[DAV_NS + "displayname"].text
    assert shown == "odd\ufffdname.txt"

    moved = call(
        srv,
        "MOVE",
        folder + q(odd),
        headers={"Destination": srv.url + path_of(folder) + "renamed.txt"},
    )
    assert moved.status == 201, moved.body[:500]
    assert member_names(srv, folder) == ["keep.txt", "renamed.txt"]

    with srv.application.db.write() as session:
        node = session.get(Node, existing_node(srv, folder + "renamed.txt").id)
        assert node is not None
        node.name = node.name_key = odd
    assert call(srv, "DELETE", folder + q(odd)).status == 204
    trash = propfind(srv, "/trash/")  # parses too
    filename = "{http://nextcloud.org/ns}trashbin-filename"
    names = [e.props[filename].text for e in trash.values() if filename in e.props]
    assert "odd\ufffdname.txt" in names


TARGET_NAMES = ["what?.txt", "semi;colon.txt", "hash#tag.txt", "100%.txt", "a?b;c#d%25e.txt"]


@pytest.mark.parametrize("method", ["MOVE", "COPY"])
@pytest.mark.parametrize("target", TARGET_NAMES)
def test_move_and_copy_land_under_exactly_the_encoded_name(
    srv: InprocServer, folder: str, method: str, target: str
) -> None:
    source = folder + "source.txt"
    put(srv, source, b"payload")
    destination = srv.url + path_of(folder) + q(target)
    response = call(srv, method, source, headers={"Destination": destination})
    assert response.status == 201, (response.status, response.body[:500])
    expected = [target] if method == "MOVE" else sorted(["source.txt", target])
    assert member_names(srv, folder) == expected
    assert get_body(srv, destination) == b"payload"
    assert existing_node(srv, destination).name == target


@pytest.mark.parametrize("method", ["MOVE", "COPY"])
def test_an_escaped_slash_names_the_same_item_in_the_path_and_the_destination(
    srv: InprocServer, folder: str, method: str
) -> None:
    """An escaped slash (``%2F``) is part of a name in a request's path (a PUT of
    ``a%2Fb.txt`` makes the file ``a%2Fb.txt``), but the Destination of a COPY or MOVE
    un-escaped it into a separator: to ``c%2Fd.txt`` went into the folder ``c`` as ``d.txt``
    (or 409 with no ``c``), a name the same URL then did not find."""
    assert call(srv, "MKCOL", folder + "c/").status == 201
    assert put(srv, folder + "a%2Fb.txt", b"payload") == 201
    assert member_names(srv, folder) == ["a%2Fb.txt", "c"]
    destination = srv.url + path_of(folder) + "c%2fd.txt"
    response = call(srv, method, folder + "a%2Fb.txt", headers={"Destination": destination})
    assert response.status == 201, (response.status, response.body[:500])
    expected = ["c", "c%2Fd.txt"] if method == "MOVE" else ["a%2Fb.txt", "c", "c%2Fd.txt"]
    assert member_names(srv, folder) == expected
    assert member_names(srv, folder + "c/") == []
    for url in (destination, folder + q("c%2Fd.txt")):  # as sent, and as the listing spells it
        assert get_body(srv, url) == b"payload"


def test_a_blob_cut_short_is_a_clear_404_until_the_same_bytes_are_uploaded_again(
    srv: InprocServer, folder: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A blob file cut short (a crash with fsync off, a disk error) was served as a 200 that
    announced the whole size and then stopped, with nothing in the log; and an upload of the
    same bytes, under any name, pointed at the cut copy. It is a 404 naming the file and an
    error naming the blob (a HEAD too), until an upload of the same bytes puts a whole copy
    there."""
    data = os.urandom(200_000)
    put(srv, folder + "a.bin", data)
    key = existing_node(srv, folder + "a.bin").storage_key
    assert key is not None
    path = srv.application.services.blobs.path_of(key)  # type: ignore[attr-defined]
    os.truncate(path, 1000)
    caplog.clear()
    for url in (folder + "a.bin", folder + "a.bin?version=1"):
        got = call(srv, "GET", url)
        assert got.status == 404 and b"damaged in the blob store" in got.body, got.body[:300]
        assert call(srv, "HEAD", url).status == 404  # a HEAD answers as the GET does
    assert "holds 1000 bytes of" in caplog.text
    assert put(srv, folder + "b.bin", data) == 201
    assert get_body(srv, folder + "b.bin") == data
    assert get_body(srv, folder + "a.bin") == data


@pytest.mark.parametrize("method", ["MOVE", "COPY"])
def test_a_destinations_query_and_fragment_are_not_part_of_the_name(
    srv: InprocServer, folder: str, method: str
) -> None:
    """A Destination ``c.txt?x=1`` (or ``#frag``) named a new file ``c.txt?x=1``, where a
    PUT to the same URL makes ``c.txt``; escaped (``%3F``, ``%23``) they are part of the name,
    in both."""
    for stem, suffix, name in (
        ("c.txt", "?x=1", "c.txt"),
        ("d.txt", "#frag", "d.txt"),
        ("e.txt", "%3Fy%23z", "e.txt?y#z"),
    ):
        source = folder + f"source-{stem}"
        put(srv, source, b"payload")
        destination = srv.url + path_of(folder) + stem + suffix
        response = call(srv, method, source, headers={"Destination": destination})
        assert response.status == 201, (suffix, response.status, response.body[:300])
        assert name in member_names(srv, folder), (suffix, member_names(srv, folder))
        assert get_body(srv, folder + q(name)) == b"payload"


@pytest.mark.parametrize("method", ["MOVE", "COPY"])
@pytest.mark.parametrize("source", ["doc.txt", "inner/doc.txt", "inner/", "inner/deeper/"])
def test_replacing_a_folder_the_source_is_in_is_refused(
    srv: InprocServer, folder: str, method: str, source: str
) -> None:
    """``MOVE outer/inner/doc.txt`` to ``outer`` with Overwrite: T sent all of ``outer`` (the
    source and everything beside it) to the trash, to put the one file in its place."""
    outer = folder + "outer/"
    for sub in ("", "inner/", "inner/deeper/"):
        assert call(srv, "MKCOL", outer + sub).status == 201
    for name in ("doc.txt", "inner/doc.txt", "inner/deeper/doc.txt", "other.txt"):
        put(srv, outer + name, name.encode())
    destination = srv.url + path_of(outer).rstrip("/")
    response = call(
        srv, method, outer + source, headers={"Destination": destination, "Overwrite": "T"}
    )
    assert response.status == 403, (response.status, response.body[:300])
    assert member_names(srv, outer) == ["doc.txt", "inner", "other.txt"]
    for name in ("doc.txt", "inner/doc.txt", "inner/deeper/doc.txt", "other.txt"):
        assert get_body(srv, outer + name) == name.encode()


# --- 6. traversal ----------------------------------------------------------------------------

TRAVERSALS = [
    "/files/../{name}",
    "/files/%2e%2e/{name}",
    "/files/%2E%2E/{name}",
    "/files/a/%2e%2e/%2e%2e/etc/{name}",
    "/files/a/../../{name}",
    "/files/./../{name}",
    "/files/../files/../{name}",
    "/files/../../{name}",
    "/files/%2e%2e/%2e%2e/%2e%2e/{name}",
]


def _files_named(srv: InprocServer, name: str) -> set[Path]:
    return {p for p in srv.data_dir.parent.rglob("*") if name in p.name}


@pytest.mark.parametrize("template", TRAVERSALS)
def test_traversal_paths_never_escape(srv: InprocServer, template: str) -> None:
    app = srv.application
    name = f"escape-{uuid.uuid4().hex[:10]}"
    path = template.format(name=name)
    files_before = _files_named(srv, name)
    for method, body in (
        ("GET", None),
        ("PROPFIND", None),
        ("PUT", b"root:x:0:0:root:/root:/bin/sh\n"),
        ("MKCOL", None),
        ("DELETE", None),
    ):
        headers = {"Depth": "0"} if method == "PROPFIND" else {}
        response = call(srv, method, path, body, headers, timeout=3.0)
        assert response.status < 500, (method, path, response.status, response.body[:500])
        if method in ("GET", "PUT", "MKCOL"):
            assert 400 <= response.status < 500, (method, path, response.status)
        assert b"root:x:0:0" not in response.body
        no_traceback(response)
    assert nodes_named(app, name) == 0, f"{path} created a node"
    assert _files_named(srv, name) == files_before


@pytest.mark.parametrize(
    "template", ["/files/..%2f{name}", "/files/%2e%2e%2f%2e%2e%2f{name}", "/files/..%2F..%2F{name}"]
)
def test_encoded_slashes_never_escape(srv: InprocServer, template: str) -> None:
    """An encoded "/" never splits a path: whatever happens stays a child of /files/."""
    app = srv.application
    name = f"escape-{uuid.uuid4().hex[:10]}"
    path = template.format(name=name)
    home = existing_node(srv, srv.files_url)
    files_before = _files_named(srv, name)
    nodes_before = count_rows(app, Node)
    for method, body in (("PUT", b"x"), ("MKCOL", None), ("GET", None)):
        response = call(srv, method, path, body)
        assert response.status < 500, (method, path, response.status, response.body[:500])
        no_traceback(response)
    with app.db.read() as session:
        new = session.execute(
            sa.select(Node.name, Node.parent_id).where(Node.name.contains(name))
        ).all()
    assert all(parent == home.id and "/" not in n for n, parent in new), new
    assert count_rows(app, Node) - nodes_before == len(new)
    assert nodes_named(app, name) == 0
    assert _files_named(srv, name) == files_before


def test_passwd_is_never_served(srv: InprocServer) -> None:
    for path in ("/files/../../../../etc/passwd", "/files/%2e%2e/%2e%2e/%2e%2e/etc/passwd"):
        response = call(srv, "GET", path, timeout=3.0)
        assert 400 <= response.status < 500, (path, response.status)
        assert b"root:" not in response.body


@pytest.mark.parametrize(
    ("method", "path", "headers"),
    [
        ("PROPFIND", "/files/a%00b", {"Depth": "0"}),
        ("GET", "/files/a%00b/", {}),
        ("PUT", "/files/a%00b", {}),
        ("MKCOL", "/files/a%00b/", {}),
        ("DELETE", "/files/a%00b", {}),
        ("PROPFIND", "/users/a%00b/", {"Depth": "0"}),
        ("PROPFIND", "/files/?x=%00", {"Depth": "0"}),
        ("COPY", "/files/", {"Destination": "/files/a%00b/"}),
        ("PROPFIND", "/files/", {"Depth": "0", "User-Agent": "agent\x00x"}),
    ],
)
def test_a_nul_character_anywhere_is_a_bad_request_never_500(
    srv: InprocServer, method: str, path: str, headers: dict[str, str]
) -> None:
    # No name can hold one; PostgreSQL refuses it in any text (a 500 there), SQLite not.
    response = call(srv, method, srv.url + path, b"", headers)
    assert response.status == 400, response.body[:500]
    no_traceback(response)


@pytest.mark.parametrize("method", ["MOVE", "COPY"])
@pytest.mark.parametrize(
    "destination",
    [
        "{url}/../{name}",
        "{url}/files/../{name}",
        "{url}/files/../../{name}",
        "{url}/files/%2e%2e/{name}",
        "{url}/{name}",
        "http://other.example.com/files/{name}",
        "http://other.example.com/{name}",
    ],
)
def test_destination_outside_the_space_is_refused(
    srv: InprocServer, folder: str, method: str, destination: str
) -> None:
    app = srv.application
    source = folder + "stay.txt"
    put(srv, source, b"stay here")
    name = f"escape-{uuid.uuid4().hex[:10]}"
    target = destination.format(url=srv.url, name=name)
    response = call(srv, method, source, headers={"Destination": target})
    assert (400 <= response.status < 500) or response.status == 502, (
        target,
        response.status,
        response.body[:500],
    )
    no_traceback(response)
    assert nodes_named(app, name) == 0
    assert get_body(srv, source) == b"stay here"


@pytest.mark.parametrize("method", ["MOVE", "COPY"])
@pytest.mark.parametrize("source", ["/", "/users/", "/groups/", "/shared/", "/versions/"])
def test_the_servers_own_folders_cannot_be_moved_or_copied(
    srv: InprocServer, folder: str, method: str, source: str
) -> None:
    """The read-only folders of the layout: a plain 403. ``/`` answered 500 (WsgiDAV looked
    up the parent of ``/``), /users/ and /versions/ a 207 listing both 403 and 409."""
    destination = srv.url + path_of(folder) + "copy-of-layout/"
    response = call(srv, method, source, headers={"Destination": destination})
    assert response.status == 403, (response.status, response.body[:500])
    no_traceback(response)
    assert member_names(srv, folder) == []


def test_a_destination_in_raw_utf8_names_what_it_says(srv: InprocServer, folder: str) -> None:
    """A Destination sent as raw UTF-8 rather than percent-encoded (the bytes WSGI reads as
    latin-1) names the same file as its encoded spelling; it made 'Ã©tÃ©.txt'."""
    put(srv, folder + "summer.txt", b"sun")
    raw = f"{srv.url}{path_of(folder)}été.txt".encode().decode("latin-1")
    moved = raw_request(srv, [f"MOVE {path_of(folder)}summer.txt HTTP/1.1", f"Destination: {raw}"])
    assert moved.status == 201, (moved.status, moved.body[:300])
    assert get_body(srv, folder + urllib.parse.quote("été.txt")) == b"sun"


def test_a_destination_that_is_not_utf8_is_a_400_that_moves_nothing(
    srv: InprocServer, folder: str
) -> None:
    put(srv, folder + "stay.txt", b"here")
    for destination in (f"{path_of(folder)}%FF%FE.txt", f"{path_of(folder)}\xff.txt"):
        for method in ("MOVE", "COPY"):
            answer = raw_request(
                srv,
                [f"{method} {path_of(folder)}stay.txt HTTP/1.1", f"Destination: {destination}"],
            )
            assert answer.status == 400, (method, destination, answer.status)
            assert b"Destination is not valid UTF-8" in answer.body
    assert get_body(srv, folder + "stay.txt") == b"here"
    assert member_names(srv, folder) == ["stay.txt"]


def test_an_empty_destination_is_a_400_that_moves_nothing(srv: InprocServer, folder: str) -> None:
    """``Destination:`` with nothing in it was taken for a path and answered 409 ("Destination
    parent must be a collection"), which sends a client looking for a missing folder."""
    put(srv, folder + "stay.txt", b"here")
    for method in ("MOVE", "COPY"):
        answer = raw_request(srv, [f"{method} {path_of(folder)}stay.txt HTTP/1.1", "Destination: "])
        assert answer.status == 400, (method, answer.status)
        assert b"Destination header is empty" in answer.body
    assert member_names(srv, folder) == ["stay.txt"]


@pytest.mark.parametrize("method", ["MOVE", "COPY"])
@pytest.mark.parametrize(
    ("host", "destination_host"),
    [
        ("dav.example.test", "dav.example.test:80"),
        ("dav.example.test:80", "dav.example.test"),
        ("DAV.example.test", "dav.EXAMPLE.test:80"),
    ],
)
def test_a_destination_spelling_the_default_port_otherwise_is_the_same_server(
    srv: InprocServer, folder: str, method: str, host: str, destination_host: str
) -> None:
    """``http://host/`` and ``http://host:80/`` are one server (RFC 9110 4.2.3), but a
    Destination that spelled the port and a Host header that did not (a drive mounted as
    ``http://host:80/files/``, or the other way round) failed every rename with 502."""
    put(srv, folder + "a.txt", b"a")
    destination = f"http://{destination_host}{path_of(folder)}b.txt"
    headers = {"Host": host, "Destination": destination}
    response = call(srv, method, folder + "a.txt", headers=headers)
    assert response.status == 201, (response.status, response.body[:300])
    assert get_body(srv, folder + "b.txt") == b"a"
    elsewhere = {**headers, "Destination": f"http://{host}:8080{path_of(folder)}c.txt"}
    assert call(srv, method, folder + "b.txt", headers=elsewhere).status == 502


@pytest.mark.parametrize("method", ["MOVE", "COPY"])
def test_a_destination_without_a_host_header_is_taken_as_this_servers(
    srv: InprocServer, folder: str, method: str
) -> None:
    """HTTP/1.0 needs no Host header; WsgiDAV read it to compare the Destination's host and
    answered 500 (KeyError). Without one, no host is another server's."""
    for number, destination in enumerate(
        (f"{path_of(folder)}b", f"http://{HOST}:{srv.port}{path_of(folder)}b")
    ):
        put(srv, folder + f"a{number}.txt", b"a")
        line = f"{method} {path_of(folder)}a{number}.txt HTTP/1.0"
        sent = [line, f"Destination: {destination}{number}.txt"]
        response = raw_request(srv, sent, host="")
        assert response.status == 201, (response.status, response.body[:300])
        assert get_body(srv, folder + f"b{number}.txt") == b"a"
    put(srv, folder + "c.txt", b"c")
    line = f"{method} {path_of(folder)}c.txt HTTP/1.0"
    renamed = [line, f"Destination: http://dav.example.test{path_of(folder)}d.txt"]
    assert raw_request(srv, renamed, host="").status == 201
    assert get_body(srv, folder + "d.txt") == b"c"


# --- 7. bad requests -------------------------------------------------------------------------

MALFORMED = [
    b'<?xml version="1.0"?><D:propfind xmlns:D="DAV:"><D:prop>',
    b"this is not xml at all",
    b'<?xml version="1.0"?><D:x xmlns:D="DAV:"></D:y>',
    b'<?xml version="1.0"?><a:propfind xmlns:D="DAV:"/>',
    b"\xff\xfe\x00<",
]


@pytest.mark.parametrize("method", ["PROPFIND", "PROPPATCH", "LOCK"])
@pytest.mark.parametrize("body", MALFORMED, ids=[f"body{i}" for i in range(len(MALFORMED))])
def test_malformed_xml_is_a_bad_request(
    srv: InprocServer, folder: str, method: str, body: bytes
) -> None:
    url = folder + "target.txt"
    put(srv, url, b"x")
    headers = {"Content-Type": "application/xml", "Depth": "0"}
    response = call(srv, method, url, body, headers)
    assert response.status == 400, (response.status, response.body[:500])
    no_traceback(response)
    # The file is still fine and not locked.
    assert call(srv, "PUT", url, b"y").status == 204


# Bodies with a document type, each with the entity it declares: an internal entity, a billion
# laughs, an external entity (XXE), an external DTD. None is expanded or fetched: all are refused.
DOCTYPES = [
    (b'<!DOCTYPE d [<!ENTITY x "y">]>', b"&x;"),
    (
        b'<!DOCTYPE d [<!ENTITY a "aaaaaaaaaa">'
        + b"".join(
            f'<!ENTITY {chr(98 + i)} "{f"&{chr(97 + i)};" * 10}">'.encode() for i in range(8)
        )
        + b"]>",
        b"&i;",
    ),
    (b'<!DOCTYPE d [<!ENTITY x SYSTEM "file:///etc/passwd">]>', b"&x;"),
    (b'<!DOCTYPE d SYSTEM "http://127.0.0.1:9/evil.dtd">', b"v"),
]
_BODY_AROUND_VALUE = {
    "PROPFIND": b'<D:propfind xmlns:D="DAV:"><D:prop><z xmlns="urn:z">%s</z></D:prop></D:propfind>',
    "PROPPATCH": b'<D:propertyupdate xmlns:D="DAV:"><D:set><D:prop><z xmlns="urn:z">%s</z>'
    b"</D:prop></D:set></D:propertyupdate>",
    "LOCK": b'<D:lockinfo xmlns:D="DAV:"><D:lockscope><D:exclusive/></D:lockscope>'
    b"<D:locktype><D:write/></D:locktype><D:owner>%s</D:owner></D:lockinfo>",
}


@pytest.mark.parametrize("conditional", [False, True], ids=["plain", "if-none-match"])
@pytest.mark.parametrize("method", ["PROPFIND", "PROPPATCH", "LOCK"])
@pytest.mark.parametrize(
    ("doctype", "value"), DOCTYPES, ids=["entity", "laughs", "xxe", "external-dtd"]
)
def test_xml_body_with_a_doctype_is_a_bad_request(
    srv: InprocServer, folder: str, method: str, doctype: bytes, value: bytes, conditional: bool
) -> None:
    url = folder + "doctype.txt"
    put(srv, url, b"x")
    body = b'<?xml version="1.0"?>' + doctype + _BODY_AROUND_VALUE[method] % value
    headers = {"Content-Type": "application/xml", "Depth": "0"}
    if conditional:
        headers["If-None-Match"] = '"no-such-etag"'
    response = call(srv, method, url, body, headers)
    assert response.status == 400, (response.status, response.body[:500])
    # libxml2 stops a billion laughs itself, before the DOCTYPE is looked at.
    reasons = (b"with a DOCTYPE (DTD, entity declarations)", b"entity amplification")
    assert any(reason in response.body for reason in reasons), response.body[:500]
    assert b"root:" not in response.body
    no_traceback(response)
    # Nothing was stored or locked, and the folder still lists.
    node = existing_node(srv, url)
    assert count_rows(srv.application, DeadProperty, DeadProperty.node_id == node.id) == 0
    assert call(srv, "PUT", url, b"y").status == 204
    assert "doctype.txt" in member_names(srv, folder)


def early_answer(srv: InprocServer, method: str, url: str, body: bytes) -> int:
    """Send a request as a careful client does: stop sending the body once the server answers.

    Returns the status of the answer the server gave, before or after the whole body was sent.
    """
    head = (
        f"{method} {path_of(url)} HTTP/1.1\r\n"
        f"Host: {HOST}:{srv.port}\r\n"
        f"Authorization: {basic_auth_header(srv.user, srv.password)}\r\n"
        "Content-Type: application/xml\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode("ascii")
    sock = socket.create_connection((HOST, srv.port), timeout=10)
    try:
        sock.sendall(head)
        view = memoryview(body)
        while view:
            readable, _, _ = select.select([sock], [], [], 0.05)
            if readable:
                break
            try:
                sent = sock.send(view[:65536])
            except (BrokenPipeError, ConnectionResetError):
                break
            view = view[sent:]
        response = http.client.HTTPResponse(sock, method=method)
        try:
            response.begin()
        except (OSError, http.client.HTTPException) as exc:
            pytest.fail(f"{method} {url} got no answer: {exc!r}", pytrace=False)
        return response.status
    finally:
        sock.close()


@pytest.mark.parametrize("method", ["PROPFIND", "PROPPATCH", "LOCK"])
def test_xml_body_over_the_limit_is_413(srv: InprocServer, folder: str, method: str) -> None:
    limit = srv.application.settings.server.max_xml_body
    assert limit == 1024 * 1024
    filler = b"<!-- " + b"x" * limit + b" -->"
    query = b'<D:propfind xmlns:D="DAV:"><D:allprop/></D:propfind>'
    body = b'<?xml version="1.0"?>' + filler + query
    assert len(body) > limit
    assert early_answer(srv, method, folder, body) == 413
    assert call(srv, "PROPFIND", folder, headers={"Depth": "0"}).status == 207


def test_xml_body_at_the_limit_is_accepted(srv: InprocServer, folder: str) -> None:
    limit = srv.application.settings.server.max_xml_body
    head = b'<?xml version="1.0"?><D:propfind xmlns:D="DAV:"><D:allprop/></D:propfind>'
    body = head + b" " * (limit - len(head))
    assert len(body) == limit
    response = call(srv, "PROPFIND", folder, body, {"Depth": "0"})
    assert response.status == 207


def raw_request(
    srv: InprocServer, head_lines: list[str], body: bytes = b"", *, host: str | None = None
) -> Response:
    """Send one request exactly as given (no client to correct its headers) and read the answer;
    ``host`` is the Host header (default: the server's address; "" for none)."""
    head = "\r\n".join(
        [
            *head_lines,
            *([] if host == "" else [f"Host: {host or f'{HOST}:{srv.port}'}"]),
            f"Authorization: {basic_auth_header(srv.user, srv.password)}",
            "Connection: close",
        ]
    )
    sock = socket.create_connection((HOST, srv.port), timeout=10)
    try:
        sock.sendall(head.encode("latin-1") + b"\r\n\r\n" + body)
        response = http.client.HTTPResponse(sock, method=head_lines[0].split()[0])
        response.begin()
        return Response(response.status, dict(response.getheaders()), response.read())
    finally:
        sock.close()


def test_every_method_accepts_an_absolute_form_request_target(
    srv: InprocServer, folder: str
) -> None:
    # RFC 9112 3.2.2: a server MUST accept "GET http://host/path HTTP/1.1" (proxies send it),
    # and takes the host from it, not from the Host header. cheroot answered 400.
    origin = f"http://{HOST}:{srv.port}"
    base = origin + path_of(folder)

    def absolute(line: str, body: bytes = b"", *headers: str) -> Response:
        method, target = line.split(" ", 1)
        response = raw_request(
            srv, [f"{method} {target} HTTP/1.1", *headers], body, host="elsewhere.example"
        )
        assert response.status < 400, (line, response.status, response.body[:300])
        return response

    assert absolute(f"PUT {base}a%20b.txt", b"hello", "Content-Length: 5").status == 201
    assert absolute(f"GET {base}a%20b.txt").body == b"hello"
    assert absolute(f"HEAD {base}a%20b.txt").headers["Content-Length"] == "5"
    listed = absolute(f"PROPFIND {base}", b"", "Depth: 1").body
    assert f"{path_of(folder)}a%20b.txt".encode() in listed
    assert absolute(f"MKCOL {base}sub").status == 201
    assert "PROPFIND" in absolute(f"OPTIONS {base}sub").headers["Allow"]
    destination = f"Destination: {base}sub/moved.txt"
    assert absolute(f"MOVE {base}a%20b.txt", b"", destination).status == 201
    assert absolute(f"COPY {base}sub/moved.txt", b"", f"Destination: {base}c.txt").status == 201
    assert absolute(f"DELETE {base}c.txt").status == 204
    assert get_body(srv, folder + "sub/moved.txt") == b"hello"
    assert call(srv, "GET", folder + "c.txt").status == 404
    # Only the request's host is this server: a Destination naming the Host header's is not.
    elsewhere = f"Destination: http://elsewhere.example{path_of(folder)}x.txt"
    response = raw_request(
        srv, [f"MOVE {base}sub/moved.txt HTTP/1.1", elsewhere], host="elsewhere.example"
    )
    assert response.status == 502
    # A proxy's method stays refused.
    assert raw_request(srv, [f"CONNECT {HOST}:{srv.port} HTTP/1.1"]).status == 405


def test_options_answers_for_an_item_whose_name_is_escaped(srv: InprocServer, folder: str) -> None:
    # cheroot un-escapes the path of every method but OPTIONS: "a%20b.txt" was looked up as
    # written and answered as an unmapped URL (Allow: OPTIONS, PUT, MKCOL).
    put(srv, folder + "a%20b%2Bc.txt", b"x")
    for target in (path_of(folder), f"http://{HOST}:{srv.port}{path_of(folder)}"):
        response = raw_request(srv, [f"OPTIONS {target}a%20b%2Bc.txt HTTP/1.1"])
        assert response.status == 200
        assert "GET" in response.headers["Allow"], (target, response.headers["Allow"])
    assert raw_request(srv, ["OPTIONS * HTTP/1.1"]).status == 200


@pytest.mark.parametrize("method", ["PUT", "GET", "HEAD", "PROPFIND"])
@pytest.mark.parametrize("length", ["-5", "+5", "5x", "0x5"])
def test_a_malformed_content_length_is_a_400_that_stores_nothing(
    srv: InprocServer, folder: str, method: str, length: str
) -> None:
    url = folder + "cl.txt"
    response = raw_request(
        srv, [f"{method} {path_of(url)} HTTP/1.1", f"Content-Length: {length}", "Depth: 0"], b"abc"
    )
    assert response.status == 400, (response.status, response.body[:500])
    no_traceback(response)
    assert call(srv, "GET", url).status == 404
    put(srv, url, b"fine")  # the server still works


def errors_logged(caplog: pytest.LogCaptureFixture) -> list[str]:
    """The errors davserver logged (WsgiDAV's own logger has no output in the server)."""
    return [
        r.getMessage()
        for r in caplog.records
        if r.levelno >= logging.ERROR and not r.name.startswith("wsgidav")
    ]


def _sent(srv: InprocServer, head_lines: list[str], body: bytes) -> socket.socket:
    """A new connection on which one request, with the Host and the test user's
    credentials, and ``body`` have been sent exactly as given."""
    head = "\r\n".join(
        [
            *head_lines,
            f"Host: {HOST}:{srv.port}",
            f"Authorization: {basic_auth_header(srv.user, srv.password)}",
        ]
    )
    sock = socket.create_connection((HOST, srv.port), timeout=10)
    sock.sendall(head.encode("latin-1") + b"\r\n\r\n" + body)
    return sock


class _Unbuffered:
    """A socket for ``http.client.HTTPResponse`` that reads no byte past the answer."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock

    def makefile(self, mode: str) -> Any:
        return self.sock.makefile(mode, buffering=0)


def exchange(srv: InprocServer, head_lines: list[str], body: bytes) -> tuple[Response, bytes]:
    """One request on a kept-alive connection: the answer, and what the server sent after it
    before closing the connection or falling silent (b"" when it closed)."""
    sock = _sent(srv, head_lines, body)
    try:
        # Unbuffered: a buffered reader takes in what follows the answer too, and ``after``
        # would miss it.
        response = http.client.HTTPResponse(_Unbuffered(sock), method=head_lines[0].split()[0])
        response.begin()
        answer = Response(response.status, dict(response.getheaders()), response.read())
        sock.settimeout(3)
        try:
            after = sock.recv(100)
        except TimeoutError:
            after = b"(still open)"
        return answer, after
    finally:
        sock.close()


@pytest.mark.parametrize(
    "body",
    [b"zz\r\nabc\r\n0\r\n\r\n", b"3\r\nabcdef\r\n0\r\n\r\n"],
    ids=["size-not-hex", "chunk-longer-than-its-size"],
)
def test_a_malformed_chunked_body_is_a_400_that_stores_nothing_and_logs_no_error(
    srv: InprocServer, folder: str, caplog: pytest.LogCaptureFixture, body: bytes
) -> None:
    url = folder + "chunks.txt"
    with caplog.at_level(logging.ERROR):
        response, after = exchange(
            srv, [f"PUT {path_of(url)} HTTP/1.1", "Transfer-Encoding: chunked"], body
        )
    assert response.status == 400, (response.status, response.body[:500])
    assert b"malformed chunked request body" in response.body
    assert after == b""  # its framing is lost: the connection is closed
    assert errors_logged(caplog) == []
    assert call(srv, "GET", url).status == 404


def test_a_cut_off_chunked_upload_logs_no_error(
    srv: InprocServer, folder: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The client's connection breaking mid-body is the client's business, not a bug."""
    with caplog.at_level(logging.ERROR):
        _cut_off_put(srv, folder + "cut.bin", chunked=True)
    assert errors_logged(caplog) == []


def _half_closed(srv: InprocServer, head_lines: list[str], body: bytes) -> Response:
    """Send one request whose body ends where ``body`` does (the client shuts its sending side
    down after it), and read the answer."""
    sock = _sent(srv, head_lines, body)
    try:
        sock.shutdown(socket.SHUT_WR)
        response = http.client.HTTPResponse(sock, method=head_lines[0].split()[0])
        response.begin()
        return Response(response.status, dict(response.getheaders()), response.read())
    finally:
        sock.close()


@pytest.mark.parametrize(
    "tail",
    [b"00", b"0", b"0\r\n", b"0\r\nX-Trailer: a", b"0\r\nX-Trailer: a\r\n"],
    ids=["in-last-size", "after-last-size", "before-trailers", "in-trailer", "before-end"],
)
def test_a_chunked_upload_cut_off_in_its_last_chunk_or_trailers_stores_nothing(
    srv: InprocServer, folder: str, caplog: pytest.LogCaptureFixture, tail: bytes
) -> None:
    """The body of a chunked request ends with the blank line after the last chunk (RFC 9112,
    7.1): cut off anywhere before it, it is incomplete, like one cut off inside a chunk.
    cheroot took a size line ended by the end of the stream, or a bare "0", for the last
    chunk, and the first 1024 bytes became the file's new version."""
    url = folder + "pad.txt"
    put(srv, url, b"ORIGINAL")
    node = existing_node(srv, url)
    body = b"00000400\r\n" + b"A" * 1024 + b"\r\n" + tail
    with caplog.at_level(logging.ERROR):
        response = _half_closed(
            srv, [f"PUT {path_of(url)} HTTP/1.1", "Transfer-Encoding: chunked"], body
        )
    assert response.status == 400, (response.status, response.body[:300])
    assert get_body(srv, url) == b"ORIGINAL"
    assert version_numbers(srv.application, node.id) == [1]
    assert errors_logged(caplog) == []


def test_trailers_are_read_with_the_body_never_as_the_next_request(
    srv: InprocServer, folder: str
) -> None:
    """The trailer section belongs to the chunked body: cheroot never read it, so each of its
    lines was read as the start of the next request on the connection (a request hidden
    there ran; a pipelined one after it was lost)."""
    url, victim = folder + "trailed.txt", folder + "victim.txt"
    put(srv, victim, b"keep me")
    auth = f"Authorization: {basic_auth_header(srv.user, srv.password)}"
    host = f"Host: {HOST}:{srv.port}"
    chunked = f"PUT {path_of(url)} HTTP/1.1\r\n{host}\r\n{auth}\r\nTransfer-Encoding: chunked"
    pipelined = (
        chunked.encode()
        + b"\r\n\r\n3\r\nabc\r\n0\r\nX-Checksum: abc\r\nX-Other: 1\r\n\r\n"
        + f"GET {path_of(url)} HTTP/1.1\r\n{host}\r\n{auth}\r\nConnection: close\r\n\r\n".encode()
    )
    with socket.create_connection((HOST, srv.port), timeout=10) as sock:
        sock.sendall(pipelined)
        answers = b"".join(iter(lambda: sock.recv(65536), b""))  # until the GET's close
    statuses = re.findall(rb"^HTTP/1\.1 (\d{3}) ", answers, re.MULTILINE)
    assert statuses == [b"201", b"200"], answers[:500]
    assert answers.endswith(b"\r\n\r\nabc")
    # A "trailer" that is a request line is no field: the body is malformed, and the
    # connection is closed with nothing run.
    hidden = f"DELETE {path_of(victim)} HTTP/1.1\r\n{host}\r\n{auth}\r\n\r\n".encode()
    response, after = exchange(
        srv,
        [f"PUT {path_of(url)} HTTP/1.1", "Transfer-Encoding: chunked"],
        b"3\r\nxyz\r\n0\r\n" + hidden,
    )
    assert response.status == 400, (response.status, response.body[:300])
    assert after == b""
    assert get_body(srv, victim) == b"keep me"
    assert get_body(srv, url) == b"abc"


def test_a_big_chunk_is_streamed_to_disk_as_it_arrives(srv: InprocServer, folder: str) -> None:
    """cheroot read each chunk whole into memory before the application saw a byte of it: one
    chunk of 256 MiB took 256 MiB of the server's memory. Its bytes now reach the temp file
    as they arrive."""
    tmp_dir = srv.application.blobs.tmp_dir
    before = set(tmp_dir.iterdir())
    head = "\r\n".join(
        [
            f"PUT {path_of(folder)}big-chunk.bin HTTP/1.1",
            f"Host: {HOST}:{srv.port}",
            f"Authorization: {basic_auth_header(srv.user, srv.password)}",
            "Transfer-Encoding: chunked",
        ]
    )
    sock = socket.create_connection((HOST, srv.port), timeout=10)
    try:
        sock.sendall(head.encode() + b"\r\n\r\n" + b"%x\r\n" % (64 << 20) + b"x" * (4 << 20))

        def written() -> int:
            return sum(p.stat().st_size for p in set(tmp_dir.iterdir()) - before)

        assert wait_for(lambda: written() >= 1 << 20, timeout=5.0), written()
    finally:
        sock.close()
    assert call(srv, "GET", folder + "big-chunk.bin").status == 404


@pytest.mark.parametrize("size", [b"ffffffffffffffffffff", b"1" * 17, b"-5", b"+5", b"0x5", b"5 5"])
def test_a_chunk_size_out_of_any_range_is_a_400(
    srv: InprocServer, folder: str, caplog: pytest.LogCaptureFixture, size: bytes
) -> None:
    """A size that no upload could have (over 16 hex digits), or that is not plain hex, is
    the client's error: 400. Sizes of 2**64 and more were a 500 (OverflowError)."""
    url = folder + "huge.txt"
    with caplog.at_level(logging.ERROR):
        response, after = exchange(
            srv,
            [f"PUT {path_of(url)} HTTP/1.1", "Transfer-Encoding: chunked"],
            size + b"\r\nabc\r\n0\r\n\r\n",
        )
    assert response.status == 400, (response.status, response.body[:300])
    assert after == b""
    assert errors_logged(caplog) == []
    assert call(srv, "GET", url).status == 404


def _chunked(body: bytes, piece: int = 7) -> bytes:
    """``body`` in chunked transfer coding, ``piece`` bytes a chunk."""
    chunks = [body[i : i + piece] for i in range(0, len(body), piece)]
    return b"".join(b"%x\r\n%s\r\n" % (len(c), c) for c in chunks) + b"0\r\n\r\n"


def test_xml_bodies_sent_chunked_are_read_as_those_with_a_length(
    srv: InprocServer, folder: str
) -> None:
    """Clients that stream a body of unknown length send it chunked (Go's net/http does): a
    PROPFIND, PROPPATCH, LOCK or MKCOL body was read only by its Content-Length, so a chunked
    one was taken for no body at all (allprop, 400 "empty", a lock refresh, a MKCOL body
    accepted)."""
    put(srv, folder + "c.txt", b"chunky")
    path = path_of(folder + "c.txt")

    def chunked(method: str, target: str, body: bytes, *headers: str) -> Response:
        lines = [f"{method} {target} HTTP/1.1", "Transfer-Encoding: chunked", *headers]
        response, _after = exchange(srv, lines, _chunked(body))
        return response

    etag_only = b'<D:propfind xmlns:D="DAV:"><D:prop><D:getetag/></D:prop></D:propfind>'
    found = chunked("PROPFIND", path, etag_only, "Depth: 0")
    assert found.status == 207, found.body[:300]
    assert b"getetag" in found.body and b"getcontentlength" not in found.body
    assert chunked("PROPFIND", path, b"this is not xml", "Depth: 0").status == 400
    patch = (
        b'<D:propertyupdate xmlns:D="DAV:" xmlns:Z="urn:z"><D:set><D:prop>'
        b"<Z:color>red</Z:color></D:prop></D:set></D:propertyupdate>"
    )
    assert chunked("PROPPATCH", path, patch).status == 207
    assert b"red" in call(srv, "PROPFIND", folder + "c.txt", headers={"Depth": "0"}).body
    lock = (
        b'<D:lockinfo xmlns:D="DAV:"><D:lockscope><D:exclusive/></D:lockscope>'
        b"<D:locktype><D:write/></D:locktype></D:lockinfo>"
    )
    locked = chunked("LOCK", path, lock, "Timeout: Second-60")
    assert locked.status == 200, locked.body[:300]
    assert call(srv, "PUT", folder + "c.txt", b"no token").status == 423
    assert chunked("MKCOL", path_of(folder + "sub"), b"<x/>").status == 415
    assert call(srv, "PROPFIND", folder + "sub", headers={"Depth": "0"}).status == 404


def test_a_chunked_xml_body_over_the_limit_is_413(srv: InprocServer, folder: str) -> None:
    limit = srv.application.settings.server.max_xml_body
    body = b'<?xml version="1.0"?><!-- ' + b"x" * limit + b" -->"
    response, after = exchange(
        srv,
        [f"PROPFIND {path_of(folder)} HTTP/1.1", "Transfer-Encoding: chunked", "Depth: 0"],
        _chunked(body, 64 * 1024),
    )
    assert response.status == 413
    assert after == b""  # the rest of the body is not read: the connection is closed
    assert call(srv, "PROPFIND", folder, headers={"Depth": "0"}).status == 207


def test_content_length_beside_chunked_is_read_as_chunked_and_the_connection_closed(
    srv: InprocServer, folder: str
) -> None:
    """RFC 9112, 6.1: the chunked framing wins; the connection closes after the answer, so a
    proxy that framed the request by its Content-Length cannot smuggle a second one."""
    url = folder + "both.txt"
    smuggled = b"GET /files/ HTTP/1.1\r\nHost: x\r\n\r\n"
    body = b"3\r\nabc\r\n0\r\n\r\n" + smuggled
    response, after = exchange(
        srv,
        [
            f"PUT {path_of(url)} HTTP/1.1",
            "Content-Length: 3",
            "Transfer-Encoding: chunked",
        ],
        body,
    )
    assert response.status == 201
    assert response.headers.get("Connection") == "close"
    assert after == b""  # the "smuggled" request was never answered
    assert get_body(srv, url) == b"abc"


@pytest.mark.parametrize(
    "framing",
    [
        ["Content-Length: 3", "Content-Length: 40"],
        ["Content-Length : 40"],
        ["Transfer-Encoding\t: chunked"],
        ["Content-Length: 3", " 40"],
        ["X-Note: folded", " Content-Length: 40"],
        ["X_Pad: 1\nContent-Length: 40"],
    ],
    ids=[
        "two-lengths",
        "space-before-colon",
        "tab-before-colon",
        "folded-length",
        "folded",
        "underscored-bare-lf",
    ],
)
def test_headers_a_proxy_could_read_otherwise_are_a_400(
    srv: InprocServer, folder: str, framing: list[str]
) -> None:
    """RFC 9112 5.1, 5.2 and 6.3: whitespace between a field name and its colon, a line
    folded onto the one before (obs-fold) and two different Content-Lengths must be refused
    (400), as a proxy in front may frame the body otherwise (request smuggling). cheroot took
    the last Content-Length, read ``Content-Length :`` as Content-Length, and replaced a field
    with its folded continuation; the bytes past the first framing became a request."""
    url = folder + "framed.txt"
    smuggled = b"GET /files/ HTTP/1.1\r\nHost: x\r\n\r\n"
    body = b"abc" if "chunked" not in framing[0] else b"3\r\nabc\r\n0\r\n\r\n"
    response, after = exchange(srv, [f"PUT {path_of(url)} HTTP/1.1", *framing], body + smuggled)
    assert response.status == 400, (response.status, response.body[:300])
    assert after == b""  # closed: nothing more was read as a request
    assert call(srv, "GET", url).status == 404


@pytest.mark.parametrize(
    ("protocol", "framing"),
    [
        ("HTTP/1.1", ["Content-Length: +3"]),
        ("HTTP/1.1", ["Content-Length: 1_0"]),
        ("HTTP/1.1", ["Content-Length: -1"]),
        ("HTTP/1.1", ["Content-Length: \x0b3"]),
        ("HTTP/1.0", ["Content-Length: 3", "Transfer-Encoding: chunked", "Connection: keep-alive"]),
        ("HTTP/1.0", ["Transfer-Encoding: chunked", "Connection: keep-alive"]),
    ],
    ids=["plus", "underscore", "negative", "vertical-tab", "http10-te-and-length", "http10-te"],
)
def test_a_body_framed_in_a_way_a_proxy_may_read_otherwise_is_a_400_that_closes(
    srv: InprocServer, folder: str, protocol: str, framing: list[str]
) -> None:
    """RFC 9112 6.3: an invalid Content-Length is a 400 and the connection closes; cheroot
    read it with Python's int() ("+3", "1_0", "-1" and a vertical tab pass) and the answer
    kept the connection, its next bytes framed by that reading. 6.1: a Transfer-Encoding in
    an HTTP/1.0 request is a 400 that closes; cheroot framed it by its Content-Length (or as
    no body), and a request hidden in the chunks was served as the next one."""
    url = folder + "framed10.txt"
    smuggled = f"DELETE {path_of(folder)} HTTP/1.1\r\nHost: x\r\n\r\n".encode()
    body = b"abc" if "chunked" not in str(framing) else b"3\r\nabc\r\n0\r\n\r\n"
    response, after = exchange(srv, [f"PUT {path_of(url)} {protocol}", *framing], body + smuggled)
    assert response.status == 400, (response.status, response.body[:300])
    assert after == b""  # closed: nothing more was read as a request
    assert call(srv, "GET", url).status == 404
    assert call(srv, "PROPFIND", folder, headers={"Depth": "0"}).status == 207


@pytest.mark.parametrize(
    ("protocol", "connection", "kept"),
    [
        ("HTTP/1.1", "Close", False),
        ("HTTP/1.1", "keep-alive, close", False),
        ("HTTP/1.1", "TE", True),
        ("HTTP/1.0", "keep-alive", True),
        ("HTTP/1.0", "Keep-Alive", True),
        ("HTTP/1.0", "keep-alive, close", False),
    ],
)
def test_connection_options_are_read_as_a_list_ignoring_case(
    srv: InprocServer, folder: str, protocol: str, connection: str, kept: bool
) -> None:
    """RFC 9110 7.6.1: the Connection field is a list of options, compared ignoring case.
    cheroot compared the whole value: "Close" (or "keep-alive, close") kept the connection
    open without saying so, and an HTTP/1.0 client's "keep-alive" closed it."""
    response, after = exchange(
        srv,
        [f"PROPFIND {path_of(folder)} {protocol}", "Depth: 0", f"Connection: {connection}"],
        b"",
    )
    assert response.status == 207
    assert (after == b"(still open)") is kept, after
    said = response.headers.get("Connection", "").lower()
    if protocol == "HTTP/1.0":  # closing is the default: only keeping is said
        assert said == ("keep-alive" if kept else "")
    else:
        assert said == ("" if kept else "close")


@pytest.mark.parametrize(
    "head",
    [
        ["GET /files/ HTTP/1.1"],
        ["GET /files/ HTTP/1.1", f"Host: {HOST}", "Host: elsewhere.example"],
        ["GET /files/ HTTP/1.1", f"Host: {HOST}", "Bad Name: x"],
        ["GET /files/ HTTP/1.1", f"Host: {HOST}", "X-Note: a\rb"],
        ["GET /files/ HTTP/1.1", f"Host: {HOST}", "Authorization: Basic bm9ib2R5Og=="],
        ["MOVE /files/a HTTP/1.1", f"Host: {HOST}", "Destination: /files/b", "destination: /c"],
        ["PROPFIND /files/ HTTP/1.1", f"Host: {HOST}", "Depth: 0", "Depth: 1"],
    ],
    ids=["no-host", "two-hosts", "space-in-name", "bare-cr", "two-auth", "two-dest", "two-depth"],
)
def test_a_request_without_one_host_or_with_a_malformed_field_is_a_400(
    srv: InprocServer, head: list[str]
) -> None:
    """RFC 9112 3.2: an HTTP/1.1 request without a Host, or with two, is a 400; 5.1 and 2.2: so
    is a field name that is not a token, and a bare CR. cheroot served them all (with two
    Host fields the last won, which a proxy or a cache in front may not agree with). The same
    for two of a field that is no list (RFC 9110 5.3): with two Authorization fields a proxy
    that checks the first let through the second's account."""
    lines = [*head, f"Authorization: {basic_auth_header(srv.user, srv.password)}"]
    sock = socket.create_connection((HOST, srv.port), timeout=10)
    try:
        sock.sendall("\r\n".join(lines).encode("latin-1") + b"\r\n\r\n")
        response = http.client.HTTPResponse(sock, method="GET")
        response.begin()
        assert response.status == 400, response.status
    finally:
        sock.close()


def test_headers_past_the_cap_are_refused(srv: InprocServer, folder: str) -> None:
    big = "x" * (MAX_HEADER_BYTES + 1)
    response, _ = exchange(srv, [f"GET {path_of(folder)} HTTP/1.1", f"X-Big: {big}"], b"")
    assert response.status == 413
    fine, _ = exchange(srv, [f"GET {path_of(folder)} HTTP/1.1", "X-Big: " + "x" * 8000], b"")
    assert fine.status == 200


@pytest.mark.parametrize(("query", "status"), [("?version=99", 404), ("?thumbnail=256", 415)])
def test_a_head_answered_with_an_error_sends_no_body(
    srv: InprocServer, folder: str, query: str, status: int
) -> None:
    """RFC 9110 9.3.2: a HEAD answer has no body, errors included. A body after it is read as
    the next answer on the connection (Python's http.client: BadStatusLine; curl: 'Excess
    found')."""
    url = folder + "head.txt"
    put(srv, url, b"content")
    sock = _sent(srv, [f"HEAD {path_of(url)}{query} HTTP/1.1"], b"")
    received = b""
    try:
        sock.settimeout(1.0)
        while True:  # everything sent until the server falls silent or closes
            try:
                data = sock.recv(65536)
            except TimeoutError:
                break
            if not data:
                break
            received += data
    finally:
        sock.close()
    head, _, after = received.partition(b"\r\n\r\n")
    assert head.startswith(f"HTTP/1.1 {status} ".encode()), head
    assert after == b""


@pytest.fixture
def unexpected_error(monkeypatch: pytest.MonkeyPatch) -> str:
    """Make reading a file's content and setting a file's mtime fail as a bug would."""
    marker = f"unexpected-{uuid.uuid4().hex[:8]}"

    def fail(*_args: Any, **_kwargs: Any) -> Any:
        raise RuntimeError(marker)

    monkeypatch.setattr("providers.resources.FileResource.get_content", fail)
    # A PROPPATCH sets the mtime with the dead properties (one transaction).
    monkeypatch.setattr("davserver.services.files.FileService.set_dead_properties", fail)
    return marker


def test_a_store_failing_during_a_download_cuts_it_off_with_one_log_line(
    srv: InprocServer,
    folder: str,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
    capfd: pytest.CaptureFixture[str],
) -> None:
    """Once the answer has begun, a failure of the blob store (a known error, logged by the
    store) can only cut the connection off: it did so with a 40-line traceback from cheroot.
    Now one WARNING line names the request; the client sees a body shorter than promised."""
    url = folder + "cut.bin"
    put(srv, url, b"x" * 4_000_000)

    class Failing(io.RawIOBase):
        def __init__(self) -> None:
            self.sent = 0

        def readable(self) -> bool:
            return True

        def seekable(self) -> bool:
            return True

        def seek(self, offset: int, whence: int = 0) -> int:
            return 0

        def readinto(self, buffer: Any) -> int:
            if self.sent >= 3_000_000:  # some blocks (server.block_size) sent first
                raise Unavailable("the blob store is not answering (test)")
            n = min(len(buffer), 8192)
            buffer[:n] = b"x" * n
            self.sent += n
            return n

    monkeypatch.setattr(
        "providers.resources.FileResource.get_content", lambda self: io.BufferedReader(Failing())
    )
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        conn = http.client.HTTPConnection(HOST, srv.port, timeout=10)
        try:
            conn.request("GET", path_of(url), headers={"Authorization": Connection(srv).auth})
            answer = conn.getresponse()
            assert answer.status == 200
            with pytest.raises(http.client.IncompleteRead):
                answer.read()
        finally:
            conn.close()
        assert wait_for(lambda: bool(caplog.records), timeout=3.0)
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text
    lines = [r for r in caplog.records if r.name == "providers.error_printer"]
    assert len(lines) == 1 and lines[0].exc_info is None
    assert "not answering" in lines[0].getMessage() and path_of(url) in lines[0].getMessage()
    assert "Traceback" not in capfd.readouterr().err  # cheroot's error log


@pytest.mark.parametrize("method", ["COPY", "MOVE", "DELETE"])
def test_an_unexpected_error_in_a_copy_move_or_delete_is_logged_once_without_details(
    srv: InprocServer,
    folder: str,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
    method: str,
) -> None:
    """WsgiDAV answers a COPY's, MOVE's or DELETE's failure itself, with its page naming the
    exception (a database error's SQL), and logs nothing of it."""
    marker = f"unexpected-{uuid.uuid4().hex[:8]}"

    def fail(*_args: Any, **_kwargs: Any) -> Any:
        raise RuntimeError(marker)

    service = {"COPY": "copy", "MOVE": "move", "DELETE": "delete"}[method]
    monkeypatch.setattr(f"davserver.services.files.FileService.{service}", fail)
    url = folder + "bug.txt"
    put(srv, url, b"content")
    caplog.clear()
    headers = {} if method == "DELETE" else {"Destination": folder + "copy.txt"}
    with caplog.at_level(logging.ERROR):
        for accept in ("*/*", "text/html"):
            response = call(srv, method, url, headers={**headers, "Accept": accept})
            assert response.status == 500
            no_traceback(response)
            assert marker.encode() not in response.body and b"RuntimeError" not in response.body
        assert wait_for(lambda: len(caplog.records) >= 2, timeout=3.0)
    logged = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(logged) == 2, [r.getMessage() for r in logged]
    assert all(r.exc_info is not None and r.exc_info[0] is RuntimeError for r in logged)
    assert get_body(srv, url) == b"content"


def test_an_unexpected_error_is_logged_once_and_answered_500_without_details(
    srv: InprocServer, folder: str, caplog: pytest.LogCaptureFixture, unexpected_error: str
) -> None:
    url = folder + "bug.txt"
    put(srv, url, b"content")
    caplog.clear()
    with caplog.at_level(logging.ERROR):
        response = call(srv, "GET", url)
        assert response.status == 500
        no_traceback(response)
        assert unexpected_error.encode() not in response.body
        assert wait_for(lambda: bool(caplog.records), timeout=3.0)
    logged = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(logged) == 1, [r.getMessage() for r in logged]
    (record,) = logged
    assert record.exc_info is not None and record.exc_info[0] is RuntimeError
    assert "GET" in record.getMessage() and path_of(url) in record.getMessage()
    assert unexpected_error in caplog.text and "Traceback" in caplog.text


def test_an_unexpected_error_in_proppatch_is_logged_once_and_a_500_propstat(
    srv: InprocServer, folder: str, caplog: pytest.LogCaptureFixture, unexpected_error: str
) -> None:
    url = folder + "bug.txt"
    put(srv, url, b"content")
    body = proppatch_body(set_props="<D:getlastmodified>1600000000</D:getlastmodified>")
    caplog.clear()
    with caplog.at_level(logging.ERROR):
        response = call(srv, "PROPPATCH", url, body, {"Content-Type": "application/xml"})
        assert response.status == 207
        assert b"500 Internal Server Error" in response.body
        assert unexpected_error.encode() not in response.body
        no_traceback(response)
        assert wait_for(lambda: bool(caplog.records), timeout=3.0)
    logged = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(logged) == 1, [r.getMessage() for r in logged]
    assert logged[0].exc_info is not None and logged[0].exc_info[0] is RuntimeError


def test_a_proppatch_sets_all_its_properties_or_none(
    srv: InprocServer, folder: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """RFC 4918 9.2: a PROPPATCH's instructions are all carried out or none. Each property
    was set in a transaction of its own, so one that failed (the database, a lock taken
    meanwhile) left those before it set. Now one transaction sets them all, and one logbook
    row says so; when it fails, each property says so and none is set."""
    url = folder + "props.txt"
    put(srv, url, b"content")
    three = "<X:a>1</X:a><X:b>2</X:b><X:c>3</X:c>"
    headers = {"Content-Type": "application/xml"}
    assert call(srv, "PROPPATCH", url, proppatch_body(set_props=three), headers).status == 207
    node = existing_node(srv, url)
    with srv.application.db.read() as session:
        rows = session.scalars(
            sa.select(LogEntry.details).where(
                LogEntry.node_id == node.id, LogEntry.op_type == Op.NODE_PROPPATCH.value
            )
        ).all()
    assert [row["set"] for row in rows] == [[f"{{{CUSTOM_NS}}}{n}" for n in "abc"]], rows

    files = srv.application.files
    calls: list[int] = []

    def failing(*_args: Any, **_kwargs: Any) -> None:
        calls.append(1)
        raise Unavailable("the database is busy")

    modified = call(srv, "HEAD", url).headers["Last-Modified"]
    monkeypatch.setattr(files, "set_dead_properties", failing)
    # Windows sets its time beside its own properties: that is all or none too.
    again = (
        "<Z:Win32LastModifiedTime>Wed, 01 Jan 2003 00:00:00 GMT</Z:Win32LastModifiedTime>"
        "<X:a>9</X:a><X:d>4</X:d>"
    )
    answer = call(srv, "PROPPATCH", url, proppatch_body(set_props=again), headers)
    monkeypatch.undo()
    assert answer.status == 207 and len(calls) == 1
    assert b"503 Service Unavailable" in answer.body and b"424 Failed Dependency" in answer.body
    listed = call(srv, "PROPFIND", url, None, {"Depth": "0"}).body
    assert b">1</" in listed and b">9</" not in listed and b">4</" not in listed
    assert call(srv, "HEAD", url).headers["Last-Modified"] == modified
    # And both at once when nothing fails, in one logbook row.
    assert call(srv, "PROPPATCH", url, proppatch_body(set_props=again), headers).status == 207
    assert "2003" in call(srv, "HEAD", url).headers["Last-Modified"]


@pytest.mark.parametrize("method", ["FROB", "BREW", "PATCH", "SEARCH"])
def test_unknown_method_is_405_or_501(srv: InprocServer, folder: str, method: str) -> None:
    response = call(srv, method, folder)
    assert response.status in (405, 501), (method, response.status)
    no_traceback(response)


def test_a_405_names_the_methods_the_url_allows(srv: InprocServer, folder: str) -> None:
    # RFC 9110 15.5.6: a 405 MUST carry Allow. WsgiDAV's had none, so a client that read it
    # to learn what it may do instead (as RFC 9110 invites) found nothing; it is what OPTIONS
    # lists for the same URL.
    put(srv, folder + "file.txt", b"f")
    for method, target in (
        ("PUT", folder),
        ("MKCOL", folder),
        ("MKCOL", folder + "file.txt"),
        ("POST", folder + "file.txt"),
        ("FROB", folder),
        ("POST", f"http://{HOST}:{srv.port}/"),
    ):
        response = call(srv, method, target)
        assert response.status == 405, (method, target, response.status)
        allowed = call(srv, "OPTIONS", target).headers["Allow"]
        assert response.headers.get("Allow") == allowed, (method, target, response.headers)
        assert method not in allowed.split(", ")


@pytest.mark.parametrize("method", ["GET", "PUT", "PROPFIND", "MKCOL", "DELETE"])
@pytest.mark.parametrize("path", ["/files/%FF", "/files/%C3%28", "/files/a%80b/c"])
def test_url_that_is_not_utf8_is_a_clean_4xx(srv: InprocServer, method: str, path: str) -> None:
    headers = {"Depth": "0"} if method == "PROPFIND" else {}
    response = call(srv, method, path, b"x" if method == "PUT" else None, headers)
    assert response.status in (400, 404), (method, path, response.status)
    no_traceback(response)
    # The connection was answered, not dropped, and the server still works.
    assert call(srv, "PROPFIND", "/files/", headers={"Depth": "0"}).status == 207


# --- 8. PROPFIND depth -----------------------------------------------------------------------


@pytest.mark.parametrize("depth", ["infinity", "Infinity", None])
def test_propfind_depth_infinity_on_a_folder_is_refused(
    srv: InprocServer, folder: str, depth: str | None
) -> None:
    headers = {} if depth is None else {"Depth": depth}
    response = call(srv, "PROPFIND", folder, None, headers)
    assert response.status == 403, (response.status, response.body[:500])
    root = ET.fromstring(response.body)
    assert root.tag == DAV_NS + "error"
    assert root.find(DAV_NS + "propfind-finite-depth") is not None, response.body


def test_propfind_depth_0_and_1(srv: InprocServer, folder: str) -> None:
    put(srv, folder + "a.txt", b"a")
    assert call(srv, "MKCOL", folder + "sub").status == 201
    base = urllib.parse.unquote(path_of(folder)).rstrip("/")
    zero = propfind(srv, folder, "0")
    assert list(zero) == [base]
    assert DAV_NS + "collection" in [
        child.tag for child in zero[base].props[DAV_NS + "resourcetype"]
    ]
    one = propfind(srv, folder, "1")
    assert sorted(one) == sorted([base, base + "/a.txt", base + "/sub"])
    assert one[base + "/a.txt"].props[DAV_NS + "getcontentlength"].text == "1"
    # Depth infinity on a file is harmless: there is nothing below it.
    assert list(propfind(srv, folder + "a.txt", "infinity")) == [base + "/a.txt"]


def _peak_while_answered(
    srv: InprocServer, path: str, headers: Mapping[str, str]
) -> tuple[int, int]:
    """(peak bytes Python allocated while the application answered a PROPFIND and its body was sent,
    the body's length): the WSGI application called directly, its chunks counted and dropped
    as a server sends them."""
    environ = {
        "REQUEST_METHOD": "PROPFIND",
        "PATH_INFO": path,
        "SCRIPT_NAME": "",
        "SERVER_NAME": HOST,
        "SERVER_PORT": "80",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "REMOTE_ADDR": HOST,
        "wsgi.url_scheme": "http",
        "wsgi.input": io.BytesIO(b""),
        "wsgi.errors": io.StringIO(),
        "wsgi.version": (1, 0),
        "wsgi.multithread": True,
        "wsgi.multiprocess": False,
        "wsgi.run_once": False,
        "CONTENT_LENGTH": "0",
        "HTTP_AUTHORIZATION": basic_auth_header(srv.user, srv.password),
        **{"HTTP_" + name.upper().replace("-", "_"): value for name, value in headers.items()},
    }
    statuses: list[str] = []
    tracemalloc.start()
    try:
        start = tracemalloc.get_traced_memory()[0]
        body = srv.application(environ, lambda status, _headers, _exc=None: statuses.append(status))
        length = sum(len(chunk) for chunk in body)
        getattr(body, "close", lambda: None)()
        peak = tracemalloc.get_traced_memory()[1] - start
    finally:
        tracemalloc.stop()
    assert statuses and statuses[0].startswith("207"), statuses
    return peak, length


def test_a_big_listing_is_never_held_whole_as_resources_and_text(
    srv: InprocServer, folder: str
) -> None:
    """PROPFIND Depth 1 on a folder of 1,500 members: the answer is written as encoded chunks,
    each member's resource let go once written. Building every member's resource first, then
    the text, then one string of it and its bytes took 5.2 times the body's size at the peak
    (41 MiB for 10,000 members); now 1.4 to 1.7 (the members' rows, and the body once)."""
    app = srv.application
    parent = existing_node(srv, folder)
    actor = Actor(user_id=user_id(app, srv.user), username=srv.user)
    for i in range(1_500):
        app.services.files.create_empty_file(actor, parent, f"member-{i:05d}-of-a-big-folder.txt")
    peak, length = _peak_while_answered(srv, path_of(folder), {"Depth": "1"})
    assert length > 1_000_000
    assert peak < 2.5 * length, (peak, length)
    # The answer is whole: every member is in it.
    assert len(propfind(srv, folder)) == 1_501


# --- 9. properties ---------------------------------------------------------------------------


def test_an_items_dead_properties_are_bounded_all_or_nothing(
    srv: InprocServer, folder: str
) -> None:
    # They count against no quota: a user with 1 MB left stored 36 MB in one file's
    # properties in 40 requests, and every listing of its folder read them all.
    url = folder + "stuffed.txt"
    put(srv, url, b"s")
    filler = "a" * (MAX_DEAD_PROPERTY_BYTES // 5)

    def proppatch(props: str) -> dict[str, int]:
        response = call(srv, "PROPPATCH", url, proppatch_body(props))
        assert response.status == 207
        return next(iter(parse_multistatus(response.body).values())).status

    three = "".join(f"<X:p{i}>{filler}</X:p{i}>" for i in range(3))
    assert set(proppatch(three).values()) == {200}
    # Two more would pass the bound (one would fit): neither is set, 424 and 507.
    assert sorted(proppatch(f"<X:p3>{filler}</X:p3><X:p4>{filler}</X:p4>").values()) == [
        424,
        507,
    ]
    ask = (
        f'<?xml version="1.0"?><D:propfind xmlns:D="DAV:" xmlns:X="{CUSTOM_NS}">'
        "<D:prop><X:p0/><X:p3/></D:prop></D:propfind>"
    ).encode()
    entry = entry_of(srv, url, ask)
    assert f"{{{CUSTOM_NS}}}p0" in entry.props and f"{{{CUSTOM_NS}}}p3" not in entry.props
    # Replacing one is not growth: it fits.
    assert set(proppatch(f"<X:p0>{filler}</X:p0>").values()) == {200}
    app = srv.application
    actor = Actor(user_id=user_id(app, srv.user), username=srv.user)
    with pytest.raises(QuotaExceeded):  # the service holds the rule, for every front
        app.files.set_dead_properties(
            actor, existing_node(srv, url).id, {f"{{{CUSTOM_NS}}}p5": filler.encode() * 2}
        )


def test_a_proppatch_of_thousands_of_properties_costs_memory_in_proportion(
    srv: InprocServer, folder: str
) -> None:
    """Each property of a PROPPATCH was checked against the bound by summing every planned
    one again, and each refusal kept those sums alive until the answer was written: 12,000
    properties (242 KB) took 11 s and held 2.3 GB. The first that does not fit is refused
    (507), the rest fail with it (424), nothing is stored, and the request's memory is a
    small multiple of its size."""
    url = folder + "many.txt"
    put(srv, url, b"m")
    count = 6_000
    props = "".join(f"<X:p{i}>value {i:05d}</X:p{i}>" for i in range(count))
    tracemalloc.start()
    try:
        response = call(srv, "PROPPATCH", url, proppatch_body(props))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert response.status == 207
    statuses = Counter(next(iter(parse_multistatus(response.body).values())).status.values())
    assert statuses == {507: 1, 424: count - 1}
    assert peak < 64 * 1024 * 1024, f"{peak / 2**20:.0f} MiB for a {len(props) // 1024} KB body"
    node = existing_node(srv, url).id
    with srv.application.db.connect() as conn:
        assert read_dead_properties(conn, [node]) == {node: {}}


@pytest.mark.parametrize("depth", ["0", "1", "infinity"])
def test_proppatch_ignores_a_depth_header(srv: InprocServer, folder: str, depth: str) -> None:
    """RFC 4918 defines no Depth for PROPPATCH; webdavclient3's set_property sends Depth: 1,
    which was a 400 ("Depth must be '0'")."""
    url = folder + f"depth-{depth}.txt"
    put(srv, url, b"p")
    response = call(
        srv,
        "PROPPATCH",
        url,
        proppatch_body("<X:color>green</X:color>"),
        {"Content-Type": "application/xml", "Depth": depth},
    )
    assert response.status == 207, response.body[:300]
    entry = parse_multistatus(response.body)
    assert next(iter(entry.values())).status == {f"{{{CUSTOM_NS}}}color": 200}


def test_a_property_name_too_long_to_store_is_refused_and_changes_nothing(
    srv: InprocServer, folder: str
) -> None:
    """A 600-character namespace was a 500 on PostgreSQL (the column holds 512) and stored
    on SQLite, where it then stopped a ``db copy`` to PostgreSQL."""
    url = folder + "long-name.txt"
    put(srv, url, b"p")
    long_ns = "urn:" + "n" * 600
    body = proppatch_body(f'<X:color>red</X:color><L:p xmlns:L="{long_ns}">v</L:p>')
    response = call(srv, "PROPPATCH", url, body, {"Content-Type": "application/xml"})
    assert response.status == 207, response.body[:300]
    statuses = next(iter(parse_multistatus(response.body).values())).status
    assert statuses == {f"{{{CUSTOM_NS}}}color": 424, f"{{{long_ns}}}p": 400}
    ask = (
        f'<?xml version="1.0"?><D:propfind xmlns:D="DAV:" xmlns:X="{CUSTOM_NS}">'
        "<D:prop><X:color/></D:prop></D:propfind>"
    ).encode()
    assert f"{{{CUSTOM_NS}}}color" not in entry_of(srv, url, ask).props


def test_dead_property_is_kept_and_follows_a_move(srv: InprocServer, folder: str) -> None:
    url = folder + "props.txt"
    put(srv, url, b"p")
    response = call(
        srv,
        "PROPPATCH",
        url,
        proppatch_body('<X:color>blue <X:shade tone="dark">navy</X:shade></X:color>'),
        {"Content-Type": "application/xml"},
    )
    assert response.status == 207
    entry = parse_multistatus(response.body)
    assert next(iter(entry.values())).status == {f"{{{CUSTOM_NS}}}color": 200}

    ask = (
        f'<?xml version="1.0"?><D:propfind xmlns:D="DAV:" xmlns:X="{CUSTOM_NS}">'
        "<D:prop><X:color/></D:prop></D:propfind>"
    ).encode()
    color = entry_of(srv, url, ask).props[f"{{{CUSTOM_NS}}}color"]
    assert color.text == "blue "
    shade = color.find(f"{{{CUSTOM_NS}}}shade")
    assert shade is not None and shade.text == "navy" and shade.get("tone") == "dark"

    moved = folder + "moved-props.txt"
    response = call(srv, "MOVE", url, headers={"Destination": srv.url + path_of(moved)})
    assert response.status == 201
    color = entry_of(srv, moved, ask).props[f"{{{CUSTOM_NS}}}color"]
    assert color.text == "blue "
    # allprop lists it too
    assert f"{{{CUSTOM_NS}}}color" in entry_of(srv, moved).props

    response = call(
        srv,
        "PROPPATCH",
        moved,
        proppatch_body(remove_props="<X:color/>"),
        {"Content-Type": "text/xml"},
    )
    assert response.status == 207
    assert f"{{{CUSTOM_NS}}}color" not in entry_of(srv, moved).props
    node = existing_node(srv, moved)
    assert count_rows(srv.application, DeadProperty, DeadProperty.node_id == node.id) == 0


# PROPFIND variants: Depth, and an If header (such requests went to WsgiDAV's own handler).
LISTINGS = [
    pytest.param("0", {}, id="depth0"),
    pytest.param("1", {}, id="depth1"),
    pytest.param("0", {"If-None-Match": '"no-such-etag"'}, id="depth0-if"),
    pytest.param("1", {"If-None-Match": '"no-such-etag"'}, id="depth1-if"),
]
_PROPNAME = b'<?xml version="1.0"?><D:propfind xmlns:D="DAV:"><D:propname/></D:propfind>'


def propfind_with(
    srv: InprocServer, url: str, depth: str, headers: Mapping[str, str], body: bytes | None
) -> dict[str, Entry]:
    """``propfind`` with extra headers; the answer must be a well-formed 207."""
    response = call(srv, "PROPFIND", url, body, {"Depth": depth, **headers})
    assert response.status == 207, (response.status, response.body[:500])
    assert b"HTTP/1.1 500" not in response.body, response.body[:2000]
    return parse_multistatus(response.body)


@pytest.mark.parametrize(("depth", "headers"), LISTINGS)
@pytest.mark.parametrize("body", [None, _PROPNAME], ids=["allprop", "propname"])
def test_a_stored_property_that_does_not_parse_leaves_listings_well_formed(
    srv: InprocServer,
    folder: str,
    depth: str,
    headers: dict[str, str],
    body: bytes | None,
) -> None:
    # As stored before DOCTYPEs were refused: the entity reference was kept, unexpanded.
    url = folder + "entity.txt"
    put(srv, url, b"e")
    node = existing_node(srv, url)
    with srv.application.db.write() as session:
        session.add(
            DeadProperty(node_id=node.id, name="{urn:z}z", value=b'<z xmlns="urn:z">&x;</z>')
        )
    base = urllib.parse.unquote(path_of(folder)).rstrip("/")
    target = url if depth == "0" else folder
    entries = propfind_with(srv, target, depth, headers, body)
    entry = entries[base + "/entity.txt"]
    # Still listed, by name, with no value: a client can see it and remove it.
    assert entry.status.get("{urn:z}z") == 200, entry.status
    assert len(entry.props["{urn:z}z"]) == 0 and not entry.props["{urn:z}z"].text
    asked = (
        b'<?xml version="1.0"?><D:propfind xmlns:D="DAV:">'
        b'<D:prop><z xmlns="urn:z"/><D:displayname/></D:prop></D:propfind>'
    )
    named = propfind_with(srv, url, "0", headers, asked)[base + "/entity.txt"]
    assert named.status == {"{urn:z}z": 200, DAV_NS + "displayname": 200}


@pytest.mark.parametrize(("depth", "headers"), LISTINGS)
@pytest.mark.parametrize("body", [None, _PROPNAME], ids=["allprop", "propname"])
def test_a_property_named_in_any_script_leaves_listings_well_formed(
    srv: InprocServer,
    folder: str,
    depth: str,
    headers: dict[str, str],
    body: bytes | None,
) -> None:
    """XML names may hold any letter. A PROPPATCH of ``<X:été ä="1">`` was stored as
    ``<ns0:&#233;t&#233; ...>`` (character references are not allowed in names): every
    PROPFIND of the file, and every listing of its folder, answered XML no client could read."""
    url = folder + q("été.txt")
    put(srv, url, b"e")
    patch = proppatch_body('<X:été ä="ü">süß &amp; 😀</X:été>')
    assert call(srv, "PROPPATCH", url, patch).status == 207
    name = f"{{{CUSTOM_NS}}}été"
    base = urllib.parse.unquote(path_of(folder)).rstrip("/")
    entries = propfind_with(srv, url if depth == "0" else folder, depth, headers, body)
    entry = entries[base + "/été.txt"]
    assert entry.status.get(name) == 200, entry.status
    if body is None:
        assert entry.props[name].text == "süß & 😀"
        assert entry.props[name].get("ä") == "ü"
    asked = (
        f'<D:propfind xmlns:D="DAV:"><D:prop><X:été xmlns:X="{CUSTOM_NS}"/></D:prop></D:propfind>'
    )
    named = propfind_with(srv, url, "0", headers, asked.encode())[base + "/été.txt"]
    assert named.props[name].text == "süß & 😀"


def file_or_folder(srv: InprocServer, folder: str, name: str, kind: str) -> str:
    """A new folder ``sub/`` holding the file ``name`` (4 bytes): the URL of the file, or for
    ``kind`` "folder" of the folder."""
    sub = folder + "sub/"
    assert call(srv, "MKCOL", sub).status == 201
    put(srv, sub + name, b"four")
    return sub + name if kind == "file" else sub


@pytest.mark.parametrize(("depth", "headers"), LISTINGS)
@pytest.mark.parametrize("kind", ["file", "folder"])
def test_propname_answers_names_only(
    srv: InprocServer, folder: str, depth: str, headers: dict[str, str], kind: str
) -> None:
    target = file_or_folder(srv, folder, "named.txt", kind)
    response = call(srv, "PROPPATCH", target, proppatch_body("<X:color>blue</X:color>"))
    assert response.status == 207
    entries = propfind_with(srv, target, depth, headers, _PROPNAME)
    base = urllib.parse.unquote(path_of(target)).rstrip("/")
    expected = {base} | ({base + "/named.txt"} if kind == "folder" and depth == "1" else set())
    assert set(entries) == expected
    entry = entries[base]
    names = set(entry.props)
    assert {DAV_NS + "resourcetype", DAV_NS + "displayname", f"{{{CUSTOM_NS}}}color"} <= names
    if kind == "file":
        assert {DAV_NS + "getcontentlength", DAV_NS + "getetag"} <= names
    for each in entries.values():
        assert set(each.status.values()) == {200}, each.status
        for element in each.props.values():
            assert len(element) == 0 and not (element.text or "").strip(), ET.tostring(element)


def _allprop_including(*props: str) -> bytes:
    return (
        '<?xml version="1.0"?><D:propfind xmlns:D="DAV:" xmlns:oc="http://owncloud.org/ns"'
        f' xmlns:X="{CUSTOM_NS}"><D:allprop/><D:include>{"".join(props)}</D:include></D:propfind>'
    ).encode()


@pytest.mark.parametrize(("depth", "headers"), LISTINGS)
@pytest.mark.parametrize("kind", ["file", "folder"])
def test_allprop_with_include_adds_the_included_properties(
    srv: InprocServer, folder: str, depth: str, headers: dict[str, str], kind: str
) -> None:
    target = file_or_folder(srv, folder, "inc.txt", kind)
    body = _allprop_including(
        "<D:quota-used-bytes/>", "<oc:fileid/>", "<D:displayname/>", "<X:missing/>"
    )
    entries = propfind_with(srv, target, depth, headers, body)
    base = urllib.parse.unquote(path_of(target)).rstrip("/")
    entry = entries[base]
    # The allprop set, once each, ...
    assert {DAV_NS + "resourcetype", DAV_NS + "displayname", DAV_NS + "getlastmodified"} <= set(
        entry.props
    )
    # ... and what was included, though allprop leaves it out.
    assert OC_FILEID in entry.props
    assert entry.status[DAV_NS + "quota-used-bytes"] == (200 if kind == "folder" else 404)
    assert entry.status[f"{{{CUSTOM_NS}}}missing"] == 404
    if kind == "folder" and depth == "1":
        assert OC_FILEID in entries[base + "/inc.txt"].props
    plain = propfind_with(srv, target, depth, headers, None)[base]
    assert OC_FILEID not in plain.props and DAV_NS + "quota-used-bytes" not in plain.status


@pytest.mark.parametrize(
    "body",
    [
        b'<D:propfind xmlns:D="DAV:"><D:include><D:displayname/></D:include></D:propfind>',
        b'<D:propfind xmlns:D="DAV:"><D:propname/><D:include><D:displayname/></D:include>'
        b"</D:propfind>",
        b'<D:propfind xmlns:D="DAV:"><D:propname/><D:allprop/></D:propfind>',
        b'<D:propfind xmlns:D="DAV:"><D:prop><D:displayname/></D:prop><D:propname/></D:propfind>',
    ],
    ids=["include-alone", "propname-include", "propname-allprop", "prop-propname"],
)
@pytest.mark.parametrize("conditional", [False, True], ids=["plain", "if-none-match"])
def test_propfind_modes_that_do_not_go_together_are_a_bad_request(
    srv: InprocServer, folder: str, body: bytes, conditional: bool
) -> None:
    headers = {"Depth": "0"} | ({"If-None-Match": '"x"'} if conditional else {})
    response = call(srv, "PROPFIND", folder, body, headers)
    assert response.status == 400, (response.status, response.body[:500])
    no_traceback(response)


def test_a_propfind_names_each_property_once_and_a_bounded_number_of_them(
    srv: InprocServer, folder: str
) -> None:
    """The answer names each asked property for every member: one property asked 250,000
    times in a 1 MB request made a 328 MB answer for 100 files. A name asked again is asked
    once; more than MAX_NAMES distinct names (or MAX_NAMES_CHARS characters) is a 400 saying so."""
    for i in range(3):
        put(srv, f"{folder}f{i}.txt", b"x")

    def ask(names: str) -> Response:
        body = (
            f'<?xml version="1.0"?><D:propfind xmlns:D="DAV:" xmlns:X="{CUSTOM_NS}">'
            f"<D:prop>{names}</D:prop></D:propfind>"
        ).encode()
        return call(srv, "PROPFIND", folder, body, {"Depth": "1"})

    once = ask("<D:getcontentlength/><X:absent/>")
    repeated = ask("<D:getcontentlength/><X:absent/>" * 20_000)
    assert once.status == repeated.status == 207
    assert repeated.body == once.body
    assert ask("".join(f"<X:p{i}/>" for i in range(MAX_NAMES))).status == 207
    too_many = ask("".join(f"<X:p{i}/>" for i in range(MAX_NAMES + 1)))
    assert too_many.status == 400 and b"at most" in too_many.body, too_many.body[:300]
    count = MAX_NAMES_CHARS // 200 + 1  # few enough, but too long together
    long_names = "".join(f"<X:{'n' * 200}{i}/>" for i in range(count))
    assert ask(long_names).status == 400
    no_traceback(too_many)


@pytest.mark.parametrize(
    ("prop", "value"),
    [
        ("Z:Win32LastModifiedTime", "Wed, 01 Jan 2020 10:20:30 GMT"),
        ("D:getlastmodified", "Mon, 02 Jan 2006 15:04:05 GMT"),
    ],
)
def test_proppatch_of_modification_time_is_accepted(
    srv: InprocServer, folder: str, prop: str, value: str
) -> None:
    url = folder + "mtime.txt"
    put(srv, url, b"m")
    before = entry_of(srv, url).props[DAV_NS + "getlastmodified"].text
    assert before != value
    response = call(
        srv,
        "PROPPATCH",
        url,
        proppatch_body(f"<{prop}>{value}</{prop}>"),
        {"Content-Type": "application/xml"},
    )
    assert response.status == 207, (response.status, response.body[:500])
    statuses = next(iter(parse_multistatus(response.body).values())).status
    assert list(statuses.values()) == [200], statuses
    assert entry_of(srv, url).props[DAV_NS + "getlastmodified"].text == value
    assert call(srv, "GET", url).headers.get("Last-Modified") == value


def test_win32_last_modified_time_reads_back_what_proppatch_set(
    srv: InprocServer, folder: str
) -> None:
    """Explorer PROPPATCHes Win32LastModifiedTime (200), but a PROPFIND asking for it
    answered 404, as if the PROPPATCH had not happened. It is the file's client time."""
    url = folder + "win.txt"
    put(srv, url, b"w")
    value = "Wed, 01 Jan 2020 10:20:30 GMT"
    prop = "Z:Win32LastModifiedTime"
    body = proppatch_body(f"<{prop}>{value}</{prop}>")
    assert call(srv, "PROPPATCH", url, body, {"Content-Type": "application/xml"}).status == 207
    ask = (
        b'<?xml version="1.0"?><D:propfind xmlns:D="DAV:" xmlns:Z="urn:schemas-microsoft-com:">'
        b"<D:prop><Z:Win32LastModifiedTime/><D:getlastmodified/></D:prop></D:propfind>"
    )
    name = MS_NS + "Win32LastModifiedTime"
    for depth, target in (("0", url), ("1", folder)):
        entry = propfind(srv, target, depth, ask)[urllib.parse.unquote(path_of(url))]
        assert entry.status[name] == 200 and entry.props[name].text == value, entry.status
        assert entry.props[DAV_NS + "getlastmodified"].text == value
    # New content has the server's time until a client sets one again.
    put(srv, url, b"w2")
    entry = entry_of(srv, url, ask)
    assert entry.status[name] == 404
    assert entry.props[DAV_NS + "getlastmodified"].text != value


def test_proppatch_of_a_protected_property_is_403(srv: InprocServer, folder: str) -> None:
    url = folder + "protected.txt"
    put(srv, url, b"p")
    response = call(
        srv,
        "PROPPATCH",
        url,
        proppatch_body("<D:getetag>nope</D:getetag>"),
        {"Content-Type": "application/xml"},
    )
    assert response.status == 207
    statuses = next(iter(parse_multistatus(response.body).values())).status
    assert statuses == {DAV_NS + "getetag": 403}
    # The reason names the condition; it showed the address of a WsgiDAV object.
    described = ET.fromstring(response.body).findtext(DAV_NS + "responsedescription") or ""
    assert "cannot-modify-protected-property" in described, described
    assert "object at 0x" not in described


# --- 10. folders -----------------------------------------------------------------------------


def test_mkcol_on_existing_is_405_and_with_missing_parent_is_409(
    srv: InprocServer, folder: str
) -> None:
    assert call(srv, "MKCOL", folder + "made").status == 201
    assert call(srv, "MKCOL", folder + "made").status == 405
    put(srv, folder + "file.txt", b"f")
    assert call(srv, "MKCOL", folder + "file.txt").status == 405
    assert call(srv, "MKCOL", folder + "missing/child").status == 409
    assert call(srv, "MKCOL", folder + "file.txt/child").status == 409
    assert node_at(srv, folder + "missing") is None


def test_a_put_or_lock_to_a_path_ending_in_a_slash_makes_no_file(
    srv: InprocServer, folder: str
) -> None:
    # A trailing slash names a collection, and neither PUT nor LOCK makes one: it was a file
    # "new" (nginx answers 409 too). An existing folder stays 405 with or without the slash,
    # and a file is not overwritten through a path that calls it a folder.
    for method, body in (("PUT", b"data"), ("LOCK", LOCK_BODY)):
        response = call(srv, method, folder + "new/", body)
        assert response.status == 409, (method, response.status)
        assert b"MKCOL" in response.body
        assert node_at(srv, folder + "new") is None
    assert call(srv, "MKCOL", folder + "made/").status == 201
    assert call(srv, "PUT", folder + "made/", b"data").status == 405
    assert call(srv, "PUT", folder + "made", b"data").status == 405
    put(srv, folder + "file.txt", b"kept")
    assert call(srv, "PUT", folder + "file.txt/", b"data").status == 409
    assert get_body(srv, folder + "file.txt") == b"kept"


def test_delete_of_a_folder_is_a_soft_delete(srv: InprocServer, folder: str) -> None:
    app = srv.application
    sub = folder + "doomed/"
    assert call(srv, "MKCOL", sub).status == 201
    put(srv, sub + "inner.txt", b"inner")
    sub_node = existing_node(srv, sub)
    inner_node = existing_node(srv, sub + "inner.txt")
    assert call(srv, "DELETE", sub).status == 204
    assert call(srv, "PROPFIND", sub, headers={"Depth": "0"}).status == 404
    assert call(srv, "GET", sub + "inner.txt").status == 404
    assert member_names(srv, folder) == []
    with app.db.read() as session:
        sub_row = session.get(Node, sub_node.id)
        inner_row = session.get(Node, inner_node.id)
        assert sub_row is not None and sub_row.deleted_at is not None
        assert inner_row is not None
        assert count_rows(app, FileVersion, FileVersion.node_id == inner_node.id) == 1


def test_copy_of_a_folder_makes_rows_but_no_blobs(srv: InprocServer, folder: str) -> None:
    app = srv.application
    src = folder + "src/"
    assert call(srv, "MKCOL", src).status == 201
    assert call(srv, "MKCOL", src + "deeper").status == 201
    for i in range(3):
        put(srv, src + f"f{i}.txt", f"file {i} {uuid.uuid4()}".encode())
    put(srv, src + "deeper/g.txt", f"deep {uuid.uuid4()}".encode())
    nodes_before = count_rows(app, Node)
    blobs_before = count_rows(app, Blob)
    response = call(srv, "COPY", src, headers={"Destination": srv.url + path_of(folder) + "dst"})
    assert response.status == 201, (response.status, response.body[:500])
    assert count_rows(app, Node) == nodes_before + 6  # dst, deeper, f0..f2, g
    assert count_rows(app, Blob) == blobs_before
    assert get_body(srv, folder + "dst/deeper/g.txt") == get_body(srv, src + "deeper/g.txt")
    copied = existing_node(srv, folder + "dst/f0.txt")
    original = existing_node(srv, src + "f0.txt")
    assert copied.id != original.id and copied.sha256 == original.sha256


def test_move_of_a_big_folder_is_one_update(srv: InprocServer, folder: str) -> None:
    app = srv.application
    src = folder + "big/"
    assert call(srv, "MKCOL", src).status == 201
    conn = Connection(srv)
    try:
        for i in range(200):
            response = conn.request("PUT", src + f"f{i:03}.txt", f"file {i}".encode())
            assert response.status == 201
    finally:
        conn.close()
    big = existing_node(srv, src)
    dest = srv.url + path_of(folder) + "moved-big"
    with recorded_statements(app) as statements:
        response = call(srv, "MOVE", src, headers={"Destination": dest})
    assert response.status == 201, (response.status, response.body[:500])
    updates = [s for s in statements if s.lstrip().upper().startswith("UPDATE NODES")]
    assert len(updates) == 1, updates
    assert not [s for s in statements if s.lstrip().upper().startswith("INSERT INTO NODES")]
    moved = existing_node(srv, folder + "moved-big/")
    assert moved.id == big.id
    assert len(live_children(app, moved.id)) == 200
    assert get_body(srv, folder + "moved-big/f199.txt") == b"file 199"
    assert node_at(srv, src) is None


def test_uploads_take_a_fixed_number_of_statements(srv: InprocServer, folder: str) -> None:
    """Small-file PUTs are the hottest path: the statements each kind takes (reads of the
    credentials, the path and the locks, then one write transaction, which reads the locks
    again) stay fixed, whatever the folder holds. Fewer is welcome; more needs a reason, and
    this number changed with it: the second read of the locks sees one another process took
    since the first (on PostgreSQL after taking the turn at them, in a statement of its own:
    taken inside the read, the read missed a lock committed while it waited)."""
    app = srv.application
    conn = Connection(srv)
    # SQLite: BEGIN IMMEDIATE (psycopg's BEGIN is implicit); PostgreSQL: the write's turn at
    # the locks it checked, taken before it reads them again (``checks_to_repeat``).
    extra = 1
    budget = {"new file": 11 + extra, "new version": 13 + extra, "same bytes": 5 + extra}
    spent: dict[str, list[int]] = {kind: [] for kind in budget}
    try:
        for i in range(3):
            url = folder + f"f{i}.bin"
            for kind, body in (
                ("new file", f"{i} first".encode()),
                ("new version", f"{i} second".encode()),
                ("same bytes", f"{i} second".encode()),
            ):
                with recorded_statements(app) as statements:
                    response = conn.request("PUT", url, body)
                assert response.status in (201, 204), (kind, response.status)
                spent[kind].append(len(statements))
    finally:
        conn.close()
    # The fewest of three: a request now and then also touches its session row.
    assert {kind: min(counts) for kind, counts in spent.items()} == budget, spent


# --- 11. concurrent uploads ------------------------------------------------------------------


@pytest.mark.parametrize("existing", [False, True], ids=["new", "existing"])
def test_concurrent_puts_to_one_path_all_succeed(
    srv: InprocServer, folder: str, existing: bool
) -> None:
    app = srv.application
    url = folder + "contended.txt"
    if existing:
        put(srv, url, b"before the race")
    writers = 6
    barrier = threading.Barrier(writers)
    statuses: list[int] = []
    errors: list[BaseException] = []

    def upload(i: int) -> None:
        conn = Connection(srv)
        try:
            conn.conn.connect()
            barrier.wait(timeout=10)
            statuses.append(conn.request("PUT", url, f"writer {i} ".encode() * (i + 1)).status)
        except BaseException as exc:
            errors.append(exc)
        finally:
            conn.close()

    threads = [threading.Thread(target=upload, args=(i,)) for i in range(writers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert errors == []
    assert len(statuses) == writers
    assert all(s in (201, 204) for s in statuses), statuses
    # One PUT created the file; the others added versions to it (all answered 201 before).
    assert statuses.count(201) == (0 if existing else 1), statuses
    node = existing_node(srv, url)
    expected = writers + (1 if existing else 0)
    assert version_numbers(app, node.id) == list(range(1, expected + 1))
    assert live_children(app, existing_node(srv, folder).id) == ["contended.txt"]
    assert get_body(srv, url).startswith(b"writer ")


def race(srv: InprocServer, requests: list[tuple[str, str, dict[str, str]]]) -> list[int]:
    """Send the requests at once, each on its own connection: their statuses, in order."""
    barrier = threading.Barrier(len(requests))
    statuses: dict[int, int] = {}
    errors: list[BaseException] = []

    def send(i: int) -> None:
        method, url, headers = requests[i]
        conn = Connection(srv)
        try:
            conn.conn.connect()
            barrier.wait(timeout=10)
            statuses[i] = conn.request(method, url, None, headers).status
        except BaseException as exc:
            errors.append(exc)
        finally:
            conn.close()

    threads = [threading.Thread(target=send, args=(i,)) for i in range(len(requests))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert errors == []
    return [statuses[i] for i in range(len(requests))]


def test_concurrent_moves_of_one_source_succeed_once(srv: InprocServer, folder: str) -> None:
    source = folder + "moving/"
    assert call(srv, "MKCOL", source).status == 201
    put(srv, source + "in.txt", b"hi")
    moves = [("MOVE", source, {"Destination": f"{folder}dest{i}/"}) for i in range(6)]
    statuses = race(srv, moves)
    assert sorted(statuses) == [201] + [404] * 5, statuses
    assert live_children(srv.application, existing_node(srv, folder).id) == [
        f"dest{statuses.index(201)}"
    ]


def test_a_delete_racing_a_move_never_trashes_the_moved_node(
    srv: InprocServer, folder: str
) -> None:
    for round_no in range(5):
        source, moved = f"{folder}from{round_no}.txt", f"{folder}to{round_no}.txt"
        put(srv, source, b"content")
        move, delete = race(srv, [("MOVE", source, {"Destination": moved}), ("DELETE", source, {})])
        assert sorted([move, delete]) in ([201, 404], [204, 404]), (move, delete)
        assert (call(srv, "GET", moved).status == 200) == (move == 201)


def test_concurrent_moves_onto_one_name_each_overwrite_what_is_there(
    srv: InprocServer, folder: str
) -> None:
    """With Overwrite: T each MOVE replaces whatever is at the destination when it runs,
    whether or not something was there when the request began."""
    sources = [f"{folder}s{i}.bin" for i in range(6)]
    for i, source in enumerate(sources):
        put(srv, source, f"source {i}".encode())
    statuses = race(srv, [("MOVE", s, {"Destination": folder + "same.bin"}) for s in sources])
    assert all(status in (201, 204) for status in statuses), statuses
    assert live_children(srv.application, existing_node(srv, folder).id) == ["same.bin"]
    assert get_body(srv, folder + "same.bin").startswith(b"source ")


def test_a_file_renamed_over_a_document_becomes_its_newest_version(
    srv: InprocServer, folder: str
) -> None:
    """Editors save by writing a temporary file and renaming it over the document (gedit,
    LibreOffice, vim through davfs2: MOVE with Overwrite: T). The document kept none of its
    history: its node went to the trash and the renamed file started again at version 1."""
    doc = folder + "report.txt"
    put(srv, doc, b"draft 1")
    put(srv, doc, b"draft 2")
    before = existing_node(srv, doc)
    temporary = folder + ".report.txt.swp"
    put(srv, temporary, b"draft 3")
    headers = {"Destination": srv.url + path_of(doc), "Overwrite": "T"}
    moved = call(srv, "MOVE", temporary, headers=headers)
    assert moved.status == 204, (moved.status, moved.body[:300])

    assert get_body(srv, doc) == b"draft 3"
    assert call(srv, "GET", temporary).status == 404
    assert member_names(srv, folder) == ["report.txt"]
    after = existing_node(srv, doc)
    assert after.id == before.id  # the same document, one version further
    assert version_numbers(srv.application, after.id) == [1, 2, 3]
    listing = call(srv, "PROPFIND", "/versions" + path_of(doc) + "/", headers={"Depth": "1"})
    assert listing.status == 207 and listing.body.count(b"</D:displayname>") == 4
    refused = call(srv, "MOVE", doc, headers={**headers, "Overwrite": "F"})
    assert refused.status in (403, 412)  # onto itself, or Overwrite: F


def test_concurrent_mkcols_of_one_name_make_it_once(srv: InprocServer, folder: str) -> None:
    statuses = race(srv, [("MKCOL", folder + "samedir/", {})] * 6)
    assert sorted(statuses) == [201] + [405] * 5, statuses


def test_many_idle_clients_keep_their_connections(srv: InprocServer, folder: str) -> None:
    """Every mounted drive holds a connection open between requests. Past cheroot's default of
    10 idle connections each answer said ``Connection: close``: a new TCP (and TLS) handshake
    per request for every client beyond the tenth."""
    clients = [Connection(srv) for _ in range(40)]
    try:
        for rounds in range(2):
            for i, client in enumerate(clients):
                response = client.request("PROPFIND", folder, headers={"Depth": "0"})
                assert response.status == 207
                assert response.headers.get("Connection", "").lower() != "close", (
                    f"client {i} of {len(clients)}, round {rounds}: the server closed it"
                )
                assert client.conn.sock is not None
    finally:
        for client in clients:
            client.close()


@pytest.fixture(params=["http", "https"])
def two_threads(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[InprocServer]:
    """A server with two worker threads, over HTTP or HTTPS (on SQLite: what is tested with
    it is cheroot's)."""
    tls: dict[str, object] = {}
    if request.param == "https":
        cert, key = self_signed(tmp_path)
        tls = {"server__ssl_certificate": str(cert), "server__ssl_private_key": str(key)}
    with run_inproc_server("sqlite", tmp_path, server__threads=2, **tls) as server:
        yield server


def test_connections_that_send_nothing_hold_no_thread(two_threads: InprocServer) -> None:
    """cheroot handed each new connection to a worker thread at once, to wait up to
    ``request_timeout`` (60 s) for a request line: a few connections that said nothing (a
    browser's speculative preconnects, a load balancer's TCP check, or a script) left every
    thread waiting and everyone else unanswered for a minute. With TLS one was enough: the
    thread accepting connections made the handshake, and waited for it."""
    silent = [socket.create_connection((HOST, two_threads.port)) for _ in range(6)]
    try:
        started = time.monotonic()
        response = call(two_threads, "PROPFIND", "/files/", headers={"Depth": "0"}, timeout=5)
        assert response.status == 207
        assert time.monotonic() - started < 5
    finally:
        for sock in silent:
            sock.close()


@pytest.fixture(params=["http", "https"])
def trickled_to(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[InprocServer]:
    """A server with two worker threads that gives a request 2 s for its line and headers
    (and a connection as long for its TLS handshake), over HTTP or HTTPS."""
    tls: dict[str, object] = {}
    if request.param == "https":
        cert, key = self_signed(tmp_path)
        tls = {"server__ssl_certificate": str(cert), "server__ssl_private_key": str(key)}
    with run_inproc_server(
        "sqlite", tmp_path, server__threads=2, server__header_timeout=2, **tls
    ) as server:
        yield server


def test_a_small_body_has_the_request_timeout_to_arrive_then_a_408(tmp_path: Path) -> None:
    """A body of up to 64 KiB is gathered with the headers, without a thread; it had to come
    within ``header_timeout`` of the request's first byte, and a slower one was cut off
    without an answer. It has ``request_timeout`` once the headers are in, as a worker reading
    it would wait; then 408, and the connection closes."""
    with run_inproc_server(
        "sqlite", tmp_path, server__header_timeout=1, server__request_timeout=4
    ) as server:
        body = b"s" * 60_000
        head = (
            f"PUT /files/slow-small.bin HTTP/1.1\r\nHost: {HOST}\r\n"
            f"Authorization: {basic_auth_header(server.user, server.password)}\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        ).encode()
        with socket.create_connection((HOST, server.port), timeout=15) as sock:
            sock.sendall(head)
            for i in range(0, len(body), 10_000):  # 2.5 s in all: past header_timeout
                time.sleep(0.5)
                sock.sendall(body[i : i + 10_000])
            assert sock.makefile("rb").readline().split()[1] == b"201"
        with socket.create_connection((HOST, server.port), timeout=15) as sock:
            sock.sendall(head + body[:10])
            started = time.perf_counter()
            reader = sock.makefile("rb")
            assert reader.readline().split()[1] == b"408"
            assert 3 < time.perf_counter() - started < 10
            while reader.readline() not in (b"\r\n", b""):
                pass
            assert reader.read() == b"The request body did not arrive in time.\n"  # then closed


def test_a_request_trickling_its_headers_is_cut_off(trickled_to: InprocServer) -> None:
    """A client that starts a request and sends its headers a byte at a time (slowloris) held
    a worker thread for as long as it kept trickling: ``request_timeout`` bounds each wait for a
    byte, not the whole. Three of them held every thread. The request line and headers, and
    the TLS handshake before them, now have ``header_timeout`` seconds in all."""
    stop = threading.Event()
    tls = trickled_to.url.startswith("https")

    def trickle(handshake_only: bool) -> None:
        try:
            with socket.create_connection((HOST, trickled_to.port)) as raw:
                if handshake_only:  # a TLS record that never ends
                    raw.sendall(b"\x16\x03\x01\x02\x00\x01")
                    while not stop.wait(0.2):
                        raw.sendall(b"\x00")
                    return
                sock = raw
                if tls:
                    sock = ssl._create_unverified_context().wrap_socket(raw)
                sock.sendall(f"GET /files/ HTTP/1.1\r\nHost: {HOST}\r\n".encode())
                while not stop.wait(0.2):
                    sock.sendall(b"X")
        except OSError:  # cut off: what is expected
            pass

    slow = [tls and i < 2 for i in range(3)]  # over TLS two handshakes, one request
    threads = [threading.Thread(target=trickle, args=(hs,), daemon=True) for hs in slow]
    for thread in threads:
        thread.start()
    try:
        time.sleep(0.5)  # all three are trickling
        started = time.monotonic()
        response = call(trickled_to, "PROPFIND", "/files/", headers={"Depth": "0"}, timeout=15)
        assert response.status == 207
        assert time.monotonic() - started < 5
    finally:
        stop.set()
        for thread in threads:
            thread.join(5)


def test_headers_that_stop_coming_are_closed_after_header_timeout(
    trickled_to: InprocServer,
) -> None:
    """A request line and part of the headers, then nothing: the connection was found late
    only when more bytes came, so it stayed for the idle timeout (60 s), not header_timeout
    (2 s here), as README says."""
    with socket.create_connection((HOST, trickled_to.port), timeout=30) as raw:
        sock = raw
        if trickled_to.url.startswith("https"):
            sock = ssl._create_unverified_context().wrap_socket(raw)
        sock.sendall(b"GET /files/ HTTP/1.1\r\nHo")
        started = time.monotonic()
        with suppress(ConnectionResetError, ssl.SSLError):
            assert sock.recv(100) == b""
        assert time.monotonic() - started < 5


@pytest.mark.parametrize("scheme", ["http", "https"])
def test_headers_sent_a_byte_at_a_time_hold_no_thread(scheme: str, tmp_path: Path) -> None:
    """``header_timeout`` bounded how long a client sending its headers a byte at a time held a
    worker thread, not whether it held one: as many such clients as threads, opened anew every
    20 s, kept every other client waiting (a request took 18 s with 40 of them and 32 threads).
    A request's line and headers now gather in the selector, as an idle connection waits there,
    and a thread takes the request once they are all in; a slow client's request still gets its
    answer, and one past ``header_timeout`` is closed. Over TLS the handshake is made there
    too: a TLS record trickled a byte at a time held a thread as well."""
    tls: dict[str, object] = {}
    if scheme == "https":
        cert, key = self_signed(tmp_path)
        tls = {"server__ssl_certificate": str(cert), "server__ssl_private_key": str(key)}
    # The patient client's headers take 2.5 s, and 4 s or more on a machine running the whole
    # suite (each of its bytes waits its turn among a dozen trickling threads): a header_timeout
    # of 4 s closed it unanswered there once. 8 s leaves room, and the endless ones still meet
    # it well within the 15 s each is given below.
    with run_inproc_server(
        "sqlite", tmp_path, server__threads=2, server__header_timeout=8, **tls
    ) as server:
        stop = threading.Event()
        auth = basic_auth_header(server.user, server.password)
        head = f"PROPFIND /files/ HTTP/1.1\r\nHost: {HOST}\r\nDepth: 0\r\n"
        head += f"Authorization: {auth}\r\nContent-Length: 0\r\n\r\n"

        def connect(handshake: bool = True) -> socket.socket:
            sock = socket.create_connection((HOST, server.port), timeout=30)
            if scheme == "https" and handshake:
                return ssl._create_unverified_context().wrap_socket(sock)
            return sock

        def trickle(sock: socket.socket, text: bytes, pause: float) -> None:
            with suppress(OSError):
                for i in range(len(text)):
                    if stop.wait(pause):
                        return
                    sock.sendall(text[i : i + 1])

        endless = f"GET /files/ HTTP/1.1\r\nHost: {HOST}\r\nX-Slow: ".encode() + b"x" * 10_000
        slow = [(connect(), endless) for _ in range(6)]
        if scheme == "https":  # and handshakes: a TLS record of 16 KiB, a byte at a time
            record = b"\x16\x03\x01\x40\x00\x01" + b"\x00" * 10_000
            slow += [(connect(handshake=False), record) for _ in range(6)]
        patient = connect()
        threads = [
            threading.Thread(target=trickle, args=(sock, text, 0.05), daemon=True)
            for sock, text in slow
        ]
        pause = 2.5 / len(head)
        threads.append(
            threading.Thread(target=trickle, args=(patient, head.encode(), pause), daemon=True)
        )
        for thread in threads:
            thread.start()
        try:
            time.sleep(0.5)  # six (or twelve) times as many tricklers as threads
            started = time.monotonic()
            response = call(server, "PROPFIND", "/files/", headers={"Depth": "0"}, timeout=15)
            assert response.status == 207
            assert time.monotonic() - started < 2
            # The patient client's request, 2.5 s in coming, is answered.
            answer = patient.recv(200)
            assert answer.startswith(b"HTTP/1.1 207"), answer
            # The endless ones are closed once they are past header_timeout.
            for sock, _ in slow:
                sock.settimeout(15)
                with suppress(ConnectionResetError, ssl.SSLError):
                    assert sock.recv(100) == b""
        finally:
            stop.set()
            for sock in [*(sock for sock, _ in slow), patient]:
                sock.close()


def test_header_timeout_over_tls_counts_from_the_request_not_the_handshake(
    tmp_path: Path,
) -> None:
    """The clock of ``header_timeout`` runs while a handshake or a request is arriving, not
    while a connection is idle: a TLS client that waited after its handshake, then sent its
    request in two writes, was closed unanswered (its clock had started with the handshake).
    And a client trickling a TLS record a byte at a time after its handshake must still be cut
    off: the clock had restarted at each byte, since nothing of a request was decrypted."""
    cert, key = self_signed(tmp_path)
    tls = {"server__ssl_certificate": str(cert), "server__ssl_private_key": str(key)}
    with run_inproc_server(
        "sqlite", tmp_path, server__threads=2, server__header_timeout=2, **tls
    ) as server:
        auth = basic_auth_header(server.user, server.password)
        head = f"PROPFIND /files/ HTTP/1.1\r\nHost: {HOST}\r\nDepth: 0\r\n"
        head += f"Authorization: {auth}\r\nContent-Length: 0\r\n\r\n"
        context = ssl._create_unverified_context()
        raw = socket.create_connection((HOST, server.port), timeout=10)
        with context.wrap_socket(raw) as sock:
            time.sleep(3)  # idle, past header_timeout, after the handshake
            sock.sendall(head[:20].encode())
            time.sleep(0.3)
            sock.sendall(head[20:].encode())
            answer = sock.recv(200)
            assert answer.startswith(b"HTTP/1.1 207"), answer
        # A record of 100 bytes announced after a handshake, then sent a byte every 0.25 s:
        # never a whole request, so it is closed once past header_timeout.
        raw = socket.create_connection((HOST, server.port), timeout=10)
        with context.wrap_socket(raw) as sock, socket.socket(fileno=os.dup(sock.fileno())) as fd:
            started = time.monotonic()
            fd.sendall(b"\x17\x03\x03\x00\x64")
            closed = False
            while not closed and time.monotonic() - started < 8:
                try:
                    fd.sendall(b"\x00")
                    readable, _, _ = select.select([fd], [], [], 0.25)
                    closed = bool(readable) and not fd.recv(4096)  # what the server sent
                except OSError:  # reset
                    closed = True
            assert closed, "a TLS record trickled a byte at a time was never cut off"
            assert time.monotonic() - started < 6


def test_broken_tls_handshakes_are_closed_at_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The selector makes the TLS handshake now: a client whose handshake is not TLS, or who
    leaves in the middle of it, is closed at once (not after ``header_timeout``), nothing is
    logged as a server error, and the clients after it are served."""
    cert, key = self_signed(tmp_path)
    tls = {"server__ssl_certificate": str(cert), "server__ssl_private_key": str(key)}
    with run_inproc_server(
        "sqlite", tmp_path, server__threads=2, server__header_timeout=30, **tls
    ) as server:
        for garbage in (b"\x16\x03\x01\x00\x05hello", b"\x00\x01\x02\x03" * 64):
            with socket.create_connection((HOST, server.port), timeout=10) as sock:
                started = time.monotonic()
                sock.sendall(garbage)
                with suppress(ConnectionResetError):
                    while sock.recv(4096):  # an alert, perhaps, then the end
                        pass
                assert time.monotonic() - started < 5
        for _ in range(3):  # a handshake begun, then the client leaves
            sock = socket.create_connection((HOST, server.port), timeout=10)
            sock.sendall(b"\x16\x03\x01\x02\x00\x01\x00")
            sock.close()
        response = call(server, "PROPFIND", "/files/", headers={"Depth": "0"}, timeout=5)
        assert response.status == 207
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert not errors, [r.getMessage() for r in errors]


def test_a_line_ended_by_a_bare_lf_is_refused_at_once(srv: InprocServer) -> None:
    """Headers are gathered until their blank line (CRLF CRLF); a request whose lines end in a
    bare LF has none, and must still get cheroot's 400 at once, not wait for header_timeout."""
    with socket.create_connection((HOST, srv.port), timeout=10) as sock:
        started = time.monotonic()
        sock.sendall(f"GET /files/ HTTP/1.1\nHost: {HOST}\n\n".encode())
        answer = sock.recv(200)
        assert answer.startswith(b"HTTP/1.1 400"), answer
        assert time.monotonic() - started < 2


def test_silent_connections_past_the_keep_alive_limit_close_the_oldest(tmp_path: Path) -> None:
    """A connection waiting for its first bytes takes a file descriptor, not a thread; with no
    bound, a client opening connections by the thousand (each closed only after
    ``request_timeout``) ran the process out of descriptors (EMFILE), and then nobody could
    connect. Past ``keep_alive_connections`` the longest idle one is closed, as an idle
    kept-alive connection may be at any time."""
    with run_inproc_server(
        "sqlite", tmp_path, server__threads=2, server__keep_alive_connections=5
    ) as server:
        silent = []
        for _ in range(20):
            silent.append(socket.create_connection((HOST, server.port), timeout=5))
            time.sleep(0.02)  # accepted one after the other
        try:
            response = call(server, "PROPFIND", "/files/", headers={"Depth": "0"}, timeout=5)
            assert response.status == 207
            closed = 0
            for sock in silent[:10]:  # the oldest
                sock.settimeout(2)
                with suppress(TimeoutError):
                    closed += sock.recv(1) == b""
            assert closed == 10
        finally:
            for sock in silent:
                sock.close()


def test_the_deadline_watcher_stops_with_its_server(tmp_path: Path) -> None:
    """Each server's thread watching header deadlines ran for the life of the process:
    one more, for good, per server a test suite (or an embedding program) started."""
    with run_inproc_server("sqlite", tmp_path) as server:
        assert call(server, "OPTIONS", "/files/").status == 200
        assert server.server is not None
        watcher = server.server.deadlines._watcher
        assert watcher is not None and watcher.is_alive()
    watcher.join(2)
    assert not watcher.is_alive()


# --- 12. locks are per user ------------------------------------------------------------------


def _lock_token(response: Response) -> str:
    token = response.headers.get("Lock-Token", "")
    assert token.startswith("<") and token.endswith(">"), response.headers
    return token[1:-1]


def test_locks_belong_to_their_user(srv: InprocServer) -> None:
    app = srv.application
    other_user = f"other{uuid.uuid4().hex[:8]}"
    other_password = secrets.token_urlsafe(12)
    app.accounts.ensure_admin(other_user, other_password)
    alice = as_user(srv, srv.user, srv.password)
    bob = as_user(srv, other_user, other_password)
    path = f"/files/lock-{uuid.uuid4().hex[:8]}.txt"

    assert alice("PUT", path, b"alice's").status == 201
    locked = alice(
        "LOCK", path, LOCK_BODY, {"Content-Type": "application/xml", "Timeout": "Second-600"}
    )
    assert locked.status == 200, (locked.status, locked.body[:500])
    token = _lock_token(locked)
    assert alice("PUT", path, b"no token").status == 423

    # Bob's /files/ is his own: the same path is a different file, not locked.
    assert bob("PUT", path, b"bob's").status == 201
    assert bob("GET", path).body == b"bob's"
    assert bob("LOCK", path, LOCK_BODY, {"Content-Type": "application/xml"}).status == 200

    # Alice's token does nothing for Bob, and Bob cannot release Alice's lock.
    unlock = bob("UNLOCK", path, None, {"Lock-Token": f"<{token}>"})
    assert not 200 <= unlock.status < 300, unlock.status
    assert unlock.status != 500
    with_token = bob("PUT", path, b"through alice's token", {"If": f"(<{token}>)"})
    assert with_token.status in (412, 423), with_token.status
    assert bob("GET", path).body == b"bob's"

    # Nothing of Alice's is visible in Bob's space.
    private = f"/files/alice-only-{uuid.uuid4().hex[:8]}.txt"
    assert alice("PUT", private, b"private").status == 201
    assert bob("GET", private).status == 404
    listing = bob("PROPFIND", "/files/", None, {"Depth": "1"})
    assert listing.status == 207 and private.rsplit("/", 1)[1].encode() not in listing.body

    assert alice("GET", path).body == b"alice's"
    assert alice("PUT", path, b"still no token").status == 423
    assert alice("PUT", path, b"with token", {"If": f"(<{token}>)"}).status == 204
    assert alice("GET", path).body == b"with token"
    assert alice("UNLOCK", path, None, {"Lock-Token": f"<{token}>"}).status == 204
    assert alice("PUT", path, b"unlocked").status == 204
    assert (
        existing_node(srv, srv.url + path, other_user).id != existing_node(srv, srv.url + path).id
    )


@pytest.mark.parametrize("method", ["DELETE", "MOVE"])
def test_a_folder_with_a_locked_member_changes_once_the_members_token_is_submitted(
    srv: InprocServer, folder: str, method: str
) -> None:
    """RFC 4918 9.6.1 and 9.9.2: the member's lock token, tagged with the member's URL, lets
    its holder delete or move the folder above it. WsgiDAV answered 423 whatever was sent."""
    inner = folder + "inner/"
    assert call(srv, "MKCOL", inner).status == 201
    put(srv, inner + "held.txt", b"held")
    locked = call(srv, "LOCK", inner + "held.txt", LOCK_BODY, {"Content-Type": "application/xml"})
    token = _lock_token(locked)
    headers = {"Destination": path_of(folder) + "moved/"} if method == "MOVE" else {}
    assert call(srv, method, inner, headers=headers).status == 423
    assert call(srv, method, inner, headers={**headers, "If": "(<opaquelocktoken:x>)"}).status in (
        412,
        423,
    )
    member_url = srv.url + path_of(inner) + "held.txt"
    done = call(srv, method, inner, headers={**headers, "If": f"<{member_url}> (<{token}>)"})
    assert done.status in (201, 204), (done.status, done.body[:300])
    assert call(srv, "GET", inner + "held.txt").status == 404
    if method == "MOVE":
        assert get_body(srv, folder + "moved/held.txt") == b"held"


@pytest.mark.parametrize("method", ["MOVE", "COPY"])
def test_a_file_moved_or_copied_onto_a_locked_file_leaves_the_lock_with_its_holder(
    srv: InprocServer, folder: str, method: str
) -> None:
    """A program that holds a lock and saves by writing a temporary file and renaming it over
    the document (gedit, LibreOffice, vim through davfs2): the document stays the same file,
    with the renamed bytes as its newest version, so it stays locked, as RFC 4918 7.7 has a
    resource moved onto a lock join it. The MOVE dropped the lock: the holder's next PUT with
    its token got 412, and any other client could write."""
    put(srv, folder + "doc.txt", b"first")
    put(srv, folder + "doc.tmp", b"saved")
    locked = call(srv, "LOCK", folder + "doc.txt", LOCK_BODY, {"Content-Type": "application/xml"})
    token = _lock_token(locked)
    doc_url = srv.url + path_of(folder) + "doc.txt"
    headers = {"Destination": path_of(folder) + "doc.txt", "Overwrite": "T"}
    assert call(srv, method, folder + "doc.tmp", headers=headers).status == 423
    done = call(
        srv, method, folder + "doc.tmp", headers={**headers, "If": f"<{doc_url}> (<{token}>)"}
    )
    assert done.status == 204, (done.status, done.body[:300])
    assert get_body(srv, folder + "doc.txt") == b"saved"
    assert call(srv, "PUT", folder + "doc.txt", b"someone else").status == 423
    assert call(srv, "PUT", folder + "doc.txt", b"mine", {"If": f"(<{token}>)"}).status == 204
    assert get_body(srv, folder + "doc.txt") == b"mine"
    unlocked = call(srv, "UNLOCK", folder + "doc.txt", headers={"Lock-Token": f"<{token}>"})
    assert unlocked.status == 204


@pytest.mark.parametrize("depth", ["0", "infinity"])
def test_a_lock_of_a_new_name_in_a_locked_folder_creates_nothing_without_its_token(
    srv: InprocServer, folder: str, depth: str
) -> None:
    """A LOCK of an unmapped URL makes an empty file (RFC 4918 9.10.4); in a folder someone
    else has locked, that is adding a member, which the folder's lock forbids as for PUT.
    WsgiDAV made the file before it checked any lock: 423, with the file left behind."""
    inner = folder + "held/"
    assert call(srv, "MKCOL", inner).status == 201
    xml = {"Content-Type": "application/xml", "Timeout": "Second-600"}
    folder_token = _lock_token(call(srv, "LOCK", inner, LOCK_BODY, {**xml, "Depth": depth}))

    refused = call(srv, "LOCK", inner + "new.txt", LOCK_BODY, {**xml, "Depth": "0"})
    assert refused.status == 423, (refused.status, refused.body[:300])
    assert member_names(srv, inner) == []
    assert call(srv, "PUT", inner + "new.txt", b"x").status == 423  # the same rule as PUT

    held = {"If": f"(<{folder_token}>)"}
    taken = call(srv, "LOCK", inner + "new.txt", LOCK_BODY, {**xml, **held})
    if depth == "0":
        assert taken.status == 201, (taken.status, taken.body[:300])
        assert member_names(srv, inner) == ["new.txt"]
    else:  # no lock within an exclusive one with depth infinity, not even its holder's
        assert taken.status == 423, (taken.status, taken.body[:300])
        assert member_names(srv, inner) == []
        assert call(srv, "PUT", inner + "new.txt", b"x", held).status == 201


def test_an_exclusive_lock_refused_under_a_shared_folder_lock_creates_nothing(
    srv: InprocServer, folder: str
) -> None:
    """Under a shared lock with depth infinity only shared locks may be taken, even by its
    holder: an exclusive LOCK of a new name there is 423, and makes no file. The check made
    before the file was created asked about a shared lock whatever the scope requested, so
    the refused LOCK left an empty file behind."""
    inner = folder + "shared/"
    assert call(srv, "MKCOL", inner).status == 201
    xml = {"Content-Type": "application/xml", "Timeout": "Second-600"}
    shared_body = LOCK_BODY.replace(b"<D:exclusive/>", b"<D:shared/>")
    token = _lock_token(call(srv, "LOCK", inner, shared_body, {**xml, "Depth": "infinity"}))
    held = {**xml, "If": f"(<{token}>)", "Depth": "0"}
    refused = call(srv, "LOCK", inner + "new.txt", LOCK_BODY, held)
    assert refused.status == 423, (refused.status, refused.body[:300])
    assert member_names(srv, inner) == []
    taken = call(srv, "LOCK", inner + "new.txt", shared_body, held)
    assert taken.status == 201, (taken.status, taken.body[:300])
    assert member_names(srv, inner) == ["new.txt"]


def test_a_lock_owner_is_bounded(srv: InprocServer, folder: str) -> None:
    """A lock's owner is repeated in every lock discovery and listing: 15 shared LOCKs with
    an owner of 1 MB each made every PROPFIND of the folder 15 MB, counted against nothing."""
    url = folder + "owned.txt"
    put(srv, url, b"x")
    xml = {"Content-Type": "application/xml", "Timeout": "Second-600"}

    def lock_with_owner(owner: bytes, target: str = url) -> Response:
        body = LOCK_BODY.replace(b"<D:owner>tests</D:owner>", b"<D:owner>" + owner + b"</D:owner>")
        return call(srv, "LOCK", target, body, xml)

    refused = lock_with_owner(b"x" * (512 << 10))
    assert refused.status == 400, (refused.status, refused.body[:300])
    assert b"owner" in refused.body
    assert call(srv, "PUT", url, b"not locked").status == 204
    # Nor does such a LOCK of a new name make the file (WsgiDAV makes it before it locks).
    assert lock_with_owner(b"x" * 9000, folder + "never.txt").status == 400
    assert call(srv, "HEAD", folder + "never.txt").status == 404
    taken = lock_with_owner(b"<D:href>DOMAIN\\someone</D:href>" + b" " * 7000)
    assert taken.status == 200, (taken.status, taken.body[:300])


@pytest.mark.parametrize("locked", ["file", "folder"])
def test_a_lock_taken_by_another_process_during_an_upload_stops_it(
    srv: InprocServer, folder: str, locked: str
) -> None:
    """An upload's locks are checked when it starts, and WsgiDAV keeps a LOCK from landing
    while a write is under way, but only in its own process. A LOCK taken through another
    server process while the body was arriving, and the lock holder's own edit, were then
    overwritten by the upload that finished last: the holder's edit was lost. The locks are
    checked again when the upload is recorded: 423, and nothing stored."""
    inner = folder + "edits/"
    assert call(srv, "MKCOL", inner).status == 201
    target = inner + ("doc.txt" if locked == "file" else "new.txt")
    if locked == "file":
        put(srv, target, b"v1")
    assert srv.db_url is not None
    other_dir = srv.data_dir.parent
    xml = {"Content-Type": "application/xml", "Timeout": "Second-600"}
    with run_inproc_server(srv.engine, other_dir, existing=(srv.db_url, srv.password)) as other:
        sock = socket.create_connection((HOST, srv.port), timeout=10)
        try:
            head = (
                f"PUT {path_of(target)} HTTP/1.1\r\nHost: {HOST}:{srv.port}\r\n"
                f"Authorization: {basic_auth_header(srv.user, srv.password)}\r\n"
                "Content-Length: 100000\r\n\r\n"  # past what gathers before a worker
            )
            tmp_dir = srv.application.blobs.tmp_dir
            before = set(tmp_dir.iterdir())
            sock.sendall(head.encode() + b"a" * 10)
            assert wait_for(lambda: bool(set(tmp_dir.iterdir()) - before), timeout=5.0)
            lock_url = other.url + path_of(target if locked == "file" else inner)
            depth = {"Depth": "0" if locked == "file" else "infinity"}
            taken = http_request(
                "LOCK", lock_url, LOCK_BODY, {**xml, **depth}, auth=(other.user, other.password)
            )
            assert taken.status in (200, 201), (taken.status, taken.body[:300])
            token = taken.headers["Lock-Token"].strip("<>")
            if locked == "file":
                edit = http_request(
                    "PUT",
                    other.url + path_of(target),
                    b"the lock holder's edit",
                    {"If": f"(<{token}>)"},
                    auth=(other.user, other.password),
                )
                assert edit.status == 204
            sock.sendall(b"a" * 99_990)
            response = http.client.HTTPResponse(sock, method="PUT")
            response.begin()
            assert response.status == 423, (response.status, response.read()[:300])
        finally:
            sock.close()
    if locked == "file":
        assert get_body(srv, target) == b"the lock holder's edit"
    else:
        assert member_names(srv, inner) == []


@contextmanager
def _other_process(srv: InprocServer) -> Iterator[Callable[..., Response]]:
    """``request(method, url, body, headers)`` through a second server on the same database,
    as the test user: another server process, with a lock manager of its own."""
    assert srv.db_url is not None
    with run_inproc_server(
        srv.engine, srv.data_dir.parent, existing=(srv.db_url, srv.password)
    ) as other:

        def request(
            method: str, url: str, body: bytes | None = None, headers: Mapping[str, str] = {}
        ) -> Response:
            headers = {
                name: other.url + path_of(value) if name == "Destination" else value
                for name, value in headers.items()
            }
            return http_request(
                method, other.url + path_of(url), body, headers, auth=(other.user, other.password)
            )

        yield request


def _lock_from(request: Callable[..., Response], url: str, depth: str = "0") -> str:
    headers = {"Content-Type": "application/xml", "Timeout": "Second-600", "Depth": depth}
    taken = request("LOCK", url, LOCK_BODY, headers)
    assert taken.status in (200, 201), (taken.status, taken.body[:300])
    return _lock_token(taken)


_CUSTOM_PROPPATCH = (
    f'<?xml version="1.0"?><D:propertyupdate xmlns:D="DAV:" xmlns:C="{CUSTOM_NS}">'
    "<D:set><D:prop><C:color>red</C:color></D:prop></D:set></D:propertyupdate>"
).encode()

# What a write does once its locks were checked (method, target, body and headers), the lock
# another process takes before the write's transaction (what, depth), and what must then be
# as it was.
_RACED_WRITES = {
    "DELETE": ("DELETE", "tree/", None, {}, "tree/doc.txt", "0"),
    "MOVE": ("MOVE", "tree/", None, {"Destination": "moved/"}, "tree/doc.txt", "0"),
    "PUT": ("PUT", "tree/doc.txt", b"overwritten", {}, "tree/doc.txt", "0"),
    "PUT new": ("PUT", "tree/new.txt", b"new", {}, "tree/", "0"),
    "PROPPATCH": ("PROPPATCH", "tree/doc.txt", None, {}, "tree/doc.txt", "0"),
    "COPY": ("COPY", "tree/doc.txt", None, {"Destination": "into/doc.txt"}, "into/", "infinity"),
    "MKCOL": ("MKCOL", "into/sub/", None, {}, "into/", "0"),
}


@pytest.mark.parametrize("case", list(_RACED_WRITES))
def test_a_lock_taken_by_another_process_before_a_write_commits_stops_it(
    srv: InprocServer, folder: str, monkeypatch: pytest.MonkeyPatch, case: str
) -> None:
    """A write checks the locks when it begins, and WsgiDAV keeps a LOCK from landing before
    the write is done only in its own process. A LOCK taken through another process between
    the check and the write's transaction was ignored: the folder was moved or deleted, the
    file overwritten or copied onto, under a lock its holder had just been granted (and a
    MOVE or DELETE then dropped that lock). The write's transaction checks again: 423, and
    everything is as it was."""
    method, target, body, headers, locked, depth = _RACED_WRITES[case]
    for made in ("tree/", "into/"):
        assert call(srv, "MKCOL", folder + made).status == 201
    put(srv, folder + "tree/doc.txt", b"the original")
    if method == "PROPPATCH":
        body = _CUSTOM_PROPPATCH
        headers = {"Content-Type": "application/xml"}
    headers = {
        key: folder + value if key == "Destination" else value for key, value in headers.items()
    }
    files = srv.application.files
    run_write = files.run_write
    with _other_process(srv) as other:
        tokens: list[str] = []

        def locked_first(work: Callable[[Any], Any]) -> Any:
            if not tokens:  # once: the write's own transaction, not a retry of it
                tokens.append(_lock_from(other, folder + locked, depth))
            return run_write(work)

        monkeypatch.setattr(files, "run_write", locked_first)
        refused = call(srv, method, folder + target, body, headers)
        assert tokens, "the write made no transaction"
        monkeypatch.undo()
        if method == "PROPPATCH":  # each property's status, in a 207 (RFC 4918 9.2)
            assert refused.status == 207, (refused.status, refused.body[:300])
            assert b"HTTP/1.1 423 Locked" in refused.body, refused.body[:500]
            kept = call(srv, "PROPFIND", folder + target, None, {"Depth": "0"})
            assert b"color" not in kept.body, kept.body[:500]
        else:
            assert refused.status == 423, (refused.status, refused.body[:300])
            assert b"lock" in refused.body.lower()
        assert member_names(srv, folder) == ["into", "tree"]
        assert member_names(srv, folder + "tree/") == ["doc.txt"]
        assert member_names(srv, folder + "into/") == []
        assert get_body(srv, folder + "tree/doc.txt") == b"the original"
        # The lock holds: its holder may write what it locked, and no one else may.
        held = {"If": f"(<{tokens[0]}>)"}
        if locked.endswith(".txt"):
            assert call(srv, "PUT", folder + locked, b"mine").status == 423
            assert other("PUT", folder + locked, b"mine", held).status == 204
        else:
            assert call(srv, "PUT", folder + locked + "x.txt", b"mine").status == 423
            assert other("PUT", folder + locked + "x.txt", b"mine", held).status == 201


@pytest.mark.parametrize("method", ["MOVE", "DELETE"])
def test_a_lock_of_a_new_name_whose_folder_another_process_moves_meanwhile_is_404(
    srv: InprocServer, folder: str, monkeypatch: pytest.MonkeyPatch, method: str
) -> None:
    """A LOCK of a new name makes the file, then the lock. When another process moved or
    deleted the folder in between, the lock was taken on a name nothing has any more: its
    answer failed (a 500, so the client never got the token) and the lock stayed behind,
    waiting for whatever would be made at that name next. Now: 404, and no lock."""
    assert call(srv, "MKCOL", folder + "tree/").status == 201
    files = srv.application.files
    create = files.create_empty_file
    with _other_process(srv) as other:
        headers = {"Destination": folder + "moved/"} if method == "MOVE" else {}

        def then_moved(actor: Actor, parent: NodeView, name: str) -> NodeView:
            made = create(actor, parent, name)
            gone = other(method, folder + "tree/", None, headers)
            assert gone.status in (201, 204), (gone.status, gone.body[:300])
            return made

        monkeypatch.setattr(files, "create_empty_file", then_moved)
        xml = {"Content-Type": "application/xml", "Timeout": "Second-600"}
        refused = call(srv, "LOCK", folder + "tree/new.txt", LOCK_BODY, xml)
        monkeypatch.undo()
        assert refused.status == 404, (refused.status, refused.body[:300])
        assert "Lock-Token" not in refused.headers
        # Nothing is locked: a folder made at the old name takes the new file.
        assert call(srv, "MKCOL", folder + "tree/").status == 201
        assert call(srv, "PUT", folder + "tree/new.txt", b"unlocked").status == 201
        if method == "MOVE":
            assert member_names(srv, folder + "moved/") == ["new.txt"]
            assert call(srv, "PUT", folder + "moved/new.txt", b"unlocked").status == 204
    with srv.application.db.read() as session:
        roots = session.scalars(sa.select(DavLock.root)).all()
    assert not [root for root in roots if root.startswith(path_of(folder))], roots


@pytest.mark.parametrize(
    ("header", "granted"),
    [
        ("Second-1e3", "most"),  # WsgiDAV: Second-1
        ("Second-60x, Second-120", "Second-120"),  # WsgiDAV: Second-60
        ("Infinite, Second-60", "most"),
        ("Second-0", "most"),
        ("Second-300", "Second-300"),
    ],
)
def test_a_lock_timeout_is_read_as_rfc_4918_writes_it(
    srv: InprocServer, folder: str, header: str, granted: str
) -> None:
    """Timeout: Second-<digits> or Infinite, the first value that can be read; none, and the
    server's default applies: the most it grants (``dav.lock_max_timeout``), as for Infinite."""
    most = srv.application.settings.dav.lock_max_timeout
    granted = f"Second-{most}" if granted == "most" else granted
    put(srv, folder + "timed.txt", b"x")
    xml = {"Content-Type": "application/xml", "Timeout": header}
    taken = call(srv, "LOCK", folder + "timed.txt", LOCK_BODY, xml)
    assert taken.status == 200, (taken.status, taken.body[:300])
    found = re.search(rb"<(?:\w+:)?timeout>Second-(\d+)</", taken.body)
    assert found is not None, taken.body
    wanted = int(granted.removeprefix("Second-"))
    assert wanted - 2 <= int(found[1]) <= wanted, (found[1], granted)  # counted from its expiry


def test_concurrent_locks_of_one_new_name_lock_it_once_and_refuse_the_rest_with_423(
    srv: InprocServer, folder: str
) -> None:
    """Clients (davfs2 creates files with a LOCK) making one new file at once: those that
    lost the race met the lock of the winner (423), not a 412 for a precondition nobody
    sent."""
    url = folder + "raced.txt"
    headers = {"Content-Type": "application/xml", "Timeout": "Second-600"}
    count = 6
    barrier = threading.Barrier(count)
    statuses: list[int] = []

    def take() -> None:
        barrier.wait()
        statuses.append(call(srv, "LOCK", url, LOCK_BODY, headers).status)

    threads = [threading.Thread(target=take) for _ in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    # One lock: usually the maker's (201); or one that found the file made, and locked it
    # before its maker could (200), when the maker meets that lock.
    assert sorted(statuses)[1:] == [423] * (count - 1), statuses
    assert sorted(statuses)[0] in (200, 201), statuses
    assert member_names(srv, folder) == ["raced.txt"]


def test_a_lock_of_a_name_created_meanwhile_locks_what_is_there(
    srv: InprocServer, folder: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A LOCK that found no file, and then found one created by someone else (a PUT) before
    it could make its own, locks that file and says so with 200, not 201."""
    url = folder + "meanwhile.txt"
    files = srv.application.files
    create = files.create_empty_file

    def created_by_someone_else_first(actor: Actor, parent: NodeView, name: str) -> NodeView:
        writer = files.blobs.writer()
        writer.write(b"theirs")
        files.commit_upload(actor, parent, name, writer.finish())
        return create(actor, parent, name)

    monkeypatch.setattr(files, "create_empty_file", created_by_someone_else_first)
    locked = call(srv, "LOCK", url, LOCK_BODY, {"Content-Type": "application/xml"})
    assert locked.status == 200, (locked.status, locked.body[:300])
    token = _lock_token(locked)
    assert call(srv, "PUT", url, b"mine").status == 423
    assert call(srv, "PUT", url, b"mine", {"If": f"(<{token}>)"}).status == 204
    assert get_body(srv, url) == b"mine"


# --- 13. the logbook -------------------------------------------------------------------------


def test_every_change_writes_a_logbook_row(srv: InprocServer, folder: str) -> None:
    app = srv.application
    mark = last_log_id(app)

    def expect(op: str, url: str) -> None:
        nonlocal mark
        rows = ops_since(app, mark)
        mark = last_log_id(app)
        node = node_at(srv, url)
        assert node is not None, url
        assert (op, node.id) in rows, (op, rows)

    file_url = folder + "logged.txt"
    put(srv, file_url, b"one")
    expect("file:create", file_url)
    put(srv, file_url, b"two")
    expect("file:version:create", file_url)

    sub = folder + "logged-folder"
    assert call(srv, "MKCOL", sub).status == 201
    expect("folder:create", sub)

    moved = folder + "moved.txt"
    response = call(srv, "MOVE", file_url, headers={"Destination": srv.url + path_of(moved)})
    assert response.status == 201
    expect("node:move", moved)

    copied = folder + "copied.txt"
    response = call(srv, "COPY", moved, headers={"Destination": srv.url + path_of(copied)})
    assert response.status == 201
    expect("node:copy", copied)

    response = call(
        srv, "PROPPATCH", copied, proppatch_body("<X:tag>t</X:tag>"), {"Content-Type": "text/xml"}
    )
    assert response.status == 207
    expect("node:proppatch", copied)

    deleted = existing_node(srv, copied)
    assert call(srv, "DELETE", copied).status == 204
    rows = ops_since(app, mark)
    assert ("node:delete", deleted.id) in rows, rows

    # Reads write nothing of this kind.
    mark = last_log_id(app)
    call(srv, "GET", moved)
    propfind(srv, folder)
    assert ops_since(app, mark) == []


def test_locks_taken_refreshed_and_released_write_logbook_rows(
    srv: InprocServer, folder: str
) -> None:
    """A lock is a change that others see (their writes answer 423 until it goes): LOCK, its
    refresh and UNLOCK each write a row about the locked item, in the lock's transaction; a
    refused LOCK or UNLOCK none. They wrote none, so nothing told who had held a file."""
    app = srv.application
    url = folder + "held.txt"
    put(srv, url, b"held")
    node = existing_node(srv, url)
    xml = {"Content-Type": "application/xml"}
    mark = last_log_id(app)
    locked = call(srv, "LOCK", url, LOCK_BODY, {**xml, "Timeout": "Second-600"})
    assert locked.status == 200
    token = _lock_token(locked)
    assert call(srv, "LOCK", url, LOCK_BODY, xml).status == 423
    refresh = {"If": f"(<{token}>)", "Timeout": "Second-900"}
    assert call(srv, "LOCK", url, None, refresh).status == 200
    assert call(srv, "UNLOCK", url, None, {"Lock-Token": "<opaquelocktoken:nope>"}).status >= 400
    assert call(srv, "UNLOCK", url, None, {"Lock-Token": f"<{token}>"}).status == 204
    with app.db.read() as session:
        rows = session.execute(
            sa.select(LogEntry.op_type, LogEntry.node_id, LogEntry.user_id, LogEntry.details)
            .where(LogEntry.id > mark, LogEntry.op_type.startswith("lock:"))
            .order_by(LogEntry.id)
        ).all()
    me = user_id(app, srv.user)
    assert [tuple(row) for row in rows] == [
        (
            "lock:create",
            node.id,
            me,
            {"token": token, "scope": "exclusive", "depth": "infinity", "timeout": 600},
        ),
        ("lock:refresh", node.id, me, {"token": token, "timeout": 900}),
        ("lock:delete", node.id, me, {"token": token}),
    ]


def downloads_of(app: Application, node_id: uuid.UUID) -> list[Any]:
    """The file:download rows of one file (the server is shared: other tests download too,
    and their rows are written when their batch is)."""
    with app.db.read() as session:
        return list(
            session.execute(
                sa.select(LogEntry.node_id, LogEntry.version_id, LogEntry.user_id, LogEntry.details)
                .where(LogEntry.node_id == node_id, LogEntry.op_type == "file:download")
                .order_by(LogEntry.id)
            )
        )


def test_a_download_is_logged_with_its_version_and_range(srv: InprocServer, folder: str) -> None:
    """DESIGN: every download writes a logbook row. Only a GET sends the bytes: not a HEAD,
    a 304 or a missing file. A range is logged as it was served. Rows are written in batches
    (``ReadLog``), not in a transaction per GET."""
    app = srv.application
    url = folder + "read-me.txt"
    put(srv, url, b"version one")
    put(srv, url, b"version two!")
    node = existing_node(srv, url)

    head = call(srv, "HEAD", url)
    assert head.status == 200
    assert call(srv, "GET", url, headers={"If-None-Match": head.headers["ETag"]}).status == 304
    assert call(srv, "GET", folder + "missing.txt").status == 404
    app.files.read_log.flush()
    assert downloads_of(app, node.id) == []

    assert get_body(srv, url) == b"version two!"
    assert call(srv, "GET", url, headers={"Range": "bytes=8-"}).body == b"two!"
    stale = call(srv, "GET", url, headers={"Range": "bytes=8-", "If-Range": '"stale"'})
    assert (stale.status, stale.body) == (200, b"version two!")  # the whole file: no range
    assert call(srv, "GET", url + "?version=1").body == b"version one"

    # Written in batches, within about a second, by the read log's own thread.
    assert wait_for(lambda: len(downloads_of(app, node.id)) == 4, timeout=10.0)
    rows = downloads_of(app, node.id)
    assert [(row.node_id, row.details) for row in rows] == [
        (node.id, {"size": 12}),
        (node.id, {"size": 12, "range": "bytes=8-"}),
        (node.id, {"size": 12}),
        (node.id, {"size": 11, "version_no": 1}),
    ]
    assert {row.user_id for row in rows} == {user_id(app, srv.user)}
    assert [row.version_id == node.current_version_id for row in rows] == [True] * 3 + [False]


def test_a_download_whose_file_is_purged_before_its_batch_is_written_is_logged(
    srv: InprocServer, folder: str
) -> None:
    """A download's row waits up to a second for its batch (``ReadLog``); the file may be
    purged from the trash meanwhile. The batch used to fail on the row's reference to the
    file that no longer exists, and every download in it, of any file by anyone, was
    dropped from the logbook. The row is written, naming the file and version that are gone,
    as the rows written before the purge still do."""
    app = srv.application
    put(srv, folder + "kept.txt", b"kept")
    put(srv, folder + "gone.txt", b"gone")
    kept, gone = existing_node(srv, folder + "kept.txt"), existing_node(srv, folder + "gone.txt")
    read_log = ReadLog(app.db, interval=3600)  # written by flush() only
    for view in (gone, kept):
        read_log.add(
            None,
            Op.FILE_DOWNLOAD,
            node_id=view.id,
            version_id=view.current_version_id,
            details={"size": 4, "name": view.name},
        )
    assert call(srv, "DELETE", folder + "gone.txt").status == 204
    app.services.trash.purge(None, gone.id)
    assert read_log.flush() == 2
    read_log.close()
    assert [row.details["name"] for row in downloads_of(app, kept.id)] == ["kept.txt"]
    with app.db.read() as session:
        orphaned = session.execute(
            sa.select(LogEntry.node_id, LogEntry.version_id).where(
                LogEntry.op_type == Op.FILE_DOWNLOAD,
                LogEntry.details["name"].as_string() == "gone.txt",
            )
        ).all()
    assert [tuple(row) for row in orphaned] == [(gone.id, gone.current_version_id)]


def test_unchanged_put_writes_no_version_row_in_the_logbook(srv: InprocServer, folder: str) -> None:
    app = srv.application
    url = folder + "same.txt"
    put(srv, url, b"same")
    mark = last_log_id(app)
    put(srv, url, b"same")
    assert [op for op, _ in ops_since(app, mark) if op.startswith("file:")] == []


def test_failed_requests_write_no_logbook_row(srv: InprocServer, folder: str) -> None:
    app = srv.application
    mark = last_log_id(app)
    assert call(srv, "MKCOL", folder + "missing/child").status == 409
    assert call(srv, "DELETE", folder + "missing").status == 404
    assert ops_since(app, mark) == []


@pytest.mark.parametrize("query", ["thumbnail=256", "preview=1024", "zip"])
@pytest.mark.parametrize("method", ["DELETE", "PUT", "MOVE", "COPY", "PROPPATCH"])
def test_a_reading_query_with_a_changing_method_is_a_400(
    srv: InprocServer, folder: str, method: str, query: str
) -> None:
    """``?thumbnail=``, ``?preview=`` and ``?zip`` pick what a GET or HEAD sends; any other
    method ignored them and acted on the item itself: ``DELETE photo.jpg?thumbnail=256``
    put the photo in the trash."""
    put(srv, folder + "photo.jpg", b"not really a jpeg")
    target = folder + ("photo.jpg" if query != "zip" else "")
    headers = {"Destination": srv.url + path_of(folder) + "elsewhere", "Depth": "infinity"}
    answer = call(srv, method, f"{target}?{query}", body=b"changed", headers=headers)
    assert answer.status == 400, (answer.status, answer.body[:200])
    assert get_body(srv, folder + "photo.jpg") == b"not really a jpeg"
    assert member_names(srv, folder) == ["photo.jpg"]
