"""Version history over real HTTP, on both engines: /versions/ browsing, GET and Range of old
versions, ``?version=N``, restore by COPY, coalescing (Explorer's save sequence, saves under one
lock, the window), retention, ``davserver versions prune`` and who may see what."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import unicodedata
import uuid
from collections.abc import Iterator
from pathlib import Path
from xml.etree import ElementTree

import pytest
import sqlalchemy as sa

from davserver.cli import main
from davserver.db.types import utcnow
from davserver.models import Blob, FileVersion, LogEntry, Node, Package, PackageItem
from davserver.services.fsck import FsckService
from davserver.services.maintenance import MaintenanceService
from davserver.services.permissions import Perm
from tests.conftest import ENGINES
from tests.servers import InprocServer, run_inproc_server
from tests.webdav import DAV, DS, LOCK_BODY, WIN32_PROPPATCH, User, make_user


@pytest.fixture(scope="module", params=ENGINES)
def server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[InprocServer]:
    """Default history settings: keep 50, thin after 30 days, no coalescing window."""
    with run_inproc_server(request.param, tmp_path_factory.mktemp("versions")) as srv:
        yield srv


@pytest.fixture(scope="module", params=ENGINES)
def strict(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[InprocServer]:
    """A short history: keep 3 versions, and one upload per minute and user."""
    with run_inproc_server(
        request.param,
        tmp_path_factory.mktemp("versions-strict"),
        versions__keep_last=3,
        versions__coalesce_seconds=60,
    ) as srv:
        yield srv


@pytest.fixture
def alice(server: InprocServer) -> User:
    return make_user(server, "alice")


def history(server: InprocServer, user: User, path: str) -> list[tuple[int, int, str]]:
    """(version_no, size, sha256) of the file at ``path`` in ``user``'s space, oldest first."""
    node = server.application.services.namespace.locate(user.name, path)
    return [
        (v.version_no, v.size, v.sha256)
        for v in server.application.services.versions.history(node.id)
    ]


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def age_versions(server: InprocServer, user: User, path: str, seconds: float) -> None:
    """Make every version of a file ``seconds`` older, as if uploaded long ago."""
    node = server.application.services.namespace.locate(user.name, path)
    with server.application.db.write() as session:
        for version in session.scalars(
            sa.select(FileVersion).where(FileVersion.node_id == node.id)
        ):
            version.uploaded_at -= dt.timedelta(seconds=seconds)


def count(server: InprocServer, model: type, *where: sa.ColumnElement[bool]) -> int:
    with server.application.db.read() as session:
        return int(session.scalar(sa.select(sa.func.count()).select_from(model).where(*where)) or 0)


# -- browsing and reading


