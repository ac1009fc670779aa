"""Blobs as files on a local disk, fanned out by hash: ``ab/abcd…``.

One fan-out level: 256 folders, made as writes need them, each holding any number of blobs
(ext4 and XFS index large folders). The store used to fan out twice, ``ab/cd/abcd…``: 65,536
folders (256 MiB of folder blocks on ext4 once all exist), and until it held a few hundred
thousand blobs most uploads made a folder and flushed its parent too. Files stored that way keep
their keys (rows record them), and a write of the same bytes finds them there.

A write goes to ``tmp/`` first and is hard-linked into place once its SHA-256 is known, so a
reader never sees a partial blob and an aborted upload leaves nothing behind. The ``tmp/`` name
stays as the write's spare copy until ``release`` (see ``davserver.blobstore.base``): a link
costs no bytes, and it lets ``ensure_stored`` put the blob back if gc removed it before the
upload's transaction committed. With ``fsync`` on, the file and its folder (and a fan-out folder
made for it, in its parent) are flushed to disk before ``finish`` returns, so a committed version
never points at bytes that a crash could lose.
"""

from __future__ import annotations

import ctypes
import errno
import os
import secrets
import shutil
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import BinaryIO

from davserver.blobstore.base import OWNER_KEY, QUARANTINE, BlobFile, StoredBlob
from davserver.blobstore.hashing import is_sha256
from davserver.blobstore.staging import (
    StagedUpload,
    StagedWriter,
    free_space,
    must_place,
    regular_file,
    storage_write_errors,
    temp_files,
    temp_path,
    warn_replaced,
)

_WRITEBACK_EVERY = 8 * 1024 * 1024
_SYNC_FILE_RANGE_WRITE = 2


def _load_sync_file_range() -> Callable[[int, int, int], None] | None:
    """Linux's sync_file_range(2), which starts writing a file range back without waiting.

    Starting writeback while a large upload is still arriving keeps the number of dirty pages
    small, so the final fsync has little left to do (0.4 s -> 0.01 s per GiB measured here).
    Elsewhere this returns None and the final fsync does all the work.
    """
    try:
        func = ctypes.CDLL(None, use_errno=True).sync_file_range
    except (OSError, AttributeError):
        return None
    func.argtypes = [ctypes.c_int, ctypes.c_longlong, ctypes.c_longlong, ctypes.c_uint]

    def start_writeback(fd: int, offset: int, length: int) -> None:
        func(fd, offset, length, _SYNC_FILE_RANGE_WRITE)

    return start_writeback


_start_writeback = _load_sync_file_range()


# What link(2) answers where the file system has no hard links (FAT, some network shares).
_NO_HARD_LINKS = frozenset(
    {errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK, errno.ENOSYS}
)


def storage_key_for(sha256: str) -> str:
    """Where new bytes with this SHA-256 go."""
    return f"{sha256[:2]}/{sha256}"


def _two_level_key(sha256: str) -> str:
    """Where the store put them before it went to one fan-out level."""
    return f"{sha256[:2]}/{sha256[2:4]}/{sha256}"


def is_storage_key(key: str) -> bool:
    """True for the names the store gives its files, in either layout; gc touches nothing else."""
    sha256 = key.rpartition("/")[2]
    return is_sha256(sha256) and key in (
        storage_key_for(sha256),
        _two_level_key(sha256),
    )


