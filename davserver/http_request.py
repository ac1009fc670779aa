"""cheroot's HTTP request, with two fixes for request bodies answered before they are read.

A request is often answered before its body is read: 401 (no or wrong credentials), 403, 405,
409 (no parent folder), 412 and 507 (over quota) all come from the headers alone.

* **Expect: 100-continue.** cheroot sends "100 Continue" as soon as it has read the headers,
  before the application runs, so a client (curl for bodies over 1 MiB, Windows' WebDAV
  redirector) starts sending a body the server is about to refuse. Here the 100 Continue is sent
  when the application first reads the body; an answer given before that closes the
  connection, and the client never sends the body.
* **Draining.** After such an answer cheroot reads the rest of the body in *one*
  ``read(remaining)`` to keep the connection, so a client announcing 50 GiB made the server
  allocate 50 GiB. Past ``_DRAIN_LIMIT`` the connection is closed instead.

And five for requests that are broken or ambiguous:

* **A malformed chunked body** (a chunk size that is not hex, a chunk not ended by CRLF) made
  cheroot's reader raise ValueError, answered 500 and logged as a server bug. It is the
  client's fault: BadRequest (400), and the connection is closed, its framing being lost.
  So is a body cut off by the network (a reset, or the idle timeout while the body is due):
  UploadIncomplete. cheroot's chunked reader is replaced (``_ChunkedBody``): it took a body
  cut off in its last chunk for a whole one, left the trailers to be read as the next request,
  and held each chunk whole in memory.
* **Content-Length with Transfer-Encoding: chunked.** The chunked framing wins (RFC 9112,
  6.1), and the connection is closed after the answer: a proxy in front that framed the
  request by its Content-Length would otherwise read the rest as a second request (request
  smuggling).
* **Headers** are capped at ``MAX_HEADER_BYTES`` in all (cheroot's default is no cap, so a
  client could make a thread buffer gigabytes): 413.
* **Header lines a proxy could read otherwise** (whitespace before a colon, a folded line,
  a bare CR, two different Content-Lengths, a Content-Length that is not digits, two Hosts or
  none, two Authorizations, Destinations or other fields that are no list) are refused, 400
  (``_StrictLines``), and so is a Transfer-Encoding in an HTTP/1.0 request (cheroot framed it
  by its Content-Length). A field named with underscores is dropped, as nginx drops it: WSGI
  gives ``X_Forwarded_For`` the key of ``X-Forwarded-For``, and the last one won.
* **Connection** options are read as a list, in any case (cheroot compared the whole value:
  ``Close`` kept the connection, an HTTP/1.0 ``keep-alive`` closed it).

And two for the request line:

* **Absolute form** (``GET http://host/path HTTP/1.1``), which RFC 9112 (3.2.2) says a server
  MUST accept and some proxies send, was 400 ("Absolute URI not allowed if server is not a
  proxy"). It is served as the path it names, with the Host header replaced by the target's
  host (which the RFC says wins), so that a Destination naming it is this server. CONNECT
  stays 405, and the scheme stays the connection's.
* **OPTIONS** had its path left escaped (cheroot un-escapes every other method's), so
  ``OPTIONS /files/a%20b.txt`` answered for an unmapped URL.

And two for connections that say nothing, or say it slowly:

* **A new connection** was handed to a worker thread at once, to wait there up to
  ``request_timeout`` for its first bytes (with TLS the accepting thread itself made the
  handshake, so one silent client stopped every other from being accepted). A few silent
  connections (a browser's speculative preconnects, a TCP health check) held every thread.
  Here it waits in cheroot's selector, as an idle kept-alive connection does, until its first
  bytes arrive (and makes its TLS handshake there: see below). Past
  ``keep_alive_connections`` waiting ones, the longest idle is closed.
* **A request line and headers sent a byte at a time** (slowloris) held a thread for as long
  as the client kept trickling: the socket's timeout bounds each wait, not the whole. They,
  and the TLS handshake, now have ``header_timeout`` seconds in all (``Deadlines``); then the
  connection's reading side is shut down and cheroot closes it. Even so, as many tricklers as
  threads held them all, renewing themselves every ``header_timeout``. The line and headers
  now gather in the selector thread (``Connection.gather_head``), and a worker takes the
  request once they are all in; one still incomplete after ``header_timeout`` is closed there.
  Over TLS the handshake is made there too, without waiting for the client (one trickled a
  byte at a time held a worker the same way), and the headers are read through TLS as they
  arrive.
* **Plain HTTP on the TLS port** (an http:// URL for an https:// server) got cheroot's 400
  saying so while cheroot made the handshake; once the worker made it, the connection was
  only reset. It is answered 400 in the clear again, naming https.
"""

from __future__ import annotations

import enum
import functools
import re
import socket
import ssl
import threading
import time
import urllib.parse
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from typing import Any

