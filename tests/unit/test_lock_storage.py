"""SqlLockStorage: WsgiDAV's own LockManager on the locks table, across processes and threads."""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import closing
from typing import Any

import pytest
import sqlalchemy as sa
from wsgidav.dav_error import HTTP_LOCKED, HTTP_PRECONDITION_FAILED, DAVError
from wsgidav.lock_man.lock_manager import LockManager

import providers.lock_storage as lock_storage_module
from davserver.db import Database
from davserver.models import DavLock
from davserver.services.lock_rows import PG_LOCKS_CLASS
from providers.lock_manager import LockManager as DavLockManager
from providers.lock_storage import (
    LOCK_KEYS,
    LockKey,
    LockTokenError,
    OneNamespace,
    SqlLockStorage,
)

OWNER = b'<owner xmlns="DAV:">joe@example.com</owner>'
WEEK = 7 * 24 * 3600


@pytest.fixture
def storage(database: Database) -> SqlLockStorage:
    return SqlLockStorage(database)


@pytest.fixture
def lm(storage: SqlLockStorage) -> LockManager:
    return LockManager(storage)


@pytest.fixture
def other_database(db_url: str, database: Database) -> Iterator[Database]:
    """A second engine on the same (already migrated) database: another server process."""
    db = Database(db_url, pool_size=2)
    try:
        yield db
    finally:
        db.dispose()


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Callable[[float], None]:
    """Move the storage's clock forward by the given number of seconds."""
    offset = [0.0]
    monkeypatch.setattr(lock_storage_module, "_now", lambda: time.time() + offset[0])

    def advance(seconds: float) -> None:
        offset[0] += seconds

    return advance


def acquire(
    lm: LockManager,
    url: str,
    *,
    scope: str = "exclusive",
    depth: str = "infinity",
    principal: str = "joe",
    timeout: float | None = 600,
    owner: bytes = OWNER,
) -> dict[str, Any]:
    lock: dict[str, Any] = lm.acquire(
        url=url,
        lock_type="write",
        lock_scope=scope,
        lock_depth=depth,
        lock_owner=owner,
        timeout=timeout,
        principal=principal,
        token_list=[],
    )
    return lock


def assert_refused(lm: LockManager, url: str, **kwargs: Any) -> DAVError:
    with pytest.raises(DAVError) as excinfo:
        acquire(lm, url, **kwargs)
    assert excinfo.value.value == HTTP_LOCKED
    return excinfo.value


def lock_def(
    *,
    scope: str = "exclusive",
    depth: str = "infinity",
    principal: str = "joe",
    timeout: float = 600,
    root: str = "",
) -> dict[str, Any]:
    """A lock definition as LockManager._generate_lock passes it to create()."""
    return {
        "root": root,
        "type": "write",
        "scope": scope,
        "depth": depth,
        "owner": OWNER,
        "timeout": timeout,
        "principal": principal,
    }


def roots_in_table(db: Database) -> list[str]:
    with db.read() as session:
        return sorted(session.scalars(sa.select(DavLock.root)))


def can_write(lm: LockManager, url: str, *, depth: str, principal: str, tokens: list[str]) -> bool:
    try:
        lm.check_write_permission(url=url, depth=depth, token_list=tokens, principal=principal)
    except DAVError as exc:
        assert exc.value == HTTP_LOCKED
        return False
    return True


# --- the lock dict --------------------------------------------------------------------------


def test_create_mutates_the_passed_dict(storage: SqlLockStorage) -> None:
    lock = lock_def(timeout=-1, root="ignored")
    before = time.time()
    returned = storage.create("/dav/res/", lock)
    assert returned is lock
    assert set(lock) == set(LOCK_KEYS)
    assert lock["root"] == "/dav/res"
    assert lock["timeout"] == WEEK  # -1 (infinite) is clamped to max_timeout
    assert before + WEEK <= lock["expire"] <= time.time() + WEEK
    assert lock["token"].startswith("opaquelocktoken:0x")
    assert storage.get(lock["token"]) == lock


def test_lock_manager_returns_the_stored_lock(lm: LockManager, storage: SqlLockStorage) -> None:
    # LockManager._generate_lock returns its own dict: only in-place mutation gives it a token.
    lock = acquire(lm, "/dav/res", timeout=600)
    assert set(lock) == set(LOCK_KEYS)
    assert lock["token"].startswith("opaquelocktoken:")
    assert lock["timeout"] == 600
    stored = lm.get_lock(lock["token"])
    assert stored == lock
    assert type(stored["owner"]) is bytes and stored["owner"] == OWNER
    assert lm.get_lock(lock["token"], key="root") == "/dav/res"
    assert storage.get_lock_list(
        "/dav/res", include_root=True, include_children=False, token_only=True
    ) == [lock["token"]]