class FileSystemBlobStore:
    def __init__(self, root: str | os.PathLike[str], *, fsync: bool = True) -> None:
        self.root = Path(root)
        self.tmp_dir = self.root / "tmp"
        self.fsync = fsync
        self.tmp_dir.mkdir(parents=True, exist_ok=True)
        self._folders: set[str] = set()

    def make_folder(self, path: Path, *, again: bool = False) -> None:
        """``mkdir -p``, remembered: a fan-out folder is made once per process, not per write
        (``again`` when it was removed behind the store's back). With ``fsync``, each folder
        that was missing is flushed in its parent, so the blobs linked into it can be durable."""
        name = str(path)  # a str hashes once; a Path hashes its parts again every time
        if not again and name in self._folders:
            return
        missing = []
        while not path.is_dir():
            missing.append(path)
            path = path.parent
        for folder in reversed(missing):
            # A concurrent write may make it first; it was missing all the same, so flush it.
            folder.mkdir(exist_ok=True)
            if self.fsync:
                fsync_path(folder.parent)
        self._folders.add(name)

    def check(self) -> None:
        if not os.access(self.tmp_dir, os.W_OK | os.X_OK):
            raise PermissionError(f"cannot write in {self.tmp_dir}")

    @storage_write_errors
    def writer(self) -> _FileBlobWriter:
        return _FileBlobWriter(self)

    def locate(self, sha256: str) -> tuple[str, bool]:
        """The key for these bytes, and whether a file is there already: where they are, in
        either layout, or else where new bytes go."""
        key = storage_key_for(sha256)
        if self.path_of(key).exists():
            return key, True
        earlier = _two_level_key(sha256)
        if self.path_of(earlier).exists():
            return earlier, True
        return key, False

    def free_bytes(self) -> int:
        return free_space(self.root)

    def path_of(self, storage_key: str) -> Path:
        if ".." in storage_key.split("/") or storage_key.startswith("/"):
            raise ValueError(f"bad storage key {storage_key!r}")
        return self.root / storage_key

    def open(self, storage_key: str) -> BinaryIO:
        return open(self.path_of(storage_key), "rb")

    def exists(self, storage_key: str) -> bool:
        return self.path_of(storage_key).is_file()

    def sizes_of(self, storage_keys: Iterable[str]) -> list[int | None]:
        return [self.size_of(key) for key in storage_keys]

    def delete(self, storage_key: str) -> None:
        self.path_of(storage_key).unlink(missing_ok=True)

    # -- the upload side of the gc protocol

    def size_of(self, storage_key: str) -> int | None:
        """The size of the file under ``storage_key`` (one stat): a blob cut short is found
        by it."""
        try:
            return self.path_of(storage_key).stat().st_size
        except FileNotFoundError:
            return None

    @storage_write_errors
    def ensure_stored(self, blob: StoredBlob) -> None:
        final = self.path_of(blob.storage_key)
        held = self.size_of(blob.storage_key)
        if not must_place(blob, held):
            return
        assert blob.spare is not None
        final.unlink(missing_ok=True)  # held cut short: the whole copy takes its place
        spare = self._temp_path(blob.spare)
        if self.fsync:
            # A dedup write's spare was never flushed: it had not been needed until now.
            with open(spare, "rb") as fh:
                os.fsync(fh.fileno())
        self.make_folder(final.parent, again=True)
        if _link(spare, final) is None:
            # No hard links here: copy, keeping the spare for a retried transaction.
            copy = self.tmp_dir / f"put-{secrets.token_hex(8)}"
            shutil.copyfile(spare, copy)
            if self.fsync:
                with open(copy, "rb") as fh:
                    os.fsync(fh.fileno())
            os.replace(copy, final)
        if self.fsync:
            fsync_path(final.parent)

    def release(self, blob: StoredBlob) -> None:
        if blob.spare is not None:
            self._temp_path(blob.spare).unlink(missing_ok=True)

    # -- what gc and fsck need

    def iter_files(self) -> Iterator[BlobFile]:
        for found in _walk(self.root, "", skip={self.tmp_dir, self.root / QUARANTINE}):
            if found.key != OWNER_KEY:
                yield found

    def iter_temp_files(self) -> Iterator[BlobFile]:
        yield from temp_files(self.tmp_dir)

    def remove_temp(self, name: str) -> None:
        self._temp_path(name).unlink(missing_ok=True)

    def set_aside(self, storage_key: str) -> str | None:
        token = f"gc-{secrets.token_hex(8)}"
        try:
            os.rename(self.path_of(storage_key), self.tmp_dir / token)
        except FileNotFoundError:
            return None
        # Fresh mtime: a concurrent gc's sweep of old temp files must not take it meanwhile.
        os.utime(self.tmp_dir / token)
        return token

    def restore(self, token: str, storage_key: str) -> None:
        final = self.path_of(storage_key)
        self.make_folder(final.parent, again=True)
        os.replace(self._temp_path(token), final)

    def discard(self, token: str) -> int:
        path = self._temp_path(token)
        try:
            size = path.stat().st_size
            path.unlink()
        except FileNotFoundError:
            return 0
        return size

    def quarantine(self, storage_key: str) -> str | None:
        folder = self.root / QUARANTINE
        target = folder / storage_key.rpartition("/")[2]
        folder.mkdir(exist_ok=True)
        try:
            os.replace(self.path_of(storage_key), target)
        except FileNotFoundError:
            return None
        if self.fsync:
            fsync_path(folder)
            fsync_path(self.path_of(storage_key).parent)
        return str(target)

    def describe(self) -> str:
        return str(self.root)

    def owner(self) -> str | None:
        try:
            return (self.root / OWNER_KEY).read_text("utf-8").strip() or None
        except FileNotFoundError:
            return None

    def set_owner(self, database_id: str) -> None:
        # Written aside and renamed into place: a reader finds the old identity or the new.
        temp = self.tmp_dir / f"{OWNER_KEY}-{secrets.token_hex(4)}"
        temp.write_text(database_id + "\n", "utf-8")
        if self.fsync:
            fsync_path(temp)
        os.replace(temp, self.root / OWNER_KEY)
        if self.fsync:
            fsync_path(self.root)

    def _temp_path(self, name: str) -> Path:
        return temp_path(self.tmp_dir, name)