from cheroot import connections as cheroot_connections
from cheroot import errors as cheroot_errors
from cheroot import server as cheroot_server
from cheroot import wsgi
from cheroot.makefile import MakeFile

from davserver.errors import BadRequest, UploadIncomplete

# The request line and headers together; Windows' redirector with a dozen lock tokens in an
# If header stays far below this.
MAX_HEADER_BYTES = 256 * 1024

# What one look at a connection whose request line and headers are still arriving reads.
_GATHER_BYTES = 64 * 1024


def _head_complete(head: bytes, seen: int) -> bool:
    """Whether ``head`` holds the blank line that ends a request's headers, or a line ended by
    a bare LF, which cheroot answers 400 at once (searched from near ``seen``, what an earlier
    look had, so a trickle is not searched again and again)."""
    if head.find(b"\r\n\r\n", max(0, seen - 3)) >= 0:
        return True
    end = head.find(b"\n", max(0, seen))
    while end >= 0:
        if end == 0 or head[end - 1] != _CR:
            return True
        end = head.find(b"\n", end + 1)
    return False


_CR = ord("\r")

# A body announced by a Content-Length of at most this gathers in the selector with the
# headers (``Connection._whole``); a bigger one, a chunked one, or one the client holds back
# for a 100 Continue is read by the worker.
_GATHER_BODY = 64 * 1024
_LENGTH_FIELD = re.compile(rb"^content-length:[ \t]*([0-9]+)[ \t]*\r?$", re.I | re.M)
_HELD_BODY = re.compile(rb"^(?:transfer-encoding|expect)[ \t]*:", re.I | re.M)


def _gathered_size(head: bytes) -> int:
    """The bytes of ``head`` (whose headers are complete) that make the request's line, its
    headers and its body, if it has none or a small one (``_GATHER_BODY``); 0 when its body is
    left to the worker."""
    end = head.find(b"\r\n\r\n")
    headers = head[:end]
    if end < 0 or headers.count(b"\n") != headers.count(b"\r\n"):
        return 0  # a line ended by a bare LF: refused by the worker, whatever follows
    if _HELD_BODY.search(headers) is not None:
        return 0
    found = _LENGTH_FIELD.search(headers)
    digits = found[1] if found is not None else b"0"
    length = int(digits) if len(digits) <= 7 else _GATHER_BODY + 1
    return end + 4 + length if length <= _GATHER_BODY else 0


# An unread request body up to this size is read and dropped after an early answer, so the
# connection can be kept; a bigger one closes the connection instead. So does one that has
# not arrived within _DRAIN_SECONDS: the drain holds a thread, and the answer waits for it.
_DRAIN_LIMIT = 1024 * 1024
_DRAIN_SECONDS = 2.0
# What an "Expect: 100-continue" header is renamed to, so that cheroot does not answer it.
_DEFERRED = b"100-continue (deferred)"
_QUOTED_SLASH = re.compile(rb"%2F", re.IGNORECASE)
_LATE_BODY_MESSAGE = b"The request body did not arrive in time.\n"
_LATE_BODY_ANSWER = (
    b"HTTP/1.1 408 Request Timeout\r\nContent-Type: text/plain; charset=utf-8\r\n"
    b"Content-Length: %d\r\nConnection: close\r\n\r\n%s"
    % (len(_LATE_BODY_MESSAGE), _LATE_BODY_MESSAGE)
)
_PLAIN_HTTP_MESSAGE = b"This server speaks HTTPS on this port: use an https:// URL.\n"
_PLAIN_HTTP_ANSWER = (
    b"HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain; charset=utf-8\r\n"
    b"Content-Length: %d\r\nConnection: close\r\n\r\n%s"
    % (len(_PLAIN_HTTP_MESSAGE), _PLAIN_HTTP_MESSAGE)
)


# RFC 9110 5.6.2: a field name is a token.
_TOKEN = re.compile(rb"[!#$%&'*+.^_`|~0-9A-Za-z-]+")


# Fields a request gives once: none is a list (RFC 9110 5.3), and where a proxy in front acts
# on the first of two (who signed in, where a MOVE goes, which lock is held) and the server on
# the last, they answer different requests.
_ONCE = frozenset(
    (b"host", b"authorization", b"destination", b"overwrite", b"depth", b"lock-token", b"if")
)


