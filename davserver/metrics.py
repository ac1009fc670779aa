"""Request metrics for Prometheus: counted in shared memory, so every worker process answers
for all of them.

``davserver serve --workers N`` forks N processes that share one port, and a scrape reaches
whichever the kernel picks. Counters kept in each process alone would make every scrape a
different process's: totals jumping up and down. Here a ``Board`` is one anonymous shared
memory map, made before the workers are forked, with one ``Slot`` per worker. Each process
writes only its own slot (under a lock of its own, for its threads); a scrape sums them all.
A worker that replaces one that died takes over its slot, so totals never go back.

What is counted, per request: its method, the class of its status (2xx...), how long it took
from the application's first look at it until the server closed its response, and the bytes of
its response body. ``render`` writes them in Prometheus's text format (version 0.0.4), with
each worker process's memory, CPU time, threads and open files from /proc.
"""

from __future__ import annotations

import mmap
import os
import struct
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping

# The methods counted by name; any other is counted as OTHER.
METHODS = (
    "OPTIONS",
    "GET",
    "HEAD",
    "PUT",
    "DELETE",
    "PROPFIND",
    "PROPPATCH",
    "MKCOL",
    "COPY",
    "MOVE",
    "LOCK",
    "UNLOCK",
    "POST",
    "PATCH",
    "REPORT",
    "OTHER",
)
_METHOD_INDEX = {name: i for i, name in enumerate(METHODS)}
_CLASSES = ("1xx", "2xx", "3xx", "4xx", "5xx")
# Upper bounds (seconds) of the duration histogram's buckets; +Inf is the count.
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)

# A slot: pid, start time, in flight, then per method: requests by class, durations by
# bucket, the sum of durations, response bytes. Every field is 8 bytes (q, or d for times).
_HEADER = 3
_PER_METHOD = len(_CLASSES) + len(BUCKETS) + 2
_FIELDS = _HEADER + len(METHODS) * _PER_METHOD
_SLOT_BYTES = _FIELDS * 8
_PID, _STARTED, _IN_FLIGHT = 0, 1, 2


# Fields of a method's block, after its counts by class: its buckets, sum, bytes sent.
_BUCKET0 = len(_CLASSES)
_SUM = _BUCKET0 + len(BUCKETS)
_SENT = _SUM + 1


def _field(method: int, field: int) -> int:
    """The index, among a slot's fields, of ``field`` of ``method``'s block."""
    return _HEADER + method * _PER_METHOD + field


class Board:
    """The shared memory of ``slots`` workers' counters; make it before forking them."""

    def __init__(self, slots: int) -> None:
        self.slots = slots
        # Anonymous and shared (MAP_SHARED is mmap's default on Linux): forked children
        # write to the same pages.
        self._memory = mmap.mmap(-1, max(1, slots) * _SLOT_BYTES)

    def slot(self, index: int) -> Slot:
        """Slot ``index``, taken over by this process."""
        return Slot(self, index)

    def _read(self, index: int) -> tuple[float, ...]:
        start = index * _SLOT_BYTES
        raw = self._memory[start : start + _SLOT_BYTES]
        return struct.unpack(_FORMAT, raw)


# The struct format of a whole slot: q for counts, d for the start time and duration sums.
_FORMAT = "=qdq" + ("q" * len(_CLASSES) + "q" * len(BUCKETS) + "dq") * len(METHODS)


