"""The ownCloud dialect and digests that rclone and sync clients rely on, over real HTTP.

X-OC-Mtime on PUT (answered with X-OC-MTime: accepted), oc:checksums / oc:fileid / oc:size,
RFC 4331 quota properties, OC-Checksum and RFC 9530 digests verified on upload (a mismatch
stores nothing), Repr-Digest on GET and HEAD; macOS Finder's chunked uploads with
X-Expected-Entity-Length.
"""

from __future__ import annotations

import base64
import datetime as dt
import email.utils
import hashlib
import os
from collections.abc import Callable
from pathlib import Path
from xml.etree import ElementTree

import pytest
from sqlalchemy import event

from tests.servers import InprocServer, Response

OC = "{http://owncloud.org/ns}"
DAV = "{DAV:}"
PROPS = (
    b'<?xml version="1.0"?><d:propfind xmlns:d="DAV:" xmlns:oc="http://owncloud.org/ns"><d:prop>'
    b"<oc:checksums/><oc:fileid/><oc:size/><d:quota-used-bytes/><d:quota-available-bytes/>"
    b"<d:getlastmodified/></d:prop></d:propfind>"
)


@pytest.fixture
def srv(inproc_server: InprocServer) -> InprocServer:
    return inproc_server


@pytest.fixture
def folder(inproc_dav_dir: str) -> str:
    return inproc_dav_dir


def propfind(srv: InprocServer, url: str, depth: str = "0") -> dict[str, ElementTree.Element]:
    """{href: the <prop> element of its 200 propstat}."""
    response = srv.request("PROPFIND", url, PROPS, {"Depth": depth})
    assert response.status == 207, response.body[:500]
    found: dict[str, ElementTree.Element] = {}
    for item in ElementTree.fromstring(response.body).iter(f"{DAV}response"):
        href = item.findtext(f"{DAV}href") or ""
        for propstat in item.iter(f"{DAV}propstat"):
            if "200" in (propstat.findtext(f"{DAV}status") or ""):
                prop = propstat.find(f"{DAV}prop")
                assert prop is not None
                found[href] = prop
    return found


def put(srv: InprocServer, url: str, body: bytes, headers: dict[str, str]) -> Response:
    return srv.request("PUT", url, body, headers)


def blob_tmp_files(srv: InprocServer) -> list[Path]:
    return list((Path(srv.data_dir) / "blobs" / "tmp").iterdir())


def test_x_oc_mtime_is_kept_and_acknowledged(srv: InprocServer, folder: str) -> None:
    response = put(srv, folder + "a.txt", b"timed", {"X-OC-Mtime": "1600000000"})
    assert response.status == 201
    assert response.headers.get("X-OC-MTime") == "accepted"
    head = srv.request("HEAD", folder + "a.txt")
    modified = email.utils.parsedate_to_datetime(head.headers["Last-Modified"])
    assert int(modified.timestamp()) == 1600000000
    # without the header, no acknowledgement
    assert "X-OC-MTime" not in put(srv, folder + "b.txt", b"untimed", {}).headers


# Past year 9999, before year 1, too large for any clock, not a number, fractional, empty, a
# sign alone or twice, and a digit Python's str.isdigit() accepts but int() refuses (a latin-1
# superscript two).
UNUSABLE_MTIMES = [
    "253402300800",
    "-62135596801",
    "99999999999999",
    "9" * 30,
    "soon",
    "1.5",
    "",
    "-",
    "--5",
    "+5",
    "\xb2",
]


@pytest.mark.parametrize("value", UNUSABLE_MTIMES)
def test_an_unusable_x_oc_mtime_is_a_400_that_stores_nothing(
    srv: InprocServer, folder: str, value: str
) -> None:
    response = put(srv, folder + "new.txt", b"NEW", {"X-OC-Mtime": value})
    assert response.status == 400, (response.status, response.body[:500])
    assert b"X-OC-Mtime" in response.body and b"Traceback" not in response.body
    assert srv.request("GET", folder + "new.txt").status == 404
    assert put(srv, folder + "old.txt", b"OLD", {}).status == 201
    assert put(srv, folder + "old.txt", b"NEW", {"X-OC-Mtime": value}).status == 400
    assert srv.request("GET", folder + "old.txt").body == b"OLD"
    assert srv.request("MKCOL", folder + "sub/", None, {"X-OC-Mtime": value}).status == 400
    assert srv.request("PROPFIND", folder + "sub/", None, {"Depth": "0"}).status == 404
    assert blob_tmp_files(srv) == []


