"""The logbook: every state change is recorded in the same transaction as the change (an event
that changes nothing, such as a download, in batches: ``ReadLog``), and read back by user,
item, operation and time (``read_logbook``: ``davserver audit``, and ``GET /api/v1/audit``)."""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import threading
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, TypedDict, Unpack

import sqlalchemy as sa
from sqlalchemy.orm import Session

from davserver.db import Base, Database
from davserver.db.batches import delete_in_batches, update_in_batches
from davserver.db.types import utcnow
from davserver.errors import BadRequest, StorageFull
from davserver.models import LogEntry, LoginSession, Op, User
from davserver.services.actor import Actor


class LogFields(TypedDict, total=False):
    """What a logbook row may say besides who did what (each None when not given)."""

    node_id: uuid.UUID | None
    version_id: uuid.UUID | None
    package_id: uuid.UUID | None
    details: dict[str, Any] | None
    remote_addr: str | None
    user_agent: str | None
    account_id: uuid.UUID | None  # see _account


def record_audit(
    session: Session, actor: Actor | None, op: Op, **fields: Unpack[LogFields]
) -> None:
    """Add a logbook row to ``session``; it commits or rolls back with the change itself.

    ``remote_addr`` and ``user_agent`` describe the client when there is no actor (a failed
    login); with an actor, the actor's own are used.
    """
    session.execute(_INSERT, _row(actor, op, **fields))


def record_audits(session: Session, actor: Actor | None, op: Op, rows: Iterable[LogFields]) -> None:
    """``record_audit`` of many rows of one ``op`` at once (one executemany)."""
    params = [_row(actor, op, **fields) for fields in rows]
    if params:
        session.execute(_INSERT, params)


def _row(actor: Actor | None, op: Op, **fields: Unpack[LogFields]) -> dict[str, Any]:
    client = fields.get("user_agent")
    return {
        "occurred_at": utcnow(),
        "user_id": actor.user_id if actor else None,
        "session_id": actor.session_id if actor else None,
        "op_type": op.value,
        "node_id": fields.get("node_id"),
        "version_id": fields.get("version_id"),
        "package_id": fields.get("package_id"),
        "remote_addr": actor.remote_addr if actor else fields.get("remote_addr"),
        "user_agent": ((actor.user_agent if actor else client) or "")[:512] or None,
        "details": fields.get("details") or {},
        "account_id": fields.get("account_id") or _account(op, fields.get("details")),
    }


def _account(op: Op, details: dict[str, Any] | None) -> uuid.UUID | None:
    """The account a row of ``op`` is about, when its details name one by id, as every row of
    ``_ABOUT_AN_ACCOUNT`` does. A failed sign-in and a ban name it by name, and their writer
    (``LoginThrottle``) gives its id."""
    if op not in _ABOUT_AN_ACCOUNT or not details or "user_id" not in details:
        return None
    return uuid.UUID(details["user_id"])


def prune_logbook(db: Database, older_than_days: int) -> int:
    """Delete the logbook rows older than ``older_than_days`` (a batch per transaction), and
    say so in a row of its own when any went; how many."""
    table = Base.metadata.tables[LogEntry.__tablename__]
    cutoff = utcnow() - dt.timedelta(days=older_than_days)
    deleted = delete_in_batches(db, table, table.c.occurred_at < cutoff)
    if deleted:
        with db.write() as session:
            details = {"rows": deleted, "older_than_days": older_than_days}
            record_audit(session, None, Op.MAINTENANCE_LOGBOOK_PRUNE, details=details)
    return deleted


def forget_client_details(db: Database, older_than_days: int) -> int:
    """Blank the client address and user agent of the sessions last seen before
    ``older_than_days`` (the logbook's retention): they name clients as the logbook rows did,
    and the rows that point at a session keep pointing at it; how many."""
    table = Base.metadata.tables[LoginSession.__tablename__]
    cutoff = utcnow() - dt.timedelta(days=older_than_days)
    named = sa.or_(table.c.ip.is_not(None), table.c.user_agent != "")
    where = sa.and_(table.c.last_seen_at < cutoff, named)
    return update_in_batches(db, table, where, {"ip": None, "user_agent": ""})


