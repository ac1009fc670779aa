"""Authentication over real HTTP: Basic with passwords and API keys, Bearer tokens, sessions,
throttling and quota, on both engines (an in-process server with small throttle limits)."""

from __future__ import annotations

import base64
import concurrent.futures
import contextlib
import http.client
import json
import socket
import threading
import time
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import pytest
import sqlalchemy as sa

from davserver.api import inputs
from davserver.models import FileVersion, LogEntry, LoginSession, Node, Op
from davserver.services.actor import Actor
from tests.conftest import ENGINES
from tests.servers import InprocServer, Response, basic_auth_header, http_request, run_inproc_server

BAN_SECONDS = 2


@pytest.fixture(scope="module", params=ENGINES)
def server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[InprocServer]:
    tmp = tmp_path_factory.mktemp(f"auth-{request.param}")
    with run_inproc_server(
        request.param,
        tmp,
        auth__max_failures_per_user=3,
        auth__max_failures_per_address=1000,
        auth__ban_seconds=BAN_SECONDS,
    ) as srv:
        yield srv


def make_user(
    server: InprocServer, *, quota: int | None = None, roles: tuple[str, ...] = ("user",)
) -> tuple[str, str]:
    name = f"u{uuid.uuid4().hex[:10]}"
    password = f"pw-{uuid.uuid4().hex}"
    server.app.services.users.create_user(
        None, name, password=password, roles=roles, quota_bytes=quota
    )
    return name, password


