"""The streaming zip writer: readable by zipfile and unzip, deterministic, any range on its own,
ZIP64 only when needed (many entries, beyond 4 GiB), unsafe names refused."""

from __future__ import annotations

import dataclasses
import datetime as dt
import functools
import io
import json
import os
import random
import re
import shutil
import struct
import subprocess
import unicodedata
import uuid
import zipfile
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

import pytest

from davserver.errors import InvalidName
from davserver.services import package_archive
from davserver.services.package_archive import PackageView, PinnedItem, manifest_bytes
from davserver.services.zipstream import (
    MANIFEST_NAME,
    ChunkStream,
    EntrySizeError,
    ZipEntry,
    ZipStream,
    archive_names,
    check_archive_path,
    safe_archive_name,
)

WHEN = dt.datetime(2024, 5, 6, 7, 8, 10, tzinfo=dt.UTC)
GIB = 1 << 30


def entry(path: str, data: bytes, modified: dt.datetime = WHEN) -> ZipEntry:
    return ZipEntry(path, len(data), zlib.crc32(data), modified, lambda: io.BytesIO(data))


def build(archive: ZipStream) -> bytes:
    return b"".join(archive)


def sample_entries() -> list[ZipEntry]:
    rng = random.Random(5)
    return [
        entry("readme.txt", b"hello, zip\n"),
        entry("empty.txt", b""),
        entry("Grüße/naïve ☃.txt", b"unicode name"),
        entry("deep/er/still/one block.bin", rng.randbytes(256 * 1024)),
        entry("deep/two blocks and a bit.bin", rng.randbytes(512 * 1024 + 17)),
        entry("another empty", b""),
        entry(".hidden", b"dot file", dt.datetime(2001, 2, 3, 4, 5, 6, tzinfo=dt.UTC)),
    ]


MANIFEST = json.dumps({"items": ["readme.txt"]}).encode()


def test_zipfile_reads_every_entry_and_the_manifest_last() -> None:
    entries = sample_entries()
    archive = ZipStream(entries, manifest=MANIFEST)
    data = build(archive)
    assert len(data) == archive.total_size

    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        assert zf.testzip() is None
        infos = zf.infolist()
        assert [i.filename for i in infos] == [e.path for e in entries] + [MANIFEST_NAME]
        for e in entries:
            with e.open() as fh:
                assert zf.read(e.path) == fh.read()
        assert zf.read(MANIFEST_NAME) == MANIFEST
        for info in infos:
            assert info.compress_type == zipfile.ZIP_STORED
            assert info.flag_bits & 0x0800  # UTF-8 names
            assert info.external_attr >> 16 == 0o100644
        assert infos[0].date_time == (2024, 5, 6, 7, 8, 10)
        assert infos[6].date_time == (2001, 2, 3, 4, 5, 6)
    # A small archive stays plain zip: version 1.0 headers, no ZIP64 records.
    assert not archive.zip64
    assert b"PK\x06\x06" not in data[archive.end_offset :]
    assert struct.unpack_from("<H", data, 4)[0] == 10


def test_times_outside_the_dos_range_are_clamped() -> None:
    old = entry("old", b"1", dt.datetime(1970, 1, 1, tzinfo=dt.UTC))
    naive = entry("naive", b"2", dt.datetime(2020, 1, 2, 3, 4, 5))  # naive: taken as UTC
    with zipfile.ZipFile(io.BytesIO(build(ZipStream([old, naive])))) as zf:
        assert zf.getinfo("old").date_time == (1980, 1, 1, 0, 0, 0)
        assert zf.getinfo("naive").date_time == (2020, 1, 2, 3, 4, 4)


def unzip_or_skip() -> str:
    found = shutil.which("unzip")
    if found:
        return found
    if os.environ.get("CI"):
        pytest.fail("CI is set, so unzip must be installed (./dev test installs it)")
    pytest.skip("unzip is not installed (apt-get install unzip, or ./dev test as root)")