_INSERT = sa.insert(Base.metadata.tables[LogEntry.__tablename__])
log = logging.getLogger(__name__)

# What someone does to another's account: each row names the account by its id in details.
_TO_THE_ACCOUNT = tuple(
    o for o in Op if o.value.startswith(("user:", "apikey:")) or o is Op.SESSION_END
)
# What happens to an account with nobody signed in.
_WITH_NOBODY = (Op.LOGIN_FAILURE, Op.LOGIN_BAN, Op.TOKEN_REUSE)
# The rows whose account_id names the account they are about.
_ABOUT_AN_ACCOUNT = frozenset((*_TO_THE_ACCOUNT, *_WITH_NOBODY))


class ReadLog:
    """Logbook rows of events that change nothing (downloads), written in batches.

    A change's row goes in the change's own transaction. A download changes nothing, and a
    transaction of its own per GET more than doubled the server's work for a small file
    (measured in process: 0.41 -> 1.01 ms of CPU), and queued every GET behind SQLite's one
    writer. So each row is stamped when the bytes start to go out and kept here; a thread
    writes what is pending, in one transaction, every ``interval`` seconds or once
    ``batch`` rows wait, and ``close`` writes the rest. A process that dies loses at most
    the last ``interval`` of them. When the database has no room left the rows are dropped
    with a warning: reading must not stop for want of room to say so.
    """

    def __init__(self, db: Database, *, interval: float = 1.0, batch: int = 200) -> None:
        self._db = db
        self._interval = interval
        self._batch = batch
        self._pending: list[dict[str, Any]] = []
        self._lock = threading.Lock()  # the pending rows
        self._writing = threading.Lock()  # one batch written at a time
        self._wake = threading.Event()
        self._closed = threading.Event()
        self._thread: threading.Thread | None = None

    def add(
        self,
        actor: Actor | None,
        op: Op,
        *,
        node_id: uuid.UUID | None = None,
        version_id: uuid.UUID | None = None,
        package_id: uuid.UUID | None = None,
        details: dict[str, Any] | None = None,
    ) -> None:
        row = _row(
            actor,
            op,
            node_id=node_id,
            version_id=version_id,
            package_id=package_id,
            details=details,
        )
        with self._lock:
            self._pending.append(row)
            if self._thread is None and not self._closed.is_set():
                # Started on first use: after a fork, in the process that serves.
                self._thread = threading.Thread(target=self._run, name="read-log", daemon=True)
                self._thread.start()
            if len(self._pending) >= self._batch:
                self._wake.set()

    def flush(self) -> int:
        """Write what is pending now, and wait for a batch the thread is writing; how many
        rows this call wrote."""
        with self._writing:
            return self._write()

    def _write(self) -> int:
        with self._lock:
            rows, self._pending = self._pending, []
        if not rows:
            return 0
        for attempt in range(2):
            try:
                with self._db.write() as session:
                    if attempt:
                        _forget_what_is_gone(session, rows)
                    session.execute(_INSERT, rows)
                return len(rows)
            except StorageFull:
                log.warning("no room in the database for %d logbook rows of downloads", len(rows))
                return 0
            except sa.exc.DBAPIError:
                # Once more, without the references a row can no longer have; a deadlock
                # (PostgreSQL aborted this insert) is worth another try too.
                if attempt == 0:
                    continue
                log.exception("%d logbook rows of downloads could not be written", len(rows))
            except Exception:
                log.exception("%d logbook rows of downloads could not be written", len(rows))
            return 0
        raise AssertionError("unreachable")

    def close(self) -> None:
        self._closed.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
        self.flush()

    def _run(self) -> None:
        while not self._closed.is_set():
            self._wake.wait(self._interval)
            self._wake.clear()
            self.flush()


