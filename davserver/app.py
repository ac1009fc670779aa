"""Assembles the application: database, blob store, services, WsgiDAV and its middleware."""

from __future__ import annotations

import io
import ipaddress
import logging
import threading
import time
from collections.abc import Iterable
from typing import Any
from urllib.parse import unquote, unquote_to_bytes

from sqlalchemy import event
from wsgidav.wsgidav_app import WsgiDAVApp

from auth.authenticator import Authenticator
from davserver.api import ApiApp
from davserver.api.app import PREFIX as API_PREFIX
from davserver.blobstore import MaintainableBlobStore
from davserver.config import Networks, Settings, trusted_networks
from davserver.context import Services
from davserver.errors import (
    BadRequest,
    StorageFull,
    TooManyRequests,
    Unauthorized,
    Unavailable,
    UploadIncomplete,
)
from davserver.metrics import Board, Counted, Slot, render
from davserver.services.actor import Actor
from davserver.services.write_fence import set_write_fence
from providers.dispatch import DavRequestResolver
from providers.error_printer import ErrorPrinter
from providers.lock_manager import LockManager
from providers.lock_storage import SqlLockStorage
from providers.packages import register as register_packages
from providers.provider import DavProvider
from providers.trash import register as register_trash
from providers.versions import register as register_versions

# Where Prometheus scrapes (``server.metrics``).
METRICS_PATH = "/metrics"
# Bodies WsgiDAV reads whole into memory (PROPFIND, PROPPATCH, LOCK, ...) are capped.
_STREAMED_METHODS = frozenset({"PUT", "GET", "HEAD"})


