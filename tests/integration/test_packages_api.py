"""Packages through the JSON API, the re-check of rights at download time (a revoked grant, a
deleted file), and the logbook rows, over real HTTP on both engines."""

from __future__ import annotations

import datetime as dt
import io
import json
import uuid
import zipfile
from collections.abc import Iterator

import pytest
import sqlalchemy as sa

from davserver.db import Base
from davserver.models import LogEntry
from davserver.services.zipstream import MANIFEST_NAME
from tests.conftest import ENGINES
from tests.integration.test_packages_http import User
from tests.servers import InprocServer, run_inproc_server


@pytest.fixture(scope="module", params=ENGINES)
def server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[InprocServer]:
    with run_inproc_server(
        request.param, tmp_path_factory.mktemp(f"pkgapi-{request.param}")
    ) as srv:
        yield srv


@pytest.fixture
def alice(server: InprocServer) -> User:
    return User(server, f"alice{uuid.uuid4().hex[:6]}")


@pytest.fixture
def bob(server: InprocServer) -> User:
    return User(server, f"bob{uuid.uuid4().hex[:6]}")


def zip_names(user: User, name: str) -> list[str]:
    response = user.call("GET", f"/packages/{name}.zip")
    assert response.status == 200, response.body
    return zipfile.ZipFile(io.BytesIO(response.body)).namelist()


def test_api_create_add_show_remove_delete(alice: User) -> None:
    alice.put("/files/a.txt", b"alpha")
    alice.mkcol("/files/docs/")
    alice.put("/files/docs/b.txt", b"beta")
    status, created = alice.api(
        "POST", "/packages", {"name": "Grüße", "description": "for the team", "expires_days": 3}
    )
    assert status == 201, created
    assert created["name"] == "Grüße" and created["items"] == 0 and created["expires_at"]
    assert alice.api("POST", "/packages", {"name": "Grüße"})[0] == 409
    status, added = alice.api("POST", "/packages/Grüße/items", {"path": "/files/a.txt"})
    assert status == 201 and [a["path"] for a in added["added"]] == ["a.txt"]
    body = {"path": "/files/a.txt", "path_in_archive": "again/renamed.txt"}
    assert alice.api("POST", "/packages/Grüße/items", body)[0] == 201
    status, added = alice.api("POST", "/packages/Grüße/items", {"path": "/files/docs"})
    assert status == 201 and [a["path"] for a in added["added"]] == ["docs/b.txt"]
    assert added["added"][0]["version"] == 1 and added["added"][0]["size"] == 4
    status, shown = alice.api("GET", "/packages/Grüße")
    assert status == 200
    assert [f["path"] for f in shown["files"]] == ["a.txt", "again/renamed.txt", "docs/b.txt"]
    assert shown["unavailable"] == {} and shown["description"] == "for the team"
    head = alice.call("HEAD", shown["zip"]["url"].replace("%C3%BC", "ü").replace("%C3%9F", "ß"))
    assert int(head.headers["Content-Length"]) == shown["zip"]["size"]
    assert head.headers["ETag"] == f'"{shown["zip"]["etag"]}"'
    listed = alice.api("GET", "/packages")[1]["packages"]
    assert [(p["name"], p["items"], p["size"]) for p in listed] == [("Grüße", 3, 14)]
    assert alice.api("DELETE", "/packages/Grüße/items/again/renamed.txt")[0] == 204
    assert alice.api("DELETE", "/packages/Grüße/items/docs")[0] == 204
    assert alice.api("DELETE", "/packages/Grüße/items/docs")[0] == 404
    assert zip_names(alice, "Grüße") == ["a.txt", MANIFEST_NAME]
    assert alice.api("DELETE", "/packages/Grüße")[0] == 204
    assert alice.api("GET", "/packages/Grüße")[0] == 404
    assert alice.call("GET", "/files/docs/b.txt").body == b"beta"


