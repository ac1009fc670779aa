"""Serving the application over HTTP(S) with cheroot."""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable
from contextlib import suppress
from types import FrameType
from typing import Any

from cheroot import connections, wsgi

from davserver.app import Application
from davserver.housekeeping import Housekeeper
from davserver.http_request import (
    MAX_HEADER_BYTES,
    Connection,
    ConnectionManager,
    Deadlines,
    Gateway,
    HeadState,
)
from davserver.memory import fix_malloc_thresholds, limit_malloc_arenas, release_free_memory
from davserver.tls import CertificateReloader, make_adapter, tls_enabled

log = logging.getLogger(__name__)


class CannotListen(Exception):
    """The address could not be bound (taken, not ours, not an address of this host)."""

    def __init__(self, host: str, port: int, reason: OSError) -> None:
        detail = reason.strerror or str(reason)
        super().__init__(f"cannot listen on {host}:{port}: {detail}")


class _Server(wsgi.Server):
    _connections: connections.ConnectionManager
    # For a request's line and headers, and a TLS handshake (davserver.http_request).
    deadlines: Deadlines | None = None

    def prepare(self) -> None:
        super().prepare()
        # Ours lets a new connection wait for its first bytes without holding a worker thread.
        cheroots, self._connections = self._connections, ConnectionManager(self)
        cheroots.close()

    def process_conn(self, conn: Any) -> None:
        """Hand a readable connection to a worker thread once its TLS handshake is made and its
        request line and headers have arrived (``Connection.gather_head``); until then it
        waits in the selector."""
        limit = self.deadlines.seconds if self.deadlines is not None else float("inf")
        state = conn.gather_head(limit)
        if state is HeadState.WAITING:
            self._connections.put(conn)
        elif state is HeadState.LATE:
            with suppress(OSError):
                conn.close_late()
        elif state is HeadState.FAILED:
            with suppress(OSError):
                conn.close()
        else:
            super().process_conn(conn)

    def count_refusal(self, method: str, status: str) -> None:
        """Count an answer cheroot gave itself (``Request.simple_response``) in the metrics
        of this process, as a request of no time: an unknown ``method`` counts as OTHER."""
        metrics = self.wsgi_app.metrics
        metrics.started()
        metrics.finished(method, int(status[:3]) if status[:3].isdigit() else 500, 0.0, 0)

    def stop(self) -> None:
        super().stop()
        if self.deadlines is not None:
            self.deadlines.close()


# How long a stopping server lets its open requests finish.
OPEN_REQUESTS_GRACE_SECONDS = 25.0


def make_server(app: Application, host: str, port: int, *, reuse_port: bool = False) -> wsgi.Server:
    """A cheroot server for ``app``; ``reuse_port`` lets several processes listen on one port."""
    settings = app.settings.server
    server = _Server(
        (host, port),
        app,
        numthreads=settings.threads,
        timeout=settings.request_timeout,
        request_queue_size=64,
        server_name="davserver",
        reuse_port=reuse_port,
    )
    server.max_request_body_size = 0  # uploads are bounded by quota, not by a fixed cap
    server.max_request_header_size = MAX_HEADER_BYTES
    # cheroot's default of 10 made every client past the tenth reconnect for each request.
    server.keep_alive_conn_limit = settings.keep_alive_connections
    server.ConnectionClass = Connection
    server.gateway = Gateway  # lets the app bound how long a body may take (the JSON API's)
    server.deadlines = Deadlines(settings.header_timeout)
    # cheroot cut the requests still open 5 s after a SIGTERM: an upload of any size, as the
    # README promises, gets this long (a worker's supervisor waits a little longer).
    server.shutdown_timeout = OPEN_REQUESTS_GRACE_SECONDS
    if tls_enabled(settings):
        server.ssl_adapter = make_adapter(settings)
    return server


def announce(tls: bool, host: str, port: int, workers: int = 1) -> None:
    """Print the address being served: the line scripts and tests wait for."""
    scheme = "https" if tls else "http"
    suffix = f" ({workers} worker processes)" if workers > 1 else ""
    if ":" in host:  # an IPv6 address is bracketed in a URL (RFC 3986)
        host = f"[{host}]"
    print(f"davserver listening on {scheme}://{host}:{port}/{suffix}", flush=True)


def _announce(server: wsgi.Server) -> None:
    host, port = server.bind_addr[:2]
    announce(server.ssl_adapter is not None, host, port)


def serve(
    app: Application,
    host: str,
    port: int,
    *,
    reuse_port: bool = False,
    housekeeping: bool = True,
    ready: Callable[[wsgi.Server], None] = _announce,
) -> None:
    """Serve until SIGINT or SIGTERM, then finish open requests and close. Over TLS a renewed
    certificate is put in service as it appears, and at once on SIGHUP (``CertificateReloader``).

    ``ready`` is called once the port listens (by default it prints the address). A worker of
    ``davserver.workers`` passes ``reuse_port``, no ``housekeeping`` (its parent sweeps) and a
    ``ready`` that tells the parent.
    """
    # Before the worker threads exist, so none of them gets an arena of its own.
    limit_malloc_arenas(app.settings.server.malloc_arenas)
    fix_malloc_thresholds()
    release_free_memory()  # start-up (migrations, the first password hash) is over
    server = make_server(app, host, port, reuse_port=reuse_port)
    every = app.settings.maintenance.housekeeping_seconds if housekeeping else 0
    housekeeper = Housekeeper(app.services, every)
    stopping, listening = threading.Event(), threading.Event()
    # Stops the server from outside the signal handler: it closes the port, then waits for
    # the requests in progress (up to cheroot's shutdown_timeout) while serve() returns.
    stopper = threading.Thread(target=server.stop, name="stop", daemon=True)
    reloader = CertificateReloader(server, app.settings.server) if server.ssl_adapter else None

    def stop(signum: int, _frame: FrameType | None) -> None:
        if stopping.is_set():  # Ctrl-C reaches a worker and its parent, which passes it on
            return
        stopping.set()
        log.info("signal %s: stopping", signum)
        # cheroot's stop() does nothing before prepare() has finished (which would then serve
        # for ever): a signal that early is seen after prepare(), and nothing is served.
        if listening.is_set():
            stopper.start()

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
        if reloader is not None:  # without TLS, a hangup ends the server as before
            signal.signal(signal.SIGHUP, lambda _signum, _frame: reloader.reload_now())
    try:
        try:
            server.prepare()
        except OSError as exc:
            raise CannotListen(host, port, exc) from exc
        listening.set()
        if stopping.is_set():  # a signal during the start (a worker's, or systemd's stop)
            return
        ready(server)
        housekeeper.start()
        if reloader is not None:
            reloader.start()
        server.serve()
    finally:
        if reloader is not None:
            reloader.stop()
        housekeeper.stop()
        if stopper.is_alive():
            # The requests in progress still use the application (its database, the logbook
            # rows of downloads): close it once they are done. A worker process leaves with
            # os._exit after this returns, which would cut them off.
            log.info("finishing open requests (at most %s s)", server.shutdown_timeout)
            stopper.join()
        server.stop()
        app.close()