class Application:
    """The WSGI application and everything it owns; ``close()`` releases it all."""

    def __init__(
        self,
        settings: Settings,
        blobs: MaintainableBlobStore | None = None,
        *,
        metrics: Slot | None = None,
    ) -> None:
        """``metrics``: this process's slot of the workers' shared board (davserver.workers);
        by default a board of its own."""
        self.settings = settings
        self.metrics = metrics or Board(1).slot(0)
        self._proxies = trusted_networks(settings.server.trusted_proxies)
        self.services = services = Services(settings, blobs)
        self.db = services.db
        self.blobs = services.blobs
        self.accounts = services.accounts
        self.files = services.files
        self.authenticator = Authenticator(
            services.accounts, services.tokens, services.sessions, realm=settings.dav.realm
        )
        self.api = ApiApp(services, self.authenticator.identify, self.authenticator.challenges)
        self.lock_storage = SqlLockStorage(self.db, max_timeout=settings.dav.lock_max_timeout)
        self.provider = DavProvider(self.files, services.variants, services.namespace)
        register_packages(self.provider, services.packages)
        register_versions(self.provider, services.versions)
        register_trash(self.provider, services.trash)
        self._queries = threading.local()
        if settings.logging.query_header:
            event.listen(self.db.engine, "before_cursor_execute", self._count_query)
        self.dav = WsgiDAVApp(self._wsgidav_config())
        # WsgiDAV made its own LockManager from the storage; ours lets a member's lock holder
        # change the folder above it (providers.lock_manager).
        self.dav.lock_manager = LockManager(self.lock_storage)
        self.provider.set_lock_manager(self.dav.lock_manager)

    def _wsgidav_config(self) -> dict[str, Any]:
        return {
            "provider_mapping": {"/": self.provider},
            "lock_storage": self.lock_storage,
            "property_manager": None,
            "mutable_live_props": ["{DAV:}getlastmodified"],
            "honor_mtime_header": True,
            "hotfixes": {"emulate_win32_lastmod": False, "re_encode_path_info": True},
            "add_header_MS_Author_Via": True,
            "block_size": self.settings.server.block_size,
            "dir_browser": {"enable": False},
            "middleware_stack": [
                # Authentication happens before WsgiDAV (``Application.__call__``).
                ErrorPrinter,
                DavRequestResolver,
            ],
            "verbose": 1,
            "logging": {"enable": False},
            "suppress_version_info": True,
        }

    def _count_query(self, *_args: Any) -> None:
        self._queries.count = getattr(self._queries, "count", 0) + 1

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        """Answer a request, counted in the metrics (``davserver.metrics``) when its response
        is closed."""
        # WsgiDAV does its work while the response is iterated, so what the request holds for
        # its whole life (``_end_request``) is released when the server closes the response.
        method = environ.get("REQUEST_METHOD", "")
        counted = Counted(self.metrics, method, time.monotonic(), after=self._end_request)

        def noted(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
            counted.status = int(status[:3]) if status[:3].isdigit() else 0
            return start_response(status, headers, exc_info)

        try:
            counted.response = self._respond(environ, noted)
        except BaseException:
            counted.status = 500  # cheroot answers it
            counted.close()
            raise
        return counted

    def _respond(self, environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        method = environ.get("REQUEST_METHOD", "")
        length = environ.get("CONTENT_LENGTH", "") or "0"
        path = environ.get("PATH_INFO", "")
        is_api = path == API_PREFIX or path.startswith(API_PREFIX + "/")
        # Checked for every method: cheroot passes "-5" and "+5" on, and a PUT then failed
        # reading its body (ValueError, a 500).
        if not (length.isascii() and length.isdigit()):
            if is_api:
                return self.api.error(start_response, BadRequest("invalid Content-Length"))
            return _plain(start_response, "400 Bad Request", "Invalid Content-Length\n")
        if method not in _STREAMED_METHODS and int(length) > self.settings.server.max_xml_body:
            if is_api:
                return self.api.too_large(start_response)
            return _plain(start_response, "413 Content Too Large", "Request body too large\n")
        if self._proxies:
            _take_forwarded_address(environ, self._proxies)
        problem = _path_problem(path) or _destination_problem(environ) or _nul_problem(environ)
        if problem:
            if is_api:
                return self.api.error(start_response, BadRequest(problem))
            return _plain(start_response, "400 Bad Request", problem + "\n")
        start_response = _with_final_headers(start_response)
        if self.settings.logging.query_header:
            self._queries.count = 0
            start_response = self._with_query_header(start_response)
        self.db.begin_request()  # ended by ``__call__``'s response, when it is closed
        return self._dispatch(environ, start_response)

    def _dispatch(self, environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if path == API_PREFIX or path.startswith(API_PREFIX + "/"):
            return self.api(environ, start_response)
        try:
            actor = self.authenticator.identify(environ)
        except Unauthorized:
            body = "" if environ.get("REQUEST_METHOD") == "HEAD" else "Authentication required\n"
            return _plain(start_response, "401 Unauthorized", body, self.authenticator.challenges)
        except TooManyRequests as exc:
            return _plain(
                start_response,
                "429 Too Many Requests",
                "Too many failed logins; try again later\n",
                [("Retry-After", str(exc.retry_after))],
            )
        except StorageFull:  # a first login is recorded: the database's disk is full
            return _plain(start_response, "507 Insufficient Storage", "The server is full\n")
        except Unavailable as exc:  # another writer kept SQLite's write lock, no PostgreSQL
            return _plain(
                start_response,
                "503 Service Unavailable",
                f"{exc}\n",
                [("Retry-After", str(exc.retry_after))],
            )
        refused = self._take_chunked_body(environ, start_response)
        if refused is not None:
            return refused
        if path == METRICS_PATH and self.settings.server.metrics:
            return self._metrics(environ, start_response, actor)
        return self.dav(environ, start_response)

    def _take_chunked_body(
        self, environ: dict[str, Any], start_response: Any
    ) -> Iterable[bytes] | None:
        """Read a chunked body that WsgiDAV reads whole anyway (PROPFIND, PROPPATCH, LOCK,
        MKCOL), up to ``server.max_xml_body``, and hand it on with its length: WsgiDAV reads a
        body by its Content-Length, and took a chunked one (Go's net/http sends bodies of
        unknown length so) for none. None when the request goes on; else the answer: 413 past
        the limit (the rest is left unread, and the connection closed), 400 for a malformed or
        cut-off body. PUT streams its body itself; the JSON API reads its own
        (``davserver.api.inputs``)."""
        chunked = "chunked" in environ.get("HTTP_TRANSFER_ENCODING", "").lower()
        if not chunked or environ.get("REQUEST_METHOD") in _STREAMED_METHODS:
            return None
        limit = self.settings.server.max_xml_body
        try:
            body = environ["wsgi.input"].read(limit + 1)
        except (BadRequest, UploadIncomplete) as exc:
            return _plain(start_response, "400 Bad Request", f"{exc}\n")
        if len(body) > limit:
            return _plain(start_response, "413 Content Too Large", "Request body too large\n")
        environ["wsgi.input"] = io.BytesIO(body)
        environ["CONTENT_LENGTH"] = str(len(body))
        return None

    def _metrics(
        self, environ: dict[str, Any], start_response: Any, actor: Actor
    ) -> Iterable[bytes]:
        """GET /metrics, for admins: ``davserver.metrics.render``."""
        method = environ.get("REQUEST_METHOD")
        if method not in ("GET", "HEAD"):
            return _plain(
                start_response, "405 Method Not Allowed", "GET only\n", [("Allow", "GET, HEAD")]
            )
        if not actor.is_admin:
            return _plain(start_response, "403 Forbidden", "The metrics are for admins\n")
        gauges = {
            "davserver_blob_store_free_bytes": (
                "Free space where uploads are written (the blob folder's disk, or S3 staging).",
                float(self.blobs.free_bytes()),
            )
        }
        body = render(self.metrics.board, gauges).encode()
        start_response(
            "200 OK",
            [
                ("Content-Type", "text/plain; version=0.0.4; charset=utf-8"),
                ("Content-Length", str(len(body))),
                ("Cache-Control", "no-store"),
            ],
        )
        return [b"" if method == "HEAD" else body]

    def _end_request(self) -> None:
        """Release what a request held for its whole life: its read connection, its locks view."""
        self.db.end_request()
        self.lock_storage.end_request()
        set_write_fence(None)

    def _with_query_header(self, start_response: Any) -> Any:
        def wrapped(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
            headers = [*headers, ("X-Query-Count", str(getattr(self._queries, "count", 0)))]
            return start_response(status, headers, exc_info)

        return wrapped

    def close(self) -> None:
        self.services.close()


# Files are served with the type their uploader gave, on the server's origin, where a browser
# adds the signed-in user's Basic credentials to every request: an HTML page shared with
# someone must not run scripts there (it could make itself an API key with their rights).
# Sandboxed, with nothing to load but its own images, media and inline styles, it is shown,
# inert; and no answer may be sniffed into a type it was not given. Downloads stay allowed:
# a sandbox blocks those started from the page, and the folder listing's links start them.
# No other site may frame an answer, or load one as its script or image with the credentials
# the browser holds for this server (a .js or JSON file read across sites).
_CONTENT_POLICY = [
    (
        "Content-Security-Policy",
        "sandbox allow-downloads; default-src 'none'; img-src 'self' data:; media-src 'self';"
        " style-src 'unsafe-inline'; frame-ancestors 'none'",
    ),
    ("X-Content-Type-Options", "nosniff"),
    ("Cross-Origin-Resource-Policy", "same-origin"),
]


def _with_final_headers(start_response: Any) -> Any:
    """``start_response`` adding the content policy to every answer, and taking the
    ``Content-Length: 0`` out of a 204 or 304 (RFC 9110 8.6: none in a 204, none but the
    200's in a 304). WsgiDAV needs it there: it closes the connection after an answer
    without one."""

    def wrapped(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
        present = {name.lower() for name, _ in headers}
        extra = [(k, v) for k, v in _CONTENT_POLICY if k.lower() not in present]
        if status[:3] in ("204", "304"):
            headers = [(k, v) for k, v in headers if k.lower() != "content-length"]
        return start_response(status, [*headers, *extra], exc_info)

    return wrapped


def _path_problem(path_info: str) -> str | None:
    """Why a request path cannot be served, or None.

    Checked here because WsgiDAV meets these inside a generator, where its error response is
    lost: a URL that is not UTF-8 dropped the connection, and one climbing above ``/`` with
    ``..`` announced a body it never sent.
    """
    try:
        # WSGI hands the raw bytes over as latin-1; WsgiDAV decodes them as UTF-8.
        path = path_info.encode("iso-8859-1").decode("utf-8")
    except UnicodeError:
        return "The URL is not valid UTF-8"
    depth = 0
    for segment in path.split("/"):
        if segment == "..":
            depth -= 1
            if depth < 0:
                return "The URL climbs above the root"
        elif segment not in ("", "."):
            depth += 1
    return None


_MOVES = frozenset({"COPY", "MOVE"})


def _destination_problem(environ: dict[str, Any]) -> str | None:
    """Why a COPY or MOVE's Destination cannot be used (empty, not UTF-8, or a NUL in it), or
    None; a Destination sent as raw UTF-8 (not percent-encoded) is percent-encoded here, in
    ``environ``.

    WsgiDAV un-escapes the header as UTF-8 with replacement characters, and takes WSGI's
    latin-1 reading of raw bytes as it is: ``%FF%FE.txt`` made a file named with U+FFFD, and a
    raw ``été.txt`` one named ``Ã©tÃ©.txt``.
    """
    header = environ.get("HTTP_DESTINATION")
    if header is not None and not header.strip() and environ["REQUEST_METHOD"] in _MOVES:
        return "The Destination header is empty: name where the item goes"
    if not header:
        return None
    raw = header.encode("iso-8859-1", errors="replace")
    if not raw.isascii():
        header = "".join(chr(b) if b < 0x80 else f"%{b:02X}" for b in raw)
        environ["HTTP_DESTINATION"] = header
    try:
        decoded = unquote_to_bytes(header).decode("utf-8")
    except UnicodeDecodeError:
        return "The Destination is not valid UTF-8"
    return "The URL contains a NUL character" if "\x00" in decoded else None


def _trusted(address: str, proxies: Networks) -> bool:
    """Whether ``address`` is one of ``proxies``, an IPv4 address written as IPv6 as well
    (``::ffff:127.0.0.1``: listening on ``::``, cheroot takes IPv4 clients so, and the
    proxy at 127.0.0.1 was trusted by no one, its forwarded addresses ignored)."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return any(ip in network for network in proxies)


def _take_forwarded_address(environ: dict[str, Any], proxies: Networks) -> None:
    """Put the client's address in ``REMOTE_ADDR`` when a trusted proxy forwarded the request.

    X-Forwarded-For lists the addresses a request came through, each proxy appending the one
    it came from; read from the right, the first one that is not a trusted proxy is the client
    (anything left of it could have been sent by the client itself). A malformed entry ends
    the walk: the last trusted hop is then the best that is known.
    """
    remote = environ.get("REMOTE_ADDR", "")
    if not _trusted(remote, proxies):
        return
    hops = [hop.strip() for hop in environ.get("HTTP_X_FORWARDED_FOR", "").split(",")]
    for hop in reversed(hops):
        try:
            address = ipaddress.ip_address(hop)
        except ValueError:
            return
        # Without a zone (fe80::1%eth0): it means nothing here, and PostgreSQL's inet refuses it.
        environ["REMOTE_ADDR"] = hop = str(address).partition("%")[0]
        if not _trusted(hop, proxies):
            return


def _nul_problem(environ: dict[str, Any]) -> str | None:
    """Why a request carrying a NUL character cannot be served, or None.

    No name (of a file, a user, a group, a key...) can hold one, and PostgreSQL refuses it in
    any text, so a NUL in the path, the query, the Destination or any other header made a
    query fail there (a 500) where SQLite simply found nothing. Refused here, once for every
    front; the JSON API's bodies are checked where they are parsed.
    """
    if "\x00" in environ.get("PATH_INFO", ""):
        return "The URL contains a NUL character"
    query = environ.get("QUERY_STRING", "")  # the Destination: _destination_problem
    if "%" in query and "\x00" in unquote(query):
        return "The URL contains a NUL character"
    if any("\x00" in value for key, value in environ.items() if key.startswith("HTTP_")):
        return "A header contains a NUL character"
    return None


def _plain(
    start_response: Any, status: str, text: str, headers: list[tuple[str, str]] | None = None
) -> list[bytes]:
    body = text.encode()
    start_response(
        status,
        [
            *(headers or []),
            ("Content-Type", "text/plain; charset=utf-8"),
            ("Content-Length", str(len(body))),
        ],
    )
    return [body]


logging.getLogger("wsgidav").setLevel(logging.WARNING)