def test_browse_history_and_read_old_versions(server: InprocServer, alice: User) -> None:
    contents = [b"first draft", b"second draft, longer", b"final text of the report"]
    assert alice("MKCOL", "/files/docs/").status == 201
    for data in contents:
        assert alice.put("/files/docs/report.docx", data) in (201, 204)
    assert alice.members("/versions/") == ["files", "groups", "shared"]
    assert alice.members("/versions/files/") == ["docs"]
    listing = alice.propfind("/versions/files/docs/")
    assert DAV + "resourcetype" in listing["/versions/files/docs/report.docx"]
    assert alice.members("/versions/files/docs/report.docx/") == [
        "report.v1.docx",
        "report.v2.docx",
        "report.v3.docx",
    ]

    entries = alice.propfind("/versions/files/docs/report.docx/")
    for number, data in enumerate(contents, start=1):
        props = entries[f"/versions/files/docs/report.docx/report.v{number}.docx"]
        assert props[DS + "version-number"] == str(number)
        assert props[DS + "size"] == props[DAV + "getcontentlength"] == str(len(data))
        assert props[DS + "author"] == alice.name
        assert props[DS + "sha256"] == sha(data)
        assert props[DAV + "getetag"] == f'"{sha(data)}"'
        assert props[DS + "current"] == ("true" if number == 3 else "false")
        assert dt.datetime.fromisoformat(props[DS + "uploaded-at"]) <= utcnow()
        assert DAV + "getlastmodified" in props
    # Named properties, through the fast path (Depth 0) and WsgiDAV's (no Depth on a file).
    body = (
        b'<?xml version="1.0"?><D:propfind xmlns:D="DAV:" xmlns:ds="http://davserver.dev/ns">'
        b"<D:prop><ds:author/><ds:sha256/><D:getcontentlength/></D:prop></D:propfind>"
    )
    entry = "/versions/files/docs/report.docx/report.v1.docx"
    for depth in ("0", "infinity"):
        props = alice.propfind(entry, depth, body)[entry]
        assert props == {
            DS + "author": alice.name,
            DS + "sha256": sha(contents[0]),
            DAV + "getcontentlength": str(len(contents[0])),
        }

    assert alice.get(entry) == contents[0]
    head = alice("HEAD", entry)
    assert head.status == 200 and head.headers["Content-Length"] == str(len(contents[0]))
    ranged = alice("GET", entry, headers={"Range": "bytes=6-10"})
    assert ranged.status == 206 and ranged.body == contents[0][6:11]
    assert alice.get("/files/docs/report.docx?version=2") == contents[1]
    assert alice("HEAD", "/files/docs/report.docx?version=1").headers["ETag"] == (
        f'"{sha(contents[0])}"'
    )
    ranged = alice("GET", "/files/docs/report.docx?version=2", headers={"Range": "bytes=-6"})
    assert ranged.status == 206 and ranged.body == contents[1][-6:]
    assert alice("GET", "/files/docs/report.docx?version=9").status == 404
    for bad in ("x", "0", "-1", "", "1&version=2"):
        assert alice("GET", f"/files/docs/report.docx?version={bad}").status == 400, bad
    assert alice("GET", "/files/docs/?version=1").status == 400
    assert alice("GET", "/versions/files/docs/report.docx/report.v4.docx").status == 404
    assert alice.get("/files/docs/report.docx") == contents[2]


def test_the_history_is_read_only(server: InprocServer, alice: User) -> None:
    assert alice.put("/files/ro.txt", b"one") == 201
    assert alice.put("/files/ro.txt", b"two") == 204
    folder = "/versions/files/ro.txt/"
    entry = folder + "ro.v1.txt"
    refused = {
        "PUT": alice("PUT", entry, b"changed"),
        "DELETE": alice("DELETE", entry),
        "DELETE history": alice("DELETE", folder),
        "PROPPATCH": alice("PROPPATCH", entry, WIN32_PROPPATCH),
        "LOCK": alice("LOCK", entry, b""),
        "MOVE": alice("MOVE", entry, None, alice.destination("/files/moved.txt")),
        "MKCOL": alice("MKCOL", folder + "sub/"),
        "PUT new": alice("PUT", folder + "new.txt", b"x"),
        "COPY in": alice("COPY", "/files/ro.txt", None, alice.destination(folder + "x.txt")),
        "COPY folder": alice("COPY", folder, None, alice.destination("/files/copied/")),
    }
    assert {what: r.status for what, r in refused.items()} == dict.fromkeys(refused, 403)
    assert [no for no, _, _ in history(server, alice, "/ro.txt")] == [1, 2]


# -- restoring


