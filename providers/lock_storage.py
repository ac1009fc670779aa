"""WebDAV lock storage in the database, so that every server process sees the same locks.

``SqlLockStorage`` implements the lock-storage interface that WsgiDAV 4.4.0's
``wsgidav.lock_man.lock_manager.LockManager`` calls (``LockStorageDict`` is the reference), on
the ``locks`` table (``davserver.models.DavLock``). Use it as
``LockManager(SqlLockStorage(db))`` or as the ``lock_storage`` config value.

Contract:

* A lock is a plain ``dict`` with exactly the keys ``root, type, scope, depth, owner, timeout,
  principal, expire, token``: ``root`` is a normalized URL path (``/a/b``, no trailing slash,
  ``/`` for the top), ``type`` is ``"write"``, ``scope`` is ``"exclusive"`` or ``"shared"``,
  ``depth`` is ``"0"`` or ``"infinity"``, ``owner`` is the client's ``<owner>`` XML as
  **bytes** (may be empty), ``timeout`` the granted lifetime in seconds (float), ``expire``
  its end as epoch seconds (float) and ``token`` an ``opaquelocktoken:`` URI.
* A lock is expired when ``0 <= expire < now``. Expired locks are never returned; ``get()``
  deletes an expired lock it finds, ``create()`` and ``cleanup()`` delete them all (so locks
  left to expire do not pile up in the table).
* ``create(path, lock)`` **mutates ``lock`` in place** (``LockManager`` returns its own dict):
  ``root`` becomes the normalized ``path``, ``timeout`` is clamped (``-1`` = infinite, or
  anything above ``max_timeout``, becomes ``max_timeout``), ``expire`` = now + timeout and
  ``token`` a fresh ``generate_lock_token()``. It returns the same dict.
* ``create()`` re-checks conflicts inside its own write transaction, because ``LockManager``
  checks them under a *process-local* lock only. A conflict is an unexpired lock whose root is
  the new root, or an ancestor of it with depth infinity, or (for a new depth-infinity lock) a
  descendant of it; an exclusive lock conflicts with any of those, a shared lock only with
  exclusive ones. On a conflict it raises ``DAVError(HTTP_LOCKED)`` with a ``lock-conflict``
  condition naming the conflicting roots. Writers that create locks serialize per namespace:
  on PostgreSQL with ``pg_advisory_xact_lock`` on the namespace's key, on SQLite through the
  ``BEGIN IMMEDIATE`` of ``Database.write()``. So two processes can never both hold an
  exclusive lock on one resource. Within a request scope ``create()`` also checks, in that
  transaction, that the item is still there (``LockSpace.exists``): a LOCK racing a MOVE or a
  DELETE of it through another process gets 404, not a lock on a name nothing has any more.
* ``refresh(token, *, timeout)`` sets a new timeout and expire and returns the lock. An unknown
  or expired token raises ``LockTokenError``, which is both a ``ValueError`` (as
  ``LockManager.refresh`` documents) and a ``DAVError(HTTP_PRECONDITION_FAILED)``, so a LOCK
  refresh that loses a race against expiry answers 412 rather than 500.
* ``delete(token)`` returns True when it removed an unexpired lock, else False.
* ``get_lock_list(path, *, include_root, include_children, token_only)`` returns the unexpired
  locks on ``path`` itself and/or below it (roots starting with ``path + "/"``; for ``/`` every
  other root), as dicts or, with ``token_only``, as tokens. It only reads (no purge), so a
  PROPFIND never takes the write lock.
* ``open()`` and ``close()`` do no I/O; the ``Database`` belongs to the caller and is not
  disposed. ``clear()`` deletes every lock.

Namespaces, mounts and request scopes: URL paths are per user in davserver (everyone has a
``/files/``), and one file can be reached by several URLs: alice's ``/files/a/doc`` is bob's
``/shared/alice/doc`` once shared with him, and an admin's ``/users/alice/a/doc``. A lock must
hold whichever URL it was taken through, so every URL is first turned into its ``LockKey``: the
namespace of the space the item lives in (its owner's, or its group's) and its *canonical* root,
the URL its owner (or group member) uses. ``LockSpace.key`` does that for one request
(``providers.lock_space``); ``OneNamespace`` is the identity in a single namespace. Locks are
stored canonically and handed back to WsgiDAV with roots in the requester's URLs. Where a shared
item is mounted (``/shared/alice/doc``) the folders above it are not reachable by its URL, so
depth-infinity locks on them are reported as locks on the mount itself, which is what they mean
to the requester.

``storage.begin_request(space)`` sets the space for one request and also lets the request read
each namespace's unexpired locks once, instead of running a query for each of the many
``get_lock_list`` calls WsgiDAV makes per request (one per member in a PROPFIND); any write
through the storage drops those snapshots. Outside a scope the namespace is ``""``, roots are
used as given, and every call queries.

The checks a request made of its write permission are remembered (``remember_check``), so
that each of its write transactions can make them again where they can no longer be
overtaken (``checks_to_repeat``, run by ``providers.lock_manager.LockManager.recheck``
through ``davserver.services.write_fence``): it waits for the lock writers of those
namespaces (PostgreSQL: the namespace's key, shared; SQLite: the write lock it holds), reads
their locks again and hands back the checks when a lock was taken since.

Root matching is exact and case-sensitive on both engines (SQLite's ``LIKE`` ignores ASCII case,
so the prefix matches are checked again in Python).
"""