class Slot:
    """One process's counters in a ``Board``."""

    def __init__(self, board: Board, index: int) -> None:
        self.board = board
        self._memory = board._memory
        self._base = index * _SLOT_BYTES
        self._lock = threading.Lock()
        with self._lock:
            struct.pack_into("=q", self._memory, self._base, os.getpid())
            struct.pack_into("=d", self._memory, self._base + _STARTED * 8, time.time())
            # A worker that died with requests in flight left them counted: they are over.
            struct.pack_into("=q", self._memory, self._base + _IN_FLIGHT * 8, 0)

    def started(self) -> None:
        """A request came in."""
        with self._lock:
            self._add(self._base + _IN_FLIGHT * 8, 1)

    def finished(self, method: str, status: int, seconds: float, sent: int) -> None:
        """A request was answered: ``status`` in ``seconds``, with ``sent`` body bytes."""
        m = _METHOD_INDEX.get(method, _METHOD_INDEX["OTHER"])
        category = min(max(status // 100, 1), 5) - 1
        bucket = next((i for i, bound in enumerate(BUCKETS) if seconds <= bound), None)
        base = self._base
        with self._lock:
            self._add(base + _IN_FLIGHT * 8, -1)
            self._add(base + _field(m, category) * 8, 1)
            if bucket is not None:
                self._add(base + _field(m, _BUCKET0 + bucket) * 8, 1)
            total = base + _field(m, _SUM) * 8
            (before,) = struct.unpack_from("=d", self._memory, total)
            struct.pack_into("=d", self._memory, total, before + seconds)
            self._add(base + _field(m, _SENT) * 8, sent)

    def _add(self, offset: int, delta: int) -> None:
        """Add to the count at ``offset``; the caller holds the lock."""
        (value,) = struct.unpack_from("=q", self._memory, offset)
        struct.pack_into("=q", self._memory, offset, value + delta)


class _Text:
    """Prometheus's text format, a family at a time."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def family(self, name: str, kind: str, text: str) -> None:
        self.lines += [f"# HELP {name} {text}", f"# TYPE {name} {kind}"]

    def sample(self, name: str, labels: str, value: float) -> None:
        shown = f"{int(value)}" if float(value).is_integer() else f"{value:.6f}"
        self.lines.append(f"{name}{{{labels}}} {shown}" if labels else f"{name} {shown}")


def render(board: Board, gauges: Mapping[str, tuple[str, float]] | None = None) -> str:
    """The board in Prometheus's text format, and ``gauges`` (name: (help, value))."""
    live = [(i, f) for i, f in enumerate(map(board._read, range(board.slots))) if f[_PID]]
    text = _Text()

    def total(m: int, field: int) -> float:
        return sum(fields[_field(m, field)] for _, fields in live)

    name = "davserver_http_requests_total"
    text.family(name, "counter", "Requests answered, by method and class of status.")
    for m, method in enumerate(METHODS):
        for c, category in enumerate(_CLASSES):
            if value := total(m, c):
                text.sample(name, f'method="{method}",code="{category}"', value)
    name = "davserver_http_request_duration_seconds"
    text.family(name, "histogram", "From a request's arrival until its response was sent.")
    for m, method in enumerate(METHODS):
        count = sum(total(m, c) for c in range(len(_CLASSES)))
        if not count:
            continue
        label = f'method="{method}"'
        cumulative = 0.0
        for b, bound in enumerate(BUCKETS):
            cumulative += total(m, _BUCKET0 + b)
            text.sample(name + "_bucket", f'{label},le="{bound}"', cumulative)
        text.sample(name + "_bucket", f'{label},le="+Inf"', count)
        text.sample(name + "_sum", label, total(m, _SUM))
        text.sample(name + "_count", label, count)
    name = "davserver_http_response_bytes_total"
    text.family(name, "counter", "Bytes of response bodies sent, by method.")
    for m, method in enumerate(METHODS):
        if value := total(m, _SENT):
            text.sample(name, f'method="{method}"', value)
    text.family("davserver_http_requests_in_flight", "gauge", "Requests being answered now.")
    text.sample("davserver_http_requests_in_flight", "", sum(f[_IN_FLIGHT] for _, f in live))
    running = _processes(text, live)
    text.family("davserver_worker_processes", "gauge", "Server processes answering requests.")
    text.sample("davserver_worker_processes", "", running)
    for name, (about, value) in (gauges or {}).items():
        text.family(name, "gauge", about)
        text.sample(name, "", value)
    return "\n".join(text.lines) + "\n"


# Per worker process, from /proc: name -> (type, help, position in ``_proc``'s tuple).
_PROCESS_FAMILIES = {
    "davserver_process_resident_memory_bytes": ("gauge", "Resident memory.", 0),
    "davserver_process_cpu_seconds_total": ("counter", "User and system CPU time.", 1),
    "davserver_process_threads": ("gauge", "Threads.", 2),
    "davserver_process_open_fds": ("gauge", "Open file descriptors.", 3),
}


def _processes(text: _Text, live: list[tuple[int, tuple[float, ...]]]) -> int:
    """Each worker process's memory, CPU time, threads, open files and start time; how many
    are running (a dead one's slot waits for its replacement)."""
    rows = [
        (f'worker="{i}",pid="{int(f[_PID])}"', f[_STARTED], _proc(int(f[_PID]))) for i, f in live
    ]
    for name, (kind, about, position) in _PROCESS_FAMILIES.items():
        text.family(name, kind, about)
        for labels, _, values in rows:
            if values is not None:
                text.sample(name, labels, values[position])
    name = "davserver_process_start_time_seconds"
    text.family(name, "gauge", "When the process started, in seconds since the epoch.")
    for labels, started, values in rows:
        if values is not None:
            text.sample(name, labels, started)
    return sum(values is not None for _, _, values in rows)


_PAGE = os.sysconf("SC_PAGE_SIZE")
_TICKS = os.sysconf("SC_CLK_TCK")


def _proc(pid: int) -> tuple[float, float, float, float] | None:
    """(resident bytes, CPU seconds, threads, open files) of ``pid``; None when it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            fields = fh.read().rsplit(b")", 1)[1].split()
        fds = len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return None
    cpu = (int(fields[11]) + int(fields[12])) / _TICKS
    return (int(fields[21]) * _PAGE, cpu, float(fields[17]), float(fds))


class Counted:
    """A response body that counts its bytes, and reports the request's end to ``slot`` when
    the server closes it: after closing ``response`` (the application's), before ``after``.
    The application sets ``response`` and ``status`` as they come."""

    def __init__(self, slot: Slot, method: str, began: float, *, after: Callable[[], None]) -> None:
        self.response: Iterable[bytes] = ()
        self.status = 0
        self._slot = slot
        self._method = method
        self._began = began
        self._after = after
        self._sent = 0
        slot.started()

    def __iter__(self) -> Iterator[bytes]:
        for chunk in self.response:
            self._sent += len(chunk)
            yield chunk

    def close(self) -> None:
        try:
            close = getattr(self.response, "close", None)
            if close is not None:
                close()
        finally:
            seconds = time.monotonic() - self._began
            self._slot.finished(self._method, self.status, seconds, self._sent)
            self._after()
