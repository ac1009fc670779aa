"""``davserver package ...`` in-process on both engines: tables and --json, one-line errors with
exit status 1, the owner's rights applied to what is pinned, the logbook's ``via: cli``."""

from __future__ import annotations

import io
import zipfile

import pytest
import sqlalchemy as sa

from davserver.context import Services
from davserver.models import LogEntry
from davserver.services.actor import Actor
from davserver.services.zipstream import MANIFEST_NAME
from tests.blobs import put
from tests.integration import test_cli_accounts as accounts_cli
from tests.integration.test_cli_accounts import Cli

cli = accounts_cli.cli
services = accounts_cli.services


def make_files(services: Services, owner: str) -> None:
    """``/a.txt`` and ``/docs/b.txt`` in the owner's own space."""
    user_id = services.users.user_id(owner)
    actor = Actor(user_id=user_id, username=owner)
    home = services.files.resolve(services.files.home_id(user_id), [])
    assert home is not None
    put(services.files, actor, home, "a.txt", b"alpha")
    docs = services.files.create_folder(actor, home, "docs")
    put(services.files, actor, docs, "b.txt", b"beta")


def zip_names(services: Services, owner: str, name: str) -> list[str]:
    user_id = services.users.user_id(owner)
    package = services.packages.get(user_id, name)
    ctx = services.packages.creator_context(user_id)
    with services.packages.download(ctx, package).stream.open() as reader:
        return zipfile.ZipFile(io.BytesIO(reader.read())).namelist()


def test_create_add_show_remove_delete(cli: Cli, services: Services) -> None:
    cli.json("user", "create", "alice", "--password-stdin", stdin="a-good-password\n")
    make_files(services, "alice")
    created = cli.json("package", "create", "alice:release", "--description", "v1")
    assert created["name"] == "release" and created["owner"] == "alice"
    assert created["expires_at"] is not None  # packages.default_expiry_days
    assert cli.json("package", "create", "alice:forever", "--expires", "0")["expires_at"] is None
    added = cli.json("package", "add", "alice:release", "alice:/a.txt")
    assert [(a["path"], a["version"], a["size"]) for a in added] == [("a.txt", 1, 5)]
    added = cli.json("package", "add", "alice:release", "alice:/docs", "--as", "documents")
    assert [a["path"] for a in added] == ["documents/b.txt"]
    shown = cli.json("package", "show", "alice:release")
    assert [f["path"] for f in shown["files"]] == ["a.txt", "documents/b.txt"]
    assert all(f["available"] for f in shown["files"]) and shown["unavailable"] == {}
    assert shown["zip_size"] > 9 and len(shown["zip_etag"]) == 64
    table = cli("package", "show", "alice:release")
    assert table.code == 0 and "documents/b.txt" in table.out and "zip_etag" in table.out
    listed = cli.json("package", "list")
    assert [(p["owner"], p["name"], p["items"]) for p in listed] == [
        ("alice", "forever", 0),
        ("alice", "release", 2),
    ]
    assert "release" in cli("package", "list", "alice").out
    assert cli.json("package", "remove", "alice:release", "documents") == {"removed": 1}
    assert zip_names(services, "alice", "release") == ["a.txt", MANIFEST_NAME]
    services.files.read_log.flush()  # downloads are logged in batches
    assert cli.json("package", "delete", "alice:release") == {"deleted": True}
    assert [p["name"] for p in cli.json("package", "list", "alice")] == ["forever"]
    with services.db.read() as session:
        ops = session.execute(
            sa.select(LogEntry.op_type, LogEntry.details)
            .where(LogEntry.op_type.like("package:%"))
            .order_by(LogEntry.id)
        ).all()
    assert [op for op, _ in ops] == [
        "package:create",
        "package:create",
        "package:item:add",
        "package:item:add",
        "package:item:remove",
        "package:download",  # zip_names, through the service as alice
        "package:delete",
    ]
    assert [details.get("via") for _, details in ops] == ["cli"] * 5 + [None, "cli"]


def test_the_owner_needs_download_rights_on_what_is_pinned(cli: Cli, services: Services) -> None:
    for name in ("alice", "bob"):
        cli.json("user", "create", name, "--password-stdin", stdin="a-good-password\n")
    make_files(services, "alice")
    cli.json("package", "create", "bob:borrowed")
    # bob may not see alice's file: the command line refuses to pin it for him
    assert "not found" in cli.fails("package", "add", "bob:borrowed", "alice:/a.txt")
    cli.json("grant", "alice:/a.txt", "--to", "bob", "--rights", "read")
    assert "may not add" in cli.fails("package", "add", "bob:borrowed", "alice:/a.txt")
    cli.json("grant", "alice:/a.txt", "--to", "bob", "--rights", "read,download")
    cli.json("package", "add", "bob:borrowed", "alice:/a.txt")
    cli.json("revoke", "alice:/a.txt", "bob")
    shown = cli.json("package", "show", "bob:borrowed")
    assert shown["unavailable"] == {"a.txt": "deleted, or no longer shared with you"}
    assert [f["available"] for f in shown["files"]] == [False]


def test_bad_input_is_one_line_and_exit_1(cli: Cli, services: Services) -> None:
    cli.json("user", "create", "alice", "--password-stdin", stdin="a-good-password\n")
    make_files(services, "alice")
    cli.json("package", "create", "alice:p")
    cli.json("package", "add", "alice:p", "alice:/a.txt")
    assert "already" in cli.fails("package", "create", "alice:p")
    assert "end in .zip" in cli.fails("package", "create", "alice:p.zip")
    assert "no user" in cli.fails("package", "create", "zed:p")
    assert "no package" in cli.fails("package", "show", "alice:nope")
    assert "twice" in cli.fails("package", "add", "alice:p", "alice:/a.txt", "--as", "A.TXT")
    assert "relative" in cli.fails("package", "add", "alice:p", "alice:/a.txt", "--as", "/abs")
    assert "'..'" in cli.fails("package", "add", "alice:p", "alice:/a.txt", "--as", "../x")
    assert "nothing at" in cli.fails("package", "remove", "alice:p", "missing.txt")
    assert "purged 0" in cli("package", "purge").out


def test_update_changes_expiry_and_description(cli: Cli) -> None:
    cli.json("user", "create", "alice", "--password-stdin", stdin="a-good-password\n")
    created = cli.json("package", "create", "alice:notes", "--expires", "1")
    longer = cli.json("package", "update", "alice:notes", "--expires", "90")
    assert longer["expires_at"] > created["expires_at"]
    changed = cli.json(
        "package", "update", "alice:notes", "--description", "kept", "--expires", "0"
    )
    assert changed["description"] == "kept" and changed["expires_at"] is None
    nothing = cli("package", "update", "alice:notes")
    assert nothing.code == 1 and "nothing to change" in nothing.err
    for days in ("-3", "36501", "99999999"):
        for verb, name in (("update", "alice:notes"), ("create", "alice:later")):
            with pytest.raises(SystemExit) as usage:
                cli("package", verb, name, "--expires", days)
            assert usage.value.code == 2
    assert cli("package", "show", "alice:later").code == 1
    assert cli("package", "update", "alice:none", "--expires", "3").code == 1
    renamed = cli.json("package", "update", "alice:notes", "--name", "minutes")
    assert renamed["name"] == "minutes" and renamed["description"] == "kept"
    assert cli("package", "show", "alice:notes").code == 1
    cli.json("package", "create", "alice:agenda")
    assert "already" in cli.fails("package", "update", "alice:minutes", "--name", "agenda")