# Before 1970 too (the moon landing, year 1): WsgiDAV refused a negative X-OC-Mtime, and
# rclone, whose update of such a file then failed, deleted the file it could not update.
@pytest.mark.parametrize(
    "sent, seconds",
    [
        ("0", 0),
        ("-0", 0),
        ("253402300799", 253402300799),
        ("-14182940", -14182940),
        ("-62135596800", -62135596800),
    ],
)
def test_an_x_oc_mtime_at_the_ends_of_the_range_is_kept(
    srv: InprocServer, folder: str, sent: str, seconds: int
) -> None:
    for name in ("edge.txt", "edge.txt", "edge-folder/"):  # new, then a new version; a folder
        headers = {"X-OC-Mtime": sent}
        if name.endswith("/"):
            response = srv.request("MKCOL", folder + name, None, headers)
        else:
            response = put(srv, folder + name, f"edge {len(name)}".encode(), headers)
        assert response.status in (201, 204), response.body[:500]
        assert response.headers.get("X-OC-MTime") == "accepted"
        (prop,) = propfind(srv, folder + name).values()
        shown = prop.findtext(f"{DAV}getlastmodified") or ""
        when = dt.datetime.fromtimestamp(seconds, dt.UTC)  # (email.utils reads 0001 as 2001)
        assert shown == f"{when:%a, %d %b} {when.year:04d} {when:%H:%M:%S} GMT", (name, shown)


def lastmodified_patch(value: str) -> bytes:
    return (
        b'<?xml version="1.0"?><d:propertyupdate xmlns:d="DAV:"><d:set><d:prop>'
        b"<d:getlastmodified>" + value.encode() + b"</d:getlastmodified>"
        b"</d:prop></d:set></d:propertyupdate>"
    )


@pytest.mark.parametrize("value", ["-62135596800", "Fri, 31 Dec 9999 23:59:59 GMT"])
def test_a_getlastmodified_at_the_ends_of_the_range_is_kept_and_listed(
    srv: InprocServer, folder: str, value: str
) -> None:
    assert put(srv, folder + "old.txt", b"old", {}).status == 201
    response = srv.request("PROPPATCH", folder + "old.txt", lastmodified_patch(value))
    assert response.status == 207 and b"200 OK" in response.body, response.body
    listing = propfind(srv, folder, depth="1")
    (prop,) = [p for href, p in listing.items() if href.endswith("/old.txt")]
    shown = prop.findtext(f"{DAV}getlastmodified") or ""
    assert shown.endswith((" 0001 00:00:00 GMT", " 9999 23:59:59 GMT")), shown
    assert srv.request("GET", folder + "old.txt").body == b"old"


@pytest.mark.parametrize(
    "value",
    [
        "Wed, 04 Jan 99999 10:00:00 GMT",
        "99999999999999",
        "-99999999999999",
        "1e400",
        "nan",
        "not a date",
    ],
)
def test_an_unusable_getlastmodified_is_a_409_propstat(
    srv: InprocServer, folder: str, value: str
) -> None:
    """RFC 4918 9.2: 409 for a value whose semantics are not appropriate for the property."""
    assert put(srv, folder + "p.txt", b"patched", {"X-OC-Mtime": "1600000000"}).status == 201
    response = srv.request("PROPPATCH", folder + "p.txt", lastmodified_patch(value))
    assert response.status == 207
    statuses = [s.text for s in ElementTree.fromstring(response.body).iter(f"{DAV}status")]
    assert statuses == ["HTTP/1.1 409 Conflict"], response.body
    assert b"Source exception" not in response.body
    (prop,) = propfind(srv, folder + "p.txt").values()
    modified = email.utils.parsedate_to_datetime(prop.findtext(f"{DAV}getlastmodified") or "")
    assert int(modified.timestamp()) == 1600000000


