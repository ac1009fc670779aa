"""Importing users from another system, with the password hashes they already have.

The input is CSV with a header row naming its columns: ``username`` and ``password_hash`` are
required; ``email``, ``roles`` (names separated by ``;`` or blanks, default ``user``) and
``quota`` (bytes, or with a K/M/G/T suffix; empty for unlimited) are optional. Hashes are kept
as they are, never rehashed: bcrypt (``$2a$``, ``$2b$``, ``$2y$``) and argon2 (``$argon2id$``,
``$argon2i$``), each checked by passlib's handler. The imported users sign in with their old
passwords, and the first successful login replaces a bcrypt hash by argon2
(``AccountService.authenticate``).

All or nothing: every row is checked first, and when any row is bad nothing is imported and
every problem is reported with its line number (``ImportRejected.problems``). A username that
already exists is a problem too, unless ``skip_existing``: then that row is skipped.
"""

from __future__ import annotations

import csv
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import sqlalchemy as sa
from passlib.hash import argon2, bcrypt
from sqlalchemy.orm import Session

if TYPE_CHECKING:
    import _csv

from davserver.db import Database
from davserver.db.types import utcnow
from davserver.errors import BadRequest, DomainError
from davserver.models import Op, User, UserRole
from davserver.services.account_rules import (
    DEFAULT_ROLES,
    RolesLoader,
    account_key,
    audit_details,
    check_email,
    check_name,
    parse_size,
    require_admin,
    serialize_account_changes,
)
from davserver.services.actor import Actor
from davserver.services.audit import record_audits

REQUIRED_COLUMNS = ("username", "password_hash")
OPTIONAL_COLUMNS = ("email", "roles", "quota")
MAX_HASH_LENGTH = 255  # users.password_hash
# Accepted hash prefixes and the passlib handler that checks the rest of the hash.
_SCHEMES = {
    "$2a$": ("bcrypt", bcrypt),
    "$2b$": ("bcrypt", bcrypt),
    "$2y$": ("bcrypt", bcrypt),
    "$argon2id$": ("argon2", argon2),
    "$argon2i$": ("argon2", argon2),
}


@dataclass(frozen=True)
class ImportRow:
    line: int
    username: str
    password_hash: str
    scheme: str
    email: str | None = None
    roles: tuple[str, ...] = DEFAULT_ROLES
    quota_bytes: int | None = None


@dataclass(frozen=True)
class ImportProblem:
    line: int
    reason: str

    def __str__(self) -> str:
        return f"line {self.line}: {self.reason}"


class ImportRejected(BadRequest):
    """Some rows are bad; nothing was imported. ``problems`` lists every one."""

    def __init__(self, problems: Sequence[ImportProblem]) -> None:
        self.problems = sorted(problems, key=lambda p: p.line)
        super().__init__(
            f"{len(self.problems)} bad row(s), nothing imported; first: {self.problems[0]}"
        )


@dataclass(frozen=True)
class ImportReport:
    imported: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)


def hash_scheme(password_hash: str) -> str:
    """``"bcrypt"`` or ``"argon2"`` for a well-formed hash of those kinds; BadRequest else."""
    for prefix, (scheme, handler) in _SCHEMES.items():
        if password_hash.startswith(prefix) and handler.identify(password_hash):
            try:
                handler.from_string(password_hash)
            except ValueError as exc:
                raise BadRequest(f"malformed {scheme} hash ({exc})") from None
            if len(password_hash) > MAX_HASH_LENGTH:
                raise BadRequest(f"the hash is longer than {MAX_HASH_LENGTH} characters")
            return scheme
    raise BadRequest(
        "unsupported password hash format; expected bcrypt ($2a$, $2b$, $2y$) "
        "or argon2 ($argon2id$, $argon2i$)"
    )


def read_user_csv(lines: Iterable[str]) -> tuple[list[ImportRow], list[ImportProblem]]:
    """The rows of a user CSV that are well-formed on their own, and the problems of the others.

    Checks what needs no database: the header, names, e-mail syntax, hashes, quotas, and
    names or e-mail addresses repeated within the file. Line numbers count the header as 1.
    """
    reader = csv.reader(lines)
    try:
        rows, problems = _read(reader)
    except csv.Error as exc:  # a field over csv's limit, a NUL...: nothing past it is read
        return [], [ImportProblem(max(reader.line_num, 1), f"not readable as CSV: {exc}")]
    return rows, problems


def _read(reader: _csv.Reader) -> tuple[list[ImportRow], list[ImportProblem]]:
    header_line = next(reader, None)
    if header_line is None:
        return [], [ImportProblem(1, "the file is empty; a header row is required")]
    header = [name.strip().lower() for name in header_line]
    missing = [name for name in REQUIRED_COLUMNS if name not in header]
    unknown = [name for name in header if name not in REQUIRED_COLUMNS + OPTIONAL_COLUMNS]
    repeated = sorted({name for name in header if header.count(name) > 1})
    header_problems = [
        f"{what} column(s): {', '.join(names)}"
        for what, names in (("missing", missing), ("unknown", unknown), ("repeated", repeated))
        if names
    ]
    if header_problems:
        return [], [ImportProblem(1, "; ".join(header_problems))]
    rows: list[ImportRow] = []
    problems: list[ImportProblem] = []
    seen_names: dict[str, int] = {}
    seen_emails: dict[str, int] = {}
    last_line = reader.line_num
    for record in reader:
        # A quoted field may span lines: a record starts on the line after the previous one.
        line, last_line = last_line + 1, reader.line_num
        if not any(cell.strip() for cell in record):
            continue  # blank lines are allowed
        if len(record) != len(header):
            reason = f"{len(record)} fields, the header has {len(header)}"
            if any(cell.startswith("$argon2") for cell in record):
                reason += ' (argon2 hashes contain commas: put the hash in "double quotes")'
            problems.append(ImportProblem(line, reason))
            continue
        values = dict(zip(header, (cell.strip() for cell in record), strict=True))
        try:
            row = _row(line, values)
        except DomainError as exc:
            problems.append(ImportProblem(line, str(exc)))
            continue
        key = account_key(row.username)
        if key in seen_names:
            problems.append(
                ImportProblem(line, f"username {row.username!r} repeats line {seen_names[key]}")
            )
            continue
        seen_names[key] = line
        if row.email is not None:
            email_key = row.email.lower()
            if email_key in seen_emails:
                problems.append(
                    ImportProblem(
                        line, f"e-mail {row.email!r} repeats line {seen_emails[email_key]}"
                    )
                )
                continue
            seen_emails[email_key] = line
        rows.append(row)
    return rows, problems


