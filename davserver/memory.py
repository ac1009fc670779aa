"""Keeping the server's resident memory flat (glibc only; elsewhere these do nothing).

glibc gives threads their own malloc arenas (up to 8 per core) and keeps freed memory mapped
in them, so a server whose threads each build a large PROPFIND answer once ends up holding
every arena's peak: measured here, 40 PROPFINDs of 2,000 members took RSS from 121 to
208 MiB with the default, and from 95 to 106 MiB and then flat with two arenas.

glibc also raises its mmap threshold to the size of the largest block freed so far (up to 32 MiB)
and its trim threshold to twice that. After the start-up's argon2 hash (19 MiB) every later one,
and every multistatus of a big folder, was carved from a thread's arena, and the freed space at
the top of that arena stayed resident: malloc_trim shrinks only the main arena's top. Measured
here, the first login took RSS from 70 to 89 MiB for good. Fixed thresholds keep large blocks in
their own mappings, returned when freed.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

log = logging.getLogger(__name__)

# mallopt parameter numbers in glibc's malloc.h
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_M_ARENA_MAX = -8
# Above the streaming block size (256 KiB by default), so streaming does not map and unmap a
# block per read; below an argon2 hash (19 MiB) and a big folder's multistatus (7.7 MB for
# 10,000 members).
MMAP_THRESHOLD = 1024 * 1024
TRIM_THRESHOLD = 2 * MMAP_THRESHOLD  # the ratio glibc keeps when it moves them itself


def _libc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    if not name:
        return None
    try:
        libc = ctypes.CDLL(name)
    except OSError:
        return None
    return libc if hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim") else None


def limit_malloc_arenas(count: int) -> None:
    """Let at most ``count`` malloc arenas exist (0 leaves glibc's default)."""
    libc = _libc()
    if libc is None or count <= 0:
        return
    if libc.mallopt(_M_ARENA_MAX, count) != 1:
        log.warning("could not limit malloc arenas to %d", count)


def fix_malloc_thresholds() -> None:
    """Stop glibc from raising its mmap and trim thresholds as large blocks come and go."""
    libc = _libc()
    if libc is None:
        return
    for param, value in ((_M_MMAP_THRESHOLD, MMAP_THRESHOLD), (_M_TRIM_THRESHOLD, TRIM_THRESHOLD)):
        if libc.mallopt(param, value) != 1:
            log.warning("could not set malloc parameter %d to %d", param, value)


def release_free_memory() -> None:
    """Hand memory that is free but still mapped back to the operating system."""
    libc = _libc()
    if libc is not None:
        libc.malloc_trim(0)
