"""The package service and ``NamespaceService.rights_on`` on both engines: rights by node id as
a table, CRC-32s filled in lazily, pinned times, expiry and purge, and migration 0003 on rows
that existed before it."""

from __future__ import annotations

import datetime as dt
import io
import threading
import time
import uuid
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
import sqlalchemy as sa
from alembic import command

from davserver.blobstore import FileSystemBlobStore
from davserver.db import Database
from davserver.db.dialect import NO_KEY_UPDATE
from davserver.db.migrate import alembic_config
from davserver.db.types import UTCDateTime, utcnow
from davserver.errors import Forbidden, NotFound
from davserver.models import Blob, FileVersion, Grant, Group, GroupMember, Node, Package, User
from davserver.services import package_rows as package_rows_module
from davserver.services import tree
from davserver.services.actor import Actor
from davserver.services.files import FileService
from davserver.services.maintenance import MaintenanceService
from davserver.services.namespace import NamespaceService
from davserver.services.packages import PackageService
from davserver.services.permissions import EVERYTHING, GROUP_MEMBER, Perm
from davserver.services.tree import NodeView
from davserver.services.version_rows import add_version
from davserver.services.version_rules import VersionPolicy
from davserver.services.zipstream import MANIFEST_NAME
from tests.blobs import put
from tests.dbs import in_thread, wait_for_a_lock_wait

R, D, W = Perm.READ, Perm.DOWNLOAD, Perm.WRITE


@dataclass
class World:
    """alice's tree, bob in group "team", grants, and who asks."""

    namespace: NamespaceService
    actors: dict[str, Actor]
    nodes: dict[str, uuid.UUID]


def add_user(database: Database, name: str) -> uuid.UUID:
    with database.write() as session:
        user = User(username=name, password_hash="x")
        session.add(user)
        session.flush()
        return user.id


def grant(database: Database, node_id: uuid.UUID, rights: Perm, **grantee: object) -> None:
    with database.write() as session:
        session.add(
            Grant(
                node_id=node_id,
                can_read=bool(rights & R),
                can_download=bool(rights & D),
                can_write=bool(rights & W),
                **grantee,
            )
        )


@pytest.fixture
def world(database: Database, files: FileService, actor: Actor, home: NodeView) -> World:
    ids = {name: add_user(database, name) for name in ("bob", "carol", "dave", "mod")}
    with database.write() as session:
        team = Group(name="team")
        session.add(team)
        session.flush()
        session.add(GroupMember(group_id=team.id, user_id=ids["bob"]))
        team_id = team.id
    folder = files.create_folder(actor, home, "f")
    inner = put(files, actor, folder, "x.txt", b"x")
    loose = put(files, actor, home, "g.txt", b"g")
    lapsed = put(files, actor, home, "lapsed.txt", b"l")
    trashed = put(files, actor, home, "trashed.txt", b"t")
    binned = files.create_folder(actor, home, "binned")
    below_binned = put(files, actor, binned, "y.txt", b"y")
    files.delete(actor, trashed.id)
    files.delete(actor, binned.id)
    root = files.resolve(files.group_root_id(team_id, ids["bob"]), [])
    assert root is not None
    team_file = put(files, Actor(ids["bob"], "bob"), root, "t.txt", b"team")
    grant(database, folder.id, R | D, user_id=ids["bob"])
    grant(database, loose.id, R, user_id=ids["bob"])
    grant(database, loose.id, D, group_id=team_id)
    grant(database, folder.id, R | D | W, user_id=ids["carol"])
    with database.write() as session:
        session.add(
            Grant(
                node_id=lapsed.id,
                user_id=ids["bob"],
                can_read=True,
                can_download=True,
                expires_at=utcnow() - dt.timedelta(seconds=1),
            )
        )
    roles = {"carol": {"viewer"}, "dave": {"admin"}, "mod": {"moderator"}}
    actors = {"alice": actor, "alice-key": Actor(actor.user_id, "alice", read_only=True)}
    for name, user_id in ids.items():
        actors[name] = Actor(user_id, name, frozenset(roles.get(name, {"user"})))
    nodes = {
        "f": folder.id,
        "f/x.txt": inner.id,
        "g.txt": loose.id,
        "lapsed.txt": lapsed.id,
        "trashed.txt": trashed.id,
        "binned/y.txt": below_binned.id,
        "team/t.txt": team_file.id,
        "unknown": uuid.uuid4(),
    }
    return World(NamespaceService(database, files), actors, nodes)