def test_restore_by_copy_shares_the_blob(server: InprocServer, alice: User) -> None:
    old, new = b"the good old text " + uuid.uuid4().bytes, b"an accidental overwrite"
    assert alice.put("/files/essay.txt", old) == 201
    assert alice.put("/files/essay.txt", new) == 204
    blobs = count(server, Blob)

    restored = alice(
        "COPY",
        "/versions/files/essay.txt/essay.v1.txt",
        None,
        {**alice.destination("/files/essay.txt"), "Overwrite": "T"},
    )
    assert restored.status == 204
    assert alice.get("/files/essay.txt") == old
    assert history(server, alice, "/essay.txt") == [
        (1, len(old), sha(old)),
        (2, len(new), sha(new)),
        (3, len(old), sha(old)),
    ]
    node = server.application.services.namespace.locate(alice.name, "/essay.txt")
    with server.application.db.read() as session:
        blob_ids = dict(
            session.execute(
                sa.select(FileVersion.version_no, FileVersion.blob_id).where(
                    FileVersion.node_id == node.id
                )
            ).all()
        )
        ops = list(
            session.scalars(
                sa.select(LogEntry.op_type).where(LogEntry.node_id == node.id).order_by(LogEntry.id)
            )
        )
    assert blob_ids[3] == blob_ids[1]  # the same blob row: no bytes copied
    assert count(server, Blob) == blobs
    assert [op for op in ops if op != "file:download"][-1] == "file:version:restore"
    assert alice.members("/versions/files/essay.txt/") == [
        "essay.v1.txt",
        "essay.v2.txt",
        "essay.v3.txt",
    ]
    # Restoring what the file already holds adds nothing.
    again = alice(
        "COPY",
        "/versions/files/essay.txt/essay.v1.txt",
        None,
        alice.destination("/files/essay.txt"),
    )
    assert again.status == 204 and len(history(server, alice, "/essay.txt")) == 3

    # To a new name: a new file whose first version shares the blob.
    copied = alice(
        "COPY",
        "/versions/files/essay.txt/essay.v2.txt",
        None,
        alice.destination("/files/essay (draft).txt"),
    )
    assert copied.status == 201
    assert alice.get("/files/essay (draft).txt") == new
    assert history(server, alice, "/essay (draft).txt") == [(1, len(new), sha(new))]
    assert count(server, Blob) == blobs
    # Overwrite: F onto an existing file is refused, as for any COPY.
    refused = alice(
        "COPY",
        "/versions/files/essay.txt/essay.v2.txt",
        None,
        {**alice.destination("/files/essay.txt"), "Overwrite": "F"},
    )
    assert refused.status == 412


# -- coalescing


def test_explorer_save_sequence_leaves_one_version(server: InprocServer, alice: User) -> None:
    """PUT of 0 bytes, LOCK, PROPPATCH, PUT of the content, UNLOCK: on a new file and on an
    existing one."""

    def explorer_save(path: str, data: bytes) -> None:
        assert alice.put(path, b"") in (201, 204)
        token = alice.lock(path)
        assert alice("PROPPATCH", path, WIN32_PROPPATCH, {"If": f"(<{token}>)"}).status == 207
        assert alice("HEAD", path).status == 200
        assert alice.put(path, data, {"If": f"(<{token}>)"}) == 204
        assert alice("PROPPATCH", path, WIN32_PROPPATCH, {"If": f"(<{token}>)"}).status == 207
        alice.unlock(path, token)

    explorer_save("/files/Notes.txt", b"written by Explorer")
    assert history(server, alice, "/Notes.txt") == [(1, 19, sha(b"written by Explorer"))]
    explorer_save("/files/Notes.txt", b"saved again by Explorer")
    assert history(server, alice, "/Notes.txt") == [
        (1, 19, sha(b"written by Explorer")),
        (2, 23, sha(b"saved again by Explorer")),
    ]
    assert alice.get("/files/Notes.txt") == b"saved again by Explorer"


