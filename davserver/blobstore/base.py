"""The narrow interface every blob store implements, and the optional one maintenance needs.

Blob rows and blob files are kept consistent against ``davserver gc`` by one rule on each side
(the full argument is in ``davserver.services.maintenance``):

- A writer keeps a spare copy of the bytes it finished (``StoredBlob.spare``) until
  ``release``. Whoever makes a row reference a blob (a file version, an image variant, a
  package archive) does so in one transaction: upsert the blob row, write the reference, then
  ``ensure_stored(blob)``, which puts the bytes back from the spare if gc removed them; after
  that transaction ends, ``release(blob)``.
- gc deletes a blob row only together with a re-check that nothing references it, and moves
  the file away while that transaction is still open (and back, should it fail, before it
  rolls back).

A ``RemoteBlobStore`` (S3) keeps the first rule with its round trips outside the transaction:
``davserver.services.blob_refs`` places the bytes first, then holds the row.
"""

from __future__ import annotations

import io
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import BinaryIO, Protocol, runtime_checkable


@dataclass(frozen=True)
class StoredBlob:
    """What a finished write produced: its digests, its size and where it is kept.

    ``spare`` is the store's handle on the writer's own copy of the bytes, kept until
    ``BlobStore.release``; None when the store could not keep one.
    """

    sha256: str
    md5: str
    sha1: str
    size: int
    storage_key: str
    crc32: int | None = None
    spare: str | None = None


class BlobWriter(Protocol):
    """A blob being written. ``write`` any number of times, then ``finish`` or ``abort``."""

    @property
    def bytes_written(self) -> int: ...

    def write(self, data: bytes) -> int: ...

    def finish(self, expect: Mapping[str, str] | None = None) -> StoredBlob:
        """Make the bytes durable under their SHA-256 and return the digests.

        A store may keep bytes nobody references yet in the spare only, for ``ensure_stored``
        to place: the file-system store does so with no bytes at all, since a new empty file
        references no blob and an empty blob placed for it would be an orphan.

        ``expect`` maps "sha256", "sha1" or "md5" to hex digests the client announced; if one
        differs, the bytes are thrown away and ChecksumMismatch is raised. Writing bytes that
        are already stored keeps the existing copy (dedup). Either way the writer's copy stays
        as the returned blob's ``spare`` until ``BlobStore.release``.
        """
        ...

    def abort(self) -> None:
        """Throw the partial bytes away; nothing becomes visible."""
        ...


class BlobStore(Protocol):
    def writer(self) -> BlobWriter: ...

    def check(self) -> None:
        """Raise (OSError, or a DomainError such as Unavailable) unless the store can take
        an upload now; cheap enough for a load balancer's health check."""
        ...

    def open(self, storage_key: str) -> BinaryIO:
        """A seekable binary reader of the blob. Raises FileNotFoundError when missing."""
        ...

    def exists(self, storage_key: str) -> bool: ...

    def size_of(self, storage_key: str) -> int | None:
        """How many bytes the store holds under ``storage_key``; None when it holds none."""
        ...

    def free_bytes(self) -> int:
        """The free space of the disk uploads are written to: the largest upload the store
        can take now, as far as it knows (a bucket's own limit, if any, is not known)."""
        ...

    def sizes_of(self, storage_keys: Iterable[str]) -> list[int | None]:
        """``size_of`` each of ``storage_keys``, in their order (a package's or a folder's zip
        checks all its members before it starts)."""
        ...

    def delete(self, storage_key: str) -> None: ...

    def ensure_stored(self, blob: StoredBlob) -> None:
        """Make sure a finished write's bytes are at ``blob.storage_key``.

        Call it in the transaction that makes a row reference the blob, after that reference
        is written: the bytes are then put back from the spare if gc removed them meanwhile.
        A ``RemoteBlobStore``'s is called before that transaction instead (see there).
        Costs one stat() when they are in place. Raises FileNotFoundError when they are
        missing and there is no spare.
        """
        ...

    def release(self, blob: StoredBlob) -> None:
        """Drop the spare copy of a finished write (after its transaction ended either way)."""
        ...


