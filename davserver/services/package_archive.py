"""What a package is made of, and its zip: the pinned items, the manifest, the layout, the ETag.

A package's zip is a pure function of its items (path, pinned version, pinned time), its name
and description: entries in code-point order of their paths, stored uncompressed by
``davserver.services.zipstream``, then the manifest. So the same package always gives the same
bytes, its length is known before the first byte and any range can be served alone. The ETag
is a hash of that layout (each entry's path, SHA-256, size and time, plus the manifest): it
changes exactly when the bytes would.

Nothing here touches the database; ``PackageService`` loads the items and fills in missing
CRC-32s before it asks for an archive whose bytes will be read.
"""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
import json
import uuid
import zlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, BinaryIO, cast, overload

from davserver.services.zipstream import ChunkStream, Content, ZipEntry, ZipStream

MANIFEST_FORMAT = "davserver-package/1"
# Part of every ETag: a change in how the bytes are laid out must change the ETags too.
_LAYOUT_VERSION = b"davserver-zip/1\n"
Opener = Callable[[str | None], BinaryIO]
EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()


@dataclass(frozen=True, slots=True)
class PinnedItem:
    """One file of a package: a version pinned at a path inside the archive."""

    id: uuid.UUID
    path: str
    node_id: uuid.UUID | None  # None once the file itself is gone for good
    # An empty file has no version: None for the version, its number and its blob.
    version_id: uuid.UUID | None
    version_no: int | None
    size: int
    blob_id: uuid.UUID | None
    sha256: str
    crc32: int | None  # None until computed (blobs uploaded before CRC-32s were recorded)
    storage_key: str | None
    mtime: dt.datetime
    added_at: dt.datetime

    def as_dict(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "size": self.size,
            "sha256": self.sha256,
            "version": self.version_no,
            "mtime": self.mtime,
            "node_id": self.node_id,
            "added_at": self.added_at,
        }


@dataclass(frozen=True)
class PackageView:
    """A package and its items (sorted by path), as read in one go."""

    id: uuid.UUID
    name: str
    description: str
    created_by: uuid.UUID
    owner: str  # the creator's username
    created_at: dt.datetime
    expires_at: dt.datetime | None
    modified_at: dt.datetime
    items: tuple[PinnedItem, ...]

    @property
    def size(self) -> int:
        """The bytes of the pinned files (not counting the zip's headers)."""
        return sum(item.size for item in self.items)

    @property
    def zip_name(self) -> str:
        return f"{self.name}.zip"

    def summary(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "owner": self.owner,
            "name": self.name,
            "description": self.description,
            "created_at": self.created_at,
            "expires_at": self.expires_at,
            "modified_at": self.modified_at,
            "items": len(self.items),
            "size": self.size,
        }


@dataclass(frozen=True)
class PackageArchive:
    """A package's zip, laid out: ``stream.total_size`` bytes with this strong ETag."""

    package: PackageView
    stream: ZipStream
    etag: str

    @property
    def size(self) -> int:
        return self.stream.total_size


def manifest_bytes(package: PackageView) -> bytes:
    """The manifest riding inside the zip: each file's path, size, SHA-256 and version
    (null for an empty file that has none). ``manifest_chunks`` joined."""
    return b"".join(manifest_chunks(package))


def manifest_chunks(package: PackageView) -> Iterator[bytes]:
    """The bytes of ``manifest_bytes``, a file at a time, so that nobody need hold them all
    (about 250 bytes a file: 16 MB for 64,000 files).

    They are ``json.dumps(document, indent=2, sort_keys=True, ensure_ascii=False)`` and a
    newline (``_manifest_document``; the ETags of existing zips depend on them): the
    document as Python objects took about 450 bytes a file, twice the JSON."""
    yield f'{{\n  "description": {_json(package.description)},\n  "files": '.encode()
    for index, item in enumerate(package.items):
        entry = (
            f"{'[' if index == 0 else ','}\n    {{\n"
            f'      "mtime": {_string(item.mtime.isoformat())},\n'
            f'      "path": {_string(item.path)},\n'
            f'      "sha256": {_string(item.sha256)},\n'
            f'      "size": {item.size},\n'
            f'      "version": {"null" if item.version_no is None else item.version_no}\n'
            "    }"
        )
        yield entry.encode()
    yield b"\n  ]" if package.items else b"[]"
    tail = f',\n  "format": {_json(MANIFEST_FORMAT)},\n  "package": {_json(package.name)}\n}}\n'
    yield tail.encode()


