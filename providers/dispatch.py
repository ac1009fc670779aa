"""The innermost middleware: hands each request to WsgiDAV's RequestServer, with these fixes.

* COPY and MOVE answered by a provider hook (``handle_copy``/``handle_move``) always get 204
  from WsgiDAV; RFC 4918 wants 201 when the destination is new. Resources leave the right code
  in ``environ["davserver.status"]``.
* PROPFIND is answered by ``providers.propfind`` once WsgiDAV's If headers are evaluated:
  WsgiDAV's own handler is slow and reads ``DAV:propname`` and ``DAV:include`` wrongly.
* WsgiDAV un-escapes the Destination header *before* splitting it into URL parts, so a name
  with ``?`` or ``;`` was cut short (a MOVE to ``what%3F.txt`` created ``what``). Its parser
  is replaced by one that keeps everything after the host as the path. It also un-escaped
  ``%2F`` into a separator, where the request's own path keeps it as part of the name.
* If-Match, If-None-Match, If-Modified-Since and If-Unmodified-Since are evaluated by
  ``providers.conditions``, on the resource the request names only.
* GET and HEAD ignore a Range header that is not one valid byte range.
* An X-OC-Mtime that cannot be kept is refused (400) before a PUT or MKCOL stores anything.
* A PUT or LOCK of a path ending in a slash (a collection's) is 409 unless a folder is there:
  WsgiDAV dropped the slash and made a file of that name.
* A LOCK of an unmapped URL that found the name taken meanwhile, and locked what is there,
  answers 200, not WsgiDAV's 201 (``FolderResource.create_empty_resource``).
* WsgiDAV compares the Destination's host with the Host header as text, so a port spelled in
  one and left to its default in the other (``host:443`` and ``host``) was another server
  (502). Default ports are dropped from both before it compares them.
* A 405 carries ``Allow`` (RFC 9110 15.5.6 says it MUST): what OPTIONS lists for the URL.
  WsgiDAV's had none.
* OPTIONS lists what the item at the URL accepts: WsgiDAV lists the same methods for every
  item of a writable provider, so ``/``, a package's zip or a version offered PUT, DELETE and
  LOCK, which each refuses (403). An item that accepts fewer says which
  (``accepted_methods()``).
* A list of the If header tagged with a resource's absolute URL (``<http://host/a%20b>``), or
  with its path escaped otherwise, applies to that resource (RFC 4918 10.4). WsgiDAV compared
  the tag with the resource's path as written, found no match and skipped the condition.
* An entity-tag condition of the If header on a resource without an ETag (a folder) fails, as
  the resource has no such tag; WsgiDAV took it as met.
* PROPPATCH with a Depth header other than 0 was 400 ("Depth must be '0'"), but RFC 4918
  defines no Depth for PROPPATCH, and webdavclient3 sends ``Depth: 1`` with every
  ``set_property``. It is ignored: PROPPATCH changes the one resource it names.
* COPY of a folder with ``Depth: 1`` was 400: RFC 4918 defines only 0 and infinity for it,
  and webdavclient3 copies folders with 1 unless told otherwise. It copies the folder whole,
  as SabreDAV (Nextcloud) does, which is what that client means by it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from contextlib import suppress
from typing import Any
from urllib.parse import ParseResult, unquote, urlsplit

from wsgidav import request_server, util
from wsgidav.dav_error import (
    HTTP_BAD_REQUEST,
    HTTP_CONFLICT,
    HTTP_CREATED,
    HTTP_MEDIATYPE_NOT_SUPPORTED,
    HTTP_METHOD_NOT_ALLOWED,
    HTTP_NO_CONTENT,
    DAVError,
)
from wsgidav.mw.base_mw import BaseMiddleware
from wsgidav.request_server import RequestServer

from davserver.errors import BadRequest
from davserver.services.bounds import from_epoch
from davserver.services.tree import name_key
from providers import conditions, propfind
from providers.resources import CREATED_KEY, FOUND_KEY, MTIME_KEY

_STATUS_KEY = "davserver.status"
_CHECKED_KEY = "davserver.preconditions_checked"


class DavRequestServer(RequestServer):
    def _send_response(
        self,
        environ: dict[str, Any],
        start_response: Any,
        root_res: Any,
        success_code: int,
        error_list: list[Any],
    ) -> Iterable[bytes]:
        override = environ.pop(_STATUS_KEY, None)
        if override is not None and not error_list:
            success_code = override
        return super()._send_response(environ, start_response, root_res, success_code, error_list)

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        try:
            conditions.check_if_header(environ)
            yield from super().__call__(environ, start_response)
        except DAVError as error:
            if error.value == HTTP_METHOD_NOT_ALLOWED:
                allow = self._allowed_methods(environ)
                if allow is not None:
                    error.add_headers = [*(error.add_headers or []), ("Allow", allow)]
            raise

    def _allowed_methods(self, environ: dict[str, Any]) -> str | None:
        """The Allow header OPTIONS answers for the request's URL, for a 405 to carry; None
        when OPTIONS itself fails there."""
        held = util.SubAppStartResponse()
        try:
            self.do_OPTIONS(dict(environ, REQUEST_METHOD="OPTIONS"), held)
        except DAVError:
            return None
        return next((v for k, v in held.response_headers if k == "Allow"), None)

    def _evaluate_if_headers(self, res: Any, environ: dict[str, Any]) -> None:
        """If-Match and friends on the resource the request names (the first one WsgiDAV
        checks) as RFC 9110 says (``providers.conditions``); the If header as WsgiDAV does."""
        if not environ.get(_CHECKED_KEY):
            environ[_CHECKED_KEY] = True
            conditions.check(res, environ)
        if res is not None:
            _retag_if_lists(environ, res.get_ref_url())
            if not res.support_etag():
                res = _Untagged(res)
        with conditions.hidden(environ):
            super()._evaluate_if_headers(res, environ)

    def do_OPTIONS(self, environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        path = environ["PATH_INFO"]
        res = None if path == "*" else self._davProvider.get_resource_inst(path, environ)
        accepted = getattr(res, "accepted_methods", None)
        if accepted is None:
            return super().do_OPTIONS(environ, start_response)
        methods = accepted()

        def answer(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
            headers = [
                (name, ", ".join(m for m in value.split(", ") if m in methods))
                if name == "Allow"
                else (name, value)
                for name, value in headers
            ]
            return start_response(status, headers, exc_info)

        return super().do_OPTIONS(environ, answer)

    def do_GET(self, environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        _drop_unusable_range(environ)
        self._drop_range_of_weak_date(environ)
        return super().do_GET(environ, _no_future_last_modified(start_response))

    def do_HEAD(self, environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        _drop_unusable_range(environ)
        self._drop_range_of_weak_date(environ)
        return super().do_HEAD(environ, _no_future_last_modified(start_response))

    def _drop_range_of_weak_date(self, environ: dict[str, Any]) -> None:
        """Serve the whole entity when an If-Range date is not a strong validator (see
        ``conditions.served_range``): WsgiDAV resumed whenever the date equalled
        Last-Modified, which for a file is the client's time and can outlive its bytes, and
        which a change in the same second leaves as it was (a package's zip too)."""
        if "HTTP_RANGE" not in environ or "HTTP_IF_RANGE" not in environ:
            return
        if not conditions.parse_http_date(environ["HTTP_IF_RANGE"]):
            return  # an entity tag, which WsgiDAV compares
        res = self._davProvider.get_resource_inst(environ["PATH_INFO"], environ)
        if res is None:
            return
        modified = res.get_last_modified()
        changed = getattr(res, "get_last_changed", None)
        served = conditions.served_range(
            environ, res.get_etag(), modified, changed() if changed is not None else modified
        )
        if served is None:
            del environ["HTTP_RANGE"]
        else:  # decided: WsgiDAV would compare the date with Last-Modified again
            del environ["HTTP_IF_RANGE"]

    def do_PROPFIND(self, environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        res = self._davProvider.get_resource_inst(environ["PATH_INFO"], environ)
        if res is None or not propfind.can_handle(environ, res):
            return super().do_PROPFIND(environ, start_response)  # its 404 or 400
        self._evaluate_if_headers(res, environ)
        return propfind.respond(res, environ, start_response)

    def do_PUT(self, environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        check_mtime_header(environ)
        self._refuse_file_for_folder_path(environ)
        _check_content_coding(environ)
        held: list[tuple[str, list[tuple[str, str]]]] = []

        def hold(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> None:
            held.append((status, headers))

        body = super().do_PUT(environ, _accepting_mtime(environ, hold))
        (status, headers), created = held[0], environ.get(CREATED_KEY)
        if created is None or status[:3] != ("204" if created else "201"):
            start_response(status, headers)
            return body
        # WsgiDAV chose by whether the file was there when the request began; another PUT
        # made it (or removed it) meanwhile: 201 for the one that created it, 204 for the rest.
        kept = [(k, v) for k, v in headers if k.lower() in ("etag", "x-oc-mtime")]
        answer = HTTP_CREATED if created else HTTP_NO_CONTENT
        return util.send_status_response(environ, start_response, answer, add_headers=kept)

    def _refuse_file_for_folder_path(self, environ: dict[str, Any]) -> None:
        """409 for a PUT or LOCK whose path ends in a slash, unless a folder is there (whose
        PUT stays WsgiDAV's 405): the slash names a collection, which neither makes, and
        WsgiDAV dropped it and made (or overwrote) a file of that name."""
        path = environ["PATH_INFO"]
        if not path.endswith("/"):
            return
        res = self._davProvider.get_resource_inst(path, environ)
        if res is None or not res.is_collection:
            raise DAVError(
                HTTP_CONFLICT,
                context_info="a path ending in / names a folder: make one with MKCOL",
            )

    def do_COPY(self, environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        _drop_default_ports(environ)
        if environ.get("HTTP_DEPTH", "").strip() == "1":
            environ["HTTP_DEPTH"] = "infinity"  # webdavclient3's folder copy (see above)
        return super().do_COPY(environ, start_response)

    def do_MOVE(self, environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        _drop_default_ports(environ)
        return super().do_MOVE(environ, start_response)

    def do_LOCK(self, environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        def answer(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
            if status.startswith("201") and environ.pop(FOUND_KEY, False):
                status = "200 OK"  # nothing was created: the file was there when locked
            return start_response(status, headers, exc_info)

        self._refuse_file_for_folder_path(environ)
        return super().do_LOCK(environ, answer)

    def do_PROPPATCH(self, environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        environ.pop("HTTP_DEPTH", None)  # none is defined for PROPPATCH: WsgiDAV's 400 for 1
        return super().do_PROPPATCH(environ, start_response)

    def do_MKCOL(self, environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        check_mtime_header(environ)
        # WsgiDAV checks no precondition for MKCOL: "If-Match: *" must stop it.
        if conditions.has_preconditions(environ):
            path = environ["PATH_INFO"]
            self._evaluate_if_headers(self._davProvider.get_resource_inst(path, environ), environ)
        body = super().do_MKCOL(environ, _accepting_mtime(environ, start_response))
        if environ.get(MTIME_KEY, 0) < 0 and "HTTP_X_OC_MTIME" not in environ:
            # Before 1970: hidden from WsgiDAV (check_mtime_header), set here.
            made = self._davProvider.get_resource_inst(environ["PATH_INFO"], environ)
            if made is not None:
                made.set_last_modified(made.path, environ[MTIME_KEY], dry_run=False)
        return body


def _no_future_last_modified(start_response: Any) -> Any:
    """``start_response`` sending Last-Modified no later than Date (``conditions.
    sent_last_modified``), whatever resource answers: a file, a version, a trashed file."""

    def answer(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
        conditions.sent_last_modified(headers)
        return start_response(status, headers, exc_info)

    return answer


# One byte range: "bytes=START-", "bytes=START-END" or "bytes=-SUFFIX" (a non-zero suffix),
# with no whitespace inside it (RFC 9110 14.1.2), where WsgiDAV's own pattern read "1 -2" as
# the last 2 bytes.
_SINGLE_RANGE = re.compile(r"\s*bytes\s*=\s*(?:(\d+)-(\d*)|-(0*[1-9]\d*))\s*", re.I)


class _Untagged:
    """A resource without an ETag as the If header's evaluation sees it: one whose tag is
    none of those a condition names. WsgiDAV took every entity-tag condition on a resource
    that does not support ETags as met."""

    def __init__(self, res: Any) -> None:
        self._res = res

    def __getattr__(self, name: str) -> Any:
        return getattr(self._res, name)

    def support_etag(self) -> bool:
        return True


def _retag_if_lists(environ: dict[str, Any], ref_url: str) -> None:
    """File the If header's lists tagged with any spelling of ``ref_url`` (absolute, or with
    other escapes or without a folder's slash) under ``ref_url``, the key WsgiDAV looks up,
    so that their conditions are evaluated rather than skipped."""
    if "wsgidav.conditions.if" not in environ:
        util.parse_if_header_dict(environ)
    tagged = environ["wsgidav.conditions.if"]
    if not tagged:
        return
    own = _tagged_path(ref_url)
    for tag in [t for t in tagged if t not in ("*", ref_url)]:
        if _tagged_path(tag) == own:
            tagged.setdefault(ref_url, []).extend(tagged.pop(tag))


def _tagged_path(url: str) -> str:
    """The path a tag names, unescaped, its names in the form they are looked up by (NFC: a
    decomposed name is the same file). A tag sent as raw UTF-8 (which WSGI gives as latin-1)
    is read as its letters, as its escaped form is."""
    with suppress(UnicodeError):
        url = url.encode("latin-1").decode("utf-8")
    return name_key(unquote(urlsplit(url).path)).rstrip("/") or "/"


def _drop_unusable_range(environ: dict[str, Any]) -> None:
    """Serve the whole file (200) for a Range header that is not one valid byte range.

    RFC 9110 lets a server ignore Range, and says to ignore one it cannot parse. WsgiDAV
    answered ``bytes=5-2`` with bytes from the end of the file, ``foo=1-2`` as bytes, ``bytes=abc``
    with 416, and of ``bytes=0-4,10-14`` sent only the last range under a 206; ``bytes=1 -2``
    (whitespace inside a range) with the last 2 bytes.
    """
    header = environ.get("HTTP_RANGE")
    if header is None:
        return
    match = _SINGLE_RANGE.fullmatch(header)
    if match is None or (match[2] and int(match[2]) < int(match[1])):
        del environ["HTTP_RANGE"]
    else:  # spelt as WsgiDAV reads it right
        first, last, suffix = match.groups()
        environ["HTTP_RANGE"] = f"bytes=-{suffix}" if suffix else f"bytes={first}-{last}"


def _check_content_coding(environ: dict[str, Any]) -> None:
    """A PUT's body is stored as it comes, so it may have no content coding: 415 naming the
    one accepted (RFC 9110 12.5.3). WsgiDAV answered 501, also to ``identity`` (no coding)."""
    coding = environ.get("HTTP_CONTENT_ENCODING")
    if coding is None:
        return
    if all(part.strip().lower() in ("", "identity") for part in coding.split(",")):
        del environ["HTTP_CONTENT_ENCODING"]
        return
    raise DAVError(
        HTTP_MEDIATYPE_NOT_SUPPORTED,
        context_info=f"Content-Encoding {coding} is not accepted: send the bytes as they are",
        add_headers=[("Accept-Encoding", "identity")],
    )


def check_mtime_header(environ: dict[str, Any]) -> None:
    """Refuse an X-OC-Mtime that cannot be kept with 400, before anything is stored; keep
    the seconds it gives under ``MTIME_KEY``.

    WsgiDAV applies the header only after the upload has committed, and lets through what
    ``str.isdigit`` accepts (``"²"``, which ``int`` refuses) and any number of digits (year
    10000 and beyond); clients send whole seconds since 1970 (rclone, Nextcloud's, which
    answer 400 themselves for a value they cannot use). A time before 1970 is negative:
    WsgiDAV refused it (400), which rclone answered by deleting the file it could not update
    (a PROPPATCH of the same time was taken). Such a value is taken from WsgiDAV's sight: an
    upload keeps the time itself (``MTIME_KEY``), and ``do_MKCOL`` sets a new folder's."""
    text = environ.get("HTTP_X_OC_MTIME")
    if text is None:
        return
    if not (text.isascii() and text.removeprefix("-").isdigit()):
        raise DAVError(HTTP_BAD_REQUEST, context_info="X-OC-Mtime is whole seconds since 1970")
    seconds = int(text)
    try:
        from_epoch(seconds)
    except BadRequest as exc:
        raise DAVError(HTTP_BAD_REQUEST, context_info=f"X-OC-Mtime: {exc}") from None
    environ[MTIME_KEY] = seconds
    if seconds < 0:
        del environ["HTTP_X_OC_MTIME"]
    else:
        environ["HTTP_X_OC_MTIME"] = str(seconds)  # "-0" is 0 too, which WsgiDAV reads


def _accepting_mtime(environ: dict[str, Any], start_response: Any) -> Any:
    """Tell ownCloud-dialect clients (rclone) their X-OC-Mtime was kept, so they skip the
    PROPPATCH they would otherwise send to set it."""
    if MTIME_KEY not in environ:
        return start_response

    def wrapped(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
        if status.startswith("2"):
            headers = [*headers, ("X-OC-MTime", "accepted")]
        return start_response(status, headers, exc_info)

    return wrapped


_URL = re.compile(
    r"^(?:(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*):)?(?://(?P<netloc>[^/]*))?(?P<path>.*)$", re.S
)


def _split_destination(url: str, scheme: str = "", allow_fragments: bool = True) -> ParseResult:
    """``urlparse`` for an already un-escaped Destination: everything after the host is path,
    and the host loses its scheme's default port (``_drop_default_ports``)."""
    match = _URL.match(url)
    assert match is not None  # the pattern matches any string
    scheme = match["scheme"] or scheme
    netloc = _without_default_port(match["netloc"] or "", scheme)
    return ParseResult(scheme, netloc, match["path"], "", "", "")


_DEFAULT_PORTS = {"http": "80", "https": "443"}


def _without_default_port(netloc: str, scheme: str) -> str:
    """``host:port`` without the port when it is the scheme's default (``[::1]:80`` too)."""
    host, colon, port = netloc.rpartition(":")
    if colon and port == _DEFAULT_PORTS.get(scheme.lower()):
        return host
    return netloc


def _drop_default_ports(environ: dict[str, Any]) -> None:
    """The Host and X-Forwarded-Host a COPY or MOVE's Destination is compared with, without
    their scheme's default port, as the Destination's host is (``_split_destination``).

    A request without a Host header (HTTP/1.0 needs none) names no host to compare with:
    its Destination's host is taken as this server's, as a Destination of a path alone is.
    WsgiDAV read the missing header and failed with a 500."""
    scheme = environ.get("wsgi.url_scheme", "http")
    if "HTTP_HOST" not in environ:
        header = unquote_destination(environ.get("HTTP_DESTINATION", ""))
        environ["HTTP_HOST"] = _split_destination(header, scheme).netloc
    environ["HTTP_HOST"] = _without_default_port(environ["HTTP_HOST"], scheme)
    if "HTTP_X_FORWARDED_HOST" in environ:
        forwarded = environ.get("HTTP_X_FORWARDED_PROTO") or scheme
        host = environ["HTTP_X_FORWARDED_HOST"]
        environ["HTTP_X_FORWARDED_HOST"] = _without_default_port(host, forwarded)


_QUOTED_SLASH = re.compile("%2F", re.I)


def unquote_destination(url: str) -> str:
    """A Destination header's URL read as cheroot reads a request's: without its query and
    fragment (a ``?`` or ``#`` left unescaped ends the path), then un-escaped, but an escaped
    slash (``%2F``) stays as it is, since it is part of a name, not a separator (RFC 3986,
    2.2).

    WsgiDAV un-escaped the Destination whole, so ``MOVE`` to ``q%2Fr.txt`` went to the
    folder ``q`` (or 409), while ``PUT q%2Fr.txt`` made a file named ``q%2Fr.txt``; and a
    COPY to ``c.txt?x=1`` made a file named ``c.txt?x=1``, where a PUT makes ``c.txt``."""
    url = url.partition("#")[0].partition("?")[0]
    return "%2F".join(unquote(part) for part in _QUOTED_SLASH.split(url))


def destination_path(environ: dict[str, Any]) -> str | None:
    """The path a COPY or MOVE names in its Destination header, as WsgiDAV will read it:
    with ``.`` and ``..`` resolved (``util.normalize_path``, a 400 for one climbing above
    the root), since that is where WsgiDAV copies or moves to. Unresolved, the rights of
    ``/files/../shared/alice/docs/x`` were looked up on a path that names nothing, and a
    reader of alice's folder could write into it."""
    header = environ.get("HTTP_DESTINATION")
    if not header:
        return None
    path = _split_destination(unquote_destination(header)).path
    return util.normalize_path(path) if path else None


# WsgiDAV 4.4.0 (pinned) calls these module-level names only in _copy_or_move, on the
# Destination header; nothing else in request_server uses them.
request_server.urlparse = _split_destination
request_server.unquote = unquote_destination


class DavRequestResolver(BaseMiddleware):
    """Answers ``OPTIONS *`` and runs every other request through DavRequestServer."""

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        provider = environ["wsgidav.provider"]
        if environ["REQUEST_METHOD"] == "OPTIONS" and environ["PATH_INFO"] == "*":
            start_response(
                "200 OK",
                [
                    ("Content-Length", "0"),
                    ("DAV", "1,2"),
                    ("MS-Author-Via", "DAV"),
                    ("Date", util.get_rfc1123_time()),
                ],
            )
            return [b""]
        if provider is None:
            start_response("404 Not Found", [("Content-Length", "0")])
            return [b""]
        return DavRequestServer(provider)(environ, start_response)