@pytest.mark.parametrize(
    "path_in_archive",
    [
        "../evil.txt",
        "a/../../evil.txt",
        "/etc/passwd",
        "a\\b.txt",
        "C:/Windows/evil.txt",
        "c:evil.txt",
        "x/./y.txt",
        "x//y.txt",
        "nul\x00.txt",
        ". .",
        "A.TXT",  # a.txt is in the package already
        MANIFEST_NAME,
        MANIFEST_NAME.upper(),
        "/".join(["d" * 200] * 6),  # over the 1,024 characters an item's path holds (a 500)
    ],
)
def test_api_refuses_unsafe_or_duplicate_paths(alice: User, path_in_archive: str) -> None:
    alice.put("/files/a.txt", b"alpha")
    if alice.api("GET", "/packages/safe")[0] == 404:
        assert alice.api("POST", "/packages", {"name": "safe"})[0] == 201
        assert alice.api("POST", "/packages/safe/items", {"path": "/files/a.txt"})[0] == 201
    body = {"path": "/files/a.txt", "path_in_archive": path_in_archive}
    status, error = alice.api("POST", "/packages/safe/items", body)
    assert status == 400 and error["error"] == "bad_request", error
    if path_in_archive != "A.TXT":  # for a.txt itself, that is a rename
        move = {"path_in_archive": path_in_archive}
        status, error = alice.api("PATCH", "/packages/safe/items/a.txt", move)
        assert status == 400 and error["error"] == "bad_request", error
    assert zip_names(alice, "safe") == ["a.txt", MANIFEST_NAME]


def test_api_input_errors(server: InprocServer, alice: User, bob: User) -> None:
    alice.put("/files/a.txt", b"alpha")
    assert alice.api("POST", "/packages", {"name": "bad.zip"})[0] == 400
    assert alice.api("POST", "/packages", {"name": "a/b"})[0] == 400
    assert alice.api("POST", "/packages", {})[0] == 400
    assert alice.api("POST", "/packages", {"name": "p", "expires_days": -1})[0] == 400
    # Valid JSON, but more digits than Python reads: it said "the body is not valid JSON".
    huge = b'{"name": "p", "expires_days": ' + b"9" * 5000 + b"}"
    answer = alice.call("POST", "/api/v1/packages", huge, {"Content-Type": "application/json"})
    assert answer.status == 400, answer.status
    assert json.loads(answer.body)["message"] == "a number in the body has more than 100 digits"
    status, created = alice.api("POST", "/packages", {"name": "p", "expires_days": 0})
    assert status == 201 and created["expires_at"] is None
    assert alice.api("POST", "/packages/p/items", {"path": "/files/nope"})[0] == 404
    assert alice.api("POST", "/packages/none/items", {"path": "/files/a.txt"})[0] == 404
    # bob sees neither alice's package nor her files
    assert bob.api("GET", "/packages/p")[0] == 404
    assert bob.api("POST", "/packages", {"name": "p"})[0] == 201  # names are per user
    assert bob.api("POST", "/packages/p/items", {"path": f"/shared/{alice.name}/a.txt"})[0] == 404
    # the default expiry comes from packages.default_expiry_days (30)
    created_default = bob.api("GET", "/packages/p")[1]
    assert created_default["expires_at"] > created_default["created_at"]


def test_a_description_has_no_control_characters_and_a_bounded_length(alice: User) -> None:
    # Both were stored as sent: an escape sequence then reached an admin's terminal through
    # ``davserver package list``, and a description could be a megabyte long.
    for description in ("\x1b[31mred\x1b[0m", "two\nlines", "x" * 1025):
        for method, path in [("POST", "/packages"), ("PATCH", "/packages/kept")]:
            if method == "PATCH":
                assert alice.api("POST", "/packages", {"name": "kept"})[0] in (201, 409)
            status, body = alice.api(method, path, {"name": "desc", "description": description})
            assert (status, body["error"]) == (400, "bad_request"), (method, description)
    status, created = alice.api("POST", "/packages", {"name": "fine", "description": "ü" * 1024})
    assert status == 201 and created["description"] == "ü" * 1024


