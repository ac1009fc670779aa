"""A running server purges expired trash items and packages on its own, on both engines."""

from __future__ import annotations

import datetime as dt
import os
import time
import uuid
from pathlib import Path

import pytest
import sqlalchemy as sa

from davserver.db.types import utcnow
from davserver.errors import Unauthorized
from davserver.housekeeping import Housekeeper
from davserver.models import LogEntry, LoginSession, Node, Package, RefreshToken
from tests.conftest import ENGINES
from tests.servers import InprocServer, basic_auth_header, run_inproc_server


def _user_with_stale_trash(server: InprocServer) -> tuple[uuid.UUID, uuid.UUID, uuid.UUID]:
    """(user, a trashed node past retention, a fresh trashed node)."""
    services = server.app.services
    name = f"hk{uuid.uuid4().hex[:8]}"
    password = f"pw-{uuid.uuid4().hex}"
    services.users.create_user(None, name, password=password)
    user_id = services.users.user_id(name)
    auth = {"Authorization": basic_auth_header(name, password)}
    ids = []
    for file in ("stale.txt", "fresh.txt"):
        url = f"/files/{file}"
        assert server.request("PUT", url, b"x", auth, auth=False).status == 201
        assert server.request("DELETE", url, None, auth, auth=False).status == 204
        with server.app.db.read() as session:
            ids.append(
                session.scalar(
                    sa.select(Node.id).where(Node.owner_id == user_id, Node.name == file)
                )
            )
    with server.app.db.write() as session:
        session.execute(
            sa.update(Node)
            .where(Node.id == ids[0])
            .values(deleted_at=utcnow() - dt.timedelta(days=31))
        )
    return user_id, ids[0], ids[1]


def _exists(server: InprocServer, model: type, ident: uuid.UUID) -> bool:
    with server.app.db.read() as session:
        return session.get(model, ident) is not None


def _expired_package(server: InprocServer, owner: uuid.UUID) -> uuid.UUID:
    package = server.app.services.packages.create(None, owner, f"p{uuid.uuid4().hex[:6]}")
    with server.app.db.write() as session:
        session.execute(
            sa.update(Package)
            .where(Package.id == package.id)
            .values(expires_at=utcnow() - dt.timedelta(seconds=1))
        )
    return package.id


def test_one_sweep_purges_expired_trash_and_packages(inproc_server: InprocServer) -> None:
    user, stale, fresh = _user_with_stale_trash(inproc_server)
    package = _expired_package(inproc_server, user)
    swept = Housekeeper(inproc_server.app.services, 0).run_once()
    assert swept.trash_items >= 1 and swept.packages >= 1
    assert not _exists(inproc_server, Node, stale)
    assert _exists(inproc_server, Node, fresh)
    assert not _exists(inproc_server, Package, package)


def test_the_server_sweeps_on_its_own(inproc_server: InprocServer) -> None:
    _, stale, fresh = _user_with_stale_trash(inproc_server)
    keeper = Housekeeper(inproc_server.app.services, 0.2)
    keeper.start()
    try:
        deadline = time.monotonic() + 10
        while _exists(inproc_server, Node, stale) and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        keeper.stop()
    assert not _exists(inproc_server, Node, stale)
    assert _exists(inproc_server, Node, fresh)


def test_a_sweep_removes_what_a_crashed_upload_left_and_nothing_younger(
    inproc_server: InprocServer,
) -> None:
    """kill -9 during a PUT leaves its temp file; it stayed until someone ran davserver gc
    (fsck does not report it). The sweep takes it once it is an hour old, never a younger
    one: an upload in progress, or one going up to an S3 store."""
    tmp = inproc_server.app.services.blobs.tmp_dir
    leftover, recent = tmp / f"up-crashed-{uuid.uuid4().hex}", tmp / f"up-live-{uuid.uuid4().hex}"
    leftover.write_bytes(b"x" * 1000)
    recent.write_bytes(b"y" * 10)
    two_hours_ago = time.time() - 7200
    os.utime(leftover, (two_hours_ago, two_hours_ago))
    half_an_hour_ago = time.time() - 1800
    os.utime(recent, (half_an_hour_ago, half_an_hour_ago))
    try:
        swept = Housekeeper(inproc_server.app.services, 0).run_once()
        assert swept.temp_files >= 1
        assert not leftover.exists()
        assert recent.exists()
        with inproc_server.app.db.read() as session:
            logged = session.scalar(
                sa.select(LogEntry.details)
                .where(LogEntry.op_type == "maintenance:gc")
                .order_by(LogEntry.id.desc())
            )
        assert logged is not None and logged["temp_files_removed"] >= 1
    finally:
        recent.unlink(missing_ok=True)


