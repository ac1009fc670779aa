"""The file-system blob store on its own: placement, dedup, spares, fan-out folders."""

from __future__ import annotations

import errno
import hashlib
import itertools
import os
import shutil
from pathlib import Path
from unittest import mock

import pytest

from davserver.blobstore import FileSystemBlobStore, StoredBlob, is_storage_key
from davserver.blobstore.s3 import S3BlobStore
from davserver.blobstore.s3_client import S3Location
from davserver.errors import ChecksumMismatch, StorageFull


def _write(store: FileSystemBlobStore, data: bytes, **expect: str) -> StoredBlob:
    writer = store.writer()
    writer.write(data)
    return writer.finish(expect or None)


def _same_folder_as(data: bytes) -> bytes:
    """Other bytes whose SHA-256 starts like ``data``'s: they share its fan-out folder."""
    prefix = hashlib.sha256(data).hexdigest()[:2]
    for n in itertools.count():
        candidate = b"other %d" % n
        if hashlib.sha256(candidate).hexdigest()[:2] == prefix:
            return candidate
    raise AssertionError("unreachable")


@pytest.fixture(params=[False, True], ids=["no-fsync", "fsync"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> FileSystemBlobStore:
    return FileSystemBlobStore(tmp_path / "blobs", fsync=request.param)


def test_bytes_land_under_their_sha256_and_the_spare_goes_on_release(
    store: FileSystemBlobStore,
) -> None:
    blob = _write(store, b"hello")
    assert blob.sha256 == hashlib.sha256(b"hello").hexdigest()
    assert blob.storage_key == f"{blob.sha256[:2]}/{blob.sha256}"
    with store.open(blob.storage_key) as fh:
        assert fh.read() == b"hello"
    assert [f.key for f in store.iter_temp_files()] == [blob.spare]
    store.release(blob)
    assert list(store.iter_temp_files()) == []
    assert [f.key for f in store.iter_files()] == [blob.storage_key]


def test_the_same_bytes_twice_are_stored_once(store: FileSystemBlobStore) -> None:
    first, second = _write(store, b"twice"), _write(store, b"twice")
    store.release(first)
    store.release(second)
    assert first.storage_key == second.storage_key
    assert [f.key for f in store.iter_files()] == [first.storage_key]
    assert list(store.iter_temp_files()) == []


def test_a_stored_copy_cut_short_is_replaced_by_the_next_write_of_those_bytes(
    store: FileSystemBlobStore, caplog: pytest.LogCaptureFixture
) -> None:
    """A blob file shorter than its bytes (a crash with fsync off, a disk error) was kept
    when the same bytes came again: the new file's version pointed at the cut copy, and a GET
    sent fewer bytes than it announced. The write puts its whole copy there instead, and so
    does ``ensure_stored`` (the gc protocol's second look), each saying so in the log."""
    data = os.urandom(200_000)
    first = _write(store, data)
    store.release(first)
    path = store.path_of(first.storage_key)
    os.truncate(path, 1000)
    again = _write(store, data)
    assert again.storage_key == first.storage_key
    assert path.read_bytes() == data
    assert "held 1000 bytes instead of 200000" in caplog.text
    store.release(again)
    # A write that found the copy whole keeps its own as the spare; cut short after that,
    # the copy is replaced from the spare.
    third = _write(store, data)
    os.truncate(path, 10)
    store.ensure_stored(third)
    assert path.read_bytes() == data
    store.release(third)
    assert [f.key for f in store.iter_files()] == [first.storage_key]
    assert list(store.iter_temp_files()) == []


def test_a_fan_out_folder_removed_behind_the_stores_back_is_made_again(
    store: FileSystemBlobStore,
) -> None:
    """The store remembers the folders it made; one removed meanwhile (an operator cleaning
    up) must not make the next write into it fail."""
    first = _write(store, b"first")
    store.release(first)
    shutil.rmtree(store.root / first.storage_key[:2])
    other = _same_folder_as(b"first")
    second = _write(store, other)
    store.release(second)
    assert second.storage_key[:3] == first.storage_key[:3]
    with store.open(second.storage_key) as fh:
        assert fh.read() == other


def test_a_wrong_announced_digest_stores_nothing(store: FileSystemBlobStore) -> None:
    with pytest.raises(ChecksumMismatch):
        _write(store, b"body", sha256="0" * 64)
    assert list(store.iter_files()) == []
    assert list(store.iter_temp_files()) == []


def test_new_fan_out_folders_are_made_durable_with_the_blob(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A blob is durable only if the folder leading to it is: a folder the store makes is
    flushed in its parent (once), and the blob's own folder after each new blob."""
    from davserver.blobstore import filesystem

    flushed: list[Path] = []
    monkeypatch.setattr(filesystem, "fsync_path", flushed.append)
    store = FileSystemBlobStore(tmp_path / "blobs", fsync=True)
    root = store.root
    first = _write(store, b"first")
    folder = root / first.storage_key[:2]
    assert flushed == [root, folder]  # aa/ made in root, the blob in aa/
    flushed.clear()
    _write(store, _same_folder_as(b"first"))
    assert flushed == [folder]  # the folder exists: only the new blob's entry
    flushed.clear()
    unsafe = FileSystemBlobStore(tmp_path / "unsafe", fsync=False)
    _write(unsafe, b"first")
    assert flushed == []


def test_one_fan_out_level_however_many_blobs(store: FileSystemBlobStore) -> None:
    """New blobs share at most 256 folders: a young store does not make a folder per upload."""
    for n in range(600):
        store.release(_write(store, b"blob %d" % n))
    folders = [p for p in store.root.iterdir() if p != store.tmp_dir]
    assert len(folders) <= 256
    assert all(len(folder.name) == 2 for folder in folders)
    blobs = [p for folder in folders for p in folder.iterdir()]
    assert len(blobs) == 600 and all(p.is_file() for p in blobs)


def _store_the_old_way(store: FileSystemBlobStore, data: bytes) -> str:
    """Put ``data`` where the store kept blobs when it fanned out twice: ``ab/cd/abcd…``."""
    sha256 = hashlib.sha256(data).hexdigest()
    key = f"{sha256[:2]}/{sha256[2:4]}/{sha256}"
    path = store.path_of(key)
    path.parent.mkdir(parents=True)
    path.write_bytes(data)
    return key


def test_bytes_stored_in_the_two_level_layout_are_found_not_copied(
    store: FileSystemBlobStore,
) -> None:
    key = _store_the_old_way(store, b"from before")
    blob = _write(store, b"from before")
    store.release(blob)
    assert blob.storage_key == key
    assert [f.key for f in store.iter_files()] == [key]
    store.ensure_stored(blob)
    with store.open(blob.storage_key) as fh:
        assert fh.read() == b"from before"


def test_storage_keys_in_either_layout_are_recognised() -> None:
    sha256 = hashlib.sha256(b"x").hexdigest()
    assert is_storage_key(f"{sha256[:2]}/{sha256}")
    assert is_storage_key(f"{sha256[:2]}/{sha256[2:4]}/{sha256}")
    for other in (
        f"{sha256[2:4]}/{sha256}",  # the wrong folder
        f"{sha256[:2]}/{sha256[:2]}/{sha256}",
        f"{sha256}",
        f"{sha256[:2]}/notes.txt",
        f"{sha256[:2]}/{sha256.upper()}",
    ):
        assert not is_storage_key(other), other


# --- a full disk ---------------------------------------------------------------------------


def _full(*_args: object, **_kwargs: object) -> None:
    raise OSError(errno.ENOSPC, "No space left on device")


@pytest.mark.parametrize("where", ["write", "fsync", "link"])
def test_a_full_disk_is_storage_full_and_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    store = FileSystemBlobStore(tmp_path / "blobs", fsync=True)
    writer = store.writer()
    if where == "write":
        # Linux's /dev/full answers every write with ENOSPC, as a full disk does.
        staged = writer._staged  # type: ignore[attr-defined]
        temp = staged.file
        monkeypatch.setattr(staged, "file", open("/dev/full", "wb", buffering=0))  # noqa: SIM115
        with pytest.raises(StorageFull):
            writer.write(b"x" * 4096)
        staged.file.close()
        monkeypatch.setattr(staged, "file", temp)
        writer.abort()
    else:
        writer.write(b"bytes that do not fit")
        monkeypatch.setattr(os, where, _full)
        with pytest.raises(StorageFull):
            writer.finish()
        monkeypatch.undo()
    assert list(store.iter_temp_files()) == []
    assert list(store.iter_files()) == []


def test_other_write_errors_stay_what_they_are(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = FileSystemBlobStore(tmp_path / "blobs", fsync=True)
    writer = store.writer()
    writer.write(b"bytes")

    def broken(*_args: object) -> None:
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(os, "fsync", broken)
    with pytest.raises(OSError) as raised:
        writer.finish()
    assert not isinstance(raised.value, StorageFull)
    assert raised.value.errno == errno.EIO


def test_free_bytes_is_the_free_space_where_uploads_go(tmp_path: Path) -> None:
    """quota-available-bytes of a user without a quota: the free space of the blob folder's
    disk, or for S3 of the disk its uploads are staged on (each goes there whole first). S3
    reported the server's working folder's disk instead."""
    store = FileSystemBlobStore(tmp_path / "blobs")
    assert abs(store.free_bytes() - shutil.disk_usage(tmp_path).free) < 2**26
    staged = S3BlobStore(S3Location(bucket="b"), tmp_path / "not" / "made" / "yet")
    with mock.patch("shutil.disk_usage", wraps=shutil.disk_usage) as asked:
        assert abs(staged.free_bytes() - shutil.disk_usage(tmp_path).free) < 2**26
    assert asked.call_args_list[0].args == (tmp_path,)  # the nearest folder that exists
