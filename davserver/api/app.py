"""The JSON API's routes. Requests and responses are JSON objects; errors are
``{"error": code, "message": text}`` with the matching status.

    POST   /api/v1/token            {username, password} -> access and refresh token
    POST   /api/v1/token/refresh    {refresh_token}      -> a new pair (each refresh token once)
    POST   /api/v1/token/revoke     {token}              -> revoke a refresh or access token
    GET    /api/v1/me                                     -> who am I
    GET    /api/v1/sessions                               -> my open sessions
    DELETE /api/v1/sessions/<id>                          -> end one (its tokens stop working)
    GET    /api/v1/keys                                   -> my API keys
    POST   /api/v1/keys             {name, scope?, expires_days?} -> a new key, shown once
    DELETE /api/v1/keys/<id>                              -> revoke one
    GET    /api/v1/grants?path=/files/docs                -> the grants on an item
    POST   /api/v1/grants   {path, user | group, rights, expires_days?} -> grant (or replace)
    DELETE /api/v1/grants?path=...&user=bob (or &group=team) -> revoke
    GET    /api/v1/audit?user=&path=|node=&op=&days=|since=&until=&limit=&before=
                                -> logbook rows, newest first
                                (admins: anyone's; others: their own), and next_before: the
                                ``before`` of the next page (null on the last)
    GET    /api/v1/packages                               -> my packages
    POST   /api/v1/packages {name, description?, expires_days?} -> a new package (0: no expiry)
    GET    /api/v1/packages/<name>                        -> its items, zip size and ETag
    PATCH  /api/v1/packages/<name> {name?, description?, expires_days?} -> rename, or change them
    DELETE /api/v1/packages/<name>                        -> delete it (the files stay)
    POST   /api/v1/packages/<name>/items {path, path_in_archive?} -> pin a file or folder
    PATCH  /api/v1/packages/<name>/items/<path in archive> {path_in_archive} -> move it there
    DELETE /api/v1/packages/<name>/items/<path in archive> -> unpin (a folder: all below)

Everything but the token endpoints needs credentials (Basic, an API key or a Bearer token);
a read-only API key may only read. A query parameter an endpoint does not take, or one given
twice, is a 400 rather than silently ignored. HEAD answers as GET without the body; OPTIONS,
and a method an endpoint lacks (405), answer with the endpoint's methods in ``Allow``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import json
import threading
import uuid
from collections.abc import Callable, Iterable
from http import HTTPStatus
from typing import Any
from urllib.parse import quote

from davserver.api.errors import status_of
from davserver.api.inputs import (
    BodyTooLarge,
    BodyTooSlow,
    expiry_days,
    optional_text,
    parse_id,
    query_number,
    query_params,
    read_body,
    required_text,
)
from davserver.context import Services
from davserver.db.types import utcnow
from davserver.errors import (
    BadRequest,
    DomainError,
    Forbidden,
    NotFound,
    TooManyRequests,
    Unauthorized,
    Unavailable,
)
from davserver.http_request import BODY_GATHERED_KEY
from davserver.jsonsafe import plain
from davserver.services import health
from davserver.services.account_rules import account_key
from davserver.services.actor import Actor
from davserver.services.audit import MAX_ROWS, read_logbook
from davserver.services.bounds import (
    MAX_DAYS,
    days_from_now,
    parse_time,
)
from davserver.services.namespace import AccessContext, Reached
from davserver.services.package_archive import PackageView
from davserver.services.permissions import Perm

PREFIX = "/api/v1"
HEALTH_RETRY_SECONDS = 5  # a failing part: a database failing over, a store coming back
MAX_LOG_ID = 2**63 - 1  # the logbook's ids are bigint
Identify = Callable[[dict[str, Any]], Actor]


# Token requests read their body before anyone has signed in. One sent with a Content-Length of
# up to 64 KiB has arrived before a thread takes the request (``http_request.BODY_GATHERED_KEY``);
# another (chunked, held back for a 100 Continue, or larger) is read by at most this many
# threads at once, and the rest get 503: 32 of them whose bodies never came held every thread
# for ``inputs.BODY_SECONDS``.
SLOW_TOKEN_BODIES = 2


class ApiApp:
    def __init__(
        self, services: Services, identify: Identify, challenges: list[tuple[str, str]]
    ) -> None:
        self.services = services
        self.identify = identify
        self.challenges = challenges
        self._slow_token_bodies = threading.BoundedSemaphore(SLOW_TOKEN_BODIES)

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        method = environ.get("REQUEST_METHOD", "GET")
        path = environ.get("PATH_INFO", "")
        with contextlib.suppress(UnicodeError):  # WSGI gives the URL's bytes as latin-1
            path = path.encode("iso-8859-1").decode("utf-8")
        parts = [p for p in path[len(PREFIX) :].split("/") if p]
        allowed = _allowed(parts)
        allow = [("Allow", ", ".join(allowed))]
        if allowed and method == "OPTIONS":
            return _json(start_response, 204, None, allow)
        if allowed and method not in allowed:
            refusal = {
                "error": "method_not_allowed",
                "message": f"{PREFIX}/{'/'.join(parts)} answers {', '.join(allowed)}",
            }
            return _json(start_response, 405, refusal, allow)
        try:
            if method not in _SAFE_METHODS:
                _refuse_other_sites(environ)
            if parts[:1] not in (["grants"], ["audit"]):
                query_params(environ)  # these take none: any is a 400, as there a wrong one
            status, body = self._route("GET" if method == "HEAD" else method, parts, environ)
        except DomainError as exc:
            response = self.error(start_response, exc)
        except BodyTooLarge:
            response = self.too_large(start_response)
        except BodyTooSlow:
            refusal = {"error": "timeout", "message": "the request body came too slowly"}
            response = _json(start_response, 408, refusal, [("Connection", "close")])
        else:
            # Only the health check answers 503 without an Unavailable: when to ask again.
            retry = [("Retry-After", str(HEALTH_RETRY_SECONDS))] if status == 503 else None
            response = _json(start_response, status, body, retry)
        return [b""] if method == "HEAD" else response

    def _route(self, method: str, parts: list[str], environ: dict[str, Any]) -> tuple[int, Any]:
        client = {
            "remote_addr": environ.get("REMOTE_ADDR"),
            "user_agent": environ.get("HTTP_USER_AGENT"),
        }
        tokens = self.services.tokens
        match method, parts:
            case "POST", ["token"]:
                # OAuth 2 clients add fields of their own (client_id, scope): taken as sent.
                body = self._token_body(environ)
                if body.get("grant_type") == "refresh_token":
                    return 200, tokens.refresh(
                        required_text(body, "refresh_token"), **client
                    ).as_json()
                pair = tokens.login(
                    required_text(body, "username"), required_text(body, "password"), **client
                )
                return 200, pair.as_json()
            case "POST", ["token", "refresh"]:
                body = self._token_body(environ)
                return 200, tokens.refresh(required_text(body, "refresh_token"), **client).as_json()
            case "POST", ["token", "revoke"]:
                tokens.revoke(required_text(self._token_body(environ), "token"), **client)
                return 200, {"revoked": True}
            case "GET", ["health"]:
                return self._health()
        actor = self.identify(environ)
        if method not in ("GET", "HEAD") and actor.read_only:
            raise Forbidden("this API key is read-only")
        match method, parts:
            case "GET", ["me"]:
                return 200, self._me(actor)
            case "GET", ["sessions"]:
                sessions = self.services.sessions.list(actor.user_id)
                for item in sessions:
                    item["current"] = item["id"] == actor.session_id
                return 200, {"sessions": plain(sessions)}
            case "DELETE", ["sessions", session_id]:
                self.services.sessions.end(actor, parse_id(session_id))
                return 204, None
            case "GET", ["keys"]:
                keys = self.services.api_keys.list_keys(actor.user_id, actor=actor)
                return 200, {"keys": [plain(k.as_dict()) for k in keys]}
            case "POST", ["keys"]:
                body = self._body(environ, "name", "scope", "expires_days")
                return 201, self._create_key(actor, body)
            case "DELETE", ["keys", key]:
                self.services.api_keys.revoke(actor, actor.user_id, key)
                return 204, None
            case "GET", ["grants"]:
                # Who else has access is for those who may share; a reader sees their own.
                # (A read-only key reads what its user may read: its cap on rights aside.)
                holder = dataclasses.replace(actor, read_only=False)
                ctx = self.services.namespace.context(holder)
                target = self._reach(
                    holder, required_text(query_params(environ, "path"), "path"), ctx
                )
                reaching = None if target.rights & Perm.SHARE else (actor.user_id, ctx.groups)
                grants = self.services.sharing.grants_on(target.view, reaching=reaching)
                return 200, {"grants": [plain(g.as_dict()) for g in grants]}
            case "POST", ["grants"]:
                body = self._body(environ, "path", "user", "group", "rights", "expires_days")
                return 201, self._grant(actor, body)
            case "DELETE", ["grants"]:
                query = query_params(environ, "path", "user", "group")
                target = self._reach(actor, required_text(query, "path"))
                self.services.sharing.revoke_grantee(
                    actor,
                    target.view,
                    target.rights,
                    user=query.get("user"),
                    group=query.get("group"),
                )
                return 204, None
            case "GET", ["audit"]:
                query = query_params(
                    environ,
                    "user",
                    "path",
                    "node",
                    "op",
                    "days",
                    "since",
                    "until",
                    "limit",
                    "before",
                )
                return 200, self._audit(actor, query)
            case _, ["packages", *rest]:
                return self._packages(actor, method, rest, environ)
        raise NotFound(f"no API endpoint {method} {PREFIX}/{'/'.join(parts)}")

    def _packages(
        self, actor: Actor, method: str, rest: list[str], environ: dict[str, Any]
    ) -> tuple[int, Any]:
        packages = self.services.packages
        match method, rest:
            case "GET", []:
                found = packages.list_packages(actor.user_id)
                return 200, {"packages": [plain(p.summary()) for p in found]}
            case "POST", []:
                body = self._body(environ, "name", "description", "expires_days")
                created = packages.create(
                    actor,
                    actor.user_id,
                    required_text(body, "name"),
                    description=optional_text(body, "description") or "",
                    expires_days=expiry_days(
                        body, at_least=0, what="expires_days (0: never expires)"
                    ),
                )
                return 201, self._package(actor, created)
            case "GET", [name]:
                return 200, self._package(actor, packages.get(actor.user_id, name))
            case "PATCH", [name]:
                body = self._body(environ, "name", "description", "expires_days")
                changed = packages.update(
                    actor,
                    packages.get(actor.user_id, name),
                    name=optional_text(body, "name"),
                    description=optional_text(body, "description"),
                    expires_days=expiry_days(
                        body, at_least=0, what="expires_days (0: never expires)"
                    ),
                )
                return 200, self._package(actor, changed)
            case "DELETE", [name]:
                packages.delete(actor, packages.get(actor.user_id, name))
                return 204, None
            case "POST", [name, "items"]:
                body = self._body(environ, "path", "path_in_archive")
                package = packages.get(actor.user_id, name)
                path_in_archive = optional_text(body, "path_in_archive")
                ctx = self.services.namespace.context(actor)
                target = self._reach(actor, required_text(body, "path"), ctx)
                added = packages.add(actor, package, ctx, target.view, path_in_archive)
                return 201, {"added": [plain(item.as_dict()) for item in added]}
            case "PATCH", [name, "items", *path] if path:
                body = self._body(environ, "path_in_archive")
                package = packages.get(actor.user_id, name)
                packages.move(
                    actor, package, "/".join(path), required_text(body, "path_in_archive")
                )
                return 200, self._package(actor, packages.get(actor.user_id, name))
            case "DELETE", [name, "items", *path] if path:
                packages.remove(actor, packages.get(actor.user_id, name), "/".join(path))
                return 204, None
        raise NotFound(f"no API endpoint {method} {PREFIX}/packages/{'/'.join(rest)}")

    def _oauth_body(self, environ: dict[str, Any]) -> dict[str, Any]:
        return read_body(environ, self.services.settings.server.max_xml_body)

    def _token_body(self, environ: dict[str, Any]) -> dict[str, Any]:
        """A token request's body, read before anyone has signed in (``SLOW_TOKEN_BODIES``)."""
        if environ.get(BODY_GATHERED_KEY):
            return self._oauth_body(environ)
        if not self._slow_token_bodies.acquire(blocking=False):
            raise Unavailable("too many sign-ins are still sending their request: try again")
        try:
            return self._oauth_body(environ)
        finally:
            self._slow_token_bodies.release()

    def _body(self, environ: dict[str, Any], *fields: str) -> dict[str, Any]:
        """The request's JSON object, with none but ``fields`` in it: BadRequest naming the
        others. Ignored, a misspelt field left a default in its place: ``"scpoe": "read"``
        made a key that writes, ``"expire_days"`` a grant that never expires."""
        body = self._oauth_body(environ)
        unknown = sorted(set(body) - set(fields))
        if unknown:
            raise BadRequest(
                f"unknown field(s) {', '.join(map(repr, unknown))}; this request takes "
                f"{', '.join(fields)}"
            )
        return body

    def _package(self, actor: Actor, package: PackageView) -> dict[str, Any]:
        """A package with its items, where its zip is, and what could not be downloaded."""
        packages = self.services.packages
        layout = packages.layout(package)
        unavailable = packages.unavailable(self.services.namespace.context(actor), package)
        return plain(
            {
                **package.summary(),
                "zip": {
                    "url": f"/packages/{quote(package.zip_name)}",
                    "size": layout.size,
                    "etag": layout.etag,
                },
                "files": [item.as_dict() for item in package.items],
                "unavailable": unavailable,
            }
        )

    def _health(self) -> tuple[int, dict[str, str]]:
        """200 when this process can serve, 503 naming the failing part (no sign-in)."""
        parts = health.probe(self.services.db, self.services.blobs)
        working = all(parts.values())
        answer = {name: "ok" if ok else "failing" for name, ok in parts.items()}
        return (200 if working else 503), {"status": "ok" if working else "failing", **answer}

    def _me(self, actor: Actor) -> dict[str, Any]:
        return plain(
            {
                "id": actor.user_id,
                "username": actor.username,
                "roles": sorted(actor.roles),
                "auth_method": actor.auth_method,
                "read_only": actor.read_only,
                "session_id": actor.session_id,
            }
        )

    def _create_key(self, actor: Actor, body: dict[str, Any]) -> dict[str, Any]:
        expires = days_from_now(expiry_days(body, at_least=1))
        scope = body.get("scope", "readwrite")
        if not isinstance(scope, str):
            raise BadRequest("scope is read or readwrite")
        info, key = self.services.api_keys.create(
            actor, actor.user_id, required_text(body, "name"), scope=scope, expires_at=expires
        )
        return {**plain(info.as_dict()), "key": key}

    def _reach(self, actor: Actor, path: str, ctx: AccessContext | None = None) -> Reached:
        """The item at a path of the user's namespace (``/files/...``, ``/groups/...``,
        ``/shared/...``); NotFound unless it is a file or folder the user may read."""
        namespace = self.services.namespace
        ctx = ctx or namespace.context(actor)
        found = namespace.resolve(ctx, [p for p in path.split("/") if p])
        if not isinstance(found, Reached):
            raise NotFound(f"no item {path!r}")
        return found

    def _audit(self, actor: Actor, query: dict[str, str]) -> dict[str, Any]:
        """Logbook rows, newest first: an admin's of anyone (``user``: what they did, and
        what happened to their account, admins' doings included), anyone else's their own
        (with the failed sign-ins under their name, the account's bans); about an item of
        their namespace (``path``) or any item by its id (``node``: trashed or purged too),
        an operation or family (``op``), the last ``days`` days or from ``since``, before
        ``until``, at most ``limit`` (100)."""
        user = query.get("user") or None
        if actor.is_admin:
            user_id = self.services.users.user_id(user, include_deleted=True) if user else None
        elif user is None or account_key(user) == account_key(actor.username):
            user_id = actor.user_id
        else:
            raise Forbidden("only admins read other users' logbook rows")
        path, node = query.get("path"), query.get("node")
        if path and node:
            raise BadRequest("name the item by path or by node, not both")
        days = query_number(query, "days", MAX_DAYS, at_least=1)
        since, until = (
            parse_time(query[name], what=name) if name in query else None
            for name in ("since", "until")
        )
        if days is not None and since is not None:
            raise BadRequest("give days or since, not both")
        if days is not None:
            since = utcnow() - dt.timedelta(days=days)
        limit = query_number(query, "limit", MAX_ROWS, at_least=1) or 100
        before = query_number(query, "before", MAX_LOG_ID, at_least=1)
        if node is not None:
            # The id its rows carry: an item in the trash or purged, which no path reaches.
            try:
                node_id: uuid.UUID | None = uuid.UUID(node)
            except ValueError:
                raise BadRequest("node is the id of a file or folder (node_id)") from None
        else:
            node_id = self._reach(actor, path).view.id if path else None
        rows = read_logbook(
            self.services.db,
            user_id=user_id,
            about_user=actor.is_admin,
            node_id=node_id,
            op=query.get("op"),
            since=since,
            until=until,
            before=before,
            limit=limit,
        )
        next_before = rows[-1].id if len(rows) == limit else None
        return {"entries": [plain(row.as_dict()) for row in rows], "next_before": next_before}

    def _grant(self, actor: Actor, body: dict[str, Any]) -> dict[str, Any]:
        ctx = self.services.namespace.context(actor)
        target = self._reach(actor, required_text(body, "path"), ctx)
        rights = body.get("rights")
        if not isinstance(rights, list) or not all(isinstance(r, str) for r in rights):
            raise BadRequest('rights is a list such as ["read", "download"]')
        try:
            wanted = Perm.parse(rights)
        except ValueError as exc:
            raise BadRequest(str(exc)) from None
        expires = days_from_now(expiry_days(body, at_least=1))
        user, group = body.get("user"), body.get("group")
        if not isinstance(user, str | None) or not isinstance(group, str | None):
            raise BadRequest("user and group are names")
        info = self.services.sharing.grant(
            actor,
            target.view,
            target.rights,
            user=user,
            group=group,
            rights=wanted,
            expires_at=expires,
            holder_until=self.services.namespace.held_until(ctx, target.view, wanted | Perm.SHARE),
        )
        return plain(info.as_dict())

    def error(self, start_response: Any, exc: DomainError) -> list[bytes]:
        """The JSON answer to a domain error (the front uses it for a request it refuses)."""
        status, code = status_of(exc)
        headers: list[tuple[str, str]] = []
        if isinstance(exc, Unauthorized):
            headers = list(self.challenges)
        elif isinstance(exc, (TooManyRequests, Unavailable)):
            headers = [("Retry-After", str(exc.retry_after))]
        return _json(start_response, status, {"error": code, "message": str(exc)}, headers)

    def too_large(self, start_response: Any) -> list[bytes]:
        """The JSON answer to a body larger than ``server.max_xml_body`` (the front refuses
        it before reading it)."""
        refusal = {"error": "too_large", "message": "the request body is too large"}
        return _json(start_response, 413, refusal)