def test_a_sweep_deletes_refresh_tokens_past_their_expiry_and_keeps_the_rest(
    inproc_server: InprocServer,
) -> None:
    """Each refresh keeps the token it replaces, to catch its reuse until it would have
    expired; past that the row does nothing. A client refreshing every 15 minutes added 96
    rows a day, and none ever went."""
    services = inproc_server.app.services
    name, password = f"tk{uuid.uuid4().hex[:8]}", f"pw-{uuid.uuid4().hex}"
    services.users.create_user(None, name, password=password)
    user_id = services.users.user_id(name)
    pair = services.tokens.login(name, password)
    used = []
    for _ in range(3):
        used.append(pair.refresh_token)
        pair = services.tokens.refresh(pair.refresh_token)
    with inproc_server.app.db.write() as session:
        oldest_two = session.scalars(
            sa.select(RefreshToken.id)
            .where(RefreshToken.user_id == user_id)
            .order_by(RefreshToken.expires_at)
            .limit(2)
        ).all()
        session.execute(
            sa.update(RefreshToken)
            .where(RefreshToken.id.in_(oldest_two))
            .values(expires_at=utcnow() - dt.timedelta(seconds=1))
        )

    swept = Housekeeper(services, 0).run_once()
    assert swept.refresh_tokens >= 2
    with inproc_server.app.db.read() as session:
        left = set(
            session.scalars(sa.select(RefreshToken.id).where(RefreshToken.user_id == user_id))
        )
    assert len(left) == 2 and not left & set(oldest_two)
    # The third used token is still caught if reused: it revokes the family, current one too.
    with pytest.raises(Unauthorized):
        services.tokens.refresh(used[2])
    with pytest.raises(Unauthorized):
        services.tokens.refresh(pair.refresh_token)


@pytest.mark.parametrize("engine", ENGINES)
def test_a_sweep_deletes_logbook_rows_past_their_retention(engine: str, tmp_path: Path) -> None:
    """Every download adds a logbook row, with the client's address and user agent: a busy
    server's logbook grew for ever, and privacy rules may ask that such records go after a
    while. ``maintenance.logbook_retention_days`` (off by default) has the sweep delete the
    older rows, and log that it did."""
    with run_inproc_server(engine, tmp_path, maintenance__logbook_retention_days=30) as server:
        assert server.request("PUT", "/files/kept.txt", b"x").status == 201
        with server.app.db.write() as session:
            ids = list(session.scalars(sa.select(LogEntry.id).order_by(LogEntry.id)))
            old, recent = ids[:-1], ids[-1]
            assert old, "the first start writes rows too"
            session.execute(
                sa.update(LogEntry)
                .where(LogEntry.id.in_(old))
                .values(occurred_at=utcnow() - dt.timedelta(days=31))
            )
        swept = Housekeeper(server.app.services, 0).run_once()
        assert swept.logbook_rows == len(old)
        with server.app.db.read() as session:
            rows = session.execute(
                sa.select(LogEntry.id, LogEntry.op_type, LogEntry.details).order_by(LogEntry.id)
            ).all()
        assert rows[0].id == recent
        assert [(row.op_type, row.details) for row in rows[1:]] == [
            ("maintenance:logbook:prune", {"rows": len(old), "older_than_days": 30})
        ]
        # The next sweep finds nothing more.
        assert Housekeeper(server.app.services, 0).run_once().logbook_rows == 0


@pytest.mark.parametrize("engine", ENGINES)
def test_a_sweep_forgets_the_client_details_of_sessions_past_the_retention(
    engine: str, tmp_path: Path
) -> None:
    """The sessions name clients (address, user agent) as the logbook rows do, and kept them
    for ever, deleted users' too. Past the logbook's retention those two are blanked; the
    session stays, for the versions and rows that point at it."""
    with run_inproc_server(engine, tmp_path, maintenance__logbook_retention_days=30) as server:
        headers = {"User-Agent": "SecretAgent/1.0"}
        assert server.request("PUT", "/files/a.txt", b"x", headers).status == 201
        with server.app.db.write() as session:
            old = session.scalars(sa.select(LoginSession.id)).all()
            assert old
            session.execute(
                sa.update(LoginSession).values(last_seen_at=utcnow() - dt.timedelta(days=31))
            )
        assert server.request("PUT", "/files/b.txt", b"y", {"User-Agent": "Recent/2"}).status == 201
        Housekeeper(server.app.services, 0).run_once()
        with server.app.db.read() as session:
            rows = session.execute(
                sa.select(LoginSession.id, LoginSession.ip, LoginSession.user_agent)
            ).all()
        kept = {row.id: (row.ip, row.user_agent) for row in rows}
        assert all(kept[id] == (None, "") for id in old)
        assert ("127.0.0.1", "Recent/2") in [(str(ip), agent) for ip, agent in kept.values()]