class RemoteBlobStore(BlobStore, Protocol):
    """A store each call of which is a network round trip (an object store).

    Its calls are kept out of database transactions: one made inside would hold SQLite's
    only write lock, every other writer waiting, or PostgreSQL's row locks, for as long as
    the store takes to answer. So ``ensure_stored`` runs before the referencing transaction
    (``davserver.services.blob_refs``), not inside it as the base rule says.
    """

    remote: bool  # True; what tells such a store apart at run time


@dataclass(frozen=True)
class BlobFile:
    """One file found in a store: its key (or temp name), size in bytes and mtime (epoch s)."""

    key: str
    size: int
    mtime: float


# Beside the blobs, never a storage key: which database the store belongs to.
OWNER_KEY = "database-id"
# Beside the blobs too: where fsck moves a blob it found corrupt (``quarantine``).
QUARANTINE = "quarantine"


class MaintainableBlobStore(BlobStore, Protocol):
    """What gc and fsck need beyond ``BlobStore``: listing, and removal that can be undone."""

    def iter_files(self) -> Iterator[BlobFile]:
        """Every stored file outside the temp area, in key order; memory stays bounded."""
        ...

    def iter_temp_files(self) -> Iterator[BlobFile]:
        """Files in the temp area: uploads in progress or left behind by a crash."""
        ...

    def remove_temp(self, name: str) -> None: ...

    def set_aside(self, storage_key: str) -> str | None:
        """Move a blob away from its key; returns a token for ``restore`` or ``discard``, or
        None when there was nothing to move."""
        ...

    def restore(self, token: str, storage_key: str) -> None:
        """Put a set-aside blob back under its key."""
        ...

    def discard(self, token: str) -> int:
        """Delete a set-aside blob for good; returns the bytes freed."""
        ...

    def quarantine(self, storage_key: str) -> str | None:
        """Move a blob found corrupt from its key to ``QUARANTINE/<sha256>``, which listing
        (so gc, fsck and backup) leaves alone; where it went, for messages, or None when
        there was nothing to move. With its key empty the blob is missing: a download
        answers a clean error, and the next upload of those bytes stores a copy of its own,
        where dedup would have kept the corrupt one (it compares sizes only)."""
        ...

    def describe(self) -> str:
        """Where the store is, for messages."""
        ...

    def owner(self) -> str | None:
        """The identity of the database this store's blobs belong to (``OWNER_KEY``), or None
        while none has claimed it: gc on another database would take its blobs for orphans."""
        ...

    def set_owner(self, database_id: str) -> None:
        """Mark the store as the blobs of the database ``database_id``."""
        ...


@dataclass(frozen=True)
class PartialUpload:
    """A multipart upload the store holds unfinished: its key (below the store's prefix),
    the store's id for it, the bytes of the parts it has, and when it began (epoch s)."""

    key: str
    upload_id: str
    size: int
    started: float


@runtime_checkable
class PartialUploadStore(Protocol):
    """What gc needs of a store that keeps unfinished multipart uploads (S3). An upload cut
    off while the store was out of reach (the abort fails then too), or by a killed server,
    leaves its parts there, kept and billed until someone aborts it."""

    def iter_partial_uploads(self) -> Iterator[PartialUpload]:
        """The unfinished uploads under the store's prefix."""
        ...

    def abort_upload(self, upload: PartialUpload) -> None:
        """Abort it, its parts deleted (nothing when it is gone already)."""
        ...


class SeekableReader(io.RawIOBase):
    """A raw reader of ``size()`` bytes that keeps its own position: subclasses implement
    ``readinto`` from ``_position``, and ``_moved`` when a seek must drop what they hold."""

    def __init__(self) -> None:
        super().__init__()
        self._position = 0

    def size(self) -> int:
        raise NotImplementedError

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._position

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._position, io.SEEK_END: self.size()}[whence]
        target = base + offset
        if target < 0:
            raise ValueError(f"negative seek position {target}")
        if target != self._position:
            self._moved()
            self._position = target
        return target

    def _moved(self) -> None:
        """The position is about to change other than by reading."""
