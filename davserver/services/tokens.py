"""Bearer tokens for scripts: short-lived signed access tokens and rotating refresh tokens.

An access token is a JWT (HS256) naming the user (``sub``), the session (``sid``) and itself
(``jti``); it is checked on every request against the user, the session and the revoked-token
list, so a disabled user, an ended session or a revoked token is refused on the next request.
A refresh token is an opaque random string of which only the SHA-256 is stored. Each works once:
refreshing replaces it with a new one in the same family; presenting a replaced one means it was
copied, so the whole family is revoked and its session ended.

The signing key comes from the settings or, when they give none, is generated once and kept in
the database, so every server process of a deployment accepts the others' tokens.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import secrets
import uuid
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from davserver.db import Base, Database
from davserver.db.batches import delete_in_batches
from davserver.db.dialect import for_bind, insert_or_ignore
from davserver.db.types import utcnow
from davserver.errors import Unauthorized
from davserver.models import Op
from davserver.services.accounts import AccountService, actor_from_rows, user_with_roles
from davserver.services.actor import Actor
from davserver.services.audit import record_audit
from davserver.services.instance import shared_value
from davserver.services.sessions import SessionService

REFRESH_PREFIX = "drt_"
_ALGORITHM = "HS256"
_SECRET_NAME = "access-token-signing-key"


@dataclass(frozen=True)
class TokenPair:
    access_token: str
    refresh_token: str
    expires_in: int
    session_id: uuid.UUID

    def as_json(self) -> dict[str, Any]:
        return {
            "access_token": self.access_token,
            "token_type": "Bearer",
            "expires_in": self.expires_in,
            "refresh_token": self.refresh_token,
            "session_id": str(self.session_id),
        }


def _sha256(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


class TokenService:
    def __init__(
        self,
        db: Database,
        accounts: AccountService,
        sessions: SessionService,
        *,
        access_lifetime: dt.timedelta,
        refresh_lifetime: dt.timedelta,
        secret: str = "",
    ) -> None:
        self.db = db
        self.accounts = accounts
        self.sessions = sessions
        self.access_lifetime = access_lifetime
        self.refresh_lifetime = refresh_lifetime
        self._secret = secret

    @property
    def secret(self) -> str:
        if not self._secret:
            self._secret = self._shared_secret()
        return self._secret

    def _shared_secret(self) -> str:
        return shared_value(self.db, _SECRET_NAME, lambda: secrets.token_urlsafe(48))

    # -- issuing

    def login(
        self,
        username: str,
        password: str,
        *,
        remote_addr: str | None = None,
        user_agent: str | None = None,
    ) -> TokenPair:
        """A new session with its first token pair, for a valid username and password.

        Raises Unauthorized or TooManyRequests (throttled like every password check).
        """
        actor, verified = self.accounts.sign_in(
            username, password, remote_addr=remote_addr, user_agent=user_agent
        )
        now = utcnow()
        with self.db.write() as session:
            # A password change or a disable since the check would not end this session.
            self.accounts.still_signed_in(session, actor, verified)
            session_id = self.sessions.start(
                session, actor, expires_at=now + self.refresh_lifetime, auth_method="token"
            )
            actor = dataclasses.replace(actor, session_id=session_id, auth_method="token")
            _, refresh = self._new_refresh(session, actor, family_id=uuid.uuid4(), now=now)
            record_audit(session, actor, Op.TOKEN_ISSUE)
        return self._pair(actor, refresh, now)

    def refresh(
        self, refresh_token: str, *, remote_addr: str | None = None, user_agent: str | None = None
    ) -> TokenPair:
        """Trade a refresh token for a new pair; a token used before revokes its whole family."""
        now = utcnow()
        with self.db.write() as session:
            row = session.execute(
                _REFRESH_ROW.with_for_update(),  # PostgreSQL; SQLite's writers queue anyway
                {"hash": _sha256(refresh_token)},
            ).first()
            if row is None or row.expires_at <= now:
                raise Unauthorized("unknown or expired refresh token")
            actor = None
            if row.revoked_at is None:
                actor = _token_actor(
                    session, row.user_id, row.session_id, "", remote_addr, user_agent
                )
            if actor is not None:
                new_id, token = self._new_refresh(session, actor, family_id=row.family_id, now=now)
                session.execute(
                    _rt.update()
                    .where(_rt.c.id == row.id)
                    .values(revoked_at=now, replaced_by_id=new_id)
                )
                session.execute(
                    _s.update()
                    .where(_s.c.id == row.session_id)
                    .values(last_seen_at=now, expires_at=now + self.refresh_lifetime)
                )
                record_audit(session, actor, Op.TOKEN_REFRESH)
            elif row.replaced_by_id is not None:
                # Used before: someone holds a copy. Revoke the family, and commit that.
                self._revoke_family(session, row.family_id, row.session_id, now)
                record_audit(
                    session,
                    None,
                    Op.TOKEN_REUSE,
                    details={
                        "user_id": str(row.user_id),
                        "family_id": str(row.family_id),
                        "session_id": str(row.session_id),
                    },
                    remote_addr=remote_addr,
                    user_agent=user_agent,
                )
        if actor is None:
            raise Unauthorized("this refresh token was revoked or already used")
        return self._pair(actor, token, now)

    def revoke(
        self,
        token: str,
        *,
        actor: Actor | None = None,
        remote_addr: str | None = None,
        user_agent: str | None = None,
    ) -> None:
        """Revoke a refresh token (its family and session) or an access token (just it).

        Without an ``actor`` the logbook row is the token's user's and session's, from the
        client at ``remote_addr``: whoever presents a token speaks for its session."""
        now = utcnow()

        def holder(user_id: uuid.UUID, session_id: uuid.UUID | None) -> Actor:
            if actor is not None:
                return actor
            return Actor(
                user_id,
                "",  # not in the row: the logbook keeps the user's id
                session_id=session_id,
                remote_addr=remote_addr,
                user_agent=user_agent,
                auth_method="token",
            )

        if token.startswith(REFRESH_PREFIX):
            with self.db.write() as session:
                row = session.execute(_REFRESH_ROW, {"hash": _sha256(token)}).first()
                if row is None:
                    return  # RFC 7009: an unknown token is not an error
                if self._revoke_family(session, row.family_id, row.session_id, now):
                    record_audit(
                        session,
                        holder(row.user_id, row.session_id),
                        Op.TOKEN_REVOKE,
                        details={"family_id": str(row.family_id)},
                    )
                # else revoked already: no row claims it was done again (anyone holding an
                # old token may ask, without signing in)
            return
        claims = self._claims(token)
        if claims is None:
            return
        revoker = holder(uuid.UUID(claims["sub"]), uuid.UUID(claims["sid"]))
        with self.db.write() as session:
            known = session.scalar(sa.select(_rev.c.jti).where(_rev.c.jti == claims["jti"]))
            if known is not None:
                return  # revoked already: no second row in the user's name
            session.execute(
                for_bind(_INSERT_REVOKED, session),
                {
                    "jti": claims["jti"],
                    "user_id": uuid.UUID(claims["sub"]),
                    "revoked_at": now,
                    "expires_at": dt.datetime.fromtimestamp(claims["exp"], dt.UTC),
                },
            )
            session.execute(_rev.delete().where(_rev.c.expires_at < now))
            record_audit(session, revoker, Op.TOKEN_REVOKE, details={"jti": claims["jti"]})

    def purge_expired(self) -> int:
        """Delete the refresh tokens past their expiry (the housekeeping sweep); how many. A
        token replaced by a refresh is kept until then to catch its reuse; after that it is
        refused as expired, row or not. An access token revoked early is kept until it would
        have expired, and deleted by the next revocation."""
        return delete_in_batches(self.db, _rt, _rt.c.expires_at < utcnow())

    # -- checking

    def authenticate(
        self, token: str, *, remote_addr: str | None = None, user_agent: str | None = None
    ) -> Actor:
        """The actor an access token speaks for; Unauthorized when it is no longer valid."""
        claims = self._claims(token)
        if claims is None:
            raise Unauthorized("invalid or expired access token")
        with self.db.connect() as conn:
            actor = _token_actor(
                conn,
                uuid.UUID(claims["sub"]),
                uuid.UUID(claims["sid"]),
                claims["jti"],
                remote_addr,
                user_agent,
            )
        if actor is None:
            raise Unauthorized("invalid or expired access token")
        return actor

    def _claims(self, token: str) -> dict[str, Any] | None:
        import jwt  # here, not at the top: a server whose clients send no tokens never loads it

        try:
            claims = jwt.decode(
                token,
                self.secret,
                algorithms=[_ALGORITHM],
                options={"require": ["exp", "sub", "sid", "jti"]},
            )
            uuid.UUID(claims["sub"]), uuid.UUID(claims["sid"])
        except (jwt.PyJWTError, ValueError, TypeError, KeyError):
            return None
        return claims if claims.get("typ") == "access" else None

    # -- pieces

    def _pair(self, actor: Actor, refresh: str, now: dt.datetime) -> TokenPair:
        import jwt  # here, not at the top: see _claims

        assert actor.session_id is not None
        expires = now + self.access_lifetime
        access = jwt.encode(
            {
                "typ": "access",
                "sub": str(actor.user_id),
                "sid": str(actor.session_id),
                "jti": uuid.uuid4().hex,
                "iat": int(now.timestamp()),
                "exp": int(expires.timestamp()),
            },
            self.secret,
            algorithm=_ALGORITHM,
        )
        return TokenPair(
            access, refresh, int(self.access_lifetime.total_seconds()), actor.session_id
        )

    def _new_refresh(
        self, session: Session, actor: Actor, *, family_id: uuid.UUID, now: dt.datetime
    ) -> tuple[uuid.UUID, str]:
        token = REFRESH_PREFIX + secrets.token_urlsafe(32)
        token_id = uuid.uuid4()
        session.execute(
            _rt.insert(),
            {
                "id": token_id,
                "user_id": actor.user_id,
                "session_id": actor.session_id,
                "family_id": family_id,
                "token_hash": _sha256(token),
                "issued_at": now,
                "expires_at": now + self.refresh_lifetime,
            },
        )
        return token_id, token

    def _revoke_family(
        self,
        session: Session,
        family_id: uuid.UUID,
        session_id: uuid.UUID | None,
        now: dt.datetime,
    ) -> int:
        """Revoke a family's refresh tokens and end its session; how many tokens were still
        live (0: revoked already)."""
        revoked = session.execute(
            _rt.update()
            .where(_rt.c.family_id == family_id, _rt.c.revoked_at.is_(None))
            .values(revoked_at=now)
        )
        if session_id is not None:
            session.execute(
                _s.update()
                .where(_s.c.id == session_id, _s.c.ended_at.is_(None))
                .values(ended_at=now)
            )
        return int(revoked.rowcount or 0)  # type: ignore[attr-defined]


def _token_actor(
    bind: Session | sa.Connection,
    user_id: uuid.UUID,
    session_id: uuid.UUID | None,
    jti: str,
    remote_addr: str | None,
    user_agent: str | None,
) -> Actor | None:
    """The actor of a token, when the account is active, the session open and the access
    token (``jti``; "" for a refresh) not revoked; else None."""
    if session_id is None:
        return None
    rows = bind.execute(
        _BEARER_CHECK,
        {"user_id": user_id, "session_id": session_id, "jti": jti, "now": utcnow()},
    ).all()
    if not rows or not rows[0].usable:
        return None
    return actor_from_rows(
        rows, remote_addr, user_agent, session_id=session_id, auth_method="token"
    )


_rt = Base.metadata.tables["refresh_tokens"]
_s = Base.metadata.tables["sessions"]
_rev = Base.metadata.tables["revoked_tokens"]
_INSERT_REVOKED = insert_or_ignore(_rev, "jti")
_REFRESH_ROW = sa.select(
    _rt.c.id,
    _rt.c.user_id,
    _rt.c.session_id,
    _rt.c.family_id,
    _rt.c.expires_at,
    _rt.c.revoked_at,
    _rt.c.replaced_by_id,
).where(_rt.c.token_hash == sa.bindparam("hash"))


def _bearer_check() -> sa.Select[Any]:
    """The user with roles, plus whether the session is open and the token not revoked."""
    users = user_with_roles()
    session_open = (
        sa.select(_s.c.id)
        .where(
            _s.c.id == sa.bindparam("session_id", type_=sa.Uuid),
            _s.c.user_id == users.selected_columns.id,
            _s.c.ended_at.is_(None),
            sa.or_(_s.c.expires_at.is_(None), _s.c.expires_at > sa.bindparam("now")),
        )
        .exists()
    )
    revoked = sa.select(_rev.c.jti).where(_rev.c.jti == sa.bindparam("jti")).exists()
    usable = sa.and_(users.selected_columns.is_active, session_open, ~revoked)
    return users.add_columns(sa.case((usable, True), else_=False).label("usable")).where(
        users.selected_columns.id == sa.bindparam("user_id", type_=sa.Uuid)
    )


_BEARER_CHECK = _bearer_check()
