"""gc on an S3 store, on both engines and both S3 implementations: what an upload cut off in
the middle of a multipart upload leaves in the bucket."""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest

from davserver.blobstore import storage_key_for
from davserver.blobstore.s3 import S3BlobStore
from davserver.housekeeping import UNFINISHED_UPLOAD_AGE
from davserver.services.actor import Actor
from davserver.services.files import FileService
from davserver.services.fsck import FsckService
from davserver.services.maintenance import MaintenanceService
from davserver.services.tree import NodeView
from tests.blobs import HOUR, put, sha
from tests.s3 import fresh_bucket, location


@pytest.fixture
def store(s3_endpoint: str, tmp_path: Path) -> Iterator[S3BlobStore]:
    """The S3 store the ``maintenance`` fixture uses in this module."""
    with fresh_bucket(s3_endpoint) as bucket:
        yield S3BlobStore(location(s3_endpoint, bucket, "blobs/"), tmp_path / "staging")


def _cut_off_upload(store: S3BlobStore, key: str, part: bytes) -> str:
    """A multipart upload of ``key`` (in the bucket) with one part, never completed: what an
    upload cut off while the store was out of reach, or by a killed server, leaves."""
    client = store.client
    started = client.create_multipart_upload(Bucket=store.bucket, Key=key)
    upload_id = started["UploadId"]
    client.upload_part(Bucket=store.bucket, Key=key, UploadId=upload_id, PartNumber=1, Body=part)
    return upload_id


def _unfinished(store: S3BlobStore) -> set[str]:
    listed = store.client.list_multipart_uploads(Bucket=store.bucket)
    return {upload["Key"] for upload in listed.get("Uploads", [])}


def test_gc_aborts_multipart_uploads_older_than_its_grace(
    store: S3BlobStore, maintenance: MaintenanceService, s3_kind: str
) -> None:
    ours = "blobs/ab/ab" + "1" * 62
    others = "elsewhere/ab/ab" + "2" * 62  # another deployment's prefix in the same bucket
    _cut_off_upload(store, ours, b"x" * 1000)
    others_id = _cut_off_upload(store, others, b"y" * 10)

    if s3_kind != "moto":  # moto lists every upload as begun on 2010-11-10
        young = maintenance.collect_garbage(grace=HOUR)  # an upload may still be going on
        assert young.multipart_uploads_aborted == 0 and young.errors == []
        assert _unfinished(store) == {ours, others}

    dry = maintenance.collect_garbage(grace=dt.timedelta(0), dry_run=True)
    assert (dry.multipart_uploads_aborted, dry.multipart_bytes_aborted) == (1, 1000)
    assert _unfinished(store) == {ours, others}

    report = maintenance.collect_garbage(grace=dt.timedelta(0))
    assert report.errors == []
    assert (report.multipart_uploads_aborted, report.multipart_bytes_aborted) == (1, 1000)
    assert report.as_dict()["multipart_uploads_aborted"] == 1  # in gc --json
    assert _unfinished(store) == {others}
    store.client.abort_multipart_upload(Bucket=store.bucket, Key=others, UploadId=others_id)


def test_the_housekeeping_sweep_aborts_only_day_old_multipart_uploads(
    store: S3BlobStore, maintenance: MaintenanceService, s3_kind: str
) -> None:
    """The running server's sweep aborts what a cut-off upload left without anyone running
    gc; it leaves younger ones, which a slow multi-GB upload may still be adding to."""
    key = "blobs/cd/cd" + "3" * 62
    _cut_off_upload(store, key, b"z" * 700)
    hour, day = dt.timedelta(hours=1), UNFINISHED_UPLOAD_AGE
    if s3_kind != "moto":  # moto lists every upload as begun on 2010-11-10
        young = maintenance.sweep_leftovers(grace=hour, uploads_grace=day)
        assert young.multipart_uploads_aborted == 0 and _unfinished(store) == {key}
    old = maintenance.sweep_leftovers(grace=hour, uploads_grace=dt.timedelta(0))
    assert (old.multipart_uploads_aborted, old.multipart_bytes_aborted) == (1, 700)
    assert old.errors == [] and _unfinished(store) == set()


def test_a_store_that_refuses_to_list_unfinished_uploads_stops_neither_gc_nor_the_sweep(
    store: S3BlobStore, maintenance: MaintenanceService, tmp_path: Path
) -> None:
    """A bucket policy without s3:ListBucketMultipartUploads (lifecycle rules abort them
    there) made the housekeeping sweep fail on every run, with a traceback, and gc with it."""

    def refuse(**_: object) -> tuple[object, dict[str, object]]:
        denied = {"Code": "AccessDenied", "Message": "not for this key"}
        return SimpleNamespace(status_code=403), {"Error": denied, "ResponseMetadata": {}}

    store.client.meta.events.register("before-call.s3.ListMultipartUploads", refuse)
    leftover = store.tmp_dir / "upload-cut-off"
    leftover.parent.mkdir(parents=True, exist_ok=True)
    leftover.write_bytes(b"a crashed upload's temp file")
    os.utime(leftover, (0, 0))

    swept = maintenance.sweep_leftovers(grace=HOUR, uploads_grace=UNFINISHED_UPLOAD_AGE)
    assert swept.temp_files_removed == 1 and not leftover.exists()
    [error] = swept.errors
    assert error.startswith("could not list the store's unfinished uploads:"), error
    assert "AccessDenied" in error

    report = maintenance.collect_garbage(grace=dt.timedelta(0))
    assert not report.ok and report.errors == [error]


def test_fsck_moves_a_corrupt_object_to_quarantine_and_an_upload_heals_it(
    store: S3BlobStore,
    maintenance: MaintenanceService,
    files: FileService,
    actor: Actor,
    home: NodeView,
) -> None:
    """As on a local disk: an object whose bytes are wrong but of the right size was kept by
    every upload of the right ones (larger than what is sent without asking, they are not
    sent when the bucket holds that many bytes). fsck moves it under ``quarantine/``; the
    next upload of those bytes stores them again."""
    original = os.urandom(100_000)
    put(files, actor, home, "photo.bin", original)
    key = storage_key_for(sha(original))
    rotten = bytes(b ^ 0xFF for b in original[:10]) + original[10:]
    store.client.put_object(Bucket=store.bucket, Key=store.prefix + key, Body=rotten)

    report = FsckService(maintenance.db, maintenance.blobs).check()
    assert report.counts == {"corrupt": 1} and report.quarantined == 1
    kept = f"{store.prefix}quarantine/{sha(original)}"
    assert f"moved to s3://{store.bucket}/{kept}" in report.problems[0].detail
    body = store.client.get_object(Bucket=store.bucket, Key=kept)["Body"].read()
    assert body == rotten and store.size_of(key) is None

    put(files, actor, home, "photo again.bin", original)
    photo = files.resolve(files.home_id(actor.user_id), ["photo.bin"])
    assert photo is not None
    with files.open_content(photo) as fh:
        assert fh.read() == original
    assert FsckService(maintenance.db, maintenance.blobs).check().ok
    maintenance.collect_garbage(grace=dt.timedelta(0))
    assert store.client.head_object(Bucket=store.bucket, Key=kept)["ContentLength"] == 100_000