def _json(value: object) -> str:
    return json.dumps(value, ensure_ascii=False)


# What json.dumps(a_str, ensure_ascii=False) returns, without the encoder it sets up for each
# call: the C function it ends in. A folder's zip asks for three strings a file.
_string: Callable[[str], str] = json.encoder.encode_basestring


def _manifest_document(package: PackageView) -> dict[str, Any]:
    """What ``manifest_bytes`` writes, as the objects ``json`` would dump (for the tests)."""
    return {
        "format": MANIFEST_FORMAT,
        "package": package.name,
        "description": package.description,
        "files": [
            {
                "path": item.path,
                "size": item.size,
                "sha256": item.sha256,
                "version": item.version_no,
                "mtime": item.mtime.isoformat(),
            }
            for item in package.items
        ],
    }


def layout_etag(package: PackageView, manifest: Iterable[bytes]) -> str:
    """A strong ETag for the zip: SHA-256 of everything its bytes are made from
    (``manifest``: its bytes, whole or in chunks)."""
    digest = hashlib.sha256(_LAYOUT_VERSION)
    for item in package.items:
        line = f"{item.path}\0{item.sha256}\0{item.size}\0{item.mtime.isoformat()}\n"
        digest.update(line.encode("utf-8", "surrogatepass"))
    for chunk in [manifest] if isinstance(manifest, bytes) else manifest:
        digest.update(chunk)
    return digest.hexdigest()


def range_bounds(byte_range: str | None, size: int) -> tuple[int, int]:
    """(first, last) byte, inclusive, that a single byte range of a ``size``-byte body
    serves (``byte_range`` as ``dispatch`` leaves the Range header: "bytes=A-B", "bytes=A-"
    or "bytes=-N"); the whole body for None or anything else. An empty range, one that starts
    past the end, is (size, size - 1)."""
    whole = (0, size - 1)
    if byte_range is None or not byte_range.startswith("bytes="):
        return whole
    first, _, last = byte_range[len("bytes=") :].partition("-")
    if not (first or last).isdigit() or (first and last and not last.isdigit()):
        return whole
    if not first:  # the last N bytes
        return max(0, size - int(last)), size - 1
    start = int(first)
    if start >= size:
        return size, size - 1
    return start, min(int(last), size - 1) if last else size - 1


class _Entries(Sequence[ZipEntry]):
    """A package's items as zip entries, each made when asked (``ZipStream`` keeps the
    sequence, so a zip of many files holds no second object per file)."""

    def __init__(self, items: Sequence[PinnedItem], open_blob: Opener) -> None:
        self.items = items
        self.open_blob = open_blob

    def __len__(self) -> int:
        return len(self.items)

    @overload
    def __getitem__(self, index: int) -> ZipEntry: ...

    @overload
    def __getitem__(self, index: slice) -> Sequence[ZipEntry]: ...

    def __getitem__(self, index: int | slice) -> ZipEntry | Sequence[ZipEntry]:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        item = self.items[index]
        return ZipEntry(
            item.path,
            item.size,
            item.crc32 or 0,
            item.mtime,
            functools.partial(self.open_blob, item.storage_key),
        )

    def __iter__(self) -> Iterator[ZipEntry]:
        for index in range(len(self.items)):
            yield self[index]


def build_archive(package: PackageView, open_blob: Opener) -> PackageArchive:
    """The zip of ``package``. Items without a CRC-32 get 0: the size and ETag are right, but
    such an archive is for HEAD and listings only, not for reading bytes.

    The manifest is written once here for its size, CRC-32 and the ETag, and again when a
    range reaches it; it is never held whole."""
    size = crc = 0

    def measured() -> Iterator[bytes]:
        nonlocal size, crc
        for chunk in manifest_chunks(package):
            size += len(chunk)
            crc = zlib.crc32(chunk, crc)
            yield chunk

    etag = layout_etag(package, measured())
    manifest = Content(
        size, crc, lambda: cast(BinaryIO, ChunkStream(lambda: manifest_chunks(package)))
    )
    stream = ZipStream(_Entries(package.items, open_blob), manifest=manifest)
    return PackageArchive(package, stream, etag)
