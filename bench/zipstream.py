"""Streaming zip benchmark: a 2 GiB package through ``davserver.services.zipstream``.

The entries are synthetic: 2,000 files of 64 KiB and 256 MiB files for the rest, like a real
package. Their bytes come from two sources in turn: "memory" (a 1 MiB pattern served lazily,
which measures the writer alone) and "disk" (real files, one per distinct size, that every
entry of that size opens, so the run costs little disk yet makes the open/seek/read calls a
package of blob files makes; after the first pass they come from the page cache). Each source
is streamed twice: whole, as a GET iterates it, and from a third of the way through the
seekable reader, as a resumed Range request reads it. Every byte is consumed. Prints MB/s per
pass and the process's peak RSS before and after, which shows that memory stays flat.

    .venv/bin/python bench/zipstream.py               # 2 GiB, a few seconds
    .venv/bin/python bench/zipstream.py --gib 0.25    # quicker
"""

from __future__ import annotations

import argparse
import datetime as dt
import io
import resource
import sys
import tempfile
import time
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from davserver.services.zipstream import BLOCK_SIZE, ZipEntry, ZipStream

PATTERN = bytes((i * 2654435761 >> 13) & 0xFF for i in range(1 << 20))
WHEN = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


class PatternStream(io.RawIOBase):
    """``size`` bytes of the repeating pattern, read on demand (seekable)."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.position = 0
        self.view = memoryview(PATTERN)

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        self.position = offset if whence == io.SEEK_SET else self.size + offset
        return self.position

    def read(self, size: int | None = -1) -> bytes:
        remaining = self.size - self.position
        count = remaining if size is None or size < 0 else min(size, remaining)
        start = self.position % len(PATTERN)
        count = min(count, len(PATTERN) - start)  # a short read is fine for a stream
        self.position += count
        return bytes(self.view[start : start + count])


_crcs: dict[int, int] = {}


def crc_of(size: int) -> int:
    if size not in _crcs:
        crc = 0
        stream = PatternStream(size)
        while block := stream.read(1 << 20):
            crc = zlib.crc32(block, crc)
        _crcs[size] = crc
    return _crcs[size]


def opener(size: int) -> Callable[[], BinaryIO]:
    return lambda: PatternStream(size)  # type: ignore[return-value]


def file_opener(folder: Path, size: int) -> Callable[[], BinaryIO]:
    """Opens a real file of ``size`` pattern bytes, written on first use."""
    path = folder / f"{size}.bin"
    if not path.exists():
        with open(path, "wb") as fh, PatternStream(size) as stream:
            while block := stream.read(1 << 20):
                fh.write(block)
    return lambda: open(path, "rb")


def synthetic_entries(
    total: int, make_opener: Callable[[int], Callable[[], BinaryIO]]
) -> list[ZipEntry]:
    """2,000 files of 64 KiB (about 125 MiB), the rest in 256 MiB files."""
    sizes = [64 * 1024] * 2000
    left = total - sum(sizes)
    while left > 0:
        sizes.append(min(256 << 20, left))
        left -= sizes[-1]
    openers = {size: make_opener(size) for size in set(sizes)}
    return [
        ZipEntry(
            f"small/{i:04d}.bin" if size == 64 * 1024 else f"large/{i:04d}.bin",
            size,
            crc_of(size),
            WHEN,
            openers[size],
        )
        for i, size in enumerate(sizes)
    ]


def run(source: str, entries: list[ZipEntry], block: int) -> None:
    started = time.perf_counter()
    archive = ZipStream(entries, manifest=b'{"bench": true}', block_size=block)
    layout = time.perf_counter() - started

    started = time.perf_counter()
    produced = sum(len(chunk) for chunk in archive)
    whole = time.perf_counter() - started
    assert produced == archive.total_size

    started = time.perf_counter()
    produced = 0
    with archive.open() as reader:
        reader.seek(archive.total_size // 3)
        while chunk := reader.read(block):
            produced += len(chunk)
    ranged = time.perf_counter() - started
    print(
        f"{source:<7} layout {layout * 1000:5.1f} ms   whole (GET) "
        f"{archive.total_size / whole / 1e6:7.0f} MB/s   from 1/3 (Range) "
        f"{produced / ranged / 1e6:7.0f} MB/s"
    )


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gib", type=float, default=2.0, help="payload size in GiB (default 2)")
    parser.add_argument("--block", type=int, default=BLOCK_SIZE, help="block size in bytes")
    args = parser.parse_args()

    total = int(args.gib * (1 << 30))
    memory = synthetic_entries(total, opener)
    rss_before = peak_rss_mib()
    archive_size = ZipStream(memory, manifest=b'{"bench": true}').total_size
    print(f"entries: {len(memory) + 1}, archive: {archive_size / 1e6:.1f} MB")
    print(f"peak RSS before streaming: {rss_before:.1f} MiB")
    run("memory", memory, args.block)
    with tempfile.TemporaryDirectory(prefix="zipbench-") as folder:
        disk = synthetic_entries(total, lambda size: file_opener(Path(folder), size))
        run("disk", disk, args.block)
    rss_after = peak_rss_mib()
    print(f"peak RSS after streaming:  {rss_after:.1f} MiB (+{rss_after - rss_before:.1f} MiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
