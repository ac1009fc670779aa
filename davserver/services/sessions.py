"""Client sessions: one row per run of requests from one client with one credential.

A password or API-key client (Basic on every request) is in the same session while it keeps
coming back from the same address with the same user agent and credential; after
``idle`` without a request its session is over and the next request starts a new one. A token
client's session is the one its refresh tokens belong to and lives as long as they do.

Every request needs its session id (the logbook rows point to it), so the id is kept in memory
and the row is touched at most once per ``touch_every``: a request costs no query here.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import threading
import time
import uuid
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from davserver.db import Base, Database
from davserver.db.types import utcnow
from davserver.errors import Forbidden, NotFound
from davserver.models import Op
from davserver.services.actor import Actor
from davserver.services.audit import record_audit

_ClientKey = tuple[uuid.UUID, str, uuid.UUID | None, str, str | None, str]


class SessionService:
    def __init__(
        self,
        db: Database,
        *,
        idle: dt.timedelta,
        touch_every: dt.timedelta = dt.timedelta(seconds=60),
    ) -> None:
        self.db = db
        self.idle = idle
        self._touch_every = touch_every.total_seconds()
        # client key (or token session id) -> (session id, monotonic time of the last touch)
        self._recent: dict[Any, tuple[uuid.UUID, float]] = {}
        self._lock = threading.Lock()

    # -- the request path

    def attach(self, actor: Actor) -> Actor:
        """``actor`` with the id of its client's current session (started if there is none)."""
        if actor.session_id is not None:  # a token: its session exists already
            self._touch_token_session(actor.session_id)
            return actor
        key: _ClientKey = (
            actor.user_id,
            actor.auth_method,
            actor.api_key_id,
            (actor.user_agent or "")[:512],
            actor.remote_addr,
            actor.credential,
        )
        now = time.monotonic()
        recent = self._recent.get(key)
        if recent is not None and now - recent[1] < self._touch_every:
            return dataclasses.replace(actor, session_id=recent[0])
        session_id = self._touch_or_start(actor, key, recent[0] if recent else None)
        with self._lock:
            self._recent[key] = (session_id, now)
            if len(self._recent) > 50_000:
                self._recent.clear()
        return dataclasses.replace(actor, session_id=session_id)

    def _touch_or_start(self, actor: Actor, key: _ClientKey, known: uuid.UUID | None) -> uuid.UUID:
        now = utcnow()
        expires = now + self.idle
        with self.db.write() as session:
            if known is not None and self._extend(session, known, now, expires):
                return known
            found = session.scalar(
                _OPEN_CLIENT_SESSION,
                {
                    "user_id": key[0],
                    "method": key[1],
                    "key_id": key[2],
                    "ua": key[3],
                    "ip": key[4],
                    "now": now,
                },
            )
            if found is not None and self._extend(session, found, now, expires):
                return found
            return self.start(
                session,
                actor,
                expires_at=expires,
                auth_method=actor.auth_method,
                api_key_id=actor.api_key_id,
            )

    def _extend(
        self, session: Session, session_id: uuid.UUID, now: dt.datetime, expires: dt.datetime
    ) -> bool:
        result = session.execute(
            _EXTEND, {"session_id": session_id, "now": now, "expires": expires}
        )
        return bool(result.rowcount)  # type: ignore[attr-defined]

    def _touch_token_session(self, session_id: uuid.UUID) -> None:
        now = time.monotonic()
        recent = self._recent.get(session_id)
        if recent is not None and now - recent[1] < self._touch_every:
            return
        with self.db.write() as session:
            session.execute(_TOUCH, {"session_id": session_id, "now": utcnow()})
        with self._lock:
            self._recent[session_id] = (session_id, now)

    # -- starting, listing and ending

    def start(
        self,
        session: Session,
        actor: Actor,
        *,
        expires_at: dt.datetime,
        auth_method: str,
        api_key_id: uuid.UUID | None = None,
    ) -> uuid.UUID:
        """Insert a session row inside the caller's transaction, with its logbook row."""
        session_id = uuid.uuid4()
        now = utcnow()
        session.execute(
            _INSERT,
            {
                "id": session_id,
                "user_id": actor.user_id,
                "started_at": now,
                "last_seen_at": now,
                "expires_at": expires_at,
                "user_agent": (actor.user_agent or "")[:512],
                "ip": actor.remote_addr,
                "auth_method": auth_method,
                "api_key_id": api_key_id,
            },
        )
        record_audit(
            session,
            dataclasses.replace(actor, session_id=session_id),
            Op.SESSION_START,
            details={"auth_method": auth_method},
        )
        return session_id

    def list(self, user_id: uuid.UUID, *, include_ended: bool = False) -> list[dict[str, Any]]:
        """The user's sessions, newest first, each with ``active``."""
        now = utcnow()
        query = sa.select(_s).where(_s.c.user_id == user_id).order_by(_s.c.last_seen_at.desc())
        with self.db.connect() as conn:
            rows = conn.execute(query).mappings().all()
        out = []
        for row in rows:
            active = row["ended_at"] is None and (
                row["expires_at"] is None or row["expires_at"] > now
            )
            if active or include_ended:
                item = {k: row[k] for k in _PUBLIC_COLUMNS}
                item["active"] = active
                out.append(item)
        return out

    def end(self, actor: Actor, session_id: uuid.UUID) -> None:
        """End one of the actor's sessions (an admin may end anyone's) and revoke its tokens.

        A token client is refused from its next request on; a password or key client simply
        starts a new session with its next request, since its credential is still valid.
        NotFound when there is no such session (of the actor's), or it has ended already: a
        second DELETE answers as the API's other ones do; Forbidden, signed in with an API key,
        for another session than the key's own. The logbook row names the user
        whose session it was, who is not the actor when an admin ends it.
        """
        now = utcnow()
        with self.db.write() as session:
            found = session.execute(
                sa.select(_s.c.user_id, _u.c.username)
                .join(_u, _u.c.id == _s.c.user_id)
                .where(_s.c.id == session_id)
            ).first()
            if found is None or (found.user_id != actor.user_id and not actor.is_admin):
                raise NotFound("no such session")
            if actor.auth_method == "apikey" and session_id != actor.session_id:
                # A key given out for a day (or stolen) would sign its user's clients out.
                raise Forbidden(
                    "an API key can end only its own session: sign in with your password to"
                    " end another"
                )
            ended = session.execute(
                _s.update()
                .where(_s.c.id == session_id, _s.c.ended_at.is_(None))
                .values(ended_at=now)
            )
            if not ended.rowcount:  # type: ignore[attr-defined]
                raise NotFound("the session has ended already")
            session.execute(
                _rt.update()
                .where(_rt.c.session_id == session_id, _rt.c.revoked_at.is_(None))
                .values(revoked_at=now)
            )
            record_audit(
                session,
                actor,
                Op.SESSION_END,
                details={
                    "session_id": str(session_id),
                    "user": found.username,
                    "user_id": str(found.user_id),
                },
            )
        with self._lock:
            self._recent = {k: v for k, v in self._recent.items() if v[0] != session_id}