# What a logbook row refers to with a foreign key, each ON DELETE SET NULL: its user and
# session, which are never deleted. Its node, version and package are plain ids, kept when
# those go (migration 0008).
_REFERENCES = tuple(
    (column.name, next(iter(column.foreign_keys)).column)
    for column in Base.metadata.tables[LogEntry.__tablename__].columns
    if column.foreign_keys
)


def _forget_what_is_gone(session: Session, rows: list[dict[str, Any]]) -> None:
    """Clear each reference of ``rows`` whose row was deleted since the download: what that
    deletion did to the rows already written. Without this, one such row failed the whole
    batch (when files, versions and packages were references too)."""
    for name, target in _REFERENCES:
        wanted = list({row[name] for row in rows if row[name] is not None})
        there: set[Any] = set()
        for start in range(0, len(wanted), 1000):
            batch = wanted[start : start + 1000]
            there.update(session.scalars(sa.select(target).where(target.in_(batch))))
        for row in rows:
            if row[name] is not None and row[name] not in there:
                row[name] = None


MAX_ROWS = 10_000


@dataclass(frozen=True)
class LogbookRow:
    """One logbook row as it is shown: the user by name, the operation, what it touched."""

    id: int
    occurred_at: dt.datetime
    user: str | None
    op: str
    node_id: uuid.UUID | None
    session_id: uuid.UUID | None
    remote_addr: str | None
    details: dict[str, Any]
    version_id: uuid.UUID | None
    package_id: uuid.UUID | None
    user_agent: str | None

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# A part of a query for the logbook's rows: the one operation its rows have (None: any),
# and what else picks them.
_Branch = tuple[Op | None, sa.ColumnElement[bool]]


def _about(user_id: uuid.UUID, others: bool) -> list[_Branch]:
    """The rows about ``user_id``'s account that another user's id (or none) is on: one
    statement on the index by account. What happens to it with nobody signed in has no user:
    a failed sign-in under its name, its ban, a refresh token of theirs used again (which ends
    their session). With ``others``, ``_TO_THE_ACCOUNT`` too (not the user's own: those are
    theirs)."""
    log = LogEntry.__table__
    with_nobody = sa.and_(
        log.c.user_id.is_(None), log.c.op_type.in_([o.value for o in _WITH_NOBODY])
    )
    if others:
        by_others = sa.and_(
            log.c.user_id.is_distinct_from(user_id),
            log.c.op_type.in_([o.value for o in _TO_THE_ACCOUNT]),
        )
        return [(None, sa.and_(log.c.account_id == user_id, sa.or_(with_nobody, by_others)))]
    return [(None, sa.and_(log.c.account_id == user_id, with_nobody))]


def _operations(op: str) -> list[Op]:
    """The operations ``op`` names: itself, or the family it begins (``share``: every
    ``share:...``). BadRequest when it names none."""
    family = op.rstrip(":")
    found = [known for known in Op if known == family or known.startswith(family + ":")]
    if not found:
        # A typo ("shared") would otherwise be an empty answer, as if nothing happened.
        areas = ", ".join(sorted({known.split(":")[0] for known in Op}))
        raise BadRequest(f"no operation {op!r}; operations start with {areas}")
    return found