def test_checksums_fileid_and_sizes_are_properties(srv: InprocServer, folder: str) -> None:
    body = os.urandom(3000)
    assert srv.request("MKCOL", folder + "sub/").status == 201
    assert put(srv, folder + "sub/f.bin", body, {}).status == 201
    assert put(srv, folder + "g.bin", b"12345", {}).status == 201
    props = propfind(srv, folder + "sub/f.bin")
    (prop,) = props.values()
    checksum = prop.findtext(f"{OC}checksums/{OC}checksum")
    assert checksum == f"SHA1:{hashlib.sha1(body).hexdigest()} MD5:{hashlib.md5(body).hexdigest()}"
    assert len(prop.findtext(f"{OC}fileid") or "") == 32
    assert prop.findtext(f"{OC}size") == "3000"
    listing = propfind(srv, folder, depth="1")
    folder_prop = next(p for href, p in listing.items() if href.endswith("/sub/"))
    assert folder_prop.findtext(f"{OC}size") == "3000"  # the folder's size is its subtree's


def test_quota_properties_count_current_files(srv: InprocServer, folder: str) -> None:
    before = propfind(srv, "/files/")
    (prop,) = before.values()
    used = int(prop.findtext(f"{DAV}quota-used-bytes") or "-1")
    available = int(prop.findtext(f"{DAV}quota-available-bytes") or "-1")
    assert used >= 0 and available > 0
    assert put(srv, folder + "q.bin", b"x" * 1000, {}).status == 201
    assert put(srv, folder + "q.bin", b"y" * 400, {}).status == 204  # replaces, not adds
    (after,) = propfind(srv, "/files/").values()
    assert int(after.findtext(f"{DAV}quota-used-bytes") or "-1") == used + 400


@pytest.mark.parametrize(
    "header",
    [
        lambda body: {"OC-Checksum": "SHA1:" + hashlib.sha1(body).hexdigest()},
        lambda body: {"OC-Checksum": "MD5:" + hashlib.md5(body).hexdigest()},
        lambda body: {
            "Repr-Digest": "sha-256=:"
            + base64.b64encode(hashlib.sha256(body).digest()).decode()
            + ":"
        },
    ],
    ids=["oc-sha1", "oc-md5", "repr-digest"],
)
def test_matching_checksums_are_accepted(
    srv: InprocServer, folder: str, header: Callable[[bytes], dict[str, str]]
) -> None:
    body = os.urandom(5000)
    assert put(srv, folder + "ok.bin", body, header(body)).status == 201
    assert srv.request("GET", folder + "ok.bin").body == body


@pytest.mark.parametrize(
    "headers",
    [
        {"OC-Checksum": "SHA1:" + "0" * 40},
        {"OC-Checksum": "MD5:" + "0" * 32},
        {"Repr-Digest": "sha-256=:" + base64.b64encode(b"\0" * 32).decode() + ":"},
        {"Content-Digest": "sha-256=:" + base64.b64encode(b"\1" * 32).decode() + ":"},
    ],
    ids=["oc-sha1", "oc-md5", "repr-digest", "content-digest"],
)
def test_a_wrong_checksum_stores_nothing(
    srv: InprocServer, folder: str, headers: dict[str, str]
) -> None:
    assert put(srv, folder + "keep.bin", b"original", {}).status == 201
    response = put(srv, folder + "keep.bin", os.urandom(4000), headers)
    assert response.status == 400, response.status
    assert srv.request("GET", folder + "keep.bin").body == b"original"
    assert put(srv, folder + "new.bin", b"data", headers).status == 400
    assert srv.request("GET", folder + "new.bin").status == 404
    assert blob_tmp_files(srv) == []


