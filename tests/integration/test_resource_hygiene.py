"""What a server that runs for months must not accumulate: a row, a file or a descriptor left
behind by each abandoned or abusive request. ``bench/soak.py`` watches the same over rounds of
mixed traffic; these are the leaks it found, each in its smallest form."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import sqlalchemy as sa

from davserver.models import DavLock, LoginThrottle
from tests.conftest import ENGINES
from tests.servers import InprocServer, basic_auth_header, run_inproc_server

LOCK = (
    b'<?xml version="1.0"?><D:lockinfo xmlns:D="DAV:"><D:lockscope><D:exclusive/>'
    b"</D:lockscope><D:locktype><D:write/></D:locktype>"
    b"<D:owner><D:href>tester</D:href></D:owner></D:lockinfo>"
)


def lock_rows_under(server: InprocServer, folder_url: str) -> int:
    folder = folder_url.rstrip("/").rsplit("/", 1)[1]
    with server.application.db.read() as session:
        count = session.scalar(
            sa.select(sa.func.count()).where(DavLock.root.contains(folder, autoescape=True))
        )
    return int(count or 0)


def test_locks_left_to_expire_do_not_pile_up(
    inproc_server: InprocServer, inproc_dav_dir: str
) -> None:
    """A client that locks and never unlocks (a crashed editor, a dropped mount) leaves its
    lock to expire. Nothing asks for such a token again, so once expired its row must still go:
    the next LOCK by anyone removes every expired one."""
    for i in range(50):
        url = f"{inproc_dav_dir}f{i}.txt"
        assert inproc_server.request("PUT", url, b"x").status == 201
        response = inproc_server.request("LOCK", url, LOCK, {"Timeout": "Second-1"})
        assert response.status == 200, response.body
    time.sleep(1.2)
    response = inproc_server.request(
        "LOCK", f"{inproc_dav_dir}f0.txt", LOCK, {"Timeout": "Second-600"}
    )
    assert response.status == 200, response.body
    assert lock_rows_under(inproc_server, inproc_dav_dir) == 1


@pytest.mark.parametrize("engine", ENGINES)
def test_failed_logins_of_the_past_leave_no_rows(engine: str, tmp_path: Path) -> None:
    """Every failed login counts towards a ban under a key of its own name (``user:<name>``),
    names that exist or not. Guesses at ever new names would add a row each for ever; a key
    whose window and ban are both over counts nothing, so its row goes with the next failure."""
    throttling = {
        "auth__failure_window_seconds": 1,
        "auth__ban_seconds": 1,
        "auth__max_failures_per_address": 1000,  # many clients behind one trusted proxy
    }
    with run_inproc_server(engine, tmp_path, **throttling) as server:  # type: ignore[arg-type]

        def guess(name: str) -> None:
            wrong = {"Depth": "0", "Authorization": basic_auth_header(name, "wrong")}
            assert server.request("PROPFIND", "/files/", headers=wrong, auth=False).status == 401

        for i in range(50):
            guess(f"nobody{i}")
        time.sleep(1.2)
        guess("nobody-last")
        with server.application.db.read() as session:
            keys = session.scalars(sa.select(LoginThrottle.key)).all()
        assert sorted(keys) == ["addr:127.0.0.1", "user:nobody-last"]
