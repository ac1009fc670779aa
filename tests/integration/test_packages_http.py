"""Packages over real HTTP, on both engines: MKCOL and COPY into ``/packages/``, the zip checked
by Python's zipfile and by ``unzip -t`` against the pinned versions, deterministic bytes and
ETag, Range and resume, HEAD, expiry, zip-slip names refused, and what WebDAV refuses there."""

from __future__ import annotations

import concurrent.futures
import datetime as dt
import hashlib
import io
import json
import logging
import os
import re
import shutil
import subprocess
import threading
import urllib.parse
import uuid
import zipfile
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
import sqlalchemy as sa

from davserver.db.types import utcnow
from davserver.models import LogEntry, Package
from davserver.services import packages as packages_service
from davserver.services.package_archive import PackageArchive
from davserver.services.packages import PackageService
from davserver.services.zipstream import MANIFEST_NAME
from tests import blobs
from tests.conftest import ENGINES
from tests.servers import InprocServer, Response, basic_auth_header, http_request, run_inproc_server

PROPPATCH_MTIME = (
    b'<?xml version="1.0"?><D:propertyupdate xmlns:D="DAV:"><D:set><D:prop>'
    b"<D:getlastmodified>Mon, 01 Jan 2024 10:00:00 GMT</D:getlastmodified>"
    b"</D:prop></D:set></D:propertyupdate>"
)
LOCK = (
    b'<?xml version="1.0"?><D:lockinfo xmlns:D="DAV:"><D:lockscope><D:exclusive/>'
    b"</D:lockscope><D:locktype><D:write/></D:locktype></D:lockinfo>"
)