class _StrictLines:
    """The header lines of a request as cheroot's reader reads them, refusing (ValueError,
    which cheroot answers 400 and closes the connection) what RFC 9112 tells a server to
    refuse because a proxy in front could frame or route the request otherwise: a field name
    that is not a token, such as one with whitespace before its colon (5.1), a line folded
    onto the one before (obs-fold, 5.2), a bare CR (2.2), Content-Length given twice with
    different values (6.3), and Host (3.2) or another field that is no list given twice
    (``_ONCE``). cheroot took the last Content-Length, the last Host and the last of the others,
    read ``Content-Length :`` as one, and replaced a field with its folded continuation."""

    def __init__(self, rfile: Any) -> None:
        self._rfile = rfile
        self._length: bytes | None = None
        self._seen: set[bytes] = set()

    def readline(self, size: int = -1) -> bytes:
        while True:
            line: bytes = self._rfile.readline(size)
            if line[:1] in (b" ", b"\t"):
                raise ValueError("Folded header lines (obs-fold) are not accepted.")
            name, colon, value = line.partition(b":")
            if not colon or line == b"\r\n":
                return line  # the end of the headers, or cheroot's own error
            if not _TOKEN.fullmatch(name):
                raise ValueError("A header field name is not a token.")
            if b"\r" in line[:-2]:
                raise ValueError("A bare CR in a header field.")
            if b"_" not in name:
                break
            if not line.endswith(b"\r\n"):  # as cheroot refuses any other line
                raise ValueError("HTTP requires CRLF terminators")
            # X_Forwarded_For is X-Forwarded-For's WSGI key too, and the last one won: dropped,
            # as nginx drops such fields (underscores_in_headers off), and cheroot can.
        name = name.lower()
        if name == b"content-length":
            value = value.strip(b" \t\r\n")
            if not value.isdigit():  # ASCII digits only (cheroot's int() took "+3", "1_0")
                raise ValueError("Malformed Content-Length Header.")
            if self._length is not None and value != self._length:
                raise ValueError("Two different Content-Length headers.")
            self._length = value
        elif name in _ONCE:
            if name in self._seen:
                raise ValueError(f"Two {name.decode().title()} headers.")
            self._seen.add(name)
        return line


class _HeaderReader(cheroot_server.HeaderReader):
    def __call__(self, rfile: Any, hdict: dict[bytes, bytes] | None = None) -> Any:
        headers = super().__call__(_StrictLines(rfile), hdict)
        if headers.get(b"Expect", b"").strip().lower() == b"100-continue":
            headers[b"Expect"] = _DEFERRED
        return headers


# A chunk's size line, extensions and all, and a chunked body's trailer section: far more than
# any client sends (curl's and Go's size lines are a few bytes; trailers carry a checksum).
_MAX_CHUNK_LINE = 4096
_MAX_TRAILERS = 64 * 1024
# RFC 9112 7.1: chunk-size [chunk-ext] CRLF; 16 hex digits are 2**64 - 1 bytes at most.
_CHUNK_SIZE = re.compile(rb"([0-9A-Fa-f]{1,16})[ \t]*(?:;[^\r\n]*)?")
# The most of a chunk read at once: a chunk of any size streams, as a Content-Length body does.
_CHUNK_READ = 1024 * 1024


class _ChunkedBody:
    """A chunked request body (RFC 9112, 7.1), decoded as it is read.

    cheroot's reader took a size line cut off by the end of the stream (or a bare "0") for the
    last chunk, so an upload cut off there was stored as complete; it never read the trailer
    section, whose lines were then read as the next request on the connection; and it read
    each chunk whole into memory, any size a client announced (2**64 and over: a 500). Here the
    body ends only with the blank line after the last chunk's trailers; anything cut off before
    that raises ConnectionError (the body is incomplete), anything malformed ValueError; and a
    chunk is read a piece at a time. Trailer fields are read and dropped: nothing uses them.
    """

    def __init__(self, rfile: Any) -> None:
        self._rfile = rfile
        self._left = 0  # bytes of the current chunk not yet read
        self.done = False  # the last chunk and the trailer section are read

    def read(self, size: int | None = -1) -> bytes:
        """``size`` bytes, fewer only at the end of the body (all of it without ``size``)."""
        pieces = []
        wanted = -1 if size is None else size
        while wanted and (piece := self._piece(_CHUNK_READ if wanted < 0 else wanted)):
            pieces.append(piece)
            wanted -= len(piece) if wanted > 0 else 0
        return b"".join(pieces)

    def _piece(self, most: int) -> bytes:
        """Up to ``most`` bytes of one chunk; b"" at the end of the body."""
        while not self.done and not self._left:
            self._next_chunk()
        if self.done:
            return b""
        data: bytes = self._rfile.read(min(most, self._left, _CHUNK_READ))
        if not data:
            raise ConnectionError("the body was cut off inside a chunk")
        self._left -= len(data)
        if not self._left:
            end = self._rfile.read(2)
            if len(end) < 2:
                raise ConnectionError("the body was cut off after a chunk")
            if end != b"\r\n":
                raise ValueError("a chunk is longer than its size")
        return data

    def readline(self, size: int | None = -1) -> bytes:
        line = bytearray()
        while size is None or size < 0 or len(line) < size:
            byte = self.read(1)
            line += byte
            if byte in (b"", b"\n"):
                break
        return bytes(line)

    def readlines(self, sizehint: int = 0) -> list[bytes]:
        return list(iter(self.readline, b""))

    def __iter__(self) -> Iterator[bytes]:
        return iter(self.readline, b"")

    def _line(self, limit: int) -> bytes:
        """The next line without its CRLF, of at most ``limit`` bytes before it."""
        line: bytes = self._rfile.readline(limit + 2)
        if line.endswith(b"\r\n"):
            return line[:-2]
        if line.endswith(b"\n"):
            raise ValueError("a line of the chunked body is not ended by CRLF")
        if len(line) < limit + 2:  # the stream ended first
            raise ConnectionError("the body ended before its last chunk")
        raise ValueError("a line of the chunked body is too long")

    def _next_chunk(self) -> None:
        line = self._line(_MAX_CHUNK_LINE)
        found = _CHUNK_SIZE.fullmatch(line)
        if found is None:
            raise ValueError(f"bad chunk size {line[:40]!r}")
        self._left = int(found[1], 16)
        if not self._left:
            self._read_trailers()
            self.done = True

    def _read_trailers(self) -> None:
        total = 0
        while line := self._line(_MAX_TRAILERS):
            total += len(line) + 2
            name, colon, _value = line.partition(b":")
            if total > _MAX_TRAILERS:
                raise ValueError("the trailer section is too long")
            if not colon or not _TOKEN.fullmatch(name):
                raise ValueError(f"a trailer line is not a header field: {line[:40]!r}")


