"""How many threads a server process runs, given how many connections the database accepts."""

from __future__ import annotations

import logging

import pytest

from davserver.capacity import MIN_THREADS, fit_threads, pool_limit
from davserver.config import ConfigError, Settings, load_settings


def settings(threads: int = 32) -> Settings:
    return load_settings(None, env={"DAVSERVER_SERVER_THREADS": str(threads)})


def test_a_thread_may_hold_two_connections_and_a_process_a_few_more() -> None:
    assert pool_limit(32) == 67
    assert pool_limit(1) == 5


@pytest.mark.parametrize("accepted", [None, 10_000, 2 * 67 + 5])
def test_threads_stay_as_set_when_the_database_accepts_enough(accepted: int | None) -> None:
    assert fit_threads(settings(32), 2, accepted) == settings(32)


def test_fewer_threads_when_the_processes_could_ask_for_more_than_accepted(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.WARNING):
        fitted = fit_threads(settings(32), 2, 97)  # a default PostgreSQL: 100 less 3 reserved
    assert fitted.server.threads == 21
    assert 2 * pool_limit(fitted.server.threads) + 5 <= 97
    assert fitted.server.port == settings().server.port  # nothing else changes
    assert "Serving with 21 threads per process" in caplog.text
    assert fit_threads(settings(32), 1, 97) == settings(32)  # one process fits


def test_too_few_connections_for_even_a_few_threads_is_refused() -> None:
    enough = 3 * pool_limit(MIN_THREADS) + 5
    assert fit_threads(settings(32), 3, enough).server.threads == MIN_THREADS
    with pytest.raises(ConfigError, match="PostgreSQL accepts 30 connections, too few for 3"):
        fit_threads(settings(32), 3, 30)