def test_an_office_save_through_a_tmp_name_keeps_the_documents_history(
    server: InprocServer, alice: User
) -> None:
    """Word, Excel and PowerPoint on a mapped drive save by writing a temporary file, moving
    the document away to a .tmp name, moving the temporary file onto the document's name and
    deleting the .tmp: the document's history went to the trash with the .tmp, and the new
    file started again at version 1. The document keeps its name, its id and its history,
    with the saved content as its newest version; each name holds what the program expects."""
    doc = "/files/office/doc é.docx"
    assert alice("MKCOL", "/files/office/").status == 201
    assert alice.put(doc, b"first draft") == 201
    assert alice.put(doc, b"second draft") == 204
    before = server.application.services.namespace.locate(alice.name, "/office/doc é.docx")
    token = alice.lock(doc)
    held = {"If": f"(<{token}>)"}
    assert alice.put("/files/office/~WRL0001.tmp", b"the saved document") == 201
    away = alice("MOVE", doc, None, {**alice.destination("/files/office/~WRL0002.tmp"), **held})
    assert away.status == 201, (away.status, away.body[:200])
    back = alice("MOVE", "/files/office/~WRL0001.tmp", None, alice.destination(doc))
    assert back.status == 201, (back.status, back.body[:200])
    assert alice.get(doc) == b"the saved document"
    assert alice.get("/files/office/~WRL0002.tmp") == b"second draft"
    assert alice("GET", "/files/office/~WRL0001.tmp").status == 404
    assert alice("DELETE", "/files/office/~WRL0002.tmp").status == 204
    assert history(server, alice, "/office/doc é.docx") == [
        (1, 11, sha(b"first draft")),
        (2, 12, sha(b"second draft")),
        (3, 18, sha(b"the saved document")),
    ]
    after = server.application.services.namespace.locate(alice.name, "/office/doc é.docx")
    assert after.id == before.id
    assert alice.members("/files/office/") == ["doc é.docx"]

    # A rename to a name that is not a .tmp, then another file moved onto the first name, is
    # two renames: each file keeps its own history.
    assert alice.put("/files/office/a.txt", b"a") == 201
    assert alice.put("/files/office/c.txt", b"c") == 201
    to_b = alice("MOVE", "/files/office/a.txt", None, alice.destination("/files/office/b.txt"))
    assert to_b.status == 201
    c_to_a = alice("MOVE", "/files/office/c.txt", None, alice.destination("/files/office/a.txt"))
    assert c_to_a.status == 201
    assert history(server, alice, "/office/a.txt") == [(1, 1, sha(b"c"))]
    assert history(server, alice, "/office/b.txt") == [(1, 1, sha(b"a"))]


def test_saves_under_one_lock_make_one_version(server: InprocServer, alice: User) -> None:
    assert alice.put("/files/budget.xlsx", b"opened") == 201
    token = alice.lock("/files/budget.xlsx")
    for n in range(4):
        assert (
            alice.put("/files/budget.xlsx", f"autosave {n}".encode(), {"If": f"(<{token}>)"}) == 204
        )
    assert [size for _, size, _ in history(server, alice, "/budget.xlsx")] == [6, 10]
    alice.unlock("/files/budget.xlsx", token)
    # A new lock is a new editing session: its first save is a version of its own.
    token = alice.lock("/files/budget.xlsx")
    assert alice.put("/files/budget.xlsx", b"next session", {"If": f"(<{token}>)"}) == 204
    alice.unlock("/files/budget.xlsx", token)
    assert history(server, alice, "/budget.xlsx")[1:] == [
        (2, 10, sha(b"autosave 3")),
        (3, 12, sha(b"next session")),
    ]
    # Without a lock every upload is a version (no window by default).
    assert alice.put("/files/budget.xlsx", b"plain one") == 204
    assert alice.put("/files/budget.xlsx", b"plain two") == 204
    assert len(history(server, alice, "/budget.xlsx")) == 5
    node = server.application.services.namespace.locate(alice.name, "/budget.xlsx")
    with server.application.db.read() as session:
        details = [
            d["coalesced"]
            for d in session.scalars(
                sa.select(LogEntry.details).where(
                    LogEntry.node_id == node.id, LogEntry.op_type == "file:version:replace"
                )
            )
        ]
    assert details == ["lock"] * 3


def test_uploads_within_the_window_coalesce(strict: InprocServer) -> None:
    alice, bob = make_user(strict, "alice"), make_user(strict, "bob")
    groups = strict.application.services.groups
    team = f"team{uuid.uuid4().hex[:6]}"
    groups.create_group(None, team)
    groups.add_member(None, team, alice.name)
    groups.add_member(None, team, bob.name)
    path = f"/groups/{team}/plan.md"
    assert alice.put(path, b"a1") == 201
    assert alice.put(path, b"a2") == 204  # within a minute, same user: replaces
    assert bob.put(path, b"b1") == 204  # another user: a version of its own
    assert bob.put(path, b"b2") == 204
    node = strict.application.services.namespace.locate(f"@{team}", "/plan.md")
    versions = strict.application.services.versions.history(node.id)
    assert [(v.version_no, v.author) for v in versions] == [(1, alice.name), (2, bob.name)]
    assert strict.application.files.blobs.open(versions[0].storage_key).read() == b"a2"


