"""The trash over real HTTP, on both engines: a folder of 1,000 files trashed and restored with
one UPDATE each way, names and properties, browsing, refusals with their reasons, purging (and
gc afterwards), retention, group and moderator deletions, and ``davserver trash``."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from davserver.cli import main
from davserver.db.types import utcnow
from davserver.models import Blob, FileVersion, LogEntry, Node, Package, PackageItem
from davserver.services.actor import Actor
from davserver.services.maintenance import MaintenanceService
from tests.conftest import ENGINES
from tests.servers import InprocServer, run_inproc_server
from tests.webdav import DAV, DS, NC, WIN32_PROPPATCH, User, make_user, statements, updates_of


@pytest.fixture(scope="module", params=ENGINES)
def server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[InprocServer]:
    with run_inproc_server(
        request.param, tmp_path_factory.mktemp("trash"), storage__fsync=False
    ) as srv:
        yield srv


@pytest.fixture
def alice(server: InprocServer) -> User:
    return make_user(server, "alice")


@pytest.fixture
def cli(
    server: InprocServer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> Any:
    """``davserver ...`` in-process against the server's database: (status, JSON, stderr)."""
    monkeypatch.setenv("DAVSERVER_DATABASE_URL", server.db_url)
    monkeypatch.setenv("DAVSERVER_DATA_DIR", str(server.data_dir))

    def davserver(*argv: str) -> tuple[int, Any, str]:
        status = main(["--config", str(tmp_path / "absent.yaml"), *argv, "--json"])
        out, err = capsys.readouterr()
        return status, json.loads(out) if out.strip() else None, err

    return davserver


def node_id(server: InprocServer, user: User, path: str) -> uuid.UUID:
    return server.application.services.namespace.locate(user.name, path).id


def count(server: InprocServer, model: type, *where: sa.ColumnElement[bool]) -> int:
    with server.application.db.read() as session:
        return int(session.scalar(sa.select(sa.func.count()).select_from(model).where(*where)) or 0)


def subtree(server: InprocServer, root: uuid.UUID) -> tuple[int, int]:
    """(nodes, versions) at and below ``root``, deleted or not."""
    n = Node.__table__
    below = sa.select(n.c.id).where(n.c.id == root).cte("below", recursive=True)
    below = below.union_all(sa.select(n.c.id).where(n.c.parent_id == below.c.id))
    with server.application.db.read() as session:
        nodes = session.scalar(sa.select(sa.func.count()).select_from(below))
        versions = session.scalar(
            sa.select(sa.func.count())
            .select_from(FileVersion)
            .where(FileVersion.node_id.in_(sa.select(below.c.id)))
        )
    return int(nodes or 0), int(versions or 0)


def add_files(server: InprocServer, user: User, folder: str, count: int) -> None:
    """``count`` small files in ``folder`` (which exists), through the file service."""
    app = server.application
    actor = Actor(user_id=user.id, username=user.name)
    parent = app.services.namespace.locate(user.name, folder)
    for i in range(count):
        writer = app.blobs.writer()
        writer.write(f"{folder}/f-{i:04d}.txt holds {i}".encode())
        app.files.commit_upload(actor, parent, f"f-{i:04d}.txt", writer.finish())


def set_deleted_at(server: InprocServer, node: uuid.UUID, when: dt.datetime) -> None:
    with server.application.db.write() as session:
        session.execute(sa.update(Node).where(Node.id == node).values(deleted_at=when))


def test_trash_and_restore_a_folder_of_1000_files(server: InprocServer, alice: User) -> None:
    assert alice("MKCOL", "/files/big/").status == 201
    assert alice("MKCOL", "/files/big/sub/").status == 201
    add_files(server, alice, "/big", 990)
    add_files(server, alice, "/big/sub", 10)
    root = node_id(server, alice, "/big")
    assert subtree(server, root) == (1002, 1000)

    with statements(server) as seen:
        assert alice("DELETE", "/files/big/").status == 204
    assert len(updates_of(seen, "nodes")) == 1
    assert alice("GET", "/files/big/f-0001.txt").status == 404
    assert alice.members("/trash/") == ["big"]
    assert len(alice.members("/trash/big/")) == 991
    assert alice.get("/trash/big/sub/f-0007.txt") == b"/big/sub/f-0007.txt holds 7"
    assert subtree(server, root) == (1002, 1000)

    with statements(server) as seen:
        restored = alice("MOVE", "/trash/big", None, alice.destination("/files/big"))
    assert restored.status == 201, restored.body
    assert len(updates_of(seen, "nodes")) == 1
    assert alice.members("/trash/") == []
    assert subtree(server, root) == (1002, 1000)
    assert len(alice.members("/files/big/")) == 991
    for i in (0, 499, 989):
        assert alice.get(f"/files/big/f-{i:04d}.txt") == f"/big/f-{i:04d}.txt holds {i}".encode()
    assert alice.get("/files/big/sub/f-0009.txt") == b"/big/sub/f-0009.txt holds 9"


