"""The file-system blob store on its own: placement, dedup, spares, fan-out folders."""

from __future__ import annotations

import hashlib
import itertools
import shutil
from pathlib import Path

import pytest

from davserver.blobstore import FileSystemBlobStore, StoredBlob
from davserver.errors import ChecksumMismatch


def _write(store: FileSystemBlobStore, data: bytes, **expect: str) -> StoredBlob:
    writer = store.writer()
    writer.write(data)
    return writer.finish(expect or None)


def _same_folder_as(data: bytes) -> bytes:
    """Other bytes whose SHA-256 starts like ``data``'s: they share its fan-out folder."""
    prefix = hashlib.sha256(data).hexdigest()[:4]
    for n in itertools.count():
        candidate = b"other %d" % n
        if hashlib.sha256(candidate).hexdigest()[:4] == prefix:
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
    assert blob.storage_key == f"{blob.sha256[:2]}/{blob.sha256[2:4]}/{blob.sha256}"
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
    assert second.storage_key[:5] == first.storage_key[:5]
    with store.open(second.storage_key) as fh:
        assert fh.read() == other


def test_a_wrong_announced_digest_stores_nothing(store: FileSystemBlobStore) -> None:
    with pytest.raises(ChecksumMismatch):
        _write(store, b"body", sha256="0" * 64)
    assert list(store.iter_files()) == []
    assert list(store.iter_temp_files()) == []


def _same_top_folder_as(data: bytes) -> bytes:
    """Other bytes whose SHA-256 shares ``data``'s first fan-out level but not its second."""
    digest = hashlib.sha256(data).hexdigest()
    for n in itertools.count():
        candidate = b"cousin %d" % n
        other = hashlib.sha256(candidate).hexdigest()
        if other[:2] == digest[:2] and other[2:4] != digest[2:4]:
            return candidate
    raise AssertionError("unreachable")


def test_new_fan_out_folders_are_made_durable_with_the_blob(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A blob is durable only if the folders leading to it are: each folder the store makes
    is flushed in its parent (once), and the blob's own folder after each new blob."""
    from davserver.blobstore import filesystem

    flushed: list[Path] = []
    monkeypatch.setattr(filesystem, "_fsync_dir", flushed.append)
    store = FileSystemBlobStore(tmp_path / "blobs", fsync=True)
    root = store.root
    first = _write(store, b"first")
    top, leaf = root / first.storage_key[:2], root / first.storage_key[:5]
    assert flushed == [root, top, leaf]  # aa/ made in root, aa/bb/ in aa/, the blob in aa/bb/
    flushed.clear()
    _write(store, _same_folder_as(b"first"))
    assert flushed == [leaf]  # both folders exist: only the new blob's entry
    flushed.clear()
    cousin = _write(store, _same_top_folder_as(b"first"))
    assert flushed == [top, root / cousin.storage_key[:5]]
    flushed.clear()
    unsafe = FileSystemBlobStore(tmp_path / "unsafe", fsync=False)
    _write(unsafe, b"first")
    assert flushed == []
