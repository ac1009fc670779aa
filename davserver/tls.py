"""TLS: the certificate and key the server serves with.

They are checked before start-up (``check_tls``), so the server never comes up without them,
and read again while it runs (``CertificateReloader``), so a renewed certificate (certbot,
acme.sh, an internal CA's rotation) is served without a restart.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import ssl
import threading

from cheroot import wsgi
from cheroot.ssl.builtin import BuiltinSSLAdapter

from davserver.config import ConfigError, ServerSettings

log = logging.getLogger(__name__)

# What identifies a version of a file: os.stat follows symlinks, and certbot's live/ links
# move to new files in archive/ on each renewal.
_Stamp = tuple[tuple[int, int, int], ...]


def tls_enabled(settings: ServerSettings) -> bool:
    return bool(settings.ssl_certificate and settings.ssl_private_key)


def check_tls(settings: ServerSettings) -> None:
    """ConfigError unless TLS is off, or its certificate and key can be read and belong
    together; checked before start-up, so the server never comes up without them."""
    if tls_enabled(settings):
        _check_pair(settings.ssl_certificate, settings.ssl_private_key)


def warn_of_plain_http(settings: ServerSettings) -> None:
    """Log a warning when the server would answer other machines over plain HTTP, with no
    proxy in front (``server.trusted_proxies``) that could be speaking TLS to them."""
    if tls_enabled(settings) or settings.trusted_proxies or _is_loopback(settings.host):
        return
    log.warning(
        "serving plain HTTP on %s: Basic passwords cross the network in clear text, and"
        " Windows will not send them at all; set server.ssl_certificate and"
        " server.ssl_private_key, or serve behind a TLS proxy (server.trusted_proxies)",
        settings.host,
    )


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a name: it may well resolve to an outside address
        return False


def make_adapter(settings: ServerSettings) -> BuiltinSSLAdapter:
    """cheroot's TLS adapter for the certificate and key as they are now; ConfigError (as
    ``check_tls``) when they cannot be used. The pair is loaded once; only a pair that fails
    is loaded again, by ``_check_pair``, to say what is wrong with it."""
    certificate, private_key = settings.ssl_certificate, settings.ssl_private_key
    try:
        # cheroot passes the password on to SSLContext.load_cert_chain, which takes a callable
        # too (its annotation says str or bytes).
        return BuiltinSSLAdapter(
            certificate,
            private_key,
            private_key_password=_no_passphrase,  # type: ignore[arg-type]
        )
    except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
        _check_pair(certificate, private_key)
        raise ConfigError(f"server.ssl_certificate and ssl_private_key: {exc}") from None


def _check_pair(certificate: str, private_key: str) -> None:
    for option, path in (("ssl_certificate", certificate), ("ssl_private_key", private_key)):
        try:
            with open(path, "rb"):
                pass
        except OSError as exc:
            raise ConfigError(f"server.{option}: cannot read {path}: {exc.strerror}") from None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(certificate, private_key, password=_no_passphrase)
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


class CertificateReloader:
    """Keeps a TLS server on the current contents of its certificate and key files.

    Every ``server.tls_reload_seconds`` (and at once on ``reload_now``, which SIGHUP calls) the
    two files are looked at; when either changed, the pair is loaded and replaces the server's
    TLS adapter, which new connections then use (open ones keep theirs). A pair that does not
    load, such as a renewal caught between writing the certificate and writing its key, is
    logged once and the certificate in service kept; the next look tries again.
    """

    def __init__(self, server: wsgi.Server, settings: ServerSettings) -> None:
        self.server = server
        self.settings = settings
        self.every = settings.tls_reload_seconds
        self._loaded = self._stamp()
        self._refused: _Stamp | None = None
        self._wake = threading.Event()
        self._force = False
        self._stopped = False
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="tls-reload", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stopped = True
        self._wake.set()
        if self._thread is not None:
            self._thread.join()

    def reload_now(self) -> None:
        """Load the pair again even if the files look unchanged (from a signal handler)."""
        self._force = True
        self._wake.set()

    def check(self, *, force: bool = False) -> bool:
        """Load the pair if it changed (or ``force``); whether the server now serves it."""
        stamp = self._stamp()
        if not force and stamp in (self._loaded, self._refused):
            return False
        try:
            adapter = make_adapter(self.settings)
        except ConfigError as exc:
            self._refused = stamp
            log.warning("TLS: %s; still serving the certificate loaded before", exc)
            return False
        self.server.ssl_adapter = adapter
        self._loaded, self._refused = stamp, None
        log.info("TLS: serving the certificate in %s as loaded now", self.settings.ssl_certificate)
        return True

    def _loop(self) -> None:
        while True:
            self._wake.wait(self.every if self.every > 0 else None)
            self._wake.clear()
            if self._stopped:
                return
            force, self._force = self._force, False
            try:
                self.check(force=force)
            except Exception:  # the next look tries again; the server goes on meanwhile
                log.exception("TLS: reading the certificate again failed")

    def _stamp(self) -> _Stamp:
        stamps = []
        for path in (self.settings.ssl_certificate, self.settings.ssl_private_key):
            try:
                info = os.stat(path)
            except OSError:
                stamps.append((0, 0, 0))
                continue
            stamps.append((info.st_ino, info.st_size, info.st_mtime_ns))
        return tuple(stamps)
