"""``instance_secrets``: values every server process of one deployment shares."""

from __future__ import annotations

import threading
import uuid

from davserver.db import Database
from davserver.services.instance import replace_if, replace_value, value_of


def test_of_processes_replacing_a_value_they_read_at_once_one_does_it(database: Database) -> None:
    """Servers started at once on a restored backup each try to give the database an identity
    of its own: one does, and every one of them then reads that one."""
    name = f"id-{uuid.uuid4().hex[:8]}"
    assert value_of(database, name) is None
    replace_value(database, name, "the backup's")
    start = threading.Barrier(4)
    done: dict[str, bool] = {}

    def attempt(value: str) -> None:
        start.wait()
        done[value] = replace_if(database, name, "the backup's", value)

    threads = [threading.Thread(target=attempt, args=(f"new-{i}",)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    winners = [value for value, did in done.items() if did]
    assert len(winners) == 1, done
    assert value_of(database, name) == winners[0]
    assert replace_if(database, name, "the backup's", "again") is False