def test_unzip_tests_and_extracts_it_with_exact_times(tmp_path: Path) -> None:
    unzip = unzip_or_skip()
    entries = sample_entries()
    path = tmp_path / "package.zip"
    path.write_bytes(build(ZipStream(entries, manifest=MANIFEST)))

    tested = subprocess.run([unzip, "-t", str(path)], capture_output=True, text=True)
    assert tested.returncode == 0, tested.stdout + tested.stderr
    assert "No errors detected" in tested.stdout

    out = tmp_path / "out"
    subprocess.run([unzip, "-q", str(path), "-d", str(out)], check=True)
    for e in entries:
        extracted = out / e.path
        with e.open() as fh:
            assert extracted.read_bytes() == fh.read()
        assert extracted.stat().st_mtime == e.modified.timestamp()  # from the UT extra field
    assert (out / MANIFEST_NAME).read_bytes() == MANIFEST


def test_the_same_entries_give_the_same_bytes() -> None:
    first = ZipStream(sample_entries(), manifest=MANIFEST)
    again = ZipStream(sample_entries(), manifest=MANIFEST)
    assert build(first) == build(again) == build(first)
    assert first.total_size == again.total_size


class CountingOpens:
    """Wraps entries so a test can see which of them were opened, and how they were read."""

    def __init__(self, entries: list[ZipEntry]) -> None:
        self.opened: list[str] = []
        self.largest_read = 0
        self.entries = [
            ZipEntry(e.path, e.size, e.crc32, e.modified, self._wrap(e)) for e in entries
        ]

    def _wrap(self, original: ZipEntry) -> Callable[[], BinaryIO]:
        counter = self

        class Recording(io.BytesIO):
            def read(self, size: int | None = -1) -> bytes:
                counter.largest_read = max(counter.largest_read, size or 0)
                return super().read(size)

        def opener() -> BinaryIO:
            self.opened.append(original.path)
            with original.open() as fh:
                return Recording(fh.read())

        return opener


def test_every_range_equals_the_slice_of_the_whole() -> None:
    entries = sample_entries() + [entry(f"tiny/{i}", bytes([i]) * (i % 3)) for i in range(40)]
    archive = ZipStream(entries, manifest=MANIFEST, block_size=4096)
    whole = build(archive)
    size = archive.total_size
    # Every part boundary, one byte either side, and random ranges of every length scale.
    edges: set[int] = set()
    position = 0
    while position < size:
        _kind, _index, _start, stop = archive.piece_at(position)
        edges.update({stop - 1, stop, stop + 1})
        position = stop
    rng = random.Random(11)
    ranges = [(e, min(e + rng.randrange(1, 300), size - 1)) for e in sorted(edges) if e < size]
    for _ in range(400):
        start = rng.randrange(size)
        length = rng.choice([1, 2, 29, 30, 31, 4096, 70_000, size])
        ranges.append((start, min(size - 1, start + length - 1)))
    ranges += [(0, 0), (size - 1, size - 1), (0, size - 1), (size - 22, size - 1)]
    with archive.open() as reader:
        for start, end in ranges:
            assert b"".join(archive.iter_range(start, end)) == whole[start : end + 1]
            reader.seek(start)
            assert reader.read(end + 1 - start) == whole[start : end + 1]
    with pytest.raises(ValueError):
        list(archive.iter_range(0, size))


