"""A running server with its blobs in an S3 store, end to end over HTTP: DESIGN's production
deployment (on PostgreSQL with two worker processes) and the embedded database beside S3."""

from __future__ import annotations

import hashlib
import io
import json
import os
import socket
import subprocess
import sys
import time
import uuid
import zipfile
from pathlib import Path

from davserver.blobstore.s3_client import make_client
from tests.images import jpeg
from tests.s3 import location, run_s3_endpoint, server_env
from tests.servers import LiveServer, basic_auth_header, http_request, run_live_server
from tests.webdav import DS, User, url_path


def objects(endpoint: str, bucket: str) -> dict[str, int]:
    """Every object in the bucket: key -> size."""
    client = make_client(location(endpoint, bucket))
    found: dict[str, int] = {}
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        for item in page.get("Contents", []):
            found[item["Key"]] = int(item["Size"])
    return found


def key_of(data: bytes) -> str:
    sha256 = hashlib.sha256(data).hexdigest()
    return f"{sha256[:2]}/{sha256}"


def staged_files(srv: LiveServer) -> list[str]:
    """Uploads waiting in the local staging folder."""
    return sorted(p.name for p in (srv.data_dir / "blobs" / "tmp").iterdir())


def signed_in(srv: LiveServer, prefix: str) -> tuple[User, str]:
    """The server's test user, and the path of a fresh folder of theirs (``/files/...``)."""
    user = User(srv, srv.user, srv.password)  # type: ignore[arg-type]
    return user, srv.fresh_dir(prefix).removeprefix(srv.url)


def test_bytes_go_to_the_bucket_once_and_come_back_whole(
    s3_live_server: LiveServer, s3_endpoint: str
) -> None:
    srv = s3_live_server
    user, folder = signed_in(srv, "s3")
    data = os.urandom(3 * 1024 * 1024 + 5)
    assert user.put(f"{folder}big.bin", data) == 201
    assert objects(s3_endpoint, srv.s3_bucket)[key_of(data)] == len(data)

    assert user.get(f"{folder}big.bin") == data
    ranged = user("GET", f"{folder}big.bin", headers={"Range": "bytes=1000000-1000999"})
    assert ranged.status == 206 and ranged.body == data[1_000_000:1_001_000]
    tail = user("GET", f"{folder}big.bin", headers={"Range": "bytes=-10"})
    assert tail.status == 206 and tail.body == data[-10:]
    head = user("HEAD", f"{folder}big.bin")
    assert head.status == 200 and int(head.headers["Content-Length"]) == len(data)

    # The same bytes again, and a copy of the folder: no new object.
    before = objects(s3_endpoint, srv.s3_bucket)
    assert user.put(f"{folder}again.bin", data) == 201
    copy = user("COPY", folder, None, user.destination(folder.rstrip("/") + "-copy/"))
    assert copy.status == 201
    assert objects(s3_endpoint, srv.s3_bucket) == before
    assert user.get(folder.rstrip("/") + "-copy/big.bin") == data
    assert staged_files(srv) == []


def test_older_versions_are_read_from_the_bucket(s3_live_server: LiveServer) -> None:
    srv = s3_live_server
    user, folder = signed_in(srv, "s3v")
    first, second = os.urandom(100_000), os.urandom(50_000)
    assert user.put(f"{folder}doc.bin", first) == 201
    assert user.put(f"{folder}doc.bin", second) == 204
    assert user.get(f"{folder}doc.bin") == second
    assert user.get(f"{folder}doc.bin?version=1") == first


def test_a_cut_off_upload_leaves_nothing_behind(
    s3_live_server: LiveServer, s3_endpoint: str
) -> None:
    srv = s3_live_server
    user, folder = signed_in(srv, "s3cut")
    assert user.put(f"{folder}keep.bin", b"the version that stays") == 201
    before = objects(s3_endpoint, srv.s3_bucket)
    head = (
        f"PUT {url_path(folder)}keep.bin HTTP/1.1\r\nHost: x\r\n"
        f"Authorization: {basic_auth_header(srv.user, srv.password)}\r\n"
        "Content-Length: 1000000\r\n\r\n"
    )
    with socket.create_connection(("127.0.0.1", srv.port)) as sock:
        sock.sendall(head.encode() + os.urandom(300_000))  # then the connection drops
    deadline = time.monotonic() + 10
    while staged_files(srv) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert staged_files(srv) == []
    assert objects(s3_endpoint, srv.s3_bucket) == before
    assert user.get(f"{folder}keep.bin") == b"the version that stays"


