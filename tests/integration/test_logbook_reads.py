"""``read_logbook`` (``davserver audit``, ``GET /api/v1/audit``) against a logbook built row
by row, on both engines: every filter and combination of them, paged a few rows at a time
with ``before``, gives exactly the rows a plain reading of the filters picks, newest first,
none twice and none skipped, also where many rows share one time."""

from __future__ import annotations

import datetime as dt
import itertools
import uuid
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import pytest
import sqlalchemy as sa

from davserver.db import Database
from davserver.errors import BadRequest
from davserver.models import LogEntry, Op, User
from davserver.services.audit import read_logbook

START = dt.datetime(2026, 3, 1, tzinfo=dt.UTC)


@dataclass
class Book:
    """The logbook's rows as written, and the users they name."""

    users: dict[str, uuid.UUID]
    rows: list[dict[str, Any]] = field(default_factory=list)


@pytest.fixture
def book(database: Database) -> Book:
    names = ("alice", "bob", "admin")
    users = {name: uuid.uuid4() for name in names}
    with database.write() as session:
        accounts = [{"id": users[n], "username": n, "created_at": START} for n in names]
        session.execute(sa.insert(User.__table__), [{**a, "updated_at": START} for a in accounts])
    book = Book(users)
    node = uuid.uuid4()
    alice, bob, admin = (str(users[n]) for n in names)
    # (user, op, node, details): what each account did, what happened to alice's account
    # with nobody signed in, and what the admin did to accounts, their own included.
    kinds: list[tuple[str | None, Op, uuid.UUID | None, dict[str, Any]]] = [
        ("alice", Op.FILE_CREATE, node, {}),
        ("alice", Op.FILE_DOWNLOAD, node, {}),
        ("bob", Op.FILE_DOWNLOAD, node, {}),
        ("bob", Op.FOLDER_CREATE, None, {}),
        ("alice", Op.GRANT_CREATE, node, {}),
        (None, Op.LOGIN_FAILURE, None, {"username": "ALICE"}),
        (None, Op.LOGIN_FAILURE, None, {"username": "bob"}),
        (None, Op.LOGIN_BAN, None, {"key": "user:alice"}),
        (None, Op.TOKEN_REUSE, None, {"user_id": alice}),
        ("admin", Op.USER_DISABLE, None, {"user_id": alice}),
        ("admin", Op.APIKEY_CREATE, None, {"user_id": bob}),
        ("admin", Op.USER_PASSWORD_SET, None, {"user_id": admin}),
        ("alice", Op.SESSION_END, None, {"user_id": alice}),
        ("admin", Op.SESSION_END, None, {"user_id": alice}),
        ("alice", Op.LOGIN_SUCCESS, None, {}),
    ]
    # 75 rows over 6 distinct times, so pages end inside runs of rows with one time.
    for i, (who, op, on, details) in enumerate(itertools.islice(itertools.cycle(kinds), 75)):
        book.rows.append(
            {
                "occurred_at": START + dt.timedelta(minutes=(i * 7) % 6),
                "user_id": users[who] if who else None,
                "op_type": op.value,
                "node_id": on,
                "details": details,
                "account_id": _account(users, op, details),
            }
        )
    with database.write() as session:
        session.execute(sa.insert(LogEntry.__table__), book.rows)
    with database.connect() as conn:
        ids = conn.scalars(sa.select(LogEntry.__table__.c.id).order_by("id")).all()
    for row, row_id in zip(book.rows, ids, strict=True):
        row["id"] = row_id
    return book


def _account(users: dict[str, uuid.UUID], op: Op, details: dict[str, Any]) -> uuid.UUID | None:
    """The account a row is about, as its writers set it: by its id in details, or by the
    name a failed sign-in or a ban gives."""
    if "user_id" in details:
        return uuid.UUID(details["user_id"])
    name = details.get("username", details.get("key", "").removeprefix("user:")).lower()
    return users.get(name)