class _Body:
    """The request body as the application reads it. With ``deferred``, "100 Continue" is
    sent before the first read, unless the answer has started by then. A body that cannot be
    read to its end (malformed chunks, a broken connection) raises a domain error and closes
    the connection, instead of escaping as a server error."""

    def __init__(self, body: Any, request: Request, *, deferred: bool) -> None:
        self._body = body
        self._request = request
        self.deferred = deferred
        self.continued = False
        self.answered = False  # from here on cheroot reads (drains) it: its errors are its own

    def _continue(self) -> None:
        if self.continued:
            return
        self.continued = True
        request = self._request
        if self.deferred and not request.sent_headers:
            protocol = request.server.protocol.encode("ascii")
            request.conn.wfile.write(protocol + b" 100 Continue\r\n\r\n")

    @contextmanager
    def _reading(self) -> Iterator[None]:
        self._continue()
        try:
            yield
        except (ValueError, OSError) as exc:
            if self.answered:
                raise
            self._request.close_connection = True  # the body's framing is lost
            if isinstance(exc, ValueError):  # cheroot's chunked reader: not hex, no CRLF
                raise BadRequest(f"malformed chunked request body: {exc}") from exc
            raise UploadIncomplete(f"the request body could not be read: {exc}") from exc

    def read(self, size: int | None = None) -> bytes:
        with self._reading():
            data: bytes = self._body.read(size)
        return data

    def readline(self, size: int | None = None) -> bytes:
        with self._reading():
            line: bytes = self._body.readline(size)
        return line

    def readlines(self, sizehint: int = 0) -> list[bytes]:
        with self._reading():
            lines: list[bytes] = self._body.readlines(sizehint)
        return lines

    def __iter__(self) -> _Body:
        return self

    def __next__(self) -> bytes:
        with self._reading():
            chunk: bytes = next(self._body)
        return chunk

    def __getattr__(self, name: str) -> Any:  # remaining, close, ...
        return getattr(self._body, name)


class Deadline:
    """One connection's deadline; ``expired`` once it has been cut off."""

    def __init__(self, due: float, sock: socket.socket) -> None:
        self.due = due
        self.sock = sock
        self.expired = False