def test_thumbnails_are_made_from_blobs_in_the_bucket(s3_live_server: LiveServer) -> None:
    srv = s3_live_server
    user, folder = signed_in(srv, "s3img")
    assert user.put(f"{folder}photo.jpg", jpeg(640, 480)) == 201
    thumb = user("GET", f"{folder}photo.jpg?thumbnail=64")
    assert thumb.status == 200, thumb.body[:300]
    assert thumb.headers["Content-Type"].startswith("image/")
    assert 0 < len(thumb.body) < 20_000


def test_a_package_zips_versions_read_from_the_bucket(s3_live_server: LiveServer) -> None:
    srv = s3_live_server
    user, folder = signed_in(srv, "s3zip")
    contents = {"a.bin": os.urandom(300_000), "b.txt": b"small"}
    for name, data in contents.items():
        assert user.put(f"{folder}{name}", data) == 201
    package = f"s3zip-{uuid.uuid4().hex[:8]}"
    assert user("MKCOL", f"/packages/{package}/").status == 201
    for name in contents:
        copy = user(
            "COPY", f"{folder}{name}", None, user.destination(f"/packages/{package}/{name}")
        )
        assert copy.status == 201
    whole = user("GET", f"/packages/{package}.zip")
    assert whole.status == 200
    archive = zipfile.ZipFile(io.BytesIO(whole.body))
    assert archive.testzip() is None
    for name, data in contents.items():
        assert archive.read(name) == data
    part = user("GET", f"/packages/{package}.zip", headers={"Range": "bytes=100-200099"})
    assert part.status == 206 and part.body == whole.body[100:200100]


def test_gc_removes_purged_bytes_from_the_bucket_and_fsck_finds_it_whole(
    s3_live_server: LiveServer, s3_endpoint: str
) -> None:
    """gc takes the purged file's object out of the bucket; fsck then re-hashes what is left
    (this test's own kept files at least, whatever earlier tests stored) and finds it whole."""
    srv = s3_live_server
    user, folder = signed_in(srv, "s3gc")
    kept = [os.urandom(3_000 + i) for i in range(3)]
    for i, body in enumerate(kept):
        assert user.put(f"{folder}kept-{i}.bin", body) == 201
    data = os.urandom(20_000)
    assert user.put(f"{folder}gone.bin", data) == 201
    assert user("DELETE", f"{folder}gone.bin").status == 204
    trashed = [
        path
        for path, props in user.propfind("/trash/").items()
        if props.get(DS + "original-path") == f"{folder}gone.bin"
    ]
    assert len(trashed) == 1, trashed
    assert user("DELETE", trashed[0]).status == 204
    assert key_of(data) in objects(s3_endpoint, srv.s3_bucket)

    gc = davserver_cli(srv, s3_endpoint, "gc", "--grace", "0", "--json")
    assert gc["blobs_removed"] >= 1, gc
    left = objects(s3_endpoint, srv.s3_bucket)
    assert key_of(data) not in left
    assert all(key_of(body) in left for body in kept)
    fsck = davserver_cli(srv, s3_endpoint, "fsck", "--json")
    assert fsck["ok"] and fsck["blobs_checked"] >= 3 and fsck["files_scanned"] >= 3, fsck