class _FileBlobWriter(StagedWriter):
    def __init__(self, store: FileSystemBlobStore) -> None:
        writeback = store.fsync and _start_writeback is not None
        super().__init__(
            StagedUpload(store.tmp_dir, on_written=self._written if writeback else None)
        )
        self._store = store
        self._flushed = 0

    def _written(self, fd: int, bytes_written: int) -> None:
        """Start writing back what arrived since the last start, every few MiB."""
        assert _start_writeback is not None
        if bytes_written - self._flushed >= _WRITEBACK_EVERY:
            _start_writeback(fd, self._flushed, bytes_written - self._flushed)
            self._flushed = bytes_written

    @storage_write_errors
    def finish(self, expect: Mapping[str, str] | None = None) -> StoredBlob:
        sha256, md5, sha1 = self._digests(expect)
        key, stored = self._store.locate(sha256)
        held = self._store.size_of(key) if stored else None
        if stored and held != self.bytes_written:
            # The stored copy was cut short (a crash with fsync off, a disk error), or went
            # meanwhile: this one takes its place, for every file that has these bytes.
            if held is not None:
                self._store.path_of(key).unlink(missing_ok=True)
                warn_replaced(key, held, self.bytes_written)
            stored = False
        if self.bytes_written == 0 and not stored:
            spare: str | None = self._keep_empty()
        else:
            spare = self._place(key, stored)
        return StoredBlob(
            sha256, md5, sha1, self.bytes_written, key, self._staged.crc32, spare=spare
        )

    def _keep_empty(self) -> str:
        """No bytes: keep them as the spare only, for ``ensure_stored`` to place once a row
        references them. A new empty file has no version, so placing them now would leave a
        file without a row (an fsck orphan) after every 0-byte PUT; a version of size 0 (a
        file emptied) calls ``ensure_stored`` like any other. Nothing to flush."""
        self._staged.file.close()
        self._done = True
        return self._staged.path.name

    def _place(self, key: str, stored: bool) -> str | None:
        """Make the bytes durable and put them under ``key`` unless they are ``stored`` there
        already; returns the spare's name."""
        final = self._store.path_of(key)
        folder = final.parent
        spare: str | None = self._staged.path.name
        try:
            if stored:
                # Dedup: these bytes are stored already, so this copy need not reach the disk;
                # it stays as the spare. The folder is still flushed, in case the existing copy
                # was linked into place by a concurrent upload that has not flushed it yet.
                self._staged.file.close()
            else:
                if self._store.fsync:
                    os.fsync(self._staged.file.fileno())
                self._staged.file.close()
                self._store.make_folder(folder)
                try:
                    linked = _link(self._staged.path, final)
                except FileNotFoundError:  # the fan-out folder was removed meanwhile
                    self._store.make_folder(folder, again=True)
                    linked = _link(self._staged.path, final)
                if linked is None:
                    os.replace(self._staged.path, final)
                    spare = None
            if self._store.fsync:
                fsync_path(folder)
        except BaseException:
            self.abort()
            raise
        self._done = True
        return spare


def fsync_path(path: Path) -> None:
    """Flush a file, or a folder's entries (a rename into it), to the disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _link(source: Path, target: Path) -> bool | None:
    """Hard-link ``source`` at ``target``: True when linked, False when ``target`` exists
    already (a concurrent write of the same bytes won), None when the file system cannot."""
    try:
        os.link(source, target)
    except FileExistsError:
        return False
    except OSError as exc:
        if exc.errno in _NO_HARD_LINKS:
            return None
        raise
    return True


def _walk(folder: Path, prefix: str, *, skip: set[Path]) -> Iterator[BlobFile]:
    """Regular files below ``folder`` in key order, one folder listing in memory at a time,
    the folders in ``skip`` left out."""
    try:
        with os.scandir(folder) as scan:
            entries = sorted(scan, key=lambda e: e.name)
    except FileNotFoundError:
        return
    for entry in entries:
        path = Path(entry.path)
        if path in skip:
            continue
        if entry.is_dir(follow_symlinks=False):
            yield from _walk(path, f"{prefix}{entry.name}/", skip=skip)
        else:
            found = regular_file(entry, f"{prefix}{entry.name}")
            if found is not None:
                yield found