def test_timeouts_are_clamped(database: Database) -> None:
    storage = SqlLockStorage(database, max_timeout=60)
    assert storage.create("/a", lock_def(timeout=3600))["timeout"] == 60
    assert storage.create("/b", lock_def(timeout=-1))["timeout"] == 60
    assert storage.create("/c", lock_def(timeout=5))["timeout"] == 5
    lm = LockManager(storage)
    assert acquire(lm, "/d", timeout=None)["timeout"] == 60  # LockManager's default is a week
    with pytest.raises(ValueError):
        SqlLockStorage(database, max_timeout=0)


def test_create_validates_the_definition(storage: SqlLockStorage, database: Database) -> None:
    with pytest.raises(TypeError):
        storage.create("/a", {**lock_def(), "owner": "not bytes"})
    with pytest.raises(ValueError):
        storage.create("/a", {**lock_def(), "scope": "both"})
    with pytest.raises(ValueError):
        storage.create("/a", {**lock_def(), "depth": "1"})
    with pytest.raises(ValueError):
        storage.create("/a", {**lock_def(), "token": "opaquelocktoken:x"})
    with pytest.raises(ValueError):
        storage.create("/a", {**lock_def(), "timeout": 0})
    assert roots_in_table(database) == []


def test_empty_owner_is_kept_as_bytes(lm: LockManager) -> None:
    lock = acquire(lm, "/a", owner=b"")
    assert lm.get_lock(lock["token"], key="owner") == b""


# --- LockManager behaviour ------------------------------------------------------------------


def test_lookup_by_token_and_url(lm: LockManager) -> None:
    lock = acquire(lm, "/dav/res")
    tok = lock["token"]
    assert lm.is_token_locked_by_user(tok, "joe")
    assert not lm.is_token_locked_by_user(tok, "ann")
    assert [x["token"] for x in lm.get_url_lock_list("/dav/res")] == [tok]
    assert [x["token"] for x in lm.get_url_lock_list("/dav/res/")] == [tok]
    assert lm.get_url_lock_list("/dav") == []
    assert [x["token"] for x in lm.get_url_lock_list("/dav", recursive=True)] == [tok]
    assert lm.is_url_locked("/dav/res")
    assert not lm.is_url_locked("/dav/res/sub")

    assert lm.is_url_locked_by_token("/dav/res", tok)
    assert lm.is_url_locked_by_token("/dav/res/", tok)
    assert lm.is_url_locked_by_token("/dav/res/sub", tok)
    assert not lm.is_url_locked_by_token("/dav/ressub", tok)
    assert not lm.is_url_locked_by_token("/dav", tok)
    assert not lm.is_url_locked_by_token("/dav/", tok)
    assert not lm.is_url_locked_by_token("/dav/res", "opaquelocktoken:0xnope")
    assert lm.get_lock("opaquelocktoken:0xnope") is None


def test_exclusive_conflicts(lm: LockManager) -> None:
    acquire(lm, "/dav/res/", principal="joe")
    assert_refused(lm, "/dav/res", principal="ann")  # same URL without the slash
    assert_refused(lm, "/dav/res/", principal="ann")
    assert_refused(lm, "/dav/res/sub", principal="ann")  # child of a depth-infinity lock
    assert_refused(lm, "/dav/res/sub", principal="joe")  # even for the same principal
    assert_refused(lm, "/dav/", principal="joe")  # parent (depth infinity) of a lock
    assert_refused(lm, "/dav/res", scope="shared", principal="ann")
    acquire(lm, "/dav/resource", principal="ann")  # a sibling sharing a name prefix
    acquire(lm, "/dav", depth="0", principal="ann")  # depth-0 parent ignores children


def test_shared_locks(lm: LockManager) -> None:
    a = acquire(lm, "/doc", scope="shared", depth="0", principal="joe")
    b = acquire(lm, "/doc", scope="shared", depth="0", principal="ann")
    assert {x["token"] for x in lm.get_url_lock_list("/doc")} == {a["token"], b["token"]}
    assert_refused(lm, "/doc", scope="exclusive", depth="0", principal="bob")
    lm.release(a["token"])
    assert_refused(lm, "/doc", scope="exclusive", depth="0", principal="bob")
    lm.release(b["token"])
    acquire(lm, "/doc", scope="exclusive", depth="0", principal="bob")

    p = acquire(lm, "/folder", scope="shared", depth="infinity", principal="joe")
    acquire(lm, "/folder/x", scope="shared", depth="0", principal="ann")
    assert_refused(lm, "/folder/y", scope="exclusive", depth="0", principal="ann")
    assert [x["token"] for x in lm.get_indirect_url_lock_list("/folder/y")] == [p["token"]]