def davserver_cli(srv: LiveServer, endpoint: str, *argv: str) -> dict[str, object]:
    """Run a ``davserver`` command on the server's database and bucket; its JSON output."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DAVSERVER_")}
    env.update(
        server_env(endpoint, srv.s3_bucket),
        DAVSERVER_DATABASE_URL=srv.db_url,
        DAVSERVER_DATA_DIR=str(srv.data_dir),
    )
    done = subprocess.run(
        [sys.executable, "-m", "davserver", "--config", os.devnull, *argv, "--quiet"],
        env=env,
        capture_output=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr.decode(errors="replace")
    result: dict[str, object] = json.loads(done.stdout)
    return result


def test_a_store_that_stops_answering_is_503_and_loses_nothing(
    s3_kind: str, tmp_path: Path
) -> None:
    with run_s3_endpoint(tmp_path, s3_kind) as endpoint:  # its own: this test stops it
        make_client(location(endpoint.url, "photos")).create_bucket(Bucket="photos")
        env = server_env(endpoint.url, "photos")
        with run_live_server("sqlite", tmp_path, env) as srv:
            user = User(srv, srv.user, srv.password)  # type: ignore[arg-type]
            assert user.put("/files/kept.txt", b"stored while the store answered") == 201
            endpoint.stop()
            logged = srv.stderr_size()

            put = user("PUT", "/files/kept.txt", b"a version the store never got")
            assert put.status == 503, put.body[:300]
            assert "Retry-After" in put.headers
            get = user("GET", "/files/kept.txt")
            assert get.status == 503, get.body[:300]
            # The client is told what failed, not where the store is (its internal URL, the
            # object's key); the operator finds that in the log, which had nothing.
            host_port = endpoint.url.removeprefix("http://").encode()
            for answer in (put, get):
                assert b"not answering" in answer.body and host_port not in answer.body
            assert endpoint.url in srv.stderr_text(logged)
            assert user("PROPFIND", "/files/", headers={"Depth": "1"}).status == 207
            assert len(user.members("/versions/files/kept.txt/")) == 1
            health = http_request("GET", srv.url + "/api/v1/health")
            assert health.status == 503
            assert json.loads(health.body)["blob_store"] == "failing"
            assert staged_files(srv) == []


def test_a_bucket_deleted_at_run_time_is_503_with_one_warning(
    s3_endpoint: str, tmp_path: Path
) -> None:
    """The store refusing the server (here: its bucket is gone) is for the operator to fix:
    the client gets a 503 naming the problem in one line, the log one warning per request
    and no traceback, as for a store that does not answer."""
    bucket = f"davserver-{uuid.uuid4().hex[:12]}"
    admin = make_client(location(s3_endpoint, bucket))
    admin.create_bucket(Bucket=bucket)
    with run_live_server("sqlite", tmp_path, server_env(s3_endpoint, bucket)) as srv:
        user = User(srv, srv.user, srv.password)  # type: ignore[arg-type]
        assert user.put("/files/kept.txt", b"stored while the bucket was there") == 201
        for key in objects(s3_endpoint, bucket):
            admin.delete_object(Bucket=bucket, Key=key)
        admin.delete_bucket(Bucket=bucket)
        logged = srv.stderr_size()
        get = user("GET", "/files/kept.txt")
        assert get.status == 503, get.body[:300]
        assert "Retry-After" in get.headers
        assert b"the bucket no longer exists" in get.body
        log = srv.stderr_text(logged)
        assert "Traceback" not in log
        warnings = [line for line in log.splitlines() if "WARNING" in line]
        assert len(warnings) == 1 and bucket in warnings[0], log


def test_a_backup_of_blobs_in_s3_holds_them_under_their_keys(
    s3_endpoint: str, s3_bucket: str, tmp_path: Path
) -> None:
    """``davserver backup`` reads the blobs from the bucket into BACKUP/blobs/<storage key>:
    the bucket's keys are the store's prefix and those same keys, so the folder is both a
    file-system store and what to put back into a bucket."""
    with run_live_server("sqlite", tmp_path / "live", server_env(s3_endpoint, s3_bucket)) as srv:
        srv.s3_bucket = s3_bucket
        user = User(srv, srv.user, srv.password)  # type: ignore[arg-type]
        kept = [os.urandom(70_000 + i) for i in range(3)]  # past the single-request size too
        for i, body in enumerate(kept):
            assert user.put(f"/files/kept-{i}.bin", body) == 201
        folder = tmp_path / "backup"
        report = davserver_cli(srv, s3_endpoint, "backup", str(folder), "--json")
    assert report["ok"] and report["blobs"] == report["blobs_copied"] == 3, report
    for body in kept:
        assert (folder / "blobs" / key_of(body)).read_bytes() == body
