"""The trash over real HTTP, on both engines: a folder of 1,000 files trashed and restored with
one UPDATE each way, names and properties, browsing, refusals with their reasons, purging (and
gc afterwards), retention, group and moderator deletions, and ``davserver trash``."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import re
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from davserver.cli import main
from davserver.db.types import utcnow
from davserver.housekeeping import Housekeeper
from davserver.models import Blob, FileVersion, LogEntry, Node, Package, PackageItem
from davserver.services.actor import Actor
from davserver.services.maintenance import MaintenanceService
from tests.conftest import ENGINES
from tests.integration.test_dav_http import _peak_while_answered
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
        status = main(["--config", os.devnull, *argv, "--json"])
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


def listed(user: User, original_path: str) -> str:
    """The path in /trash/ of the one item deleted from ``original_path``."""
    found = [
        path
        for path, props in user.propfind("/trash/").items()
        if props.get(DS + "original-path") == original_path
    ]
    assert len(found) == 1, (original_path, found)
    return found[0]


def originals(user: User) -> list[str]:
    """The names the items in the user's trash had when they were deleted."""
    listing = user.propfind("/trash/")
    return sorted(
        props[NC + "trashbin-filename"] for path, props in listing.items() if path != "/trash"
    )


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
    assert originals(alice) == ["big"]
    big = listed(alice, "/files/big")
    assert len(alice.members(big)) == 991
    assert alice.get(f"{big}/sub/f-0007.txt") == b"/big/sub/f-0007.txt holds 7"
    assert subtree(server, root) == (1002, 1000)

    with statements(server) as seen:
        restored = alice("MOVE", big, None, alice.destination("/files/big"))
    assert restored.status == 201, restored.body
    assert len(updates_of(seen, "nodes")) == 1
    assert originals(alice) == []
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
    stamp = r"\d{4}-\d\d-\d\d \d\d\.\d\d\.\d\d\.\d{3}( [0-9a-f]{8})?"
    patterns = [rf"a \({stamp}\)\.txt"] * 3 + [rf"inner \({stamp}\)\.txt", rf"f \({stamp}\)"]
    names = sorted(path.removeprefix("/trash/") for path in listing if path != "/trash")
    assert len(names) == 5 and all(
        any(re.fullmatch(pattern, name) for name in names) for pattern in patterns
    ), names
    assert sorted(
        props[DS + "original-path"] for props in listing.values() if DS + "original-path" in props
    ) == ["/files/a.txt", "/files/f", "/files/f/inner.txt", "/files/x/a.txt", "/files/y/a.txt"]
    a2, f = listed(alice, "/files/y/a.txt"), listed(alice, "/files/f")
    props = listing[a2]
    assert props[NC + "trashbin-filename"] == "a.txt"
    assert props[NC + "trashbin-original-location"] == "files/y/a.txt"
    deleted = int(props[NC + "trashbin-delete-timestamp"])
    assert abs(deleted - utcnow().timestamp()) < 120
    assert dt.datetime.fromisoformat(props[DS + "deleted-at"]).timestamp() == pytest.approx(
        deleted, abs=1
    )
    assert props[DS + "deleted-by"] == alice.name
    assert props[DAV + "getcontentlength"] == str(len(b"/files/y/a.txt"))
    assert alice.get(a2) == b"/files/y/a.txt"
    # Inside a deleted folder: what was in it when it went, not what went before it.
    assert alice.members(f) == ["kept.txt"]
    assert alice.get(f"{f}/kept.txt") == b"kept"
    assert NC + "trashbin-filename" not in alice.propfind(f"{f}/kept.txt", "0")[f"{f}/kept.txt"]
    a1, inner = listed(alice, "/files/x/a.txt"), listed(alice, "/files/f/inner.txt")

    refused = {
        "PUT": alice("PUT", "/trash/new.txt", b"x"),
        "PUT over": alice("PUT", a1, b"x"),
        "MKCOL": alice("MKCOL", "/trash/new/"),
        "PROPPATCH": alice("PROPPATCH", a1, WIN32_PROPPATCH),
        "LOCK": alice("LOCK", a1, b""),
        "COPY out": alice("COPY", a1, None, alice.destination("/files/c.txt")),
        "DELETE inside": alice("DELETE", f"{f}/kept.txt"),
        "DELETE trash": alice("DELETE", "/trash/"),
        "MOVE in": alice("MOVE", "/files/x/", None, alice.destination("/trash/x")),
    }
    assert {k: r.status for k, r in refused.items()} == dict.fromkeys(refused, 403)

    # Restoring the folder does not bring back what was deleted from it before.
    assert alice("MOVE", f, None, alice.destination("/files/f")).status == 201
    assert alice.members("/files/f/") == ["kept.txt"]
    assert alice("MOVE", inner, None, alice.destination("/files/f/inner.txt")).status == 201
    assert alice.members("/files/f/") == ["inner.txt", "kept.txt"]
    # One file out of a deleted folder, under a new name.
    assert alice("DELETE", "/files/f/").status == 204
    f = listed(alice, "/files/f")
    moved = alice("MOVE", f"{f}/kept.txt", None, alice.destination("/files/kept again.txt"))
    assert moved.status == 201 and alice.get("/files/kept again.txt") == b"kept"
    assert alice.members(f) == ["inner.txt"]


