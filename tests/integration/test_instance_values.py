"""``instance_secrets``: values every server process of one deployment shares."""

from __future__ import annotations

import threading
import uuid

from davserver.db import Database
from davserver.services.instance import replace_once, replace_value, shared_value


def test_of_processes_replacing_a_marked_value_at_once_one_does_it(database: Database) -> None:
    """Servers started at once on a restored backup each try to give the database an identity
    of its own: one does, and every one of them then reads that one."""
    name, mark = f"id-{uuid.uuid4().hex[:8]}", f"mark-{uuid.uuid4().hex[:8]}"
    replace_value(database, name, "the backup's")
    replace_value(database, mark, "the backup's")
    start = threading.Barrier(4)
    held: dict[str, str | None] = {}

    def attempt(value: str) -> None:
        start.wait()
        held[value] = replace_once(database, mark, name, value)

    threads = [threading.Thread(target=attempt, args=(f"new-{i}",)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    winners = [value for value, was in held.items() if was is not None]
    assert len(winners) == 1 and held[winners[0]] == "the backup's", held
    assert shared_value(database, name, lambda: "unused") == winners[0]
    assert replace_once(database, mark, name, "again") is None
