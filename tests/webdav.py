"""Helpers for WebDAV tests over HTTP: users who sign in, multistatus answers as plain dicts,
locks, and the SQL statements a request runs."""

from __future__ import annotations

import uuid
import xml.etree.ElementTree as ET
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, unquote, urlsplit

from sqlalchemy import event

from tests.servers import InprocServer, Response, basic_auth_header, http_request

DAV = "{DAV:}"
DS = "{http://davserver.dev/ns}"
NC = "{http://nextcloud.org/ns}"
LOCK_BODY = (
    b'<?xml version="1.0"?><D:lockinfo xmlns:D="DAV:"><D:lockscope><D:exclusive/>'
    b"</D:lockscope><D:locktype><D:write/></D:locktype>"
    b"<D:owner>test</D:owner></D:lockinfo>"
)
WIN32_PROPPATCH = (
    b'<?xml version="1.0"?><D:propertyupdate xmlns:D="DAV:" '
    b'xmlns:Z="urn:schemas-microsoft-com:"><D:set><D:prop>'
    b"<Z:Win32CreationTime>Thu, 26 Nov 2026 10:00:00 GMT</Z:Win32CreationTime>"
    b"<Z:Win32LastAccessTime>Thu, 26 Nov 2026 10:00:00 GMT</Z:Win32LastAccessTime>"
    b"<Z:Win32LastModifiedTime>Thu, 26 Nov 2026 10:00:00 GMT</Z:Win32LastModifiedTime>"
    b"<Z:Win32FileAttributes>00000020</Z:Win32FileAttributes>"
    b"</D:prop></D:set></D:propertyupdate>"
)


def url_path(path: str) -> str:
    """A decoded path, percent-encoded for a request line or a Destination header."""
    return quote(path, safe="/")


@dataclass
class User:
    """Someone who signs in to ``server`` with Basic auth."""

    server: InprocServer
    name: str
    password: str

    @property
    def id(self) -> uuid.UUID:
        return self.server.application.services.users.user_id(self.name)

    def __call__(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> Response:
        """One request; ``path`` is decoded (it is quoted here), query strings are kept."""
        path, _, query = path.partition("?")
        sent = {"Authorization": basic_auth_header(self.name, self.password), **(headers or {})}
        target = self.server.url + url_path(path) + (f"?{query}" if query else "")
        return http_request(method, target, body, sent)

    def destination(self, path: str) -> dict[str, str]:
        return {"Destination": self.server.url + url_path(path)}

    def put(self, path: str, data: bytes, headers: Mapping[str, str] | None = None) -> int:
        return self("PUT", path, data, headers).status

    def get(self, path: str) -> bytes:
        response = self("GET", path)
        assert response.status == 200, (path, response.status, response.body[:300])
        return response.body

    def propfind(
        self, path: str, depth: str = "1", body: bytes | None = None
    ) -> dict[str, dict[str, str]]:
        """{decoded path without trailing slash: {property: text}} of the 200 propstats."""
        response = self("PROPFIND", path, body, {"Depth": depth})
        assert response.status == 207, (path, response.status, response.body[:500])
        return multistatus(response.body)

    def members(self, path: str) -> list[str]:
        """The names a Depth 1 PROPFIND of folder ``path`` lists."""
        folder = path.rstrip("/")
        return sorted(p.rsplit("/", 1)[1] for p in self.propfind(path) if p != folder)

    def lock(self, path: str) -> str:
        response = self("LOCK", path, LOCK_BODY, {"Timeout": "Second-600"})
        assert response.status in (200, 201), (response.status, response.body[:300])
        return response.headers["Lock-Token"].strip("<>")

    def unlock(self, path: str, token: str) -> None:
        assert self("UNLOCK", path, None, {"Lock-Token": f"<{token}>"}).status == 204


def make_user(server: InprocServer, prefix: str, roles: list[str] | None = None) -> User:
    name = f"{prefix}{uuid.uuid4().hex[:8]}"
    password = f"pw-{uuid.uuid4().hex}"
    users = server.application.services.users
    if roles is None:
        users.create_user(None, name, password=password)
    else:
        users.create_user(None, name, password=password, roles=roles)
    return User(server, name, password)


def multistatus(body: bytes) -> dict[str, dict[str, str]]:
    found: dict[str, dict[str, str]] = {}
    for response in ET.fromstring(body).findall(DAV + "response"):
        href = unquote(urlsplit(response.findtext(DAV + "href") or "").path)
        props: dict[str, str] = {}
        for propstat in response.findall(DAV + "propstat"):
            if " 200 " not in (propstat.findtext(DAV + "status") or ""):
                continue
            prop = propstat.find(DAV + "prop")
            for element in prop if prop is not None else []:
                props[element.tag] = "".join(element.itertext())
        found[href.rstrip("/") or "/"] = props
    return found


@contextmanager
def statements(server: InprocServer) -> Iterator[list[str]]:
    """Every SQL statement the server's engine runs inside the block."""
    seen: list[str] = []

    def listener(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        seen.append(statement)

    engine = server.application.db.engine
    event.listen(engine, "before_cursor_execute", listener)
    try:
        yield seen
    finally:
        event.remove(engine, "before_cursor_execute", listener)


def updates_of(seen: list[str], table: str) -> list[str]:
    return [s for s in seen if s.lstrip().upper().startswith(f"UPDATE {table.upper()} ")]