def test_reading_a_file_in_the_trash_is_a_logged_download(
    server: InprocServer, alice: User
) -> None:
    """DESIGN: every download writes a logbook row. GET of a file in /trash/ sent its bytes
    and wrote none. It is a file:download of the trashed file, as a GET in /files/ is."""
    assert alice.put("/files/read-in-trash.txt", b"still readable") == 201
    file_id = node_id(server, alice, "/read-in-trash.txt")
    assert alice("DELETE", "/files/read-in-trash.txt").status == 204
    in_trash = listed(alice, "/files/read-in-trash.txt")
    assert alice("HEAD", in_trash).status == 200
    assert alice.get(in_trash) == b"still readable"
    server.application.files.read_log.flush()
    with server.application.db.connect() as conn:
        rows = conn.execute(
            sa.select(LogEntry.node_id, LogEntry.user_id, LogEntry.details).where(
                LogEntry.op_type == "file:download", LogEntry.node_id == file_id
            )
        ).all()
    assert [tuple(row) for row in rows] == [(file_id, alice.id, {"size": 14})]
    # Its versions are kept, but read once it is back: "only files have versions" was wrong.
    older = alice("GET", in_trash + "?version=1")
    assert older.status == 409 and b"restored from the trash" in older.body, older.body


def test_restore_refusals_say_why(server: InprocServer, alice: User, cli: Any) -> None:
    assert alice("MKCOL", "/files/projects/").status == 201
    assert alice.put("/files/projects/plan.txt", b"plan") == 201
    assert alice("DELETE", "/files/projects/plan.txt").status == 204
    assert alice("DELETE", "/files/projects/").status == 204

    plan, projects = listed(alice, "/files/projects/plan.txt"), listed(alice, "/files/projects")
    gone = alice("MOVE", plan, None, alice.destination("/files/projects/plan.txt"))
    assert gone.status == 409 and b"restore it first" in gone.body
    status, _, err = cli("trash", "restore", alice.name, "plan.txt")
    assert status == 1 and "/files/projects is in the trash itself" in err

    assert alice("MOVE", projects, None, alice.destination("/files/projects")).status == 201
    assert alice.put("/files/projects/plan.txt", b"a new plan") == 201
    for overwrite in ("T", "F"):
        taken = alice(
            "MOVE",
            plan,
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
    with server.application.db.read() as session:
        restores = session.execute(
            sa.select(LogEntry.user_id, LogEntry.details)
            .where(LogEntry.op_type == "node:restore")
            .order_by(LogEntry.id.desc())
        ).all()
    # The command line's restore says so, as its other changes do; a client's names its user.
    assert restores[0].user_id is None and restores[0].details["via"] == "cli"
    assert restores[1].user_id == alice.id and "via" not in restores[1].details

    # Into another space: refused.
    team = f"team{uuid.uuid4().hex[:6]}"
    groups = server.application.services.groups
    groups.create_group(None, team)
    groups.add_member(None, team, alice.name)
    assert alice.put("/files/mine.txt", b"mine") == 201
    assert alice("DELETE", "/files/mine.txt").status == 204
    mine = listed(alice, "/files/mine.txt")
    other = alice("MOVE", mine, None, alice.destination(f"/groups/{team}/mine.txt"))
    assert other.status == 403
    assert alice("MOVE", mine, None, alice.destination("/nowhere/mine.txt")).status == 409
    # Under a file: the command line said its folder no longer existed.
    status, _, err = cli(
        "trash",
        "restore",
        alice.name,
        "mine.txt",
        "--to",
        f"{alice.name}:/projects/plan.txt/mine.txt",
    )
    assert status == 1 and "'plan.txt' is a file" in err, err
    # A folder ending in / takes the item under the name it had, as cp and mv do.
    status, result, _ = cli("trash", "restore", alice.name, "mine.txt", "--to", f"{alice.name}:/")
    assert status == 0 and result["to"] == f"{alice.name}:/mine.txt"
    assert alice.get("/files/mine.txt") == b"mine"
    assert alice("DELETE", "/files/mine.txt").status == 204
    # Doubled slashes, as a shell variable ending in / leaves them, mean one.
    status, result, _ = cli(
        "trash", "restore", alice.name, "mine.txt", "--to", f"{alice.name}://projects//"
    )
    assert status == 0 and result["to"] == f"{alice.name}:/projects/mine.txt"
    assert alice.get("/files/projects/mine.txt") == b"mine"


def test_delete_in_the_trash_purges_and_gc_takes_the_blobs(
    server: InprocServer, alice: User
) -> None:
    first, second = uuid.uuid4().bytes * 8, uuid.uuid4().bytes * 8
    assert alice("MKCOL", "/files/old/").status == 201
    assert alice.put("/files/old/data.bin", first) == 201
    assert alice.put("/files/old/data.bin", second) == 204
    folder, file = node_id(server, alice, "/old"), node_id(server, alice, "/old/data.bin")
    assert alice("DELETE", "/files/old/").status == 204

    old = listed(alice, "/files/old")
    assert alice("DELETE", f"{old}/").status == 204
    assert subtree(server, folder) == (0, 0)
    assert count(server, FileVersion, FileVersion.node_id == file) == 0
    assert originals(alice) == []
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
    assert alice("DELETE", f"{old}/").status == 404


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
    assert originals(alice) == ["fresh.txt"]
    assert count(server, Node, Node.id == stale[alice.name]) == 0
    assert count(server, Node, Node.id == stale[bob.name]) == 1

    # The command line purges everyone's.
    status, report, _ = cli("trash", "purge", "--dry-run")
    assert status == 0 and report["dry_run"] and report["items_purged"] >= 1
    assert count(server, Node, Node.id == stale[bob.name]) == 1
    status, report, _ = cli("trash", "purge", "--user", bob.name)
    assert status == 0 and report["items_purged"] == 1 and report["versions_removed"] == 1
    assert count(server, Node, Node.id == stale[bob.name]) == 0
    status, items, _ = cli("trash", "list", bob.name)
    fresh = listed(bob, "/files/fresh.txt").removeprefix("/trash/")
    assert status == 0 and [item["name"] for item in items] == [fresh]
    for days in ("99999999999", "36501", "-1"):  # past the calendar: a usage error
        with pytest.raises(SystemExit) as usage:
            cli("trash", "purge", "--user", bob.name, "--older-than", days)
        assert usage.value.code == 2
    assert bob.members("/trash/") == [fresh]
    status, report, _ = cli("trash", "purge", "--user", bob.name, "--older-than", "0")
    assert status == 0 and report["items_purged"] == 1
    assert originals(bob) == []


def pin(server: InprocServer, user: User, node: uuid.UUID) -> uuid.UUID:
    """A package of ``user``'s pinning the file's current version; the package's id."""
    with server.application.db.write() as session:
        version = session.scalar(sa.select(FileVersion).where(FileVersion.node_id == node))
        assert version is not None
        package = Package(name=f"p{uuid.uuid4().hex[:6]}", created_by=user.id)
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
        return package.id


def test_a_pinned_item_stays_until_its_package_lets_go(
    server: InprocServer, alice: User, cli: Any
) -> None:
    assert alice.put("/files/pinned.txt", b"promised to a package") == 201
    node = node_id(server, alice, "/pinned.txt")
    pin(server, alice, node)
    assert alice("DELETE", "/files/pinned.txt").status == 204
    refused = alice("DELETE", listed(alice, "/files/pinned.txt"))
    assert refused.status == 409 and b"packages pin" in refused.body
    set_deleted_at(server, node, utcnow() - dt.timedelta(days=90))
    assert originals(alice) == ["pinned.txt"]
    status, report, _ = cli("trash", "purge", "--user", alice.name)
    assert status == 0 and report["items_pinned"] == 1 and report["items_purged"] == 0
    assert count(server, Node, Node.id == node) == 1
    # Once its package expired (404 everywhere: nobody can take the item out), a pin holds
    # nothing back: the 409 asked for what could not be done.
    assert alice.put("/files/expired.txt", b"promised for a while") == 201
    other = node_id(server, alice, "/expired.txt")
    package = pin(server, alice, other)
    assert alice("DELETE", "/files/expired.txt").status == 204
    with server.application.db.write() as session:
        session.execute(
            sa.update(Package)
            .where(Package.id == package)
            .values(expires_at=utcnow() - dt.timedelta(seconds=1))
        )
    assert alice("DELETE", listed(alice, "/files/expired.txt")).status == 204
    assert count(server, Node, Node.id == other) == 0


def test_another_user_s_package_does_not_stop_the_owner_s_purge(
    server: InprocServer, alice: User, cli: Any
) -> None:
    """bob pinned a file alice shared with him, in a package that never expires; alice
    revoked the share and deleted the file. bob's package can no longer deliver it (403), and
    only bob can change his package: his pin must not keep alice's file in her trash for
    ever. Her purge releases it; bob's zip goes on answering 403 naming the file (never a
    smaller zip). A pin of alice's own still stops her, as she can remove it."""
    bob = make_user(server, "bob")
    assert alice("MKCOL", "/files/gift/").status == 201
    assert alice.put("/files/gift/secret.txt", b"alice's own") == 201
    assert alice.put("/files/gift/mine.txt", b"pinned by alice") == 201
    status, _, _ = cli("grant", f"{alice.name}:/gift", "--to", bob.name, "--rights", "all")
    assert status == 0
    shared = f"/shared/{alice.name}/gift/secret.txt"
    assert bob("MKCOL", "/packages/hoard/").status == 201
    assert bob("COPY", shared, None, bob.destination("/packages/hoard/secret.txt")).status == 201
    assert alice("MKCOL", "/packages/own/").status == 201
    own = alice("COPY", "/files/gift/mine.txt", None, alice.destination("/packages/own/m.txt"))
    assert own.status == 201
    assert cli("revoke", f"{alice.name}:/gift", bob.name)[0] == 0
    assert alice("DELETE", "/files/gift/").status == 204

    folder = listed(alice, "/files/gift")
    refused = alice("DELETE", folder)
    assert refused.status == 409 and b"packages pin" in refused.body  # her own package
    assert alice("DELETE", "/packages/own/m.txt").status == 204
    assert alice("DELETE", folder).status == 204
    assert originals(alice) == []
    zipped = bob("GET", "/packages/hoard.zip")
    assert zipped.status == 403 and b"secret.txt" in zipped.body
    assert bob("DELETE", "/packages/hoard/secret.txt").status == 204
    assert bob("GET", "/packages/hoard.zip").status == 200
    with server.application.db.read() as session:
        purge = session.scalars(
            sa.select(LogEntry.details)
            .where(LogEntry.op_type == "node:purge", LogEntry.user_id == alice.id)
            .order_by(LogEntry.id.desc())
        ).first()
    assert purge is not None and purge["released_pins"] == 1


def test_purging_a_pinned_empty_file_changes_its_package(server: InprocServer, alice: User) -> None:
    """An empty file's pin holds the file's node, not a version: its purge cleared the pin's
    node id by the foreign key alone and left the package's modified_at as it was, which the
    packages kept in memory (``PackageCache``) take to mean that nothing in it changed."""
    assert alice.put("/files/empty.txt", b"") == 201
    assert alice("MKCOL", "/packages/blank/").status == 201
    pin = alice("COPY", "/files/empty.txt", None, alice.destination("/packages/blank/e.txt"))
    assert pin.status == 201
    packages = server.application.services.packages
    before = packages.find(alice.id, "blank")
    assert before is not None and before.items[0].node_id is not None
    assert alice("DELETE", "/files/empty.txt").status == 204
    assert alice("DELETE", listed(alice, "/files/empty.txt")).status == 204
    after = packages.find(alice.id, "blank")
    assert after is not None and after.items[0].node_id is None
    assert after.modified_at > before.modified_at
    assert alice("GET", "/packages/blank.zip").status == 403  # its file is gone


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
    g = listed(bob, f"/groups/{team}/g.txt")
    props = bob.propfind("/trash/")[g]
    assert props[DS + "original-path"] == f"/groups/{team}/g.txt"
    assert originals(alice) == []
    restored = bob("MOVE", g, None, bob.destination(f"/groups/{team}/g.txt"))
    assert restored.status == 201 and alice.get(f"/groups/{team}/g.txt") == b"group file"
    # Into bob's own space instead: another space, refused.
    assert bob("DELETE", f"/groups/{team}/g.txt").status == 204
    g = listed(bob, f"/groups/{team}/g.txt")
    assert bob("MOVE", g, None, bob.destination("/files/g.txt")).status == 403

    # A moderator's deletion lands in the owner's trash.
    assert alice.put("/files/offending.txt", b"spam") == 201
    assert mod("DELETE", f"/users/{alice.name}/offending.txt").status == 204
    offending = listed(alice, "/files/offending.txt")
    props = alice.propfind("/trash/")[offending]
    assert props[DS + "deleted-by"] == mod.name
    assert originals(mod) == []
    restored = alice("MOVE", offending, None, alice.destination("/files/offending.txt"))
    assert restored.status == 201


def test_a_moderator_may_neither_download_nor_purge_what_they_trashed_from_a_group(
    server: InprocServer, alice: User
) -> None:
    """Moderators read and trash anything, but download nothing they are not given. A group's
    file a moderator trashed is in their trash (deleted by them, from a group they see):
    there they could download it, and purge it for good. Now neither; the group's admin
    finds it in theirs and restores it."""
    mod = make_user(server, "mod", roles=["user", "moderator"])
    team = f"team{uuid.uuid4().hex[:6]}"
    groups = server.application.services.groups
    groups.create_group(None, team)
    groups.add_member(None, team, alice.name, admin=True)
    assert alice("MKCOL", f"/groups/{team}/board/").status == 201
    assert alice.put(f"/groups/{team}/board/secret.txt", b"board minutes") == 201
    assert alice.put(f"/groups/{team}/plan.txt", b"the plan") == 201
    assert mod("GET", f"/groups/{team}/plan.txt").status == 403
    for path in ("plan.txt", "board/"):
        assert mod("DELETE", f"/groups/{team}/{path}").status == 204
    plan = listed(mod, f"/groups/{team}/plan.txt")
    board = listed(mod, f"/groups/{team}/board")
    for url, headers in (
        (plan, {}),
        (plan, {"Range": "bytes=0-3"}),
        (f"{board}/secret.txt", {}),
    ):
        refused = mod("GET", url, None, headers)
        assert refused.status == 403, (url, refused.status, refused.body[:200])
        assert b"board minutes" not in refused.body and b"the plan" not in refused.body
    assert mod("HEAD", plan).status == 200  # seeing it is reading it
    assert mod("DELETE", plan).status == 403
    assert mod("DELETE", board).status == 403
    # The group's admin sees both, may read them, and restores one and purges the other.
    plan, board = listed(alice, f"/groups/{team}/plan.txt"), listed(alice, f"/groups/{team}/board")
    assert alice.get(plan) == b"the plan"
    assert alice("MOVE", plan, None, alice.destination(f"/groups/{team}/plan.txt")).status == 201
    assert alice("DELETE", board).status == 204
    assert alice.get(f"/groups/{team}/plan.txt") == b"the plan"


def test_unicode_and_spaces(server: InprocServer, alice: User) -> None:
    name = "Café menü · Sommer 2026.txt"
    assert alice("MKCOL", "/files/Ordner mit Ümlaut/").status == 201
    assert alice.put(f"/files/Ordner mit Ümlaut/{name}", name.encode()) == 201
    assert alice("DELETE", "/files/Ordner mit Ümlaut/").status == 204
    assert originals(alice) == ["Ordner mit Ümlaut"]
    folder = listed(alice, "/files/Ordner mit Ümlaut")
    assert alice.get(f"{folder}/{name}") == name.encode()
    assert alice("DELETE", f"/files/{name}").status == 404
    back = alice("MOVE", folder, None, alice.destination("/files/Zurück"))
    assert back.status == 201
    assert alice.get(f"/files/Zurück/{name}") == name.encode()


def test_names_stay_while_namesakes_are_purged_and_restored(
    server: InprocServer, alice: User
) -> None:
    """Purging or restoring one of several namesakes leaves the others' names alone, so a
    client acting on a listing (or retrying) never hits another item."""
    for content in (b"X1", b"X2", b"X3", b"X4"):
        assert alice.put("/files/x.txt", content) == 201
        assert alice("DELETE", "/files/x.txt").status == 204
    # A real file named like a suffixed one is an item of its own.
    assert alice.put("/files/x (2).txt", b"not X2") == 201
    assert alice("DELETE", "/files/x (2).txt").status == 204
    names = {alice.get(path): path for path in alice.propfind("/trash/") if path != "/trash"}
    assert sorted(names) == [b"X1", b"X2", b"X3", b"X4", b"not X2"]

    assert alice("DELETE", names[b"X1"]).status == 204
    assert alice("DELETE", names[b"X1"]).status == 404  # a retry finds nothing
    assert alice("DELETE", names[b"X2"]).status == 204  # the middle one, by its listed name
    assert alice("DELETE", names[b"X2"]).status == 404
    back = alice("MOVE", names[b"X3"], None, alice.destination("/files/x.txt"))
    assert back.status == 201 and alice.get("/files/x.txt") == b"X3"
    assert alice("MOVE", names[b"X3"], None, alice.destination("/files/y.txt")).status == 404
    remaining = {path: alice.get(path) for path in alice.propfind("/trash/") if path != "/trash"}
    assert remaining == {names[b"X4"]: b"X4", names[b"not X2"]: b"not X2"}


def test_an_item_trashed_inside_a_trashed_folder_keeps_its_name(
    server: InprocServer, alice: User
) -> None:
    assert alice("MKCOL", "/files/d/").status == 201
    for path in ("/files/d/n.txt", "/files/n.txt"):
        assert alice.put(path, path.encode()) == 201
    assert alice("DELETE", "/files/d/n.txt").status == 204
    inner = listed(alice, "/files/d/n.txt")
    assert alice("DELETE", "/files/d/").status == 204
    assert alice("DELETE", "/files/n.txt").status == 204
    folder = listed(alice, "/files/d")
    assert alice("DELETE", listed(alice, "/files/n.txt")).status == 204
    assert alice("MOVE", folder, None, alice.destination("/files/d")).status == 201
    assert listed(alice, "/files/d/n.txt") == inner
    assert alice.get(inner) == b"/files/d/n.txt"
    restored = alice("MOVE", inner, None, alice.destination("/files/d/n.txt"))
    assert restored.status == 201 and originals(alice) == []


def test_purging_a_folder_leaves_what_was_deleted_from_it_before(
    server: InprocServer, alice: User
) -> None:
    """An item deleted from a folder before the folder was is an item of the trash of its own
    (the folder's restore leaves it out): purging the folder must not purge it too. It stays,
    under its own name, in the folder the purged one was in, and a pin it holds does not stop
    the folder's purge."""
    assert alice("MKCOL", "/files/box/").status == 201
    assert alice("MKCOL", "/files/box/sub/").status == 201
    assert alice.put("/files/box/early.txt", b"deleted first") == 201
    assert alice.put("/files/box/sub/deep.txt", b"deleted first, deeper") == 201
    assert alice.put("/files/box/late.txt", b"deleted with the folder") == 201
    assert alice("MKCOL", "/packages/keep/").status == 201
    pin = alice("COPY", "/files/box/early.txt", None, alice.destination("/packages/keep/e.txt"))
    assert pin.status == 201
    assert alice("DELETE", "/files/box/early.txt").status == 204
    assert alice("DELETE", "/files/box/sub/deep.txt").status == 204
    early, deep = listed(alice, "/files/box/early.txt"), listed(alice, "/files/box/sub/deep.txt")
    assert alice("DELETE", "/files/box/").status == 204
    folder = listed(alice, "/files/box")

    assert alice("DELETE", f"{folder}/").status == 204
    assert originals(alice) == ["deep.txt", "early.txt"]
    assert listed(alice, "/files/early.txt") == early
    assert listed(alice, "/files/deep.txt") == deep
    assert alice.get(early) == b"deleted first" and alice.get(deep) == b"deleted first, deeper"
    with server.application.db.read() as session:
        purge = session.scalars(
            sa.select(LogEntry.details)
            .where(LogEntry.op_type == "node:purge")
            .order_by(LogEntry.id.desc())
        ).first()
    assert purge is not None and (purge["nodes"], purge["versions"]) == (3, 1)
    assert alice("MOVE", early, None, alice.destination("/files/early.txt")).status == 201
    assert alice.get("/files/early.txt") == b"deleted first"
    assert alice("DELETE", deep).status == 204 and originals(alice) == []
    assert alice("DELETE", "/packages/keep/").status == 204


def test_namesakes_deleted_in_the_same_millisecond(
    server: InprocServer, alice: User, cli: Any
) -> None:
    ids = []
    for content in (b"one", b"two"):
        assert alice.put("/files/same.txt", content) == 201
        ids.append(node_id(server, alice, "/same.txt"))
        assert alice("DELETE", "/files/same.txt").status == 204
    when = dt.datetime(2026, 11, 27, 4, 0, 31, 207_000, tzinfo=dt.UTC)
    for node in ids:
        set_deleted_at(server, node, when)
    listing = {alice.get(p): p for p in alice.propfind("/trash/") if p != "/trash"}
    assert listing == {
        content: f"/trash/same (2026-11-27 04.00.31.207 {node.hex[:8]}).txt"
        for content, node in zip((b"one", b"two"), ids, strict=True)
    }
    # The name both could take finds neither, on the web and on the command line.
    assert alice("DELETE", "/trash/same (2026-11-27 04.00.31.207).txt").status == 404
    status, _, err = cli("trash", "restore", alice.name, "same.txt")
    assert status == 1 and "2 items deleted as 'same.txt'" in err
    assert alice("DELETE", listing[b"one"]).status == 204
    # Alone now, it is listed by the shorter name and still answers to the one it had.
    assert alice.members("/trash/") == ["same (2026-11-27 04.00.31.207).txt"]
    assert alice.get(listing[b"two"]) == b"two"


def test_a_groups_admins_see_what_anyone_deleted_from_its_space(
    server: InprocServer, alice: User, cli: Any
) -> None:
    """What someone the group shared a folder with deletes from it, and what a member deletes
    before being removed from the group, is in the trash of the group's admins too: else
    nobody who can reach the group's space could restore it, and retention would purge it."""
    bob, carol = make_user(server, "bob"), make_user(server, "carol")
    team = f"team{uuid.uuid4().hex[:6]}"
    groups = server.application.services.groups
    groups.create_group(None, team)
    groups.add_member(None, team, alice.name, admin=True)
    groups.add_member(None, team, bob.name)
    assert alice("MKCOL", f"/groups/{team}/box/").status == 201
    for name in ("by-carol.txt", "by-bob.txt"):
        assert alice.put(f"/groups/{team}/box/{name}", name.encode()) == 201
    grant = {"path": f"/groups/{team}/box", "user": carol.name, "rights": ["read", "write"]}
    headers = {"Content-Type": "application/json"}
    assert alice("POST", "/api/v1/grants", json.dumps(grant).encode(), headers).status == 201
    assert carol("DELETE", f"/shared/@{team}/box/by-carol.txt").status == 204
    assert bob("DELETE", f"/groups/{team}/box/by-bob.txt").status == 204
    groups.remove_member(None, team, bob.name)
    assert originals(alice) == ["by-bob.txt", "by-carol.txt"]
    # `davserver trash list` shows what the user's /trash/ shows (it showed an admin nothing
    # of the group's, and a removed member what they no longer reach).
    for user in (alice, bob, carol):
        status, items, _ = cli("trash", "list", user.name)
        assert status == 0
        assert sorted(item["name"] for item in items) == user.members("/trash/"), user.name
    status, items, _ = cli("trash", "list", bob.name)
    assert [item["name"] for item in items] == []
    entry = listed(alice, f"/groups/{team}/box/by-carol.txt").removeprefix("/trash/")
    status, _, _ = cli("trash", "restore", alice.name, entry)
    assert status == 0 and alice.get(f"/groups/{team}/box/by-carol.txt") == b"by-carol.txt"
    for name in ("by-bob.txt",):
        entry = listed(alice, f"/groups/{team}/box/{name}")
        back = alice("MOVE", entry, None, alice.destination(f"/groups/{team}/box/{name}"))
        assert back.status == 201
        assert alice.get(f"/groups/{team}/box/{name}") == name.encode()


def test_a_big_trash_is_listed_one_member_at_a_time(server: InprocServer) -> None:
    """PROPFIND Depth 1 of /trash/ with 1,500 items: each item's resource is made when it is
    written and let go after, as a folder's members are (``members_of``). Every one was made
    before the first was written: 3.7 times the body's size at the peak here, 3.2 with 50,000
    items (179 MiB for a 55 MiB body); now 2.0 (108 MiB), the body and the listing's rows."""
    app = server.application
    owner = app.services.users.user_id(server.user)
    home = app.files.home_id(owner)
    when = utcnow() - dt.timedelta(days=1)
    rows = []
    for i in range(1_500):
        name = f"item-{i:05d}-of-a-big-trash.txt"
        deleted = when + dt.timedelta(milliseconds=i)
        rows.append(
            {
                "id": uuid.uuid4(),
                "parent_id": home,
                "name": name,
                "name_key": name,
                "kind": "file",
                "owner_id": owner,
                "space": "home",
                "size": 1,
                "created_at": when,
                "modified_at": when,
                "deleted_at": deleted,
                "deleted_by": owner,
            }
        )
    with app.db.engine.begin() as conn:
        conn.execute(sa.insert(Node.__table__), rows)
    peak, length = _peak_while_answered(server, "/trash/", {"Depth": "1"})
    assert length > 1_000_000
    assert peak < 2.5 * length, (peak, length)


@pytest.mark.parametrize("engine", ENGINES)
def test_with_the_trash_off_delete_removes_for_good(engine: str, tmp_path: Path) -> None:
    """DESIGN: DELETE moves to the trash "unless configured otherwise". With
    ``trash.enabled: false`` a DELETE purges at once: nothing to restore, and gc takes the
    bytes. What still lands in the trash (an item replaced by a MOVE onto it, one a package
    pins) is purged by the next sweep, or by a listing of the trash."""
    with run_inproc_server(engine, tmp_path, trash__enabled=False) as srv:
        alice = make_user(srv, "alice")
        secret = uuid.uuid4().bytes * 8
        assert alice("MKCOL", "/files/private/").status == 201
        assert alice.put("/files/private/secret.bin", secret) == 201
        assert alice.put("/files/gone.txt", b"one file") == 201
        folder, file = node_id(srv, alice, "/private"), node_id(srv, alice, "/gone.txt")

        assert alice("DELETE", "/files/private/").status == 204
        assert alice("DELETE", "/files/gone.txt").status == 204
        assert subtree(srv, folder) == (0, 0) and subtree(srv, file) == (0, 0)
        assert alice.members("/trash/") == []
        with srv.application.db.read() as session:
            ops = session.execute(
                sa.select(LogEntry.op_type, LogEntry.user_id, LogEntry.details)
                .where(LogEntry.node_id.in_([folder, file]))
                .order_by(LogEntry.id)
            ).all()
        assert [(op, user) for op, user, _ in ops] == [
            ("folder:create", alice.id), ("file:create", alice.id),
            ("node:delete", alice.id), ("node:purge", alice.id),
            ("node:delete", alice.id), ("node:purge", alice.id),
        ]  # fmt: skip
        assert {details["reason"] for op, _, details in ops if op == "node:purge"} == {"deleted"}
        app = srv.application
        MaintenanceService(app.db, app.blobs).collect_garbage(grace=dt.timedelta(0))
        assert count(srv, Blob, Blob.sha256 == hashlib.sha256(secret).hexdigest()) == 0

        # A MOVE onto a file makes the source's bytes its new version and trashes the source:
        # in the trash until the next sweep.
        assert alice.put("/files/old.txt", b"old") == 201
        assert alice.put("/files/new.txt", b"new") == 201
        source = node_id(srv, alice, "/new.txt")
        moved = alice("MOVE", "/files/new.txt", headers={"Destination": "/files/old.txt"})
        assert moved.status == 204
        assert count(srv, Node, Node.id == source) == 1
        swept = Housekeeper(app.services, 0).run_once()
        assert swept.trash_items >= 1 and count(srv, Node, Node.id == source) == 0
        assert alice.get("/files/old.txt") == b"new"

        # Pinned by a package: kept in the trash (204, nothing lost) until it lets go.
        assert alice.put("/files/pinned.txt", b"promised") == 201
        pinned = node_id(srv, alice, "/pinned.txt")
        package = pin(srv, alice, pinned)
        assert alice("DELETE", "/files/pinned.txt").status == 204
        assert originals(alice) == ["pinned.txt"]
        assert count(srv, Node, Node.id == pinned) == 1
        with app.db.write() as session:
            session.execute(sa.delete(PackageItem).where(PackageItem.package_id == package))
        assert originals(alice) == []  # listing purges it
        assert count(srv, Node, Node.id == pinned) == 0