_s = Base.metadata.tables["sessions"]
_rt = Base.metadata.tables["refresh_tokens"]
_u = Base.metadata.tables["users"]
_PUBLIC_COLUMNS = (
    "id",
    "auth_method",
    "started_at",
    "last_seen_at",
    "expires_at",
    "ended_at",
    "user_agent",
    "ip",
)
_INSERT = _s.insert()
_KEY_ID = sa.bindparam("key_id", type_=sa.Uuid)
_IP = sa.bindparam("ip", type_=_s.c.ip.type)
_OPEN_CLIENT_SESSION = (
    sa.select(_s.c.id)
    .where(
        _s.c.user_id == sa.bindparam("user_id"),
        _s.c.auth_method == sa.bindparam("method"),
        sa.or_(
            _s.c.api_key_id == _KEY_ID,
            sa.and_(_s.c.api_key_id.is_(None), _KEY_ID.is_(None)),
        ),
        _s.c.user_agent == sa.bindparam("ua"),
        sa.or_(_s.c.ip == _IP, sa.and_(_s.c.ip.is_(None), _IP.is_(None))),
        _s.c.ended_at.is_(None),
        _s.c.expires_at > sa.bindparam("now"),
    )
    .order_by(_s.c.last_seen_at.desc())
    .limit(1)
)
_EXTEND = (
    _s.update()
    .where(
        _s.c.id == sa.bindparam("session_id"),
        _s.c.ended_at.is_(None),
        _s.c.expires_at > sa.bindparam("now"),
    )
    .values(last_seen_at=sa.bindparam("now"), expires_at=sa.bindparam("expires"))
)
_TOUCH = (
    _s.update()
    .where(_s.c.id == sa.bindparam("session_id"), _s.c.ended_at.is_(None))
    .values(last_seen_at=sa.bindparam("now"))
)
