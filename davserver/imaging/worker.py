"""The image worker process, and the few bytes of protocol it speaks with the server.

A worker is ``python -m davserver.imaging.worker``, started by ``RenderPool`` with one end of a
Unix socket pair as its stdin. Before it reads any image it limits itself: address space
(``RLIMIT_AS``, so a decoder that wants more memory fails with MemoryError instead of growing
the machine into swap or the OOM killer), no core dumps, no file writes (``RLIMIT_FSIZE`` 0),
and before each job a CPU-time limit, a backstop for the server's wall-clock timeout should the
server itself be gone.

Messages in both directions are a 4-byte big-endian length, a JSON header of that length, then
``header["size"]`` bytes of payload. A request carries the source file as a descriptor
(SCM_RIGHTS), so the worker never sees a path and the bytes are not copied through the socket.
JSON, not pickle: a worker that a hostile image took over must not be able to run code in the
server by what it answers.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import signal
import socket
import struct
import sys
import time
import warnings
from collections.abc import Sequence
from typing import Any

from PIL import Image

from davserver.imaging.render import (
    ImageTooLarge,
    InvalidImage,
    UnsupportedImage,
    VariantSpec,
    render,
)

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
            _close_all(fds)
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
        _close_all(fds)
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


def _close_all(fds: list[int]) -> None:
    for fd in fds:
        os.close(fd)


# ------------------------------------------------------------------------------ the worker


def _limit_self(memory_mb: int) -> None:
    if memory_mb > 0:
        limit = memory_mb * 1024 * 1024
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    resource.setrlimit(resource.RLIMIT_FSIZE, (0, 0))


def _limit_cpu(seconds: int) -> None:
    """Allow this job ``seconds`` of CPU time from now (SIGXCPU ends the process after)."""
    if seconds <= 0:
        return
    usage = resource.getrusage(resource.RUSAGE_SELF)
    used = int(usage.ru_utime + usage.ru_stime) + 1
    hard = resource.getrlimit(resource.RLIMIT_CPU)[1]
    soft = used + seconds
    if hard != resource.RLIM_INFINITY:
        soft = min(soft, hard)
    resource.setrlimit(resource.RLIMIT_CPU, (soft, hard))


def _handle(header: dict[str, Any], fd: int, options: argparse.Namespace) -> tuple[dict, bytes]:
    """One job on the image behind ``fd``: (reply header, payload)."""
    with os.fdopen(fd, "rb") as source:
        source.seek(0)
        try:
            spec = VariantSpec(
                max_size=int(header["max_size"]),
                format=header.get("format"),
                quality=int(header["quality"]),
            )
            result = render(
                source, spec, max_pixels=options.max_pixels, input_formats=options.formats
            )
        except UnsupportedImage as exc:
            return {"ok": False, "error": "unsupported", "message": str(exc)}, b""
        except ImageTooLarge as exc:
            return {"ok": False, "error": "too_large", "message": str(exc)}, b""
        except InvalidImage as exc:
            return {"ok": False, "error": "invalid", "message": str(exc)}, b""
        except MemoryError:
            # The heap may be in pieces after this; the pool starts a fresh worker.
            return {
                "ok": False,
                "error": "too_large",
                "message": "converting the image needs more memory than a worker may use",
                "retire": True,
            }, b""
    reply = {
        "ok": True,
        "format": result.format,
        "width": result.width,
        "height": result.height,
        "alpha": result.source_alpha,
    }
    return reply, result.data


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="davserver image worker (started by the server)")
    parser.add_argument("--max-pixels", type=int, required=True)
    parser.add_argument("--memory-mb", type=int, default=0)
    parser.add_argument("--cpu-seconds", type=int, default=0)
    parser.add_argument("--formats", default="JPEG,PNG,WEBP,GIF,TIFF,BMP")
    options = parser.parse_args(argv)
    options.formats = [f.strip().upper() for f in options.formats.split(",") if f.strip()]
    # Ctrl-C in the server's terminal reaches the whole process group; the server ends us by
    # closing the socket (or killing us) instead.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # Damaged files make Pillow warn a lot; nobody reads a worker's stderr until it dies.
    # (render() turns DecompressionBombWarning back into an error.)
    warnings.simplefilter("ignore")
    Image.init()  # import every format plugin before the memory limit applies
    Image.MAX_IMAGE_PIXELS = options.max_pixels
    _limit_self(options.memory_mb)
    sock = socket.socket(fileno=sys.stdin.fileno())
    send_message(sock, {"ready": True})
    while True:
        try:
            header, _payload, fds = receive_message(sock, max_payload=0)
        except ProtocolError:
            return 0  # the server closed the socket: it no longer needs us
        if len(fds) != 1:
            _close_all(fds)
            send_message(sock, {"ok": False, "error": "invalid", "message": "no source given"})
            continue
        _limit_cpu(options.cpu_seconds)
        try:
            reply, payload = _handle(header, fds[0], options)
        except Exception as exc:  # a decoder bug met on hostile input: report, do not die
            reply = {"ok": False, "error": "invalid", "message": f"{type(exc).__name__}: {exc}"}
            payload = b""
        send_message(sock, reply, payload)
        if reply.get("retire"):
            return 0


if __name__ == "__main__":
    sys.exit(main())
