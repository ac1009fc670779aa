"""The outermost WebDAV middleware: a DAVError (or a domain error that no handler translated)
becomes its status page, a bug a logged 500.

It replaces WsgiDAV's ErrorPrinter, which logs an unexpected exception to the ``wsgidav``
logger (silent unless WsgiDAV's own logging is set up, and twice when it is) and shows the
client the exception's text in the 500 page. Here every unexpected exception, and every
DAVError 500 that carries one (WsgiDAV wraps some, such as a failed PUT body copy), is logged
once at ERROR with its traceback to ``providers.error_printer``, and the client gets a 500
that names nothing of it.
"""

from __future__ import annotations

import errno
import functools
import html
import logging
import re
from collections.abc import Callable, Iterable, Iterator
from typing import Any, NoReturn, TypeVar
from xml.sax.saxutils import escape as xml_escape

from wsgidav import util
from wsgidav.dav_error import (
    HTTP_INTERNAL_ERROR,
    HTTP_NO_CONTENT,
    HTTP_NOT_MODIFIED,
    DAVError,
    DAVErrorCondition,
    get_http_status_string,
)
from wsgidav.mw.base_mw import BaseMiddleware

from davserver.errors import DomainError
from providers.errors import to_dav_error

log = logging.getLogger(__name__)
T = TypeVar("T")


