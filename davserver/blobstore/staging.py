"""An upload's bytes in a local temp file, hashed while they are written.

Every store's writer starts here: the SHA-256 that names a blob is known only once the last
byte has arrived, so the bytes wait in a temp folder until then. The temp file is also the
write's spare copy (see ``davserver.blobstore.base``) until the store releases it.
"""

from __future__ import annotations

import errno
import functools
import logging
import os
import shutil
import stat
import tempfile
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import ParamSpec, TypeVar

from davserver.blobstore.base import BlobFile, StoredBlob
from davserver.blobstore.hashing import MultiHasher
from davserver.errors import ChecksumMismatch, StorageFull, Unavailable

log = logging.getLogger(__name__)

_P = ParamSpec("_P")
_R = TypeVar("_R")
# What writing answers when the disk (or the user's file system quota) has no room left.
_FULL = frozenset({errno.ENOSPC, errno.EDQUOT})
# What it answers when the folder cannot be written at all: mounted read-only, or its
# permissions changed under the server.
_NOT_WRITABLE = frozenset({errno.EROFS, errno.EACCES, errno.EPERM})


def must_place(blob: StoredBlob, held: int | None) -> bool:
    """For ``ensure_stored``: whether the spare must go to ``blob``'s key, where the store
    holds ``held`` bytes (None: nothing, or not asked). Not when it holds the whole blob, nor
    when it holds other bytes and there is no whole copy to put there (fsck reports it);
    FileNotFoundError when it holds nothing and there is no spare."""
    if held == blob.size:
        return False
    if blob.spare is None:
        if held is not None:
            return False
        raise FileNotFoundError(f"blob {blob.storage_key} is missing and has no spare copy")
    if held is not None:
        warn_replaced(blob.storage_key, held, blob.size)
    return True


def warn_replaced(storage_key: str, held: int, size: int) -> None:
    """Say that the blob under ``storage_key``, holding ``held`` bytes instead of ``size``, is
    replaced by an upload's whole copy."""
    log.warning(
        "blob %s held %d bytes instead of %d: replaced by an upload of the same bytes",
        storage_key,
        held,
        size,
    )


def storage_write_errors(function: Callable[_P, _R]) -> Callable[_P, _R]:
    """``function``, with "no space left" raised as StorageFull: the one write error a
    client can act on (507). A folder that cannot be written (read-only, permissions) is
    Unavailable (503, Retry-After) with a warning naming it for the operator, as for a store
    that does not answer: it was a bare 500 with a traceback. Any other error is the
    server's fault, and stays what it is."""

    @functools.wraps(function)
    def wrapper(*args: _P.args, **kwargs: _P.kwargs) -> _R:
        try:
            return function(*args, **kwargs)
        except OSError as exc:
            if exc.errno in _FULL:
                raise StorageFull("the server's storage is full") from exc
            if exc.errno in _NOT_WRITABLE:
                log.warning("the blob store cannot be written: %s", exc)
                raise Unavailable("the server's storage cannot be written at the moment") from exc
            raise

    return wrapper


class StagedUpload:
    """Bytes written to a new temp file in ``folder`` and hashed as they pass.

    ``on_written(fd, bytes_written)`` runs after each write (the file-system store starts
    writeback there). ``verified`` closes the file and returns the digests.
    """

    def __init__(
        self, folder: Path, *, on_written: Callable[[int, int], None] | None = None
    ) -> None:
        fd, name = tempfile.mkstemp(dir=folder, prefix="up-")
        self.path = Path(name)
        self.file = os.fdopen(fd, "wb", buffering=0)
        self.hasher = MultiHasher()
        self.bytes_written = 0
        self._on_written = on_written

    def write(self, data: bytes) -> int:
        self.hasher.update(data)
        view = memoryview(data)
        while view:
            written = self.file.write(view)
            assert written is not None
            view = view[written:]
        self.bytes_written += len(data)
        if self._on_written is not None:
            self._on_written(self.file.fileno(), self.bytes_written)
        return len(data)

    def verified(self, expect: Mapping[str, str] | None) -> tuple[str, str, str]:
        """(sha256, md5, sha1) of the bytes. ``expect`` maps "sha256", "sha1" or "md5" to
        the hex digests the client announced: on a difference the bytes are discarded and
        ChecksumMismatch is raised."""
        sha256, md5, sha1 = self.hasher.digests()
        actual = {"sha256": sha256, "md5": md5, "sha1": sha1}
        for algorithm, digest in (expect or {}).items():
            if actual.get(algorithm) != digest.lower():
                self.discard()
                raise ChecksumMismatch(
                    f"the body's {algorithm} is {actual.get(algorithm)}, not {digest.lower()}"
                )
        return sha256, md5, sha1

    @property
    def crc32(self) -> int | None:
        """Valid after ``verified``; None for a large upload (``hashing.CRC_UP_TO``)."""
        return self.hasher.crc32

    def discard(self) -> None:
        """Stop hashing, close and delete the temp file."""
        self.hasher.close()
        if not self.file.closed:
            self.file.close()
        self.path.unlink(missing_ok=True)


class StagedWriter:
    """What every store's BlobWriter shares: the staged upload, its byte count, the check of
    announced digests and ``abort``. A store's ``finish`` sets ``_done`` once the temp file
    is placed or handed on as the spare, or calls ``abort`` when it fails."""

    def __init__(self, staged: StagedUpload) -> None:
        self._staged = staged
        self._done = False

    @property
    def bytes_written(self) -> int:
        return self._staged.bytes_written

    @storage_write_errors
    def write(self, data: bytes) -> int:
        return self._staged.write(data)

    def _digests(self, expect: Mapping[str, str] | None) -> tuple[str, str, str]:
        """(sha256, md5, sha1); ChecksumMismatch (nothing kept) when ``expect`` differs."""
        try:
            return self._staged.verified(expect)
        except ChecksumMismatch:
            self._done = True
            raise

    def abort(self) -> None:
        if self._done:
            return
        self._done = True
        self._staged.discard()


def free_space(folder: Path) -> int:
    """Free bytes on the disk of ``folder``, or of its nearest parent that exists (a store's
    folders are made by the first write)."""
    while not folder.is_dir() and folder.parent != folder:
        folder = folder.parent
    return shutil.disk_usage(folder).free


def temp_path(folder: Path, name: str) -> Path:
    """The temp file ``name`` in ``folder``; ValueError for a name that is not one."""
    if not name or "/" in name or name in (".", ".."):
        raise ValueError(f"bad temp file name {name!r}")
    return folder / name


def temp_files(folder: Path) -> Iterator[BlobFile]:
    """The regular files in ``folder``, by name."""
    with os.scandir(folder) as scan:
        entries = sorted(scan, key=lambda e: e.name)
    for entry in entries:
        found = regular_file(entry, entry.name)
        if found is not None:
            yield found


def regular_file(entry: os.DirEntry[str], key: str) -> BlobFile | None:
    """The entry as a BlobFile; None for anything but a regular file, or one gone meanwhile."""
    try:
        st = entry.stat(follow_symlinks=False)
    except FileNotFoundError:
        return None
    return BlobFile(key, st.st_size, st.st_mtime) if stat.S_ISREG(st.st_mode) else None