def test_each_holder_of_a_shared_lock_writes_with_its_own_token(storage: SqlLockStorage) -> None:
    """RFC 4918 6.2: every holder of a shared lock may write. WsgiDAV asked for every lock's
    token, so of two holders of shared locks on a file neither could write alone (423)."""
    lm = DavLockManager(storage)
    joe = acquire(lm, "/doc", scope="shared", depth="0", principal="joe")["token"]
    ann = acquire(lm, "/doc", scope="shared", depth="0", principal="ann")["token"]
    assert can_write(lm, "/doc", depth="0", principal="joe", tokens=[joe])
    assert can_write(lm, "/doc", depth="0", principal="ann", tokens=[ann])
    assert not can_write(lm, "/doc", depth="0", principal="bob", tokens=[])
    assert not can_write(lm, "/doc", depth="0", principal="bob", tokens=[joe, ann])
    assert not can_write(lm, "/doc", depth="0", principal="joe", tokens=[])

    # A folder's shared lock, and members' shared locks under it: any one held covers them.
    top = acquire(lm, "/f", scope="shared", depth="infinity", principal="joe")["token"]
    acquire(lm, "/f/x", scope="shared", depth="0", principal="ann")
    mine = acquire(lm, "/f/y", scope="shared", depth="0", principal="ann")["token"]
    assert can_write(lm, "/f/x", depth="0", principal="joe", tokens=[top])
    assert can_write(lm, "/f", depth="infinity", principal="joe", tokens=[top])
    assert not can_write(lm, "/f", depth="infinity", principal="ann", tokens=[mine])
    assert can_write(lm, "/f/y", depth="0", principal="ann", tokens=[mine])
    assert not can_write(lm, "/f/z", depth="0", principal="ann", tokens=[mine])
    assert not can_write(lm, "/f", depth="infinity", principal="bob", tokens=[])

    # An exclusive lock still wants its own token, whatever else is submitted.
    acquire(lm, "/g", scope="exclusive", depth="infinity", principal="joe")
    assert not can_write(lm, "/g/a", depth="0", principal="joe", tokens=[joe])

    # A folder's Depth 0 lock covers no member: held, it excuses no member's shared lock.
    acquire(lm, "/h/m", scope="shared", depth="0", principal="ann")
    own = acquire(lm, "/h", scope="exclusive", depth="0", principal="bob")["token"]
    assert not can_write(lm, "/h", depth="infinity", principal="bob", tokens=[own])
    assert can_write(lm, "/h", depth="0", principal="bob", tokens=[own])
    # ... while a lock on a folder between does cover the member below it.
    between = acquire(lm, "/h/d", scope="shared", depth="infinity", principal="bob")["token"]
    acquire(lm, "/h/d/m", scope="shared", depth="0", principal="ann")
    assert can_write(lm, "/h/d", depth="infinity", principal="bob", tokens=[between])
    assert not can_write(lm, "/h/d", depth="infinity", principal="cy", tokens=[between])


def test_depth_zero_covers_only_the_resource(lm: LockManager) -> None:
    lock = acquire(lm, "/a", depth="0", principal="joe")
    tok = lock["token"]
    acquire(lm, "/a/b", depth="0", principal="ann")  # a depth-0 parent does not cover children
    assert_refused(lm, "/a", depth="0", principal="ann")
    assert_refused(lm, "/", depth="infinity", principal="ann")  # locked children below /
    acquire(lm, "/", depth="0", principal="ann")

    assert can_write(lm, "/a/c", depth="0", principal="ann", tokens=[])
    assert not can_write(lm, "/a", depth="0", principal="ann", tokens=[])
    assert not can_write(lm, "/a", depth="0", principal="joe", tokens=[])  # token not submitted
    assert not can_write(lm, "/a", depth="0", principal="ann", tokens=[tok])  # not ann's lock
    assert can_write(lm, "/a", depth="0", principal="joe", tokens=[tok])
    assert [x["token"] for x in lm.get_indirect_url_lock_list("/a/c")] == []


def test_depth_infinity_covers_descendants(lm: LockManager) -> None:
    lock = acquire(lm, "/a", depth="infinity", principal="joe")
    tok = lock["token"]
    assert_refused(lm, "/a/b/c", depth="0", principal="ann")
    assert not can_write(lm, "/a/b/c", depth="0", principal="ann", tokens=[])
    assert not can_write(lm, "/a/b/c", depth="0", principal="joe", tokens=[])
    assert can_write(lm, "/a/b/c", depth="0", principal="joe", tokens=[tok])
    assert not can_write(lm, "/", depth="infinity", principal="ann", tokens=[])  # child locked
    assert can_write(lm, "/b", depth="infinity", principal="ann", tokens=[])
    assert lm.is_url_locked_by_token("/a/b/c", tok)
    assert [x["token"] for x in lm.get_indirect_url_lock_list("/a/b/c")] == [tok]
    assert [x["token"] for x in lm.get_indirect_url_lock_list("/a/b/c", principal="joe")] == [tok]
    assert lm.get_indirect_url_lock_list("/a/b/c", principal="ann") == []
    assert lm.get_indirect_url_lock_list("/ab/c") == []