def test_read_only_key_downloads_but_does_not_change(alice: User) -> None:
    alice.put("/files/a.txt", b"alpha")
    assert alice.api("POST", "/packages", {"name": "keyed"})[0] == 201
    assert alice.api("POST", "/packages/keyed/items", {"path": "/files/a.txt"})[0] == 201
    status, key = alice.api("POST", "/keys", {"name": "ro", "scope": "read"})
    assert status == 201
    alice.password = key["key"]
    assert alice.api("GET", "/packages/keyed")[0] == 200
    assert zip_names(alice, "keyed") == ["a.txt", MANIFEST_NAME]
    assert alice.api("POST", "/packages", {"name": "other"})[0] == 403
    assert alice.api("PATCH", "/packages/keyed", {"expires_days": 0})[0] == 403
    assert alice.api("DELETE", "/packages/keyed")[0] == 403
    assert alice.call("DELETE", "/packages/keyed/a.txt").status == 403


# -- rights re-checked at download time


def test_revoked_or_deleted_items_refuse_the_download(alice: User, bob: User) -> None:
    alice.put("/files/lent.txt", b"alice's bytes")
    alice.put("/files/peek.txt", b"read only")
    for path, rights in (("/files/lent.txt", ["read", "download"]), ("/files/peek.txt", ["read"])):
        body = {"path": path, "user": bob.name, "rights": rights}
        assert alice.api("POST", "/grants", body)[0] == 201
    bob.put("/files/own.txt", b"bob's")
    bob.mkcol("/packages/mix/")
    assert bob.copy(f"/shared/{alice.name}/lent.txt", "/packages/mix/lent.txt").status == 201
    assert bob.copy("/files/own.txt", "/packages/mix/own.txt").status == 201
    # pinning needs DOWNLOAD, through every front
    assert bob.copy(f"/shared/{alice.name}/peek.txt", "/packages/mix/peek.txt").status == 403
    body = {"path": f"/shared/{alice.name}/peek.txt"}
    assert bob.api("POST", "/packages/mix/items", body)[0] == 403
    assert zip_names(bob, "mix") == ["lent.txt", "own.txt", MANIFEST_NAME]

    # alice takes the download right back: the whole zip is refused, naming the item
    body = {"path": "/files/lent.txt", "user": bob.name, "rights": ["read"]}
    assert alice.api("POST", "/grants", body)[0] == 201
    refused = bob.call("GET", "/packages/mix.zip")
    assert refused.status == 403 and b"lent.txt (no download right)" in refused.body
    assert bob.call("HEAD", "/packages/mix.zip").status == 403
    assert bob.call("GET", "/packages/mix/lent.txt").status == 403
    assert bob.call("GET", "/packages/mix/own.txt").status == 200
    assert bob.api("GET", "/packages/mix")[1]["unavailable"] == {"lent.txt": "no download right"}

    # ... then revokes the grant altogether
    query = f"/grants?path=/files/lent.txt&user={bob.name}"
    assert alice.api("DELETE", query)[0] == 204
    refused = bob.call("GET", "/packages/mix.zip")
    assert refused.status == 403 and b"lent.txt (deleted, or no longer shared" in refused.body

    # bob unpins it and the package downloads again
    assert bob.call("DELETE", "/packages/mix/lent.txt").status == 204
    assert zip_names(bob, "mix") == ["own.txt", MANIFEST_NAME]

    # deleting a pinned file (to the trash) refuses the download as well
    assert bob.call("DELETE", "/files/own.txt").status == 204
    refused = bob.call("GET", "/packages/mix.zip")
    assert refused.status == 403 and b"own.txt (deleted" in refused.body


# -- the logbook