RIGHTS = [
    # who, node, rights
    ("alice", "f/x.txt", EVERYTHING),
    ("alice-key", "f/x.txt", R | D),  # a read-only key reads and downloads at most
    ("alice", "trashed.txt", Perm.NONE),  # deleted
    ("alice", "binned/y.txt", Perm.NONE),  # below a deleted folder
    ("alice", "unknown", Perm.NONE),
    ("bob", "f", R | D),
    ("bob", "f/x.txt", R | D),  # the grant on its folder
    ("bob", "g.txt", R | D),  # read to him, download to his group
    ("bob", "lapsed.txt", Perm.NONE),  # the grant expired
    ("bob", "team/t.txt", GROUP_MEMBER),
    ("carol", "f/x.txt", R | D),  # a viewer never writes, whatever the grant
    ("carol", "g.txt", Perm.NONE),
    ("carol", "team/t.txt", Perm.NONE),
    ("dave", "team/t.txt", EVERYTHING),  # admin
    ("dave", "trashed.txt", Perm.NONE),  # deleted is deleted, even for admins
    ("mod", "g.txt", R | Perm.TRASH),
]


@pytest.mark.parametrize(("who", "node", "rights"), RIGHTS)
def test_rights_on(world: World, who: str, node: str, rights: Perm) -> None:
    ctx = world.namespace.context(world.actors[who])
    assert world.namespace.rights_on(ctx, [world.nodes[node]]) == {world.nodes[node]: rights}


def test_rights_on_many_at_once_agree_with_one_by_one(world: World) -> None:
    ctx = world.namespace.context(world.actors["bob"])
    together = world.namespace.rights_on(ctx, world.nodes.values())
    assert together == {
        node_id: world.namespace.rights_on(ctx, [node_id])[node_id]
        for node_id in world.nodes.values()
    }
    assert world.namespace.rights_on(ctx, []) == {}


def test_rights_on_takes_more_ids_than_one_statement_may_hold(world: World) -> None:
    """A package of more than 65,535 files: PostgreSQL takes at most 65,535 parameters in a
    statement, so the ids are read in batches."""
    ctx = world.namespace.context(world.actors["bob"])
    known = world.nodes["f/x.txt"]
    ids = [uuid.uuid4() for _ in range(70_000)] + [known]
    rights = world.namespace.rights_on(ctx, ids)
    assert rights[known] == world.namespace.rights_on(ctx, [known])[known] != Perm.NONE
    assert sum(1 for right in rights.values() if right != Perm.NONE) == 1


def test_rights_on_matches_the_rights_of_a_path(world: World) -> None:
    for who, parts in (
        ("bob", ["shared", "alice", "f", "x.txt"]),
        ("bob", ["shared", "alice", "g.txt"]),
        ("bob", ["groups", "team", "t.txt"]),
        ("alice", ["files", "f", "x.txt"]),
    ):
        ctx = world.namespace.context(world.actors[who])
        reached = world.namespace.resolve(ctx, parts)
        assert world.namespace.rights_on(ctx, [reached.view.id])[reached.view.id] == reached.rights


# -- the service


@pytest.fixture
def packages(database: Database, store: FileSystemBlobStore, files: FileService) -> PackageService:
    return PackageService(database, store, NamespaceService(database, files), default_expiry_days=7)


def zip_of(packages: PackageService, actor: Actor, name: str) -> zipfile.ZipFile:
    ctx = packages.namespace.context(actor)
    archive = packages.download(ctx, packages.get(actor.user_id, name))
    with archive.stream.open() as reader:
        return zipfile.ZipFile(io.BytesIO(reader.read()))


def test_missing_crc32_is_computed_once_and_stored(
    database: Database, files: FileService, packages: PackageService, actor: Actor, home: NodeView
) -> None:
    data = b"uploaded before migration 0002" * 1000
    view = put(files, actor, home, "old.bin", data)
    with database.write() as session:
        session.execute(sa.update(Blob).values(crc32=None))
    package = packages.create(actor, actor.user_id, "legacy")
    packages.add(actor, package, packages.namespace.context(actor), view)
    layout = packages.layout(packages.get(actor.user_id, "legacy"))
    archive = zip_of(packages, actor, "legacy")
    assert archive.testzip() is None and archive.read("old.bin") == data
    with database.read() as session:
        assert session.scalar(sa.select(Blob.crc32).where(Blob.sha256 == view.sha256)) == (
            zlib.crc32(data)
        )
    again = packages.download(
        packages.namespace.context(actor), packages.get(actor.user_id, "legacy")
    )
    assert again.etag == layout.etag and again.size == layout.size


