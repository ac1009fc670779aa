"""Serving the application over HTTP(S) with cheroot."""

from __future__ import annotations

import logging
import signal
import ssl
import threading
from collections.abc import Callable
from types import FrameType

from cheroot import connections, wsgi
from cheroot.ssl.builtin import BuiltinSSLAdapter

from davserver.app import Application
from davserver.config import ConfigError, ServerSettings
from davserver.housekeeping import Housekeeper
from davserver.http_request import MAX_HEADER_BYTES, Connection, ConnectionManager, Deadlines
from davserver.memory import fix_malloc_thresholds, limit_malloc_arenas, release_free_memory

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

    def stop(self) -> None:
        super().stop()
        if self.deadlines is not None:
            self.deadlines.close()


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
    server.deadlines = Deadlines(settings.header_timeout)
    if tls_enabled(settings):
        server.ssl_adapter = BuiltinSSLAdapter(settings.ssl_certificate, settings.ssl_private_key)
    return server


def tls_enabled(settings: ServerSettings) -> bool:
    return bool(settings.ssl_certificate and settings.ssl_private_key)


def check_tls(settings: ServerSettings) -> None:
    """ConfigError unless TLS is off, or its certificate and key can be read and belong
    together; checked before start-up, so the server never comes up without them."""
    if not tls_enabled(settings):
        return
    for option, path in (
        ("ssl_certificate", settings.ssl_certificate),
        ("ssl_private_key", settings.ssl_private_key),
    ):
        try:
            with open(path, "rb"):
                pass
        except OSError as exc:
            raise ConfigError(f"server.{option}: cannot read {path}: {exc.strerror}") from None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(
            settings.ssl_certificate, settings.ssl_private_key, password=_no_passphrase
        )
    except ssl.SSLError as exc:
        if exc.reason == "KEY_VALUES_MISMATCH":
            raise ConfigError(
                "server.ssl_private_key is not the key of server.ssl_certificate"
            ) from None
        raise ConfigError(
            f"server.ssl_certificate and ssl_private_key: not a PEM certificate and its "
            f"private key ({exc.reason or exc})"
        ) from None


def _no_passphrase() -> str:
    """Asked for an encrypted key's passphrase: OpenSSL would prompt on the terminal (twice,
    the check and the server), and without one fail with EINVAL and a traceback."""
    raise ConfigError(
        "server.ssl_private_key is encrypted, and the server has no passphrase to give:"
        " store it decrypted, readable only by the server (openssl pkey -in KEY -out NEW)"
    )


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
    """Serve until SIGINT or SIGTERM, then finish open requests and close.

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
    stopping = threading.Event()
    # Stops the server from outside the signal handler: it closes the port, then waits for
    # the requests in progress (up to cheroot's shutdown_timeout) while serve() returns.
    stopper = threading.Thread(target=server.stop, name="stop", daemon=True)

    def stop(signum: int, _frame: FrameType | None) -> None:
        if stopping.is_set():  # Ctrl-C reaches a worker and its parent, which passes it on
            return
        stopping.set()
        log.info("signal %s: stopping", signum)
        stopper.start()

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
    try:
        try:
            server.prepare()
        except OSError as exc:
            raise CannotListen(host, port, exc) from exc
        ready(server)
        housekeeper.start()
        server.serve()
    finally:
        housekeeper.stop()
        if stopper.is_alive():
            # The requests in progress still use the application (its database, the logbook
            # rows of downloads): close it once they are done. A worker process leaves with
            # os._exit after this returns, which would cut them off.
            log.info("finishing open requests (at most %s s)", server.shutdown_timeout)
            stopper.join()
        server.stop()
        app.close()