def test_each_change_and_download_is_logged(server: InprocServer, alice: User) -> None:
    alice.put("/files/a.txt", b"alpha")
    alice.mkcol("/packages/logged/")
    assert alice.copy("/files/a.txt", "/packages/logged/a.txt").status == 201
    assert alice.call("HEAD", "/packages/logged.zip").status == 200  # not a download
    assert alice.call("GET", "/packages/logged.zip").status == 200
    ranged = alice.call("GET", "/packages/logged.zip", headers={"Range": "bytes=0-9"})
    assert ranged.status == 206
    server.application.files.read_log.flush()  # downloads are logged in batches
    assert alice.call("DELETE", "/packages/logged/a.txt").status == 204
    assert alice.call("DELETE", "/packages/logged/").status == 204
    with server.application.db.connect() as conn:
        rows = conn.execute(
            sa.select(LogEntry.__table__)
            .where(LogEntry.user_id == alice.id, LogEntry.op_type.like("package:%"))
            .order_by(LogEntry.id)
        ).all()
    assert [row.op_type for row in rows] == [
        "package:create",
        "package:item:add",
        "package:download",
        "package:download",
        "package:item:remove",
        "package:delete",
    ]
    assert {row.details["package"] for row in rows} == {"logged"}
    assert len({row.details["package_id"] for row in rows}) == 1
    # The package is gone; its rows still name it.
    assert {str(row.package_id) for row in rows} == {rows[0].details["package_id"]}
    add, remove = rows[1], rows[4]
    assert add.node_id is not None and add.version_id is not None
    assert add.details["paths"] == ["a.txt"]
    # Unpinning one file names it, as pinning it did.
    assert (remove.node_id, remove.version_id) == (add.node_id, add.version_id)
    whole, part = rows[2], rows[3]
    assert whole.details["range"] is None and part.details["range"] == "bytes=0-9"
    assert whole.details["etag"] == part.details["etag"] and whole.details["files"] == 1


def test_api_changes_expiry_and_description_and_logs_both(
    server: InprocServer, alice: User, bob: User
) -> None:
    assert alice.api("POST", "/packages", {"name": "handout", "expires_days": 1})[0] == 201
    status, created = alice.api("GET", "/packages/handout")
    assert status == 200
    status, longer = alice.api("PATCH", "/packages/handout", {"expires_days": 30})
    assert status == 200, longer
    assert longer["expires_at"] > created["expires_at"]
    assert longer["description"] == created["description"]  # untouched
    status, forever = alice.api("PATCH", "/packages/handout", {"expires_days": 0})
    assert status == 200 and forever["expires_at"] is None
    status, described = alice.api("PATCH", "/packages/handout", {"description": "for Monday"})
    assert status == 200 and described["description"] == "for Monday"
    assert described["expires_at"] is None
    # Bad input, other people's packages, nothing to change.
    assert alice.api("PATCH", "/packages/handout", {"expires_days": -1})[0] == 400
    assert alice.api("PATCH", "/packages/handout", {"description": 7})[0] == 400
    assert alice.api("PATCH", "/packages/handout", {})[0] == 400
    assert alice.api("PATCH", "/packages/none", {"expires_days": 3})[0] == 404
    assert bob.api("PATCH", "/packages/handout", {"expires_days": 3})[0] == 404
    with server.application.db.connect() as conn:
        rows = conn.execute(
            sa.select(LogEntry.__table__)
            .where(LogEntry.user_id == alice.id, LogEntry.op_type == "package:update")
            .order_by(LogEntry.id)
        ).all()
    assert [(sorted(r.details["before"]), sorted(r.details["after"])) for r in rows] == [
        (["expires_at"], ["expires_at"]),
        (["expires_at"], ["expires_at"]),
        (["description"], ["description"]),
    ]
    assert rows[0].details["before"]["expires_at"] == created["expires_at"]
    assert rows[1].details["after"]["expires_at"] is None
    assert rows[2].details["before"]["description"] == ""
    assert all(r.package_id is not None for r in rows)


