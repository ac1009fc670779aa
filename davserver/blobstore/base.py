"""The narrow interface every blob store implements."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import BinaryIO, Protocol


@dataclass(frozen=True)
class StoredBlob:
    """What a finished write produced: its digests, its size and where it is kept."""

    sha256: str
    md5: str
    sha1: str
    size: int
    storage_key: str
    crc32: int | None = None


class BlobWriter(Protocol):
    """A blob being written. ``write`` any number of times, then ``finish`` or ``abort``."""

    bytes_written: int

    def write(self, data: bytes) -> int: ...

    def finish(self, expect: Mapping[str, str] | None = None) -> StoredBlob:
        """Make the bytes durable under their SHA-256 and return the digests.

        ``expect`` maps "sha256", "sha1" or "md5" to hex digests the client announced; if one
        differs, the bytes are thrown away and ChecksumMismatch is raised. Writing bytes that
        are already stored keeps the existing copy (dedup).
        """
        ...

    def abort(self) -> None:
        """Throw the partial bytes away; nothing becomes visible."""
        ...


class BlobStore(Protocol):
    def writer(self) -> BlobWriter: ...

    def open(self, storage_key: str) -> BinaryIO:
        """A seekable binary reader of the blob. Raises FileNotFoundError when missing."""
        ...

    def exists(self, storage_key: str) -> bool: ...

    def delete(self, storage_key: str) -> None: ...
