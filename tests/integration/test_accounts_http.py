"""Account administration seen over real HTTP: the CLI changes rows, the next request obeys.

``davserver user|apikey ...`` runs in this process against the database of the in-process
server (``inproc_server.db_url``), exactly as an operator would run it beside a live server.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Callable
from typing import Any

import pytest
import sqlalchemy as sa
from passlib.hash import bcrypt

from davserver.cli import main
from davserver.models import User
from tests.servers import InprocServer, http_request

PROPFIND = {"Depth": "0"}
Admin = Callable[..., Any]


@pytest.fixture
def admin_cli(
    inproc_server: InprocServer,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Any,
) -> Admin:
    """``davserver ... --json`` against the server's database; returns the parsed output."""
    for name in list(os.environ):
        if name.startswith("DAVSERVER_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("DAVSERVER_DATABASE_URL", inproc_server.db_url)
    monkeypatch.setenv("DAVSERVER_DATA_DIR", str(inproc_server.data_dir))
    monkeypatch.chdir(tmp_path)

    def run(*args: str) -> Any:
        capsys.readouterr()
        code = main([*args, "--json"])
        out, err = capsys.readouterr()
        assert code == 0, err
        return json.loads(out)

    return run


def propfind(server: InprocServer, user: str, password: str) -> int:
    response = http_request("PROPFIND", server.files_url, headers=PROPFIND, auth=(user, password))
    return response.status


def stored_hash(server: InprocServer, username: str) -> str:
    with server.application.db.read() as session:
        value = session.scalar(sa.select(User.password_hash).where(User.username == username))
        assert value is not None
        return value


def fresh_name(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def test_imported_bcrypt_user_logs_in_and_is_upgraded_to_argon2(
    inproc_server: InprocServer, admin_cli: Admin, tmp_path: Any
) -> None:
    name = fresh_name("imported")
    old_hash = bcrypt.hash("password-from-the-old-system")
    csv_file = tmp_path / "users.csv"
    csv_file.write_text(f"username,password_hash,roles\n{name},{old_hash},user\n")
    assert admin_cli("user", "import", str(csv_file)) == {"imported": [name], "skipped": []}
    assert stored_hash(inproc_server, name) == old_hash

    assert propfind(inproc_server, name, "wrong-password") == 401
    assert stored_hash(inproc_server, name) == old_hash
    assert propfind(inproc_server, name, "password-from-the-old-system") == 207
    upgraded = stored_hash(inproc_server, name)
    assert upgraded.startswith("$argon2")
    # The old password still works against the new hash.
    assert propfind(inproc_server, name, "password-from-the-old-system") == 207
    assert stored_hash(inproc_server, name) == upgraded


def test_disable_takes_effect_on_the_next_request(
    inproc_server: InprocServer, admin_cli: Admin
) -> None:
    name = fresh_name("disabled")
    password = admin_cli("user", "create", name)["password"]
    assert propfind(inproc_server, name, password) == 207
    assert propfind(inproc_server, name, password) == 207  # now from the credential cache
    admin_cli("user", "disable", name)
    assert propfind(inproc_server, name, password) == 401
    admin_cli("user", "enable", name)
    assert propfind(inproc_server, name, password) == 207
    admin_cli("user", "delete", name)
    assert propfind(inproc_server, name, password) == 401


def test_a_re_enabled_users_old_tokens_stay_dead(
    inproc_server: InprocServer, admin_cli: Admin
) -> None:
    # Disabling signs the user out of everything: their access and refresh tokens worked
    # again as soon as they were enabled, a stolen one with them.
    name = fresh_name("reenabled")
    password = admin_cli("user", "create", name)["password"]
    api = inproc_server.url + "/api/v1"
    login = json.dumps({"username": name, "password": password}).encode()
    json_type = {"Content-Type": "application/json"}
    pair = json.loads(http_request("POST", api + "/token", login, json_type).body)
    bearer = {"Authorization": f"Bearer {pair['access_token']}"}
    assert http_request("GET", api + "/me", headers=bearer).status == 200
    admin_cli("user", "disable", name)
    admin_cli("user", "enable", name)
    assert http_request("GET", api + "/me", headers=bearer).status == 401
    refresh = json.dumps({"refresh_token": pair["refresh_token"]}).encode()
    assert http_request("POST", api + "/token/refresh", refresh, json_type).status == 401
    assert http_request("POST", api + "/token", login, json_type).status == 200


def test_password_change_takes_effect_on_the_next_request(
    inproc_server: InprocServer, admin_cli: Admin
) -> None:
    name = fresh_name("passwd")
    old = admin_cli("user", "create", name)["password"]
    assert propfind(inproc_server, name, old) == 207
    new = admin_cli("user", "passwd", name)["password"]
    assert propfind(inproc_server, name, old) == 401
    assert propfind(inproc_server, name, new) == 207


def test_api_key_from_the_cli_signs_in_until_revoked(
    inproc_server: InprocServer, admin_cli: Admin
) -> None:
    name = fresh_name("keyed")
    admin_cli("user", "create", name)
    created = admin_cli("apikey", "create", name, "--name", "sync")
    assert propfind(inproc_server, name, created["key"]) == 207
    admin_cli("apikey", "revoke", name, created["prefix"])
    assert propfind(inproc_server, name, created["key"]) == 401