from __future__ import annotations

import bisect
import contextvars
import datetime as dt
import math
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Final, Literal, Protocol, overload

import sqlalchemy as sa
from sqlalchemy.orm import Session
from wsgidav.dav_error import (
    HTTP_BAD_REQUEST,
    HTTP_FORBIDDEN,
    HTTP_LOCKED,
    HTTP_NOT_FOUND,
    HTTP_PRECONDITION_FAILED,
    DAVError,
    DAVErrorCondition,
    PRECONDITION_CODE_LockConflict,
    PRECONDITION_CODE_LockTokenMismatch,
)
from wsgidav.lock_man.lock_manager import (
    LockManager,
    generate_lock_token,
    normalize_lock_root,
    validate_lock,
)

from davserver.db import Base, Database
from davserver.models import DavLock, Op
from davserver.services.lock_rows import PG_LOCKS_CLASS, principal_turn, take_shared_turns

__all__ = [
    "LOCK_KEYS",
    "LockDict",
    "LockKey",
    "LockLogger",
    "LockSpace",
    "LockTokenError",
    "OneNamespace",
    "SqlLockStorage",
    "WriteCheck",
]

LockDict = dict[str, Any]
#: Writes a lock change's logbook row (the operation and its details) in the change's session.
LockLogger = Callable[[Session, Op, dict[str, Any]], None]

#: The keys of every lock dict handed out (the same as ``LockStorageDict``'s).
LOCK_KEYS: Final = (
    "root",
    "type",
    "scope",
    "depth",
    "owner",
    "timeout",
    "principal",
    "expire",
    "token",
)

DEFAULT_MAX_TIMEOUT: Final = 7 * 24 * 3600
_LIKE_ESCAPE: Final = "\\"
_ROOT_MAX_LENGTH: Final = 4096  # DavLock.root is String(4096)
# A lock's owner says who holds it (Explorer and Office send a user's name or URL, some 100
# bytes). Every lock discovery repeats it, and a listing that of each locked child, so it is
# bounded as dead properties are (it counts against no quota either).
OWNER_MAX_BYTES: Final = 8 * 1024

_COLUMNS: Final = (
    DavLock.root,
    DavLock.type,
    DavLock.scope,
    DavLock.depth,
    DavLock.owner,
    DavLock.timeout,
    DavLock.principal,
    DavLock.expire,
    DavLock.token,
)


def _now() -> float:
    """The current time as epoch seconds (a seam for tests)."""
    return time.time()


class LockTokenError(DAVError, ValueError):
    """A lock token that is unknown or expired (raised by ``refresh``)."""

    def __init__(self, token: str) -> None:
        DAVError.__init__(
            self,
            HTTP_PRECONDITION_FAILED,
            context_info=f"Unknown or expired lock token {token!r}.",
            err_condition=PRECONDITION_CODE_LockTokenMismatch,
        )
        self.token = token


def _is_expired(expire: float, now: float) -> bool:
    return 0 <= expire < now


def _unexpired(now: float) -> sa.ColumnElement[bool]:
    return sa.or_(DavLock.expire < 0, DavLock.expire >= now)


_locks = Base.metadata.tables["locks"]
# Core, not ORM: the ORM's bulk delete costs more than the statement (LOCK is a hot path).
_DELETE_EXPIRED = _locks.delete().where(_locks.c.expire >= 0, _locks.c.expire < sa.bindparam("now"))


def _delete_expired(session: Session, now: float) -> int:
    """Delete the locks expired by ``now`` (``expire`` is indexed); return how many."""
    result = session.connection().execute(_DELETE_EXPIRED, {"now": now})
    return int(result.rowcount or 0)


def _escape_like(text: str) -> str:
    return (
        text.replace(_LIKE_ESCAPE, _LIKE_ESCAPE * 2)
        .replace("%", _LIKE_ESCAPE + "%")
        .replace("_", _LIKE_ESCAPE + "_")
    )


def _child_prefix(root: str) -> str:
    """What the roots of locks below a normalized ``root`` start with."""
    return root.rstrip("/") + "/"


def _is_below(root: str, other: str) -> bool:
    """True if ``other`` is strictly below the normalized ``root``."""
    return other != root and other.startswith(_child_prefix(root))


def _below_clause(root: str) -> sa.ColumnElement[bool]:
    """SQL narrowing to roots below ``root``; a superset on SQLite (case-insensitive LIKE)."""
    return DavLock.root.like(_escape_like(_child_prefix(root)) + "%", escape=_LIKE_ESCAPE)