def test_refresh_and_release(lm: LockManager, storage: SqlLockStorage, clock: Any) -> None:
    lock = acquire(lm, "/a", timeout=100)
    clock(50)
    refreshed = lm.refresh(lock["token"], timeout=300)
    assert set(refreshed) == set(LOCK_KEYS)
    assert refreshed["timeout"] == 300
    assert refreshed["expire"] == pytest.approx(time.time() + 50 + 300, abs=5)
    assert lm.get_lock(lock["token"]) == refreshed
    assert lm.refresh(lock["token"], timeout=-1)["timeout"] == WEEK
    assert lm.refresh(lock["token"])["timeout"] == WEEK  # LockManager's default: one week

    lm.release(lock["token"])
    assert lm.get_lock(lock["token"]) is None
    assert not lm.is_url_locked("/a")
    acquire(lm, "/a", principal="ann")

    with pytest.raises(LockTokenError) as excinfo:
        lm.refresh(lock["token"], timeout=300)
    assert isinstance(excinfo.value, ValueError)
    assert excinfo.value.value == HTTP_PRECONDITION_FAILED
    assert storage.delete(lock["token"]) is False


def test_expiry_by_clock(lm: LockManager, database: Database, clock: Any) -> None:
    lock = acquire(lm, "/a/b", timeout=10, principal="joe")
    clock(9)
    assert lm.get_lock(lock["token"]) is not None
    assert_refused(lm, "/a/b", principal="ann")
    clock(2)
    assert lm.get_url_lock_list("/a/b") == []
    assert lm.get_url_lock_list("/", recursive=True) == []
    assert lm.get_indirect_url_lock_list("/a/b/c") == []
    assert can_write(lm, "/a/b", depth="infinity", principal="ann", tokens=[])
    assert roots_in_table(database) == ["/a/b"]  # listing only reads
    assert lm.get_lock(lock["token"]) is None  # get() purges
    assert roots_in_table(database) == []
    with pytest.raises(ValueError):
        lm.refresh(lock["token"], timeout=100)
    acquire(lm, "/a/b", principal="ann")


def test_expiry_set_in_the_database(
    lm: LockManager, storage: SqlLockStorage, database: Database
) -> None:
    old = acquire(lm, "/a", principal="joe")
    keep = acquire(lm, "/b", principal="joe")
    with database.write() as session:
        session.execute(
            sa.update(DavLock).where(DavLock.token == old["token"]).values(expire=time.time() - 1)
        )
    assert not lm.is_url_locked("/a")
    # Refreshing an expired lock would revive it beside a newer conflicting one: refused.
    with pytest.raises(LockTokenError):
        lm.refresh(old["token"], timeout=100)
    new = acquire(lm, "/a/x", principal="ann")  # the expired parent no longer covers /a/x
    assert storage.delete(old["token"]) is False  # expired: reported as gone
    assert storage.cleanup() == 0
    assert roots_in_table(database) == ["/a/x", "/b"]

    with database.write() as session:
        session.execute(sa.update(DavLock).values(expire=time.time() - 1))
    assert storage.cleanup() == 2
    assert lm.get_lock(new["token"]) is None and lm.get_lock(keep["token"]) is None
    assert roots_in_table(database) == []


def test_delete_cleanup_and_clear(storage: SqlLockStorage, database: Database) -> None:
    a = storage.create("/a", lock_def())
    storage.create("/b", lock_def())
    assert storage.delete(a["token"]) is True
    assert storage.delete(a["token"]) is False
    assert roots_in_table(database) == ["/b"]
    storage.clear()
    assert roots_in_table(database) == []
    storage.close()
    storage.open()


# --- children by prefix ---------------------------------------------------------------------

WILDCARD_ROOTS = [
    "/x_y/f",
    "/xay/f",
    "/x%y/f",
    "/x%25y/f",
    "/x%y2/f",
    "/x\\y/f",
    "/xy/f",
    "/X_Y/f",
]


@pytest.mark.parametrize(
    ("parent", "children"),
    [
        ("/x_y", ["/x_y/f"]),
        ("/x%y", ["/x%y/f"]),
        ("/x%25y", ["/x%25y/f"]),
        ("/x\\y", ["/x\\y/f"]),
        ("/x", []),
        ("/X_Y", ["/X_Y/f"]),  # case-sensitive, also on SQLite (where LIKE ignores ASCII case)
        ("/", WILDCARD_ROOTS),
    ],
)
def test_children_by_prefix_with_wildcard_characters(
    storage: SqlLockStorage, parent: str, children: list[str]
) -> None:
    for root in WILDCARD_ROOTS:
        storage.create(root, lock_def(depth="0"))
    locks = storage.get_lock_list(
        parent, include_root=False, include_children=True, token_only=False
    )
    assert sorted(lock["root"] for lock in locks) == sorted(children)
    assert (
        storage.get_lock_list(parent, include_root=True, include_children=False, token_only=True)
        == []
    )


