"""Uploads of one user at once: what each one holds, and for how long, on PostgreSQL.

Every upload into a user's own space moves the owner's running total (``users.home_bytes``),
so on PostgreSQL the uploads of one user take turns at the owner's row, each from its UPDATE
of it to its commit. These tests pin how short that turn is, and that quota holds all the
same. SQLite runs one writer at a time anyway.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy import event

from davserver.db import Database
from davserver.errors import QuotaExceeded
from davserver.models import User
from davserver.services import uploads as uploads_module
from davserver.services.actor import Actor
from davserver.services.files import FileService
from davserver.services.tree import NodeView
from tests.blobs import put, write
from tests.dbs import in_thread, wait_for_a_lock_wait


def _set_quota(database: Database, actor: Actor, quota: int) -> None:
    with database.write() as session:
        session.execute(sa.update(User).where(User.id == actor.user_id).values(quota_bytes=quota))


@contextmanager
def _no_lock_waits(database: Database) -> Iterator[None]:
    """Transactions begun meanwhile fail after waiting a second for a lock, rather than wait."""

    def fail_rather_than_wait(conn: sa.Connection) -> None:
        conn.exec_driver_sql("SET LOCAL lock_timeout = '1s'")

    event.listen(database.engine, "begin", fail_rather_than_wait)
    try:
        yield
    finally:
        event.remove(database.engine, "begin", fail_rather_than_wait)


@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
@pytest.mark.parametrize("replacing", [False, True], ids=["new-file", "new-version"])
@pytest.mark.parametrize("enforce_quota", [False, True], ids=["no-quota", "quota"])
def test_an_upload_midway_does_not_hold_up_its_owners_other_uploads(
    database: Database,
    files: FileService,
    actor: Actor,
    home: NodeView,
    monkeypatch: pytest.MonkeyPatch,
    replacing: bool,
    enforce_quota: bool,
) -> None:
    """One upload has written its file, version and logbook row but not committed; another
    upload of the same user, into another folder, needs nothing it holds and goes through.

    The owner's row was locked early (the quota check, before the file's row; without
    a quota, the total's UPDATE when the version became current) and held for the rest of the
    transaction: with rclone's 8 or 16 transfers, the uploads waited in line for each other
    there most of the time (measured: 8 of 10 pooled connections waiting on it at any
    moment)."""
    if enforce_quota:
        _set_quota(database, actor, 10**6)
    mine = files.create_folder(actor, home, "mine")
    theirs = files.create_folder(actor, home, "theirs")
    if replacing:
        put(files, actor, mine, "doc.txt", b"old")
    midway, go = threading.Event(), threading.Event()
    original = uploads_module.record_audit

    def audit_then_pause(*args: Any, **kwargs: Any) -> None:
        original(*args, **kwargs)
        if threading.current_thread().name == "midway":
            midway.set()
            assert go.wait(30)

    monkeypatch.setattr(uploads_module, "record_audit", audit_then_pause)
    outcome: dict[str, Any] = {}
    first = in_thread(
        "midway",
        lambda: files.commit_upload(
            actor, mine, "doc.txt", write(files.blobs, b"first"), enforce_quota=enforce_quota
        ),
        outcome,
    )
    try:
        assert midway.wait(30)
        with _no_lock_waits(database):
            try:
                files.commit_upload(
                    actor,
                    theirs,
                    "other.txt",
                    write(files.blobs, b"second"),
                    enforce_quota=enforce_quota,
                )
            except sa.exc.OperationalError as exc:
                pytest.fail(f"the second upload waited for the first: {exc}")
    finally:
        go.set()
        first.join(30)
    assert outcome == {"midway": None}
    assert files.usage(actor.user_id)[0] == len(b"first") + len(b"second")


def test_uploads_at_once_never_take_more_than_the_quota(
    database: Database,
    files: FileService,
    actor: Actor,
    home: NodeView,
) -> None:
    """Two uploads into different folders, each within the quota but not both: the one that
    checks while the other has written everything but not committed yet waits for it, and is
    refused."""
    _set_quota(database, actor, 1000)
    left = files.create_folder(actor, home, "left")
    right = files.create_folder(actor, home, "right")
    ready, go = threading.Event(), threading.Event()

    def pause_before_commit(conn: sa.Connection) -> None:
        if threading.current_thread().name == "first":
            ready.set()
            assert go.wait(30)

    def upload(folder: NodeView) -> Callable[[], object]:
        blob = write(files.blobs, folder.name.encode() * 150)  # 600 or 750 bytes
        return lambda: files.commit_upload(actor, folder, "big.bin", blob, enforce_quota=True)

    outcome: dict[str, Any] = {}
    threads: list[threading.Thread] = []
    event.listen(database.engine, "commit", pause_before_commit)
    try:
        threads.append(in_thread("first", upload(right), outcome))
        assert ready.wait(30)
        threads.append(in_thread("second", upload(left), outcome))
        if database.is_sqlite:
            threads[1].join(0.3)  # waits its turn to write
        else:
            wait_for_a_lock_wait(database)  # at the owner's row
        assert threads[1].is_alive()
    finally:
        go.set()
        for thread in threads:
            thread.join(30)
        # Not while a thread may still be in the listener: the event's list would change.
        event.remove(database.engine, "commit", pause_before_commit)
    assert outcome["first"] is None
    assert isinstance(outcome["second"], QuotaExceeded)
    assert files.usage(actor.user_id) == (750, 1000)