def _ancestors(root: str) -> list[str]:
    """The normalized ancestors of a normalized root: ``/a/b/c`` -> ``/``, ``/a``, ``/a/b``."""
    if root == "/":
        return []
    parts = root.strip("/").split("/")
    return ["/"] + ["/" + "/".join(parts[:i]) for i in range(1, len(parts))]


def _to_dict(row: Mapping[Any, Any]) -> LockDict:
    return {
        "root": row["root"],
        "type": row["type"],
        "scope": row["scope"],
        "depth": row["depth"],
        "owner": bytes(row["owner"]),
        "timeout": float(row["timeout"]),
        "principal": row["principal"],
        "expire": float(row["expire"]),
        "token": row["token"],
    }


@dataclass(frozen=True)
class LockKey:
    """Where a URL's locks are kept: a namespace and a canonical root.

    The URL was reached through a mount: ``mount_url`` (the requester's URL) stands for
    ``mount_root`` (canonical), and everything below each corresponds name for name.
    """

    namespace: str
    root: str
    mount_url: str = "/"
    mount_root: str = "/"
    # The requester's URL for ``root`` when it spells it otherwise (a decomposed name).
    spelled: str = ""

    def respelled(self, root: str) -> str | None:
        """The requester's spelling of a canonical ``root`` at or below this key's; None when
        the requester spelled this key's URL canonically, or ``root`` is elsewhere."""
        if not self.spelled:
            return None
        if root == self.root:
            return self.spelled
        if _is_below(self.root, root):
            return normalize_lock_root(self.spelled + root[len(self.root) :])
        return None

    @property
    def hides_ancestors(self) -> bool:
        """True at a mount whose canonical ancestors the requester cannot reach by URL."""
        return self.root == self.mount_root and self.mount_url != self.mount_root

    def url_of(self, root: str) -> str | None:
        """The requester's URL for a canonical root of this namespace: below the mount name for
        name, the mount itself for a folder above it; None when unrelated."""
        if root == self.mount_root or _is_below(self.mount_root, root):
            rest = root[len(self.mount_root) :].lstrip("/")
            return normalize_lock_root(f"{self.mount_url}/{rest}")
        if _is_below(root, self.mount_root):
            return self.mount_url
        return None


class LockSpace(Protocol):
    def key(self, url: str) -> LockKey:
        """The key of a normalized URL path (``/a/b``) for the current requester."""
        ...

    def request_keys(self) -> list[LockKey]:
        """Keys that map stored roots back to URLs before the request named any: those of the
        URLs the request is about, and the requester's own namespace."""
        ...

    def namespace(self, url: str) -> str:
        """``key(url).namespace``, as cheaply as it can be had."""
        ...

    def lock_logger(self) -> LockLogger | None:
        """What writes the logbook row of a lock the request takes, refreshes or releases,
        in that change's transaction; None when no row is written (outside a request)."""
        ...

    def writable(self, url: str) -> bool | None:
        """Whether the requester may write what ``url`` (a normalized URL path) names now;
        None when it names nothing. Read from the database rather than from what the request
        found earlier: the item moved or deleted, a grant revoked since."""
        ...


class OneNamespace:
    """Every URL is its own canonical root, in one namespace."""

    def __init__(self, name: str) -> None:
        self.name = name

    def key(self, url: str) -> LockKey:
        return LockKey(self.name, url)

    def namespace(self, url: str) -> str:
        return self.name

    def lock_logger(self) -> LockLogger | None:
        return None

    def request_keys(self) -> list[LockKey]:
        return [LockKey(self.name, "/")]

    def writable(self, url: str) -> bool | None:
        return True


@dataclass(frozen=True)
class WriteCheck:
    """A check a request made of its permission to write ``url`` (with ``depth``), with the
    lock tokens it submitted, as WsgiDAV's ``LockManager._get_write_conflicts`` takes it; and
    the namespace whose locks it read."""

    url: str
    depth: str
    tokens: tuple[str, ...]
    principal: str | None
    namespace: str


class _LockIndex:
    """A snapshot's locks found by root, for the many lookups of one request: a PROPFIND
    asks for each member's, and going through every lock of the namespace each time made a
    2,000-member listing take 1.3 s instead of 0.06 s while 1,500 locks were held elsewhere."""

    def __init__(self, locks: list[LockDict]) -> None:
        self.locks = locks
        self._by_root: dict[str, list[int]] = {}
        self._deep: list[int] = []  # depth infinity: they cover what is below their root
        for index, lock in enumerate(locks):
            self._by_root.setdefault(lock["root"], []).append(index)
            if lock["depth"] == "infinity":
                self._deep.append(index)
        self._roots = sorted(self._by_root)

    def candidates(
        self, root: str, include_root: bool, include_children: bool, above: bool
    ) -> list[LockDict]:
        """The locks that may be on ``root`` (with ``above``, those on a folder above it
        with depth infinity too) or below it, oldest first: a superset of what matches."""
        picked: set[int] = set()
        if include_root:
            picked.update(self._by_root.get(root, ()))
            if above:
                picked.update(i for i in self._deep if _is_below(self.locks[i]["root"], root))
        if include_children:
            prefix = _child_prefix(root)
            for other in self._roots[bisect.bisect_left(self._roots, prefix) :]:
                if not other.startswith(prefix):
                    break
                picked.update(self._by_root[other])
        return [self.locks[i] for i in sorted(picked)]


