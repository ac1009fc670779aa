"""``davserver grant | revoke | grants`` in-process on both engines."""

from __future__ import annotations

import contextlib
import uuid

import pytest

from davserver.blobstore import StoredBlob
from davserver.context import Services
from davserver.errors import Forbidden, TooManyRequests
from davserver.models import Op
from davserver.services.actor import Actor
from davserver.services.audit import record_audit
from davserver.services.permissions import Perm
from davserver.services.throttle import LoginThrottle, ThrottlePolicy
from tests.integration import test_cli_accounts as accounts_cli
from tests.integration.test_cli_accounts import Cli

# The command-line fixtures: the test's own database, davserver.cli.main run in-process.
cli = accounts_cli.cli
services = accounts_cli.services


def make_file(services: Services, owner: str, name: str) -> None:
    user_id = services.users.user_id(owner)
    home = services.files.resolve(services.files.home_id(user_id), [])
    assert home is not None
    writer = services.blobs.writer()
    writer.write(b"shared bytes")
    blob: StoredBlob = writer.finish()
    services.files.commit_upload(Actor(user_id=user_id, username=owner), home, name, blob)


def test_grant_list_revoke(cli: Cli, services: Services) -> None:
    for name in ("alice", "bob"):
        cli.json("user", "create", name, "--password-stdin", stdin="a-good-password\n")
    cli.json("group", "create", "team")
    make_file(services, "alice", "doc.txt")
    granted = cli.json("grant", "alice:/doc.txt", "--to", "bob", "--rights", "read,download")
    assert granted["grantee"] == "bob" and granted["rights"] == ["read", "download"]
    cli.json("grant", "alice:/doc.txt", "--to", "@team", "--rights", "all", "--expires", "7")
    listed = cli.json("grants", "alice:/doc.txt")
    assert {g["grantee"]: g["rights"] for g in listed} == {
        "bob": ["read", "download"],
        "@team": ["read", "download", "write", "share"],
    }
    assert [g["expires_at"] is not None for g in listed] == [False, True]
    table = cli("grants", "alice:/doc.txt")
    assert table.code == 0 and "read,download" in table.out
    cli.json("revoke", "alice:/doc.txt", "bob")
    assert [g["grantee"] for g in cli.json("grants", "alice:/doc.txt")] == ["@team"]
    cli.json("revoke", "alice:/doc.txt", "@team")
    assert cli.json("grants", "alice:/doc.txt") == []


def test_bad_input_is_one_line_and_exit_1(cli: Cli, services: Services) -> None:
    cli.json("user", "create", "alice", "--password-stdin", stdin="a-good-password\n")
    cli.json("user", "create", "bob", "--password-stdin", stdin="a-good-password\n")
    make_file(services, "alice", "doc.txt")
    assert "unknown right" in cli.fails("grant", "alice:/doc.txt", "--to", "bob", "--rights", "fly")
    assert "nothing at" in cli.fails("grant", "alice:/nope", "--to", "bob", "--rights", "read")
    assert "no user" in cli.fails("grant", "alice:/doc.txt", "--to", "zed", "--rights", "read")
    assert "owns this item" in cli.fails(
        "grant", "alice:/doc.txt", "--to", "alice", "--rights", "read"
    )
    assert "no such grant" in cli.fails("revoke", "alice:/doc.txt", "bob")
    for days in ("99999999", "36501", "0", "-5", "soon"):  # past year 9999, or no expiry
        with pytest.raises(SystemExit) as usage:
            cli("grant", "alice:/doc.txt", "--to", "bob", "--rights", "read", "--expires", days)
        assert usage.value.code == 2
    assert cli.json("grants", "alice:/doc.txt") == []
    with pytest.raises(SystemExit) as usage:  # argparse's own exit for a malformed item
        cli("grant", "no-colon", "--to", "bob", "--rights", "read")
    assert usage.value.code == 2