def test_retention_keeps_the_last_n_and_the_current(strict: InprocServer) -> None:
    alice = make_user(strict, "alice")
    for n in range(1, 7):
        assert alice.put("/files/log.txt", f"entry {n}".encode()) in (201, 204)
        age_versions(strict, alice, "/log.txt", 120)  # past the window
    assert [no for no, _, _ in history(strict, alice, "/log.txt")] == [4, 5, 6]
    assert alice.get("/files/log.txt") == b"entry 6"
    # A version a package pins outlives retention.
    node = strict.application.services.namespace.locate(alice.name, "/log.txt")
    with strict.application.db.write() as session:
        pinned = session.scalar(
            sa.select(FileVersion).where(
                FileVersion.node_id == node.id, FileVersion.version_no == 4
            )
        )
        assert pinned is not None
        package = Package(name=f"p{uuid.uuid4().hex[:6]}", created_by=alice.id)
        session.add(package)
        session.flush()
        session.add(
            PackageItem(
                package_id=package.id,
                node_id=node.id,
                version_id=pinned.id,
                path_in_archive="log.txt",
                mtime=pinned.uploaded_at,
            )
        )
    for n in range(7, 9):
        assert alice.put("/files/log.txt", f"entry {n}".encode()) == 204
        age_versions(strict, alice, "/log.txt", 120)
    assert [no for no, _, _ in history(strict, alice, "/log.txt")] == [4, 6, 7, 8]
    with strict.application.db.read() as session:
        pruned = list(
            session.scalars(
                sa.select(LogEntry.details).where(
                    LogEntry.node_id == node.id, LogEntry.op_type == "file:version:prune"
                )
            )
        )
    assert [d["removed"] for d in pruned] == [[1], [2], [3], [5]]