@pytest.mark.parametrize(
    "headers", [{"OC-Checksum": "SHA1:nothex"}, {"Repr-Digest": "sha-256=notbase64"}]
)
def test_malformed_checksum_headers_are_a_clean_400(
    srv: InprocServer, folder: str, headers: dict[str, str]
) -> None:
    response = put(srv, folder + "m.bin", b"data", headers)
    assert response.status == 400
    assert srv.request("GET", folder + "m.bin").status == 404


def test_get_and_head_carry_repr_digest(srv: InprocServer, folder: str) -> None:
    body = os.urandom(10_000)
    assert put(srv, folder + "d.bin", body, {}).status == 201
    expected = "sha-256=:" + base64.b64encode(hashlib.sha256(body).digest()).decode() + ":"
    assert srv.request("GET", folder + "d.bin").headers.get("Repr-Digest") == expected
    assert srv.request("HEAD", folder + "d.bin").headers.get("Repr-Digest") == expected
    ranged = srv.request("GET", folder + "d.bin", None, {"Range": "bytes=0-9"})
    assert ranged.status == 206 and ranged.headers.get("Repr-Digest") == expected


def test_rclone_style_proppatch_of_checksums_is_accepted_not_stored(
    srv: InprocServer, folder: str
) -> None:
    assert put(srv, folder + "r.txt", b"rclone", {}).status == 201
    patch = (
        b'<?xml version="1.0"?><d:propertyupdate xmlns:d="DAV:" xmlns:oc="http://owncloud.org/ns">'
        b"<d:set><d:prop><d:lastmodified>1500000000</d:lastmodified>"
        b"<oc:checksums><oc:checksum>SHA1:0000</oc:checksum></oc:checksums>"
        b"</d:prop></d:set></d:propertyupdate>"
    )
    response = srv.request("PROPPATCH", folder + "r.txt", patch)
    assert response.status == 207
    assert b"403" not in response.body and b"409" not in response.body, response.body
    (prop,) = propfind(srv, folder + "r.txt").values()
    assert (prop.findtext(f"{OC}checksums/{OC}checksum") or "").startswith(
        "SHA1:" + hashlib.sha1(b"rclone").hexdigest()
    )
    modified = email.utils.parsedate_to_datetime(prop.findtext(f"{DAV}getlastmodified") or "")
    assert int(modified.timestamp()) == 1500000000


def test_a_listings_folder_sizes_take_one_query_whatever_the_number_of_folders(
    srv: InprocServer, folder: str
) -> None:
    """Sync clients ask oc:size in every listing: the member folders' sizes come from one
    query, not from one walk of each folder's subtree."""

    def listing_statements(url: str) -> tuple[int, dict[str, ElementTree.Element]]:
        """The statements of a Depth 1 PROPFIND that read the tree. Not the others: a request
        now and then also touches its session's row (once a minute), and other threads write
        download rows, which made the count one higher at random."""
        seen: list[str] = []

        def count(_conn: object, _cursor: object, statement: str, *_args: object) -> None:
            if "nodes" in statement:
                seen.append(statement)

        event.listen(srv.app.db.engine, "before_cursor_execute", count)
        try:
            listing = propfind(srv, url, depth="1")
        finally:
            event.remove(srv.app.db.engine, "before_cursor_execute", count)
        return len(seen), listing

    counts = {}
    for n in (2, 6):
        base = f"{folder}n{n}/"
        assert srv.request("MKCOL", base).status == 201
        for i in range(n):
            assert srv.request("MKCOL", f"{base}d{i}/").status == 201
            assert srv.request("MKCOL", f"{base}d{i}/deeper/").status == 201
            assert put(srv, f"{base}d{i}/a.bin", b"x" * (10 * i), {}).status == 201
            assert put(srv, f"{base}d{i}/deeper/b.bin", b"y" * 5, {}).status == 201
        assert srv.request("DELETE", f"{base}d0/deeper/b.bin").status == 204  # trash: not counted
        counts[n], listing = listing_statements(base)
        sizes = {
            href.rstrip("/").rsplit("/", 1)[-1]: prop.findtext(f"{OC}size")
            for href, prop in listing.items()
        }
        assert sizes == {
            f"n{n}": str(sum(10 * i + 5 for i in range(n)) - 5),
            **{f"d{i}": str(10 * i + (5 if i else 0)) for i in range(n)},
        }
    assert counts[6] == counts[2]


