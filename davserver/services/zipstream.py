"""A deterministic zip archive, streamed: its size is known before its first byte, and any byte
range can be produced on its own (HTTP Range, resumed downloads).

Layout (PKWARE APPNOTE 6.3), entries stored uncompressed in the order given::

    [local header][data] ... for every entry, the manifest last
    [central directory header] ... for every entry
    [ZIP64 end of central directory record][ZIP64 locator]    only when a count or offset needs it
    [end of central directory record]

Every entry's CRC-32 and size are known up front (blob rows carry them), so there are no data
descriptors, and every header is a pure function of the entries: header bytes are computed
when a range touches them, and entry bytes are read from the entry's stream, seeking to where
the range starts. Memory stays flat whatever the archive's size (one block of
``block_size`` at a time, plus a few integers per entry).

Fixed metadata makes the same entries give the same bytes: names in UTF-8 (flag bit 11), made
by "Unix" with mode 0644, DOS time from the entry's UTC modification time plus an extended
timestamp field (0x5455) so that unzip restores the exact time. ZIP64 extra fields appear only
on entries whose size or offset needs them, and ZIP64 end records only when the entry count
reaches 0xFFFF or the central directory lies or reaches beyond 0xFFFFFFFF, so small archives
stay plain zip for old tools.
"""

from __future__ import annotations

import datetime as dt
import io
import re
import struct
import unicodedata
import zlib
from array import array
from bisect import bisect_right
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, BinaryIO

from davserver.blobstore.base import SeekableReader
from davserver.errors import InvalidName

MANIFEST_NAME = ".davserver-manifest.json"
BLOCK_SIZE = 256 * 1024

_LIMIT32 = 0xFFFFFFFF  # a 4-byte field holding this means "see the ZIP64 field"
_LIMIT16 = 0xFFFF
_UTF8_FLAG = 0x0800
_VERSION_STORED = 10  # 1.0: stored entries
_VERSION_ZIP64 = 45  # 4.5: ZIP64
_MADE_BY = (3 << 8) | _VERSION_ZIP64  # Unix, so external attributes carry the file mode
_EXTERNAL_ATTR = 0o100644 << 16  # regular file, rw-r--r--
_LOCAL = struct.Struct("<IHHHHHIIIHH")
_CENTRAL = struct.Struct("<IHHHHHHIIIHHHHHII")
_EOCD = struct.Struct("<IHHHHIIH")
_EOCD64 = struct.Struct("<IQHHIIQQQQ")
_LOCATOR64 = struct.Struct("<IIQI")
_DOS_MIN = dt.datetime(1980, 1, 1, tzinfo=dt.UTC)
_DOS_MAX = dt.datetime(2107, 12, 31, 23, 59, 58, tzinfo=dt.UTC)
_DRIVE = re.compile(r"[A-Za-z]:")
# C0 and C1 control characters and DEL: what no archive path may hold. A regular expression
# looks through a name in C, four times as fast as a test per character in Python (a folder's
# zip checks every path and makes every name safe before its first byte).
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_UNSAFE_IN_NAME = re.compile(r"[\\\x00-\x1f\x7f-\x9f]")  # the same, and backslashes


class EntrySizeError(OSError):
    """An entry's stream gave more or fewer bytes than its announced size."""


@dataclass(frozen=True, slots=True)
class ZipEntry:
    """One file of the archive. ``open`` returns a binary stream of exactly ``size`` bytes,
    seekable when a range may start inside the entry; it is closed after each use."""

    path: str
    size: int
    crc32: int
    modified: dt.datetime
    open: Callable[[], BinaryIO]


@dataclass(frozen=True, slots=True)
class Content:
    """Bytes known by their size and CRC-32 but not held: ``open`` makes them again (a
    manifest of a hundred thousand files, written when a range reaches it)."""

    size: int
    crc32: int
    open: Callable[[], BinaryIO]