def test_names_properties_and_browsing(server: InprocServer, alice: User) -> None:
    for folder in ("/files/x/", "/files/y/", "/files/f/"):
        assert alice("MKCOL", folder).status == 201
    for path in ("/files/x/a.txt", "/files/y/a.txt", "/files/a.txt", "/files/f/inner.txt"):
        assert alice.put(path, path.encode()) == 201
    assert alice.put("/files/f/kept.txt", b"kept") == 201
    for path in ("/files/x/a.txt", "/files/y/a.txt", "/files/a.txt", "/files/f/inner.txt"):
        assert alice("DELETE", path).status == 204
    assert alice("DELETE", "/files/f/").status == 204

    listing = alice.propfind("/trash/")
    assert sorted(listing) == sorted(
        [
            "/trash",
            "/trash/a.txt",
            "/trash/a (2).txt",
            "/trash/a (3).txt",
            "/trash/inner.txt",
            "/trash/f",
        ]
    )
    assert [
        listing[f"/trash/{n}"][DS + "original-path"] for n in ("a.txt", "a (2).txt", "a (3).txt")
    ] == [
        "/files/x/a.txt",
        "/files/y/a.txt",
        "/files/a.txt",
    ]
    props = listing["/trash/a (2).txt"]
    assert props[NC + "trashbin-filename"] == "a.txt"
    assert props[NC + "trashbin-original-location"] == "files/y/a.txt"
    deleted = int(props[NC + "trashbin-delete-timestamp"])
    assert abs(deleted - utcnow().timestamp()) < 120
    assert dt.datetime.fromisoformat(props[DS + "deleted-at"]).timestamp() == pytest.approx(
        deleted, abs=1
    )
    assert props[DS + "deleted-by"] == alice.name
    assert props[DAV + "getcontentlength"] == str(len(b"/files/y/a.txt"))
    assert alice.get("/trash/a (2).txt") == b"/files/y/a.txt"
    # Inside a deleted folder: what was in it when it went, not what went before it.
    assert alice.members("/trash/f/") == ["kept.txt"]
    assert alice.get("/trash/f/kept.txt") == b"kept"
    assert (
        NC + "trashbin-filename"
        not in alice.propfind("/trash/f/kept.txt", "0")["/trash/f/kept.txt"]
    )

    refused = {
        "PUT": alice("PUT", "/trash/new.txt", b"x"),
        "PUT over": alice("PUT", "/trash/a.txt", b"x"),
        "MKCOL": alice("MKCOL", "/trash/new/"),
        "PROPPATCH": alice("PROPPATCH", "/trash/a.txt", WIN32_PROPPATCH),
        "LOCK": alice("LOCK", "/trash/a.txt", b""),
        "COPY out": alice("COPY", "/trash/a.txt", None, alice.destination("/files/c.txt")),
        "DELETE inside": alice("DELETE", "/trash/f/kept.txt"),
        "DELETE trash": alice("DELETE", "/trash/"),
        "MOVE in": alice("MOVE", "/files/x/", None, alice.destination("/trash/x")),
    }
    assert {k: r.status for k, r in refused.items()} == dict.fromkeys(refused, 403)

    # Restoring the folder does not bring back what was deleted from it before.
    assert alice("MOVE", "/trash/f", None, alice.destination("/files/f")).status == 201
    assert alice.members("/files/f/") == ["kept.txt"]
    assert (
        alice("MOVE", "/trash/inner.txt", None, alice.destination("/files/f/inner.txt")).status
        == 201
    )
    assert alice.members("/files/f/") == ["inner.txt", "kept.txt"]
    # One file out of a deleted folder, under a new name.
    assert alice("DELETE", "/files/f/").status == 204
    moved = alice("MOVE", "/trash/f/kept.txt", None, alice.destination("/files/kept again.txt"))
    assert moved.status == 201 and alice.get("/files/kept again.txt") == b"kept"
    assert alice.members("/trash/f/") == ["inner.txt"]