class Deadlines:
    """Cuts off connections that take longer than ``seconds`` over what they were given that
    long for: a thread watching them shuts the socket's reading side down, so the worker
    blocked in reading it sees the end of the stream."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self._due: set[Deadline] = set()
        self._lock = threading.Lock()
        self._watcher: threading.Thread | None = None
        self._closed = threading.Event()

    @contextmanager
    def limit(self, sock: socket.socket, seconds: float | None = None) -> Iterator[Deadline]:
        """Within the block, reading ``sock`` ends after ``seconds`` (these deadlines' own, if
        not given)."""
        deadline = Deadline(time.monotonic() + (seconds or self.seconds), sock)
        with self._lock:
            self._due.add(deadline)
            if self._watcher is None:
                self._watcher = threading.Thread(
                    target=self._watch, name="davserver-deadlines", daemon=True
                )
                self._watcher.start()
        try:
            yield deadline
        finally:
            with self._lock:
                self._due.discard(deadline)

    def close(self) -> None:
        """Stop watching (when the server stops)."""
        self._closed.set()

    def _watch(self) -> None:
        while not self._closed.wait(0.25):
            now = time.monotonic()
            with self._lock:  # a socket is shut down only while its block runs: it is open
                for deadline in [d for d in self._due if d.due <= now]:
                    self._due.discard(deadline)
                    deadline.expired = True
                    with suppress(OSError):  # socket.socket's: a TLS socket's own would unwrap
                        socket.socket.shutdown(deadline.sock, socket.SHUT_RD)


class Request(cheroot_server.HTTPRequest):
    header_reader = _HeaderReader()

    def parse_request(self) -> None:
        with self.server.deadlines.limit(self.conn.socket) as deadline:
            try:
                super().parse_request()
            except OSError:
                # Cut off: cheroot's 400 could not be sent (over TLS nothing can be once the
                # reading side is shut), which is no error of the server's.
                if not deadline.expired:
                    raise
                self.ready = False
                self.close_connection = True

    @property
    def rfile(self) -> Any:
        return self._rfile

    @rfile.setter
    def rfile(self, reader: Any) -> None:
        # cheroot sets the body's reader in respond(), just before the application runs.
        if isinstance(reader, cheroot_server.ChunkedRFile):
            reader = _ChunkedBody(reader.rfile)
        if isinstance(reader, (cheroot_server.KnownLengthRFile, _ChunkedBody)):
            reader = _Body(reader, self, deferred=self.inheaders.get(b"Expect") == _DEFERRED)
        self._rfile = reader

    def simple_response(self, status: Any, msg: Any = "") -> None:
        """cheroot's own answer to a request the application never sees (a malformed request
        line or header, headers too large, a server stopping), counted in /metrics as the
        application's answers are (``count_refusal``): else they were nowhere."""
        count = getattr(self.server, "count_refusal", None)
        if count is not None:
            method = getattr(self, "method", None)  # none before the request line is read
            count(method.decode("latin-1") if isinstance(method, bytes) else "", str(status))
        super().simple_response(status, msg)

    def read_request_line(self) -> bool:
        # cheroot takes the absolute form only as a proxy, whose other ways are undone below.
        scheme = self.scheme
        self.proxy_mode = True
        try:
            ready: bool = super().read_request_line()
        finally:
            self.proxy_mode = False
        if not ready:
            return False
        self.scheme = scheme  # "https://..." on a plain connection does not make it secure
        if self.method == b"CONNECT":
            self.simple_response("405 Method Not Allowed")
            return False
        if self.method == b"OPTIONS" and self.uri != b"*":
            # cheroot un-escapes every method's path but OPTIONS's (and keeps the whole URI
            # as the path of an absolute one, as a proxy): done here as cheroot does it.
            path = urllib.parse.urlsplit(self.uri).path or b"/"
            atoms = _QUOTED_SLASH.split(path)  # "%2F" stays: it is not a path separator
            unquoted = b"%2F".join(map(urllib.parse.unquote_to_bytes, atoms))
            self.path = unquoted if unquoted.startswith(b"/") else b"/" + unquoted
        return True

    def read_request_headers(self) -> bool:
        ready: bool = super().read_request_headers()
        if ready and self.authority:  # absolute form: its host is the request's (RFC 9112 3.2.2)
            self.inheaders[b"Host"] = self.authority.rpartition(b"@")[2]
        if ready and self.request_protocol == b"HTTP/1.1" and b"Host" not in self.inheaders:
            self.simple_response("400 Bad Request", "An HTTP/1.1 request needs a Host header.")
            return False
        if not ready:
            return False
        if self.request_protocol != b"HTTP/1.1" and b"Transfer-Encoding" in self.inheaders:
            # RFC 9112 6.1: cheroot framed it by its Content-Length, or as no body.
            self.simple_response(
                "400 Bad Request", "Transfer-Encoding is not allowed in an HTTP/1.0 request."
            )
            return False
        if self.chunked_read and b"Content-Length" in self.inheaders:
            self.close_connection = True
        # RFC 9110 7.6.1: a list of options, any case (cheroot compared the whole value).
        options = {o.strip().lower() for o in self.inheaders.get(b"Connection", b"").split(b",")}
        if b"close" in options:
            self.close_connection = True
        elif self.response_protocol != "HTTP/1.1":
            self.close_connection = b"keep-alive" not in options
        return True

    def send_headers(self) -> None:
        reader = self._rfile
        remaining = getattr(reader, "remaining", 0)
        never_asked = isinstance(reader, _Body) and reader.deferred and not reader.continued
        if never_asked and (remaining or self.chunked_read):
            self.close_connection = True  # the client holds the body back: do not wait for it
        elif self.chunked_read and not getattr(reader, "done", False):
            self.close_connection = True  # the rest of the chunks is not read: nor drained
        elif not self.chunked_read and remaining > _DRAIN_LIMIT:
            self.close_connection = True
        elif not self.chunked_read and remaining and not self._drained(reader, remaining):
            self.close_connection = True  # never sent, or trickled: do not wait for it
        if isinstance(reader, _Body):
            reader.answered = True
        super().send_headers()

    def _drained(self, reader: Any, remaining: int) -> bool:
        """Read and drop the ``remaining`` bytes of an unread body within _DRAIN_SECONDS, as
        cheroot would (RFC 9112 9.6: a client may miss an answer sent before its body, if
        the connection is closed under it), but not for as long as the client takes: a
        client that sends nothing, or a byte now and then, held the thread, and the answer,
        for the whole of server.request_timeout per read. False when it did not all come."""
        body = getattr(reader, "_body", reader)  # cheroot's reader, past _Body's checks
        sock = self.conn.socket
        saved = sock.gettimeout()
        deadline = time.monotonic() + _DRAIN_SECONDS
        try:
            while remaining > 0:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                sock.settimeout(left)
                data = body.read(min(remaining, 64 * 1024))
                if not data:
                    return False
                remaining -= len(data)
            return True
        except (OSError, ValueError):
            return False
        finally:
            with suppress(OSError):
                sock.settimeout(saved)