@dataclass
class _RequestScope:
    space: LockSpace
    # The mounts met so far, each once (a listing keys every member): (namespace, url, root).
    mounts: dict[tuple[str, str, str], LockKey] = field(default_factory=dict)
    snapshots: dict[str, list[LockDict]] = field(default_factory=dict)
    indexes: dict[str, _LockIndex] = field(default_factory=dict)  # of the snapshots, by root
    checks: list[WriteCheck] = field(default_factory=list)
    # The tokens of each namespace's locks as the request read them first: its checks were
    # made against those (or against later ones that the request itself took or released).
    first_seen: dict[str, set[str]] = field(default_factory=dict)


_scope: contextvars.ContextVar[_RequestScope | None] = contextvars.ContextVar(
    "davserver_lock_scope", default=None
)


def _key(url: str) -> LockKey:
    """The key of a normalized URL path in the current scope (remembered for ``_url_of``)."""
    scope = _scope.get()
    if scope is None:
        return LockKey("", url)
    key = scope.space.key(url)
    scope.mounts.setdefault((key.namespace, key.mount_url, key.mount_root), key)
    return key


def _url_of(namespace: str, root: str) -> str | None:
    """The current requester's URL for a stored lock root, by the keys this request met.

    Where several keys map the root, the most specific mount wins: an admin's own files are
    both ``/files/x`` (their namespace at ``/``) and ``/users/<admin>/x`` (a mount of that
    namespace at ``/files``); a request through the mount must see its locks there, or
    UNLOCK at the very URL a lock was taken at fails (409, the token "does not match")."""
    scope = _scope.get()
    if scope is None:
        return root
    keys = [*scope.mounts.values(), *scope.space.request_keys()]
    # The URL the request named, as it spelled it: UNLOCK compares the lock's root with it.
    spelled = [
        (len(key.root), url)
        for key in keys
        if key.namespace == namespace and (url := key.respelled(root)) is not None
    ]
    if spelled:
        return max(spelled)[1]
    above = None
    found: tuple[int, str] | None = None  # (how specific its mount is, URL)
    for key in keys:
        if key.namespace != namespace:
            continue
        url = key.url_of(root)
        if url is None:
            continue
        if _is_below(root, key.mount_root):
            above = above or url
        elif found is None or len(key.mount_root) > found[0]:
            found = (len(key.mount_root), url)
    return found[1] if found is not None else above


def check_owner(owner: bytes) -> None:
    """DAVError(400) for a lock owner over ``OWNER_MAX_BYTES``."""
    if len(owner) > OWNER_MAX_BYTES:
        raise DAVError(
            HTTP_BAD_REQUEST,
            context_info=f"A lock's owner may be {OWNER_MAX_BYTES} bytes at most.",
        )


def _forget_snapshots() -> None:
    scope = _scope.get()
    if scope is not None:
        scope.snapshots.clear()
        scope.indexes.clear()