def expected(book: Book, **filters: Any) -> list[int]:
    """The ids of the rows ``filters`` pick, as their documentation reads, newest first."""
    user = filters.get("user_id")
    name = next((n for n, i in book.users.items() if i == user), None)
    op = filters.get("op")

    def about(row: dict[str, Any]) -> bool:
        details, kind, nobody = row["details"], row["op_type"], row["user_id"] is None
        return (
            (nobody and kind == "auth:login:failure" and details["username"].lower() == name)
            or (nobody and kind == "auth:login:ban" and details["key"] == f"user:{name}")
            or (nobody and kind == "auth:token:reuse" and details["user_id"] == str(user))
            or (
                filters.get("about_user", False)
                and kind.startswith(("user:", "apikey:", "auth:session:end"))
                and details.get("user_id") == str(user)
            )
        )

    def picked(row: dict[str, Any]) -> bool:
        return (
            (user is None or row["user_id"] == user or about(row))
            and (op is None or row["op_type"] == op or row["op_type"].startswith(op + ":"))
            and ("node_id" not in filters or row["node_id"] == filters["node_id"])
            and ("since" not in filters or row["occurred_at"] >= filters["since"])
            and ("until" not in filters or row["occurred_at"] < filters["until"])
        )

    chosen = sorted(
        (row for row in book.rows if picked(row)),
        key=lambda row: (row["occurred_at"], row["id"]),
        reverse=True,
    )
    return [row["id"] for row in chosen]


def paged(database: Database, page: int, **filters: Any) -> list[int]:
    """Every row ``read_logbook`` gives for ``filters``, ``page`` at a time."""
    ids: list[int] = []
    while True:
        before = ids[-1] if ids else None
        rows = read_logbook(database, limit=page, before=before, **filters)
        ids += [row.id for row in rows]
        if len(rows) < page:
            return ids


def test_every_filter_pages_through_exactly_its_rows(database: Database, book: Book) -> None:
    users = book.users
    node = book.rows[0]["node_id"]
    middle = START + dt.timedelta(minutes=2)
    questions: list[dict[str, Any]] = [
        {},
        {"op": "file"},
        {"op": "file:download"},
        {"op": "auth"},
        {"op": "user"},
        {"op": "package"},
        {"node_id": node},
        {"since": middle},
        {"until": middle},
        {"since": middle, "until": middle + dt.timedelta(minutes=2)},
    ]
    for name in ("alice", "bob", "admin"):
        for about_user in (False, True):
            who = {"user_id": users[name], "about_user": about_user}
            questions += [who, {**who, "op": "auth"}, {**who, "op": "user"}, {**who, "op": "file"}]
            questions += [{**who, "node_id": node}, {**who, "since": middle}]
    for filters in questions:
        want = expected(book, **filters)
        for page in (1, 4, 100):
            assert paged(database, page, **filters) == want, (filters, page)
    # The filters pick what they say they do (the reading above is not empty everywhere).
    alice = {"user_id": users["alice"], "about_user": True}
    assert len(expected(book, **alice)) == 50
    assert len(expected(book, user_id=users["alice"])) == 40


def test_an_admins_own_rows_about_their_account_come_once(database: Database, book: Book) -> None:
    """The admin set their own password: the row is theirs and about their account."""
    rows = read_logbook(database, user_id=book.users["admin"], about_user=True, op="user")
    assert Counter(row.op for row in rows) == {"user:disable": 5, "user:password:set": 5}
    assert len({row.id for row in rows}) == len(rows)


def test_an_unknown_operation_or_row_is_an_error(database: Database, book: Book) -> None:
    with pytest.raises(BadRequest, match="no operation 'shared'"):
        read_logbook(database, op="shared")
    with pytest.raises(BadRequest, match="no logbook row"):
        read_logbook(database, before=max(row["id"] for row in book.rows) + 1)


def test_a_row_the_reader_may_not_read_is_no_cursor(database: Database, book: Book) -> None:
    """A user's cursor was looked up among all rows: ``before=N`` answered "no logbook row N"
    only when none existed, and cut the page at the time of anyone's row N. Another user's
    row is as unknown to them as a missing one now."""
    alice = book.users["alice"]
    others = [row["id"] for row in book.rows if row["user_id"] not in (alice, None)]
    own = [row["id"] for row in book.rows if row["user_id"] == alice]
    with pytest.raises(BadRequest, match="no logbook row"):
        read_logbook(database, user_id=alice, before=others[-1])
    page = read_logbook(database, user_id=alice, before=own[-1])
    assert page and all(row.id != own[-1] for row in page)
    assert read_logbook(database, before=others[-1])  # an admin's reading: every row