_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def _refuse_other_sites(environ: dict[str, Any]) -> None:
    """Forbidden for a request a browser sent on behalf of a page of another origin.

    A browser adds the Basic credentials its user signed in with (to the folder listing, say)
    to every request to this server, whichever page makes it, and another site's page may
    POST without asking first (a form, whose ``text/plain`` carries any JSON, or fetch with
    ``no-cors``): it could grant itself the user's files or make keys. Browsers say where a
    request comes from in ``Sec-Fetch-Site`` (or, older ones, ``Origin``); clients that are
    not browsers (curl, scripts) send neither and are not affected. As Go's
    ``http.CrossOriginProtection`` decides."""
    site = environ.get("HTTP_SEC_FETCH_SITE")
    if site is not None:
        if site.strip().lower() in ("same-origin", "none"):
            return
    else:
        origin = environ.get("HTTP_ORIGIN")
        if origin is None:
            return
        _, _, host = origin.strip().lower().partition("://")
        ours = (environ.get("HTTP_HOST"), environ.get("HTTP_X_FORWARDED_HOST"))
        if host and host in {h.strip().lower() for h in ours if h}:
            return
    raise Forbidden("the API takes no changes from another site's page (Origin, Sec-Fetch-Site)")


def _allowed(parts: list[str]) -> tuple[str, ...]:
    """The methods of the endpoint at a path (as ``_route`` answers them), OPTIONS last;
    () where there is none."""
    match parts:
        case ["token"] | ["token", "refresh"] | ["token", "revoke"]:
            methods: tuple[str, ...] = ("POST",)
        case ["me"] | ["sessions"] | ["audit"] | ["health"]:
            methods = ("GET", "HEAD")
        case ["sessions", _] | ["keys", _]:
            methods = ("DELETE",)
        case ["keys"] | ["packages"]:
            methods = ("GET", "HEAD", "POST")
        case ["grants"]:
            methods = ("GET", "HEAD", "POST", "DELETE")
        case ["packages", _]:
            methods = ("GET", "HEAD", "PATCH", "DELETE")
        case ["packages", _, "items"]:
            methods = ("POST",)
        case ["packages", _, "items", _, *_]:
            methods = ("PATCH", "DELETE")
        case _:
            return ()
    return (*methods, "OPTIONS")


def _json(
    start_response: Any,
    status: int,
    body: Any,
    headers: list[tuple[str, str]] | None = None,
) -> list[bytes]:
    data = b"" if status == 204 else json.dumps(body).encode() + b"\n"
    response_headers = [*(headers or []), ("Cache-Control", "no-store")]
    if status != 204:
        response_headers += [
            ("Content-Type", "application/json"),
            ("Content-Length", str(len(data))),
        ]
    start_response(f"{status} {HTTPStatus(status).phrase}", response_headers)
    return [data]
