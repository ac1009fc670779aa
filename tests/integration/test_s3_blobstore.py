"""The S3 blob store against a real S3 endpoint over HTTP, and the blob store contract that the
file-system store and it both keep (what the services and gc rely on)."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import logging
import os
import secrets
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from davserver.blobstore import FileSystemBlobStore, MaintainableBlobStore, StoredBlob
from davserver.blobstore import s3 as s3_module
from davserver.blobstore.base import OWNER_KEY
from davserver.blobstore.s3 import S3BlobStore
from davserver.blobstore.s3_client import make_client
from davserver.config import ConfigError, load_settings
from davserver.context import open_blob_store
from davserver.errors import ChecksumMismatch, Unavailable
from davserver.services.store_owner import store_owner
from tests.s3 import STORES as S3_STORES
from tests.s3 import S3Endpoints, fresh_bucket, location, server_env, silent_endpoint


def _write(
    store: MaintainableBlobStore, data: bytes, *, place: bool = True, **expect: str
) -> StoredBlob:
    """A finished write of ``data``; with ``place``, its bytes put in place as the services do
    once a row is to reference them (the S3 store sends them only then)."""
    writer = store.writer()
    for start in range(0, len(data), 64 * 1024):
        writer.write(data[start : start + 64 * 1024])
    blob = writer.finish(expect or None)
    if place:
        store.ensure_stored(blob)
    return blob


def _keys(store: MaintainableBlobStore) -> list[str]:
    return [f.key for f in store.iter_files()]


@pytest.fixture
def s3_store(s3_endpoint: str, s3_bucket: str, tmp_path: Path) -> S3BlobStore:
    return S3BlobStore(location(s3_endpoint, s3_bucket, "blobs/"), tmp_path / "staging")


@pytest.fixture(params=["filesystem", *S3_STORES])
def store(
    request: pytest.FixtureRequest, tmp_path: Path, s3_endpoints: S3Endpoints
) -> Iterator[MaintainableBlobStore]:
    if request.param == "filesystem":
        yield FileSystemBlobStore(tmp_path / "blobs", fsync=False)
        return
    endpoint = s3_endpoints.url(request.param)
    with fresh_bucket(endpoint) as bucket:
        yield S3BlobStore(location(endpoint, bucket, "blobs/"), tmp_path / "staging")


# --- the contract, on both stores -----------------------------------------------------------


def test_bytes_are_stored_under_their_sha256_once(store: MaintainableBlobStore) -> None:
    first, second = _write(store, b"twice"), _write(store, b"twice")
    assert first.sha256 == hashlib.sha256(b"twice").hexdigest()
    assert first.md5 == hashlib.md5(b"twice").hexdigest()
    assert first.sha1 == hashlib.sha1(b"twice").hexdigest()
    assert first.storage_key == second.storage_key == f"{first.sha256[:2]}/{first.sha256}"
    assert _keys(store) == [first.storage_key]
    with store.open(first.storage_key) as fh:
        assert fh.read() == b"twice"
    # Each write keeps its spare until released; then no temp file is left.
    assert len(list(store.iter_temp_files())) == 2
    store.release(first)
    store.release(second)
    assert list(store.iter_temp_files()) == []


def test_a_reader_seeks_like_a_file(store: MaintainableBlobStore) -> None:
    data = os.urandom(3 * 1024 * 1024 + 17)
    blob = _write(store, data)
    with store.open(blob.storage_key) as fh:
        assert fh.seek(0, io.SEEK_END) == len(data)
        fh.seek(1_000_000)
        assert fh.read(10) == data[1_000_000:1_000_010]
        assert fh.read(5) == data[1_000_010:1_000_015]  # goes on where it stopped
        fh.seek(-7, io.SEEK_END)
        assert fh.read() == data[-7:]
        assert fh.read() == b""
        fh.seek(0)
        assert hashlib.sha256(fh.read()).hexdigest() == blob.sha256


def test_a_missing_blob_is_file_not_found(store: MaintainableBlobStore) -> None:
    key = f"ab/ab{'0' * 62}"
    assert not store.exists(key)
    with pytest.raises(FileNotFoundError):
        store.open(key)


def test_sizes_of_gives_each_keys_size_or_none_in_order(store: MaintainableBlobStore) -> None:
    blobs = [_write(store, b"present %d" % n) for n in range(20)]
    gone = [blobs[3].storage_key, blobs[17].storage_key]
    for key in gone:
        store.delete(key)
    sizes = store.sizes_of([blob.storage_key for blob in blobs])
    assert sizes == [None if b.storage_key in gone else b.size for b in blobs]
    assert store.sizes_of([]) == []


def test_a_wrong_announced_digest_stores_nothing(store: MaintainableBlobStore) -> None:
    with pytest.raises(ChecksumMismatch):
        _write(store, b"body", md5="0" * 32)
    assert _keys(store) == []
    assert list(store.iter_temp_files()) == []


def test_an_aborted_write_leaves_nothing(store: MaintainableBlobStore) -> None:
    writer = store.writer()
    writer.write(b"half of it")
    writer.abort()
    assert _keys(store) == []
    assert list(store.iter_temp_files()) == []


def test_empty_bytes_are_placed_only_once_referenced(store: MaintainableBlobStore) -> None:
    blob = _write(store, b"", place=False)
    assert _keys(store) == []
    store.ensure_stored(blob)
    assert _keys(store) == [blob.storage_key]
    store.release(blob)
    with store.open(blob.storage_key) as fh:
        assert fh.read() == b""


def test_bytes_removed_before_the_commit_are_put_back_from_the_spare(
    store: MaintainableBlobStore,
) -> None:
    blob = _write(store, b"needed")
    store.delete(blob.storage_key)
    store.ensure_stored(blob)
    store.release(blob)
    with store.open(blob.storage_key) as fh:
        assert fh.read() == b"needed"
    store.delete(blob.storage_key)
    with pytest.raises(FileNotFoundError):
        store.ensure_stored(blob)


def test_bytes_stored_cut_short_are_replaced_from_the_spare(store: MaintainableBlobStore) -> None:
    """An object holding the wrong bytes (cut short by a disk error, or put there by another
    program) was taken for the blob by an S3 store: it asked only whether one existed. Each
    GET of the file then sent what was there."""
    data = os.urandom(100 * 1024)  # over what an S3 store sends without asking
    blob = _write(store, data)
    if isinstance(store, S3BlobStore):
        key = store.prefix + blob.storage_key
        store.quick_client.put_object(Bucket=store.bucket, Key=key, Body=data[:1000])
    else:  # a copy of its own: the spare is a hard link of the stored file
        stored = store.path_of(blob.storage_key)  # type: ignore[attr-defined]
        stored.unlink()
        stored.write_bytes(data[:1000])
    assert store.size_of(blob.storage_key) == 1000
    store.ensure_stored(blob)
    store.release(blob)
    assert store.size_of(blob.storage_key) == len(data)
    with store.open(blob.storage_key) as fh:
        assert fh.read() == data


def test_gc_sets_aside_restores_and_discards(store: MaintainableBlobStore) -> None:
    kept, dropped = _write(store, b"kept"), _write(store, b"dropped!")
    store.release(kept)
    store.release(dropped)
    token_kept = store.set_aside(kept.storage_key)
    token_dropped = store.set_aside(dropped.storage_key)
    assert token_kept and token_dropped
    assert _keys(store) == []
    # Set-aside bytes count as temp files: the sweep of old ones removes what a crash left.
    assert len(list(store.iter_temp_files())) == 2
    store.restore(token_kept, kept.storage_key)
    assert store.discard(token_dropped) == len(b"dropped!")
    assert store.discard(token_dropped) == 0
    assert _keys(store) == [kept.storage_key]
    assert list(store.iter_temp_files()) == []
    assert store.set_aside(dropped.storage_key) is None


def test_old_temp_files_can_be_removed_by_name(store: MaintainableBlobStore) -> None:
    blob = _write(store, b"left behind")
    token = store.set_aside(blob.storage_key)
    assert token is not None
    for found in list(store.iter_temp_files()):
        store.remove_temp(found.key)
    assert list(store.iter_temp_files()) == []


def test_keys_are_listed_in_order(store: MaintainableBlobStore) -> None:
    blobs = [_write(store, b"blob %d" % n) for n in range(12)]
    assert _keys(store) == sorted(b.storage_key for b in blobs)


def test_the_owner_mark_names_one_database_and_is_no_blob(store: MaintainableBlobStore) -> None:
    blob = _write(store, b"a blob beside the mark")
    assert store.owner() is None
    store.set_owner("first")
    store.set_owner("second")  # replaced whole, as db copy --take-blob-store does
    assert store.owner() == "second"
    assert _keys(store) == [blob.storage_key]  # gc and fsck never take it for an orphan
    if isinstance(store, S3BlobStore):
        key = store.prefix + OWNER_KEY
        store.quick_client.put_object(Bucket=store.bucket, Key=key, Body=b"\xff\xfe garbage")
    else:
        (store.root / OWNER_KEY).write_bytes(b"\xff\xfe garbage")
    with pytest.raises(ConfigError, match=r"cannot read which database .* belongs to"):
        store_owner(store)


# --- S3 only --------------------------------------------------------------------------------


def test_large_uploads_go_up_in_parts(
    s3_store: S3BlobStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(s3_module, "MULTIPART_BYTES", 5 * 1024 * 1024)  # S3's smallest part
    data = os.urandom(11 * 1024 * 1024 + 5)
    blob = _write(s3_store, data)
    s3_store.release(blob)
    head = s3_store.client.head_object(Bucket=s3_store.bucket, Key="blobs/" + blob.storage_key)
    assert head["ETag"].strip('"').endswith("-3")  # a multipart object of three parts
    with s3_store.open(blob.storage_key) as fh:
        assert hashlib.sha256(fh.read()).hexdigest() == blob.sha256
    # gc's copies of a large object go in parts too (UploadPartCopy past 8 MiB).
    token = s3_store.set_aside(blob.storage_key)
    assert token is not None and not s3_store.exists(blob.storage_key)
    s3_store.restore(token, blob.storage_key)
    with s3_store.open(blob.storage_key) as fh:
        assert hashlib.sha256(fh.read()).hexdigest() == blob.sha256


def test_a_small_upload_costs_one_request_and_a_large_one_asks_first(
    s3_store: S3BlobStore,
) -> None:
    """Each request is a round trip to the store: a small upload is sent without asking
    whether the bucket has it; a larger one asks first, and is not sent again when it has."""
    sent = _requests(s3_store)
    small = _write(s3_store, b"small and new", place=False)
    assert sent == []  # finish sends nothing: ensure_stored does, once a row will need them
    s3_store.ensure_stored(small)
    s3_store.release(small)
    assert sent == ["PutObject"]
    large = os.urandom(s3_module._SEND_WITHOUT_ASKING + 1)
    sent.clear()
    s3_store.release(_write(s3_store, large))
    assert sent == ["HeadObject", "PutObject"]
    sent.clear()
    s3_store.release(_write(s3_store, large))
    assert sent == ["HeadObject"]


def test_reading_from_the_start_costs_one_request(s3_store: S3BlobStore) -> None:
    data = os.urandom(300 * 1024)
    blob = _write(s3_store, data)
    s3_store.release(blob)
    sent = _requests(s3_store)
    with s3_store.open(blob.storage_key) as fh:
        assert fh.read() == data
    assert sent == ["GetObject"]  # no HeadObject for the size first
    sent.clear()
    with s3_store.open(blob.storage_key) as fh:
        fh.seek(1000)
        assert fh.read(10) == data[1000:1010]
    assert sent == ["GetObject", "GetObject"]


def test_reading_past_the_end_of_a_too_short_object_raises(s3_store: S3BlobStore) -> None:
    """An object shorter than its row says (a damaged store): a Range past its real end was
    answered 206 with the row's length and then nothing, the connection left hanging. The
    read raises instead, as one that ends early inside the object does, so it is cut."""
    data = os.urandom(1000)
    blob = _write(s3_store, data)
    s3_store.release(blob)
    key = "blobs/" + blob.storage_key
    s3_store.client.put_object(Bucket=s3_store.bucket, Key=key, Body=data[:100])
    with s3_store.open(blob.storage_key) as fh:
        fh.seek(500)  # where the row's 1000 bytes say there is more
        with pytest.raises(OSError, match="the object ended early"):
            fh.read(10)
    with s3_store.open(blob.storage_key) as fh:  # reading up to its real end is not an error
        fh.seek(50)
        assert fh.read() == data[50:100]
        assert fh.read(10) == b""


def _requests(store: S3BlobStore) -> list[str]:
    """The names of the S3 operations ``store`` sends from now on, as they are sent."""
    sent: list[str] = []

    def record(event_name: str, **_: object) -> None:
        sent.append(event_name.rsplit(".", 1)[-1])

    for client in (store.client, store.quick_client):
        client.meta.events.register("before-send.s3", record)
    return sent


def test_each_store_sees_only_its_prefix(s3_endpoint: str, s3_bucket: str, tmp_path: Path) -> None:
    one = S3BlobStore(location(s3_endpoint, s3_bucket, "one/"), tmp_path / "one")
    two = S3BlobStore(location(s3_endpoint, s3_bucket, "two/"), tmp_path / "two")
    blob = _write(one, b"only in one")
    one.release(blob)
    assert _keys(one) == [blob.storage_key]
    assert _keys(two) == []
    assert not two.exists(blob.storage_key)


def test_an_unreachable_store_is_unavailable(tmp_path: Path) -> None:
    store = S3BlobStore(location("http://127.0.0.1:9", "bucket"), tmp_path / "staging")
    with pytest.raises(Unavailable, match="not answering"):
        store.check()
    blob = StoredBlob("0" * 64, "", "", 0, "00/" + "0" * 64)
    with pytest.raises(Unavailable):
        store.exists(blob.storage_key)


def test_a_store_that_never_answers_fails_the_health_check_within_seconds(
    tmp_path: Path,
) -> None:
    """A hung store (it accepts connections, never answers) must not hold the health check,
    nor a request asking whether the bucket has an object, for minutes: a load balancer
    would wait for the one and every client for the other."""
    with silent_endpoint() as url:
        store = S3BlobStore(location(url, "bucket"), tmp_path / "staging")
        for call in (store.check, lambda: store.exists("00/" + "0" * 64)):
            started = time.monotonic()
            with pytest.raises(Unavailable, match="not answering"):
                call()
            assert time.monotonic() - started < s3_module.QUICK.longest() + 1 <= 10


def test_a_transfer_from_a_store_that_never_answers_gives_up_in_its_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A download's GET tries ``attempts`` times, each waiting ``read`` seconds: no more
    (the README promises the bound), and no less (the retries are there)."""
    short = s3_module.Patience(connect=1, read=0.5, attempts=3)
    monkeypatch.setattr(s3_module, "TRANSFERS", short)
    with silent_endpoint() as url:
        store = S3BlobStore(location(url, "bucket"), tmp_path / "staging")
        started = time.monotonic()
        with pytest.raises(Unavailable, match="not answering"):
            store.open("00/" + "0" * 64)
        took = time.monotonic() - started
    assert short.attempts * short.read <= took < short.longest() + 1