def call(
    server: InprocServer,
    method: str,
    path: str,
    *,
    user: tuple[str, str] | None = None,
    token: str | None = None,
    authorization: str | None = None,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> Response:
    sent = dict(headers or {})
    if authorization is not None:
        sent["Authorization"] = authorization
    elif token is not None:
        sent["Authorization"] = f"Bearer {token}"
    elif user is not None:
        sent["Authorization"] = basic_auth_header(*user)
    return http_request(method, server.url + path, body, sent)


def api(
    server: InprocServer,
    method: str,
    path: str,
    payload: dict[str, Any] | None = None,
    *,
    headers: dict[str, str] | None = None,
    **kw: Any,
) -> tuple[int, Any]:
    body = json.dumps(payload).encode() if payload is not None else None
    sent = {"Content-Type": "application/json"} if body else {}
    response = call(
        server, method, "/api/v1" + path, body=body, headers={**sent, **(headers or {})}, **kw
    )
    return response.status, json.loads(response.body) if response.body else None


def propfind(server: InprocServer, *, headers: dict[str, str] | None = None, **kw: Any) -> int:
    return call(
        server, "PROPFIND", "/files/", headers={"Depth": "0", **(headers or {})}, **kw
    ).status


# -- Basic and malformed headers


@pytest.mark.parametrize(
    "authorization",
    [
        "Basic",
        "Basic !!!not-base64!!!",
        "Basic " + base64.b64encode(b"no-colon-here").decode(),
        "Basic " + base64.b64encode(b":password-without-user").decode(),
        "Basic " + base64.b64encode(b"\xff\xfe:\xff").decode(),
        "Basic " + base64.b64encode(b"ad\x00min:password").decode(),
        "Basic " + base64.b64encode(b"admin:pass\x00word").decode(),
        "Basic " + base64.b64encode(b"ad\x00min:dav_" + b"A" * 43).decode(),
        "Bearer",
        "Bearer not.a.token",
        "Digest username=x",
        "Negotiate abc",
        "Basic " + "A" * 20000,
    ],
)
def test_malformed_authorization_gets_401_never_500(
    server: InprocServer, authorization: str
) -> None:
    response = call(server, "PROPFIND", "/files/", authorization=authorization)
    assert response.status == 401
    assert "Basic realm=" in response.headers.get("WWW-Authenticate", "") or "Bearer" in (
        response.headers.get("WWW-Authenticate", "")
    )


def test_unknown_user_and_wrong_password_look_the_same(server: InprocServer) -> None:
    name, _ = make_user(server)

    def attempt(user: str) -> tuple[Response, float]:
        started = time.perf_counter()
        response = call(server, "PROPFIND", "/files/", user=(user, "wrong password"))
        return response, time.perf_counter() - started

    # Two attempts each: under the per-account limit of 3.
    wrong = [attempt(name) for _ in range(2)]
    unknown = [attempt(f"nobody-{uuid.uuid4().hex[:8]}") for _ in range(2)]
    for (a, _), (b, _) in zip(wrong, unknown, strict=True):
        assert (a.status, a.body) == (b.status, b.body) == (401, b"Authentication required\n")
        drop = {"Date"}
        assert {k: v for k, v in a.headers.items() if k not in drop} == {
            k: v for k, v in b.headers.items() if k not in drop
        }
    # Both cost one argon2 verification: same order of time (generous bounds; shared machine).
    slow = max(t for _, t in wrong + unknown)
    fast = min(t for _, t in wrong + unknown)
    assert slow < fast * 5 + 0.05


def test_password_change_and_disable_take_effect_on_the_next_request(server: InprocServer) -> None:
    name, password = make_user(server)
    users = server.app.services.users
    assert propfind(server, user=(name, password)) == 207  # now cached
    users.set_password(None, name, "a-new-password-1")
    assert propfind(server, user=(name, password)) == 401
    assert propfind(server, user=(name, "a-new-password-1")) == 207
    users.disable_user(None, name)
    assert propfind(server, user=(name, "a-new-password-1")) == 401
    users.enable_user(None, name)
    assert propfind(server, user=(name, "a-new-password-1")) == 207


def test_a_name_signs_in_in_any_case_as_it_is_unique_ignoring_case(server: InprocServer) -> None:
    # Grant, revoke and the admin commands find a user by name in any case; signing in does
    # too, and the user is then who they are, under their own spelling.
    name, password = make_user(server)
    _, created = api(server, "POST", "/keys", {"name": "k"}, user=(name, password))
    shouted = name.upper()
    assert propfind(server, user=(shouted, password)) == 207
    assert propfind(server, user=(name.capitalize(), created["key"])) == 207
    status, me = api(server, "GET", "/me", user=(shouted, password))
    assert (status, me["username"]) == (200, name)
    token = login(server, shouted, password)["access_token"]
    status, me = api(server, "GET", "/me", token=token)
    assert (status, me["username"]) == (200, name)
    assert propfind(server, user=(shouted, "wrong password")) == 401
    other, _ = make_user(server)
    assert propfind(server, user=(other.upper(), created["key"])) == 401


def test_a_password_signs_in_whichever_unicode_form_the_client_sends(
    server: InprocServer,
) -> None:
    """A password set with "é" as one character signs in from a client that sends "e" and a
    combining accent (and the other way round), over Basic and at the token endpoint."""
    name, _ = make_user(server)
    composed, decomposed = "Caf\u00e9 cr\u00e8me 42", "Cafe\u0301 cre\u0300me 42"
    server.app.services.users.set_password(None, name, decomposed)
    assert propfind(server, user=(name, composed)) == 207
    assert propfind(server, user=(name, decomposed)) == 207
    assert login(server, name, composed)["access_token"]
    assert propfind(server, user=(name, "Cafe creme 42")) == 401


# -- API keys


def test_api_key_works_as_basic_password_until_revoked(server: InprocServer) -> None:
    name, password = make_user(server)
    status, created = api(server, "POST", "/keys", {"name": "rclone"}, user=(name, password))
    assert status == 201 and created["key"].startswith("dav_")
    key = created["key"]
    assert propfind(server, user=(name, key)) == 207
    put = call(server, "PUT", "/files/by-key.txt", user=(name, key), body=b"written with a key")
    assert put.status == 201
    # The key belongs to this user only.
    other, _ = make_user(server)
    assert propfind(server, user=(other, key)) == 401
    status, listing = api(server, "GET", "/keys", user=(name, password))
    assert [k["prefix"] for k in listing["keys"]] == [key[:12]]
    assert "key" not in listing["keys"][0] and "key_hash" not in listing["keys"][0]
    status, _ = api(server, "DELETE", f"/keys/{created['id']}", user=(name, password))
    assert status == 204
    assert propfind(server, user=(name, key)) == 401


def test_an_api_key_cannot_mint_keys_that_outlive_it(server: InprocServer) -> None:
    # A key given to a device for a day, once stolen, must not turn into a key for ever.
    name, password = make_user(server)
    _, created = api(
        server, "POST", "/keys", {"name": "device", "expires_days": 1}, user=(name, password)
    )
    key = (name, created["key"])
    assert propfind(server, user=key) == 207
    status, body = api(server, "POST", "/keys", {"name": "forever"}, user=key)
    assert status == 403 and "password" in body["message"], body
    status, listing = api(server, "GET", "/keys", user=(name, password))
    assert [k["name"] for k in listing["keys"]] == ["device"]
    # Signed in with the password (Basic or a token), keys are made as before.
    assert api(server, "POST", "/keys", {"name": "by-password"}, user=(name, password))[0] == 201
    token = login(server, name, password)["access_token"]
    assert api(server, "POST", "/keys", {"name": "by-token"}, token=token)[0] == 201


def test_an_api_key_cannot_revoke_its_users_other_keys_or_end_their_sessions(
    server: InprocServer,
) -> None:
    """A key given to a device for a day (or stolen) revoked its user's lasting keys (the
    backup's, rclone's) and ended their token sessions: it cannot make credentials, and may
    not unmake the others either. It may revoke itself and end its own session; the password
    does the rest."""
    name, password = make_user(server)
    _, day = api(server, "POST", "/keys", {"name": "day", "expires_days": 1}, user=(name, password))
    _, other = api(server, "POST", "/keys", {"name": "backup"}, user=(name, password))
    token = login(server, name, password)["access_token"]
    key = (name, day["key"])
    status, body = api(server, "DELETE", f"/keys/{other['id']}", user=key)
    assert status == 403 and "password" in body["message"], body
    _, sessions = api(server, "GET", "/sessions", user=key)
    theirs = [s["id"] for s in sessions["sessions"] if s["auth_method"] != "apikey"]
    assert theirs
    for session_id in theirs:
        status, body = api(server, "DELETE", f"/sessions/{session_id}", user=key)
        assert status == 403 and "password" in body["message"], body
    assert api(server, "GET", "/me", token=token)[0] == 200
    assert propfind(server, user=(name, other["key"])) == 207
    own = next(s["id"] for s in sessions["sessions"] if s["auth_method"] == "apikey")
    assert api(server, "DELETE", f"/sessions/{own}", user=key)[0] == 204
    assert api(server, "DELETE", f"/keys/{day['id']}", user=key)[0] == 204
    assert propfind(server, user=key) == 401
    assert api(server, "DELETE", f"/keys/{other['id']}", user=(name, password))[0] == 204


def test_an_api_key_cannot_share_what_would_outlive_it(server: InprocServer) -> None:
    """A grant gives another account access for as long as it lasts: made with a key given out
    for a day, it outlived the key as a lasting one would. Sharing needs the password, as
    making keys does; revoking a grant (which only takes access away) works with a key."""
    name, password = make_user(server)
    friend, _ = make_user(server)
    assert call(server, "PUT", "/files/shared.txt", user=(name, password), body=b"s").status == 201
    _, created = api(
        server, "POST", "/keys", {"name": "script", "expires_days": 1}, user=(name, password)
    )
    key = (name, created["key"])
    grant = {"path": "/files/shared.txt", "user": friend, "rights": ["read", "download"]}
    status, body = api(server, "POST", "/grants", grant, user=key)
    assert status == 403 and "password" in body["message"], body
    _, listing = api(server, "GET", "/grants?path=/files/shared.txt", user=(name, password))
    assert listing["grants"] == []
    assert api(server, "POST", "/grants", grant, user=(name, password))[0] == 201
    revoke = f"/grants?path=/files/shared.txt&user={friend}"
    assert api(server, "DELETE", revoke, user=key)[0] == 204


def test_read_only_key_reads_but_never_writes(server: InprocServer) -> None:
    name, password = make_user(server)
    assert call(server, "PUT", "/files/kept.txt", user=(name, password), body=b"kept").status == 201
    _, created = api(
        server, "POST", "/keys", {"name": "backup", "scope": "read"}, user=(name, password)
    )
    key = (name, created["key"])
    assert propfind(server, user=key) == 207
    assert call(server, "GET", "/files/kept.txt", user=key).body == b"kept"
    for method, path, body in [
        ("PUT", "/files/kept.txt", b"overwritten"),
        ("PUT", "/files/new.txt", b"new"),
        ("MKCOL", "/files/folder/", None),
        ("DELETE", "/files/kept.txt", None),
        ("PROPPATCH", "/files/kept.txt", b"<x/>"),
        ("LOCK", "/files/kept.txt", None),
    ]:
        assert call(server, method, path, user=key, body=body).status == 403, method
    headers = {"Destination": server.url + "/files/moved.txt"}
    assert call(server, "MOVE", "/files/kept.txt", user=key, headers=headers).status == 403
    assert call(server, "COPY", "/files/kept.txt", user=key, headers=headers).status == 403
    assert call(server, "GET", "/files/kept.txt", user=(name, password)).body == b"kept"
    # Nor can it mint itself a writing key.
    status, _ = api(server, "POST", "/keys", {"name": "escalate"}, user=key)
    assert status == 403


def test_read_only_key_cannot_take_away_a_lock_its_user_holds(server: InprocServer) -> None:
    # The user's editor locked the file; the key (the same user, so WsgiDAV took it for the
    # lock's holder) could UNLOCK it, letting other writers past the editor.
    user = make_user(server)
    assert call(server, "PUT", "/files/open.docx", user=user, body=b"v1").status == 201
    _, created = api(server, "POST", "/keys", {"name": "backup", "scope": "read"}, user=user)
    key = (user[0], created["key"])
    lockinfo = (
        b'<?xml version="1.0"?><D:lockinfo xmlns:D="DAV:"><D:lockscope><D:exclusive/>'
        b"</D:lockscope><D:locktype><D:write/></D:locktype></D:lockinfo>"
    )
    locked = call(server, "LOCK", "/files/open.docx", user=user, body=lockinfo)
    assert locked.status == 200
    token = {"Lock-Token": locked.headers["Lock-Token"]}
    assert call(server, "UNLOCK", "/files/open.docx", user=key, headers=token).status == 403
    assert call(server, "PUT", "/files/open.docx", user=user, body=b"v2").status == 423
    assert call(server, "UNLOCK", "/files/open.docx", user=user, headers=token).status == 204


# -- Bearer tokens


def login(server: InprocServer, name: str, password: str) -> dict[str, Any]:
    status, body = api(server, "POST", "/token", {"username": name, "password": password})
    assert status == 200, body
    assert body["token_type"] == "Bearer"
    return body


def test_bearer_token_and_refresh_rotation(server: InprocServer) -> None:
    name, password = make_user(server)
    first = login(server, name, password)
    assert propfind(server, token=first["access_token"]) == 207
    status, me = api(server, "GET", "/me", token=first["access_token"])
    assert status == 200 and me["username"] == name and me["auth_method"] == "token"

    status, second = api(
        server, "POST", "/token/refresh", {"refresh_token": first["refresh_token"]}
    )
    assert status == 200 and second["refresh_token"] != first["refresh_token"]
    assert propfind(server, token=second["access_token"]) == 207

    # The first refresh token was used: presenting it again revokes the whole chain.
    status, error = api(server, "POST", "/token/refresh", {"refresh_token": first["refresh_token"]})
    assert status == 401 and error["error"] == "unauthorized"
    status, _ = api(server, "POST", "/token/refresh", {"refresh_token": second["refresh_token"]})
    assert status == 401
    assert propfind(server, token=second["access_token"]) == 401
    with server.app.db.read() as session:
        reuse = session.scalars(
            sa.select(LogEntry.details).where(LogEntry.op_type == Op.TOKEN_REUSE.value)
        ).all()
    assert any(d["session_id"] == first["session_id"] for d in reuse)


def test_an_api_key_sent_as_a_bearer_token_is_told_where_it_goes(server: InprocServer) -> None:
    # The answer was "invalid or expired access token", about a key that was neither.
    name, password = make_user(server)
    _, created = api(server, "POST", "/keys", {"name": "bearer"}, user=(name, password))
    status, error = api(server, "GET", "/me", token=created["key"])
    assert status == 401 and "Basic" in error["message"] and "password" in error["message"]
    assert api(server, "GET", "/me", user=(name, created["key"]))[0] == 200


def test_revoked_access_token_and_ended_session_are_refused(server: InprocServer) -> None:
    name, password = make_user(server)
    pair = login(server, name, password)
    status, _ = api(server, "POST", "/token/revoke", {"token": pair["access_token"]})
    assert status == 200
    assert propfind(server, token=pair["access_token"]) == 401

    pair = login(server, name, password)
    status, listing = api(server, "GET", "/sessions", token=pair["access_token"])
    current = [s for s in listing["sessions"] if s["current"]]
    assert [s["id"] for s in current] == [pair["session_id"]]
    assert current[0]["auth_method"] == "token"
    status, _ = api(server, "DELETE", f"/sessions/{pair['session_id']}", user=(name, password))
    assert status == 204
    assert propfind(server, token=pair["access_token"]) == 401
    status, _ = api(server, "POST", "/token/refresh", {"refresh_token": pair["refresh_token"]})
    assert status == 401


def test_a_token_revocation_is_logged_as_the_users_with_the_clients_address(
    server: InprocServer,
) -> None:
    # The rows had no user, session or address: ``audit --user`` never showed them, and
    # nobody could tell from where a session was cut off.
    name, password = make_user(server)
    pair = login(server, name, password)
    client = {"User-Agent": "revoker/1.0"}
    # Each twice: a token revoked already is revoked again without a word (RFC 7009), and
    # without a second row in the user's name (anyone holding it may ask, signed in or not).
    for token in (pair["access_token"], pair["refresh_token"]) * 2:
        status, _ = api(server, "POST", "/token/revoke", {"token": token}, headers=client)
        assert status == 200
    user_id = server.app.services.users.user_id(name)
    with server.app.db.read() as session:
        rows = session.scalars(
            sa.select(LogEntry).where(
                LogEntry.op_type == Op.TOKEN_REVOKE.value, LogEntry.user_id == user_id
            )
        ).all()
        seen = [(str(r.session_id), str(r.remote_addr), r.user_agent) for r in rows]
    assert seen == [(pair["session_id"], "127.0.0.1", "revoker/1.0")] * 2


def test_disabled_user_loses_password_key_and_token_at_once(server: InprocServer) -> None:
    name, password = make_user(server)
    _, created = api(server, "POST", "/keys", {"name": "k"}, user=(name, password))
    pair = login(server, name, password)
    credentials: list[dict[str, Any]] = [
        {"user": (name, password)},
        {"user": (name, created["key"])},
        {"token": pair["access_token"]},
    ]
    assert [propfind(server, **c) for c in credentials] == [207, 207, 207]
    server.app.services.users.disable_user(None, name)
    assert [propfind(server, **c) for c in credentials] == [401, 401, 401]
    status, _ = api(server, "POST", "/token/refresh", {"refresh_token": pair["refresh_token"]})
    assert status == 401


def test_a_re_enabled_user_gets_no_old_token_or_session_back(server: InprocServer) -> None:
    # Disabling is for good for what was signed in: enabling again must not revive the
    # tokens of before. API keys stay (as after a password change) but are refused meanwhile.
    name, password = make_user(server)
    _, created = api(server, "POST", "/keys", {"name": "k"}, user=(name, password))
    pair = login(server, name, password)
    assert propfind(server, user=(name, created["key"])) == 207
    server.app.services.users.disable_user(None, name)
    server.app.services.users.enable_user(None, name)
    assert propfind(server, token=pair["access_token"]) == 401
    status, _ = api(server, "POST", "/token/refresh", {"refresh_token": pair["refresh_token"]})
    assert status == 401
    with server.app.db.read() as session:
        open_sessions = session.scalars(
            sa.select(LoginSession.auth_method).where(
                LoginSession.user_id == server.app.services.users.user_id(name),
                LoginSession.ended_at.is_(None),
            )
        ).all()
        details = session.scalars(
            sa.select(LogEntry.details).where(LogEntry.op_type == Op.USER_DISABLE.value)
        ).all()
    assert open_sessions == []
    # Basic (which made the key), the key's and the token's.
    assert {"user": name, "ended_sessions": 3} in [
        {"user": d.get("user"), "ended_sessions": d["after"].get("ended_sessions")} for d in details
    ]
    assert propfind(server, user=(name, created["key"])) == 207
    assert propfind(server, token=login(server, name, password)["access_token"]) == 207


def test_a_new_password_ends_the_token_sessions_of_the_old_one(server: InprocServer) -> None:
    # A password is changed because it leaked: whoever signed in with it must not keep a
    # 30-day refresh token. API keys are credentials of their own and stay.
    name, password = make_user(server)
    _, created = api(server, "POST", "/keys", {"name": "k"}, user=(name, password))
    pair = login(server, name, password)
    assert propfind(server, token=pair["access_token"]) == 207
    server.app.services.users.set_password(None, name, "a-new-password-1")
    assert propfind(server, token=pair["access_token"]) == 401
    status, _ = api(server, "POST", "/token/refresh", {"refresh_token": pair["refresh_token"]})
    assert status == 401
    assert propfind(server, user=(name, created["key"])) == 207
    assert propfind(server, token=login(server, name, "a-new-password-1")["access_token"]) == 207
    with server.app.db.read() as session:
        details = session.scalars(
            sa.select(LogEntry.details).where(LogEntry.op_type == Op.USER_PASSWORD_SET.value)
        ).all()
    # Ended: the Basic session that made the key and the token session; not the key's.
    assert {"user": name, "ended_sessions": 2} in [
        {"user": d.get("user"), "ended_sessions": d["after"].get("ended_sessions")} for d in details
    ]


@pytest.mark.parametrize(
    ("body", "content_type", "status"),
    [
        (b"{not json", "application/json", 400),
        (b"[1, 2]", "application/json", 400),
        (b'{"username": "x"}', "application/json", 400),
        (b'{"username": 5, "password": "x"}', "application/json", 400),
        # PostgreSQL refuses a NUL in any text: it was a 500 there
        (b'{"username": "ad\\u0000min", "password": "x"}', "application/json", 400),
        (b"username=ad%00min&password=x", "application/x-www-form-urlencoded", 400),
        # Not UTF-8: read as U+FFFD, it named another account (or item)
        (b"username=ad%FFmin&password=x", "application/x-www-form-urlencoded", 400),
        # A field given twice: a proxy reading the first and the API the last disagree
        (b'{"username": "a", "username": "b", "password": "x"}', "application/json", 400),
        (b"username=a&username=b&password=x", "application/x-www-form-urlencoded", 400),
        # A lone surrogate is valid JSON but no UTF-8: the database driver's 500
        (b'{"username": "ad\\ud800min", "password": "x"}', "application/json", 400),
        # nested past Python's recursion limit: it was a RecursionError, a 500
        (b"[" * 50_000 + b"]" * 50_000, "application/json", 400),
        (b'{"a": ' * 50_000 + b"1" + b"}" * 50_000, "application/json", 400),
    ],
)
def test_token_endpoint_refuses_bad_bodies_with_json_errors(
    server: InprocServer, body: bytes, content_type: str, status: int
) -> None:
    response = call(
        server, "POST", "/api/v1/token", body=body, headers={"Content-Type": content_type}
    )
    assert response.status == status
    assert json.loads(response.body)["error"] == "bad_request"


def test_a_json_body_sent_as_a_form_is_read_as_json(server: InprocServer) -> None:
    # ``curl -d '{...}'`` labels its body a form: the JSON was parsed as one form field,
    # and the answer was "username is required", which sent people looking elsewhere.
    name, password = make_user(server)
    form = {"Content-Type": "application/x-www-form-urlencoded"}
    body = json.dumps({"username": name, "password": password}).encode()
    response = call(server, "POST", "/api/v1/token", body=b" " + body, headers=form)
    assert response.status == 200 and "access_token" in json.loads(response.body)
    fields = f"username={name}&password={password}".encode()
    assert call(server, "POST", "/api/v1/token", body=fields, headers=form).status == 200


def test_a_chunked_json_body_is_read(server: InprocServer) -> None:
    # A body sent without a Content-Length (a pipe, a generator) was taken as empty: the
    # answer was "username is required", whatever the body held.
    name, password = make_user(server)

    def post_chunked(chunks: list[bytes]) -> tuple[int, Any]:
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
        try:
            headers = {"Content-Type": "application/json", "Transfer-Encoding": "chunked"}
            conn.request("POST", "/api/v1/token", iter(chunks), headers, encode_chunked=True)
            response = conn.getresponse()
            return response.status, json.loads(response.read())
        finally:
            conn.close()

    body = json.dumps({"username": name, "password": password}).encode()
    status, pair = post_chunked([body[:10], body[10:]])
    assert status == 200 and "access_token" in pair
    too_big = server.app.settings.server.max_xml_body + 1
    status, error = post_chunked([b'{"username": "' + b"x" * too_big + b'"}'])
    assert (status, error["error"]) == (413, "too_large")


# What a browser adds to a POST another site's page makes: a form (text/plain carries any
# JSON) or fetch(mode: "no-cors") sends no preflight, and carries the Basic credentials the
# browser keeps for this server after its user signed in to the folder listing.
CROSS_SITE = [
    {"Origin": "https://evil.example", "Sec-Fetch-Site": "cross-site"},
    {"Origin": "https://evil.example"},  # a browser without Fetch metadata
    {"Origin": "null", "Sec-Fetch-Site": "cross-site"},  # a sandboxed or file: page
    {"Sec-Fetch-Site": "same-site"},  # another host of the same site
]


@pytest.mark.parametrize("browser", CROSS_SITE)
@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded"])
def test_api_refuses_changes_a_browser_sends_for_another_site(
    server: InprocServer, browser: dict[str, str], content_type: str
) -> None:
    user = make_user(server)
    other, _ = make_user(server)
    assert call(server, "MKCOL", "/files/private/", user=user).status == 201
    grant = {"path": "/files/private", "user": other, "rights": ["read", "download"]}
    forged = {"Content-Type": content_type, **browser}
    for path, payload in (("/grants", grant), ("/keys", {"name": "forged"})):
        body = json.dumps(payload).encode()
        response = call(server, "POST", "/api/v1" + path, user=user, body=body, headers=forged)
        assert response.status == 403, path
        assert json.loads(response.body)["error"] == "forbidden"
    assert api(server, "GET", "/grants?path=/files/private", user=user)[1]["grants"] == []
    assert api(server, "GET", "/keys", user=user)[1]["keys"] == []


def test_api_takes_changes_from_its_own_origin_and_from_clients_that_are_not_browsers(
    server: InprocServer,
) -> None:
    user = make_user(server)
    host = f"127.0.0.1:{server.port}"
    for number, browser in enumerate(
        (
            {},  # curl, scripts
            {"Sec-Fetch-Site": "same-origin", "Origin": f"http://{host}"},
            {"Sec-Fetch-Site": "none"},  # typed by the user
            {"Origin": f"http://{host}"},
        )
    ):
        key = {"name": f"key{number}"}
        status, _ = api(server, "POST", "/keys", key, user=user, headers=browser)
        assert status == 201, browser


def test_api_refuses_nul_characters_with_400_never_500(server: InprocServer) -> None:
    name, password = make_user(server)
    for method, path, payload in [
        ("POST", "/keys", {"name": "k\x00"}),
        ("POST", "/grants", {"path": "/files", "user": "b\x00b", "rights": ["read"]}),
        ("GET", "/grants?path=/files/a%00b", None),
        ("DELETE", "/grants?path=/files&user=a%00b", None),
        ("DELETE", "/keys/a%00b", None),
        # a lone surrogate was a 500: no UTF-8 can carry it to the database
        ("POST", "/keys", {"name": "k\ud800"}),
        ("POST", "/packages", {"name": "p", "description": "\udfff"}),
        ("POST", "/grants", {"path": "/files/\ud800", "user": "bob", "rights": ["read"]}),
    ]:
        status, body = api(server, method, path, payload, user=(name, password))
        assert (status, body["error"]) == (400, "bad_request"), (method, path, body)


def test_api_refuses_a_field_it_does_not_know_and_changes_nothing(server: InprocServer) -> None:
    """A misspelt field was ignored and its default taken: ``"scpoe": "read"`` made a key
    that writes, ``"expire_days": 1`` a key and a grant that never expire."""
    name, password = make_user(server)
    user = (name, password)
    for path, payload in [
        ("/keys", {"name": "typo", "scpoe": "read", "expires_days": 1}),
        ("/keys", {"name": "typo", "scope": "read", "expire_days": 1}),
        ("/grants", {"path": "/files", "user": "bob", "rights": ["read"], "expire_days": 1}),
        ("/packages", {"name": "p", "descripton": "typo"}),
    ]:
        status, body = api(server, "POST", path, payload, user=user)
        assert (status, body["error"]) == (400, "bad_request"), (path, body)
        assert "unknown field" in body["message"] and "takes" in body["message"], body
    status, body = api(server, "GET", "/keys", user=user)
    assert status == 200 and body["keys"] == []  # nothing made by the refused requests
    # Nor a query parameter an endpoint does not take (only /grants and /audit take any).
    status, key = api(server, "POST", "/keys", {"name": "kept"}, user=user)
    assert status == 201
    for method, path in [
        ("GET", "/me?x=1"),
        ("GET", "/sessions?limit=1"),
        ("GET", "/keys?name=x"),
        ("GET", "/packages?limit=5"),
        ("DELETE", f"/keys/{key['id']}?confirm=no"),
    ]:
        status, body = api(server, method, path, user=user)
        assert (status, body["error"]) == (400, "bad_request"), (method, path, body)
    assert [k["name"] for k in api(server, "GET", "/keys", user=user)[1]["keys"]] == ["kept"]
    # The token endpoints take what OAuth 2 clients add (client_id, scope).
    login = {"username": name, "password": password, "client_id": "app", "scope": "x"}
    assert api(server, "POST", "/token", login)[0] == 200


def test_api_refuses_a_query_that_is_not_utf8(server: InprocServer) -> None:
    """A query's bytes that are not UTF-8 were read as U+FFFD: ``?path=/files/%FF.txt``
    found, and a DELETE revoked grants on, the file named ``\ufffd.txt``. A path that is not
    UTF-8 is refused (400), in the API as in WebDAV; so is such a query now."""
    name, password = make_user(server)
    user = (name, password)
    assert call(server, "PUT", "/files/%EF%BF%BD.txt", body=b"x", user=user).status == 201
    assert api(server, "GET", "/grants?path=/files/%EF%BF%BD.txt", user=user)[0] == 200
    for method, path in [
        ("GET", "/grants?path=/files/%FF.txt"),
        ("DELETE", "/grants?path=/files/%FF.txt&user=bob"),
        ("GET", "/audit?path=/files/%ED%A0%80.txt"),
        ("GET", "/audit?op=file&user=%C3"),
    ]:
        status, body = api(server, method, path, user=user)
        assert (status, body["error"]) == (400, "bad_request"), (method, path, body)


def test_api_without_credentials_is_401_and_unknown_path_404(server: InprocServer) -> None:
    assert call(server, "GET", "/api/v1/me").status == 401
    name, password = make_user(server)
    response = call(server, "GET", "/api/v1/nothing-here", user=(name, password))
    assert response.status == 404 and json.loads(response.body)["error"] == "not_found"


def test_api_refuses_an_oversized_or_mismeasured_body_in_json(server: InprocServer) -> None:
    # It was the WebDAV front's text/plain answer, which a script's jq cannot read.
    name, password = make_user(server)
    too_big = str(server.app.settings.server.max_xml_body + 1)
    headers = {"Content-Type": "application/json", "Content-Length": too_big}
    response = call(server, "POST", "/api/v1/keys", user=(name, password), headers=headers)
    assert response.status == 413
    assert response.headers["Content-Type"] == "application/json"
    assert json.loads(response.body)["error"] == "too_large"
    # A Content-Length that is no number is the HTTP layer's 400 (which closes the
    # connection, its framing lost: test_dav_http), before any application.
    headers["Content-Length"] = "-5"
    response = call(server, "POST", "/api/v1/keys", user=(name, password), headers=headers)
    assert response.status == 400


@pytest.mark.parametrize(
    ("method", "path", "allow"),
    [
        ("PUT", "/api/v1/me", "GET, HEAD, OPTIONS"),
        ("DELETE", "/api/v1/keys", "GET, HEAD, POST, OPTIONS"),
        ("GET", "/api/v1/token", "POST, OPTIONS"),
        ("POST", "/api/v1/keys/some-key", "DELETE, OPTIONS"),
        ("PUT", "/api/v1/grants", "GET, HEAD, POST, DELETE, OPTIONS"),
        ("POST", "/api/v1/packages/p", "GET, HEAD, PATCH, DELETE, OPTIONS"),
        ("GET", "/api/v1/packages/p/items/a.txt", "PATCH, DELETE, OPTIONS"),
    ],
)
def test_api_answers_a_method_an_endpoint_lacks_with_405_and_allow(
    server: InprocServer, method: str, path: str, allow: str
) -> None:
    # It was a 404 "no API endpoint", as if the path did not exist.
    name, password = make_user(server)
    response = call(server, method, path, user=(name, password))
    assert response.status == 405, response.body
    assert response.headers["Allow"] == allow
    assert json.loads(response.body)["error"] == "method_not_allowed"
    options = call(server, "OPTIONS", path)
    assert (options.status, options.headers["Allow"], options.body) == (204, allow, b"")


def test_api_answers_head_as_get_without_the_body(server: InprocServer) -> None:
    name, password = make_user(server)
    got = call(server, "GET", "/api/v1/me", user=(name, password))
    head = call(server, "HEAD", "/api/v1/me", user=(name, password))
    assert (head.status, head.body) == (200, b"")
    assert head.headers["Content-Type"] == "application/json"
    assert head.headers["Content-Length"] == got.headers["Content-Length"]
    assert call(server, "HEAD", "/api/v1/me").status == 401


# -- throttling


def test_an_admin_setting_a_password_or_enabling_the_account_lifts_its_ban(
    server: InprocServer,
) -> None:
    """Someone who forgot their password, tried others and was banned signs in at once with
    the one an admin sets; so does a user enabled again, whose clients were refused (and
    counted as failures) while the account was disabled."""
    users = server.app.services.users
    name, _ = make_user(server)
    assert [propfind(server, user=(name, f"guess-{i}")) for i in range(3)] == [401, 401, 429]
    users.set_password(None, name, "the-new-one-1234")
    assert propfind(server, user=(name, "the-new-one-1234")) == 207

    other, password = make_user(server)
    users.disable_user(None, other)
    assert [propfind(server, user=(other, password)) for _ in range(3)] == [401, 401, 429]
    users.enable_user(None, other)
    assert propfind(server, user=(other, password)) == 207
    with server.app.db.read() as session:
        lifted = session.scalars(
            sa.select(LogEntry.details)
            .where(LogEntry.op_type.in_([Op.USER_PASSWORD_SET.value, Op.USER_ENABLE.value]))
            .order_by(LogEntry.id.desc())
            .limit(2)
        ).all()
    assert all(details["after"]["lifted_ban_until"] for details in lifted), lifted


def test_repeated_failures_lock_the_account_until_the_ban_expires(server: InprocServer) -> None:
    name, password = make_user(server)
    cached_client = {
        "user": (name, password),
        "headers": {"User-Agent": "already-signed-in", "Depth": "0"},
    }
    assert call(server, "PROPFIND", "/files/", **cached_client).status == 207
    statuses = [propfind(server, user=(name, f"guess-{i}")) for i in range(3)]
    assert statuses == [401, 401, 429]
    refused = call(server, "PROPFIND", "/files/", user=(name, "guess-4"))
    assert refused.status == 429 and 1 <= int(refused.headers["Retry-After"]) <= BAN_SECONDS
    # The right password is not even checked while the account is locked...
    server.app.services.credentials._entries.clear()  # as if the cache had expired
    assert propfind(server, user=(name, password)) == 429
    # ...and the lock ends on schedule.
    time.sleep(BAN_SECONDS + 0.5)
    assert propfind(server, user=(name, password)) == 207
    with server.app.db.read() as session:
        ops = session.scalars(
            sa.select(LogEntry.op_type).where(
                LogEntry.op_type.in_([Op.LOGIN_FAILURE.value, Op.LOGIN_BAN.value])
            )
        ).all()
    assert Op.LOGIN_BAN.value in ops and ops.count(Op.LOGIN_FAILURE.value) >= 3


def in_parallel(server: InprocServer, attempts: list[dict[str, Any]]) -> list[int]:
    """The statuses of PROPFINDs (``propfind`` keywords each) sent all at once."""
    barrier = threading.Barrier(len(attempts))

    def attempt(kw: dict[str, Any]) -> int:
        barrier.wait()
        return propfind(server, **kw)

    with concurrent.futures.ThreadPoolExecutor(len(attempts)) as pool:
        return list(pool.map(attempt, attempts))


def test_guesses_sent_at_once_are_throttled_as_one_after_another(server: InprocServer) -> None:
    # Each guess was checked against the ban before any of them had failed: twenty sent at
    # once had all their passwords tried (the limit is 3: the third failure is a 429).
    name, password = make_user(server)
    statuses = in_parallel(server, [{"user": (name, f"guess-{i}")} for i in range(20)])
    assert statuses.count(401) == 2 and statuses.count(429) == 18
    time.sleep(BAN_SECONDS + 0.5)
    # A client opening many connections at once with the right password is no guesser.
    statuses = in_parallel(server, [{"user": (name, password)} for _ in range(12)])
    assert statuses == [207] * 12


def test_token_endpoint_is_throttled_too(server: InprocServer) -> None:
    name, _ = make_user(server)
    statuses = [
        api(server, "POST", "/token", {"username": name, "password": f"bad-{i}"})[0]
        for i in range(4)
    ]
    assert statuses == [401, 401, 429, 429]


# -- behind a reverse proxy or load balancer


@pytest.fixture(scope="module", params=ENGINES)
def proxied(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[InprocServer]:
    """A server whose clients all come through a proxy at 127.0.0.1 (the tests)."""
    tmp = tmp_path_factory.mktemp(f"proxied-{request.param}")
    with run_inproc_server(
        request.param,
        tmp,
        server__trusted_proxies="10.0.0.0/8, 127.0.0.1",
        auth__max_failures_per_user=1000,
        auth__max_failures_per_address=3,
        auth__ban_seconds=BAN_SECONDS,
    ) as srv:
        yield srv


def test_behind_a_trusted_proxy_each_client_is_throttled_on_its_own(proxied: InprocServer) -> None:
    # Every request reaches the server from the proxy's address: one guesser locked out every
    # client that had to sign in, and the logbook and sessions named the proxy, not the client.
    name, password = make_user(proxied)
    guesser = {"X-Forwarded-For": "203.0.113.7, 10.1.2.3"}  # through a second, trusted, hop
    for _ in range(2):
        assert propfind(proxied, user=("nobody", "guess"), headers=guesser) == 401
    assert propfind(proxied, user=("nobody", "guess"), headers=guesser) == 429
    # The same proxy, another client: not locked out.
    client = {"X-Forwarded-For": "198.51.100.2", "User-Agent": f"proxied-{name}"}
    assert propfind(proxied, user=(name, password), headers=client) == 207
    status, listing = api(proxied, "GET", "/sessions", user=(name, password), headers=client)
    assert status == 200
    assert {s["ip"] for s in listing["sessions"] if s["user_agent"] == client["User-Agent"]} == {
        "198.51.100.2"
    }
    time.sleep(BAN_SECONDS + 0.5)


def test_a_forwarded_link_local_address_with_its_zone_is_taken_without_it(
    proxied: InprocServer,
) -> None:
    """A proxy may forward a link-local client with its zone (``fe80::1%eth0``): PostgreSQL's
    inet refused it, so every such request was a 500 there."""
    name, password = make_user(proxied)
    client = {"X-Forwarded-For": "fe80::1%eth0", "User-Agent": f"zoned-{name}"}
    assert propfind(proxied, user=(name, "wrong"), headers=client) == 401
    assert propfind(proxied, user=(name, password), headers=client) == 207
    status, listing = api(proxied, "GET", "/sessions", user=(name, password), headers=client)
    assert status == 200
    assert {s["ip"] for s in listing["sessions"] if s["user_agent"] == client["User-Agent"]} == {
        "fe80::1"
    }


def test_names_guessed_at_once_from_one_address_are_throttled_as_one_after_another(
    proxied: InprocServer,
) -> None:
    sprayer = {"X-Forwarded-For": "203.0.113.9"}
    attempts = [{"user": (f"nobody{i}", "guess"), "headers": sprayer} for i in range(20)]
    statuses = in_parallel(proxied, attempts)
    assert statuses.count(401) == 2 and statuses.count(429) == 18
    time.sleep(BAN_SECONDS + 0.5)


def test_a_header_spelt_with_underscores_cannot_stand_in_for_the_proxys(
    proxied: InprocServer,
) -> None:
    """``X_Forwarded_For`` and ``X-Forwarded-For`` are one WSGI key, and the last won: behind a
    proxy that passes underscores on (HAProxy, Traefik, Caddy; nginx drops them) a client
    chose its own address for the throttle and the logbook. Such fields are dropped, as
    nginx does."""
    name, password = make_user(proxied)
    client = {
        "X-Forwarded-For": "198.51.100.4",
        "X_Forwarded_For": "6.6.6.6",
        "User-Agent": f"underscored-{name}",
    }
    status, listing = api(proxied, "GET", "/sessions", user=(name, password), headers=client)
    assert status == 200
    assert {s["ip"] for s in listing["sessions"] if s["user_agent"] == client["User-Agent"]} == {
        "198.51.100.4"
    }


def test_a_forwarded_address_from_anyone_else_is_ignored(server: InprocServer) -> None:
    # X-Forwarded-For is whatever the client wants it to be unless a trusted proxy set it.
    name, password = make_user(server)
    client = {"X-Forwarded-For": "198.51.100.3", "User-Agent": f"spoofing-{name}"}
    status, listing = api(server, "GET", "/sessions", user=(name, password), headers=client)
    assert status == 200
    assert {s["ip"] for s in listing["sessions"] if s["user_agent"] == client["User-Agent"]} == {
        "127.0.0.1"
    }


# -- sessions


def test_requests_of_one_client_share_a_session_in_the_logbook(server: InprocServer) -> None:
    name, password = make_user(server)
    agent = {"User-Agent": f"test-client/{uuid.uuid4().hex[:6]}"}
    for i in range(3):
        response = call(
            server, "PUT", f"/files/s{i}.txt", user=(name, password), body=b"x", headers=agent
        )
        assert response.status == 201
    other = call(
        server,
        "PUT",
        "/files/s9.txt",
        user=(name, password),
        body=b"y",
        headers={"User-Agent": "another-client"},
    )
    assert other.status == 201
    with server.app.db.read() as session:
        user_id = server.app.services.users.user_id(name)
        rows = session.execute(
            sa.select(LogEntry.session_id, LogEntry.user_agent).where(
                LogEntry.op_type == Op.FILE_CREATE.value, LogEntry.user_id == user_id
            )
        ).all()
        sessions = session.execute(
            sa.select(
                LoginSession.id, LoginSession.user_agent, LoginSession.ip, LoginSession.auth_method
            ).where(LoginSession.user_id == user_id)
        ).all()
    by_agent = {ua: {sid for sid, a in rows if a == ua} for _, ua in rows}
    assert len(by_agent[agent["User-Agent"]]) == 1
    assert by_agent[agent["User-Agent"]] != by_agent["another-client"]
    recorded = {s.id: s for s in sessions}
    (sid,) = by_agent[agent["User-Agent"]]
    assert recorded[sid].user_agent == agent["User-Agent"]
    assert str(recorded[sid].ip) == "127.0.0.1" and recorded[sid].auth_method == "password"


def test_after_a_password_change_a_client_is_in_a_new_session(server: InprocServer) -> None:
    """The same client (address, user agent) after a password change: its requests went on
    under the session the change had ended, in the logbook and in ``/me``, for up to a minute
    (the session id was remembered by client, not by credential)."""
    name, password = make_user(server)
    agent = {"User-Agent": f"test-client/{uuid.uuid4().hex[:6]}"}

    def session_of(secret: str) -> str:
        response = call(server, "GET", "/api/v1/me", user=(name, secret), headers=agent)
        assert response.status == 200
        return str(json.loads(response.body)["session_id"])

    before = session_of(password)
    server.app.services.users.set_password(None, name, "a-new-password-1")
    after = session_of("a-new-password-1")
    assert after != before
    status, listed = api(server, "GET", "/sessions", user=(name, "a-new-password-1"))
    assert status == 200
    active = {s["id"] for s in listed["sessions"] if s["active"]}
    assert after in active and before not in active


def test_revoking_an_api_key_ends_its_sessions(server: InprocServer) -> None:
    name, password = make_user(server)
    _, created = api(server, "POST", "/keys", {"name": "k"}, user=(name, password))
    assert propfind(server, user=(name, created["key"])) == 207
    status, _ = api(server, "DELETE", f"/keys/{created['id']}", user=(name, password))
    assert status in (200, 204)
    assert propfind(server, user=(name, created["key"])) == 401
    status, listed = api(server, "GET", "/sessions", user=(name, password))
    assert status == 200
    assert [s for s in listed["sessions"] if s["auth_method"] == "apikey" and s["active"]] == []


# -- quota


def put_chunked(server: InprocServer, path: str, user: tuple[str, str], chunks: list[bytes]) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    try:
        conn.putrequest("PUT", path)
        conn.putheader("Authorization", basic_auth_header(*user))
        conn.putheader("Transfer-Encoding", "chunked")
        conn.endheaders()
        for chunk in chunks:
            try:
                conn.send(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
            except (BrokenPipeError, ConnectionResetError):
                break
        else:
            conn.send(b"0\r\n\r\n")
        return conn.getresponse().status
    finally:
        conn.close()


def versions_of(server: InprocServer, user: str) -> int:
    with server.app.db.read() as session:
        return int(
            session.scalar(
                sa.select(sa.func.count())
                .select_from(FileVersion)
                .join(Node, Node.id == FileVersion.node_id)
                .where(Node.owner_id == server.app.services.users.user_id(user))
            )
            or 0
        )


def test_quota_refuses_before_the_body_and_cuts_off_chunked_uploads(server: InprocServer) -> None:
    name, password = make_user(server, quota=1000)
    user = (name, password)
    started = time.perf_counter()
    big = call(server, "PUT", "/files/big.bin", user=user, body=b"x" * 5000)
    assert big.status == 507
    # RFC 4331 (6): the precondition it failed, beside the message clients show.
    refused = ET.fromstring(big.body)
    assert refused.find("{DAV:}quota-not-exceeded") is not None, big.body
    assert "5000 bytes do not fit" in (refused.findtext("{http://sabredav.org/ns}message") or "")
    assert put_chunked(server, "/files/chunked.bin", user, [b"y" * 400] * 5) == 507
    assert versions_of(server, name) == 0
    assert call(server, "GET", "/files/chunked.bin", user=user).status == 404
    # What fits, fits; dedup does not make usage smaller.
    assert call(server, "PUT", "/files/a.bin", user=user, body=b"a" * 450).status == 201
    assert call(server, "PUT", "/files/b.bin", user=user, body=b"a" * 450).status == 201
    late = call(server, "PUT", "/files/c.bin", user=user, body=b"c" * 200)  # found in the commit
    assert late.status == 507 and b"quota-not-exceeded" in late.body, late.body
    # Replacing a file frees its old bytes first.
    assert call(server, "PUT", "/files/a.bin", user=user, body=b"d" * 540).status == 204
    assert versions_of(server, name) == 3
    assert time.perf_counter() - started < 30
    used, quota = server.app.files.usage(server.app.services.users.user_id(name))
    assert (used, quota) == (990, 1000)
    # A COPY over the quota tells the same (WsgiDAV answers a COPY's failure itself).
    into = {"Destination": server.url + "/files/e.bin"}
    copied = call(server, "COPY", "/files/a.bin", user=user, headers=into)
    assert copied.status == 507
    refused = ET.fromstring(copied.body)
    assert refused.find("{DAV:}quota-not-exceeded") is not None, copied.body
    assert "of the quota are left" in (refused.findtext("{http://sabredav.org/ns}message") or "")


def test_over_quota_a_file_can_still_be_replaced_by_one_no_bigger(server: InprocServer) -> None:
    # Over quota (an admin lowered it), saving an edited document of the same size, or a
    # smaller one, was 507 "0 bytes are left", though it adds nothing (a COPY over it passed).
    name, password = make_user(server, quota=2000)
    user = (name, password)
    assert call(server, "PUT", "/files/a.doc", user=user, body=b"a" * 1200).status == 201
    assert call(server, "PUT", "/files/b.doc", user=user, body=b"b" * 600).status == 201
    server.app.services.users.set_quota(None, name, 1000)
    assert call(server, "PUT", "/files/a.doc", user=user, body=b"A" * 1200).status == 204
    assert put_chunked(server, "/files/a.doc", user, [b"s" * 500] * 2) == 204
    assert call(server, "PUT", "/files/a.doc", user=user, body=b"g" * 1001).status == 507
    assert put_chunked(server, "/files/a.doc", user, [b"G" * 500] * 3) == 507
    assert call(server, "PUT", "/files/c.doc", user=user, body=b"c").status == 507
    used, _ = server.app.files.usage(server.app.services.users.user_id(name))
    assert used == 1600


def announce_huge_put(server: InprocServer, authorization: str | None) -> tuple[int, str, str]:
    """PUT announcing 50 GiB and sending none: (status, reason, Connection header), within
    seconds."""
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    try:
        conn.putrequest("PUT", "/files/huge.iso")
        if authorization:
            conn.putheader("Authorization", authorization)
        conn.putheader("Content-Length", str(50 * 1024**3))
        conn.endheaders()
        started = time.perf_counter()
        response = conn.getresponse()
        assert time.perf_counter() - started < 5
        return response.status, response.reason, response.getheader("Connection", "")
    finally:
        conn.close()


def test_quota_answers_before_a_body_that_never_comes(server: InprocServer) -> None:
    name, password = make_user(server, quota=1000)
    # The server answers, then closes rather than reading (or buffering) 50 GiB.
    refused = announce_huge_put(server, basic_auth_header(name, password))
    assert refused == (507, "Insufficient Storage", "close")
    assert announce_huge_put(server, None) == (401, "Unauthorized", "close")
    assert versions_of(server, name) == 0
    assert propfind(server, user=(name, password)) == 207


def test_a_token_request_trickling_its_body_is_cut_off(
    server: InprocServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``POST /api/v1/token`` reads its body before anyone has signed in: sent a byte every
    few seconds, 40 such bodies held every server thread, and the health check timed out.
    A small body with a Content-Length waits in the selector (below); a chunked one is read
    by a worker, and gets ``BODY_SECONDS`` (15; 1 here) to arrive: then 408, and the
    connection ends."""
    monkeypatch.setattr(inputs, "BODY_SECONDS", 1.0)
    with socket.create_connection(("127.0.0.1", server.port), timeout=15) as sock:
        head = [
            "POST /api/v1/token HTTP/1.1",
            "Host: 127.0.0.1",
            "Content-Type: application/json",
            "Transfer-Encoding: chunked",
        ]
        sock.sendall(("\r\n".join(head) + "\r\n\r\n").encode() + b"3e8\r\n{")
        started = time.perf_counter()

        def trickle() -> None:  # a byte every 0.2 s, until the server stops reading
            with contextlib.suppress(OSError):
                for _ in range(50):
                    time.sleep(0.2)
                    sock.sendall(b" ")

        threading.Thread(target=trickle, daemon=True).start()
        reader = sock.makefile("rb")
        status = reader.readline().split()[1:2]
        headers = []
        while (line := reader.readline()) not in (b"\r\n", b""):
            headers.append(line.lower().strip())
        assert status == [b"408"], status
        assert b"connection: close" in headers
        assert time.perf_counter() - started < 5
    assert http_request("GET", server.url + "/api/v1/health").status == 200


def test_small_bodies_sent_slowly_hold_no_thread(server: InprocServer) -> None:
    """A body of up to 64 KiB announced by its Content-Length (a login, a PROPFIND) waits
    with the headers in the selector, not in a worker: 32 token requests whose bodies never
    came held every thread for 15 s each (about two new ones a second kept the server from
    everyone), and so did small bodies behind an early 401."""
    socks = []
    try:
        for i in range(80):
            sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
            target = "PUT /files/never.bin" if i % 8 == 0 else "POST /api/v1/token"
            head = [f"{target} HTTP/1.1", "Host: 127.0.0.1", "Content-Length: 100"]
            sock.sendall(("\r\n".join(head) + "\r\n\r\n").encode() + b"{")
            socks.append(sock)
        time.sleep(0.5)
        started = time.perf_counter()
        assert http_request("GET", server.url + "/api/v1/health").status == 200
        name, password = make_user(server)
        assert propfind(server, user=(name, password)) == 207
        assert time.perf_counter() - started < 3
    finally:
        for sock in socks:
            sock.close()


@pytest.mark.parametrize("held", ["Expect: 100-continue", "Transfer-Encoding: chunked"])
def test_token_bodies_held_back_take_at_most_two_threads(server: InprocServer, held: str) -> None:
    """A token request whose body a client holds back for a 100 Continue, or sends chunked,
    is read by a thread (it cannot be gathered with the headers): 40 of them that never sent
    it held every thread for 15 s. Two are read at once; the others get 503 at once."""
    socks = []
    try:
        for _ in range(40):
            sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
            head = ["POST /api/v1/token HTTP/1.1", "Host: 127.0.0.1", "Content-Length: 50", held]
            if held.startswith("Transfer"):
                head.remove("Content-Length: 50")
            sock.sendall(("\r\n".join(head) + "\r\n\r\n").encode())
            socks.append(sock)
        time.sleep(0.5)
        started = time.perf_counter()
        name, password = make_user(server)
        assert login(server, name, password)["access_token"]
        assert propfind(server, user=(name, password)) == 207
        assert time.perf_counter() - started < 3
        refused = 0
        for sock in socks[:10]:
            sock.settimeout(0.5)
            with contextlib.suppress(TimeoutError):
                refused += b" 503 " in sock.recv(200)
        assert refused >= 8
    finally:
        for sock in socks:
            sock.close()


def test_an_early_answer_waits_only_briefly_for_a_small_body(server: InprocServer) -> None:
    """After a 401 sent from the headers alone, a small unread body (up to 1 MiB) is read and
    dropped so that the connection can be kept. A client that never sent it, or trickled it,
    held a server thread for as long as it liked, before its 401 was even sent: 32 such
    connections, with no account, stalled every request to the server. (One of up to 64 KiB
    waits in the selector: above.)"""
    with socket.create_connection(("127.0.0.1", server.port), timeout=15) as sock:
        head = ["PUT /files/never.bin HTTP/1.1", "Host: 127.0.0.1", "Content-Length: 100000"]
        sock.sendall(("\r\n".join(head) + "\r\n\r\n").encode() + b"x")
        started = time.perf_counter()
        reader = sock.makefile("rb")
        assert reader.readline().split()[1] == b"401"
        assert time.perf_counter() - started < 5
        while (line := reader.readline()) not in (b"\r\n", b""):
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":")[1])
        reader.read(length)
        assert reader.read() == b""  # then closed: the body was not coming
    # A client that sends its small body with its headers keeps its connection.
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    try:
        conn.request("PUT", "/files/anon.bin", body=b"a" * 500_000)
        first = conn.getresponse()
        first.read()
        assert first.status == 401 and first.getheader("Connection") != "close"
        conn.request("PROPFIND", "/files/", headers={"Depth": "0"})
        second = conn.getresponse()
        second.read()
        assert second.status == 401
    finally:
        conn.close()


def put_expecting_continue(
    server: InprocServer, path: str, authorization: str | None, body: bytes
) -> list[int]:
    """A PUT with ``Expect: 100-continue`` that sends its body only once told to continue, as
    curl does: the statuses received, in order (100 first if the server asked for the body).
    A final answer without a 100 before it must close the connection, or the client would
    wait for the body to be asked for and the server for the body."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        head = [f"PUT {path} HTTP/1.1", "Host: 127.0.0.1", f"Content-Length: {len(body)}"]
        head.append("Expect: 100-continue")
        if authorization:
            head.append(f"Authorization: {authorization}")
        sock.sendall(("\r\n".join(head) + "\r\n\r\n").encode())
        reader = sock.makefile("rb")
        statuses: list[int] = []
        while True:
            status = int(reader.readline().split()[1])
            statuses.append(status)
            headers = {}
            while (line := reader.readline()) not in (b"\r\n", b""):
                name, _, value = line.decode().partition(":")
                headers[name.strip().lower()] = value.strip()
            if status == 100:
                sock.sendall(body)
                continue
            reader.read(int(headers.get("content-length", 0)))
            if status != 201:
                assert headers.get("connection") == "close", headers
                assert reader.read() == b""  # the server closed it
            return statuses


def test_100_continue_is_sent_only_when_the_body_is_wanted(server: InprocServer) -> None:
    """cheroot sent "100 Continue" before the application had looked at the request, so a
    client started sending a body the server then refused (401, 507)."""
    name, password = make_user(server, quota=1000)
    authorization = basic_auth_header(name, password)
    assert put_expecting_continue(server, "/files/ok.bin", authorization, b"k" * 500) == [100, 201]
    assert call(server, "GET", "/files/ok.bin", user=(name, password)).body == b"k" * 500
    assert put_expecting_continue(server, "/files/big.bin", authorization, b"b" * 5000) == [507]
    assert put_expecting_continue(server, "/files/anon.bin", None, b"a" * 10) == [401]
    assert versions_of(server, name) == 1


def test_an_overlong_password_is_refused_fast_not_truncated(server: InprocServer) -> None:
    name, password = make_user(server)
    huge = password + "x" * 100_000
    started = time.perf_counter()
    assert propfind(server, user=(name, huge)) == 401
    assert time.perf_counter() - started < 2
    assert propfind(server, user=(name, password[:-1])) == 401  # no prefix matching either


# -- the logbook


def test_the_logbook_is_read_through_the_api(server: InprocServer) -> None:
    name, password = make_user(server)
    other, other_password = make_user(server)
    uploader = {"User-Agent": "uploader/2.0"}
    put = call(
        server, "PUT", "/files/logged.txt", user=(name, password), body=b"x", headers=uploader
    )
    assert put.status == 201
    status, body = api(server, "GET", "/audit?path=/files/logged.txt", user=(name, password))
    assert status == 200 and [e["op"] for e in body["entries"]] == ["file:create"]
    assert body["entries"][0]["user"] == name
    # Every column of the row: the client and the version were left out.
    entry = body["entries"][0]
    assert entry["version_id"] is not None and entry["package_id"] is None
    assert entry["user_agent"] == "uploader/2.0"
    status, body = api(server, "GET", "/audit?op=auth&limit=2", user=(name, password))
    assert status == 200 and len(body["entries"]) == 2
    assert {e["user"] for e in body["entries"]} == {name}
    assert all(e["op"].startswith("auth:") for e in body["entries"])
    # Only their own rows, unless an admin asks.
    status, body = api(server, "GET", f"/audit?user={other}", user=(name, password))
    assert status == 403
    status, body = api(server, "GET", "/audit", user=(other, other_password))
    assert status == 200 and {e["user"] for e in body["entries"]} == {other}
    admin = (server.user, server.password)
    status, body = api(server, "GET", f"/audit?user={name}&op=file", user=admin)
    assert status == 200 and [e["op"] for e in body["entries"]] == ["file:create"]
    # An operation no row can have (a typo: "shared") was an empty answer, as if none happened.
    for bad in ("limit=0", "limit=x", "days=0", "limit=100000000000000000000", "op=shared"):
        status, body = api(server, "GET", f"/audit?{bad}", user=admin)
        assert (status, body["error"]) == (400, "bad_request"), bad


def test_the_logbook_is_read_by_time_window_and_by_item_once_deleted(
    server: InprocServer,
) -> None:
    """Time was only ``days`` (the last N days): what happened yesterday between 10 and 11
    could not be asked. And a file's rows were found by its path only, so once it was in
    the trash nothing named it. ``since`` and ``until`` (ISO 8601, UTC
    when no offset) bound the time, ``node`` names an item by the id its rows carry."""
    name, password = make_user(server)
    me = (name, password)
    for n in range(3):
        path = f"/files/window-{n}.txt"
        assert call(server, "PUT", path, user=me, body=b"x").status == 201
    status, body = api(server, "GET", "/audit?op=file", user=me)
    newest, middle, oldest = body["entries"]
    assert status == 200 and middle["op"] == "file:create"

    def ops(query: str, user: tuple[str, str] = me) -> list[int]:
        status, body = api(server, "GET", "/audit?" + query, user=user)
        assert status == 200, body
        return [e["id"] for e in body["entries"]]

    since, until = quote(middle["occurred_at"]), quote(newest["occurred_at"])
    assert ops(f"op=file&since={since}&until={until}") == [middle["id"]]
    assert ops(f"op=file&until={since}") == [oldest["id"]]
    naive = quote(middle["occurred_at"].removesuffix("+00:00"))
    assert ops(f"op=file&since={naive}") == [newest["id"], middle["id"]]

    node = middle["node_id"]
    assert call(server, "DELETE", "/files/window-1.txt", user=me).status == 204
    status, _ = api(server, "GET", "/audit?path=/files/window-1.txt", user=me)
    assert status == 404
    status, body = api(server, "GET", f"/audit?node={node}", user=me)
    assert [e["op"] for e in body["entries"]] == ["node:delete", "file:create"]
    # Someone else's rows about it are not theirs to read.
    other = make_user(server)
    assert ops(f"node={node}", other) == []
    backwards = f"since={until}&until={since}"  # a window that holds nothing: not an answer
    for bad in (
        "since=yesterday",
        "until=2026-13-01",
        "node=x",
        "days=1&since=2026-01-01",
        backwards,
    ):
        status, body = api(server, "GET", f"/audit?{bad}", user=me)
        assert (status, body["error"]) == (400, "bad_request"), bad


def test_failed_sign_ins_under_a_name_are_among_that_users_rows(server: InprocServer) -> None:
    """A failed sign-in has no user (nobody proved who they are), so asking the logbook for
    a user's rows (theirs, or an admin's ``user=``) never showed the attempts on their
    account. They are now among the rows of the user whose name was typed (in any case);
    no one else's."""
    name, password = make_user(server)
    other, other_password = make_user(server)
    guesses = {"User-Agent": "guesser/1.0"}
    for typed in (name, name.upper()):
        answer = call(server, "GET", "/files/", user=(typed, "wrong"), headers=guesses)
        assert answer.status == 401

    def failures(query: str, user: tuple[str, str]) -> list[Any]:
        status, body = api(server, "GET", "/audit?op=auth:login:failure" + query, user=user)
        assert status == 200, body
        return body["entries"]

    mine = failures("", (name, password))
    assert [(e["user"], e["details"]["username"], e["user_agent"]) for e in mine] == [
        (None, name.upper(), "guesser/1.0"),
        (None, name, "guesser/1.0"),
    ]
    assert failures("", (other, other_password)) == []
    admin = (server.user, server.password)
    assert [e["id"] for e in failures(f"&user={name}", admin)] == [e["id"] for e in mine]


def test_the_logbook_is_read_page_by_page_through_the_api(server: InprocServer) -> None:
    # There was no way past the newest 10,000 rows; ``offset`` and the like were ignored, so
    # a script asking for the next page got the first one again.
    name, password = make_user(server)
    for n in range(5):
        path = f"/files/page-{n}.txt"
        assert call(server, "PUT", path, user=(name, password), body=b"x").status == 201
    status, whole = api(server, "GET", "/audit?op=file", user=(name, password))
    assert status == 200 and len(whole["entries"]) == 5 and whole["next_before"] is None
    paged: list[int] = []
    query = "/audit?op=file&limit=2"
    while True:
        status, page = api(server, "GET", query, user=(name, password))
        assert status == 200 and len(page["entries"]) <= 2
        paged += [e["id"] for e in page["entries"]]
        if page["next_before"] is None:
            break
        assert page["next_before"] == paged[-1]
        query = f"/audit?op=file&limit=2&before={page['next_before']}"
    assert paged == [e["id"] for e in whole["entries"]]
    # A row that does not exist: an empty page would look like the end of the logbook.
    for bad in (
        "before=x",
        "before=-1",
        "before=",
        "offset=2",
        "limit=2&limit=3",
        f"before={2**62}",
    ):
        status, body = api(server, "GET", f"/audit?{bad}", user=(name, password))
        assert (status, body["error"]) == (400, "bad_request"), bad


def test_a_second_delete_of_the_same_thing_is_404_everywhere(server: InprocServer) -> None:
    # A second DELETE answered 204 for a session (and logged another ending), 409 for a key,
    # 404 for a grant or a package: one rule now, 404, and one logbook row per ending.
    name, password = make_user(server)
    user = (name, password)
    other, _ = make_user(server)
    assert call(server, "PUT", "/files/pinned.txt", user=user, body=b"x").status == 201
    _, key = api(server, "POST", "/keys", {"name": "twice"}, user=user)
    session_id = login(server, name, password)["session_id"]
    grant = {"path": "/files/pinned.txt", "user": other, "rights": ["read"]}
    assert api(server, "POST", "/grants", grant, user=user)[0] == 201
    assert api(server, "POST", "/packages", {"name": "twice"}, user=user)[0] == 201
    item = {"path": "/files/pinned.txt"}
    assert api(server, "POST", "/packages/twice/items", item, user=user)[0] == 201
    for path in (
        f"/sessions/{session_id}",
        f"/keys/{key['id']}",
        f"/grants?path=/files/pinned.txt&user={other}",
        "/packages/twice/items/pinned.txt",
        "/packages/twice",
    ):
        assert api(server, "DELETE", path, user=user)[0] == 204, path
        status, error = api(server, "DELETE", path, user=user)
        assert (status, error and error["error"]) == (404, "not_found"), path
    user_id = server.app.services.users.user_id(name)
    with server.app.db.read() as session:
        ended = session.scalars(
            sa.select(LogEntry.details).where(
                LogEntry.op_type == Op.SESSION_END.value, LogEntry.user_id == user_id
            )
        ).all()
    assert [d["session_id"] for d in ended] == [session_id]


def test_an_admin_ending_a_session_is_logged_with_whose_it_was(server: InprocServer) -> None:
    # The row named the admin and the session only: nobody could tell whose session ended.
    name, password = make_user(server)
    session_id = login(server, name, password)["session_id"]
    admin = (server.user, server.password)
    assert api(server, "DELETE", f"/sessions/{session_id}", user=admin)[0] == 204
    status, body = api(server, "GET", "/audit?op=auth:session:end&limit=20", user=admin)
    assert status == 200
    [row] = [r for r in body["entries"] if r["details"].get("session_id") == session_id]
    assert row["user"] == server.user
    assert row["details"]["user"] == name
    assert row["details"]["user_id"] == str(server.app.services.users.user_id(name))


def test_what_an_admin_did_to_an_account_is_among_its_rows_for_admins_only(
    server: InprocServer,
) -> None:
    """Asked for a user's rows, the logbook showed what they did, not what was done to their
    account (disabled, a new password): those rows are the admin's. An admin now sees them
    among the user's rows; the user does not (they carry the admin's address)."""
    name, password = make_user(server)
    users = server.app.services.users
    admin = Actor(
        user_id=users.user_id(server.user), username=server.user, roles=frozenset({"admin"})
    )
    users.disable_user(admin, name)
    users.enable_user(admin, name)
    assert call(server, "PUT", "/files/mine.txt", user=(name, password), body=b"x").status == 201

    def ops(query: str, user: tuple[str, str]) -> list[str]:
        status, body = api(server, "GET", "/audit?limit=50" + query, user=user)
        assert status == 200, body
        return [e["op"] for e in body["entries"] if not e["op"].startswith("auth:")]

    for_admins = ops(f"&user={name}", (server.user, server.password))
    assert for_admins[:3] == ["file:create", "user:enable", "user:disable"]
    assert "user:disable" not in ops("", (name, password))
    assert "file:create" in ops("", (name, password))
