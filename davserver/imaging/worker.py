"""The image worker process (its protocol with the server is in ``protocol``).

A worker is ``python -m davserver.imaging.worker``, started by ``RenderPool`` with one end of a
Unix socket pair as its stdin. Before it reads any image it limits itself: address space
(``RLIMIT_AS``, so a decoder that wants more memory fails with MemoryError instead of growing
the machine into swap or the OOM killer), no core dumps, no file writes (``RLIMIT_FSIZE`` 0),
and before each job a CPU-time limit, a backstop for the server's wall-clock timeout should the
server itself be gone.
"""

from __future__ import annotations

import argparse
import os
import resource
import signal
import socket
import sys
import warnings
from collections.abc import Sequence
from typing import Any

from PIL import Image

from davserver.imaging.protocol import ProtocolError, close_all, receive_message, send_message
from davserver.imaging.render import render
from davserver.imaging.spec import (
    ImageTooLarge,
    InvalidImage,
    UnsupportedImage,
    VariantSpec,
)


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
        "source_width": result.source_width,
        "source_height": result.source_height,
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
            close_all(fds)
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