def read_logbook(
    db: Database,
    *,
    user_id: uuid.UUID | None = None,
    about_user: bool = False,
    node_id: uuid.UUID | None = None,
    op: str | None = None,
    since: dt.datetime | None = None,
    until: dt.datetime | None = None,
    before: int | None = None,
    limit: int = 100,
) -> list[LogbookRow]:
    """Logbook rows, newest first, at most ``limit`` (1 to MAX_ROWS): of one user (with what
    happened to their account with nobody signed in: see ``_about``), about one
    file or folder, of one operation (``share:grant:create``) or family of them (``share``;
    BadRequest for one no row can have), from ``since`` and before ``until``.

    With ``about_user``, the user's rows include what others did to their account
    (``_TO_THE_ACCOUNT``: an admin disabled it, made them a key, ended their session), with
    those others' addresses: an admin's view.

    ``before`` is the id of a row: only the rows after it in this order (older ones), so that
    the id of a page's last row asks for the next page; BadRequest when no row has that id
    (an empty page would look like the end of the logbook).

    However large the logbook, a page reads about ``limit`` rows of an index per part of the
    question (``_newest``): the user's own rows, the rows about their account, each
    operation of a family.
    """
    if not 1 <= limit <= MAX_ROWS:
        raise BadRequest(f"limit is a whole number from 1 to {MAX_ROWS}")
    if since is not None and until is not None and until <= since:
        # An empty answer would look as if nothing happened then.
        raise BadRequest("until must be later than since")
    log = LogEntry.__table__
    ops = _operations(op) if op else None
    where: list[sa.ColumnElement[bool]] = []
    if node_id is not None:
        where.append(log.c.node_id == node_id)
    if since is not None:
        where.append(log.c.occurred_at >= since)
    if until is not None:
        where.append(log.c.occurred_at < until)
    if user_id is not None:
        branches: list[_Branch] = [(None, log.c.user_id == user_id)]
        branches += _about(user_id, about_user)
    else:
        branches = [(None, sa.true())]
    # The rows the caller may read, of any operation: only one of them is a cursor (any
    # other answered, by its error or by where the page stopped, whether a row of that
    # number existed, and when).
    readable = sa.or_(*(condition for _, condition in branches))
    if ops is not None:
        branches = _narrowed(branches, ops)
    with db.connect() as conn:
        if before is not None:
            then = conn.scalar(sa.select(log.c.occurred_at).where(log.c.id == before, readable))
            if then is None:
                raise BadRequest(f"no logbook row {before} to read before")
            # The first condition alone is a range of every index by time; the second is exact.
            where.append(log.c.occurred_at <= then)
            where.append(
                sa.or_(
                    log.c.occurred_at < then, sa.and_(log.c.occurred_at == then, log.c.id < before)
                )
            )
        return _newest(conn, branches, where, limit)


def _narrowed(branches: list[_Branch], ops: list[Op]) -> list[_Branch]:
    """``branches`` for the rows of ``ops`` only: one per operation where a branch took any
    (so each walks the index by operation), none where a branch's own operation is not one."""
    narrowed: list[_Branch] = []
    for own, condition in branches:
        if own is None:
            narrowed += [(o, condition) for o in ops]
        elif own in ops:
            narrowed.append((own, condition))
    return narrowed


def _newest(
    conn: sa.Connection, branches: list[_Branch], where: list[sa.ColumnElement[bool]], limit: int
) -> list[LogbookRow]:
    """The newest ``limit`` rows of all ``branches`` together, each meeting ``where``.

    Each branch is its own ordered, limited statement, which the database answers by walking
    one index backwards (by user, by operation, by time) and stopping after ``limit`` rows. One
    statement with an OR of them could walk none, and read the whole logbook for a rare
    operation or a quiet user. Once ``limit`` rows are in hand, a later branch only needs rows
    as new as the oldest of them, so it stops there. The branches are disjoint: no row comes
    twice."""
    log, users = LogEntry.__table__, User.__table__
    columns = (
        log.c.id,
        log.c.occurred_at,
        users.c.username,
        log.c.op_type,
        log.c.node_id,
        log.c.session_id,
        log.c.remote_addr,
        log.c.details,
        log.c.version_id,
        log.c.package_id,
        log.c.user_agent,
    )
    found: list[LogbookRow] = []
    for own, condition in branches:
        query = (
            sa.select(*columns)
            .select_from(log.outerjoin(users, users.c.id == log.c.user_id))
            .where(condition, *where)
            .order_by(log.c.occurred_at.desc(), log.c.id.desc())
            .limit(limit)
        )
        if own is not None:
            query = query.where(log.c.op_type == own.value)
        if len(found) == limit:
            query = query.where(log.c.occurred_at >= found[-1].occurred_at)
        found += (LogbookRow(*row) for row in conn.execute(query))
        found.sort(key=lambda row: (row.occurred_at, row.id), reverse=True)
        del found[limit:]
    return found