def test_the_command_line_manages_every_grant(cli: Cli, services: Services) -> None:
    for name in ("alice", "bob", "carol"):
        cli.json("user", "create", name, "--password-stdin", stdin="a-good-password\n")
    make_file(services, "alice", "doc.txt")
    cli.json("grant", "alice:/doc.txt", "--to", "bob", "--rights", "read,share")
    node = services.namespace.locate("alice", "/doc.txt")
    bob = Actor(user_id=services.users.user_id("bob"), username="bob")
    services.sharing.grant(bob, node, Perm.READ | Perm.SHARE, user="carol", rights=Perm.READ)
    # bob may not touch the grant the command line made, nor the command line bob's.
    # (He may decline it whole, but not change it.)
    with pytest.raises(Forbidden, match="made by the server"):
        services.sharing.grant(bob, node, Perm.READ | Perm.SHARE, user="bob", rights=Perm.READ)
    replaced = cli.json("grant", "alice:/doc.txt", "--to", "carol", "--rights", "read,download")
    assert replaced["rights"] == ["read", "download"] and replaced["granted_by"] is None
    cli.json("revoke", "alice:/doc.txt", "carol")
    assert [g["grantee"] for g in cli.json("grants", "alice:/doc.txt")] == ["bob"]


def test_audit_reads_the_logbook_by_user_item_and_operation(cli: Cli, services: Services) -> None:
    for name in ("alice", "bob"):
        cli.json("user", "create", name, "--password-stdin", stdin="a-good-password\n")
    make_file(services, "alice", "doc.txt")
    cli.json("grant", "alice:/doc.txt", "--to", "bob", "--rights", "read")
    cli.json("revoke", "alice:/doc.txt", "bob")
    about_doc = cli.json("audit", "--item", "alice:/doc.txt")
    assert [row["op"] for row in about_doc] == [
        "share:grant:revoke",
        "share:grant:create",
        "file:create",
    ]
    assert about_doc[0]["details"]["grantee"] == "bob" and about_doc[0]["user"] is None
    assert about_doc[-1]["version_id"] is not None and about_doc[-1]["user_agent"] is None
    assert about_doc[-1]["package_id"] is None
    assert [row["op"] for row in cli.json("audit", "--op", "share", "--limit", "1")] == [
        "share:grant:revoke"
    ]
    assert {row["op"] for row in cli.json("audit", "--op", "user:create")} == {"user:create"}
    # alice's rows: what she did, and what was done to her account (here by the CLI).
    assert [row["op"] for row in cli.json("audit", "--user", "alice")] == [
        "file:create",
        "user:create",
    ]
    table = cli("audit", "--days", "1")
    assert table.code == 0 and "share:grant:revoke" in table.out
    assert "no user" in cli.fails("audit", "--user", "zed")
    assert "nothing at" in cli.fails("audit", "--item", "alice:/nope")
    assert "no operation 'shares'" in cli.fails("audit", "--op", "shares")
    # Page by page, each page starting before the last row of the one before.
    newest, older = cli.json("audit", "--limit", "2"), []
    page = newest
    while page:
        older += page
        page = cli.json("audit", "--limit", "2", "--before", str(page[-1]["id"]))
    assert older == cli.json("audit", "--limit", "1000")
    with pytest.raises(SystemExit):
        cli("audit", "--before", "x")


def test_audit_reads_a_time_window_and_an_item_once_it_is_deleted(
    cli: Cli, services: Services
) -> None:
    """``--days`` was the only bound in time, and ``--item`` reaches live items only, so a
    window in the past, or the history of a file in the trash, could not be read."""
    cli.json("user", "create", "alice", "--password-stdin", stdin="a-good-password\n")
    for name in ("one.txt", "two.txt", "three.txt"):
        make_file(services, "alice", name)
    three, two, one = cli.json("audit", "--user", "alice", "--op", "file")
    window = ("--since", two["occurred_at"], "--until", three["occurred_at"])
    assert [row["id"] for row in cli.json("audit", *window)] == [two["id"]]
    naive = two["occurred_at"].removesuffix("+00:00")
    assert [row["id"] for row in cli.json("audit", "--until", naive)][:1] == [one["id"]]
    node = services.namespace.locate("alice", "/two.txt")
    alice = Actor(user_id=services.users.user_id("alice"), username="alice")
    services.files.delete(alice, node.id)
    assert "nothing at" in cli.fails("audit", "--item", "alice:/two.txt")
    assert [row["op"] for row in cli.json("audit", "--node", str(node.id))] == [
        "node:delete",
        "file:create",
    ]
    # A window that ends before it starts holds nothing: an error, not an empty answer.
    backwards = ("--since", three["occurred_at"], "--until", two["occurred_at"])
    assert "until must be later than since" in cli.fails("audit", *backwards)
    for bad in (
        ("--since", "yesterday"),
        ("--node", "x"),
        ("--days", "1", "--since", two["occurred_at"]),
        ("--item", "alice:/one.txt", "--node", str(node.id)),
    ):
        with pytest.raises(SystemExit) as usage:
            cli("audit", *bad)
        assert usage.value.code == 2, bad