class User:
    """One user of the test server, talking WebDAV and the JSON API."""

    def __init__(self, server: InprocServer, name: str, roles: list[str] | None = None) -> None:
        self.server = server
        self.name = name
        self.password = f"pw-{uuid.uuid4().hex}"
        server.application.services.users.create_user(
            None, name, password=self.password, roles=roles or ["user"]
        )
        self.id = server.application.services.users.user_id(name)

    def call(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> Response:
        sent = {"Authorization": basic_auth_header(self.name, self.password), **(headers or {})}
        path, mark, query = path.partition("?")
        return http_request(method, self.server.url + quote(path) + mark + query, body, sent)

    def put(self, path: str, data: bytes) -> None:
        status = self.call("PUT", path, data).status
        assert status in (201, 204), status

    def mkcol(self, path: str) -> None:
        assert self.call("MKCOL", path).status == 201

    def copy(self, source: str, dest: str, **headers: str) -> Response:
        destination = self.server.url + quote(dest)
        return self.call("COPY", source, headers={"Destination": destination, **headers})

    def move(self, source: str, dest: str, **headers: str) -> Response:
        destination = self.server.url + quote(dest)
        return self.call("MOVE", source, headers={"Destination": destination, **headers})

    def api(self, method: str, path: str, payload: Any = None) -> tuple[int, Any]:
        body = json.dumps(payload).encode() if payload is not None else None
        response = self.call(method, "/api/v1" + path, body, {"Content-Type": "application/json"})
        return response.status, json.loads(response.body) if response.body else None


@pytest.fixture(scope="module", params=ENGINES)
def server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[InprocServer]:
    folder = tmp_path_factory.mktemp(f"pkg-{request.param}")
    with run_inproc_server(request.param, folder, logging__query_header=True) as srv:
        yield srv


@pytest.fixture
def alice(server: InprocServer) -> User:
    return User(server, f"alice{uuid.uuid4().hex[:6]}")


def unzip_test(data: bytes, tmp_path: Path) -> str:
    """``unzip -t`` of the archive; its output (it must pass)."""
    if shutil.which("unzip") is None:
        pytest.skip("unzip is not installed")
    path = tmp_path / f"{uuid.uuid4().hex}.zip"
    path.write_bytes(data)
    done = subprocess.run(["unzip", "-t", str(path)], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def make_tree(user: User) -> dict[str, bytes]:
    """Files in /files/: a.txt, a unicode name, and a folder with a sub-folder; their bytes
    by the path they get in the archive when a.txt, résumé.txt and docs/ are pinned."""
    contents = {
        "a.txt": b"alpha\n",
        "résumé.txt": "naïve ☃\n".encode(),
        "docs/big.bin": hashlib.sha256(b"seed").digest() * 40_000,
        "docs/sub/c.txt": b"",
        "docs/sub/deeper/d.txt": b"deep\n",
    }
    user.mkcol("/files/docs/")
    user.mkcol("/files/docs/sub/")
    user.mkcol("/files/docs/sub/deeper/")
    for path, data in contents.items():
        user.put(f"/files/{path}", data)
    user.put("/files/docs/.DS_Store", b"finder clutter")  # never pinned from a folder
    return contents


def pinned_package(user: User, name: str) -> dict[str, bytes]:
    contents = make_tree(user)
    user.mkcol(f"/packages/{name}/")
    for source in ("a.txt", "résumé.txt", "docs"):
        assert user.copy(f"/files/{source}", f"/packages/{name}/{source}").status == 201
    return contents


# -- the zip


def test_zip_holds_the_pinned_versions(alice: User, tmp_path: Path) -> None:
    contents = pinned_package(alice, "release")
    response = alice.call("GET", "/packages/release.zip")
    assert response.status == 200
    assert response.headers["Content-Type"] == "application/zip"
    assert int(response.headers["Content-Length"]) == len(response.body)
    archive = zipfile.ZipFile(io.BytesIO(response.body))
    assert archive.testzip() is None
    assert archive.namelist() == [*sorted(contents), MANIFEST_NAME]
    for path, data in contents.items():
        assert archive.read(path) == data
    manifest = json.loads(archive.read(MANIFEST_NAME))
    assert manifest["package"] == "release"
    assert manifest["files"] == [
        {
            "path": path,
            "size": len(contents[path]),
            "sha256": hashlib.sha256(contents[path]).hexdigest(),
            "version": 1 if contents[path] else None,  # an empty file has no version
            "mtime": manifest["files"][index]["mtime"],
        }
        for index, path in enumerate(sorted(contents))
    ]
    tested = unzip_test(response.body, tmp_path)
    assert "No errors detected" in tested and "résumé.txt" in tested


def test_a_zip_get_checks_its_items_and_lays_the_zip_out_once(
    alice: User, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The rights on every item (one query over all their ancestors) and the layout (every
    header, the manifest, the ETag) are costly for a large package or folder: a GET sent its
    size and ETag from one layout, and streams that one."""
    pinned_package(alice, "once")
    calls: Counter[str] = Counter()
    check, build = PackageService.check_downloadable, packages_service.build_archive

    def counted_check(self: PackageService, *args: Any) -> None:
        calls["check"] += 1
        check(self, *args)

    def counted_build(*args: Any) -> PackageArchive:
        calls["layout"] += 1
        return build(*args)

    monkeypatch.setattr(PackageService, "check_downloadable", counted_check)
    monkeypatch.setattr(packages_service, "build_archive", counted_build)
    whole = alice.call("GET", "/packages/once.zip")
    assert whole.status == 200 and zipfile.ZipFile(io.BytesIO(whole.body)).testzip() is None
    assert calls == {"check": 1, "layout": 1}
    calls.clear()
    folder = alice.call("GET", "/files/docs/?zip")
    assert folder.status == 200 and zipfile.ZipFile(io.BytesIO(folder.body)).testzip() is None
    assert calls == {"layout": 1}
    # A range with whitespace inside is no range: the whole zip (WsgiDAV sent its last bytes).
    spaced = alice.call("GET", "/files/docs/?zip", headers={"Range": "bytes=1 -2"})
    assert (spaced.status, spaced.body) == (200, folder.body)


def test_later_changes_to_the_files_leave_the_package_alone(alice: User) -> None:
    pinned_package(alice, "frozen")
    before = alice.call("GET", "/packages/frozen.zip")
    alice.put("/files/a.txt", b"a newer version\n")
    assert alice.call("PROPPATCH", "/files/docs/big.bin", PROPPATCH_MTIME).status == 207
    after = alice.call("GET", "/packages/frozen.zip")
    assert after.body == before.body
    assert after.headers["ETag"] == before.headers["ETag"]
    assert zipfile.ZipFile(io.BytesIO(after.body)).read("a.txt") == b"alpha\n"
    # A COPY onto the pinned path (Overwrite: T) pins the new version instead.
    assert alice.copy("/files/a.txt", "/packages/frozen/a.txt").status == 204
    repinned = alice.call("GET", "/packages/frozen.zip")
    assert repinned.headers["ETag"] != before.headers["ETag"]
    assert zipfile.ZipFile(io.BytesIO(repinned.body)).read("a.txt") == b"a newer version\n"
    refused = alice.copy("/files/a.txt", "/packages/frozen/a.txt", Overwrite="F")
    assert refused.status == 412


def test_same_package_same_bytes_and_etag(alice: User) -> None:
    pinned_package(alice, "twice")
    first = alice.call("GET", "/packages/twice.zip")
    second = alice.call("GET", "/packages/twice.zip")
    assert first.body == second.body
    etag = first.headers["ETag"]
    assert etag == second.headers["ETag"] and etag.startswith('"') and not etag.startswith("W/")
    listing = alice.call("PROPFIND", "/packages/", headers={"Depth": "1"})
    assert listing.status == 207 and etag.encode() in listing.body
    assert f"<D:getcontentlength>{len(first.body)}<".encode() in listing.body
    cached = alice.call("GET", "/packages/twice.zip", headers={"If-None-Match": etag})
    assert cached.status == 304


def test_head_range_and_resume(alice: User) -> None:
    pinned_package(alice, "ranges")
    whole = alice.call("GET", "/packages/ranges.zip").body
    size = len(whole)
    head = alice.call("HEAD", "/packages/ranges.zip")
    assert head.status == 200 and head.body == b""
    assert int(head.headers["Content-Length"]) == size
    assert head.headers["Accept-Ranges"] == "bytes"
    etag = head.headers["ETag"]
    # mid-zip, across a local header and into an entry's data
    start, end = 20, size // 2
    part = alice.call("GET", "/packages/ranges.zip", headers={"Range": f"bytes={start}-{end}"})
    assert part.status == 206
    assert part.headers["Content-Range"] == f"bytes {start}-{end}/{size}"
    assert part.body == whole[start : end + 1]
    # a resumed download: from an offset to the end, only while the ETag still matches
    offset = size // 3
    resumed = alice.call(
        "GET", "/packages/ranges.zip", headers={"Range": f"bytes={offset}-", "If-Range": etag}
    )
    assert resumed.status == 206 and resumed.body == whole[offset:]
    stale = alice.call(
        "GET", "/packages/ranges.zip", headers={"Range": f"bytes={offset}-", "If-Range": '"x"'}
    )
    assert stale.status == 200 and stale.body == whole
    tail = alice.call("GET", "/packages/ranges.zip", headers={"Range": "bytes=-22"})
    assert tail.status == 206 and tail.body == whole[-22:]


def test_the_logbook_names_the_range_that_was_served(server: InprocServer, alice: User) -> None:
    """A Range with an If-Range that no longer matches gets the whole zip (200): the
    package:download row must say so (no range), not name the range the client asked for."""
    pinned_package(alice, "logged")
    head = alice.call("HEAD", "/packages/logged.zip")
    etag, modified = head.headers["ETag"], head.headers["Last-Modified"]
    asked = [
        ({"Range": "bytes=10-"}, 206, "bytes=10-"),
        ({"Range": "bytes=11-", "If-Range": etag}, 206, "bytes=11-"),
        # a date: a pin in its second would have left it as it was (conditions.served_range)
        ({"Range": "bytes=12-", "If-Range": modified}, 200, None),
        ({"Range": "bytes=13-", "If-Range": '"stale"'}, 200, None),
        ({"Range": "bytes=14-", "If-Range": "Mon, 01 Jan 2001 00:00:00 GMT"}, 200, None),
    ]
    for headers, status, _ in asked:
        assert alice.call("GET", "/packages/logged.zip", headers=headers).status == status
    server.application.files.read_log.flush()  # downloads are logged in batches
    with server.application.db.connect() as conn:
        rows = conn.execute(
            sa.select(LogEntry.details)
            .where(LogEntry.user_id == alice.id, LogEntry.op_type == "package:download")
            .order_by(LogEntry.id)
        ).all()
    assert [row.details["range"] for row in rows[-len(asked) :]] == [r for _, _, r in asked]


def test_a_pinned_item_read_from_the_package_folder_is_a_logged_download(
    server: InprocServer, alice: User
) -> None:
    """DESIGN: every download writes a logbook row. GET of one item of a package's folder
    sent its bytes and wrote none: the file's history did not show who had read it. It is a
    file:download of the file and the pinned version, naming the package; HEAD is none."""
    alice.put("/files/pinned.txt", b"pinned bytes")
    alice.mkcol("/packages/readable/")
    assert alice.copy("/files/pinned.txt", "/packages/readable/it.txt").status == 201
    alice.put("/files/pinned.txt", b"changed since")
    assert alice.call("HEAD", "/packages/readable/it.txt").status == 200
    got = alice.call("GET", "/packages/readable/it.txt", headers={"Range": "bytes=7-"})
    assert (got.status, got.body) == (206, b"bytes")
    app = server.application
    app.files.read_log.flush()
    package = app.services.packages.find(alice.id, "readable")
    assert package is not None
    with app.db.connect() as conn:
        rows = conn.execute(
            sa.select(LogEntry.node_id, LogEntry.version_id, LogEntry.package_id, LogEntry.details)
            .where(LogEntry.user_id == alice.id, LogEntry.op_type == "file:download")
            .order_by(LogEntry.id)
        ).all()
    item = package.items[0]
    assert [tuple(row) for row in rows] == [
        (
            item.node_id,
            item.version_id,
            package.id,
            {
                "package": "readable",
                "package_id": str(package.id),
                "path": "it.txt",
                "size": 12,
                "version_no": 1,
                "range": "bytes=7-",
            },
        )
    ]


@pytest.mark.parametrize("damage", ["gone", "cut short"])
def test_lost_bytes_are_named_before_any_byte_of_the_zip_is_sent(
    server: InprocServer, alice: User, caplog: pytest.LogCaptureFixture, damage: str
) -> None:
    # The second member's blob file is gone (a disk restored from an old backup), or cut short
    # (a crash with fsync off): the zip was a 200 that broke off mid-stream, or a bare 500. It
    # is a 404 naming the file now, as a GET of the file is, and the server's log names the
    # blob for the admin (fsck finds all).
    kept, lost = (f"{what} {uuid.uuid4()}".encode() for what in ("kept", "lost"))
    alice.put("/files/kept.txt", kept)
    alice.put("/files/lost.txt", lost)
    alice.mkcol("/packages/damaged/")
    for name in ("kept.txt", "lost.txt"):
        assert alice.copy(f"/files/{name}", f"/packages/damaged/{name}").status == 201
    stored = blobs.path_of(server.application.blobs, lost)
    if damage == "gone":
        stored.unlink()
    else:
        os.truncate(stored, 5)
    said = b"missing from the blob store" if damage == "gone" else b"damaged in the blob store"
    # Where lost.txt's bytes lie in the zip, and where its central directory starts: a range
    # that reads no byte of a damaged file is served (a resumed download of a big zip checks
    # only the blobs its range reads).
    package = server.application.services.packages.find(alice.id, "damaged")
    assert package is not None
    stream = server.application.services.packages.layout(package).stream
    pieces, position = [], 0
    while position < stream.central_offset:
        pieces.append(stream.piece_at(position))
        position = pieces[-1][3]
    [lost_at] = [
        at for kind, i, at, _ in pieces if (kind, stream.entry(i).path) == ("data", "lost.txt")
    ]
    with caplog.at_level(logging.ERROR):
        for headers in ({}, {"Range": "bytes=0-"}, {"Range": f"bytes={lost_at + 2}-"}):
            response = alice.call("GET", "/packages/damaged.zip", headers=headers)
            assert response.status == 404, (headers, response.status)
            assert b"lost.txt" in response.body and said in response.body, response.body
        tail = alice.call(
            "GET", "/packages/damaged.zip", headers={"Range": f"bytes={stream.central_offset}-"}
        )
        assert tail.status == 206 and tail.body.startswith(b"PK\x01\x02"), tail.status
        for path in ("/files/lost.txt", "/packages/damaged/lost.txt"):
            response = alice.call("GET", path)
            assert response.status == 404 and said in response.body, path
    logged = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len([m for m in logged if blobs.sha(lost) in m and "lost.txt" in m]) == 5, logged
    server.application.files.read_log.flush()
    with server.application.db.connect() as conn:
        downloads = conn.scalars(
            sa.select(LogEntry.details).where(
                LogEntry.user_id == alice.id, LogEntry.op_type == "package:download"
            )
        ).all()
    assert [row["range"] for row in downloads] == [f"bytes={stream.central_offset}-"]
    assert alice.call("GET", "/packages/damaged/kept.txt").body == kept


def test_a_head_of_lost_bytes_answers_404_as_the_get_does(
    server: InprocServer, alice: User
) -> None:
    # HEAD answered 200 with the length and ETag of bytes that a GET then could not send (404),
    # for the file, its versions, a package's item, the package's zip and a folder's zip.
    lost = f"lost {uuid.uuid4()}".encode()
    alice.mkcol("/files/headless/")
    alice.put("/files/headless/gone.txt", lost)
    alice.put("/files/headless/kept.txt", b"kept")
    alice.mkcol("/packages/headless/")
    assert alice.copy("/files/headless/gone.txt", "/packages/headless/gone.txt").status == 201
    blobs.path_of(server.application.blobs, lost).unlink()
    for path in (
        "/files/headless/gone.txt",
        "/files/headless/gone.txt?version=1",
        "/versions/files/headless/gone.txt/gone.v1.txt",
        "/packages/headless/gone.txt",
        "/packages/headless.zip",
        "/files/headless/?zip",
    ):
        assert alice.call("GET", path).status == 404, path
        assert alice.call("HEAD", path).status == 404, path
    assert alice.call("HEAD", "/files/headless/kept.txt").status == 200


def test_the_package_folder_lists_and_serves_the_pinned_items(alice: User) -> None:
    contents = pinned_package(alice, "tree")
    listing = alice.call("PROPFIND", "/packages/tree/docs/", headers={"Depth": "1"})
    assert listing.status == 207
    assert b"/packages/tree/docs/sub/" in listing.body and b"big.bin" in listing.body
    assert b".DS_Store" not in listing.body
    got = alice.call("GET", "/packages/tree/docs/sub/deeper/d.txt")
    assert got.status == 200 and got.body == contents["docs/sub/deeper/d.txt"]
    html = alice.call("GET", "/packages/tree/").body
    assert b'href="/packages/tree/docs/"' in html and b"a.txt" in html
    # DELETE unpins: one item, then a whole folder of the archive; the files stay
    assert alice.call("DELETE", "/packages/tree/a.txt").status == 204
    assert alice.call("DELETE", "/packages/tree/docs/sub/").status == 204
    names = zipfile.ZipFile(io.BytesIO(alice.call("GET", "/packages/tree.zip").body)).namelist()
    assert names == ["docs/big.bin", "résumé.txt", MANIFEST_NAME]
    assert alice.call("GET", "/files/a.txt").status == 200
    assert alice.call("DELETE", "/packages/tree/").status == 204
    assert alice.call("GET", "/packages/tree.zip").status == 404
    assert alice.call("GET", "/files/docs/sub/c.txt").status == 200


def test_a_zips_file_name_survives_any_package_name(alice: User) -> None:
    """A package may be named ``a\\b "c" é`` (backslashes and quotes are allowed in names).
    The plain ``filename`` fallback of Content-Disposition is a quoted-string, where a
    backslash escapes the next character: ``filename="a\\b..."`` read as ``ab...``.
    ``filename*`` carries the exact name."""
    name = 'a\\b "c" é'
    alice.mkcol(f"/packages/{name}/")
    response = alice.call("GET", f"/packages/{name}.zip")
    assert response.status == 200
    disposition = response.headers["Content-Disposition"]
    assert 'filename="a_b _c_ ?.zip"' in disposition
    assert f"filename*=UTF-8''{quote(name + '.zip', safe='')}" in disposition


# -- a folder as a zip (GET <folder>/?zip), built as a package's is


def test_a_folder_downloads_as_one_zip_of_its_current_files(
    server: InprocServer, alice: User, tmp_path: Path
) -> None:
    contents = make_tree(alice)
    below = {path: data for path, data in contents.items() if path.startswith("docs/")}
    response = alice.call("GET", "/files/docs/?zip")
    assert response.status == 200
    assert response.headers["Content-Type"] == "application/zip"
    assert 'filename="docs.zip"' in response.headers["Content-Disposition"]
    archive = zipfile.ZipFile(io.BytesIO(response.body))
    assert archive.namelist() == [*sorted(below), MANIFEST_NAME]  # no .DS_Store
    for path, data in below.items():
        assert archive.read(path) == data
    assert "No errors detected" in unzip_test(response.body, tmp_path)

    # Nextcloud's way of asking, HEAD, a range, and the same bytes and ETag again.
    asked = alice.call("GET", "/files/docs/", headers={"Accept": "application/zip"})
    assert asked.body == response.body and asked.headers["ETag"] == response.headers["ETag"]
    head = alice.call("HEAD", "/files/docs/?zip")
    assert int(head.headers["Content-Length"]) == len(response.body) and head.body == b""
    part = alice.call("GET", "/files/docs/?zip", headers={"Range": "bytes=100-5099"})
    assert part.status == 206 and part.body == response.body[100:5100]
    # A browser's GET of the folder still lists it, as does one that refuses zips (q=0);
    # either answer says that it depends on Accept, for caches.
    listing = alice.call("GET", "/files/docs/")
    assert listing.headers["Content-Type"].startswith("text/html")
    refused = alice.call("GET", "/files/docs/", headers={"Accept": "application/zip;q=0"})
    assert refused.headers["Content-Type"].startswith("text/html")
    assert listing.headers["Vary"] == asked.headers["Vary"] == "Accept"

    # Nothing but such a folder is a zip: a file, the trash, a package's folder asked so got
    # 200 and the file or a listing.
    alice.mkcol("/packages/zipped/")
    for url in ("/files/a.txt?zip", "/trash/?zip", "/packages/zipped/?zip", "/?zip"):
        refused = alice.call("GET", url)
        assert refused.status == 400 and b"/packages/&lt;name&gt;.zip" in refused.body, url
    # A change inside makes another zip, with another ETag.
    alice.put("/files/docs/sub/deeper/d.txt", b"changed\n")
    changed = alice.call("GET", "/files/docs/?zip")
    assert changed.headers["ETag"] != response.headers["ETag"]
    assert zipfile.ZipFile(io.BytesIO(changed.body)).read("docs/sub/deeper/d.txt") == b"changed\n"

    server.application.files.read_log.flush()
    with server.application.db.read() as session:
        logged = session.execute(
            sa.select(LogEntry.details, LogEntry.node_id)
            .where(LogEntry.user_id == alice.id, LogEntry.op_type == "folder:download")
            .order_by(LogEntry.id)
        ).all()
    assert len(logged) == 4  # the GETs that sent bytes, not the HEAD
    assert logged[0].details["files"] == len(below) and logged[0].details["name"] == "docs"
    assert logged[2].details["range"] == "bytes=100-5099"


def test_a_folder_zip_costs_the_same_statements_whatever_its_size(alice: User) -> None:
    """A folder's files and their blobs come from one query, read in batches: a large folder
    is no more statements than a small one (versions were looked up 500 at a time)."""
    counts = {}
    for size in (1, 501):
        alice.mkcol(f"/files/zip-{size}/")
        for index in range(size):
            alice.put(f"/files/zip-{size}/f{index:04d}.txt", f"{index}\n".encode())
        response = alice.call("GET", f"/files/zip-{size}/?zip")
        assert response.status == 200
        assert len(zipfile.ZipFile(io.BytesIO(response.body)).namelist()) == size + 1
        counts[size] = int(response.headers["X-Query-Count"])
    assert counts[1] == counts[501], counts


def test_an_empty_folder_zips_to_its_manifest(alice: User) -> None:
    alice.mkcol("/files/nothing/")
    response = alice.call("GET", "/files/nothing/?zip")
    assert response.status == 200
    assert zipfile.ZipFile(io.BytesIO(response.body)).namelist() == [MANIFEST_NAME]


def test_a_folder_zips_whatever_names_its_files_have(alice: User, tmp_path: Path) -> None:
    # Names a folder may hold but a zip may not: two that differ only in letter case (one file
    # on Windows and macOS), a backslash, a C1 control, one of only dots; and a folder named
    # like a drive. Each was a 400 for the whole folder; now each gets a safe, unique name.
    alice.mkcol("/files/C:/")
    alice.mkcol("/files/C:/Sub/")
    stored = {
        "C:/Report.txt": b"upper\n",
        "C:/report.txt": b"lower\n",
        "C:/REPORT (2).txt": b"taken already\n",
        "C:/back\\slash.txt": b"backslash\n",
        "C:/line\x85break.txt": b"c1\n",
        "C:/...": b"dots\n",
        "C:/sub": b"a file beside the folder Sub\n",
        "C:/Sub/inner.txt": b"inner\n",
    }
    for path, data in stored.items():
        alice.put(f"/files/{path}", data)
    response = alice.call("GET", "/files/C:/?zip")
    assert response.status == 200, response.body
    archive = zipfile.ZipFile(io.BytesIO(response.body))
    assert {name: archive.read(name) for name in archive.namelist()[:-1]} == {
        "C_/REPORT (2).txt": b"taken already\n",
        "C_/Report.txt": b"upper\n",
        "C_/Sub/inner.txt": b"inner\n",
        "C_/_...": b"dots\n",
        "C_/back_slash.txt": b"backslash\n",
        "C_/line_break.txt": b"c1\n",
        "C_/report (3).txt": b"lower\n",
        "C_/sub (2)": b"a file beside the folder Sub\n",
    }
    assert "No errors detected" in unzip_test(response.body, tmp_path)
    # The same folder gives the same names, so the same bytes (ETag, Range, resume).
    assert alice.call("GET", "/files/C:/?zip").body == response.body


def test_a_package_zip_is_not_resumed_by_a_date_a_pin_in_that_second_left_as_it_was(
    alice: User,
) -> None:
    # A pin changes the zip and its ETag, but within the second of the Last-Modified it leaves
    # that date as it was: a download resumed with If-Range by it got the tail of the new zip
    # after the head of the old one (206, a corrupt zip). The whole zip comes now.
    alice.mkcol("/packages/resumed/")
    for name in ("one.txt", "two.txt"):
        alice.put(f"/files/{name}", name.encode() * 3000)
    assert alice.copy("/files/one.txt", "/packages/resumed/one.txt").status == 201
    first = alice.call("GET", "/packages/resumed.zip")
    assert first.status == 200
    assert alice.copy("/files/two.txt", "/packages/resumed/two.txt").status == 201
    headers = {"Range": "bytes=500-", "If-Range": first.headers["Last-Modified"]}
    resumed = alice.call("GET", "/packages/resumed.zip", headers=headers)
    now = alice.call("GET", "/packages/resumed.zip")
    assert resumed.status == 200 and resumed.body == now.body
    assert now.headers["ETag"] != first.headers["ETag"]
    headers = {"Range": "bytes=500-", "If-Range": now.headers["ETag"]}
    by_tag = alice.call("GET", "/packages/resumed.zip", headers=headers)
    assert by_tag.status == 206 and by_tag.body == now.body[500:]


def test_a_folder_zip_is_never_resumed_or_revalidated_by_date(alice: User) -> None:
    # Its files' times are the clients' (X-OC-Mtime) and a deletion or a rename leaves them
    # as they were, so no date tells that the zip changed: a download resumed with If-Range
    # by date got the rest of another zip (206, a corrupt file), and If-Modified-Since a 304
    # for new contents. Only the ETag says it is the same zip.
    alice.mkcol("/files/dated/")
    for name in ("a.txt", "b.txt"):
        assert alice.call("PUT", f"/files/dated/{name}", name.encode() * 4000).status == 201
    first = alice.call("GET", "/files/dated/?zip")
    assert first.status == 200
    assert alice.call("DELETE", "/files/dated/a.txt").status == 204
    some_date = "Fri, 27 Nov 2099 10:00:00 GMT"
    dates = [first.headers.get("Last-Modified") or some_date, some_date]
    for date in dates:
        resumed = alice.call(
            "GET", "/files/dated/?zip", headers={"Range": "bytes=100-", "If-Range": date}
        )
        assert resumed.status == 200 and resumed.body[:4] == b"PK\x03\x04"
        assert (
            alice.call("GET", "/files/dated/?zip", headers={"If-Modified-Since": date}).status
            == 200
        )
    now = alice.call("GET", "/files/dated/?zip")
    etag = now.headers["ETag"]
    assert "Last-Modified" not in now.headers
    resumed = alice.call(
        "GET", "/files/dated/?zip", headers={"Range": "bytes=100-", "If-Range": etag}
    )
    assert resumed.status == 206 and resumed.body == now.body[100:]
    stale = alice.call(
        "GET",
        "/files/dated/?zip",
        headers={"Range": "bytes=100-", "If-Range": first.headers["ETag"]},
    )
    assert stale.status == 200 and stale.body == now.body


def test_a_group_space_zips_under_the_groups_name(server: InprocServer, alice: User) -> None:
    # Its root has no name of its own: the zip was named after whoever downloaded it.
    group = f"team{uuid.uuid4().hex[:6]}"
    server.application.services.groups.create_group(None, group)
    server.application.services.groups.add_member(None, group, alice.name)
    alice.put(f"/groups/{group}/plan.txt", b"plan\n")
    response = alice.call("GET", f"/groups/{group}/?zip")
    assert response.status == 200
    assert f'filename="{group}.zip"' in response.headers["Content-Disposition"]
    names = zipfile.ZipFile(io.BytesIO(response.body)).namelist()
    assert names == [f"{group}/plan.txt", MANIFEST_NAME]
    home = alice.call("GET", "/files/?zip")  # a home's root: its owner's name, as before
    assert f'filename="{alice.name}.zip"' in home.headers["Content-Disposition"]
    # ... also for an admin: the zip of alice's space was named after the admin.
    alice.put("/files/own.txt", b"alice's")
    admin = User(server, f"admin{uuid.uuid4().hex[:6]}", roles=["admin", "user"])
    theirs = admin.call("GET", f"/users/{alice.name}/?zip")
    assert theirs.status == 200
    assert f'filename="{alice.name}.zip"' in theirs.headers["Content-Disposition"]
    names = zipfile.ZipFile(io.BytesIO(theirs.body)).namelist()
    assert names == [f"{alice.name}/own.txt", MANIFEST_NAME]


def test_a_folder_named_as_the_manifest_zips_beside_it(alice: User) -> None:
    # The folder is the zip's top, where the manifest lies too: the zip was a 400 "in the
    # archive twice".
    alice.mkcol("/files/.DavServer-Manifest.json/")
    alice.put("/files/.DavServer-Manifest.json/in.txt", b"inside")
    response = alice.call("GET", "/files/.DavServer-Manifest.json/?zip")
    assert response.status == 200, response.body[:300]
    names = zipfile.ZipFile(io.BytesIO(response.body)).namelist()
    assert names == ["_.DavServer-Manifest.json/in.txt", MANIFEST_NAME]
    # Pinned into a package under that name, it made a package whose zip failed for good.
    alice.mkcol("/packages/manifested/")
    pinned = alice.copy(
        "/files/.DavServer-Manifest.json/", "/packages/manifested/.davserver-manifest.JSON/"
    )
    assert pinned.status == 400 and b"manifest" in pinned.body
    assert alice.call("GET", "/packages/manifested.zip").status == 200


def test_a_shared_folder_zips_only_with_the_download_right(server: InprocServer) -> None:
    alice, bob = (
        User(server, f"alice{uuid.uuid4().hex[:6]}"),
        User(server, f"bob{uuid.uuid4().hex[:6]}"),
    )
    make_tree(alice)
    grant = {"path": "/files/docs", "user": bob.name, "rights": ["read"]}
    assert alice.api("POST", "/grants", grant)[0] == 201
    assert bob.call("GET", f"/shared/{alice.name}/docs/?zip").status == 403
    assert alice.api("POST", "/grants", {**grant, "rights": ["read", "download"]})[0] == 201
    shared = bob.call("GET", f"/shared/{alice.name}/docs/?zip")
    assert shared.status == 200
    assert "docs/sub/deeper/d.txt" in zipfile.ZipFile(io.BytesIO(shared.body)).namelist()


# -- expiry


def test_an_expired_package_is_gone(server: InprocServer, alice: User) -> None:
    pinned_package(alice, "old")
    assert alice.call("GET", "/packages/old.zip").status == 200
    with server.application.db.write() as session:
        session.execute(
            sa.update(Package)
            .where(Package.created_by == alice.id, Package.name == "old")
            .values(expires_at=utcnow() - dt.timedelta(seconds=1))
        )
    for path in ("/packages/old.zip", "/packages/old/", "/packages/old/a.txt"):
        assert alice.call("GET", path).status == 404, path
    assert alice.call("HEAD", "/packages/old.zip").status == 404
    listing = alice.call("PROPFIND", "/packages/", headers={"Depth": "1"})
    assert b"old" not in listing.body
    assert alice.api("GET", "/packages/old")[0] == 404
    assert alice.api("GET", "/packages")[1] == {"packages": []}
    # Its name is free again: a new package of that name replaces the expired one.
    assert alice.call("MKCOL", "/packages/old/").status == 201
    assert alice.api("GET", "/packages/old")[1]["items"] == 0


# -- names that would escape on extraction


@pytest.mark.parametrize(
    "dest",
    [
        "..\\..\\evil.txt",  # backslashes
        "C:evil.txt",  # a drive letter
        "...",  # only dots: Windows trims it to ".."
        "tab\there.txt",  # a control character
        "nul\x00.txt",
        "A.TXT",  # a.txt is there already: the same file on Windows and macOS
        MANIFEST_NAME,
    ],
)
def test_copy_with_unsafe_names_is_refused(alice: User, dest: str) -> None:
    alice.put("/files/a.txt", b"alpha")
    if alice.call("PROPFIND", "/packages/slip/", headers={"Depth": "0"}).status == 404:
        alice.mkcol("/packages/slip/")
        assert alice.copy("/files/a.txt", "/packages/slip/a.txt").status == 201
    response = alice.copy("/files/a.txt", f"/packages/slip/{dest}")
    assert response.status == 400, response.body
    names = zipfile.ZipFile(io.BytesIO(alice.call("GET", "/packages/slip.zip").body)).namelist()
    assert names == ["a.txt", MANIFEST_NAME]


def test_copy_of_a_folder_with_an_unsafe_name_inside_is_refused(alice: User) -> None:
    alice.mkcol("/files/mixed/")
    alice.put("/files/mixed/fine.txt", b"ok")
    alice.put("/files/mixed/back\\slash.txt", b"bad")
    alice.mkcol("/packages/whole/")
    response = alice.copy("/files/mixed", "/packages/whole/mixed")
    assert response.status == 400
    assert b"slash.txt" in response.body and b"separate folders with" in response.body
    assert alice.api("GET", "/packages/whole")[1]["items"] == 0


# -- MOVE within a package, and renaming one


def zip_contents(user: User, name: str) -> dict[str, bytes]:
    """The files of the package's zip by name, the manifest left out."""
    response = user.call("GET", f"/packages/{name}.zip")
    assert response.status == 200, response.body
    archive = zipfile.ZipFile(io.BytesIO(response.body))
    return {n: archive.read(n) for n in archive.namelist() if n != MANIFEST_NAME}


def test_move_renames_and_moves_items_within_their_package(alice: User) -> None:
    contents = pinned_package(alice, "moving")
    assert alice.move("/packages/moving/a.txt", "/packages/moving/docs/alpha.txt").status == 201
    assert alice.move("/packages/moving/docs/sub/", "/packages/moving/parts/").status == 201
    assert alice.move("/packages/moving/résumé.txt", "/packages/moving/cv.txt").status == 201
    assert alice.move("/packages/moving/cv.txt", "/packages/moving/CV.txt").status == 201  # case
    expected = {
        "docs/alpha.txt": contents["a.txt"],
        "CV.txt": contents["résumé.txt"],
        "docs/big.bin": contents["docs/big.bin"],
        "parts/c.txt": contents["docs/sub/c.txt"],
        "parts/deeper/d.txt": contents["docs/sub/deeper/d.txt"],
    }
    assert zip_contents(alice, "moving") == expected
    assert alice.call("GET", "/packages/moving/docs/alpha.txt").body == contents["a.txt"]
    assert alice.call("GET", "/packages/moving/parts/deeper/d.txt").body == b"deep\n"
    for gone in ("a.txt", "résumé.txt", "docs/sub/", "docs/sub/c.txt"):
        assert alice.call("GET", f"/packages/moving/{gone}").status == 404, gone
    listing = alice.call("PROPFIND", "/packages/moving/", headers={"Depth": "1"}).body
    assert b"/packages/moving/parts/" in listing and b"/packages/moving/docs/sub" not in listing
    # The files themselves are untouched.
    assert alice.call("GET", "/files/a.txt").body == contents["a.txt"]
    assert alice.call("GET", "/files/docs/sub/c.txt").status == 200


def test_move_onto_an_item_needs_overwrite_and_replaces_it(alice: User) -> None:
    contents = pinned_package(alice, "onto")
    before = zip_contents(alice, "onto")
    stopped = alice.move("/packages/onto/a.txt", "/packages/onto/résumé.txt", Overwrite="F")
    assert stopped.status == 412
    assert zip_contents(alice, "onto") == before
    assert alice.move("/packages/onto/a.txt", "/packages/onto/résumé.txt").status == 204
    after = zip_contents(alice, "onto")
    assert after["résumé.txt"] == contents["a.txt"] and "a.txt" not in after
    assert len(after) == len(before) - 1
    # A folder onto a folder: what was below the target goes, the moved items take its place.
    assert alice.move("/packages/onto/docs/sub/deeper/", "/packages/onto/docs/sub/").status == 204
    assert sorted(zip_contents(alice, "onto")) == ["docs/big.bin", "docs/sub/d.txt", "résumé.txt"]


def test_move_refusals_change_nothing(server: InprocServer, alice: User) -> None:
    pinned_package(alice, "fixed")
    alice.mkcol("/packages/other/")
    before = zip_contents(alice, "fixed")
    refused = [  # (what, source, destination, status)
        ("to another package", "/packages/fixed/a.txt", "/packages/other/a.txt", 403),
        ("a folder to /files/", "/packages/fixed/docs/", "/files/docs2/", 403),
        (
            "to the manifest's name",
            "/packages/fixed/a.txt",
            f"/packages/fixed/{MANIFEST_NAME}",
            400,
        ),
        (
            "onto a name taken but for case",
            "/packages/fixed/a.txt",
            "/packages/fixed/RÉSUMÉ.txt",
            400,
        ),
        ("a file onto a folder's path", "/packages/fixed/a.txt", "/packages/fixed/DOCS", 400),
        ("into a missing folder", "/packages/fixed/a.txt", "/packages/fixed/none/a.txt", 409),
        ("a folder into itself", "/packages/fixed/docs/", "/packages/fixed/docs/sub/docs/", 403),
        ("the zip", "/packages/fixed.zip", "/packages/renamed.zip", 403),
        ("a package into a package", "/packages/fixed/", "/packages/other/x/", 403),
        ("a sub-folder out to /packages/", "/packages/fixed/docs/", "/packages/d/", 403),
    ]
    statuses = {what: alice.move(source, dest).status for what, source, dest, _ in refused}
    assert statuses == {what: status for what, _, _, status in refused}
    assert zip_contents(alice, "fixed") == before
    other = User(server, f"bob{uuid.uuid4().hex[:6]}")
    assert other.move("/packages/fixed/a.txt", "/packages/fixed/b.txt").status == 404


def test_refusals_to_take_items_out_of_a_package_say_what_to_do(alice: User) -> None:
    """A package's items neither move nor copy out of it. The MOVE's 403 said "COPY them
    elsewhere", which is refused too; the COPY's explained how to change a package."""
    pinned_package(alice, "kept")
    moved = alice.move("/packages/kept/a.txt", "/files/out.txt")
    assert moved.status == 403 and b"COPY" not in moved.body, moved.body
    for source in ("/packages/kept/a.txt", "/packages/kept/docs/"):
        copied = alice.copy(source, "/files/out")
        assert copied.status == 403 and b"not copied out" in copied.body, copied.body
    assert alice.call("GET", "/files/out").status == 404


def test_move_renames_a_package(server: InprocServer, alice: User) -> None:
    pinned_package(alice, "draft")
    files = zip_contents(alice, "draft")
    alice.mkcol("/packages/taken/")
    assert alice.move("/packages/draft/", "/packages/taken/", Overwrite="F").status == 412
    assert alice.move("/packages/draft/", "/packages/taken/").status == 409
    assert alice.move("/packages/draft/", "/packages/final.zip/").status == 400
    assert alice.move("/packages/draft/", "/packages/final/").status == 201
    assert alice.call("GET", "/packages/draft.zip").status == 404
    assert alice.call("GET", "/packages/draft/a.txt").status == 404
    assert zip_contents(alice, "final") == files
    renamed = alice.call("GET", "/packages/final.zip")
    assert "final.zip" in renamed.headers["Content-Disposition"]
    manifest = zipfile.ZipFile(io.BytesIO(renamed.body)).read(MANIFEST_NAME)
    assert json.loads(manifest)["package"] == "final"
    with server.application.db.connect() as conn:
        row = conn.execute(
            sa.select(LogEntry.__table__)
            .where(LogEntry.user_id == alice.id, LogEntry.op_type == "package:update")
            .order_by(LogEntry.id.desc())
        ).first()
    assert row is not None
    assert (row.details["before"], row.details["after"]) == ({"name": "draft"}, {"name": "final"})


@pytest.mark.parametrize("ways", [("PATCH", "PATCH"), ("MOVE", "MOVE"), ("PATCH", "MOVE")])
def test_two_packages_renamed_to_one_name_at_once_leave_one_and_a_409(
    alice: User, ways: tuple[str, str]
) -> None:
    """PostgreSQL: each rename found the name free, and the one that committed second met the
    unique index: a 500 with an IntegrityError, where a rename onto a taken name says 409."""

    def rename(way: str, old: str, new: str) -> int:
        barrier.wait()
        if way == "PATCH":
            return alice.api("PATCH", f"/packages/{old}", {"name": new})[0]
        return alice.move(f"/packages/{old}/", f"/packages/{new}/").status

    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        for round_no in range(6):
            barrier = threading.Barrier(2)
            olds = [f"r{round_no}-{side}" for side in "ab"]
            for old in olds:
                assert alice.api("POST", "/packages", {"name": old})[0] == 201
            statuses = list(pool.map(rename, ways, olds, [f"r{round_no}-new"] * 2))
            won = [s == {"PATCH": 200, "MOVE": 201}[w] for w, s in zip(ways, statuses, strict=True)]
            assert sorted(won) == [False, True] and 409 in statuses, statuses
            names = {p["name"] for p in alice.api("GET", "/packages")[1]["packages"]}
            assert f"r{round_no}-new" in names and len(names & set(olds)) == 1, names


# -- what WebDAV refuses in /packages/


def test_webdav_refusals(server: InprocServer, alice: User) -> None:
    pinned_package(alice, "strict")
    other = User(server, f"bob{uuid.uuid4().hex[:6]}")
    assert other.call("GET", "/packages/strict.zip").status == 404  # packages are private
    assert (
        other.call("PROPFIND", "/packages/", headers={"Depth": "1"}).body.count(b"<D:response>")
        == 1
    )
    refused = {
        "PUT into a package": alice.call("PUT", "/packages/strict/new.txt", b"x"),
        "PUT onto an item": alice.call("PUT", "/packages/strict/a.txt", b"x"),
        "PUT into /packages/": alice.call("PUT", "/packages/loose.txt", b"x"),
        "MKCOL in a package": alice.call("MKCOL", "/packages/strict/sub/"),
        "PROPPATCH": alice.call("PROPPATCH", "/packages/strict/a.txt", PROPPATCH_MTIME),
        "LOCK": alice.call("LOCK", "/packages/strict/a.txt", LOCK),
        "DELETE the zip": alice.call("DELETE", "/packages/strict.zip"),
        "DELETE /packages/": alice.call("DELETE", "/packages/"),
        "MOVE into a package": alice.call(
            "MOVE", "/files/a.txt", headers={"Destination": server.url + "/packages/strict/m"}
        ),
        "MOVE out of a package": alice.call(
            "MOVE", "/packages/strict/a.txt", headers={"Destination": server.url + "/files/m"}
        ),
        "COPY into /packages/": alice.copy("/files/a.txt", "/packages/a.txt"),
    }
    assert {what: r.status for what, r in refused.items()} == dict.fromkeys(refused, 403)
    assert alice.call("MKCOL", "/packages/strict/").status == 405
    assert alice.call("MKCOL", "/packages/bad.zip/").status == 400
    assert alice.copy("/files/docs", "/packages/nowhere/docs").status == 409


def test_viewers_and_read_only_keys_cannot_change_packages(server: InprocServer) -> None:
    viewer = User(server, f"viewer{uuid.uuid4().hex[:6]}", roles=["viewer"])
    assert viewer.call("MKCOL", "/packages/mine/").status == 403
    assert viewer.api("POST", "/packages", {"name": "mine"})[0] == 403


# -- what OPTIONS (and a 405) offers


READING = {"OPTIONS", "GET", "HEAD", "PROPFIND"}


def test_options_lists_only_what_each_virtual_item_accepts(alice: User) -> None:
    """OPTIONS (and every 405's Allow) listed PUT, DELETE, MOVE, PROPPATCH and LOCK for items
    that refuse each with a 403: WsgiDAV builds the list for the provider, not the item."""
    pinned_package(alice, "offered")
    alice.put("/files/history.txt", b"one")
    alice.put("/files/history.txt", b"two")
    alice.put("/files/binned.txt", b"gone")
    assert alice.call("DELETE", "/files/binned.txt").status == 204
    listing = alice.call("PROPFIND", "/trash/", headers={"Depth": "1"}).body.decode()
    binned = next(
        href for href in re.findall(r"<D:href>([^<]*)</D:href>", listing) if "binned" in href
    )
    expected = {
        "/": READING,
        "/shared/": READING,
        "/packages/": READING,
        "/packages/offered.zip": READING,
        "/packages/offered/": READING | {"DELETE", "MOVE"},
        "/packages/offered/a.txt": READING | {"DELETE", "MOVE"},
        "/versions/files/history.txt/": READING,
        "/versions/files/history.txt/history.v1.txt": READING | {"COPY"},
        "/trash/": READING,
        urllib.parse.unquote(binned): READING | {"DELETE", "MOVE"},
    }
    offered = {
        path: set(alice.call("OPTIONS", path).headers["Allow"].split(", ")) for path in expected
    }
    assert offered == expected
    # What a real file offers is unchanged.
    own = set(alice.call("OPTIONS", "/files/history.txt").headers["Allow"].split(", "))
    assert {"PUT", "DELETE", "MOVE", "COPY", "PROPPATCH", "LOCK", "UNLOCK"} <= own
