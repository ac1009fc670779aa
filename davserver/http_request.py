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
"""

from __future__ import annotations

from typing import Any

from cheroot import server as cheroot_server

# An unread request body up to this size is read and dropped after an early answer, so the
# connection can be kept; a bigger one closes the connection instead.
_DRAIN_LIMIT = 1024 * 1024
# What an "Expect: 100-continue" header is renamed to, so that cheroot does not answer it.
_DEFERRED = b"100-continue (deferred)"


class _HeaderReader(cheroot_server.HeaderReader):
    def __call__(self, rfile: Any, hdict: dict[bytes, bytes] | None = None) -> Any:
        headers = super().__call__(rfile, hdict)
        if headers.get(b"Expect", b"").strip().lower() == b"100-continue":
            headers[b"Expect"] = _DEFERRED
        return headers


class _ContinueOnRead:
    """A request body that sends "100 Continue" before its first read, unless the answer has
    started by then."""

    def __init__(self, body: Any, request: Request) -> None:
        self._body = body
        self._request = request
        self.continued = False

    def _continue(self) -> None:
        if self.continued:
            return
        self.continued = True
        request = self._request
        if not request.sent_headers:
            protocol = request.server.protocol.encode("ascii")
            request.conn.wfile.write(protocol + b" 100 Continue\r\n\r\n")

    def read(self, size: int | None = None) -> bytes:
        self._continue()
        data: bytes = self._body.read(size)
        return data

    def readline(self, size: int | None = None) -> bytes:
        self._continue()
        line: bytes = self._body.readline(size)
        return line

    def readlines(self, sizehint: int = 0) -> list[bytes]:
        self._continue()
        lines: list[bytes] = self._body.readlines(sizehint)
        return lines

    def __iter__(self) -> _ContinueOnRead:
        return self

    def __next__(self) -> bytes:
        self._continue()
        chunk: bytes = next(self._body)
        return chunk

    def __getattr__(self, name: str) -> Any:  # remaining, close, ...
        return getattr(self._body, name)


class Request(cheroot_server.HTTPRequest):
    header_reader = _HeaderReader()

    @property
    def rfile(self) -> Any:
        return self._rfile

    @rfile.setter
    def rfile(self, reader: Any) -> None:
        # cheroot sets the body's reader in respond(), just before the application runs.
        body_readers = (cheroot_server.KnownLengthRFile, cheroot_server.ChunkedRFile)
        if isinstance(reader, body_readers) and self.inheaders.get(b"Expect") == _DEFERRED:
            reader = _ContinueOnRead(reader, self)
        self._rfile = reader

    def send_headers(self) -> None:
        reader = self._rfile
        remaining = getattr(reader, "remaining", 0)
        never_asked = isinstance(reader, _ContinueOnRead) and not reader.continued
        if never_asked and (remaining or self.chunked_read):
            self.close_connection = True  # the client holds the body back: do not wait for it
        elif not self.chunked_read and remaining > _DRAIN_LIMIT:
            self.close_connection = True
        super().send_headers()


class Connection(cheroot_server.HTTPConnection):
    RequestHandlerClass = Request