def test_pinned_time_and_version_survive_later_changes(
    files: FileService, packages: PackageService, actor: Actor, home: NodeView
) -> None:
    first = put(files, actor, home, "doc.txt", b"one")
    package = packages.create(actor, actor.user_id, "pinned", expires_days=0)
    assert package.expires_at is None
    (item,) = packages.add(actor, package, packages.namespace.context(actor), first, "d/doc.txt")
    assert (item.path, item.version_no, item.size) == ("d/doc.txt", 1, 3)
    before = packages.layout(packages.get(actor.user_id, "pinned"))
    put(files, actor, home, "doc.txt", b"two, longer")
    files.set_mtime(actor, first.id, dt.datetime(2001, 1, 1, tzinfo=dt.UTC))
    after = packages.layout(packages.get(actor.user_id, "pinned"))
    assert after.etag == before.etag
    assert zip_of(packages, actor, "pinned").read("d/doc.txt") == b"one"


def test_a_pin_racing_an_upload_that_prunes_the_version_it_read_pins_the_new_one(
    database: Database, store: FileSystemBlobStore, actor: Actor, home: NodeView
) -> None:
    """On PostgreSQL an upload that made a new version and pruned the one before (keep_last
    1) while a COPY into a package was pinning that one: the pin's insert failed on its
    foreign key (a 500 naming the SQL); the other way round, the upload's prune failed."""
    files = FileService(database, store, VersionPolicy(keep_last=1))
    packages = PackageService(
        database, store, NamespaceService(database, files), default_expiry_days=7
    )
    doc = put(files, actor, home, "r.txt", b"one")
    other = put(files, actor, home, "other.txt", b"two")
    with database.read() as session:
        blob_id = session.scalar(
            sa.select(FileVersion.blob_id).where(FileVersion.node_id == other.id)
        )
    assert blob_id is not None
    package = packages.create(actor, actor.user_id, "race")
    ctx = packages.namespace.context(actor)
    opened, release = threading.Event(), threading.Event()
    outcome: dict[str, Any] = {}

    def upload() -> None:  # what a PUT's commit does, held open
        with database.write() as session:
            tree.take_turn(session, doc.id)
            session.get(Node, doc.id, with_for_update=NO_KEY_UPDATE)
            add_version(session, files.policy, actor, doc.id, blob_id, 3, "text/plain")
            opened.set()
            assert release.wait(30)

    uploading = in_thread("upload", upload, outcome)
    assert opened.wait(30)
    pinning = in_thread("pin", lambda: packages.add(actor, package, ctx, doc), outcome)
    if database.engine.dialect.name == "postgresql":
        wait_for_a_lock_wait(database)  # the pin waits for the upload
    else:
        time.sleep(0.3)  # SQLite: its write transaction waits to begin
    release.set()
    uploading.join(30)
    pinning.join(30)
    assert outcome == {"upload": None, "pin": None}
    (item,) = packages.get(actor.user_id, "race").items
    assert item.version_no == 2
    assert zip_of(packages, actor, "race").read("r.txt") == b"two"


