"""The queue of a process's SQLite writers: first come, first served, with a timeout."""

from __future__ import annotations

import threading
import time

import pytest

from davserver.db.writer_queue import WriterQueue


def _wait_until(condition: object, what: str) -> None:
    deadline = time.monotonic() + 10
    while not condition():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting until {what}")
        time.sleep(0.001)


def test_waiters_get_their_turn_in_the_order_they_came() -> None:
    queue = WriterQueue()
    assert queue.acquire(timeout=1)
    order: list[int] = []

    def writer(n: int) -> None:
        assert queue.acquire(timeout=10)
        order.append(n)
        queue.release()

    threads = []
    for n in range(8):
        thread = threading.Thread(target=writer, args=(n,))
        thread.start()
        threads.append(thread)
        _wait_until(lambda n=n: queue.waiting == n + 1, f"writer {n} waits")
    queue.release()
    for thread in threads:
        thread.join(10)
    assert order == list(range(8))


def test_a_newcomer_does_not_take_the_turn_being_handed_to_a_waiter() -> None:
    queue = WriterQueue()
    assert queue.acquire(timeout=1)
    holders: list[str] = []
    inside = threading.Lock()

    def writer(name: str) -> None:
        assert queue.acquire(timeout=10)
        assert inside.acquire(blocking=False), "two writers held the queue at once"
        holders.append(name)
        time.sleep(0.01)
        inside.release()
        queue.release()

    first = threading.Thread(target=writer, args=("waiter",))
    first.start()
    _wait_until(lambda: queue.waiting == 1, "the waiter waits")
    queue.release()  # handed to the waiter; a newcomer arriving now must queue behind it
    late = threading.Thread(target=writer, args=("newcomer",))
    late.start()
    first.join(10)
    late.join(10)
    assert holders == ["waiter", "newcomer"]


def test_a_wait_that_runs_out_leaves_the_line() -> None:
    queue = WriterQueue()
    assert queue.acquire(timeout=1)
    outcome: list[bool] = []
    waiter = threading.Thread(target=lambda: outcome.append(queue.acquire(timeout=0.05)))
    waiter.start()
    waiter.join(10)
    assert outcome == [False]
    assert queue.waiting == 0
    queue.release()
    assert queue.acquire(timeout=0)  # free again: nobody is left in line
    queue.release()


def test_the_holder_may_take_it_again_and_must_release_as_often() -> None:
    queue = WriterQueue()
    assert queue.acquire(timeout=1)
    assert queue.acquire(timeout=0)
    queue.release()
    taken: list[bool] = []
    other = threading.Thread(target=lambda: taken.append(queue.acquire(timeout=0.05)))
    other.start()
    other.join(10)
    assert taken == [False]
    queue.release()
    other = threading.Thread(target=lambda: taken.append(queue.acquire(timeout=1)))
    other.start()
    other.join(10)
    assert taken == [False, True]


def test_only_the_holder_releases() -> None:
    queue = WriterQueue()
    with pytest.raises(RuntimeError):
        queue.release()