def test_revoke_names_no_one_by_a_name_python_alone_folds(cli: Cli, services: Services) -> None:
    """Python lowers the Kelvin sign to k, SQL does not: revoke "\u212aarl" took karl's grant."""
    for name in ("alice", "karl"):
        cli.json("user", "create", name, "--password-stdin", stdin="a-good-password\n")
    cli.json("group", "create", "kit")
    make_file(services, "alice", "doc.txt")
    cli.json("grant", "alice:/doc.txt", "--to", "karl", "--rights", "read")
    cli.json("grant", "alice:/doc.txt", "--to", "@kit", "--rights", "read")
    assert "no such grant" in cli.fails("revoke", "alice:/doc.txt", "\u212aarl")
    assert "no such grant" in cli.fails("revoke", "alice:/doc.txt", "@\u212ait")
    assert len(cli.json("grants", "alice:/doc.txt")) == 2


def test_audit_of_a_user_has_what_happened_to_their_account(cli: Cli, services: Services) -> None:
    """``--user`` listed what the user did and the failed sign-ins under their name; not
    their account's ban, a reuse of their refresh token (rows with no user: nobody signed
    in), nor what admins did to it (created it, disabled it, made them a key)."""
    for name in ("alice", "bob"):
        cli.json("user", "create", name, "--password-stdin", stdin="a-good-password\n")
    cli.json("user", "disable", "alice")
    cli.json("apikey", "create", "alice", "--name", "sync")
    cli.json("apikey", "create", "bob", "--name", "sync")
    throttle = LoginThrottle(services.db, ThrottlePolicy(max_failures_per_user=2))
    for typed in ("ALICE", "alice", "bob"):
        with contextlib.suppress(TooManyRequests):
            throttle.record_failure(typed, "192.0.2.9", "guesser/1.0", "bad credentials")
    alice_id = services.users.user_id("alice")
    with services.db.write() as session:  # as davserver.services.tokens writes it
        details = {"user_id": str(alice_id), "family_id": "f", "session_id": "s"}
        record_audit(session, None, Op.TOKEN_REUSE, details=details)
    rows = cli.json("audit", "--user", "alice")
    assert [row["op"] for row in rows] == [
        "auth:token:reuse",
        "auth:login:ban",
        "auth:login:failure",
        "auth:login:failure",
        "apikey:create",
        "user:disable",
        "user:create",
    ]
    assert rows[1]["details"]["key"] == "user:alice"
    assert all(row["details"].get("user_id") == str(alice_id) for row in rows[-3:])
    assert [row["op"] for row in cli.json("audit", "--user", "bob")] == [
        "auth:login:failure",
        "apikey:create",
        "user:create",
    ]
    # The first admin, made at the first start, too.
    services.accounts.ensure_admin("boss", "a-good-password")
    assert [row["op"] for row in cli.json("audit", "--user", "boss")] == ["user:create"]


def test_items_are_named_by_owner_and_group_in_any_case(cli: Cli, services: Services) -> None:
    """Names are unique ignoring case and every other command finds them so: ``grant
    ALICE:/doc.txt`` said "no user 'ALICE'". The path stays exact, as in the URL."""
    for name in ("alice", "bob"):
        cli.json("user", "create", name, "--password-stdin", stdin="a-good-password\n")
    team = uuid.UUID(cli.json("group", "create", "Team")["id"])
    make_file(services, "alice", "doc.txt")
    alice = services.users.user_id("alice")
    root = services.files.resolve(services.files.group_root_id(team, alice), [])
    assert root is not None
    services.files.create_folder(Actor(user_id=alice, username="alice"), root, "plans")
    cli.json("grant", "ALICE:/doc.txt", "--to", "bob", "--rights", "read")
    cli.json("grant", "@TEAM:/plans", "--to", "bob", "--rights", "read")
    assert [g["grantee"] for g in cli.json("grants", "Alice:/doc.txt")] == ["bob"]
    assert [g["grantee"] for g in cli.json("grants", "@team:/plans")] == ["bob"]
    assert "nothing at" in cli.fails("grants", "alice:/DOC.txt")