def test_the_size_of_ones_own_space_is_its_running_total(srv: InprocServer, folder: str) -> None:
    """oc:size of the top of /files/ walked the whole space, as any folder's does: 1-2 s
    at a million files, and sync clients ask it on every poll. It is the space's running
    total (what quota-used-bytes shows), which every upload, deletion and restore keeps."""
    app = srv.app
    home = app.services.files.home_id(app.services.users.user_id(srv.user))

    def root_size() -> tuple[str | None, list[str]]:
        seen: list[str] = []

        def note(_conn: object, _cursor: object, statement: str, *_args: object) -> None:
            seen.append(statement)

        event.listen(app.db.engine, "before_cursor_execute", note)
        try:
            prop = propfind(srv, srv.files_url)["/files/"]
        finally:
            event.remove(app.db.engine, "before_cursor_execute", note)
        assert prop.findtext(f"{OC}size") == prop.findtext(f"{DAV}quota-used-bytes")
        return prop.findtext(f"{OC}size"), seen

    assert put(srv, f"{folder}total.bin", b"z" * 1234, {}).status == 201
    size, statements = root_size()
    assert size == str(app.services.files.subtree_size(home))
    assert not [s for s in statements if "RECURSIVE" in s.upper()], statements
    assert srv.request("DELETE", f"{folder}total.bin").status == 204
    after, _ = root_size()
    assert int(after or 0) == int(size or 0) - 1234 == app.services.files.subtree_size(home)


def chunked(*chunks: bytes) -> bytes:
    """A chunked request body made of ``chunks`` (sent as it is: the client adds no framing)."""
    return b"".join(b"%x\r\n%s\r\n" % (len(chunk), chunk) for chunk in chunks) + b"0\r\n\r\n"


@pytest.mark.parametrize("sent", [b"hello", b"hello world, and more"], ids=["short", "long"])
def test_a_finder_upload_not_of_its_expected_length_stores_nothing(
    srv: InprocServer, folder: str, sent: bytes
) -> None:
    """macOS Finder sends an upload chunked, with its length in X-Expected-Entity-Length: a
    body of another length is not the file Finder meant (a proxy or the client lost part of
    it), and was stored as if it were."""
    url = folder + "finder.txt"
    finder = {"Transfer-Encoding": "chunked", "X-Expected-Entity-Length": "11"}
    response = put(srv, url, chunked(sent), finder)
    assert response.status == 400, (response.status, response.body[:300])
    assert srv.request("GET", url).status == 404
    response = put(srv, url, chunked(b"hello", b" world"), finder)
    assert response.status == 201, (response.status, response.body[:300])
    assert srv.request("GET", url).body == b"hello world"


def test_every_collection_outside_a_space_shows_the_users_own_quota(srv: InprocServer) -> None:
    """A drive mounted at ``/`` (the one URL where files, groups and shares are together) is
    asked for the quota of ``/``: it had none, so Finder, GNOME Files, davfs2's df and
    ``rclone about`` showed no free or used space. The collections outside every space answer
    with the signed-in user's own, as /files/ does."""
    (own,) = propfind(srv, "/files/").values()
    expected = {
        name: own.findtext(f"{DAV}{name}") for name in ("quota-used-bytes", "quota-available-bytes")
    }
    assert all(value and value.isdigit() for value in expected.values()), expected
    for url in ("/", "/trash/", "/versions/", "/packages/", "/groups/", "/shared/"):
        (prop,) = propfind(srv, url).values()
        found = {name: prop.findtext(f"{DAV}{name}") for name in expected}
        used, available = (int(found[name] or "-1") for name in expected)
        assert used == int(expected["quota-used-bytes"] or "-2"), (url, found)
        assert abs(available - int(expected["quota-available-bytes"] or "0")) < 2**26, (url, found)