class HeadState(enum.Enum):
    """Where the next request on a connection stands (``Connection.gather_head``)."""

    READY = "ready"  # its line and headers are all here, or cannot come: a worker takes it
    WAITING = "waiting"  # part of them is here: back to the selector for the rest
    LATE = "late"  # they took longer than header_timeout: the connection is closed
    FAILED = "failed"  # the TLS handshake failed: the connection is closed


class Connection(cheroot_server.HTTPConnection):
    RequestHandlerClass = Request
    # Set on a connection accepted for TLS: the handshake is still to be made.
    tls_pending = False
    # What has arrived of a request line and headers not yet complete.
    _head = b""
    # When the handshake, or the request line, began to arrive; None between requests.
    _since: float | None = None

    def gather_head(self, limit_seconds: float) -> HeadState:
        """Make what can be made of the TLS handshake, then read what has arrived of the next
        request, without waiting for more (the selector found the connection readable, or its
        reader holds bytes already). A worker thread takes the connection once its request
        line and headers are all there, so a client sending them (or its handshake) a byte at
        a time waits in the selector, as an idle connection does, instead of holding a thread
        until ``header_timeout``; past that it is closed (LATE)."""
        shaken = self.tls_pending
        if shaken:
            if self._since is None:
                self._since = time.monotonic()  # the handshake's clock
            stage = self._advance_handshake()
            if stage is not None:
                return self._late_or(stage, limit_seconds)
            self._since = None  # made: a request's clock starts with its first bytes
        reader = self.rfile  # cheroot's StreamReader, a _pyio.BufferedReader (see has_data)
        buffered = reader._read_buf[reader._read_pos :]
        reader._read_buf, reader._read_pos = b"", 0
        seen = len(self._head)
        head = self._head + buffered
        ended = partial_record = False
        while not self._whole(head, seen):
            arrived = self._receive()
            if arrived is None:
                # Over TLS, bytes that woke the selector but made no whole record yet: a
                # request has begun (unless they were the handshake's last, just made).
                partial_record = isinstance(self.socket, ssl.SSLSocket) and not shaken
                break
            ended = arrived == b""
            head += arrived
            if ended or not self._decrypted_pending():
                break
        if ended or self._whole(head, seen):
            reader._read_buf, self._head = head, b""  # for cheroot to read, as it arrived
            self.body_gathered = bool(self._wanted)
            self._since = self._wanted = self._body_since = None
            return HeadState.READY
        self._head = head
        if not (head or partial_record):
            self._since = None  # nothing of a request yet: an idle connection
        elif self._since is None:
            self._since = time.monotonic()  # the request's clock
        return self._late_or(HeadState.WAITING, limit_seconds)

    # How many bytes make the request gathered (line, headers and a small body), once its
    # headers are all in (0: its body is left to the worker); None before.
    _wanted: int | None = None
    # Whether the request a worker takes now came with all of its body (``BODY_GATHERED_KEY``).
    body_gathered = False
    # When the headers were all in, while such a body is still to come.
    _body_since: float | None = None

    def _whole(self, head: bytes, seen: int) -> bool:
        """Whether ``head`` holds the request's line and headers (or is past their cap) and,
        when they announce a body of at most ``_GATHER_BODY`` bytes by Content-Length, that body
        too: a JSON login, a PROPFIND or LOCK body, a small file. Sent slowly, it held a worker
        (a POST /api/v1/token with no password, up to its 15 s deadline; 32 of them held every
        thread); here it waits in the selector as the headers do, under their deadline."""
        if self._wanted is None:
            if len(head) >= MAX_HEADER_BYTES:
                return True
            if not _head_complete(head, seen):
                return False
            self._wanted = _gathered_size(head)
            self._body_since = time.monotonic()
        return len(head) >= self._wanted

    def late(self, limit_seconds: float) -> bool:
        """Whether a request (or handshake) begun on this connection has waited in the
        selector for more than ``limit_seconds``; a small body whose headers are in, for more
        than ``server.request_timeout`` since (as a worker would wait for a read of it)."""
        now = time.monotonic()
        if self._body_since is not None:
            return now - self._body_since > self.server.timeout
        return self._since is not None and now - self._since > limit_seconds

    def close_late(self) -> None:
        """Close a connection found ``late``; a request whose small body did not come in time
        is answered 408 first, as a worker reading it would have been."""
        if self._body_since is not None:
            with suppress(OSError, ValueError):
                self.socket.sendall(_LATE_BODY_ANSWER)
        self.close()

    def _late_or(self, state: HeadState, limit_seconds: float) -> HeadState:
        """``state``, or LATE for a connection still waiting past ``limit_seconds``."""
        if state is HeadState.WAITING and self.late(limit_seconds):
            return HeadState.LATE
        if state is not HeadState.WAITING:
            self._since = None
        return state

    def _receive(self) -> bytes | None:
        """What has arrived, read without waiting: None when nothing has, b"" when the stream
        has ended or broken (the worker's read finds out which, and ends the connection)."""
        sock = self.socket
        timeout = sock.gettimeout()
        sock.settimeout(0)  # with a timeout set, recv() would first wait up to it for bytes
        try:
            arrived: bytes = sock.recv(_GATHER_BYTES)
        except (BlockingIOError, InterruptedError, ssl.SSLWantReadError):
            return None
        except OSError:  # a reset, or a TLS record the worker cannot read either
            return b""
        finally:
            sock.settimeout(timeout)
        return arrived

    def _decrypted_pending(self) -> bool:
        """Whether the TLS layer holds bytes already decrypted, which the selector cannot see."""
        return isinstance(self.socket, ssl.SSLSocket) and self.socket.pending() > 0

    def _advance_handshake(self) -> HeadState | None:
        """Take the TLS handshake as far as what the client has sent allows, without waiting:
        None once it is made, WAITING for more of it, FAILED, or READY for a worker to finish:
        a plain HTTP request to refuse, or a handshake waiting to write (``_finish_tls``)."""
        if not isinstance(self.socket, ssl.SSLSocket):
            if self._speaks_plain_http():
                return HeadState.READY
            if not self._wrap_tls():
                return HeadState.FAILED
        sock = self.socket
        sock.settimeout(0)  # with a timeout set, the handshake would wait up to it
        try:
            sock.do_handshake()
        except ssl.SSLWantReadError:
            stage: HeadState | None = HeadState.WAITING
        except ssl.SSLWantWriteError:
            stage = HeadState.READY
        except (OSError, ValueError):  # ssl.SSLError is an OSError: a failed or cut handshake
            self._drop_socket()
            return HeadState.FAILED
        else:
            stage = None
            self.ssl_env = self.server.ssl_adapter.get_environ(sock)
            self.tls_pending = False
        sock.settimeout(self.server.timeout)
        return stage

    # After a failed handshake nothing is left to close: cheroot's close() would fail on the
    # socket (EBADF, ENOTCONN), and end the thread calling it.
    _socket_gone = False

    def communicate(self) -> bool:
        if self.tls_pending and not self._finish_tls():
            return False
        kept: bool = super().communicate()
        return kept

    def _finish_tls(self) -> bool:
        """In a worker, what the selector left of the TLS handshake (``_advance_handshake``),
        within the header deadline; False when it fails. A plain HTTP request is refused."""
        self.tls_pending = False
        if not isinstance(self.socket, ssl.SSLSocket):
            if self._speaks_plain_http():
                self._refuse_plain_http()
                return False
            if not self._wrap_tls():
                return False
        sock = self.socket
        try:
            with self.server.deadlines.limit(sock):
                sock.do_handshake()
            self.ssl_env = self.server.ssl_adapter.get_environ(sock)
        except (OSError, ValueError):
            self._drop_socket()
            return False
        return True

    def _wrap_tls(self) -> bool:
        """Put the TLS layer on the connection's socket, its handshake still to be made;
        False when that fails (the ssl module then closes the socket it took over)."""
        adapter = self.server.ssl_adapter  # a BuiltinSSLAdapter (davserver.tls)
        try:
            # The ssl module takes the socket over: the plain one is left without its file
            # descriptor.
            sock = adapter.context.wrap_socket(
                self.socket, server_side=True, do_handshake_on_connect=False
            )
        except (OSError, ValueError):
            self._socket_gone = True
            return False
        self.socket = sock
        self.rfile = adapter.makefile(sock, "rb", self.rbufsize)
        self.wfile = adapter.makefile(sock, "wb", self.wbufsize)
        return True

    def _drop_socket(self) -> None:
        """Close the socket of a connection whose handshake failed."""
        with suppress(OSError):
            self.socket.close()
        self._socket_gone = True

    def _speaks_plain_http(self) -> bool:
        """Whether the client began with a request line (a letter) where a TLS handshake
        record (0x16) belongs: an http:// URL for an https:// server. The connection is
        readable (it waited in the selector), so the peek does not wait."""
        try:
            first = self.socket.recv(1, socket.MSG_PEEK)
        except OSError:
            return False  # the handshake fails on it too
        return first.isalpha()

    def _refuse_plain_http(self) -> None:
        """Answer 400 in the clear, saying to use https (what cheroot answered before its
        handshake moved here, and nginx answers): the client's own error reads "connection
        reset" otherwise. What the client sent is read first, as far as it has arrived, so
        that closing with it unread does not reset the connection before the answer."""
        sock = self.socket
        with suppress(OSError):
            sock.settimeout(0)
            for _ in range(64):  # at most 256 KiB, the header limit
                if not sock.recv(4096):
                    break
        with suppress(OSError):
            sock.settimeout(self.server.timeout)
            sock.sendall(_PLAIN_HTTP_ANSWER)
            sock.shutdown(socket.SHUT_WR)

    def close(self) -> None:
        if self._socket_gone:
            self.rfile.close()
        else:
            super().close()


