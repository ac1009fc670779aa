"""Several server processes on one port (``server.workers``).

One Python process runs on one core at a time (the GIL): its threads overlap waiting, not
computing. With ``server.workers`` above 1, ``davserver serve`` forks that many worker processes
after the migrations. Each builds its own application (engine, pool, caches) and listens on the
same address with ``SO_REUSEPORT``, so the kernel spreads new connections across them; a
keep-alive connection stays with the worker that accepted it. Everything the workers must share
(locks, sessions, tokens, throttling) already lives in the database, as it does for several
servers behind a load balancer.

The parent serves nothing. It holds the port (bound, not listening, so no connection waits on
it), replaces a worker that dies, passes SIGHUP on to the workers over TLS (each then reads its
certificate again), and on SIGTERM or SIGINT stops every worker, each after finishing its open
requests. It forks each housekeeping sweep into a child process of its own,
so a long sweep holds up neither a replacement nor a stop (which ends the sweep: its open
transaction rolls back). A child whose parent dies is stopped by the kernel
(``PR_SET_PDEATHSIG``).

Linux only: elsewhere ``SO_REUSEPORT`` does not balance connections (macOS) or is missing.
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import signal
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from types import FrameType

from davserver.app import Application
from davserver.config import ConfigError, Settings
from davserver.housekeeping import Housekeeper
from davserver.metrics import Board
from davserver.processes import fork_child
from davserver.server import OPEN_REQUESTS_GRACE_SECONDS, CannotListen, announce, serve
from davserver.tls import tls_enabled

log = logging.getLogger(__name__)

# A worker that dies this soon after it started counts as a failed start; after
# _FAILED_STARTS of those in a row the parent gives up instead of forking forever, unless
# other workers still serve: then it tries again after _RETRY_SECONDS, doubled each time up
# to _RETRY_MAX_SECONDS (a TLS key that does not match its renewed certificate yet, which
# the serving workers already survive, stopped the whole server when one of them died).
_QUICK_DEATH_SECONDS = 10.0
_FAILED_STARTS = 3
_RETRY_SECONDS = 5.0
_RETRY_MAX_SECONDS = 300.0
# How long workers get to finish their open requests after SIGTERM before they are killed:
# their own grace and a little more to close.
_STOP_GRACE_SECONDS = OPEN_REQUESTS_GRACE_SECONDS + 5.0
_START_TIMEOUT_SECONDS = 120.0
_TICK_SECONDS = 0.2


def worker_count(setting: int) -> int:
    """``server.workers`` as a number of processes (0: one per CPU); ConfigError where this
    system cannot run more than one."""
    workers = setting or os.cpu_count() or 1
    check_supported(workers)
    return workers


def check_supported(workers: int) -> None:
    if workers > 1 and not (sys.platform.startswith("linux") and hasattr(socket, "SO_REUSEPORT")):
        raise ConfigError(
            f"server.workers: {workers} worker processes need Linux (SO_REUSEPORT); "
            "on this system run one process per port behind a proxy instead"
        )


@dataclass
class _Workers:
    """The parent's side: the worker processes, when each started, and its slot of the
    metrics board (``start`` forks a worker for a slot; one that replaces a worker takes its
    slot, so the totals carry on)."""

    start: Callable[[int], int]
    started: dict[int, float] = field(default_factory=dict)
    slots: dict[int, int] = field(default_factory=dict)
    failed_starts: int = 0

    def spawn(self) -> int:
        taken = set(self.slots.values())
        slot = next(i for i in range(len(taken) + 1) if i not in taken)
        pid = self.start(slot)
        self.started[pid] = time.monotonic()
        self.slots[pid] = slot
        return pid

    def reap(self, other: Callable[[int, int], None] | None = None) -> list[tuple[int, int, float]]:
        """Workers that have exited: (pid, wait status, seconds they ran). Any other child
        that exited goes to ``other`` (pid, wait status)."""
        gone = []
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:  # no child at all
                break
            if pid == 0:
                break
            began = self.started.pop(pid, None)
            self.slots.pop(pid, None)
            if began is not None:
                gone.append((pid, status, time.monotonic() - began))
            elif other is not None:
                other(pid, status)
        return gone

    def signal_all(self, signum: int) -> None:
        for pid in self.started:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signum)

    def stop(self) -> None:
        """SIGTERM every worker, wait for them, SIGKILL those still there after the grace."""
        self.signal_all(signal.SIGTERM)
        deadline = time.monotonic() + _STOP_GRACE_SECONDS
        while self.started and time.monotonic() < deadline:
            self.reap()
            time.sleep(_TICK_SECONDS / 4)
        if self.started:
            log.warning("workers %s still running after SIGTERM: killed", sorted(self.started))
            self.signal_all(signal.SIGKILL)
            for pid in list(self.started):
                os.waitpid(pid, 0)
            self.started.clear()


@dataclass
class _Sweeps:
    """The parent's housekeeping: one sweep at a time, each in a child process (``start``),
    the next ``every`` seconds after the last one ended."""

    start: Callable[[], int]
    every: float
    pid: int | None = None
    due: float = field(default_factory=time.monotonic)

    def start_if_due(self) -> None:
        if self.every > 0 and self.pid is None and time.monotonic() >= self.due:
            self.pid = self.start()

    def ended(self, pid: int, status: int) -> None:
        if pid != self.pid:
            return
        self.pid = None
        self.due = time.monotonic() + self.every
        if status != 0:
            log.error("housekeeping process %d exited (%s)", pid, _describe(status))

    def stop(self) -> None:
        """End a running sweep now."""
        if self.pid is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGTERM)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(self.pid, 0)
        self.pid = None


def serve_workers(app: Application, settings: Settings, workers: int) -> int:
    """Serve with ``workers`` processes (from ``worker_count``) until SIGTERM or SIGINT; the exit
    status to return."""
    holder = _hold_port(settings.server.host, settings.server.port)
    host, port = settings.server.host, int(holder.getsockname()[1])
    ready_read, ready_write = os.pipe()

    def fork(child: Callable[[], None]) -> int:
        app.db.dispose()  # no open database connection may be shared with a child

        def in_child() -> None:
            holder.close()
            os.close(ready_read)
            child()

        return fork_child(in_child)

    def ready(_server: object) -> None:
        os.write(ready_write, b".")

    def worker(slot: int) -> None:
        app = Application(settings, metrics=board.slot(slot))
        serve(app, host, port, reuse_port=True, housekeeping=False, ready=ready)

    def sweep() -> None:
        os.close(ready_write)
        Housekeeper(app.services, settings.maintenance.housekeeping_seconds).sweep()

    board = Board(workers)  # shared with the workers: made before they are forked
    pool = _Workers(lambda slot: fork(lambda: worker(slot)))
    sweeps = _Sweeps(lambda: fork(sweep), settings.maintenance.housekeeping_seconds)
    stopping: list[int] = []

    def stop(signum: int, _frame: FrameType | None) -> None:
        stopping.append(signum)

    def reload(signum: int, _frame: FrameType | None) -> None:
        pool.signal_all(signum)  # each worker reads its certificate again

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    if tls_enabled(settings.server):
        signal.signal(signal.SIGHUP, reload)
    try:
        for _ in range(workers):
            pool.spawn()
        if not _wait_until_listening(pool, ready_read, workers, stopping):
            return 0 if stopping else 1
        announce(tls_enabled(settings.server), host, port, workers)
        log.info("worker processes %s listening", ", ".join(map(str, sorted(pool.started))))
        return _supervise(pool, sweeps, stopping)
    finally:
        sweeps.stop()
        pool.stop()
        os.close(ready_read)
        os.close(ready_write)
        holder.close()
        app.close()


def _hold_port(host: str, port: int) -> socket.socket:
    """Bind (without listening) the address the workers will share.

    Binding here makes a taken port fail before any worker starts, resolves port 0 to one port
    for all of them, and keeps the port while workers are replaced. A socket that does not
    listen receives no connections.

    The address is first bound without ``SO_REUSEPORT``: with it, the bind succeeded where
    another server's workers listened (another ``serve --workers`` on the same port, other
    settings), and the kernel then shared the connections between the two.
    """
    family, kind, proto, _name, address = socket.getaddrinfo(
        host, port, socket.AF_UNSPEC, socket.SOCK_STREAM, 0, socket.AI_PASSIVE
    )[0]
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(address)
        except OSError as exc:
            raise CannotListen(host, port, exc) from exc
        address = probe.getsockname()  # port 0: the one the kernel chose
    holder = socket.socket(family, kind, proto)
    holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        holder.bind(address)
    except OSError as exc:
        holder.close()
        raise CannotListen(host, port, exc) from exc
    return holder


def _wait_until_listening(
    pool: _Workers, ready_read: int, workers: int, stopping: list[int]
) -> bool:
    """True once every worker listens; False (after logging why) if one exits first."""
    listening = 0
    deadline = time.monotonic() + _START_TIMEOUT_SECONDS
    while listening < workers:
        if stopping:
            return False
        for pid, status, _ran in pool.reap():
            log.error("worker %d exited (%s) before listening", pid, _describe(status))
            return False
        if time.monotonic() > deadline:
            log.error("workers did not listen within %.0f s", _START_TIMEOUT_SECONDS)
            return False
        readable, _, _ = select.select([ready_read], [], [], _TICK_SECONDS)
        if readable:
            listening += len(os.read(ready_read, workers))
    return True


def _supervise(pool: _Workers, sweeps: _Sweeps, stopping: list[int]) -> int:
    """Sweep now and then, replace workers that die, until a signal; the exit status."""
    later: list[float] = []  # when to start the replacements put off (see _FAILED_STARTS)
    while not stopping:
        sweeps.start_if_due()
        for pid, status, ran in pool.reap(sweeps.ended):
            if stopping:
                break
            if ran < _QUICK_DEATH_SECONDS:
                pool.failed_starts += 1
            else:
                pool.failed_starts = 0
            if pool.failed_starts >= _FAILED_STARTS and not pool.started:
                log.error(
                    "worker %d exited (%s) %.1f s after it started, the %d. in a row: stopping",
                    pid,
                    _describe(status),
                    ran,
                    pool.failed_starts,
                )
                return 1
            if pool.failed_starts >= _FAILED_STARTS:
                times = pool.failed_starts - _FAILED_STARTS
                delay = min(_RETRY_MAX_SECONDS, _RETRY_SECONDS * 2**times)
                later.append(time.monotonic() + delay)
                log.error(
                    "worker %d exited (%s) %.1f s after it started, the %d. in a row; "
                    "the other workers serve on, another starts in %.0f s",
                    pid,
                    _describe(status),
                    ran,
                    pool.failed_starts,
                    delay,
                )
                continue
            replacement = pool.spawn()
            log.warning(
                "worker %d exited (%s) after %.0f s; started worker %d in its place",
                pid,
                _describe(status),
                ran,
                replacement,
            )
        now = time.monotonic()
        for due in [t for t in later if t <= now]:
            later.remove(due)
            log.info("started worker %d in place of one that could not start", pool.spawn())
        time.sleep(_TICK_SECONDS)
    log.info("signal %s: stopping the workers", stopping[0])
    return 0


def _describe(status: int) -> str:
    if os.WIFSIGNALED(status):
        return f"signal {signal.Signals(os.WTERMSIG(status)).name}"
    return f"status {os.waitstatus_to_exitcode(status)}"
