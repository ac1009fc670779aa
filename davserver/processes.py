"""Forked child processes: ``davserver serve``'s workers and housekeeping sweeps, and the
schema migration at its start.

A child runs one piece of work and leaves with ``os._exit``: the parent's objects were copied
into it, and none of their finalizers, atexit handlers or open database connections may run
there. The kernel stops a child whose parent dies (``PR_SET_PDEATHSIG``). Linux only.
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import sys
from collections.abc import Callable

log = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1


def fork_child(work: Callable[[], None]) -> int:
    """Fork a child that runs ``work`` and leaves: exit status 0, or 1 when ``work`` raised (the
    error is logged). Returns the child's pid."""
    sys.stdout.flush()
    sys.stderr.flush()
    parent = os.getpid()
    pid = os.fork()
    if pid == 0:
        _run_child(parent, work)  # never returns
    return pid


def run_in_child(work: Callable[[], None]) -> int:
    """``work`` in a forked child (``fork_child``), waited for; the child's exit code."""
    _, status = os.waitpid(fork_child(work), 0)
    return os.waitstatus_to_exitcode(status)


def _run_child(parent: int, work: Callable[[], None]) -> None:
    """The child's side of a fork: ``work``, then leave without unwinding."""
    status = 1
    try:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        # A hangup is the parent's to act on (over TLS it passes SIGHUP on to the workers, which
        # set their own handler); a child ends with its parent (_stop_with_parent).
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        _stop_with_parent(parent)
        work()
        status = 0
    except BaseException:
        log.exception("process %d failed", os.getpid())
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(status)


def _stop_with_parent(parent: int) -> None:
    """Have the kernel send SIGTERM when the parent dies (and check it has not already)."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0) != 0:
        log.warning("prctl(PR_SET_PDEATHSIG) failed: errno %d", ctypes.get_errno())
    if os.getppid() != parent:
        os._exit(0)