class ChunkStream(io.RawIOBase):
    """The bytes ``make`` yields, as a seekable read-only stream: a seek forward skips
    chunks, a seek backward makes them again from the start. Holds one chunk at a time."""

    def __init__(self, make: Callable[[], Iterable[bytes]]) -> None:
        super().__init__()
        self._make = make
        self._chunks: Iterator[bytes] = iter(make())
        self._pending = memoryview(b"")
        self._position = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._position

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        if whence == io.SEEK_CUR:
            offset += self._position
        elif whence != io.SEEK_SET:
            raise io.UnsupportedOperation("ChunkStream seeks from the start or the position")
        if offset < self._position:
            self._chunks, self._pending, self._position = iter(self._make()), memoryview(b""), 0
        while self._position < offset and self._fill():
            step = min(len(self._pending), offset - self._position)
            self._pending = self._pending[step:]
            self._position += step
        return self._position

    def readinto(self, buffer: Any) -> int:
        """Fill ``buffer`` as far as the chunks go (so read(n) gives n bytes before EOF)."""
        view = memoryview(buffer).cast("B")
        filled = 0
        while filled < len(view) and self._fill():
            count = min(len(view) - filled, len(self._pending))
            view[filled : filled + count] = self._pending[:count]
            self._pending = self._pending[count:]
            filled += count
        self._position += filled
        return filled

    def _fill(self) -> bool:
        """At least one byte pending, unless the chunks are over."""
        while not self._pending:
            chunk = next(self._chunks, None)
            if chunk is None:
                return False
            self._pending = memoryview(chunk)
        return True


def check_archive_path(path: str) -> str:
    """Return ``path`` if it is safe as a name inside an archive, else raise InvalidName.

    Safe means it extracts inside the target folder on every system: relative, "/" as the
    only separator, no empty, "." or ".." components (nor ones of only dots and spaces, which
    Windows trims to ".."), no backslash, no drive letter, no control characters.
    """
    if not path:
        raise InvalidName("an archive path cannot be empty")
    if _CONTROL.search(path):
        raise InvalidName(f"{path!r}: control characters are not allowed in archive paths")
    if "\\" in path:
        raise InvalidName(f"{path!r}: archive paths separate folders with '/', not '\\'")
    if path.startswith("/"):
        raise InvalidName(f"{path!r}: archive paths must be relative")
    if _DRIVE.match(path):
        raise InvalidName(f"{path!r}: archive paths cannot start with a drive letter")
    for part in path.split("/"):
        if not part:
            raise InvalidName(f"{path!r}: empty folder name in archive path")
        if not part.rstrip(". "):
            raise InvalidName(f"{path!r}: '{part}' is not allowed in archive paths")
    try:
        encoded = path.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidName(f"{path!r}: archive paths must be valid Unicode") from None
    if len(encoded) > _LIMIT16:
        raise InvalidName("archive paths are at most 65,535 bytes of UTF-8")
    return path


def safe_archive_name(name: str, *, first: bool = False) -> str:
    """A stored file or folder name as one component of an archive path that
    ``check_archive_path`` accepts: backslashes and control characters become "_", a name of
    only dots and spaces gets a leading "_", and so does the drive-letter colon of a ``first``
    component ("C:" -> "C_"). A folder's zip is made of names its users chose, which the
    server stores whatever a zip allows."""
    safe = _UNSAFE_IN_NAME.sub("_", name)
    if not safe.rstrip(". "):
        safe = "_" + safe
    if first and _DRIVE.match(safe):
        safe = safe[0] + "_" + safe[2:]
    return safe


def archive_names(names: Sequence[str]) -> list[str]:
    """The sibling ``names`` of one folder, in their order, as archive path components that
    are safe (``safe_archive_name``) and that no two share once letter case and Unicode form
    are set aside (``check_unique_paths``): a name taken by a sibling earlier in code-point
    order gets " (2)", " (3)", ... before its extension. The same names always give the same
    result, whatever the order they come in, so a folder's zip keeps its bytes."""
    taken: set[str] = set()
    chosen: dict[str, str] = {}
    for name in sorted(set(names)):
        safe = safe_archive_name(name)
        stem, dot, extension = safe.rpartition(".")
        if not stem.strip(". "):  # ".bashrc", "_...": no extension to keep apart
            stem, dot, extension = safe, "", ""
        candidate, number = safe, 2
        while _fold(candidate) in taken:
            candidate = f"{stem} ({number}){dot}{extension}"
            number += 1
        taken.add(_fold(candidate))
        chosen[name] = candidate
    return [chosen[name] for name in names]


def _fold(part: str) -> str:
    """How case-insensitive file systems (Windows, macOS) compare a name."""
    return unicodedata.normalize("NFC", part).casefold()