def test_restore_refusals_say_why(server: InprocServer, alice: User, cli: Any) -> None:
    assert alice("MKCOL", "/files/projects/").status == 201
    assert alice.put("/files/projects/plan.txt", b"plan") == 201
    assert alice("DELETE", "/files/projects/plan.txt").status == 204
    assert alice("DELETE", "/files/projects/").status == 204

    gone = alice("MOVE", "/trash/plan.txt", None, alice.destination("/files/projects/plan.txt"))
    assert gone.status == 409 and b"restore it first" in gone.body
    status, _, err = cli("trash", "restore", alice.name, "plan.txt")
    assert status == 1 and "/files/projects is in the trash itself" in err

    assert (
        alice("MOVE", "/trash/projects", None, alice.destination("/files/projects")).status == 201
    )
    assert alice.put("/files/projects/plan.txt", b"a new plan") == 201
    for overwrite in ("T", "F"):
        taken = alice(
            "MOVE",
            "/trash/plan.txt",
            None,
            {**alice.destination("/files/projects/plan.txt"), "Overwrite": overwrite},
        )
        assert taken.status == 409 and b"name is taken" in taken.body
    status, _, err = cli("trash", "restore", alice.name, "plan.txt")
    assert status == 1 and "that name is taken" in err
    status, result, _ = cli(
        "trash", "restore", alice.name, "plan.txt", "--to", f"{alice.name}:/projects/plan (old).txt"
    )
    assert status == 0 and result["to"] == f"{alice.name}:/projects/plan (old).txt"
    assert alice.get("/files/projects/plan (old).txt") == b"plan"
    assert alice.get("/files/projects/plan.txt") == b"a new plan"

    # Into another space: refused.
    team = f"team{uuid.uuid4().hex[:6]}"
    groups = server.application.services.groups
    groups.create_group(None, team)
    groups.add_member(None, team, alice.name)
    assert alice.put("/files/mine.txt", b"mine") == 201
    assert alice("DELETE", "/files/mine.txt").status == 204
    other = alice("MOVE", "/trash/mine.txt", None, alice.destination(f"/groups/{team}/mine.txt"))
    assert other.status == 403
    assert (
        alice("MOVE", "/trash/mine.txt", None, alice.destination("/nowhere/mine.txt")).status == 409
    )


def test_delete_in_the_trash_purges_and_gc_takes_the_blobs(
    server: InprocServer, alice: User
) -> None:
    first, second = uuid.uuid4().bytes * 8, uuid.uuid4().bytes * 8
    assert alice("MKCOL", "/files/old/").status == 201
    assert alice.put("/files/old/data.bin", first) == 201
    assert alice.put("/files/old/data.bin", second) == 204
    folder, file = node_id(server, alice, "/old"), node_id(server, alice, "/old/data.bin")
    assert alice("DELETE", "/files/old/").status == 204

    assert alice("DELETE", "/trash/old/").status == 204
    assert subtree(server, folder) == (0, 0)
    assert count(server, FileVersion, FileVersion.node_id == file) == 0
    assert alice.members("/trash/") == []
    with server.application.db.read() as session:
        purge = session.execute(
            sa.select(LogEntry.user_id, LogEntry.details)
            .where(LogEntry.op_type == "node:purge")
            .order_by(LogEntry.id.desc())
        ).first()
    assert purge is not None and purge.user_id == alice.id
    assert purge.details["node_id"] == str(folder)
    assert (purge.details["nodes"], purge.details["versions"]) == (2, 2)

    digests = [hashlib.sha256(data).hexdigest() for data in (first, second)]
    assert count(server, Blob, Blob.sha256.in_(digests)) == 2  # left to gc
    app = server.application
    report = MaintenanceService(app.db, app.blobs).collect_garbage(grace=dt.timedelta(0))
    assert report.ok and report.blobs_removed >= 2
    assert count(server, Blob, Blob.sha256.in_(digests)) == 0
    assert alice("DELETE", "/trash/old/").status == 404


def test_items_past_retention_are_purged(server: InprocServer, alice: User, cli: Any) -> None:
    bob = make_user(server, "bob")
    for user in (alice, bob):
        assert user.put("/files/stale.txt", b"stale") == 201
        assert user.put("/files/fresh.txt", b"fresh") == 201
    stale = {user.name: node_id(server, user, "/stale.txt") for user in (alice, bob)}
    for user in (alice, bob):
        assert user("DELETE", "/files/stale.txt").status == 204
        assert user("DELETE", "/files/fresh.txt").status == 204
        set_deleted_at(server, stale[user.name], utcnow() - dt.timedelta(days=31))

    # Listing the trash purges the user's own expired items.
    assert alice.members("/trash/") == ["fresh.txt"]
    assert count(server, Node, Node.id == stale[alice.name]) == 0
    assert count(server, Node, Node.id == stale[bob.name]) == 1

    # The command line purges everyone's.
    status, report, _ = cli("trash", "purge", "--dry-run")
    assert status == 0 and report["dry_run"] and report["items_purged"] >= 1
    assert count(server, Node, Node.id == stale[bob.name]) == 1
    status, report, _ = cli("trash", "purge", "--user", bob.name)
    assert status == 0 and report["items_purged"] == 1 and report["versions_removed"] == 1
    assert count(server, Node, Node.id == stale[bob.name]) == 0
    status, listed, _ = cli("trash", "list", bob.name)
    assert status == 0 and [item["name"] for item in listed] == ["fresh.txt"]
    status, report, _ = cli("trash", "purge", "--user", bob.name, "--older-than", "0")
    assert status == 0 and report["items_purged"] == 1
    assert bob.members("/trash/") == []