def test_a_pin_that_postgresql_chose_to_break_a_deadlock_runs_again(
    database: Database,
    files: FileService,
    packages: PackageService,
    actor: Actor,
    home: NodeView,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Adding holds the pinned files' rows, so a MOVE onto one of them that holds the other
    can deadlock with it; when PostgreSQL aborted the add to break the cycle, it answered 500.
    It runs again now, as writes in FileService do."""
    doc = put(files, actor, home, "dl.txt", b"pinned after a deadlock")
    package = packages.create(actor, actor.user_id, "deadlocked")
    real = package_rows_module.pins_below
    calls: list[int] = []

    class DeadlockDetected(Exception):
        sqlstate = "40P01"

    def deadlocked_once(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        if len(calls) == 1:
            raise sa.exc.OperationalError("SELECT ... FOR SHARE", {}, DeadlockDetected())
        return real(*args, **kwargs)

    monkeypatch.setattr("davserver.services.packages.pins_below", deadlocked_once)
    (item,) = packages.add(actor, package, packages.namespace.context(actor), doc)
    assert len(calls) == 2 and item.path == "dl.txt"
    assert zip_of(packages, actor, "deadlocked").read("dl.txt") == b"pinned after a deadlock"


@pytest.mark.parametrize("name", ["Thumbs.db", ".DS_Store", "._report.pdf"])
def test_a_pinned_version_of_desktop_metadata_is_not_replaced(
    files: FileService, packages: PackageService, actor: Actor, home: NodeView, name: str
) -> None:
    """Desktop metadata files keep one version, replaced by each upload; but a version a
    package pins is never replaced: the next upload adds a version beside it."""
    first = put(files, actor, home, name, b"pinned metadata")
    package = packages.create(actor, actor.user_id, "meta")
    packages.add(actor, package, packages.namespace.context(actor), first)
    before = packages.layout(packages.get(actor.user_id, "meta"))
    after_upload = put(files, actor, home, name, b"newer")
    assert after_upload.version_no == 2
    assert packages.layout(packages.get(actor.user_id, "meta")).etag == before.etag
    assert zip_of(packages, actor, "meta").read(name) == b"pinned metadata"
    assert put(files, actor, home, name, b"newest").version_no == 2  # not pinned: replaced


def test_gc_leaves_the_bytes_of_pinned_versions(
    files: FileService,
    packages: PackageService,
    maintenance: MaintenanceService,
    actor: Actor,
    home: NodeView,
) -> None:
    first = put(files, actor, home, "kept.txt", b"pinned bytes")
    package = packages.create(actor, actor.user_id, "kept")
    packages.add(actor, package, packages.namespace.context(actor), first)
    put(files, actor, home, "kept.txt", b"newer bytes")  # the pinned version is not current
    report = maintenance.collect_garbage(grace=dt.timedelta(0))
    assert report.ok and report.blobs_removed == 0
    assert zip_of(packages, actor, "kept").read("kept.txt") == b"pinned bytes"


def test_expired_packages_vanish_and_purge_releases_them(
    database: Database, files: FileService, packages: PackageService, actor: Actor, home: NodeView
) -> None:
    view = put(files, actor, home, "e.txt", b"e")
    package = packages.create(actor, actor.user_id, "short")
    assert package.expires_at is not None  # the default expiry (7 days here)
    packages.add(actor, package, packages.namespace.context(actor), view)
    with database.write() as session:
        session.execute(sa.update(Package).values(expires_at=utcnow() - dt.timedelta(seconds=1)))
    assert packages.find(actor.user_id, "short") is None
    assert packages.list_packages(actor.user_id) == []
    with pytest.raises(NotFound):
        packages.add(actor, package, packages.namespace.context(actor), view)
    assert packages.purge_expired(None) == ["alice:short"]
    with database.read() as session:
        assert session.scalar(sa.select(sa.func.count()).select_from(Package)) == 0


def test_only_the_creator_and_writers_change_packages(
    files: FileService, packages: PackageService, actor: Actor, home: NodeView
) -> None:
    view = put(files, actor, home, "c.txt", b"c")
    package = packages.create(actor, actor.user_id, "mine")
    stranger = Actor(uuid.uuid4(), "stranger")
    with pytest.raises(NotFound):
        packages.add(stranger, package, packages.namespace.context(stranger), view)
    viewer = Actor(actor.user_id, "alice", frozenset({"viewer"}))
    with pytest.raises(Forbidden):
        packages.create(viewer, actor.user_id, "nope")
    with pytest.raises(Forbidden):
        packages.delete(Actor(actor.user_id, "alice", read_only=True), package)
    packages.add(actor, package, packages.namespace.context(actor), view)
    names = zip_of(packages, actor, "mine").namelist()
    assert names == ["c.txt", MANIFEST_NAME]


# -- migration 0003 on existing rows


def _at(database: Database, revision: str, action: Callable[..., None]) -> None:
    cfg = alembic_config()
    with database.engine.begin() as conn:
        cfg.attributes["connection"] = conn
        action(cfg, revision)


def test_migration_0003_fills_times_of_existing_rows(
    database: Database, files: FileService, actor: Actor, home: NodeView
) -> None:
    view = put(files, actor, home, "m.txt", b"m")
    _at(database, "0002", command.downgrade)
    package_id, created = uuid.uuid4(), dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.UTC)
    # The tables as revision 0002 has them (no modified_at, no mtime).
    old_packages = sa.table(
        "packages",
        *(sa.column(c, sa.Uuid) for c in ("id", "created_by")),
        *(sa.column(c, sa.String) for c in ("name", "description")),
        sa.column("created_at", UTCDateTime),
    )
    old_items = sa.table(
        "package_items",
        *(sa.column(c, sa.Uuid) for c in ("id", "package_id", "node_id", "version_id")),
        sa.column("path_in_archive", sa.String),
        sa.column("added_at", UTCDateTime),
    )
    with database.engine.begin() as conn:
        conn.execute(
            sa.insert(old_packages).values(
                id=package_id,
                name="before",
                description="",
                created_by=actor.user_id,
                created_at=created,
            )
        )
        conn.execute(
            sa.insert(old_items).values(
                id=uuid.uuid4(),
                package_id=package_id,
                node_id=view.id,
                version_id=view.current_version_id,
                path_in_archive="m.txt",
                added_at=created,
            )
        )
    _at(database, "head", command.upgrade)
    namespace = NamespaceService(database, files)
    service = PackageService(database, files.blobs, namespace)
    package = service.get(actor.user_id, "before")
    (item,) = package.items
    with database.read() as session:
        uploaded = session.scalar(
            sa.select(FileVersion.uploaded_at).where(FileVersion.id == view.current_version_id)
        )
    assert package.modified_at == created and item.mtime == uploaded