def test_lock_manager_children_with_wildcard_names(lm: LockManager) -> None:
    acquire(lm, "/xay/file", depth="0", principal="joe")
    acquire(lm, "/x%y2/file", depth="0", principal="joe")
    acquire(lm, "/Dir/file", depth="0", principal="joe")
    # Unescaped, "/x_y/%" and "/x%y/%" would match those children.
    acquire(lm, "/x_y", depth="infinity", principal="ann")
    acquire(lm, "/x%y", depth="infinity", principal="ann")
    acquire(lm, "/dir", depth="infinity", principal="ann")
    assert can_write(lm, "/x_z", depth="infinity", principal="bob", tokens=[])
    assert not can_write(lm, "/x_y/a", depth="0", principal="bob", tokens=[])
    perc = acquire(lm, "/p%q", depth="infinity", principal="joe")
    assert [x["token"] for x in lm.get_indirect_url_lock_list("/p%q/r")] == [perc["token"]]
    assert lm.get_indirect_url_lock_list("/pxq/r") == []
    assert_refused(lm, "/p%q/r", principal="bob")
    acquire(lm, "/pxq/r", principal="bob")


def test_root_lock_is_not_its_own_child(storage: SqlLockStorage) -> None:
    top = storage.create("/", lock_def(depth="0"))
    below = storage.create("/a", lock_def(depth="0"))
    assert storage.get_lock_list(
        "/", include_root=False, include_children=True, token_only=True
    ) == [below["token"]]
    assert storage.get_lock_list(
        "/", include_root=True, include_children=True, token_only=True
    ) == [top["token"], below["token"]]


# --- create() re-checks conflicts itself ----------------------------------------------------


@pytest.mark.parametrize(
    ("existing", "new", "conflict"),
    [
        # (root, depth, scope) of an existing lock and of the new one
        (("/a", "0", "exclusive"), ("/a", "0", "exclusive"), True),
        (("/a", "0", "exclusive"), ("/a", "0", "shared"), True),
        (("/a", "0", "shared"), ("/a", "0", "exclusive"), True),
        (("/a", "0", "shared"), ("/a", "infinity", "shared"), False),
        (("/a", "infinity", "exclusive"), ("/a/b/c", "0", "exclusive"), True),
        (("/a", "infinity", "exclusive"), ("/a/b/c", "0", "shared"), True),
        (("/a", "infinity", "shared"), ("/a/b/c", "0", "exclusive"), True),
        (("/a", "infinity", "shared"), ("/a/b/c", "0", "shared"), False),
        (("/a", "0", "exclusive"), ("/a/b", "0", "exclusive"), False),
        (("/a/b/c", "0", "exclusive"), ("/a", "infinity", "exclusive"), True),
        (("/a/b/c", "0", "exclusive"), ("/a", "infinity", "shared"), True),
        (("/a/b/c", "0", "shared"), ("/a", "infinity", "exclusive"), True),
        (("/a/b/c", "0", "exclusive"), ("/a", "0", "exclusive"), False),
        (("/a/b/c", "0", "exclusive"), ("/", "infinity", "exclusive"), True),
        (("/", "infinity", "exclusive"), ("/a", "0", "shared"), True),
        (("/ab", "infinity", "exclusive"), ("/a", "infinity", "exclusive"), False),
        (("/a", "infinity", "exclusive"), ("/ab", "infinity", "exclusive"), False),
        (("/a_", "0", "exclusive"), ("/ab", "0", "exclusive"), False),
        (("/abc/x", "0", "exclusive"), ("/a_c", "infinity", "exclusive"), False),
        (("/A/x", "0", "exclusive"), ("/a", "infinity", "exclusive"), False),
    ],
)
def test_create_refuses_conflicts_on_its_own(
    storage: SqlLockStorage,
    database: Database,
    existing: tuple[str, str, str],
    new: tuple[str, str, str],
    conflict: bool,
) -> None:
    root, depth, scope = existing
    storage.create(root, lock_def(depth=depth, scope=scope, principal="joe"))
    root, depth, scope = new
    if conflict:
        with pytest.raises(DAVError) as excinfo:
            storage.create(root, lock_def(depth=depth, scope=scope, principal="ann"))
        assert excinfo.value.value == HTTP_LOCKED
        assert excinfo.value.err_condition.hrefs == [existing[0]]
        assert roots_in_table(database) == [existing[0]]
    else:
        storage.create(root, lock_def(depth=depth, scope=scope, principal="ann"))
        assert len(roots_in_table(database)) == 2


def test_expired_locks_do_not_conflict_in_create(storage: SqlLockStorage, clock: Any) -> None:
    storage.create("/a", lock_def(timeout=10))
    clock(11)
    storage.create("/a", lock_def(principal="ann"))


# --- two processes --------------------------------------------------------------------------