class UserImportService:
    def __init__(self, db: Database, ensure_roles: RolesLoader) -> None:
        self.db = db
        self.ensure_roles = ensure_roles

    def import_csv(
        self,
        actor: Actor | None,
        lines: Iterable[str],
        *,
        skip_existing: bool = False,
        source: str = "",
    ) -> ImportReport:
        """Import the users of a CSV (see the module docstring) in one transaction.

        Raises ImportRejected listing every bad row, with nothing imported; Forbidden when
        the actor is not an admin. ``source`` (a file name) goes into the logbook rows.
        """
        require_admin(actor)
        rows, problems = read_user_csv(lines)
        with self.db.write() as session:
            serialize_account_changes(session)
            roles = self.ensure_roles(session)
            good, more_problems, skipped = _against_database(session, rows, roles, skip_existing)
            problems.extend(more_problems)
            if problems:
                raise ImportRejected(problems)
            _insert(session, actor, good, roles, source)
        return ImportReport(imported=[row.username for row in good], skipped=skipped)


def _against_database(
    session: Session, rows: list[ImportRow], roles: Mapping[str, int], skip_existing: bool
) -> tuple[list[ImportRow], list[ImportProblem], list[str]]:
    """Rows to insert, problems found against existing users and roles, names skipped."""
    names = {account_key(name) for name in session.scalars(sa.select(User.username))}
    emails = {
        email.lower() for email in session.scalars(sa.select(User.email)) if email is not None
    }
    good: list[ImportRow] = []
    problems: list[ImportProblem] = []
    skipped: list[str] = []
    for row in rows:
        if account_key(row.username) in names:
            if skip_existing:
                skipped.append(row.username)
            else:
                problems.append(
                    ImportProblem(row.line, f"username {row.username!r} already exists")
                )
            continue
        unknown = [name for name in row.roles if name not in roles]
        if unknown:
            problems.append(ImportProblem(row.line, f"unknown role(s): {', '.join(unknown)}"))
            continue
        if row.email is not None and row.email.lower() in emails:
            problems.append(ImportProblem(row.line, f"e-mail {row.email!r} is already in use"))
            continue
        good.append(row)
    return good, problems, skipped


def _insert(
    session: Session,
    actor: Actor | None,
    rows: Sequence[ImportRow],
    roles: Mapping[str, int],
    source: str,
) -> None:
    """Insert ``rows`` with their roles and logbook rows: three statements run for all of
    them (executemany), not three per user: 20,000 users one at a time held the database's
    write lock for 37 s, and a running server's writes waited for it (SQLite: its uploads
    failed after ``database.busy_timeout``)."""
    if not rows:
        return
    now = utcnow()
    ids = [uuid.uuid4() for _ in rows]
    assigned_by = actor.user_id if actor is not None else None
    users = [
        {"id": user_id, "username": row.username, "email": row.email,
         "password_hash": row.password_hash, "quota_bytes": row.quota_bytes,
         "created_at": now, "updated_at": now}
        for user_id, row in zip(ids, rows, strict=True)
    ]  # fmt: skip
    session.execute(sa.insert(User), users)
    given = [
        {"user_id": user_id, "role_id": roles[name], "assigned_by": assigned_by,
         "assigned_at": now}
        for user_id, row in zip(ids, rows, strict=True)
        for name in row.roles
    ]  # fmt: skip
    if given:
        session.execute(sa.insert(UserRole), given)
    record_audits(
        session,
        actor,
        Op.USER_IMPORT,
        (
            {
                "details": audit_details(
                    actor,
                    None,
                    {
                        "email": row.email,
                        "roles": list(row.roles),
                        "quota_bytes": row.quota_bytes,
                        "hash_scheme": row.scheme,
                    },
                    user=row.username,
                    user_id=str(user_id),
                    source=source,
                    line=row.line,
                )
            }
            for user_id, row in zip(ids, rows, strict=True)
        ),
    )


def _row(line: int, values: dict[str, str]) -> ImportRow:
    username = check_name(values["username"])
    password_hash = values["password_hash"]
    if not password_hash:
        raise BadRequest("password_hash is empty")
    roles = tuple(dict.fromkeys(values.get("roles", "").replace(";", " ").split())) or DEFAULT_ROLES
    return ImportRow(
        line=line,
        username=username,
        password_hash=password_hash,
        scheme=hash_scheme(password_hash),
        email=check_email(values.get("email")),
        roles=roles,
        quota_bytes=parse_size(values.get("quota", "")),
    )