class SqlLockStorage:
    """WsgiDAV lock storage on the ``locks`` table; safe across threads and processes."""

    LOCK_TIME_OUT_DEFAULT: Final = LockManager.LOCK_TIME_OUT_DEFAULT

    def __init__(self, db: Database, *, max_timeout: int = DEFAULT_MAX_TIMEOUT) -> None:
        if not max_timeout > 0:
            raise ValueError(f"max_timeout must be positive, not {max_timeout!r}")
        dialect = db.engine.dialect.name
        if dialect not in ("sqlite", "postgresql"):
            raise ValueError(f"SqlLockStorage supports SQLite and PostgreSQL, not {dialect}")
        self._db = db
        self._is_postgres = dialect == "postgresql"
        self.max_timeout = float(max_timeout)

    def __repr__(self) -> str:
        return f"{self.__class__.__name__}({self._db.url.render_as_string(hide_password=True)!r})"

    # --- lifecycle ----------------------------------------------------------------------------

    def begin_request(self, space: LockSpace | str) -> None:
        """From now on in this thread's context, URLs are keyed by ``space`` (a namespace name:
        ``OneNamespace``) and reads share one snapshot per namespace, until ``end_request`` (a
        request may stream its body after the handler returned, so this is not a ``with``
        block)."""
        _scope.set(_RequestScope(OneNamespace(space) if isinstance(space, str) else space))

    def end_request(self) -> None:
        _scope.set(None)

    @contextmanager
    def request_scope(self, space: LockSpace | str) -> Iterator[None]:
        """``begin_request``/``end_request`` around a block."""
        self.begin_request(space)
        try:
            yield
        finally:
            self.end_request()

    def remember_check(
        self, url: str, depth: str, tokens: Iterable[str], principal: str | None
    ) -> None:
        """Remember a check of the request's write permission (see the module doc); nothing
        outside a request scope."""
        scope = _scope.get()
        if scope is None:
            return
        url = normalize_lock_root(url)
        check = WriteCheck(url, depth, tuple(tokens), principal, _key(url).namespace)
        if check not in scope.checks:
            scope.checks.append(check)

    def checks_to_repeat(self, session: Session) -> list[WriteCheck]:
        """In the write transaction of ``session``: the request's checks of its write
        permission, when a lock was taken in their namespaces since the request read them (by
        another process: this one's WsgiDAV keeps a LOCK from landing during a write); none
        when none was. First it waits for the lock writers of those namespaces to finish, and
        keeps new ones out until the transaction ends (PostgreSQL; SQLite's writers take turns
        anyway), so that no lock can land between this read and the commit. The snapshots are
        then those read here."""
        scope = _scope.get()
        if scope is None or not scope.checks:
            return []
        new = False
        namespaces = sorted({check.namespace for check in scope.checks})
        if self._is_postgres:
            # A statement of its own: one that waited for the turn inside it would read the
            # locks as they were when it began, without a lock committed while it waited.
            take_shared_turns(session, namespaces)
        for namespace in namespaces:
            locks = scope.snapshots[namespace] = _read_namespace_locks(session, namespace)
            # Against the first read, not the last: a lock that stopped one of the request's
            # transactions must stop the next one too (a PROPPATCH sets each property alone).
            seen = scope.first_seen.get(namespace, set())
            new = new or any(lock["token"] not in seen for lock in locks)
        return list(scope.checks) if new else []

    def open(self) -> None:
        """Called by ``LockManager.__init__``; nothing to do (the table comes from migrations)."""

    def close(self) -> None:
        """Called by ``LockManager.__del__``; the ``Database`` is the caller's, so it stays open."""

    def cleanup(self) -> int:
        """Delete expired locks; return how many."""
        with self._db.write() as session:
            return _delete_expired(session, _now())

    def clear(self) -> None:
        """Delete every lock."""
        with self._db.write() as session:
            session.execute(sa.delete(DavLock))

    # --- helpers ------------------------------------------------------------------------------

    def _normalize_timeout(self, timeout: Any) -> float:
        """Seconds to grant: None -> the default, -1 (infinite) or too long -> ``max_timeout``."""
        if timeout is None:
            return min(float(self.LOCK_TIME_OUT_DEFAULT), self.max_timeout)
        value = float(timeout)
        if math.isnan(value) or value == 0:
            raise ValueError(f"lock timeout must be positive or -1, not {timeout!r}")
        if value < 0 or value > self.max_timeout:
            return self.max_timeout
        return value

    def _serialize_writers(self, session: Session, namespace: str) -> None:
        """Queue behind every other transaction (of any process) that creates locks in
        ``namespace`` (or for a holder: ``principal_turn``), or writes after checking them
        (``checks_to_repeat``)."""
        if self._is_postgres:
            session.execute(_OWN_NAMESPACE, {"namespace": namespace})
        # SQLite: Database.write() began with BEGIN IMMEDIATE, which already serializes writers.

    @staticmethod
    def _conflicting_roots(
        session: Session, *, key: LockKey, scope: str, depth: str, now: float
    ) -> list[str]:
        """The requester's URLs of unexpired locks that a new lock (key, scope, depth) would
        conflict with."""
        root = key.root
        ancestors = _ancestors(root)
        where: list[sa.ColumnElement[bool]] = [DavLock.root == root]
        if ancestors:
            where.append(sa.and_(DavLock.root.in_(ancestors), DavLock.depth == "infinity"))
        if depth == "infinity":
            where.append(_below_clause(root))
        stmt = sa.select(DavLock.root, DavLock.depth).where(
            sa.or_(*where), _unexpired(now), DavLock.namespace == key.namespace
        )
        if scope == "shared":
            stmt = stmt.where(DavLock.scope == "exclusive")
        hrefs: list[str] = []
        for other, other_depth in session.execute(stmt.order_by(DavLock.root)):
            conflicts = (
                other == root
                or (other in ancestors and other_depth == "infinity")
                or (depth == "infinity" and _is_below(root, other))
            )
            href = key.url_of(other) or other
            if conflicts and href not in hrefs:
                hrefs.append(href)
        return hrefs

    @staticmethod
    def _logger() -> LockLogger | None:
        """The request's writer of lock rows in the logbook (none outside a request)."""
        scope = _scope.get()
        return scope.space.lock_logger() if scope is not None else None

    def _purge_expired(self, token: str) -> None:
        with self._db.write() as session:
            session.execute(
                sa.delete(DavLock).where(
                    DavLock.token == token, DavLock.expire >= 0, DavLock.expire < _now()
                )
            )

    # --- the interface ------------------------------------------------------------------------

    def get(self, token: str) -> LockDict | None:
        """The lock for ``token``; None if unknown or expired (an expired one is purged)."""
        if not token or not isinstance(token, str):
            return None
        with self._db.read() as session:
            row = session.execute(
                sa.select(*_COLUMNS, DavLock.namespace).where(DavLock.token == token)
            ).first()
        if row is None:
            return None
        lock = _to_dict(row._mapping)
        if _is_expired(lock["expire"], _now()):
            self._purge_expired(token)
            return None
        url = _url_of(row.namespace, lock["root"])
        if url is None:
            return None  # a lock on something this requester does not reach
        lock["root"] = url
        return lock

    def create(self, path: str, lock: LockDict) -> LockDict:
        """Store a new direct lock on ``path``; mutate and return ``lock`` (see the module doc).

        Raises ``DAVError(HTTP_LOCKED)`` if an unexpired lock, taken by any process, conflicts.
        """
        if lock.get("token") is not None:
            raise ValueError("create() takes a lock definition, not an existing lock")
        if lock.get("expire") is not None:
            raise ValueError("create() takes a timeout, not an expire date")
        if not isinstance(path, str) or "/" not in path:
            raise ValueError(f"not a lock path: {path!r}")
        root = normalize_lock_root(path)
        key = _key(root)
        if len(key.root) > _ROOT_MAX_LENGTH:
            raise DAVError(HTTP_BAD_REQUEST, context_info="URL too long to lock.")
        if isinstance(lock.get("owner"), bytes):
            check_owner(lock["owner"])
        lock["root"] = root
        lock["timeout"] = timeout = self._normalize_timeout(lock.get("timeout"))
        if lock.get("type") != "write":
            raise ValueError(f"lock type must be 'write', not {lock.get('type')!r}")
        if lock.get("scope") not in ("exclusive", "shared"):
            raise ValueError(f"lock scope must be exclusive or shared, not {lock.get('scope')!r}")
        if lock.get("depth") not in ("0", "infinity"):
            raise ValueError(f"lock depth must be '0' or 'infinity', not {lock.get('depth')!r}")
        if not isinstance(lock.get("owner"), bytes):
            raise TypeError(f"lock owner must be bytes, not {type(lock.get('owner')).__name__}")
        if not isinstance(lock.get("principal"), str):
            raise TypeError("lock principal must be a str")
        validate_lock(lock)

        token = generate_lock_token()
        scope = _scope.get()
        log = self._logger()  # it may read the item: before the write transaction begins
        with self._db.write() as session:
            self._serialize_writers(session, key.namespace)
            # Not before: a MOVE or DELETE of the item (or of a folder above it), or a revoke
            # of the requester's right to write it, may have committed since the request
            # began. Those that release the locks of such holders (LockReach) wait for this
            # turn, at the namespace and at the holder, before they look.
            self._serialize_writers(session, principal_turn(lock["principal"]))
            writable = True if scope is None else scope.space.writable(root)
            if writable is None:
                raise DAVError(
                    HTTP_NOT_FOUND, context_info="It was moved or deleted while being locked."
                )
            if not writable:
                raise DAVError(
                    HTTP_FORBIDDEN, context_info="You may no longer write it: it was not locked."
                )
            now = _now()
            # A lock left to expire (a crashed editor, a dropped mount) is looked up by no one
            # again, so nothing else would remove its row: one per abandoned LOCK, for ever.
            _delete_expired(session, now)
            conflicts = self._conflicting_roots(
                session, key=key, scope=lock["scope"], depth=lock["depth"], now=now
            )
            if conflicts:
                errcond = DAVErrorCondition(PRECONDITION_CODE_LockConflict)
                for href in conflicts:
                    errcond.add_href(href)
                raise DAVError(HTTP_LOCKED, err_condition=errcond)
            expire = now + timeout
            session.add(
                DavLock(
                    token=token,
                    namespace=key.namespace,
                    root=key.root,
                    depth=lock["depth"],
                    scope=lock["scope"],
                    type=lock["type"],
                    owner=lock["owner"],
                    principal=lock["principal"],
                    timeout=timeout,
                    expire=expire,
                )
            )
            if log is not None:
                details = {"token": token, "scope": lock["scope"], "depth": lock["depth"]}
                log(session, Op.LOCK_CREATE, {**details, "timeout": timeout})
        _forget_snapshots()
        lock["expire"] = expire
        lock["token"] = token
        return lock

    def refresh(self, token: str, *, timeout: float | None) -> LockDict:
        """Give an unexpired lock a new timeout (-1: the maximum); return the lock.

        Raises ``LockTokenError`` (a ``ValueError``) if the token is unknown or expired: an
        expired lock may already have been superseded by a conflicting one, so it is not revived.
        """
        granted = self._normalize_timeout(timeout)
        log = self._logger()
        with self._db.write() as session:
            now = _now()
            # Locked (PostgreSQL): the purge of expired locks (``create``) cannot delete it
            # under this update, and waits to see it refreshed.
            row = (
                session.get(DavLock, token, with_for_update=True)
                if isinstance(token, str)
                else None
            )
            if row is None or _is_expired(row.expire, now):
                found = None
            else:
                namespace = row.namespace
                row.timeout = granted
                row.expire = now + granted
                session.flush()
                found = _to_dict(
                    {key: getattr(row, key) for key in LOCK_KEYS},
                )
                if log is not None:
                    log(session, Op.LOCK_REFRESH, {"token": token, "timeout": granted})
        _forget_snapshots()
        if found is None:
            raise LockTokenError(token)
        found["root"] = _url_of(namespace, found["root"]) or found["root"]
        return found

    def delete(self, token: str, *, details: Mapping[str, Any] | None = None) -> bool:
        """Delete a lock (UNLOCK); True if it existed and was unexpired, else False. The
        request's logbook row of an unexpired one says ``details`` besides its token."""
        return self._delete(token, self._logger(), details or {})

    def _delete(self, token: str, log: LockLogger | None, details: Mapping[str, Any]) -> bool:
        if not token or not isinstance(token, str):
            return False
        with self._db.write() as session:
            expire = session.execute(
                sa.delete(DavLock).where(DavLock.token == token).returning(DavLock.expire)
            ).scalar_one_or_none()
            held = expire is not None and not _is_expired(expire, _now())
            if held and log is not None:
                log(session, Op.LOCK_DELETE, {"token": token, **details})
        _forget_snapshots()
        return held

    @overload
    def get_lock_list(
        self, path: str, *, include_root: bool, include_children: bool, token_only: Literal[False]
    ) -> list[LockDict]: ...

    @overload
    def get_lock_list(
        self, path: str, *, include_root: bool, include_children: bool, token_only: Literal[True]
    ) -> list[str]: ...

    @overload
    def get_lock_list(
        self, path: str, *, include_root: bool, include_children: bool, token_only: bool
    ) -> list[LockDict] | list[str]: ...

    def get_lock_list(
        self,
        path: str,
        *,
        include_root: bool,
        include_children: bool,
        token_only: bool,
    ) -> list[LockDict] | list[str]:
        """Unexpired direct locks on ``path`` (include_root) and below it (include_children).

        At a mount, depth-infinity locks on the folders above it count as locks on ``path``
        (see the module doc). Returns lock dicts, or tokens with ``token_only``; oldest first.
        """
        locks = self._locks(path, include_root, include_children, above=include_root)
        if token_only:
            return [lock["token"] for lock in locks]
        return locks

    def drop(self, path: str) -> None:
        """Delete the locks on ``path`` and below it, which was moved or deleted (RFC 4918,
        7.7); those on folders above a mount stay. Read from the table, not the request's
        snapshot: a lock another process took below ``path`` since would outlive it."""
        for lock in self._locks(path, True, True, above=False, fresh=True):
            self._delete(lock["token"], None, {})  # the move's or deletion's row tells

    def _locks(
        self,
        path: str,
        include_root: bool,
        include_children: bool,
        *,
        above: bool,
        fresh: bool = False,
    ) -> list[LockDict]:
        if not isinstance(path, str) or not path.startswith("/"):
            raise ValueError(f"not a lock path: {path!r}")
        url = normalize_lock_root(path)
        if not (include_root or include_children):
            return []
        key = _key(url)
        root, above = key.root, above and key.hides_ancestors
        if _scope.get() is not None and not fresh:
            candidates = self._indexed(key.namespace).candidates(
                root, include_root, include_children, above
            )
        else:
            where: list[sa.ColumnElement[bool]] = []
            if include_root:
                where.append(DavLock.root == root)
            if include_children:
                where.append(_below_clause(root))
            candidates = self._query(sa.or_(*where), DavLock.namespace == key.namespace)
        now = _now()
        locks = []
        for lock in candidates:
            if _is_expired(lock["expire"], now):
                continue
            if include_root and (
                lock["root"] == root
                or (above and lock["depth"] == "infinity" and _is_below(lock["root"], root))
            ):
                found = url
            elif include_children and _is_below(root, lock["root"]):
                found = normalize_lock_root(url + lock["root"][len(root) :])
            else:
                continue
            # Callers may change what they get; the snapshot stays as read.
            locks.append({**lock, "root": found})
        return locks

    def has_locks(self, paths: Iterable[str] = ("/",)) -> bool:
        """True when the namespace of any of ``paths`` has an unexpired lock (from the request
        snapshots)."""
        scope = _scope.get()
        namespaces = {scope.space.namespace(normalize_lock_root(p)) if scope else "" for p in paths}
        if scope is not None:
            self._read_snapshots(scope, [n for n in namespaces if n not in scope.snapshots])
        now = _now()
        return any(
            not _is_expired(lock["expire"], now)
            for namespace in namespaces
            for lock in self._snapshot(namespace)
        )

    def held_since(
        self, tokens: Sequence[str], *, url: str, principal: str | None
    ) -> dt.datetime | None:
        """When the oldest unexpired lock among ``tokens`` that ``principal`` holds on ``url``
        (on it, or on an ancestor with depth infinity) was taken; None if there is none.
        Uploads under one lock coalesce into one version (davserver.services.version_rules)."""
        if not tokens or not principal:
            return None
        key = _key(normalize_lock_root(url))
        with self._db.connect() as conn:
            rows = conn.execute(
                sa.select(DavLock.root, DavLock.depth, DavLock.created_at).where(
                    DavLock.token.in_(list(tokens)),
                    DavLock.principal == principal,
                    DavLock.namespace == key.namespace,
                    _unexpired(_now()),
                )
            ).all()
        taken = [
            row.created_at
            for row in rows
            if row.root == key.root or (row.depth == "infinity" and _is_below(row.root, key.root))
        ]
        return min(taken, default=None)

    def _snapshot(self, namespace: str) -> list[LockDict]:
        """The namespace's unexpired locks as this request read them first (outside a request
        scope: read now)."""
        scope = _scope.get()
        if scope is None:
            return self._namespace_locks(namespace)
        found = scope.snapshots.get(namespace)
        if found is None:
            found = self._namespace_locks(namespace)
            _keep_snapshot(scope, namespace, found)
        return found

    def _read_snapshots(self, scope: _RequestScope, namespaces: list[str]) -> None:
        """Read the snapshots of many namespaces together: a listing of ``/users/`` has one
        per member, and read one at a time they cost a statement each."""
        if len(namespaces) < 2:
            return  # _snapshot reads one as cheaply
        found: dict[str, list[LockDict]] = {namespace: [] for namespace in namespaces}
        with self._db.connect() as conn:
            for start in range(0, len(namespaces), _NAMESPACES_AT_ONCE):
                params = {"namespaces": namespaces[start : start + _NAMESPACES_AT_ONCE]}
                for row in conn.execute(_MANY_NAMESPACES_LOCKS, {**params, "now": _now()}):
                    found[row.namespace].append(_to_dict(row._mapping))
        for namespace, locks in found.items():
            _keep_snapshot(scope, namespace, locks)

    def _indexed(self, namespace: str) -> _LockIndex:
        """The request's snapshot of the namespace, indexed (again when it was read again)."""
        locks = self._snapshot(namespace)
        scope = _scope.get()
        index = scope.indexes.get(namespace) if scope is not None else None
        if index is None or index.locks is not locks:
            index = _LockIndex(locks)
            if scope is not None:
                scope.indexes[namespace] = index
        return index

    def _namespace_locks(self, namespace: str) -> list[LockDict]:
        """Every unexpired lock of a namespace (the per-request snapshot); a prepared statement."""
        with self._db.connect() as conn:
            return _read_namespace_locks(conn, namespace)

    def _query(self, *where: sa.ColumnElement[bool]) -> list[LockDict]:
        stmt = (
            sa.select(*_COLUMNS)
            .where(*where, _unexpired(_now()))
            .order_by(DavLock.created_at, DavLock.token)
        )
        with self._db.connect() as conn:
            return [_to_dict(row._mapping) for row in conn.execute(stmt)]


