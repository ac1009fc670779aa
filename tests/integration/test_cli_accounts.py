"""``davserver user|group|apikey`` run in-process on both engines: --json output, one-line
errors with exit status 1, passwords from stdin, and the all-or-nothing CSV import."""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from passlib.hash import bcrypt

from davserver.cli import build_parser, main
from davserver.config import load_settings
from davserver.context import Services
from davserver.models import ApiKey, User

BCRYPT_HASH = bcrypt.using(rounds=4).hash("imported-password")


@dataclass(frozen=True)
class Result:
    code: int
    out: str
    err: str

    @property
    def data(self) -> Any:
        return json.loads(self.out)


class Cli:
    """Runs ``davserver ...`` in this process against the test's own database."""

    def __init__(self, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
        self.capsys = capsys
        self.monkeypatch = monkeypatch

    def __call__(self, *args: str, stdin: str | None = None) -> Result:
        if stdin is not None:
            stream = io.TextIOWrapper(io.BytesIO(stdin.encode()), encoding="utf-8")
            self.monkeypatch.setattr(sys, "stdin", stream)
        self.capsys.readouterr()
        code = main(list(args))
        out, err = self.capsys.readouterr()
        return Result(code, out, err)

    def json(self, *args: str, stdin: str | None = None) -> Any:
        result = self(*args, "--json", stdin=stdin)
        assert result.code == 0, result.err
        return result.data

    def fails(self, *args: str, stdin: str | None = None) -> str:
        """Run a command that must fail: exit 1 and one line on stderr; returns that line."""
        result = self(*args, stdin=stdin)
        assert result.code == 1, result
        lines = result.err.splitlines()
        assert len(lines) == 1 and lines[0].startswith("davserver: "), result.err
        return lines[0]


@pytest.fixture
def cli(
    db_url: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> Cli:
    for name in list(os.environ):
        if name.startswith("DAVSERVER_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("DAVSERVER_DATABASE_URL", db_url)
    monkeypatch.setenv("DAVSERVER_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.chdir(tmp_path)  # no config.yaml here
    assert main(["db", "upgrade"]) == 0  # as on a new install: commands need a database
    capsys.readouterr()
    return Cli(capsys, monkeypatch)


@pytest.fixture
def services(cli: Cli) -> Iterator[Services]:
    """The same deployment as the CLI's, to look at rows."""
    built = Services(load_settings(None))
    try:
        yield built
    finally:
        built.close()


def stored_hash(services: Services, username: str) -> str:
    with services.db.read() as session:
        value = session.scalar(sa.select(User.password_hash).where(User.username == username))
        assert value is not None
        return value


# ------------------------------------------------------------------------------ users


def test_create_show_list_with_json(cli: Cli, services: Services) -> None:
    created = cli.json(
        "user", "create", "alice", "--email", "alice@example.org", "--role", "admin",
        "--role", "user", "--quota", "10G",
    )  # fmt: skip
    assert created["username"] == "alice" and created["roles"] == ["admin", "user"]
    assert created["quota_bytes"] == 10 << 30 and created["status"] == "active"
    password = created["password"]
    assert services.hasher.verify(password, stored_hash(services, "alice"))[0]

    shown = cli.json("user", "show", "alice")
    assert "password" not in shown and shown["email"] == "alice@example.org"
    assert shown["groups"] == [] and shown["active_api_keys"] == 0
    assert [u["username"] for u in cli.json("user", "list")] == ["alice"]


def test_tables_for_people(cli: Cli) -> None:
    result = cli("user", "create", "bob", "--quota", "512M")
    assert result.code == 0
    assert "shown only this once" in result.out and "512M" in result.out
    listing = cli("user", "list")
    header, row = listing.out.splitlines()
    assert header.split() == [
        "username", "status", "email", "roles", "quota", "last_login_at", "created_at"
    ]  # fmt: skip
    assert row.split()[:5] == ["bob", "active", "-", "user", "512M"]


def test_password_comes_from_stdin_never_the_command_line(cli: Cli, services: Services) -> None:
    created = cli.json("user", "create", "carol", "--password-stdin", stdin="s3cret pass\n")
    assert "password" not in created
    assert services.hasher.verify("s3cret pass", stored_hash(services, "carol"))[0]
    changed = cli.json("user", "passwd", "carol", "--password-stdin", stdin="another one\r\n")
    assert changed == {"username": "carol", "password_changed": True}
    assert services.hasher.verify("another one", stored_hash(services, "carol"))[0]
    generated = cli.json("user", "passwd", "carol")["password"]
    assert services.hasher.verify(generated, stored_hash(services, "carol"))[0]
    with pytest.raises(SystemExit) as caught:
        main(["user", "create", "dave", "--password", "on-the-command-line"])
    assert caught.value.code == 2


def test_user_lifecycle(cli: Cli) -> None:
    cli.json("user", "create", "admin1", "--role", "admin")
    cli.json("user", "create", "erin", "--email", "erin@example.org")
    assert cli.json("user", "disable", "erin")["status"] == "disabled"
    assert cli.json("user", "enable", "erin")["status"] == "active"
    assert cli.json("user", "role", "add", "erin", "viewer")["roles"] == ["user", "viewer"]
    assert cli.json("user", "role", "remove", "erin", "user")["roles"] == ["viewer"]
    assert cli.json("user", "quota", "erin", "1G")["quota_bytes"] == 1 << 30
    assert cli.json("user", "quota", "erin", "unlimited")["quota_bytes"] is None
    assert cli.json("user", "email", "erin", "--clear")["email"] is None
    deleted = cli.json("user", "delete", "erin")
    assert deleted["status"] == "deleted"
    assert [u["username"] for u in cli.json("user", "list")] == ["admin1"]
    assert [u["username"] for u in cli.json("user", "list", "--status", "deleted")] == ["erin"]
    assert "is taken" in cli.fails("user", "create", "Erin")  # the name stays reserved
    assert "is deleted" in cli.fails("user", "enable", "erin")


@pytest.mark.parametrize(
    ("args", "stdin", "message"),
    [
        (("user", "create", "a/b"), None, "ASCII letters"),
        (("user", "create", "ab"), None, "3 to 150"),
        (("user", "create", "ADMIN1"), None, "taken"),
        (("user", "create", "zed", "--email", "nope"), None, "not an e-mail"),
        (("user", "create", "zed", "--role", "wizard"), None, "unknown role"),
        (("user", "create", "zed", "--quota", "10X"), None, "not a size"),
        (("user", "create", "zed", "--quota", "99999999999999999999T"), None, "8 EiB"),
        (("user", "create", "zed", "--quota", "8388608T"), None, "8 EiB"),  # 2**63 bytes
        (("user", "quota", "admin1", "99999999999999999999T"), None, "8 EiB"),
        (("user", "quota", "admin1", "9223372036854775808"), None, "8 EiB"),
        (("user", "quota", "admin1", ""), None, "no size given"),
        (("user", "create", "zed", "--password-stdin"), "", "no password on standard input"),
        (("user", "create", "zed", "--password-stdin"), "short\n", "at least 8"),
        (("user", "create", "zed", "--password-stdin"), "abc\x00defghij\n", "NUL character"),
        (("user", "show", "nobody"), None, "no user 'nobody'"),
        (("user", "disable", "admin1"), None, "last active admin"),
        (("user", "delete", "admin1"), None, "last active admin"),
        (("user", "role", "remove", "admin1", "admin"), None, "last active admin"),
        (("user", "role", "add", "admin1", "admin"), None, "already has"),
        (("user", "email", "admin1"), None, "e-mail address or --clear"),
        (("user", "import", "missing.csv"), None, "cannot read missing.csv"),
        (("group", "show", "nogroup"), None, "no group"),
        (("group", "add", "nogroup", "admin1"), None, "no group"),
        (("apikey", "create", "nobody", "--name", "k"), None, "no user"),
        (("apikey", "revoke", "admin1", "dav_nothing1"), None, "no API key"),
    ],
)
def test_bad_input_is_one_line_and_status_1(
    cli: Cli, args: tuple[str, ...], stdin: str | None, message: str
) -> None:
    cli.json("user", "create", "admin1", "--role", "admin")
    line = cli.fails(*args, stdin=stdin)
    assert message in line


@pytest.mark.parametrize(
    "args",
    [
        ("user", "create"),
        ("user", "frobnicate", "x"),
        ("user", "list", "--status", "sleeping"),
        ("apikey", "create", "alice"),  # --name is required
        ("apikey", "create", "alice", "--name", "k", "--expires", "0"),
        ("apikey", "create", "alice", "--name", "k", "--expires", "soon"),
        ("apikey", "create", "alice", "--name", "k", "--expires", "36501"),
        ("apikey", "create", "alice", "--name", "k", "--expires", "3000000"),
        ("apikey", "create", "alice", "--name", "k", "--expires", "9" * 30),
        ("group", "add", "staff"),
    ],
)
def test_usage_errors_exit_2(cli: Cli, args: tuple[str, ...]) -> None:
    with pytest.raises(SystemExit) as caught:
        main(list(args))
    assert caught.value.code == 2


@pytest.mark.parametrize(
    "args",
    [
        ("user", "show", "bob\udcff"),  # what Python makes of the byte 0xFF in argv
        ("apikey", "create", "admin1", "--name", "k\udcff"),
        ("audit", "--op", "a\udcff"),
        ("grant", "admin1:/\udcff", "--to", "admin1", "--rights", "read"),
    ],
)
def test_an_argument_that_is_not_utf8_is_one_line_and_status_2(
    cli: Cli, args: tuple[str, ...]
) -> None:
    # It reached the database driver: a UnicodeEncodeError traceback on PostgreSQL.
    cli.json("user", "create", "admin1", "--role", "admin")
    result = cli(*args)
    assert result.code == 2 and result.out == ""
    bad = next(arg for arg in args if "\udcff" in arg)
    assert result.err.splitlines() == [f"davserver: the argument {bad!r} is not UTF-8"]


def test_an_interrupted_command_is_one_line_and_status_130(
    cli: Cli, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Ctrl-C while a command waited (here for a password on stdin) printed a traceback.
    class Interrupted(io.StringIO):
        def readline(self, size: int | None = -1) -> str:
            raise KeyboardInterrupt

    monkeypatch.setattr(sys, "stdin", Interrupted())
    result = cli("user", "create", "alice", "--password-stdin")
    assert (result.code, result.out, result.err) == (130, "", "davserver: interrupted\n")
    assert cli.fails("user", "show", "alice") == "davserver: no user 'alice'"


@pytest.mark.parametrize(
    "command",
    [
        "user", "user create", "user list", "user show", "user disable", "user enable",
        "user delete", "user passwd", "user email", "user quota", "user role",
        "user role add", "user role remove", "user import", "group", "group create",
        "group list", "group show", "group delete", "group add", "group remove", "group admin",
        "apikey", "apikey create", "apikey list", "apikey revoke",
    ],
)  # fmt: skip
def test_every_command_has_help(cli: Cli, command: str) -> None:
    with pytest.raises(SystemExit) as caught:
        main([*command.split(), "--help"])
    assert caught.value.code == 0
    assert cli.capsys.readouterr().out.startswith("usage: davserver " + command)


def test_every_argument_of_every_command_is_explained() -> None:
    # ``davserver trash list --help`` showed a bare "user" with nothing to say what it was.
    # ``davserver --help`` opened with the module's docstring, reStructuredText and all.
    def unexplained(parser: argparse.ArgumentParser, command: str) -> Iterator[str]:
        if "``" in (parser.description or ""):
            yield f"{command} (its description is a docstring)"
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    yield from unexplained(sub, f"{command} {name}")
            elif not action.help:
                yield f"{command} {'/'.join(action.option_strings) or action.dest}"

    assert list(unexplained(build_parser(), "davserver")) == []


# ------------------------------------------------------------------------------ groups


def test_groups(cli: Cli) -> None:
    for name in ("finn", "gwen"):
        cli.json("user", "create", name)
    created = cli.json("group", "create", "design", "--description", "the designers")
    assert created["name"] == "design" and created["members"] == 0
    assert cli.json("group", "add", "design", "finn")["is_admin"] is False
    assert cli.json("group", "add", "design", "gwen", "--admin")["is_admin"] is True
    assert cli.json("group", "admin", "design", "finn")["is_admin"] is True
    assert cli.json("group", "admin", "design", "gwen", "--unset")["is_admin"] is False
    shown = cli.json("group", "show", "design")
    assert [(m["username"], m["is_admin"]) for m in shown["member_list"]] == [
        ("finn", True),
        ("gwen", False),
    ]
    assert cli.json("group", "remove", "design", "gwen")["removed"] is True
    assert [(g["name"], g["members"]) for g in cli.json("group", "list")] == [("design", 1)]
    assert "finn (admin)" in cli("group", "show", "design").out
    assert cli.json("user", "show", "finn")["groups"] == [{"group": "design", "is_admin": True}]
    assert cli.json("group", "delete", "design") == {"group": "design", "deleted": True}
    assert cli.json("group", "list") == []


# ------------------------------------------------------------------------------ API keys


def test_api_keys(cli: Cli, services: Services) -> None:
    cli.json("user", "create", "hana")
    created = cli.json("apikey", "create", "hana", "--name", "backup", "--read-only",
                       "--expires", "30")  # fmt: skip
    key = created["key"]
    assert key.startswith("dav_") and created["prefix"] == key[:12]
    assert created["scope"] == "read" and created["expires_at"] is not None
    second = cli.json("apikey", "create", "hana", "--name", "laptop")
    assert second["scope"] == "readwrite" and second["expires_at"] is None

    listed = cli("apikey", "list", "hana", "--json")
    assert key not in listed.out and second["key"] not in listed.out
    assert {k["name"]: k["status"] for k in listed.data} == {"backup": "active", "laptop": "active"}
    assert all("key" not in k and "key_hash" not in k for k in listed.data)
    with services.db.read() as session:
        hashes = set(session.scalars(sa.select(ApiKey.key_hash)))
    assert key not in hashes and len(hashes) == 2

    revoked = cli.json("apikey", "revoke", "hana", created["prefix"])
    assert revoked["status"] == "revoked"
    assert "already revoked" in cli.fails("apikey", "revoke", "hana", created["prefix"])
    people = cli("apikey", "create", "hana", "--name", "phone")
    assert "shown only this once" in people.out
    assert cli.json("user", "show", "hana")["active_api_keys"] == 2


# ------------------------------------------------------------------------------ CSV import


def write_csv(tmp_path: Path, text: str) -> str:
    path = tmp_path / "people.csv"
    path.write_text(text, encoding="utf-8")
    return str(path)


def test_import_refuses_everything_when_one_row_is_bad(cli: Cli, tmp_path: Path) -> None:
    path = write_csv(
        tmp_path,
        "username,password_hash,email,roles,quota\n"
        f"ivy,{BCRYPT_HASH},ivy@example.org,user,1G\n"
        f"jon,{BCRYPT_HASH},not-an-email,,\n"  # line 3
        "kim,{SHA}W6ph5Mm5Pz8GgiULbPgzG37mj9g=,,,\n"  # line 4
        f"ivy,{BCRYPT_HASH},,,\n",  # line 5: repeats line 2
    )
    result = cli("user", "import", path)
    assert result.code == 1 and result.out == ""
    lines = result.err.splitlines()
    assert lines[:3] == [
        f"davserver: {path}:3: not an e-mail address: 'not-an-email'",
        f"davserver: {path}:4: unsupported password hash format; expected bcrypt ($2a$, $2b$, "
        "$2y$) or argon2 ($argon2id$, $argon2i$)",
        f"davserver: {path}:5: username 'ivy' repeats line 2",
    ]
    assert lines[3] == "davserver: nothing imported (3 bad row(s))"
    as_json = cli("user", "import", path, "--json")
    assert as_json.code == 1
    assert [e["line"] for e in as_json.data["errors"]] == [3, 4, 5]
    assert as_json.data["imported"] == []
    assert cli.json("user", "list") == []


def test_an_import_file_that_is_no_csv_is_one_line_and_imports_nothing(
    cli: Cli, tmp_path: Path
) -> None:
    """A field over the csv module's limit (131,072 characters) ended in a traceback."""
    path = write_csv(tmp_path, f"username,password_hash\n{'x' * 200_000},y\n")
    result = cli("user", "import", path)
    assert result.code == 1 and "Traceback" not in result.err
    assert "not readable as CSV" in result.err, result.err
    assert cli.json("user", "list") == []


def test_import_with_skip_existing_and_summary(
    cli: Cli, tmp_path: Path, services: Services
) -> None:
    cli.json("user", "create", "lea")
    path = write_csv(
        tmp_path,
        "username,password_hash,roles\n"
        f"lea,{BCRYPT_HASH},\n"
        f"max,{BCRYPT_HASH},viewer;moderator\n"
        f"nia,{BCRYPT_HASH.replace('$2b$', '$2y$', 1)},\n",
    )
    refused = cli("user", "import", path)
    assert refused.code == 1 and "username 'lea' already exists" in refused.err
    summary = cli.json("user", "import", path, "--skip-existing")
    assert summary == {"imported": ["max", "nia"], "skipped": ["lea"]}
    assert stored_hash(services, "max") == BCRYPT_HASH
    assert cli.json("user", "show", "max")["roles"] == ["moderator", "viewer"]
    again = cli("user", "import", path, "--skip-existing")
    assert again.code == 0 and "imported 0 user(s)" in again.out and "skipped 3" in again.out


def test_import_from_stdin(cli: Cli) -> None:
    text = f"username,password_hash\nomar,{BCRYPT_HASH}\n"
    result = cli("user", "import", "-", stdin=text)
    assert result.code == 0 and result.out.startswith("imported 1 user(s): omar")


def test_the_largest_quota_fits_the_column(cli: Cli) -> None:
    cli.json("user", "create", "erin")
    largest = str(2**63 - 1)
    assert cli.json("user", "quota", "erin", largest)["quota_bytes"] == 2**63 - 1
    assert cli.json("user", "show", "erin")["quota_bytes"] == 2**63 - 1
    assert cli.json("user", "quota", "erin", "8388607T")["quota_bytes"] == 8388607 << 40
