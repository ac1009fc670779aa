"""With fixed malloc thresholds, a large block freed by a worker thread leaves the process."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from davserver.memory import _libc

# In a child, so the mallopt calls do not change the test process. A 20 MiB block (an argon2
# hash takes 19 MiB) is freed once in the main thread, which makes glibc raise its thresholds
# past it; then a worker thread allocates, touches and frees one: the growth left behind is
# printed in KiB.
_SCRIPT = textwrap.dedent(
    """
    import ctypes, sys, threading
    from davserver.memory import fix_malloc_thresholds, limit_malloc_arenas

    libc = ctypes.CDLL("libc.so.6")
    libc.malloc.restype = ctypes.c_void_p
    libc.free.argtypes = [ctypes.c_void_p]
    SIZE = 20 * 1024 * 1024

    def rss():
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))

    def block():
        p = libc.malloc(SIZE)
        ctypes.memset(p, 1, SIZE)
        libc.free(p)

    limit_malloc_arenas(2)
    block()
    if sys.argv[1] == "fixed":
        fix_malloc_thresholds()
    before = rss()
    worker = threading.Thread(target=block)
    worker.start()
    worker.join()
    print(rss() - before)
    """
)


def _growth_kib(mode: str) -> int:
    done = subprocess.run(
        [sys.executable, "-c", _SCRIPT, mode], capture_output=True, text=True, check=True
    )
    return int(done.stdout)


@pytest.mark.skipif(_libc() is None, reason="glibc only")
def test_a_large_block_freed_by_a_thread_is_returned() -> None:
    assert _growth_kib("default") > 15 * 1024  # the problem still exists without the fix
    assert _growth_kib("fixed") < 4 * 1024
