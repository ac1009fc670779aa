"""Serving the application over HTTP(S) with cheroot."""

from __future__ import annotations

import logging
import signal
import threading
from types import FrameType

from cheroot import server as cheroot_server
from cheroot import wsgi
from cheroot.ssl.builtin import BuiltinSSLAdapter

from davserver.app import Application
from davserver.housekeeping import Housekeeper
from davserver.memory import limit_malloc_arenas, release_free_memory

log = logging.getLogger(__name__)


# An unread request body up to this size is read and dropped after an early answer, so the
# connection can be kept; a bigger one closes the connection instead.
_DRAIN_LIMIT = 1024 * 1024


class _Request(cheroot_server.HTTPRequest):
    """cheroot's request, minus one trap: after an answer given before the body was read (401,
    403, 507...), cheroot reads the rest of the body in *one* ``read(remaining)`` to keep the
    connection, so a client announcing 50 GiB made the server allocate 50 GiB. Past
    ``_DRAIN_LIMIT`` the connection is closed instead."""

    def send_headers(self) -> None:
        remaining = getattr(self.rfile, "remaining", 0)
        if not self.chunked_read and remaining > _DRAIN_LIMIT:
            self.close_connection = True
        super().send_headers()


class _Connection(cheroot_server.HTTPConnection):
    RequestHandlerClass = _Request


def make_server(app: Application, host: str, port: int) -> wsgi.Server:
    settings = app.settings.server
    server = wsgi.Server(
        (host, port),
        app,
        numthreads=settings.threads,
        timeout=settings.request_timeout,
        request_queue_size=64,
        server_name="davserver",
    )
    server.max_request_body_size = 0  # uploads are bounded by quota, not by a fixed cap
    server.ConnectionClass = _Connection
    if settings.ssl_certificate and settings.ssl_private_key:
        server.ssl_adapter = BuiltinSSLAdapter(settings.ssl_certificate, settings.ssl_private_key)
    return server


def serve(app: Application, host: str, port: int) -> None:
    """Serve until SIGINT or SIGTERM, then finish open requests and close."""
    # Before the worker threads exist, so none of them gets an arena of its own.
    limit_malloc_arenas(app.settings.server.malloc_arenas)
    release_free_memory()  # start-up (migrations, the first password hash) is over
    server = make_server(app, host, port)
    housekeeper = Housekeeper(app.services, app.settings.maintenance.housekeeping_seconds)

    def stop(signum: int, _frame: FrameType | None) -> None:
        log.info("signal %s: stopping", signum)
        threading.Thread(target=server.stop, daemon=True).start()

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
    try:
        server.prepare()
        scheme = "https" if server.ssl_adapter else "http"
        bound = server.bind_addr
        print(f"davserver listening on {scheme}://{bound[0]}:{bound[1]}/", flush=True)
        housekeeper.start()
        server.serve()
    finally:
        housekeeper.stop()
        server.stop()
        app.close()