def test_a_pinned_item_stays_until_its_package_lets_go(
    server: InprocServer, alice: User, cli: Any
) -> None:
    assert alice.put("/files/pinned.txt", b"promised to a package") == 201
    node = node_id(server, alice, "/pinned.txt")
    with server.application.db.write() as session:
        version = session.scalar(sa.select(FileVersion).where(FileVersion.node_id == node))
        assert version is not None
        package = Package(name=f"p{uuid.uuid4().hex[:6]}", created_by=alice.id)
        session.add(package)
        session.flush()
        session.add(
            PackageItem(
                package_id=package.id,
                node_id=node,
                version_id=version.id,
                path_in_archive="pinned.txt",
                mtime=version.uploaded_at,
            )
        )
    assert alice("DELETE", "/files/pinned.txt").status == 204
    refused = alice("DELETE", "/trash/pinned.txt")
    assert refused.status == 409 and b"packages pin" in refused.body
    set_deleted_at(server, node, utcnow() - dt.timedelta(days=90))
    assert alice.members("/trash/") == ["pinned.txt"]
    status, report, _ = cli("trash", "purge", "--user", alice.name)
    assert status == 0 and report["items_pinned"] == 1 and report["items_purged"] == 0
    assert count(server, Node, Node.id == node) == 1


def test_group_and_moderator_deletions(server: InprocServer, alice: User) -> None:
    bob, mod = make_user(server, "bob"), make_user(server, "mod", roles=["user", "moderator"])
    team = f"team{uuid.uuid4().hex[:6]}"
    groups = server.application.services.groups
    groups.create_group(None, team)
    groups.add_member(None, team, alice.name)
    groups.add_member(None, team, bob.name)
    assert alice.put(f"/groups/{team}/g.txt", b"group file") == 201
    assert bob("DELETE", f"/groups/{team}/g.txt").status == 204
    # In the trash of whoever deleted it, not of the other members.
    props = bob.propfind("/trash/")["/trash/g.txt"]
    assert props[DS + "original-path"] == f"/groups/{team}/g.txt"
    assert alice.members("/trash/") == []
    restored = bob("MOVE", "/trash/g.txt", None, bob.destination(f"/groups/{team}/g.txt"))
    assert restored.status == 201 and alice.get(f"/groups/{team}/g.txt") == b"group file"
    # Into bob's own space instead: another space, refused.
    assert bob("DELETE", f"/groups/{team}/g.txt").status == 204
    assert bob("MOVE", "/trash/g.txt", None, bob.destination("/files/g.txt")).status == 403

    # A moderator's deletion lands in the owner's trash.
    assert alice.put("/files/offending.txt", b"spam") == 201
    assert mod("DELETE", f"/users/{alice.name}/offending.txt").status == 204
    props = alice.propfind("/trash/")["/trash/offending.txt"]
    assert props[DS + "deleted-by"] == mod.name
    assert mod.members("/trash/") == []
    restored = alice(
        "MOVE", "/trash/offending.txt", None, alice.destination("/files/offending.txt")
    )
    assert restored.status == 201


def test_unicode_and_spaces(server: InprocServer, alice: User) -> None:
    name = "Café menü · Sommer 2026.txt"
    assert alice("MKCOL", "/files/Ordner mit Ümlaut/").status == 201
    assert alice.put(f"/files/Ordner mit Ümlaut/{name}", name.encode()) == 201
    assert alice("DELETE", "/files/Ordner mit Ümlaut/").status == 204
    assert alice.members("/trash/") == ["Ordner mit Ümlaut"]
    assert alice.get(f"/trash/Ordner mit Ümlaut/{name}") == name.encode()
    assert alice("DELETE", f"/files/{name}").status == 404
    back = alice("MOVE", "/trash/Ordner mit Ümlaut", None, alice.destination("/files/Zurück"))
    assert back.status == 201
    assert alice.get(f"/files/Zurück/{name}") == name.encode()