def test_a_range_opens_only_the_entries_it_overlaps_and_reads_in_blocks() -> None:
    counting = CountingOpens(sample_entries())
    archive = ZipStream(counting.entries, block_size=64 * 1024)
    whole = build(archive)
    counting.opened.clear()
    _kind, index, start, stop = archive.piece_at(archive.total_size // 2)
    target = counting.entries[index].path
    chunks = list(archive.iter_range(start + 10, stop - 10))
    assert b"".join(chunks) == whole[start + 10 : stop - 10 + 1]
    assert counting.opened == [target]
    assert counting.largest_read <= 64 * 1024
    assert max(len(c) for c in chunks) < 2 * 64 * 1024


def test_reading_names_every_entry_a_range_opens() -> None:
    # A package's zip checks the blobs of the entries a range reads, not of all of them (a
    # resumed download of a zip of 64,000 files stat'ed every blob): none may be missed.
    counting = CountingOpens(sample_entries())
    archive = ZipStream(counting.entries, manifest=MANIFEST)
    size = archive.total_size
    rng = random.Random(11)
    ranges = [(0, size - 1), (archive.central_offset, size - 1), (size - 22, size - 1)]
    ranges += [sorted((rng.randrange(size), rng.randrange(size))) for _ in range(300)]
    for start, end in ranges:
        counting.opened.clear()
        list(archive.iter_range(start, end))
        named = {archive.entry(i).path for i in archive.reading(start, end)}
        assert set(counting.opened) <= named, (start, end)
    assert archive.reading(0, size - 1) == range(len(counting.entries) + 1)  # the manifest too
    assert archive.reading(archive.central_offset, size - 1) == range(0)
    _kind, index, start, stop = archive.piece_at(archive.central_offset // 2)
    assert archive.reading(start, stop - 1) == range(index, index + 1)


@pytest.mark.parametrize(
    "header, bounds",
    [
        (None, (0, 999)),
        ("bytes=0-", (0, 999)),
        ("bytes=10-19", (10, 19)),
        ("bytes=990-5000", (990, 999)),
        ("bytes=-10", (990, 999)),
        ("bytes=-5000", (0, 999)),
        ("bytes=1000-", (1000, 999)),  # past the end: nothing
        ("bytes=0-4,10-14", (0, 999)),  # not one range: the whole body
        ("items=0-4", (0, 999)),
        ("bytes=-", (0, 999)),
    ],
)
def test_range_bounds(header: str | None, bounds: tuple[int, int]) -> None:
    assert package_archive.range_bounds(header, 1000) == bounds


@pytest.mark.parametrize("count, zip64", [(65_534, False), (65_535, True)])
def test_zip64_end_records_start_at_65535_entries(count: int, zip64: bool) -> None:
    archive = ZipStream([entry(f"{i}", b"") for i in range(count)])
    assert archive.zip64 is zip64
    tail = b"".join(archive.iter_range(archive.end_offset, archive.total_size - 1))
    assert tail.startswith(b"PK\x06\x06") is zip64


@functools.cache
def many_entries_archive() -> bytes:
    entries = [entry(f"d{i // 1000}/f{i}.txt", str(i).encode()) for i in range(70_000)]
    archive = ZipStream(entries, manifest=MANIFEST)
    assert archive.zip64
    return build(archive)


def test_more_than_65535_entries_are_read_back() -> None:
    with zipfile.ZipFile(io.BytesIO(many_entries_archive())) as zf:
        infos = zf.infolist()
        assert len(infos) == 70_001
        for i in (0, 1, 65_534, 65_535, 65_536, 69_999):
            assert zf.read(f"d{i // 1000}/f{i}.txt") == str(i).encode()
        assert zf.read(MANIFEST_NAME) == MANIFEST


def test_unzip_tests_an_archive_of_70000_entries(tmp_path: Path) -> None:
    unzip = unzip_or_skip()
    path = tmp_path / "many.zip"
    path.write_bytes(many_entries_archive())
    tested = subprocess.run([unzip, "-tq", str(path)], capture_output=True, text=True)
    assert tested.returncode == 0, tested.stdout + tested.stderr
    assert "No errors detected" in tested.stdout


# ------------------------------------------------------------------- beyond 4 GiB, lazily


class Zeros(io.RawIOBase):
    """``size`` zero bytes, produced on demand: nothing is stored."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.position = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        self.position = offset if whence == io.SEEK_SET else self.size + offset
        return self.position

    def readinto(self, buffer: memoryview | bytearray) -> int:  # type: ignore[override]
        count = max(0, min(len(buffer), self.size - self.position))
        buffer[:count] = bytes(count)
        self.position += count
        return count


def crc32_of_zeros(length: int) -> int:
    """zlib.crc32(bytes(length)) without the bytes: zlib's crc32_combine shift operator
    applied to the initial register (GF(2) matrix powers, one squaring per bit of length)."""

    def times(matrix: list[int], vector: int) -> int:
        result, row = 0, 0
        while vector:
            if vector & 1:
                result ^= matrix[row]
            vector >>= 1
            row += 1
        return result

    def square(matrix: list[int]) -> list[int]:
        return [times(matrix, matrix[n]) for n in range(32)]

    register = 0xFFFFFFFF
    operator = [0xEDB88320] + [1 << n for n in range(31)]  # one zero bit
    for _ in range(3):
        operator = square(operator)  # 2, 4, 8 bits: one zero byte
    while length:
        if length & 1:
            register = times(operator, register)
        length >>= 1
        operator = square(operator)
    return register ^ 0xFFFFFFFF


def zeros(path: str, size: int) -> ZipEntry:
    return ZipEntry(path, size, crc32_of_zeros(size), WHEN, lambda: Zeros(size))  # type: ignore[arg-type, return-value]


def test_crc32_of_zeros_matches_zlib() -> None:
    for length in (0, 1, 7, 8, 255, 4096, 1_000_003):
        assert crc32_of_zeros(length) == zlib.crc32(bytes(length))


def test_an_archive_beyond_4_gib_is_laid_out_with_zip64() -> None:
    big = 4 * GIB + 10  # its size needs ZIP64 fields
    entries = [
        entry("first.txt", b"before the big one"),
        zeros("big.bin", big),
        entry("after.txt", b"its header lies beyond 4 GiB"),  # its offset needs ZIP64
        zeros("second.bin", 5),
    ]
    archive = ZipStream(entries, manifest=MANIFEST)
    assert archive.zip64 and archive.total_size > big

    with archive.open() as reader, zipfile.ZipFile(reader) as zf:  # type: ignore[arg-type]
        infos = {i.filename: i for i in zf.infolist()}
        sizes = infos["big.bin"].file_size, infos["big.bin"].compress_size, infos["big.bin"].CRC
        assert sizes == (big, big, crc32_of_zeros(big))
        assert infos["after.txt"].header_offset > 0xFFFFFFFF
        assert zf.read("after.txt") == b"its header lies beyond 4 GiB"
        assert zf.read("second.bin") == bytes(5)
        assert zf.read(MANIFEST_NAME) == MANIFEST
        with zf.open("big.bin") as member:
            assert member.read(1000) == bytes(1000)

    # The big entry's local header: version 4.5, sizes in its ZIP64 extra field.
    _kind, index, start, data_start = archive.piece_at(archive.piece_at(0)[3] + 18)
    assert archive.entries[index].path == "big.bin"
    header = b"".join(archive.iter_range(start, data_start - 1))
    version, csize, usize, name_len = struct.unpack_from("<H12xII H", header, 4)
    assert (version, csize, usize) == (45, 0xFFFFFFFF, 0xFFFFFFFF)
    extra = header[30 + name_len :]
    zip64_field = extra[extra.index(struct.pack("<HH", 1, 16)) :]
    assert struct.unpack_from("<HHQQ", zip64_field) == (1, 16, big, big)
    # Its last bytes and the next header, straight across the boundary.
    boundary = b"".join(archive.iter_range(data_start + big - 4, data_start + big + 3))
    assert boundary == bytes(4) + b"PK\x03\x04"


# ---------------------------------------------------------------------------- names


@pytest.mark.parametrize(
    "path",
    [
        "",
        "../evil",
        "a/../../evil",
        "a/..",
        "..",
        ".",
        "a/./b",
        "/etc/passwd",
        "//server/share/x",
        "C:/Windows/evil",
        "c:evil",
        "x:y",
        "a\\b",
        "..\\evil",
        "a//b",
        "folder/",
        "a/.. /b",
        "a/ ../b",
        "a/. . ./b",
        "nul\x00byte",
        "line\nbreak",
        "del\x7f",
        "c1\x85control",
        "lone \ud800 surrogate",
        "x" * 70_000,
    ],
)
def test_unsafe_names_are_refused(path: str) -> None:
    with pytest.raises(InvalidName):
        check_archive_path(path)
    with pytest.raises(InvalidName):
        ZipStream([entry(path, b"x")])


@pytest.mark.parametrize(
    "path",
    ["a", "Grüße/naïve ☃.txt", ".hidden", "..two dots", "a.b/c..d", "10:30 notes", "a b/c d"],
)
def test_safe_names_pass(path: str) -> None:
    assert check_archive_path(path) == path


@pytest.mark.parametrize(
    "paths, said",
    [
        (["a.txt", "a.txt"], "twice"),
        (["dir/a.txt", "dir/a.txt"], "twice"),
        (["Report.TXT", "report.txt"], "twice"),  # one file on Windows and macOS
        (["DIR/a", "dir/a"], "twice"),
        ([unicodedata.normalize("NFC", "é.txt"), unicodedata.normalize("NFD", "é.txt")], "twice"),
        (["a", "a/b"], "needs 'a' to be a folder"),  # a file where a folder must be
        # A file where a folder is: it said "in the archive twice" of a path given once.
        (["a/b", "a"], "'a' is a folder of the archive"),
        (["x/y/z", "X/Y"], "'X/Y' is a folder of the archive"),
    ],
)
def test_duplicate_and_clashing_names_are_refused(paths: list[str], said: str) -> None:
    with pytest.raises(InvalidName, match=re.escape(said)):
        ZipStream([entry(p, b"x") for p in paths])


def test_archive_names_are_safe_unique_and_independent_of_order() -> None:
    names = ["b.txt", "B.TXT", ".env", ".ENV", "a\\b", "...", "x\x85y", "b (2).txt", "README"]
    safe = archive_names(names)
    # Taken in code-point order: "B.TXT" before "b (2).txt" before "b.txt".
    assert safe == [
        "b (3).txt",
        "B.TXT",
        ".env (2)",
        ".ENV",
        "a_b",
        "_...",
        "x_y",
        "b (2).txt",
        "README",
    ]
    assert archive_names(list(reversed(names))) == list(reversed(safe))
    ZipStream([entry(f"top/{name}", b"x") for name in safe])  # every one accepted
    assert safe_archive_name("C:", first=True) == "C_" and safe_archive_name("C:") == "C:"


def test_the_manifest_name_is_reserved_only_when_there_is_a_manifest() -> None:
    with pytest.raises(InvalidName):
        ZipStream([entry(MANIFEST_NAME, b"{}")], manifest=MANIFEST)
    assert ZipStream([entry(MANIFEST_NAME, b"{}")]).total_size > 0


# --------------------------------------------------------------------- wrong entry sizes


@pytest.mark.parametrize("actual", [b"shrt", b"much too long"])
def test_an_entry_whose_stream_differs_from_its_size_is_an_error(actual: bytes) -> None:
    wrong = ZipEntry("wrong.bin", 8, 0, WHEN, lambda: io.BytesIO(actual))
    with pytest.raises(EntrySizeError):
        build(ZipStream([wrong]))


def test_an_empty_archive_is_valid() -> None:
    archive = ZipStream([])
    with zipfile.ZipFile(io.BytesIO(build(archive))) as zf:
        assert zf.infolist() == []
    assert archive.total_size == 22


# --- the manifest -----------------------------------------------------------------------------


def _package(items: int, description: str | None, **item: Any) -> PackageView:
    when = dt.datetime(2026, 11, 27, 10, 0, 0, 123456, tzinfo=dt.UTC)
    return PackageView(
        id=uuid.uuid4(),
        name='q"uoted\\ näme ✓',
        description=description,  # type: ignore[arg-type]
        created_by=uuid.uuid4(),
        owner="alice",
        created_at=when,
        expires_at=None,
        modified_at=when,
        items=tuple(
            PinnedItem(
                id=uuid.uuid4(),
                path=item.get("path", f'dir/ünïcode {i} "q" \\ \t.txt'),
                node_id=uuid.uuid4(),
                version_id=None if item.get("empty") else uuid.uuid4(),
                version_no=None if item.get("empty") else i + 1,
                size=0 if item.get("empty") else 2**40 + i,
                blob_id=None,
                sha256="e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
                crc32=0,
                storage_key=None,
                mtime=when + dt.timedelta(days=i),
                added_at=when,
            )
            for i in range(items)
        ),
    )


@pytest.mark.parametrize(
    ("items", "description", "item"),
    [
        (0, None, {}),
        (0, "", {}),
        (1, "one", {}),
        (3, 'line\nbreak "and" \\ ✓ \u2028', {}),
        (2, None, {"empty": True}),
        (2, "emoji", {"path": "😀/𝄞.txt"}),
    ],
)
def test_the_manifest_is_what_json_dumps_writes(
    items: int, description: str | None, item: dict[str, Any]
) -> None:
    """manifest_bytes writes a file at a time, to keep its memory to the bytes; they must stay
    those of json.dumps, as the ETag of every existing zip depends on them."""
    package = _package(items, description, **item)
    expected = json.dumps(
        package_archive._manifest_document(package), indent=2, sort_keys=True, ensure_ascii=False
    )
    assert manifest_bytes(package) == (expected + "\n").encode()


def test_a_chunk_stream_reads_seeks_and_makes_its_chunks_again_when_it_goes_back() -> None:
    chunks = [b"abc", b"", b"defgh", b"i", b"jklmnop"]
    whole = b"".join(chunks)
    made = []

    def make() -> list[bytes]:
        made.append(1)
        return chunks

    stream = ChunkStream(make)
    assert stream.read() == whole and stream.read(1) == b""
    for start, count in [(4, 3), (0, 16), (9, 100), (2, 1), (len(whole), 5), (7, 0)]:
        assert stream.seek(start) == start
        assert stream.read(count) == whole[start : start + count]
    assert len(made) == 6  # once at first, then for each of the five seeks backward
    assert stream.seek(3) == 3 and stream.seek(2, io.SEEK_CUR) == 5 and stream.read(2) == b"fg"


def test_a_package_zip_makes_its_manifest_when_read_with_the_etag_of_its_bytes() -> None:
    """The manifest is not held by the archive, yet it and the ETag are those of its bytes
    (the ETags of existing zips must not change)."""
    named = _package(3, "three", empty=True)
    items = [dataclasses.replace(it, path=f'ünïcode "{i}".txt') for i, it in enumerate(named.items)]
    package = dataclasses.replace(named, items=tuple(items))
    archive = package_archive.build_archive(package, lambda key: io.BytesIO(b""))
    manifest = manifest_bytes(package)
    assert archive.etag == package_archive.layout_etag(package, manifest)
    assert archive.etag == package_archive.layout_etag(package, iter([manifest[:7], manifest[7:]]))
    with zipfile.ZipFile(io.BytesIO(build(archive.stream))) as zf:
        assert zf.testzip() is None
        assert zf.read(MANIFEST_NAME) == manifest
    assert not any(isinstance(value, bytes) and manifest in value for value in vars_of(archive))


def vars_of(archive: package_archive.PackageArchive) -> list[Any]:
    """The attribute values of the archive's stream, and what its manifest's opener holds."""
    opener = archive.stream.entries[-1].open
    cells = [cell.cell_contents for cell in getattr(opener, "__closure__", None) or ()]
    return [*vars(archive.stream).values(), *cells]
