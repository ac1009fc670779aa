"""What user, group, API key and import administration share: the rules for names, e-mail
addresses, passwords and sizes; finding a user; who may administer; the logbook details.

Names of users and groups are URL path segments (``/shared/<owner>/``, ``/groups/<group>/``),
so they are 3 to 150 ASCII letters, digits and ``. _ - @``, not starting with ``.`` or ``-``;
they are unique ignoring case: the services check under ``serialize_account_changes`` (to
answer clearly), and unique ``lower()`` indexes hold it for every writer (migration 0006).
"""

from __future__ import annotations

import datetime as dt
import enum
import re
import secrets
import uuid
from collections.abc import Callable, Mapping
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from davserver.errors import BadRequest, Conflict, Forbidden, NotFound
from davserver.models import User
from davserver.services.actor import Actor
from davserver.services.bounds import MAX_BYTES, check_bytes, spelled_number

# ensure_roles(session) -> {role name: id}, creating the system roles when missing
# (AccountService.ensure_roles): how the services find role ids.
RolesLoader = Callable[[Session], Mapping[str, int]]

MIN_NAME_LENGTH = 3
MAX_NAME_LENGTH = 150
_NAME = re.compile(rf"[A-Za-z0-9_@][A-Za-z0-9._@-]{{{MIN_NAME_LENGTH - 1},{MAX_NAME_LENGTH - 1}}}")
# Printable ASCII without "@" before the "@", DNS labels after it (at least two).
_EMAIL = re.compile(
    r"[\x21-\x3f\x41-\x7e]{1,64}@"
    r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
    r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)+"
)
MAX_EMAIL_LENGTH = 320
MIN_PASSWORD_LENGTH = 8
# auth.passwords refuses longer input at login before hashing, so a longer password could be
# set but never used (tests check that the two limits agree).
MAX_PASSWORD_BYTES = 1024
DEFAULT_ROLES = ("user",)
_SIZE = re.compile(r"(\d+)\s*([KMGT]?)(?:I?B)?", re.IGNORECASE)
_SIZE_FACTORS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
# Any constant: on PostgreSQL, account changes take this transaction-level advisory lock.
_ACCOUNTS_LOCK_KEY = 0x64617673


class UserStatus(enum.StrEnum):
    ACTIVE = "active"
    DISABLED = "disabled"
    DELETED = "deleted"


# ------------------------------------------------------------------------------ input rules


def check_name(name: str, what: str = "username") -> str:
    """``name`` when it is a valid user or group name; BadRequest saying why otherwise."""
    if not MIN_NAME_LENGTH <= len(name) <= MAX_NAME_LENGTH:
        raise BadRequest(
            f"a {what} has {MIN_NAME_LENGTH} to {MAX_NAME_LENGTH} characters: {name!r}"
        )
    # "@" marks a group where users and groups meet (/shared/@group/, @GROUP:/path).
    if name[0] in ".-@":
        raise BadRequest(f"a {what} cannot start with {name[0]!r}: {name!r}")
    if not _NAME.fullmatch(name):
        raise BadRequest(f"a {what} has only ASCII letters, digits and . _ - @: {name!r}")
    return name


def check_email(email: str | None) -> str | None:
    """The e-mail address without surrounding blanks, None for none; BadRequest if malformed."""
    if email is None or not email.strip():
        return None
    email = email.strip()
    if len(email) > MAX_EMAIL_LENGTH or not _EMAIL.fullmatch(email):
        raise BadRequest(f"not an e-mail address: {email!r}")
    return email


def check_password(password: str) -> str:
    """``password`` when it is long enough and not too long to be verified at login."""
    if len(password) < MIN_PASSWORD_LENGTH:
        raise BadRequest(f"a password has at least {MIN_PASSWORD_LENGTH} characters")
    try:
        encoded = password.encode("utf-8")
    except UnicodeEncodeError:  # bytes that were not UTF-8 (stdin), as lone surrogates
        raise BadRequest("a password is text: what was given is not UTF-8") from None
    if len(encoded) > MAX_PASSWORD_BYTES:
        raise BadRequest(f"a password has at most {MAX_PASSWORD_BYTES} bytes")
    if "\x00" in password:  # usable in Basic, but no JSON body (/token) may carry it
        raise BadRequest("a password cannot hold a NUL character")
    return password


