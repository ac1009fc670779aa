"""A disk with no room left: a change gets 507 Insufficient Storage, and loses nothing.

The blob folder, or the SQLite database, is on a small tmpfs, so the disk really fills up
(ENOSPC from write(2), SQLITE_FULL from SQLite; not mocks). Mounting needs root and the right
to mount; where that is missing the test skips with the reason, also under CI (as the davfs2
test does): many CI machines cannot mount at all.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.conftest import ENGINES
from tests.integration.test_dav_http import existing_node, version_numbers
from tests.integration.test_packages_http import User
from tests.servers import InprocServer, Response, run_inproc_server

SIZE = "1m"


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A folder on a 1 MiB file system of its own (``grow`` gives it more room)."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    folder = tmp_path / "small"
    folder.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={SIZE}", "tmpfs", str(folder)],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)


@pytest.fixture(params=ENGINES)
def server(
    request: pytest.FixtureRequest, tmp_path: Path, small_disk: Path
) -> Iterator[InprocServer]:
    blob_dir = str(small_disk / "blobs")
    with run_inproc_server(request.param, tmp_path, storage__blob_dir=blob_dir) as srv:
        yield srv


def test_an_upload_that_does_not_fit_on_the_disk_is_507_and_loses_nothing(
    server: InprocServer, small_disk: Path
) -> None:
    folder = server.fresh_dir("full")
    first = os.urandom(300 * 1024)
    assert server.request("PUT", f"{folder}doc.bin", body=first).status == 201

    too_big = os.urandom(2 * 1024 * 1024)
    refused = server.request("PUT", f"{folder}doc.bin", body=too_big)
    assert refused.status == 507, refused.body[:300]
    assert b"storage is full" in refused.body

    # The file is still the first upload, with one version; no partial bytes are left.
    got = server.request("GET", f"{folder}doc.bin")
    assert (got.status, got.body) == (200, first)
    assert version_numbers(server.application, existing_node(server, f"{folder}doc.bin").id) == [1]
    assert list((small_disk / "blobs" / "tmp").iterdir()) == []

    # A new file that does not fit is not created at all.
    new = server.request("PUT", f"{folder}new.bin", body=too_big)
    assert new.status == 507
    assert server.request("HEAD", f"{folder}new.bin").status == 404

    # Once there is room again, uploads work.
    small = os.urandom(10 * 1024)
    assert server.request("PUT", f"{folder}small.bin", body=small).status == 201
    assert server.request("GET", f"{folder}small.bin").body == small


def test_a_blob_store_that_cannot_be_written_is_503_and_loses_nothing(
    server: InprocServer, small_disk: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The blob folder remounted read-only (a disk error does that, or an operator): an upload
    was a bare 500 with a traceback in the log. It is a 503 saying why, with Retry-After, and
    a warning for the operator; the file keeps its content, and uploads work once the folder
    can be written again."""
    folder = server.fresh_dir("ro")
    first = os.urandom(10 * 1024)
    assert server.request("PUT", f"{folder}doc.bin", body=first).status == 201
    subprocess.run(["mount", "-o", "remount,ro", str(small_disk)], check=True)
    try:
        caplog.clear()
        refused = server.request("PUT", f"{folder}doc.bin", body=os.urandom(1024))
        assert refused.status == 503, refused.body[:300]
        assert b"cannot be written" in refused.body and "Retry-After" in refused.headers
        assert "the blob store cannot be written" in caplog.text
        assert not [r for r in caplog.records if r.exc_info], caplog.text
        assert server.request("GET", f"{folder}doc.bin").body == first
    finally:
        subprocess.run(["mount", "-o", "remount,rw", str(small_disk)], check=True)
    assert version_numbers(server.application, existing_node(server, f"{folder}doc.bin").id) == [1]
    assert server.request("PUT", f"{folder}doc.bin", body=b"later").status == 204
    assert server.request("GET", f"{folder}doc.bin").body == b"later"


def grow(disk: Path, size: str) -> None:
    subprocess.run(["mount", "-o", f"remount,size={size}", str(disk)], check=True)