class ConnectionManager(cheroot_connections.ConnectionManager):
    """cheroot's, except that a new connection waits in the selector until it is readable."""

    _selector: Any  # cheroot's, which its type stubs leave out

    def _from_server_socket(self, server_socket: socket.socket) -> None:
        try:
            sock, address = server_socket.accept()
        except OSError as exc:  # as cheroot: a timeout, EINTR, a connection gone before accept
            quiet = (
                *cheroot_errors.socket_error_eintr,
                *cheroot_errors.socket_errors_nonblocking,
                *cheroot_errors.socket_errors_to_ignore,
            )
            if isinstance(exc, TimeoutError) or exc.args[0] in quiet:
                return None
            raise
        sock.settimeout(self.server.timeout)
        conn = self.server.ConnectionClass(self.server, sock, MakeFile)
        if isinstance(address, tuple) and len(address) >= 2:
            conn.remote_addr, conn.remote_port = address[0], address[1]
        conn.ssl_env = {}
        conn.tls_pending = self.server.ssl_adapter is not None
        self.put(conn)  # into the selector (its buffer is empty)
        self._close_longest_idle(keep=conn)
        return None

    def _expire(self, threshold: float) -> None:
        """cheroot's expiry of connections idle past ``server.timeout``, and of those whose
        request line and headers (or TLS handshake) began to arrive and are not complete
        within ``header_timeout`` (``Connection.late``): one that sent part of them and
        then nothing was only found late when more bytes came, so it stayed for the whole
        idle timeout (60 s) instead."""
        deadlines = getattr(self.server, "deadlines", None)
        if deadlines is not None:  # first: a late body's 408 before the idle expiry's close
            late = [
                (fd, conn)
                for fd, conn in self._selector.connections
                if conn is not self.server and conn.late(deadlines.seconds)
            ]
            for fd, conn in late:
                self._selector.unregister(fd)
                with suppress(OSError):
                    conn.close_late()
        super()._expire(threshold)  # type: ignore[misc]

    def _close_longest_idle(self, *, keep: Any) -> None:
        """Past the keep-alive limit, close the connections idle the longest (``keep``
        aside): each waiting one takes a file descriptor, and without a bound a client
        opening connections by the thousand ran the process out of them."""
        limit = self.server.keep_alive_conn_limit
        excess = len(self._selector) - 1 - (limit or 0)  # the listening socket is in it too
        if limit is None or excess <= 0:
            return
        waiting = [
            (conn.last_used, fd, conn)
            for fd, conn in self._selector.connections
            if conn is not self.server and conn is not keep
        ]
        waiting.sort(key=lambda item: item[0])
        for _, fd, conn in waiting[:excess]:
            self._selector.unregister(fd)
            conn.close()


# In a request's WSGI environ: ``limit(seconds)``, a context manager within which reading the
# request's body ends (a short read) after ``seconds``; it yields the Deadline, ``expired``
# once it cut the body off. Absent where the server gives none (tests calling the app).
BODY_DEADLINE_KEY = "davserver.body_deadline"
# In a request's WSGI environ: True when its body (if any) arrived with its headers, before a
# worker took the request (``Connection._whole``): reading it waits for nothing.
BODY_GATHERED_KEY = "davserver.body_gathered"


class Gateway(wsgi.Gateway_10):
    """cheroot's WSGI 1.0 gateway, with ``BODY_DEADLINE_KEY`` and ``BODY_GATHERED_KEY`` in
    each environ (cheroot's stubs type ``get_environ`` as returning None)."""

    def get_environ(self) -> dict[str, Any]:  # type: ignore[override]
        environ: dict[str, Any] = super().get_environ()
        environ[BODY_GATHERED_KEY] = getattr(self.req.conn, "body_gathered", False)
        deadlines = getattr(self.req.server, "deadlines", None)
        if deadlines is not None:
            environ[BODY_DEADLINE_KEY] = functools.partial(deadlines.limit, self.req.conn.socket)
        return environ