def test_an_upload_the_store_refuses_leaves_no_temp_file(
    s3_kind: str, s3_endpoint: str, tmp_path: Path
) -> None:
    # moto takes any signature but knows its buckets; SeaweedFS makes a missing bucket on the
    # first PUT but checks signatures.
    where = location(s3_endpoint, "no-such-bucket-here")
    refusal = "NoSuchBucket"
    if s3_kind == "seaweedfs":
        where = dataclasses.replace(where, secret_access_key="not-the-secret")
        refusal = "SignatureDoesNotMatch"
    store = S3BlobStore(where, tmp_path / "staging")
    writer = store.writer()
    writer.write(b"nowhere to go")
    blob = writer.finish()
    with pytest.raises(Unavailable, match=refusal):
        store.ensure_stored(blob)
    store.release(blob)
    assert list(store.tmp_dir.iterdir()) == []


def test_a_bucket_gone_at_run_time_is_unavailable_naming_it(
    s3_endpoint: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A bucket deleted behind the server's back is the operator's to fix: the client is told
    so in one line (a 503, not a 500), and the log gets one warning, not a traceback."""
    bucket = f"davserver-{secrets.token_hex(6)}"
    admin = make_client(location(s3_endpoint, bucket))
    admin.create_bucket(Bucket=bucket)
    store = S3BlobStore(location(s3_endpoint, bucket, "blobs/"), tmp_path / "staging")
    blob = _write(store, b"stored before the bucket went")
    store.release(blob)
    admin.delete_object(Bucket=bucket, Key="blobs/" + blob.storage_key)
    admin.delete_bucket(Bucket=bucket)
    caplog.set_level(logging.WARNING, logger=s3_module.__name__)
    gone = r"the bucket no longer exists \(S3 GetObject: NoSuchBucket\)"
    with pytest.raises(Unavailable, match=gone):
        store.open(blob.storage_key)
    assert [(r.levelno, r.exc_info) for r in caplog.records] == [(logging.WARNING, None)]
    assert bucket in caplog.text  # the operator learns which bucket


@pytest.mark.parametrize(
    ("code", "refusal"),
    [
        ("InvalidAccessKeyId", "refuses the server's credentials"),
        ("SignatureDoesNotMatch", "refuses the server's credentials"),
        ("ExpiredToken", "refuses the server's credentials"),
        ("AccessDenied", "denies the server access"),
    ],
)
def test_a_store_refusing_the_server_is_unavailable_naming_why(
    code: str, refusal: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from botocore.stub import Stubber

    store = S3BlobStore(location("http://127.0.0.1:9", "bucket"), tmp_path / "staging")
    caplog.set_level(logging.WARNING, logger=s3_module.__name__)
    with Stubber(store.client) as stub:
        stub.add_client_error("get_object", service_error_code=code, http_status_code=403)
        with pytest.raises(Unavailable, match=rf"{refusal} \(S3 GetObject: {code}\)"):
            store.open("00/" + "0" * 64)
    # A HEAD's refusal has no body, so no code: its status says as much.
    with Stubber(store.quick_client) as stub:
        stub.add_client_error("head_object", service_error_code="403", http_status_code=403)
        with pytest.raises(Unavailable, match=r"denies the server access \(S3 HeadObject: 403\)"):
            store.exists("00/" + "0" * 64)
    assert [(r.levelno, r.exc_info) for r in caplog.records] == [(logging.WARNING, None)] * 2


def test_a_forked_child_makes_its_own_client(s3_store: S3BlobStore) -> None:
    """``davserver serve`` builds the store, then forks its workers: a child must not use
    the parent's connection pool."""
    parent = s3_store.client
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report whether it got a client of its own, and that it works
        try:
            ok = s3_store.client is not parent and s3_store.exists("00/" + "0" * 64) is False
            os.write(write, b"1" if ok else b"0")
        finally:
            os._exit(0)
    os.close(write)
    answer = os.read(read, 1)
    os.close(read)
    os.waitpid(pid, 0)
    assert answer == b"1"
    assert s3_store.client is parent


def test_settings_pick_the_store_and_check_the_bucket(
    s3_endpoint: str, s3_bucket: str, tmp_path: Path
) -> None:
    env = {**server_env(s3_endpoint, s3_bucket), "DAVSERVER_S3_PREFIX": "/site-a"}
    settings = load_settings(None, env=env, data_dir=str(tmp_path))
    store = open_blob_store(settings)
    assert isinstance(store, S3BlobStore)
    assert store.prefix == "site-a/"
    assert store.tmp_dir == tmp_path.resolve() / "blobs" / "tmp"
    missing = {**env, "DAVSERVER_S3_BUCKET": "not-there"}
    with pytest.raises(ConfigError, match=r"s3\.bucket: cannot use s3://not-there/site-a/"):
        open_blob_store(load_settings(None, env=missing, data_dir=str(tmp_path)))
    with pytest.raises(ConfigError, match=r"s3\.bucket is not set"):
        load_settings(None, env={"DAVSERVER_STORAGE_BACKEND": "S3"}, data_dir=str(tmp_path))


def test_the_client_sends_no_checksum_trailers(s3_endpoint: str) -> None:
    """Newer boto3 adds CRC32 checksums to every upload unless told otherwise; several
    S3-compatible stores refuse them. Content-MD5 guards the bytes instead."""
    config = make_client(location(s3_endpoint, "any")).meta.config
    assert config.request_checksum_calculation == "when_required"