def test_api_renames_packages_and_moves_items(server: InprocServer, alice: User, bob: User) -> None:
    alice.put("/files/a.txt", b"alpha")
    alice.mkcol("/files/docs/")
    alice.put("/files/docs/b.txt", b"beta")
    assert alice.api("POST", "/packages", {"name": "first"})[0] == 201
    assert alice.api("POST", "/packages/first/items", {"path": "/files/a.txt"})[0] == 201
    assert alice.api("POST", "/packages/first/items", {"path": "/files/docs"})[0] == 201
    status, moved = alice.api(
        "PATCH", "/packages/first/items/docs", {"path_in_archive": "papers/2026"}
    )
    assert status == 200, moved
    assert [f["path"] for f in moved["files"]] == ["a.txt", "papers/2026/b.txt"]
    assert alice.api("PATCH", "/packages/first/items/docs", {"path_in_archive": "x"})[0] == 404
    assert alice.api("PATCH", "/packages/first/items/a.txt", {})[0] == 400
    assert bob.api("PATCH", "/packages/first/items/a.txt", {"path_in_archive": "b"})[0] == 404
    status, renamed = alice.api("PATCH", "/packages/first", {"name": "second"})
    assert status == 200 and renamed["name"] == "second", renamed
    assert alice.api("GET", "/packages/first")[0] == 404
    assert zip_names(alice, "second") == ["a.txt", "papers/2026/b.txt", MANIFEST_NAME]
    assert alice.api("POST", "/packages", {"name": "third"})[0] == 201
    assert alice.api("PATCH", "/packages/second", {"name": "third"})[0] == 409
    assert alice.api("PATCH", "/packages/second", {"name": "x.zip"})[0] == 400
    assert alice.api("PATCH", "/packages/second", {"name": 3})[0] == 400
    assert alice.api("PATCH", "/packages/second", {"name": "second"})[0] == 400  # no change
    with server.application.db.connect() as conn:
        rows = conn.execute(
            sa.select(LogEntry.__table__)
            .where(
                LogEntry.user_id == alice.id,
                LogEntry.op_type.in_(["package:item:move", "package:update"]),
            )
            .order_by(LogEntry.id)
        ).all()
    assert [(r.op_type, r.details.get("to"), r.details.get("after")) for r in rows] == [
        ("package:item:move", "papers/2026", None),
        ("package:update", None, {"name": "second"}),
    ]
    assert rows[0].details["path"] == "docs" and rows[0].details["files"] == 1


def test_an_expired_package_cannot_be_revived(server: InprocServer, alice: User) -> None:
    assert alice.api("POST", "/packages", {"name": "gone", "expires_days": 1})[0] == 201
    packages = Base.metadata.tables["packages"]
    with server.application.db.write() as session:
        session.execute(
            sa.update(packages)
            .where(packages.c.name == "gone", packages.c.created_by == alice.id)
            .values(expires_at=dt.datetime(2000, 1, 1, tzinfo=dt.UTC))
        )
    assert alice.api("PATCH", "/packages/gone", {"expires_days": 30})[0] == 404


@pytest.mark.parametrize("days", [36_501, 3_000_000, 10**30, 1.5, "7", True])
def test_expiry_days_out_of_range_are_a_json_400(
    server: InprocServer, alice: User, bob: User, days: object
) -> None:
    """expires_days past the calendar (year 9999) is refused like any bad field, never a 500;
    the same rule for API keys, grants and packages, on create and on update."""
    alice.put("/files/a.txt", b"alpha")
    assert alice.api("POST", "/packages", {"name": "p"})[0] == 201
    grant = {"path": "/files/a.txt", "user": bob.name, "rights": ["read"]}
    key = {"name": "k", "scope": "read"}
    for method, path, body in [
        ("POST", "/keys", key),
        ("POST", "/grants", grant),
        ("POST", "/packages", {"name": "q"}),
        ("PATCH", "/packages/p", {}),
    ]:
        status, error = alice.api(method, path, {**body, "expires_days": days})
        assert status == 400, (path, status, error)
        assert error["error"] == "bad_request" and "expires_days" in error["message"], error
    assert alice.api("GET", "/keys")[1]["keys"] == []
    assert alice.api("GET", "/grants?path=/files/a.txt")[1]["grants"] == []
    assert [p["name"] for p in alice.api("GET", "/packages")[1]["packages"]] == ["p"]


def test_the_longest_expiry_is_accepted(server: InprocServer, alice: User, bob: User) -> None:
    alice.put("/files/a.txt", b"alpha")
    grant = {"path": "/files/a.txt", "user": bob.name, "rights": ["read"], "expires_days": 36_500}
    assert alice.api("POST", "/grants", grant)[0] == 201
    assert alice.api("POST", "/keys", {"name": "k", "expires_days": 36_500})[0] == 201
    assert alice.api("POST", "/packages", {"name": "p", "expires_days": 36_500})[0] == 201
