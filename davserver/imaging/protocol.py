"""The few bytes of protocol the server and its image workers speak, without Pillow.

Messages in both directions are a 4-byte big-endian length, a JSON header of that length, then
``header["size"]`` bytes of payload. A request carries the source file as a descriptor
(SCM_RIGHTS), so the worker never sees a path and the bytes are not copied through the socket.
JSON, not pickle: a worker that a hostile image took over must not be able to run code in the
server by what it answers.
"""

from __future__ import annotations

import json
import os
import socket
import struct
import time
from typing import Any

_LENGTH = struct.Struct(">I")
MAX_HEADER = 64 * 1024


class ProtocolError(Exception):
    """The other side sent something that is not a message, or closed the socket."""


def send_message(
    sock: socket.socket, header: dict[str, Any], payload: bytes = b"", fd: int | None = None
) -> None:
    """Send one message, with ``fd`` attached to its first byte when given."""
    head = json.dumps({**header, "size": len(payload)}).encode()
    first = _LENGTH.pack(len(head)) + head
    if fd is None:
        sock.sendall(first)
    else:
        sent = socket.send_fds(sock, [first], [fd])
        first = first[sent:]
        if first:
            sock.sendall(first)
    if payload:
        sock.sendall(payload)


def receive_message(
    sock: socket.socket, *, max_payload: int, deadline: float | None = None
) -> tuple[dict[str, Any], bytes, list[int]]:
    """Read one message: (header, payload, received descriptors).

    Raises ProtocolError on a closed socket or a malformed message, TimeoutError when
    ``deadline`` (a ``time.monotonic()`` value) passes first.
    """
    fds: list[int] = []
    start = b""
    while len(start) < _LENGTH.size:
        _set_timeout(sock, deadline)
        data, more_fds, _flags, _addr = socket.recv_fds(sock, _LENGTH.size - len(start), 4)
        fds.extend(more_fds)
        if not data:
            close_all(fds)
            raise ProtocolError("the socket was closed")
        start += data
    (length,) = _LENGTH.unpack(start)
    try:
        if length > MAX_HEADER:
            raise ProtocolError(f"a message header of {length} bytes")
        try:
            header = json.loads(_receive_exact(sock, length, deadline))
        except ValueError as exc:
            raise ProtocolError("a message header that is not JSON") from exc
        if not isinstance(header, dict):
            raise ProtocolError("a message header that is not an object")
        size = header.get("size")
        if not isinstance(size, int) or not 0 <= size <= max_payload:
            raise ProtocolError(f"a payload of {size!r} bytes")
        return header, _receive_exact(sock, size, deadline), fds
    except BaseException:
        close_all(fds)
        raise


def _receive_exact(sock: socket.socket, count: int, deadline: float | None) -> bytes:
    chunks = []
    remaining = count
    while remaining:
        _set_timeout(sock, deadline)
        chunk = sock.recv(min(remaining, 1024 * 1024))
        if not chunk:
            raise ProtocolError("the socket was closed mid-message")
        chunks.append(chunk)
        remaining -= len(chunk)
    return b"".join(chunks)


def _set_timeout(sock: socket.socket, deadline: float | None) -> None:
    if deadline is None:
        sock.settimeout(None)
        return
    left = deadline - time.monotonic()
    if left <= 0:
        raise TimeoutError("the worker did not answer in time")
    sock.settimeout(left)


def close_all(fds: list[int]) -> None:
    for fd in fds:
        os.close(fd)
