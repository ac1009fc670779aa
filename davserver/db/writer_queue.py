"""The line a process's SQLite writers wait in, first come first served.

SQLite lets one transaction write at a time. A writer that finds the database taken does not
wait for it to be free: SQLite's busy handler puts it to sleep, 1 ms, then 2, 5, 10 ... up to
100 ms between tries, and a writer that comes later may take the lock while it sleeps. With 16
uploads at once a 4 KiB PUT waited up to 3.2 s (p99 1.1-1.3 s) for a transaction that takes a few
milliseconds, and under a longer queue one can sleep past the busy timeout and fail.

So a process's own writers queue here before ``BEGIN IMMEDIATE``, each woken as the one before
it leaves: its BEGIN finds the database free unless another process (a CLI command) is writing,
and only then does the busy handler come in.
"""

from __future__ import annotations

import collections
import threading


class WriterQueue:
    """A lock handed to waiters in the order they came, with a timeout; a thread that holds it
    may take it again (a nested transaction, which SQLite refuses as before)."""

    def __init__(self) -> None:
        self._mutex = threading.Lock()
        self._waiting: collections.deque[threading.Lock] = collections.deque()
        self._busy = False  # held, or handed to the first waiter and not yet taken
        self._owner: int | None = None
        self._depth = 0

    def acquire(self, timeout: float) -> bool:
        """Wait for this thread's turn, at most ``timeout`` seconds; False if it did not come
        (the thread has left the line then)."""
        me = threading.get_ident()
        with self._mutex:
            if self._owner == me:
                self._depth += 1
                return True
            if not self._busy:
                self._busy, self._owner, self._depth = True, me, 1
                return True
            turn = threading.Lock()
            turn.acquire()
            self._waiting.append(turn)
        if not turn.acquire(timeout=timeout):
            with self._mutex:
                if turn in self._waiting:
                    self._waiting.remove(turn)
                    return False
            # Handed over just as the wait ran out: the turn is this thread's all the same.
        with self._mutex:
            self._owner, self._depth = me, 1
        return True

    def release(self) -> None:
        with self._mutex:
            if self._owner != threading.get_ident():
                raise RuntimeError("released by a thread that does not hold the writer queue")
            self._depth -= 1
            if self._depth:
                return
            self._owner = None
            if self._waiting:
                self._waiting.popleft().release()  # still busy: it is the next one's now
            else:
                self._busy = False

    @property
    def waiting(self) -> int:
        """How many threads wait in line."""
        return len(self._waiting)
