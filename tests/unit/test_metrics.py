"""davserver.metrics: counters in shared memory, summed over the workers' slots."""

from __future__ import annotations

import os
import re

from davserver.metrics import BUCKETS, Board, Counted, render


def sample(text: str, name: str, labels: str = "") -> float:
    """The value of one sample of ``text`` (AssertionError when it is missing)."""
    line = f"{name}{{{labels}}} " if labels else f"{name} "
    for row in text.splitlines():
        if row.startswith(line):
            return float(row[len(line) :])
    raise AssertionError(f"no {line!r} in:\n{text}")


def test_two_slots_are_summed_and_a_histogram_is_cumulative() -> None:
    board = Board(2)
    first, second = board.slot(0), board.slot(1)
    for slot, seconds in ((first, 0.004), (first, 0.3), (second, 0.03), (second, 100.0)):
        slot.started()
        slot.finished("PUT", 201, seconds, 10)
    second.started()
    second.finished("FROB", 405, 0.001, 0)  # an unknown method is OTHER
    second.started()  # one still in flight

    text = render(board)

    assert sample(text, "davserver_http_requests_total", 'method="PUT",code="2xx"') == 4
    assert sample(text, "davserver_http_requests_total", 'method="OTHER",code="4xx"') == 1
    put = 'method="PUT"'
    buckets = [
        sample(text, "davserver_http_request_duration_seconds_bucket", f'{put},le="{b}"')
        for b in BUCKETS
    ]
    assert buckets == sorted(buckets)  # cumulative
    assert buckets[0] == 1 and buckets[-1] == 3  # 100 s is past the last bound
    assert sample(text, "davserver_http_request_duration_seconds_bucket", f'{put},le="+Inf"') == 4
    assert sample(text, "davserver_http_request_duration_seconds_count", put) == 4
    assert abs(sample(text, "davserver_http_request_duration_seconds_sum", put) - 100.334) < 1e-6
    assert sample(text, "davserver_http_response_bytes_total", put) == 40
    assert sample(text, "davserver_http_requests_in_flight") == 1
    assert sample(text, "davserver_worker_processes") == 2
    labels = f'worker="0",pid="{os.getpid()}"'
    assert sample(text, "davserver_process_resident_memory_bytes", labels) > 1_000_000
    assert "GET" not in re.findall(r'method="(\w+)"', text)  # nothing counted, nothing shown


def test_a_slot_taken_over_keeps_its_totals_and_forgets_what_was_in_flight() -> None:
    """A worker that replaces one that died carries its totals on (a counter never goes back
    for Prometheus); the requests the dead one had in flight are over."""
    board = Board(1)
    dead = board.slot(0)
    dead.started()
    dead.finished("GET", 200, 0.01, 5)
    dead.started()
    board.slot(0)
    text = render(board)
    assert sample(text, "davserver_http_requests_total", 'method="GET",code="2xx"') == 1
    assert sample(text, "davserver_http_requests_in_flight") == 0


def test_a_counted_response_reports_its_bytes_and_status_when_closed() -> None:
    board = Board(1)
    closed: list[bool] = []

    class Body:
        def __iter__(self):  # type: ignore[no-untyped-def]
            yield b"abc"
            yield b"defg"

        def close(self) -> None:
            closed.append(True)

    counted = Counted(board.slot(0), "GET", 0.0, after=lambda: closed.append(False))
    assert sample(render(board), "davserver_http_requests_in_flight") == 1
    counted.response = Body()
    counted.status = 206
    assert b"".join(counted) == b"abcdefg"
    counted.close()
    text = render(board)
    assert closed == [True, False]  # the application's response, then ``after``
    assert sample(text, "davserver_http_requests_total", 'method="GET",code="2xx"') == 1
    assert sample(text, "davserver_http_response_bytes_total", 'method="GET"') == 7
    assert sample(text, "davserver_http_requests_in_flight") == 0


def test_a_worker_that_died_counts_no_more_as_running_but_its_totals_stay() -> None:
    board = Board(2)
    board.slot(0)
    pid = os.fork()
    if pid == 0:  # a worker that answers one request, then dies
        slot = board.slot(1)
        slot.started()
        slot.finished("GET", 200, 0.01, 1)
        os._exit(0)
    os.waitpid(pid, 0)
    text = render(board)
    assert sample(text, "davserver_worker_processes") == 1
    assert sample(text, "davserver_http_requests_total", 'method="GET",code="2xx"') == 1
    assert f'pid="{pid}"' not in text