class _NotTwice(logging.Filter):
    """Drops WsgiDAV's own "PUT: byte copy failed" record, which it writes with a traceback
    for any error while a PUT's body is taken in. Those are the answers given on purpose (a
    quota, a full or read-only blob store: 507, 503), which are no fault to log, and 500s,
    which ``ErrorPrinter`` logs once, here."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.msg != "PUT: byte copy failed"


logging.getLogger("wsgidav.request_server").addFilter(_NotTwice())


class ErrorPrinter(BaseMiddleware):
    def __call__(self, environ: dict[str, Any], start_response: Any) -> Iterator[bytes]:
        held = util.SubAppStartResponse()
        started = False
        # RFC 9110 9.3.2: no body after a HEAD's answer, an error's page included (a client
        # reads one as the next answer on the connection).
        head = environ.get("REQUEST_METHOD") == "HEAD"
        try:
            app_iter = self.next_app(environ, held)
            try:
                for chunk in app_iter:
                    if not started:
                        headers, chunk = _page_for_client(held, chunk, environ)
                        start_response(held.status, headers, held.exc_info)
                        started = True
                    yield b"" if head else chunk
            finally:
                close = getattr(app_iter, "close", None)
                if close is not None:
                    close()
            if not started:
                start_response(held.status, held.response_headers, held.exc_info)
            return
        except DAVError as exc:
            if started:
                _cut_off(exc, environ)
            error = exc
        except DomainError as exc:  # from a path that had no dav_errors(), such as a LOCK's
            if started:
                _cut_off(exc, environ)
            error = to_dav_error(exc)
        except Exception as exc:
            if started:
                raise  # the answer is under way: cheroot logs it and drops the connection
            error = DAVError(HTTP_INTERNAL_ERROR, src_exception=exc)
        yield from _error_response(_logged(error, environ), start_response, environ)


def _cut_off(error: Exception, environ: dict[str, Any]) -> NoReturn:
    """A known failure (the blob store not answering) after the answer began: all that can
    be done is to drop the connection, so the client sees the body end early. One line in
    the log; cheroot drops a connection whose socket was reset without logging anything
    (a traceback of 40 lines for any other exception)."""
    log.warning(
        "%s %s: answer cut off: %s",
        environ.get("REQUEST_METHOD"),
        environ.get("PATH_INFO"),
        error,
    )
    raise ConnectionAbortedError(errno.ECONNABORTED, "answer cut off") from None


def logs_unexpected(method: Callable[..., T]) -> Callable[..., T]:
    """For a resource method whose exceptions WsgiDAV turns into a status itself, without
    logging them (``set_property_value``: a PROPPATCH answers 207 with a 500 propstat; the
    ``handle_*`` methods of a COPY, MOVE or DELETE: its status page): log an unexpected
    exception once and raise a 500 that names nothing of it. The error is kept in the
    request's environ, so that a status page WsgiDAV makes of it is answered as this
    middleware answers the error itself (``_page_for_client``), with its message and its
    precondition."""

    @functools.wraps(method)
    def wrapper(self: Any, *args: Any, **kwargs: Any) -> T:
        try:
            return method(self, *args, **kwargs)
        except DAVError as exc:
            self.environ[_RAISED] = exc
            raise
        except DomainError as exc:
            error = self.environ[_RAISED] = to_dav_error(exc)
            raise error from exc
        except Exception as exc:
            log_unexpected(exc, self.environ)
            error = self.environ[_RAISED] = DAVError(HTTP_INTERNAL_ERROR)
            raise error from None

    return wrapper


_RAISED = "davserver.raised_error"


def log_unexpected(error: BaseException, environ: dict[str, Any]) -> None:
    """Log an exception no code meant to raise, once, at ERROR with its traceback."""
    log.error(
        "%s %s failed",
        environ.get("REQUEST_METHOD"),
        environ.get("PATH_INFO"),
        exc_info=(type(error), error, error.__traceback__),
    )


def _logged(error: DAVError, environ: dict[str, Any]) -> DAVError:
    """A 500 wrapping an exception is logged, and answered without its text; one wrapping a
    domain error (WsgiDAV wraps what a PUT's body copy raises) gets that error's status."""
    if error.value != HTTP_INTERNAL_ERROR or not isinstance(error.src_exception, Exception):
        return error
    if isinstance(error.src_exception, DomainError):
        return to_dav_error(error.src_exception)
    log_unexpected(error.src_exception, environ)
    return DAVError(HTTP_INTERNAL_ERROR)


def _error_response(
    error: DAVError, start_response: Any, environ: dict[str, Any]
) -> Iterable[bytes]:
    status = get_http_status_string(error)
    date = ("Date", util.get_rfc1123_time())
    if error.value in (HTTP_NOT_MODIFIED, HTTP_NO_CONTENT):
        # Its Content-Length: 0 keeps WsgiDAV from closing the connection; davserver.app
        # takes it out.
        start_response(status, [("Content-Length", "0"), date, *(error.add_headers or [])])
        return [b""]
    content_type, body = _error_body(error, environ)
    headers = [("Content-Type", content_type), ("Content-Length", str(len(body))), date]
    start_response(status, headers + (error.add_headers or []))
    head = environ.get("REQUEST_METHOD") == "HEAD"
    return [body if error.add_body and not head else b""]


def _error_body(error: DAVError, environ: dict[str, Any]) -> tuple[str, bytes]:
    """The content type and body telling ``error``: WsgiDAV's page for a browser, else the
    XML of ``_sabre_error``."""
    if error.err_condition is None and _wants_html(environ):
        content_type, body = error.get_response_page()
        return content_type, body
    return _sabre_error(error)


def _wants_html(environ: dict[str, Any]) -> bool:
    return "text/html" in environ.get("HTTP_ACCEPT", "")


_WSGIDAV_PAGE = b"<!DOCTYPE HTML PUBLIC"
_PAGE_TEXT = re.compile(rb"<p>(.*?)</p>", re.DOTALL)


def _page_for_client(
    held: Any, chunk: bytes, environ: dict[str, Any]
) -> tuple[list[tuple[str, str]], bytes]:
    """The headers and first chunk to answer with. WsgiDAV answers the one failure of a
    COPY, MOVE or DELETE with its status page itself (``send_status_response``), not through
    here as a DAVError: the error our resource raised (``logs_unexpected`` kept it) is told
    as ``_error_response`` tells it, with its message and precondition; else, for a client
    other than a browser, WsgiDAV's HTML page is turned into the XML of ``_sabre_error``,
    with the same reason. Its page for a success is dropped."""
    headers: list[tuple[str, str]] = held.response_headers
    status = str(held.status)
    kept = [(k, v) for k, v in headers if k.lower() not in ("content-type", "content-length")]
    if status[:1] == "2" and chunk.startswith(_WSGIDAV_PAGE):
        # A success (201 Created) needs no page, and WsgiDAV's names its version and the
        # server's local time.
        return [*kept, ("Content-Length", "0")], b""
    raised = environ.get(_RAISED)
    if status[:1] in ("4", "5") and raised is not None and status[:3] == str(raised.value):
        content_type, body = _error_body(raised, environ)
        return [("Content-Type", content_type), ("Content-Length", str(len(body))), *kept], body
    if status[:1] not in ("4", "5") or _wants_html(environ):
        return headers, chunk
    content_type = next((v for k, v in headers if k.lower() == "content-type"), "")
    found = _PAGE_TEXT.search(chunk) if chunk.startswith(_WSGIDAV_PAGE) else None
    if not content_type.startswith("text/html") or found is None:
        return headers, chunk
    text = html.unescape(found.group(1).decode("utf-8", "replace"))
    reason = text.removeprefix(status + ":").strip() or status
    content_type, body = _sabre_body(reason)
    return [("Content-Type", content_type), ("Content-Length", str(len(body))), *kept], body


def _sabre_error(error: DAVError) -> tuple[str, bytes]:
    """The error body of Nextcloud and ownCloud (SabreDAV's), for clients other than
    browsers: rclone and the ownCloud/Nextcloud clients read its ``s:message`` and show
    ``you may not download this item: 403 Forbidden`` instead of a page of HTML. A pre- or
    postcondition the request failed (RFC 4918 16: ``lock-token-submitted``, RFC 4331's
    ``quota-not-exceeded``...) is its element in the same ``DAV:error``."""
    message = str(error.context_info or get_http_status_string(error))
    if error.src_exception is not None:  # as the HTML page tells it (a 500's is never here)
        message += f": {error.src_exception}"
    condition = error.err_condition
    return _sabre_body(message, "" if condition is None else _condition_xml(condition))


def _condition_xml(condition: DAVErrorCondition) -> str:
    namespace, _, name = str(condition.condition_code).lstrip("{").partition("}")
    hrefs = "".join(f"<d:href>{xml_escape(href)}</d:href>" for href in condition.hrefs)
    if namespace == "DAV:":
        return f"<d:{name}>{hrefs}</d:{name}>"
    return f'<c:{name} xmlns:c="{xml_escape(namespace)}">{hrefs}</c:{name}>'


def _sabre_body(message: str, condition: str = "") -> tuple[str, bytes]:
    body = (
        '<?xml version="1.0" encoding="utf-8"?>\n'
        '<d:error xmlns:d="DAV:" xmlns:s="http://sabredav.org/ns">'
        f"{condition}<s:message>{xml_escape(message)}</s:message></d:error>"
    )
    return "application/xml; charset=utf-8", body.encode()
