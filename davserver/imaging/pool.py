"""A small pool of image worker processes: each conversion bounded in memory, time and number.

Why processes rather than threads: a thread cannot be stopped, and an image decoder that loops,
allocates gigabytes or crashes on hostile input would take the whole server with it. A worker
process has an address-space limit (``RLIMIT_AS``), is killed when a conversion overruns its
wall-clock timeout, and when it dies the server only loses that one conversion (answered 422)
and starts a fresh worker on the next request. Workers live on between jobs, so a conversion
does not pay for starting Python and importing Pillow; they start on first use, so a server
that never makes a thumbnail never starts one.

Bounds: at most ``workers`` conversions run at once; at most ``4 x workers`` more requests wait
for a free worker (up to ``queue_wait``), any beyond are refused at once (503), so a burst of
thumbnail requests cannot hold every server thread. Everything else the server does needs no
worker and goes on meanwhile.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from davserver.errors import Unavailable, Unprocessable
from davserver.imaging.protocol import ProtocolError, receive_message, send_message
from davserver.imaging.spec import (
    OUTPUT_FORMATS,
    ImageTooLarge,
    InvalidImage,
    RenderedImage,
    UnsupportedImage,
    VariantSpec,
)

log = logging.getLogger(__name__)

WORKER_COMMAND: tuple[str, ...] = (sys.executable, "-m", "davserver.imaging.worker")
_START_TIMEOUT = 15.0
_MAX_REPLY = 64 * 1024 * 1024
_MAX_MESSAGE = 300  # characters of a worker's error message passed on to the client
_JOBS_PER_WORKER = 500  # then a fresh process, so fragmentation cannot pile up
_PACKAGE_ROOT = str(Path(__file__).resolve().parents[2])


class RenderFailed(Unprocessable):
    """The conversion overran its time, or its worker died (out of memory, a decoder crash)."""


class RendererBusy(Unavailable):
    """Every worker is busy and the queue is full."""


@dataclass(frozen=True)
class PoolLimits:
    workers: int = 2
    timeout: float = 30.0  # seconds of wall-clock time per conversion
    memory_mb: int = 1024  # address space per worker process; 0: unlimited
    max_pixels: int = 50_000_000
    input_formats: tuple[str, ...] = ("JPEG", "PNG", "WEBP", "GIF", "TIFF", "BMP")
    queue_wait: float = 30.0  # seconds a request waits for a free worker before 503


class RenderPool:
    def __init__(self, limits: PoolLimits, *, command: Sequence[str] = WORKER_COMMAND) -> None:
        if limits.workers < 1:
            raise ValueError("an image pool needs at least one worker")
        self.limits = limits
        self._command = [
            *command,
            "--max-pixels",
            str(limits.max_pixels),
            "--memory-mb",
            str(limits.memory_mb),
            "--cpu-seconds",
            str(max(1, int(limits.timeout * 2))),
            "--formats",
            ",".join(limits.input_formats),
        ]
        self._slots = threading.BoundedSemaphore(limits.workers)
        self._queue = threading.BoundedSemaphore(limits.workers * 5)
        self._idle: list[_Worker] = []
        self._lock = threading.Lock()
        self._closed = False

    def render(self, source: BinaryIO, spec: VariantSpec) -> RenderedImage:
        """The variant ``spec`` of the image in ``source``, made by a worker.

        Raises UnsupportedImage, ImageTooLarge, InvalidImage (see ``render.render``),
        RenderFailed when the worker overran its time or died, RendererBusy when no worker
        became free in time.
        """
        header = {
            "max_size": spec.max_size,
            "format": spec.format,
            "quality": spec.quality,
        }
        reply, payload = self._run(header, source)
        fmt, width, height = reply.get("format"), reply.get("width"), reply.get("height")
        if (
            fmt not in OUTPUT_FORMATS
            or (spec.format is not None and fmt != spec.format)
            or not isinstance(width, int)
            or not isinstance(height, int)
            or not (0 < width <= spec.max_size and 0 < height <= spec.max_size)
            or not payload
        ):
            raise RenderFailed("the image worker gave an answer that does not fit the request")
        told = [reply.get("source_width"), reply.get("source_height")]
        source_width, source_height = (v if isinstance(v, int) and v > 0 else 0 for v in told)
        alpha = reply.get("alpha") is True
        return RenderedImage(payload, str(fmt), width, height, alpha, source_width, source_height)

    def close(self) -> None:
        """Stop the idle workers; busy ones stop when their job ends."""
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
        for worker in idle:
            worker.stop()

    # ------------------------------------------------------------------------------ inside

    def _run(self, header: dict[str, Any], source: BinaryIO) -> tuple[dict[str, Any], bytes]:
        if not self._queue.acquire(blocking=False):
            raise RendererBusy("every image worker is busy; try again shortly")
        try:
            if not self._slots.acquire(timeout=self.limits.queue_wait):
                raise RendererBusy("every image worker is busy; try again shortly")
            try:
                with _descriptor_of(source) as fd:
                    return self._run_on_worker(header, fd)
            finally:
                self._slots.release()
        finally:
            self._queue.release()

    def _run_on_worker(self, header: dict[str, Any], fd: int) -> tuple[dict[str, Any], bytes]:
        deadline = time.monotonic() + self.limits.timeout
        worker = self._sent_to_a_worker(header, fd, deadline)
        try:
            reply, payload = worker.receive(deadline)
        except TimeoutError:
            worker.kill()
            raise RenderFailed(
                f"converting the image took longer than {self.limits.timeout:g} s"
            ) from None
        except (ProtocolError, OSError) as exc:
            status, stderr = worker.kill()
            log.warning("image worker died (status %s) on a job: %s %s", status, exc, stderr)
            raise RenderFailed(
                "converting the image failed (it needs more memory or time than allowed, "
                "or it crashed the decoder)"
            ) from None
        self._give_back(worker, retire=bool(reply.get("retire")))
        if reply.get("ok"):
            return reply, payload
        message = str(reply.get("message", ""))[:_MAX_MESSAGE] or "the image cannot be converted"
        error = reply.get("error")
        if error == "unsupported":
            raise UnsupportedImage(message)
        if error == "too_large":
            raise ImageTooLarge(message)
        raise InvalidImage(message)

    def _sent_to_a_worker(self, header: dict[str, Any], fd: int, deadline: float) -> _Worker:
        """The worker the job went to. A worker that died while idle (killed, or out of
        memory) cannot take it: the job goes to a fresh one, and says nothing of the image
        (it was answered 422, and that failure remembered for the image for minutes)."""
        worker = self._take()
        try:
            worker.send(header, fd, deadline)
            return worker
        except (OSError, TimeoutError) as exc:
            status, stderr = worker.kill()
            log.warning("image worker had died while idle (status %s): %s %s", status, exc, stderr)
        worker = self._start()
        try:
            worker.send(header, fd, deadline)
        except (OSError, TimeoutError) as exc:
            status, stderr = worker.kill()
            log.error("a new image worker did not take a job (status %s): %s", status, stderr)
            raise RendererBusy("no image worker could take the job") from exc
        return worker

    def _take(self) -> _Worker:
        """An idle worker still alive, or a new one."""
        while True:
            with self._lock:
                if self._closed:
                    raise RendererBusy("the image workers are shutting down")
                if not self._idle:
                    break
                worker = self._idle.pop()
            if worker.process.poll() is None:
                return worker
            status, stderr = worker.kill()
            log.warning("image worker had died while idle (status %s): %s", status, stderr)
        return self._start()

    def _start(self) -> _Worker:
        try:
            return _Worker(self._command)
        except (OSError, ProtocolError, TimeoutError) as exc:
            log.error("cannot start an image worker: %s", exc)
            raise RendererBusy("no image worker could be started") from exc

    def _give_back(self, worker: _Worker, *, retire: bool) -> None:
        if not retire and worker.jobs < _JOBS_PER_WORKER:
            with self._lock:
                if not self._closed:
                    self._idle.append(worker)
                    return
        worker.stop()


class _Worker:
    """One worker process and the server's end of its socket."""

    def __init__(self, command: Sequence[str]) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        # Not the server's environment: it holds the database URL and perhaps passwords,
        # which a worker that a hostile image took over has no business reading.
        env = {
            "PATH": os.environ.get("PATH", os.defpath),
            "LC_ALL": "C.UTF-8",
            "PYTHONPATH": os.pathsep.join(
                p for p in (_PACKAGE_ROOT, os.environ.get("PYTHONPATH", "")) if p
            ),
        }
        try:
            self.process = subprocess.Popen(
                list(command),
                stdin=theirs.fileno(),
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                close_fds=True,
                env=env,
            )
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        self.sock = ours
        self.jobs = 0
        try:
            receive_message(ours, max_payload=0, deadline=time.monotonic() + _START_TIMEOUT)
        except BaseException:
            status, stderr = self.kill()
            log.error("image worker exited during start (status %s): %s", status, stderr)
            raise

    def send(self, header: dict[str, Any], fd: int, deadline: float) -> None:
        self.jobs += 1
        self.sock.settimeout(max(0.001, deadline - time.monotonic()))
        send_message(self.sock, header, fd=fd)

    def receive(self, deadline: float) -> tuple[dict[str, Any], bytes]:
        reply, payload, fds = receive_message(self.sock, max_payload=_MAX_REPLY, deadline=deadline)
        for extra in fds:
            os.close(extra)
        return reply, payload

    def stop(self) -> None:
        """End an idle worker: closing its socket makes it exit."""
        self.sock.close()
        try:
            self.process.wait(timeout=2)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self._close_stderr()

    def kill(self) -> tuple[int | None, str]:
        """End a worker that misbehaved: (exit status, the tail of its stderr)."""
        self.sock.close()
        with contextlib.suppress(ProcessLookupError):
            self.process.kill()
        status = self.process.wait()
        stderr = ""
        if self.process.stderr is not None:
            with contextlib.suppress(OSError, ValueError):
                stderr = self.process.stderr.read()[-2000:].decode("utf-8", "replace").strip()
        self._close_stderr()
        return status, stderr

    def _close_stderr(self) -> None:
        if self.process.stderr is not None:
            self.process.stderr.close()


@contextlib.contextmanager
def _descriptor_of(source: BinaryIO) -> Iterator[int]:
    """A file descriptor holding the bytes of ``source``: its own when it is a real file,
    else a temporary file's (a blob store that is not a local disk)."""
    try:
        fd = source.fileno()
    except (OSError, AttributeError, ValueError):
        fd = -1
    if fd >= 0:
        yield fd
        return
    with tempfile.TemporaryFile() as spool:
        source.seek(0)
        shutil.copyfileobj(source, spool, 1024 * 1024)
        spool.flush()
        yield spool.fileno()