def generate_password() -> str:
    """A random password (24 URL-safe characters, 144 bits), to be shown once."""
    return secrets.token_urlsafe(18)


def parse_size(text: str) -> int | None:
    """Bytes from ``"500"``, ``"10M"``, ``"2G"``, ``"1TiB"`` (binary multiples); None for
    ``""``, ``"none"`` or ``"unlimited"``. BadRequest for anything else, and for more than
    ``bounds.MAX_BYTES`` (the quota column is a BigInteger)."""
    text = text.strip()
    if text.lower() in ("", "none", "unlimited"):
        return None
    match = _SIZE.fullmatch(text)
    if not match:
        raise BadRequest(f"not a size (bytes, or a number with K, M, G or T): {text!r}")
    number = spelled_number(match.group(1), MAX_BYTES)
    if number is None:
        raise BadRequest(f"a quota is 0 to {MAX_BYTES} bytes (8 EiB): {text!r}")
    return check_bytes(number * _SIZE_FACTORS[match.group(2).upper()], what="a quota")


def format_size(size: int | None) -> str:
    """``"unlimited"`` for None, else the size in the largest binary unit that divides it."""
    if size is None:
        return "unlimited"
    for unit in ("T", "G", "M", "K"):
        factor = _SIZE_FACTORS[unit]
        if size and size % factor == 0:
            return f"{size // factor}{unit}"
    return str(size)


def serialize_account_changes(session: Session) -> None:
    """Account changes run one at a time, so that two of them cannot both pass a check that
    only one may pass (a name still free, another admin left). SQLite writers already queue
    (``BEGIN IMMEDIATE``); PostgreSQL takes a transaction-level advisory lock."""
    if session.get_bind().dialect.name == "postgresql":
        session.execute(sa.select(sa.func.pg_advisory_xact_lock(_ACCOUNTS_LOCK_KEY)))


def hold_account_row(session: Session, user_id: uuid.UUID) -> None:
    """Lock the user's row until the transaction ends (PostgreSQL; SQLite's writers queue
    anyway), before a change that ends the user's sessions: a token login in flight, which
    reads the row locked before it starts a session (``AccountService.still_signed_in``),
    then waits for the change and sees it, or commits its session first, which then ends."""
    session.execute(sa.select(User.id).where(User.id == user_id).with_for_update())


def account_key(username: str) -> str:
    """The form a user's or a group's name is found by: names are unique ignoring case
    (``lower()``, migration 0006) and ASCII, so only ASCII is folded (Python would fold the
    Kelvin sign to k, and a command naming "\u212aarl" would act on karl)."""
    return username.lower() if username.isascii() else username


def find_user(session: Session, username: str) -> User:
    """The user of that name in any case (names are unique ignoring case), deleted or not."""
    key = account_key(username)
    found = session.scalar(sa.select(User).where(sa.func.lower(User.username) == key))
    if found is None:
        raise NotFound(f"no user {username!r}")
    return found


def find_live_user(session: Session, username: str) -> User:
    """Like find_user, but a deleted user is a Conflict: deleted accounts are not changed."""
    user = find_user(session, username)
    if user.deleted_at is not None:
        raise Conflict(f"user {user.username!r} is deleted")
    return user


def require_admin(actor: Actor | None) -> None:
    """Account administration is for admins, and for the local command line (actor None)."""
    if actor is not None and not actor.is_admin:
        raise Forbidden("only admins administer accounts")


def audit_details(actor: Actor | None, before: Any, after: Any, **subject: Any) -> dict[str, Any]:
    """A logbook ``details`` object: what was changed, before and after, and how."""
    details: dict[str, Any] = {**subject, "before": before, "after": after}
    if actor is None:
        details["via"] = "cli"
    return details


def iso(value: dt.datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def user_status(user: User) -> UserStatus:
    if user.deleted_at is not None:
        return UserStatus.DELETED
    return UserStatus.ACTIVE if user.is_active else UserStatus.DISABLED