def _keep_snapshot(scope: _RequestScope, namespace: str, locks: list[LockDict]) -> None:
    """The request's snapshot of a namespace's locks, as first read."""
    scope.snapshots[namespace] = locks
    scope.first_seen.setdefault(namespace, {lock["token"] for lock in locks})


def _read_namespace_locks(conn: Session | sa.Connection, namespace: str) -> list[LockDict]:
    """Every unexpired lock of a namespace, read through ``conn``."""
    rows = conn.execute(_NAMESPACE_LOCKS, {"namespace": namespace, "now": _now()})
    return [_to_dict(row._mapping) for row in rows]


# PostgreSQL: the turn at the locks of the namespace ``:namespace`` until the transaction ends,
# exclusive for a writer of locks (a writer that checked them takes it shared).
_OWN_NAMESPACE = sa.select(
    sa.func.pg_advisory_xact_lock(PG_LOCKS_CLASS, sa.func.hashtext(sa.bindparam("namespace")))
)
# Built once: constructing the statement per request cost more than running it.
_NAMESPACE_LOCKS = (
    sa.select(*_COLUMNS)
    .where(
        DavLock.namespace == sa.bindparam("namespace"),
        sa.or_(DavLock.expire < 0, DavLock.expire >= sa.bindparam("now")),
    )
    .order_by(DavLock.created_at, DavLock.token)
)
# The same for many namespaces, up to _NAMESPACES_AT_ONCE (each row says whose it is).
_NAMESPACES_AT_ONCE: Final = 1000
_MANY_NAMESPACES_LOCKS = (
    sa.select(*_COLUMNS, DavLock.namespace)
    .where(
        DavLock.namespace.in_(sa.bindparam("namespaces", expanding=True)),
        sa.or_(DavLock.expire < 0, DavLock.expire >= sa.bindparam("now")),
    )
    .order_by(DavLock.created_at, DavLock.token)
)