def check_unique_paths(paths: Iterable[str]) -> None:
    """Raise InvalidName when two paths would land on the same file, or a file on a folder,
    when extracted on a case-insensitive file system."""
    files: set[str] = set()
    folders: set[str] = set()
    for path in paths:
        parts = [_fold(p) for p in path.split("/")]
        key = "/".join(parts)
        if key in files:
            raise InvalidName(f"{path!r} is in the archive twice (letter case aside)")
        if key in folders:
            raise InvalidName(f"{path!r} is a folder of the archive (letter case aside)")
        for depth in range(1, len(parts)):
            folder = "/".join(parts[:depth])
            if folder in files:
                raise InvalidName(f"{path!r} needs {folder!r} to be a folder, but it is a file")
            folders.add(folder)
        files.add(key)


class ZipStream:
    """The archive of ``entries`` (plus ``manifest`` as ``MANIFEST_NAME``, last), laid out
    on construction: ``total_size`` is known at once and nothing is read until asked.

    ``entries`` is kept, not copied, and indexed again when a header or an entry's bytes are
    produced: a sequence that makes each ZipEntry when asked saves one object per entry.
    Per entry the archive itself holds its name's bytes and two offsets, in arrays.

    Raises InvalidName for an unsafe or duplicate path, ValueError for a bad size or CRC.
    """

    def __init__(
        self,
        entries: Sequence[ZipEntry],
        *,
        manifest: bytes | Content | None = None,
        block_size: int = BLOCK_SIZE,
    ) -> None:
        self.block_size = block_size
        self._given = entries
        self._manifest: ZipEntry | None = None
        # One pass over the entries: every name's UTF-8 in one buffer, and per entry its size
        # and where its local header starts (then where its central header does), in arrays.
        names = bytearray()
        paths: list[str] = []
        self._name_ends = array("Q")
        self._sizes = array("Q")
        self._local = array("Q")
        newest: dt.datetime | None = None
        offset = 0

        def lay_out(entry: ZipEntry) -> None:
            nonlocal offset
            check_archive_path(entry.path)
            if entry.size < 0 or not 0 <= entry.crc32 <= _LIMIT32:
                raise ValueError(f"{entry.path!r}: bad size or CRC-32")
            paths.append(entry.path)
            name = entry.path.encode("utf-8")
            names.extend(name)
            self._name_ends.append(len(names))
            self._sizes.append(entry.size)
            self._local.append(offset)
            offset += _LOCAL.size + len(name) + _local_extra_size(entry.size) + entry.size

        for entry in entries:
            lay_out(entry)
            if manifest is not None:  # the manifest's time: the newest entry's
                newest = entry.modified if newest is None else max(newest, entry.modified)
        if manifest is not None:
            if isinstance(manifest, bytes):
                manifest = Content(len(manifest), zlib.crc32(manifest), _opener(manifest))
            self._manifest = ZipEntry(
                MANIFEST_NAME, manifest.size, manifest.crc32, newest or _DOS_MIN, manifest.open
            )
            lay_out(self._manifest)
        check_unique_paths(paths)
        self._names = bytes(names)
        self.count = len(self._sizes)
        self.central_offset = offset
        self._central = array("Q")
        for index in range(self.count):
            self._central.append(offset)
            offset += _CENTRAL.size + self._name_length(index)
            offset += _central_extra_size(self._sizes[index], self._local[index])
        self.end_offset = offset
        central_size = self.end_offset - self.central_offset
        self.zip64 = (
            self.count >= _LIMIT16 or self.central_offset >= _LIMIT32 or central_size >= _LIMIT32
        )
        self._end = self._end_records(self.count, central_size)
        self.total_size = self.end_offset + len(self._end)

    @property
    def entries(self) -> list[ZipEntry]:
        """Every entry, the manifest last (a list made on each call: for tests and tools)."""
        return list(self._entries())

    def entry(self, index: int) -> ZipEntry:
        """The ``index``-th entry (the manifest is the last)."""
        if index == len(self._given) and self._manifest is not None:
            return self._manifest
        return self._given[index]

    def _entries(self) -> Iterator[ZipEntry]:
        yield from self._given
        if self._manifest is not None:
            yield self._manifest

    def _name_length(self, index: int) -> int:
        return self._name_ends[index] - (self._name_ends[index - 1] if index else 0)

    def _name(self, index: int) -> bytes:
        return self._names[
            self._name_ends[index] - self._name_length(index) : self._name_ends[index]
        ]

    def __iter__(self) -> Iterator[bytes]:
        """The whole archive, in blocks of about ``block_size`` bytes."""
        if self.total_size:
            yield from self.iter_range(0, self.total_size - 1)

    def iter_range(self, start: int, end: int) -> Iterator[bytes]:
        """Bytes ``start`` to ``end`` inclusive (as in an HTTP Range), in blocks of about
        ``block_size``; only the entries the range overlaps are opened.

        Raises ValueError for a range outside the archive, EntrySizeError when an entry's
        stream does not hold its announced size.
        """
        if not 0 <= start <= end < self.total_size:
            raise ValueError(f"range {start}-{end} is outside 0-{self.total_size - 1}")
        pending = bytearray()
        with self.open() as reader:
            position = start
            while position <= end:
                chunk = reader.chunk_at(position, end + 1 - position)
                position += len(chunk)
                if not pending and len(chunk) >= self.block_size:
                    yield chunk
                    continue
                pending += chunk
                if len(pending) >= self.block_size:
                    yield bytes(pending)
                    pending.clear()
        if pending:
            yield bytes(pending)

    def open(self) -> ZipReader:
        """A seekable, read-only file object over the archive (for zipfile, WsgiDAV ranges)."""
        return ZipReader(self)

    # -- layout

    def reading(self, start: int, end: int) -> range:
        """The indices of the entries whose bytes the range ``start``..``end`` (inclusive)
        may read: those whose local header or data it overlaps (none past the last entry's
        data: the central directory and end records are made from the layout alone)."""
        if start >= self.central_offset or end < start:
            return range(0)
        first = bisect_right(self._local, start) - 1
        last = bisect_right(self._local, min(end, self.central_offset - 1)) - 1
        return range(first, last + 1)

    def piece_at(self, position: int) -> tuple[str, int, int, int]:
        """(kind, entry index, start, end) of the part holding ``position``: kind is
        "local", "data", "central" or "end"; end is exclusive."""
        if position < self.central_offset:
            index = bisect_right(self._local, position) - 1
            start = self._local[index]
            size = self._sizes[index]
            data = start + _LOCAL.size + self._name_length(index) + _local_extra_size(size)
            if position < data:
                return "local", index, start, data
            return "data", index, data, data + size
        if position < self.end_offset:
            index = bisect_right(self._central, position) - 1
            stop = self._central[index + 1] if index + 1 < len(self._central) else self.end_offset
            return "central", index, self._central[index], stop
        return "end", -1, self.end_offset, self.total_size

    def header(self, kind: str, index: int) -> bytes:
        """The bytes of a header part (see ``piece_at``)."""
        if kind == "end":
            return self._end
        entry = self.entry(index)
        name = self._name(index)
        dos_time, dos_date, unix_time = _times(entry.modified)
        timestamp = struct.pack("<HHBI", 0x5455, 5, 1, unix_time)
        large = entry.size >= _LIMIT32
        if kind == "local":
            extra = timestamp
            if large:
                extra += struct.pack("<HHQQ", 0x0001, 16, entry.size, entry.size)
            return (
                _LOCAL.pack(
                    0x04034B50,
                    _VERSION_ZIP64 if large else _VERSION_STORED,
                    _UTF8_FLAG,
                    0,
                    dos_time,
                    dos_date,
                    entry.crc32,
                    _LIMIT32 if large else entry.size,
                    _LIMIT32 if large else entry.size,
                    len(name),
                    len(extra),
                )
                + name
                + extra
            )
        offset = self._local[index]
        zip64 = [entry.size, entry.size] if large else []
        if offset >= _LIMIT32:
            zip64.append(offset)
        extra = timestamp
        if zip64:
            extra += struct.pack(f"<HH{len(zip64)}Q", 0x0001, 8 * len(zip64), *zip64)
        return (
            _CENTRAL.pack(
                0x02014B50,
                _MADE_BY,
                _VERSION_ZIP64 if zip64 else _VERSION_STORED,
                _UTF8_FLAG,
                0,
                dos_time,
                dos_date,
                entry.crc32,
                _LIMIT32 if large else entry.size,
                _LIMIT32 if large else entry.size,
                len(name),
                len(extra),
                0,
                0,
                0,
                _EXTERNAL_ATTR,
                min(offset, _LIMIT32),
            )
            + name
            + extra
        )

    def _end_records(self, count: int, central_size: int) -> bytes:
        records = b""
        if self.zip64:
            records += _EOCD64.pack(
                0x06064B50,
                _EOCD64.size - 12,
                _MADE_BY,
                _VERSION_ZIP64,
                0,
                0,
                count,
                count,
                central_size,
                self.central_offset,
            )
            records += _LOCATOR64.pack(0x07064B50, 0, self.end_offset, 1)
        return records + _EOCD.pack(
            0x06054B50,
            0,
            0,
            min(count, _LIMIT16),
            min(count, _LIMIT16),
            min(central_size, _LIMIT32),
            min(self.central_offset, _LIMIT32),
            0,
        )