def test_versions_prune_from_the_command_line(
    server: InprocServer,
    alice: User,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Versions older than 30 days are thinned to the last of each day; the rest stay."""
    for n in range(1, 6):
        assert alice.put("/files/diary.txt", f"day entry {n}".encode()) in (201, 204)
    node = server.application.services.namespace.locate(alice.name, "/diary.txt")
    long_ago = utcnow() - dt.timedelta(days=60)
    with server.application.db.write() as session:
        for version in session.scalars(
            sa.select(FileVersion).where(FileVersion.node_id == node.id)
        ):
            if version.version_no <= 3:  # three saves on one day, two months ago
                version.uploaded_at = long_ago + dt.timedelta(minutes=version.version_no)
    monkeypatch.setenv("DAVSERVER_DATABASE_URL", server.db_url)
    monkeypatch.setenv("DAVSERVER_DATA_DIR", str(server.data_dir))
    argv = ["--config", os.devnull, "versions"]

    assert main([*argv, "prune", "--dry-run", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["dry_run"] and report["versions_removed"] == 2
    assert [no for no, _, _ in history(server, alice, "/diary.txt")] == [1, 2, 3, 4, 5]

    assert main([*argv, "prune", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["ok"] and report["versions_removed"] == 2 and report["files_pruned"] >= 1
    assert [no for no, _, _ in history(server, alice, "/diary.txt")] == [3, 4, 5]

    assert main([*argv, "list", f"{alice.name}:/diary.txt", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [v["version_no"] for v in listed] == [3, 4, 5] and listed[-1]["is_current"]


# -- who may see what


def test_read_only_grantees_see_the_history_but_not_the_bytes(
    server: InprocServer, alice: User
) -> None:
    reader, downloader = make_user(server, "reader"), make_user(server, "downloader")
    assert alice.put("/files/shared.txt", b"old shared text") == 201
    assert alice.put("/files/shared.txt", b"new shared text") == 204
    services = server.application.services
    node = services.namespace.locate(alice.name, "/shared.txt")
    services.sharing.grant(None, node, Perm.NONE, user=reader.name, rights=Perm.READ)
    services.sharing.grant(None, node, Perm.NONE, user=downloader.name, rights=Perm.DOWNLOAD)
    folder = f"/versions/shared/{alice.name}/shared.txt/"
    entry = folder + "shared.v1.txt"

    assert reader.members(folder) == ["shared.v1.txt", "shared.v2.txt"]
    assert reader("GET", entry).status == 403
    assert reader("HEAD", entry).status == 403
    assert reader("GET", f"/shared/{alice.name}/shared.txt?version=1").status == 403
    assert downloader.get(entry) == b"old shared text"
    assert downloader.get(f"/shared/{alice.name}/shared.txt?version=1") == b"old shared text"
    # Restoring changes the file: DOWNLOAD is not enough.
    restore = downloader(
        "COPY", entry, None, downloader.destination(f"/shared/{alice.name}/shared.txt")
    )
    assert restore.status == 403
    # Write without download restores, as the README says: no bytes reach the restorer,
    # who still may not read the file. A copy of the version to a new name needs download.
    writer = make_user(server, "writer")
    services.sharing.grant(None, node, Perm.NONE, user=writer.name, rights=Perm.WRITE)
    restored = writer("COPY", entry, None, writer.destination(f"/shared/{alice.name}/shared.txt"))
    assert restored.status == 204, (restored.status, restored.body[:300])
    assert alice.get("/files/shared.txt") == b"old shared text"
    assert writer("GET", f"/shared/{alice.name}/shared.txt").status == 403
    assert alice.put("/files/other.txt", b"other") == 201
    other = services.namespace.locate(alice.name, "/other.txt")
    services.sharing.grant(None, other, Perm.NONE, user=writer.name, rights=Perm.WRITE)
    another = writer.destination(f"/shared/{alice.name}/other.txt")
    assert writer("COPY", entry, None, another).status == 403
    assert alice.put("/files/shared.txt", b"new shared text") == 204
    # A stranger sees nothing of it.
    stranger = make_user(server, "stranger")
    assert stranger("GET", entry).status == 404
    assert stranger("PROPFIND", folder, None, {"Depth": "1"}).status == 404
    assert alice.get("/files/shared.txt") == b"new shared text"


def test_unicode_and_spaces_in_names(server: InprocServer, alice: User) -> None:
    name = "Übersicht März · Q1 2026.txt"
    for data in (b"erste Fassung", b"zweite Fassung"):
        assert alice.put(f"/files/{name}", data) in (201, 204)
    entry = f"/versions/files/{name}/Übersicht März · Q1 2026.v1.txt"
    assert alice.members(f"/versions/files/{name}/") == [
        "Übersicht März · Q1 2026.v1.txt",
        "Übersicht März · Q1 2026.v2.txt",
    ]
    assert alice.get(entry) == b"erste Fassung"
    assert alice.get(unicodedata.normalize("NFD", entry)) == b"erste Fassung"
    assert alice.get(f"/files/{name}?version=1") == b"erste Fassung"
    restored = alice("COPY", entry, None, alice.destination(f"/files/{name}"))
    assert restored.status == 204 and alice.get(f"/files/{name}") == b"erste Fassung"
    assert count(server, Node, Node.name == name, Node.owner_id == alice.id) == 1


@pytest.mark.parametrize("engine", ENGINES)
def test_a_0_byte_put_of_a_new_file_stores_nothing(engine: str, tmp_path: Path) -> None:
    """Explorer starts every copy with one: the new empty file has no version, so no blob
    file (nor temp file) may stay behind for fsck to report; emptying a file is a version
    like any other, with its blob."""
    with run_inproc_server(engine, tmp_path) as srv:
        alice, store = make_user(srv, "alice"), srv.application.blobs
        maintenance = MaintenanceService(srv.application.db, store)
        assert alice.put("/files/empty.txt", b"") == 201
        assert alice.get("/files/empty.txt") == b""
        assert list(store.iter_files()) == [] and list(store.iter_temp_files()) == []
        report = FsckService(maintenance.db, maintenance.blobs).check()
        assert report.ok and report.files_scanned == 0

        assert alice.put("/files/doc.txt", b"some bytes") == 201
        assert alice.put("/files/doc.txt", b"") == 204
        assert history(srv, alice, "/doc.txt") == [(1, 10, sha(b"some bytes")), (2, 0, sha(b""))]
        assert alice.get("/files/doc.txt") == b""
        assert alice.get("/versions/files/doc.txt/doc.v2.txt") == b""
        assert list(store.iter_temp_files()) == []
        report = FsckService(maintenance.db, maintenance.blobs).check()
        assert report.ok and report.blobs_checked == 2 and report.files_scanned == 2


@pytest.mark.parametrize("number", ["2147483648", "99999999999999999999", "9" * 5000])
def test_a_version_number_past_any_stored_one_is_not_found(
    server: InprocServer, alice: User, number: str
) -> None:
    """Version numbers are 32-bit integers on PostgreSQL; a larger one names no version (404),
    it is not an overflow in the query (500)."""
    assert alice.put("/files/big.txt", b"one") == 201
    assert alice("GET", f"/files/big.txt?version={number}").status == 404
    assert alice("HEAD", f"/files/big.txt?version={number}").status == 404
    assert alice("GET", f"/versions/files/big.txt/big.v{number}.txt").status == 404
    assert alice("PROPFIND", f"/versions/files/big.txt/big.v{number}.txt").status == 404
    assert alice("GET", "/files/big.txt?version=0001").body == b"one"
    assert alice("GET", "/files/big.txt?version=000").status == 400


def test_each_version_entry_has_its_checksums(server: InprocServer, alice: User) -> None:
    """rclone asks for oc:checksums to compare hashes (``rclone check``, ``lsjson --hash``);
    the history's entries had none, so every version there was "could not be checked"."""
    contents = [b"one", b"two, longer"]
    for data in contents:
        assert alice.put("/files/sums.txt", data) in (201, 204)
    body = (
        b'<?xml version="1.0"?><d:propfind xmlns:d="DAV:" xmlns:oc="http://owncloud.org/ns">'
        b"<d:prop><oc:checksums/></d:prop></d:propfind>"
    )
    answer = alice("PROPFIND", "/versions/files/sums.txt/", body, {"Depth": "1"})
    assert answer.status == 207
    tree = ElementTree.fromstring(answer.body)
    found = {
        response.findtext("{DAV:}href", "").rsplit("/", 1)[-1]: response.findtext(
            ".//{http://owncloud.org/ns}checksum"
        )
        for response in tree.iter("{DAV:}response")
    }
    for number, data in enumerate(contents, start=1):
        sha1, md5 = hashlib.sha1(data).hexdigest(), hashlib.md5(data).hexdigest()
        assert found[f"sums.v{number}.txt"] == f"SHA1:{sha1} MD5:{md5}"


@pytest.mark.parametrize(
    "method", ["PUT", "DELETE", "PROPPATCH", "MOVE", "COPY", "LOCK", "PROPFIND"]
)
def test_version_n_is_for_reading_only(server: InprocServer, alice: User, method: str) -> None:
    """``?version=N`` picks the version a GET or HEAD reads. Every other method ignored it and
    acted on the file itself: ``DELETE report.txt?version=1``, meant for version 1, put the
    whole file in the trash, a PUT replaced the current version, a COPY copied the current
    bytes, and a PROPFIND described the current version at a URL whose GET is version 1.
    They are a 400 that changes nothing."""
    assert alice.put("/files/history.txt", b"first") == 201
    assert alice.put("/files/history.txt", b"second") == 204
    headers = {"Destination": f"{server.url}/files/elsewhere.txt", "Depth": "0"}
    body = {"PUT": b"third", "PROPPATCH": WIN32_PROPPATCH, "LOCK": LOCK_BODY}.get(method)
    response = alice(method, "/files/history.txt?version=1", body, headers)
    assert response.status == 400, (response.status, response.body[:300])
    assert b"version" in response.body
    assert alice.get("/files/history.txt") == b"second"
    assert alice.get("/files/history.txt?version=1") == b"first"
    assert alice("GET", "/files/elsewhere.txt").status == 404
    assert alice("OPTIONS", "/files/history.txt?version=1").status == 200