PROPPATCH = (
    '<?xml version="1.0"?><d:propertyupdate xmlns:d="DAV:" xmlns:x="urn:x-fill">'
    "<d:set><d:prop><x:p{n}>{value}</x:p{n}></d:prop></d:set></d:propertyupdate>"
)


LOCKINFO = (
    b'<?xml version="1.0"?><d:lockinfo xmlns:d="DAV:"><d:lockscope><d:shared/></d:lockscope>'
    b"<d:locktype><d:write/></d:locktype><d:owner>filler</d:owner></d:lockinfo>"
)


def first_refusal(attempt: Callable[[int], Response], done: int) -> tuple[int, Response]:
    """Run ``attempt(0)``, ``attempt(1)``... until one does not answer ``done``; that one.

    A database that filled its disk still takes small writes for a while: SQLite reuses the
    room its write-ahead log already holds. What matters is how it says no when it does."""
    for n in range(500):
        answer = attempt(n)
        if answer.status != done:
            return n, answer
    pytest.fail(f"still {done} after 500 attempts on a full disk")


def test_a_full_database_disk_refuses_changes_with_507_and_still_serves_reads(
    tmp_path: Path, small_disk: Path
) -> None:
    blob_dir = str(tmp_path / "blobs")  # the bytes have room: only the database is short
    grow(small_disk, "4m")  # the schema, the users, then dead properties fill it
    with run_inproc_server("sqlite", small_disk, storage__blob_dir=blob_dir) as server:
        folder = server.fresh_dir("dbfull")
        assert server.request("PUT", f"{folder}kept.txt", body=b"kept").status == 201
        assert server.request("MKCOL", "/packages/kept/").status == 201
        destination = {"Destination": server.url + "/packages/kept/kept.txt"}
        assert server.request("COPY", f"{folder}kept.txt", headers=destination).status == 201
        # They sign in for the first time once the disk is full.
        newcomers = [User(server, f"newcomer{n}") for n in range(20)]
        # Fill the database's disk with dead properties of 64 KiB each.
        for n in range(100):
            body = PROPPATCH.format(n=n, value="v" * 65536).encode()
            answer = server.request("PROPPATCH", folder, body=body)
            assert answer.status == 207
            if b"HTTP/1.1 200" not in answer.body:
                break
        else:
            pytest.fail("the database's 1 MiB disk never filled up")
        assert b"HTTP/1.1 507 Insufficient Storage" in answer.body, answer.body[-300:]

        n, put = first_refusal(
            lambda n: server.request("PUT", f"{folder}new{n}.txt", body=b"new bytes"), 201
        )
        assert put.status == 507, put.body[:300]
        assert b"storage is full" in put.body
        assert server.request("HEAD", f"{folder}new{n}.txt").status == 404  # nothing half done
        _, mkcol = first_refusal(lambda n: server.request("MKCOL", f"{folder}sub{n}/"), 201)
        assert mkcol.status == 507
        _, lock = first_refusal(
            lambda n: server.request(
                "LOCK", f"{folder}kept.txt", body=LOCKINFO, headers={"Timeout": "Second-60"}
            ),
            200,
        )
        assert lock.status == 507, lock.body[:300]
        # A first sign-in is recorded (the logbook): it waits for room too, 507 and not 500.
        _, login = first_refusal(
            lambda n: newcomers[n].call("PROPFIND", "/files/", headers={"Depth": "0"}), 207
        )
        assert (login.status, login.body) == (507, b"The server is full\n")
        # Reading goes on: a file, a package's zip and a folder's (their logbook rows wait).
        got = server.request("GET", f"{folder}kept.txt")
        assert (got.status, got.body) == (200, b"kept")
        for _ in range(3):
            assert server.request("GET", "/packages/kept.zip").status == 200
            zipped = server.request("GET", folder, headers={"Accept": "application/zip"})
            assert zipped.status == 200
        assert server.request("PROPFIND", folder, headers={"Depth": "1"}).status == 207

        grow(small_disk, "16m")
        assert server.request("PUT", f"{folder}new{n}.txt", body=b"new bytes").status == 201
        assert server.request("GET", f"{folder}new{n}.txt").body == b"new bytes"
        for newcomer in newcomers:
            assert newcomer.call("PROPFIND", "/files/", headers={"Depth": "0"}).status == 207
