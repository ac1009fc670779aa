"""Who is asking: every request's Authorization header turned into an actor.

Accepted: ``Basic`` with a password, or with an API key in the password's place (DAV clients),
and ``Bearer`` with an access token from /api/v1/token (scripts). This replaces WsgiDAV's
HTTPAuthenticator and its domain controller, which know neither API keys, tokens nor
throttling. Every failure looks the same to the client: unknown user, wrong password, revoked
key, malformed header. The actor is attached to its client session and put in
``environ["davserver.actor"]``; WsgiDAV gets the username as its lock principal.
"""

from __future__ import annotations

import base64
import binascii
from typing import Any

from davserver.errors import Unauthorized
from davserver.services.accounts import AccountService
from davserver.services.actor import ENVIRON_KEY, Actor
from davserver.services.apikeys import KEY_MARKER
from davserver.services.sessions import SessionService
from davserver.services.tokens import TokenService

# Longest Authorization header read; a Basic password is capped far below this anyway.
_MAX_HEADER = 8192


class Authenticator:
    def __init__(
        self,
        accounts: AccountService,
        tokens: TokenService,
        sessions: SessionService,
        *,
        realm: str,
    ) -> None:
        self.accounts = accounts
        self.tokens = tokens
        self.sessions = sessions
        self.realm = realm

    @property
    def challenges(self) -> list[tuple[str, str]]:
        """The WWW-Authenticate headers of a 401."""
        return [
            ("WWW-Authenticate", f'Basic realm="{self.realm}", charset="UTF-8"'),
            ("WWW-Authenticate", f'Bearer realm="{self.realm}"'),
        ]

    def identify(self, environ: dict[str, Any]) -> Actor:
        """The actor for this request, recorded in ``environ``.

        Raises Unauthorized (no, malformed or invalid credentials) or TooManyRequests.
        """
        header = environ.get("HTTP_AUTHORIZATION", "")
        if not header or len(header) > _MAX_HEADER:
            raise Unauthorized("authentication required")
        scheme, _, value = header.strip().partition(" ")
        client = {
            "remote_addr": environ.get("REMOTE_ADDR"),
            "user_agent": environ.get("HTTP_USER_AGENT"),
        }
        scheme = scheme.lower()
        if scheme == "basic":
            username, password = _basic_credentials(value.strip())
            actor = self.accounts.authenticate_basic(username, password, **client)
        elif scheme == "bearer" and value.strip().startswith(KEY_MARKER):
            raise Unauthorized(
                "an API key is not a Bearer token: send it as the password of Basic "
                "authentication, with your username (curl -u USER:dav_...)"
            )
        elif scheme == "bearer" and value.strip():
            actor = self.tokens.authenticate(value.strip(), **client)
        else:
            raise Unauthorized("unsupported authentication scheme")
        actor = self.sessions.attach(actor)
        environ[ENVIRON_KEY] = actor
        environ["wsgidav.auth.user_name"] = actor.username
        environ["wsgidav.auth.realm"] = self.realm
        environ["wsgidav.auth.roles"] = sorted(actor.roles)
        environ["wsgidav.auth.permissions"] = None
        return actor


def _basic_credentials(value: str) -> tuple[str, str]:
    """(username, password) from a Basic credential; Unauthorized when it is malformed."""
    try:
        raw = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise Unauthorized("malformed Basic credentials") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        text = raw.decode("iso-8859-1")  # clients predating RFC 7617's charset
    username, colon, password = text.partition(":")
    if not colon or not username:
        raise Unauthorized("malformed Basic credentials")
    return username, password