def test_exclusive_lock_is_seen_and_refused_by_another_process(
    database: Database, other_database: Database
) -> None:
    storage1, storage2 = SqlLockStorage(database), SqlLockStorage(other_database)
    lm1, lm2 = LockManager(storage1), LockManager(storage2)
    lock = acquire(lm1, "/shared/doc", depth="infinity", principal="joe")

    assert lm2.get_lock(lock["token"]) == lock
    assert [x["token"] for x in lm2.get_url_lock_list("/shared/doc")] == [lock["token"]]
    assert_refused(lm2, "/shared/doc", principal="ann")
    assert_refused(lm2, "/shared/doc", scope="shared", principal="ann")
    assert not can_write(lm2, "/shared/doc/x", depth="0", principal="ann", tokens=[])
    assert can_write(lm2, "/shared/doc/x", depth="0", principal="joe", tokens=[lock["token"]])

    # The other process's LockManager check can be bypassed (it is process-local), but
    # create() itself refuses.
    for root, depth in [("/shared/doc", "0"), ("/shared/doc/x", "0"), ("/shared", "infinity")]:
        with pytest.raises(DAVError) as excinfo:
            storage2.create(root, lock_def(depth=depth, principal="ann"))
        assert excinfo.value.value == HTTP_LOCKED
        assert excinfo.value.err_condition.hrefs == ["/shared/doc"]
    assert roots_in_table(database) == ["/shared/doc"]

    lm1.release(lock["token"])
    assert lm2.get_lock(lock["token"]) is None
    acquire(lm2, "/shared/doc", principal="ann")
    assert_refused(lm1, "/shared/doc", principal="joe")


def test_shared_locks_across_processes(database: Database, other_database: Database) -> None:
    storage1, storage2 = SqlLockStorage(database), SqlLockStorage(other_database)
    storage1.create("/doc", lock_def(scope="shared", depth="0", principal="joe"))
    storage2.create("/doc", lock_def(scope="shared", depth="0", principal="ann"))
    with pytest.raises(DAVError):
        storage2.create("/doc", lock_def(scope="exclusive", depth="0", principal="bob"))
    assert (
        len(
            storage1.get_lock_list(
                "/doc", include_root=True, include_children=False, token_only=True
            )
        )
        == 2
    )


# --- a write's checks, made again in its transaction ----------------------------------------


def test_a_write_that_checked_the_locks_holds_off_new_ones_until_it_commits(
    database: Database, other_database: Database
) -> None:
    """Between a request's check of the locks and its commit, no LOCK of another process may
    land in the namespace: the write's transaction takes its turn there first (shared, on
    PostgreSQL; SQLite's writers take turns anyway), a LOCK waits for it, and a write that
    comes after a LOCK sees it and is told to check again."""
    storage, other = SqlLockStorage(database), SqlLockStorage(other_database)
    lm = DavLockManager(storage)
    taken: list[str] = []

    def lock_elsewhere() -> None:
        with other.request_scope("space"):
            taken.append(other.create("/doc", lock_def(depth="0", principal="ann"))["token"])

    with storage.request_scope("space"):
        lm.check_write_permission(url="/doc", depth="0", token_list=[], principal="joe")
        with database.write() as session:
            assert storage.checks_to_repeat(session) == []  # no lock was taken meanwhile
            racer = threading.Thread(target=lock_elsewhere)
            racer.start()
            racer.join(timeout=0.5)
            assert racer.is_alive(), "a LOCK landed inside a write that had checked the locks"
        racer.join(timeout=30)
        assert taken
        with database.write() as session:
            again = storage.checks_to_repeat(session)
        assert [(check.url, check.depth) for check in again] == [("/doc", "0")]
        with database.write() as session, pytest.raises(DAVError) as refused:
            lm.recheck(session)
        assert refused.value.value == HTTP_LOCKED
    with storage.request_scope("space"), database.write() as session:
        assert storage.checks_to_repeat(session) == []  # a request that checked nothing