class ZipReader(SeekableReader):
    """A seekable view of a ZipStream; keeps at most one entry stream open at a time."""

    def __init__(self, archive: ZipStream) -> None:
        super().__init__()
        self.archive = archive
        self._header_key: tuple[str, int] | None = None
        self._header = b""
        self._index = -1
        self._stream: BinaryIO | None = None
        self._stream_position = 0

    def size(self) -> int:
        return self.archive.total_size

    def readinto(self, buffer: memoryview | bytearray) -> int:  # type: ignore[override]
        """Fill ``buffer`` as far as the archive goes (so read(n) gives n bytes before EOF)."""
        view = memoryview(buffer).cast("B")
        filled = 0
        while filled < len(view):
            chunk = self.chunk_at(self._position, len(view) - filled)
            if not chunk:
                break
            view[filled : filled + len(chunk)] = chunk
            filled += len(chunk)
            self._position += len(chunk)
        return filled

    def chunk_at(self, position: int, limit: int) -> bytes:
        """Up to ``limit`` bytes at ``position``, from one part of the archive; b"" at the
        end. Does not move the file position."""
        if position >= self.archive.total_size or limit <= 0:
            return b""
        kind, index, start, stop = self.archive.piece_at(position)
        count = min(limit, stop - position)
        if kind != "data":
            if self._header_key != (kind, index):
                self._header = self.archive.header(kind, index)
                self._header_key = (kind, index)
            return self._header[position - start : position - start + count]
        return self._read_entry(index, position - start, count)

    def _read_entry(self, index: int, offset: int, count: int) -> bytes:
        entry = self.archive.entry(index)
        if self._index != index or self._stream is None:
            self._close_stream()
            self._stream = entry.open()
            self._index = index
            self._stream_position = 0
        if self._stream_position != offset:
            self._stream.seek(offset)
            self._stream_position = offset
        data = self._stream.read(min(count, self.archive.block_size))
        self._stream_position += len(data)
        if not data:
            raise EntrySizeError(f"{entry.path!r} ended after {offset} of {entry.size} bytes")
        if self._stream_position == entry.size and self._stream.read(1):
            raise EntrySizeError(f"{entry.path!r} holds more than its {entry.size} bytes")
        return data

    def _close_stream(self) -> None:
        if self._stream is not None:
            self._stream.close()
            self._stream = None
            self._index = -1

    def close(self) -> None:
        self._close_stream()
        super().close()


def _local_extra_size(size: int) -> int:
    return 9 + (20 if size >= _LIMIT32 else 0)


def _central_extra_size(size: int, offset: int) -> int:
    fields = (2 if size >= _LIMIT32 else 0) + (1 if offset >= _LIMIT32 else 0)
    return 9 + (4 + 8 * fields if fields else 0)


def _times(modified: dt.datetime) -> tuple[int, int, int]:
    """(DOS time, DOS date, Unix time) of a modification time; naive means UTC. DOS fields
    count in 2-second steps from 1980 to 2107; the Unix time is clamped to 0..2**31-1."""
    moment = modified if modified.tzinfo else modified.replace(tzinfo=dt.UTC)
    moment = moment.astimezone(dt.UTC)
    unix_time = min(max(int(moment.timestamp()), 0), 0x7FFFFFFF)
    dos = min(max(moment, _DOS_MIN), _DOS_MAX)
    dos_time = (dos.hour << 11) | (dos.minute << 5) | (dos.second // 2)
    dos_date = ((dos.year - 1980) << 9) | (dos.month << 5) | dos.day
    return dos_time, dos_date, unix_time


def _opener(data: bytes) -> Callable[[], BinaryIO]:
    return lambda: io.BytesIO(data)