def test_a_write_sees_a_lock_that_committed_while_it_waited_for_its_turn(
    database: Database, other_database: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The other way round: a LOCK holds the namespace's turn when the write's transaction
    begins. The write waits for it, and its check must then see the lock: on PostgreSQL the
    turn was taken inside the statement that read the locks, whose snapshot was older than
    the lock's commit, and the write went ahead as if there were none."""
    storage, other = SqlLockStorage(database), SqlLockStorage(other_database)
    lm = DavLockManager(storage)
    granted = threading.Event()
    slow_purge = lock_storage_module._delete_expired

    def purge_slowly(session: Any, now: float) -> int:
        purged = slow_purge(session, now)  # SQLite: its first statement takes the write lock
        granted.set()  # the LOCK holds the turn from here to its commit
        time.sleep(0.5)
        return purged

    monkeypatch.setattr(lock_storage_module, "_delete_expired", purge_slowly)

    def lock_elsewhere() -> None:
        with other.request_scope("space"):
            other.create("/doc", lock_def(depth="0", principal="ann"))

    with storage.request_scope("space"):
        lm.check_write_permission(url="/doc", depth="0", token_list=[], principal="joe")
        racer = threading.Thread(target=lock_elsewhere)
        racer.start()
        assert granted.wait(timeout=30)
        with database.write() as session:
            again = storage.checks_to_repeat(session)
        racer.join(timeout=30)
    assert [(check.url, check.depth) for check in again] == [("/doc", "0")]


def test_a_lock_is_only_taken_on_an_item_that_is_there_when_it_is_taken(
    database: Database, other_database: Database
) -> None:
    """The LOCK checks, in its transaction, that its item is still there. On SQLite that
    transaction took the write lock only at its first statement, after the check: another
    process's DELETE could commit in between, and the lock was granted on a name nothing had
    any more (a later file made there found it locked). The check is now made holding it."""
    storage = SqlLockStorage(database)
    seen_writable: list[bool] = []

    class Space(OneNamespace):
        def writable(self, url: str) -> bool | None:
            # Could another process start a write now? (It must not, while the LOCK checks.)
            seen_writable.append(_can_write_now(other_database))
            return True

    with storage.request_scope(Space("space")):
        storage.create("/doc", lock_def(depth="0"))
    assert seen_writable == [False]


def _can_write_now(database: Database) -> bool:
    if database.is_sqlite:
        with closing(sqlite3.connect(database.url.database or "", timeout=0)) as raw:
            raw.isolation_level = None
            try:
                raw.execute("BEGIN IMMEDIATE")
            except sqlite3.OperationalError:
                return False
            raw.execute("ROLLBACK")
            return True
    with database.engine.connect() as conn:
        held = conn.scalar(
            sa.text("SELECT pg_try_advisory_xact_lock_shared(:c, hashtext('space'))"),
            {"c": PG_LOCKS_CLASS},
        )
        conn.rollback()
    return bool(held)


# --- threads racing -------------------------------------------------------------------------


class _GatedStorage(SqlLockStorage):
    """Enters create() only once every racer has passed LockManager's own conflict check."""

    def __init__(self, db: Database, gate: threading.Barrier) -> None:
        super().__init__(db)
        self._gate = gate

    def create(self, path: str, lock: dict[str, Any]) -> dict[str, Any]:
        self._gate.wait(timeout=60)
        return super().create(path, lock)


def _race(
    db_url: str, n: int, make_storage: Callable[[Database], SqlLockStorage]
) -> tuple[list[dict[str, Any]], list[BaseException]]:
    start = threading.Barrier(n)
    won: list[dict[str, Any]] = []
    failed: list[BaseException] = []
    guard = threading.Lock()

    def racer(i: int) -> None:
        db = Database(db_url, pool_size=1)  # one engine per racer, like one process each
        try:
            lm = LockManager(make_storage(db))
            start.wait(timeout=60)
            lock = acquire(lm, "/race/doc", depth="0", principal=f"user{i}")
            with guard:
                won.append(lock)
        except BaseException as exc:
            with guard:
                failed.append(exc)
        finally:
            db.dispose()

    threads = [threading.Thread(target=racer, args=(i,)) for i in range(n)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not any(thread.is_alive() for thread in threads)
    return won, failed


@pytest.mark.parametrize("gated", [True, False], ids=["all-checks-pass-first", "free-race"])
def test_threads_racing_for_an_exclusive_lock(db_url: str, database: Database, gated: bool) -> None:
    n = 8
    gate = threading.Barrier(n)

    def make_storage(db: Database) -> SqlLockStorage:
        return _GatedStorage(db, gate) if gated else SqlLockStorage(db)

    won, failed = _race(db_url, n, make_storage)
    assert len(won) == 1, f"{len(won)} racers got the exclusive lock"
    assert len(failed) == n - 1
    for exc in failed:
        assert isinstance(exc, DAVError) and exc.value == HTTP_LOCKED, repr(exc)
    assert roots_in_table(database) == ["/race/doc"]
    assert SqlLockStorage(database).get(won[0]["token"]) == won[0]


# --- keys: one lock, several URLs (providers.lock_space gives real ones) ----------------------


def test_lock_key_maps_canonical_roots_back_through_its_mount() -> None:
    key = LockKey(
        "alice", "/files/a/proj/doc", mount_url="/shared/alice/proj", mount_root="/files/a/proj"
    )
    assert key.url_of("/files/a/proj/doc") == "/shared/alice/proj/doc"
    assert key.url_of("/files/a/proj") == "/shared/alice/proj"
    # Folders above the mount are out of the requester's reach: they stand at the mount.
    assert key.url_of("/files/a") == "/shared/alice/proj"
    assert key.url_of("/files/b") is None
    assert key.url_of("/files/a/project") is None
    assert not key.hides_ancestors
    assert LockKey("alice", "/files/a/proj", "/shared/alice/proj", "/files/a/proj").hides_ancestors
    assert not LockKey("alice", "/files/a").hides_ancestors


class _Mounted:
    """bob's ``/shared/alice/proj`` is alice's ``/files/a/proj``; the rest is bob's own."""

    def key(self, url: str) -> LockKey:
        mount, root = "/shared/alice/proj", "/files/a/proj"
        if url == mount or url.startswith(mount + "/"):
            return LockKey("alice", root + url[len(mount) :], mount, root)
        return LockKey("bob", url)

    def request_keys(self) -> list[LockKey]:
        return [LockKey("bob", "/"), self.key("/shared/alice/proj")]

    def namespace(self, url: str) -> str:
        return self.key(url).namespace


def test_locks_are_stored_canonically_and_seen_through_every_url(lm: LockManager) -> None:
    storage = lm.storage
    with storage.request_scope("alice"):
        above = acquire(lm, "/files/a", scope="shared", principal="alice")
        own = acquire(lm, "/files/a/proj/doc", scope="shared", depth="0", principal="alice")
    with storage.request_scope(_Mounted()):
        # A lock on the item itself comes back at bob's URL ...
        assert [lock["root"] for lock in lm.get_url_lock_list("/shared/alice/proj/doc")] == [
            "/shared/alice/proj/doc"
        ]
        # ... one above the mount at the mount, and it covers everything below.
        assert [lock["token"] for lock in lm.get_url_lock_list("/shared/alice/proj")] == [
            above["token"]
        ]
        assert not can_write(lm, "/shared/alice/proj/new", depth="0", principal="bob", tokens=[])
        assert lm.get_lock(own["token"], key="root") == "/shared/alice/proj/doc"
        # Bob's own /files/a is not alice's.
        assert lm.get_url_lock_list("/files/a") == []
        assert can_write(lm, "/files/a/x", depth="0", principal="bob", tokens=[])
    assert sorted(roots_in_table(storage._db)) == ["/files/a", "/files/a/proj/doc"]


def test_a_listing_remembers_each_mount_once_not_each_url(storage: SqlLockStorage) -> None:
    """Every member of a PROPFIND is keyed; remembering each key made a 10,000-member listing
    with one lock in the space take 10 s instead of 0.5 s (a linear search per member)."""
    with storage.request_scope(_Mounted()):
        for i in range(2000):
            storage.get_lock_list(
                f"/files/f{i}", include_root=True, include_children=False, token_only=True
            )
            storage.get_lock_list(
                f"/shared/alice/proj/f{i}",
                include_root=True,
                include_children=False,
                token_only=True,
            )
        scope = lock_storage_module._scope.get()
        assert scope is not None
        assert len(scope.mounts) == 2


def test_a_drop_removes_locks_taken_elsewhere_after_the_request_read_them(
    storage: SqlLockStorage, other_database: Database
) -> None:
    """A DELETE or MOVE drops the locks below what it removed. It read them from the
    request's snapshot, taken at its first lock check: a LOCK another process took below the
    folder in between outlived the folder, and blocked its URL for the lock's timeout."""
    elsewhere = SqlLockStorage(other_database)
    lock = {"type": "write", "scope": "exclusive", "depth": "0", "owner": OWNER,
            "principal": "alice", "timeout": 600}  # fmt: skip

    def take() -> None:
        with elsewhere.request_scope("alice"):
            elsewhere.create("/d/new.txt", dict(lock))

    def below_d() -> list[str]:
        return storage.get_lock_list(
            "/d", include_root=True, include_children=True, token_only=True
        )

    with storage.request_scope("alice"):
        assert below_d() == []
        taken = threading.Thread(target=take)
        taken.start()
        taken.join()
        storage.drop("/d")
    with storage.request_scope("alice"):
        assert below_d() == []


def test_a_request_finds_in_its_indexed_snapshot_what_a_query_finds(
    storage: SqlLockStorage,
) -> None:
    """Within a request the locks are looked up in the snapshot by root (a PROPFIND asks once
    per member): the answers are those of the table's, for roots on, above and below each
    path, with depth 0 and infinity, and paths whose names only start like a lock's."""
    for root, depth in [
        ("/a", "0"),
        ("/a/b", "infinity"),
        ("/a/b/c/d", "0"),
        ("/a/bc", "0"),
        ("/ab", "infinity"),
        ("/x/y", "0"),
        ("/", "0"),
    ]:
        storage.create(root, lock_def(depth=depth, scope="shared"))
    paths = ["/", "/a", "/a/b", "/a/b/c", "/a/b/c/d", "/a/bc", "/ab/z", "/x", "/nothing"]
    flags = [(True, False), (False, True), (True, True)]

    def answers() -> list[list[str]]:
        return [
            sorted(
                lock["root"]
                for lock in storage.get_lock_list(
                    path, include_root=root, include_children=children, token_only=False
                )
            )
            for path in paths
            for root, children in flags
        ]

    outside = answers()
    with storage.request_scope(""):
        assert answers() == outside
    below_a = outside[paths.index("/a") * len(flags) + 1]
    assert below_a == ["/a/b", "/a/b/c/d", "/a/bc"]  # not /ab, whose name starts as /a does
