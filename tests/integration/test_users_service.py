"""Account administration on both engines: users, roles, groups, API keys, CSV import, logbook."""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from passlib.hash import argon2, bcrypt

from auth import passwords
from davserver.config import load_settings
from davserver.context import Services
from davserver.db.migrate import upgrade
from davserver.db.types import utcnow
from davserver.errors import (
    AlreadyExists,
    BadRequest,
    Conflict,
    Forbidden,
    NotFound,
    Unauthorized,
)
from davserver.models import ApiKey, Group, LogEntry, LoginSession, Node, RefreshToken, User
from davserver.services import account_rules
from davserver.services.account_rules import (
    UserStatus,
    check_email,
    check_name,
    format_size,
    parse_size,
)
from davserver.services.actor import Actor
from davserver.services.apikeys import KeyStatus, key_hash
from davserver.services.user_import import ImportRejected, hash_scheme, read_user_csv

BCRYPT_HASH = bcrypt.using(rounds=4).hash("old-bcrypt-password")
ARGON2I_HASH = argon2.using(type="i", memory_cost=1024, rounds=1).hash("old-argon2-password")


@pytest.fixture
def services(db_url: str, tmp_path: Path) -> Iterator[Services]:
    settings = load_settings(None, env={}, data_dir=str(tmp_path), database__url=db_url)
    built = Services(settings)
    upgrade(built.db)
    try:
        yield built
    finally:
        built.close()


@pytest.fixture
def admin(services: Services) -> Actor:
    """An admin actor (a user with the admin role, signed in over some front)."""
    info, _ = services.users.create_user(None, "root-admin", roles=["admin", "user"])
    return Actor(user_id=info.id, username=info.username, roles=frozenset(info.roles))


def logbook(services: Services, op: str | None = None) -> list[sa.Row[Any]]:
    """The logbook rows (op_type, user_id, details) in order, of one operation or all."""
    query = sa.select(LogEntry.op_type, LogEntry.user_id, LogEntry.details).order_by(LogEntry.id)
    if op is not None:
        query = query.where(LogEntry.op_type == op)
    with services.db.read() as session:
        return list(session.execute(query).all())


def stored_user(services: Services, username: str) -> User:
    with services.db.read() as session:
        user = session.scalar(sa.select(User).where(User.username == username))
        assert user is not None
        session.expunge(user)
        return user


# ------------------------------------------------------------------------------ input rules


@pytest.mark.parametrize(
    ("name", "valid"),
    [
        ("abc", True),
        ("alice.smith", True),
        ("alice@example.org", True),
        ("_svc-backup_01", True),
        ("Zoë", False),  # ASCII only: names are URL path segments
        ("a" * 150, True),
        ("a" * 151, False),
        ("ab", False),
        ("", False),
        (".hidden", False),
        ("-dash", False),
        # "@name" is a group in /shared/@name/ and in the command line's @GROUP:/path and
        # --to @GROUP: a user so named passed their files off as the group's.
        ("@team", False),
        ("ab@", True),
        ("..", False),
        ("with space", False),
        ("a/b", False),
        ("a%2fb", False),
        ("a:b", False),
        ("tab\tname", False),
        ("line\n", False),
        ("alice\n", False),
    ],
)
def test_name_rules(name: str, valid: bool) -> None:
    if valid:
        assert check_name(name) == name
    else:
        with pytest.raises(BadRequest):
            check_name(name)


@pytest.mark.parametrize(
    ("email", "expected"),
    [
        ("alice@example.org", "alice@example.org"),
        ("  Alice.Smith+dav@Mail.Example.CO.uk ", "Alice.Smith+dav@Mail.Example.CO.uk"),
        ("", None),
        ("   ", None),
        (None, None),
        ("alice", BadRequest),
        ("alice@", BadRequest),
        ("@example.org", BadRequest),
        ("alice@localhost", BadRequest),  # a domain has a dot
        ("al ice@example.org", BadRequest),
        ("alice@@example.org", BadRequest),
        ("alice@exa_mple.org", BadRequest),
        ("alice@-example.org", BadRequest),
        ("a" * 65 + "@example.org", BadRequest),
        ("alïce@example.org", BadRequest),
    ],
)
def test_email_rules(email: str | None, expected: str | type[Exception] | None) -> None:
    if isinstance(expected, type):
        with pytest.raises(expected):
            check_email(email)
    else:
        assert check_email(email) == expected


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("", None),
        ("unlimited", None),
        ("None", None),
        ("0", 0),
        ("1500", 1500),
        ("10K", 10 * 1024),
        ("10k", 10 * 1024),
        ("5M", 5 * 1024**2),
        ("2G", 2 * 1024**3),
        ("2GiB", 2 * 1024**3),
        ("2 GB", 2 * 1024**3),
        ("1T", 1024**4),
        ("-5", BadRequest),
        ("1.5G", BadRequest),
        ("10X", BadRequest),
        ("G", BadRequest),
    ],
)
def test_sizes(text: str, size: int | type[Exception] | None) -> None:
    if isinstance(size, type):
        with pytest.raises(size):
            parse_size(text)
    else:
        assert parse_size(text) == size
        assert size is None or parse_size(format_size(size)) == size


def test_password_limit_matches_the_login_limit() -> None:
    # A longer password could be set but never used: login refuses it before hashing.
    assert account_rules.MAX_PASSWORD_BYTES == passwords.MAX_PASSWORD_BYTES


# ------------------------------------------------------------------------------ users


def test_create_user_with_generated_password_and_defaults(services: Services) -> None:
    info, generated = services.users.create_user(None, "alice", email="alice@example.org")
    assert generated is not None and len(generated) >= 20
    assert info.roles == ["user"] and info.status is UserStatus.ACTIVE
    assert info.quota_bytes is None
    stored = stored_user(services, "alice")
    assert stored.password_hash is not None and stored.password_hash.startswith("$argon2id$")
    assert services.hasher.verify(generated, stored.password_hash)[0]


def test_create_user_with_given_password_roles_and_quota(services: Services) -> None:
    info, generated = services.users.create_user(
        None, "bob", password="correct horse", roles=["viewer", "moderator"], quota_bytes=5 << 30
    )
    assert generated is None
    assert info.roles == ["moderator", "viewer"] and info.quota_bytes == 5 << 30
    assert services.hasher.verify("correct horse", stored_user(services, "bob").password_hash)[0]


@pytest.mark.parametrize(
    ("existing", "new", "error"),
    [
        (("alice", None), ("Alice", None), AlreadyExists),
        (("alice", None), ("ALICE", None), AlreadyExists),
        (("alice", "a@example.org"), ("bob", "A@Example.ORG"), AlreadyExists),
        (("alice", "a@example.org"), ("bob", "b@example.org"), None),
        (("alice", None), ("alice2", None), None),
    ],
)
def test_names_and_emails_are_unique_ignoring_case(
    services: Services,
    existing: tuple[str, str | None],
    new: tuple[str, str | None],
    error: type[Exception] | None,
) -> None:
    services.users.create_user(None, existing[0], email=existing[1])
    if error is None:
        services.users.create_user(None, new[0], email=new[1])
    else:
        with pytest.raises(error):
            services.users.create_user(None, new[0], email=new[1])
        assert len(services.users.list_users()) == 1


def test_a_name_folding_to_another_in_python_alone_finds_no_one(services: Services) -> None:
    """Python lowers the Kelvin sign to k, SQL does not: ``user disable "\u212aarl"`` found
    karl and disabled him. Names are ASCII, so a non-ASCII one names no user or group."""
    services.users.create_user(None, "karl")
    services.groups.create_group(None, "kit")
    with pytest.raises(NotFound):
        services.users.disable_user(None, "\u212aarl")
    with pytest.raises(NotFound):
        services.users.show_user("\u212aARL")
    with pytest.raises(NotFound):
        services.groups.add_member(None, "\u212ait", "karl")
    assert services.users.show_user("KARL").status == "active"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"roles": ["superuser"]}, "unknown role"),
        ({"password": "short"}, "at least 8"),
        ({"password": "x" * 1025}, "at most 1024 bytes"),
        ({"email": "not-an-address"}, "not an e-mail"),
        ({"quota_bytes": -1}, "negative"),
    ],
)
def test_create_user_refuses_bad_input(
    services: Services, kwargs: dict[str, Any], message: str
) -> None:
    with pytest.raises(BadRequest, match=message):
        services.users.create_user(None, "carol", **kwargs)
    assert services.users.list_users() == []


def test_list_filters_by_status(services: Services) -> None:
    for name in ("anna", "bert", "cleo", "dora"):
        services.users.create_user(None, name, password="password-1")
    services.users.disable_user(None, "bert")
    services.users.delete_user(None, "cleo")

    def names(status: UserStatus | None) -> list[str]:
        return [u.username for u in services.users.list_users(status)]

    assert names(None) == ["anna", "bert", "dora"]
    assert names(UserStatus.ACTIVE) == ["anna", "dora"]
    assert names(UserStatus.DISABLED) == ["bert"]
    assert names(UserStatus.DELETED) == ["cleo"]


def test_show_user_lists_roles_groups_and_usable_keys(services: Services) -> None:
    info, _ = services.users.create_user(None, "erin", roles=["user", "moderator"])
    services.groups.create_group(None, "staff")
    services.groups.add_member(None, "staff", "erin", admin=True)
    services.api_keys.create(None, info.id, "laptop")
    _, revoked = services.api_keys.create(None, info.id, "old")
    services.api_keys.revoke(None, info.id, revoked)
    detail = services.users.show_user("ERIN")  # found ignoring case
    assert detail.username == "erin" and detail.roles == ["moderator", "user"]
    assert [(m.group, m.is_admin) for m in detail.groups] == [("staff", True)]
    assert detail.active_api_keys == 1
    assert detail.last_login_at is None and detail.deleted_at is None
    with pytest.raises(NotFound):
        services.users.show_user("nobody")


def test_soft_delete_keeps_the_name_and_the_files_and_revokes_keys(services: Services) -> None:
    info, _ = services.users.create_user(
        None, "frank", email="frank@example.org", password="frank's password"
    )
    home = services.files.home_id(info.id)
    _, key = services.api_keys.create(None, info.id, "sync")
    services.tokens.login("frank", "frank's password")
    deleted = services.users.delete_user(None, "frank")
    assert deleted.status is UserStatus.DELETED and deleted.email is None
    stored = stored_user(services, "frank")
    assert stored.deleted_at is not None and not stored.is_active
    with services.db.read() as session:
        assert session.get(Node, home) is not None  # the files stay
        key_row = session.scalar(sa.select(ApiKey).where(ApiKey.key_hash == key_hash(key)))
        assert key_row is not None and not key_row.is_active
        # No session or refresh token is left open behind the deleted account.
        where = {"user_id": info.id}
        assert session.scalars(sa.select(LoginSession).filter_by(**where)).all()
        assert (
            session.scalars(sa.select(LoginSession).filter_by(**where, ended_at=None)).all() == []
        )
        assert session.scalars(sa.select(RefreshToken).filter_by(**where)).all()
        assert (
            session.scalars(sa.select(RefreshToken).filter_by(**where, revoked_at=None)).all() == []
        )
    with pytest.raises(AlreadyExists):
        services.users.create_user(None, "Frank")  # the name stays reserved
    services.users.create_user(None, "frank2", email="frank@example.org")  # the e-mail is free
    with pytest.raises(Conflict, match="deleted"):
        services.users.enable_user(None, "frank")
    with pytest.raises(Conflict, match="deleted"):
        services.users.delete_user(None, "frank")


@pytest.mark.parametrize(
    ("change", "error"),
    [
        (lambda s: s.users.disable_user(None, "boss"), Conflict),
        (lambda s: s.users.delete_user(None, "boss"), Conflict),
        (lambda s: s.users.remove_role(None, "boss", "admin"), Conflict),
        (lambda s: s.users.remove_role(None, "boss", "user"), None),  # not the admin role
        (lambda s: s.users.disable_user(None, "other"), None),  # not an admin
    ],
)
def test_the_last_active_admin_stays(services: Services, change: Any, error: Any) -> None:
    services.users.create_user(None, "boss", roles=["admin", "user"])
    services.users.create_user(None, "other")
    if error is None:
        change(services)
    else:
        with pytest.raises(error, match="last active admin"):
            change(services)
        assert "admin" in services.users.show_user("boss").roles
        assert services.users.show_user("boss").status is UserStatus.ACTIVE


def test_a_disabled_second_admin_does_not_count(services: Services) -> None:
    services.users.create_user(None, "boss", roles=["admin"])
    services.users.create_user(None, "deputy", roles=["admin"])
    services.users.disable_user(None, "deputy")
    with pytest.raises(Conflict, match="last active admin"):
        services.users.remove_role(None, "boss", "admin")
    services.users.enable_user(None, "deputy")
    services.users.remove_role(None, "boss", "admin")  # now deputy remains
    with pytest.raises(Conflict, match="last active admin"):
        services.users.delete_user(None, "deputy")


def test_roles_are_added_and_removed_once(services: Services) -> None:
    services.users.create_user(None, "gina")
    assert services.users.add_role(None, "gina", "viewer").roles == ["user", "viewer"]
    with pytest.raises(Conflict, match="already has"):
        services.users.add_role(None, "gina", "viewer")
    with pytest.raises(BadRequest, match="unknown role"):
        services.users.add_role(None, "gina", "wizard")
    assert services.users.remove_role(None, "gina", "user").roles == ["viewer"]
    with pytest.raises(Conflict, match="does not have"):
        services.users.remove_role(None, "gina", "user")


@pytest.mark.parametrize("change", ["password", "disable", "delete"])
def test_a_token_login_in_flight_during_a_reset_leaves_no_session(
    services: Services, change: str
) -> None:
    """A token login checks the password, then starts a session with a refresh token. A reset,
    a disable or a delete committed in between ended every session there was then, and the
    login's began after it: a refresh token that kept working and rotating for good, for
    whoever held the leaked password. The login finds the change and is refused."""
    services.users.create_user(None, "mona", password="mona's old password")
    services.users.create_user(None, "other-admin", roles=["admin", "user"])
    signed_in = services.accounts.sign_in

    def sign_in_then_change(*args: Any, **kwargs: Any) -> Any:
        verified = signed_in(*args, **kwargs)
        if change == "password":
            services.users.set_password(None, "mona", "mona's new password")
        elif change == "disable":
            services.users.disable_user(None, "mona")
        else:
            services.users.delete_user(None, "mona")
        return verified

    services.accounts.sign_in = sign_in_then_change  # type: ignore[method-assign]
    with pytest.raises(Unauthorized):
        services.tokens.login("mona", "mona's old password")
    with services.db.read() as session:
        user_id = session.scalar(sa.select(User.id).where(User.username == "mona"))
        assert (
            session.scalars(
                sa.select(LoginSession.id).where(
                    LoginSession.user_id == user_id, LoginSession.ended_at.is_(None)
                )
            ).all()
            == []
        )
        assert (
            session.scalars(
                sa.select(RefreshToken.id).where(
                    RefreshToken.user_id == user_id, RefreshToken.revoked_at.is_(None)
                )
            ).all()
            == []
        )


def test_a_disable_waits_for_a_token_login_that_is_starting_its_session(
    services: Services,
) -> None:
    """The other order, on two connections at once: the login holds the user's row while it
    starts its session, and a disable begun meanwhile waits for it, then ends that session
    too. On PostgreSQL the disable ended the sessions it saw before the login committed, and
    the login's refresh token worked again once the user was enabled."""
    services.users.create_user(None, "nina", password="nina's password")
    services.users.create_user(None, "other-admin", roles=["admin", "user"])
    starting, go = threading.Event(), threading.Event()
    start = services.tokens.sessions.start

    def start_and_wait(*args: Any, **kwargs: Any) -> Any:
        started = start(*args, **kwargs)
        starting.set()
        assert go.wait(10)
        return started

    services.tokens.sessions.start = start_and_wait  # type: ignore[method-assign]
    pairs: list[Any] = []
    login = threading.Thread(
        target=lambda: pairs.append(services.tokens.login("nina", "nina's password"))
    )
    login.start()
    assert starting.wait(10)
    disable = threading.Thread(target=services.users.disable_user, args=(None, "nina"))
    disable.start()
    disable.join(0.5)
    assert disable.is_alive()  # waiting for the login's transaction
    go.set()
    login.join(10)
    disable.join(10)
    assert len(pairs) == 1
    services.users.enable_user(None, "nina")  # revives none of the sessions the disable ended
    with pytest.raises(Unauthorized):
        services.tokens.refresh(pairs[0].refresh_token)


def test_an_imported_users_first_requests_at_once_all_sign_in(services: Services) -> None:
    """A client opens several connections at once (Explorer, Finder, rclone). The first
    request hashes the imported password again; the others, waiting their turn with the
    imported hash read before, were refused (401) once the row held the new one."""
    text = f"username,password_hash\nolga,{BCRYPT_HASH}\n"
    services.user_import.import_csv(None, io.StringIO(text))
    start = threading.Barrier(8)
    outcomes: list[str] = []

    def sign_in() -> None:
        start.wait()
        try:
            outcomes.append(
                services.accounts.authenticate_password("olga", "old-bcrypt-password").username
            )
        except Unauthorized:
            outcomes.append("refused")

    threads = [threading.Thread(target=sign_in) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert outcomes == ["olga"] * 8


def test_a_rehash_at_login_does_not_undo_a_reset_made_meanwhile(services: Services) -> None:
    """An imported user's first login hashes the password again with the current parameters
    and stores that. A reset committed while the old hash was being verified was overwritten
    by it: the new password was refused and the old one worked again."""
    text = f"username,password_hash\nnils,{BCRYPT_HASH}\n"
    services.user_import.import_csv(None, io.StringIO(text))
    verify = services.accounts.hasher.verify

    def verify_while_reset(password: str, stored: str | None) -> Any:
        outcome = verify(password, stored)
        services.users.set_password(None, "nils", "nils's new password")
        return outcome

    services.accounts.hasher.verify = verify_while_reset  # type: ignore[method-assign]
    with pytest.raises(Unauthorized):
        services.accounts.authenticate_password("nils", "old-bcrypt-password")
    services.accounts.hasher.verify = verify  # type: ignore[method-assign]
    assert services.accounts.authenticate_password("nils", "nils's new password").username == "nils"
    with pytest.raises(Unauthorized):
        services.accounts.authenticate_password("nils", "old-bcrypt-password")


def test_password_email_quota_changes(services: Services) -> None:
    services.users.create_user(None, "hugo", password="first-password")
    assert services.users.set_password(None, "hugo", "second-password") is None
    stored = stored_user(services, "hugo").password_hash
    assert services.hasher.verify("second-password", stored)[0]
    assert not services.hasher.verify("first-password", stored)[0]
    generated = services.users.set_password(None, "hugo", None)
    assert generated is not None
    assert services.hasher.verify(generated, stored_user(services, "hugo").password_hash)[0]
    assert services.users.set_email(None, "hugo", "hugo@example.org").email == "hugo@example.org"
    assert services.users.set_email(None, "hugo", None).email is None
    assert services.users.set_quota(None, "hugo", 1 << 20).quota_bytes == 1 << 20
    assert services.users.set_quota(None, "hugo", None).quota_bytes is None


def test_only_admins_administer(services: Services, admin: Actor) -> None:
    info, _ = services.users.create_user(admin, "ivan")
    someone = Actor(user_id=info.id, username="ivan", roles=frozenset({"user"}))
    with pytest.raises(Forbidden):
        services.users.create_user(someone, "mallory")
    with pytest.raises(Forbidden):
        services.users.add_role(someone, "ivan", "admin")
    with pytest.raises(Forbidden):
        services.groups.create_group(someone, "crew")
    assert services.users.show_user("ivan").roles == ["user"]


# ------------------------------------------------------------------------------ logbook


@pytest.mark.parametrize(
    ("change", "op", "before", "after"),
    [
        (lambda s: s.users.disable_user(None, "judy"), "user:disable", {"is_active": True},
         {"is_active": False, "ended_sessions": 0, "released_locks": 0}),
        (lambda s: s.users.add_role(None, "judy", "viewer"), "user:role:assign",
         {"roles": ["user"]}, {"roles": ["user", "viewer"]}),
        (lambda s: s.users.remove_role(None, "judy", "user"), "user:role:remove",
         {"roles": ["user"]}, {"roles": []}),
        (lambda s: s.users.set_quota(None, "judy", 1024), "user:update",
         {"quota_bytes": None}, {"quota_bytes": 1024}),
        (lambda s: s.users.set_email(None, "judy", "j@example.org"), "user:update",
         {"email": None}, {"email": "j@example.org"}),
        (lambda s: s.users.set_password(None, "judy", "new-password"), "user:password:set",
         None, {"generated": False, "ended_sessions": 0, "lifted_ban_until": None}),
    ],
)  # fmt: skip
def test_each_change_logs_before_and_after(
    services: Services, change: Any, op: str, before: Any, after: Any
) -> None:
    services.users.create_user(None, "judy")
    change(services)
    [row] = logbook(services, op)
    assert row.details["user"] == "judy"
    assert row.details["before"] == before and row.details["after"] == after
    assert row.details["via"] == "cli" and row.user_id is None
    assert "password_hash" not in str(row.details) and "$argon2" not in str(row.details)


def test_an_admin_actor_is_the_logbook_user(services: Services, admin: Actor) -> None:
    services.users.create_user(admin, "kate", roles=["viewer"])
    row = logbook(services, "user:create")[-1]
    assert row.user_id == admin.user_id and "via" not in row.details
    assert row.details["after"]["roles"] == ["viewer"] and row.details["before"] is None


def test_a_refused_change_writes_no_logbook_row(services: Services) -> None:
    services.users.create_user(None, "boss", roles=["admin"])
    with pytest.raises(Conflict):
        services.users.disable_user(None, "boss")
    assert logbook(services, "user:disable") == []


# ------------------------------------------------------------------------------ groups


def test_group_membership_and_group_admins(services: Services) -> None:
    for name in ("liam", "mona"):
        services.users.create_user(None, name)
    services.groups.create_group(None, "design", description="the designers")
    with pytest.raises(AlreadyExists):
        services.groups.create_group(None, "Design")
    with pytest.raises(BadRequest):
        services.groups.create_group(None, "a/b")
    services.groups.add_member(None, "design", "liam")
    services.groups.add_member(None, "design", "mona", admin=True)
    with pytest.raises(AlreadyExists):
        services.groups.add_member(None, "design", "liam")
    detail = services.groups.show_group("design")
    assert [(m.username, m.is_admin) for m in detail.member_list] == [
        ("mona", True),
        ("liam", False),
    ]
    assert services.groups.set_group_admin(None, "design", "liam").is_admin
    with pytest.raises(Conflict, match="already an admin"):
        services.groups.set_group_admin(None, "design", "liam")
    assert not services.groups.set_group_admin(None, "design", "mona", admin=False).is_admin
    services.groups.remove_member(None, "design", "mona")
    with pytest.raises(NotFound):
        services.groups.remove_member(None, "design", "mona")
    assert [(g.name, g.members) for g in services.groups.list_groups()] == [("design", 1)]
    ops = [row.op_type for row in logbook(services) if row.op_type.startswith("group:")]
    assert ops == [
        "group:create",
        "group:member:add",
        "group:member:add",
        "group:admin:set",
        "group:admin:set",
        "group:member:remove",
    ]


def test_a_group_description_is_bounded_and_printable(services: Services) -> None:
    """It had no limit (a megabyte was stored and printed in every listing) and could carry
    escape sequences into an admin's terminal; it has a package description's rules now."""
    for bad, said in (("x" * 1025, "at most 1024"), ("red\x1b[2Jalert", "control characters")):
        with pytest.raises(BadRequest, match=said):
            services.groups.create_group(None, "crew", description=bad)
    assert services.groups.list_groups() == []
    assert services.groups.create_group(None, "crew", description="é" * 1024).name == "crew"


def group_node(owner_id: uuid.UUID, group_id: uuid.UUID, name: str, parent: Node | None) -> Node:
    """A row of a group's space: its root folder (no parent), or a file in ``parent``."""
    return Node(
        parent_id=parent.id if parent else None,
        name=name,
        name_key=name,
        kind="file" if parent else "folder",
        owner_id=owner_id,
        space="group",
        group_id=group_id,
    )


def test_a_group_is_not_deleted_under_an_upload_committing_into_its_space(
    services: Services,
) -> None:
    """The delete counted the space's items, then deleted the group, whose nodes went by
    ON DELETE CASCADE: on PostgreSQL an upload that committed in between (201 Created) was
    wiped with the group. Here the upload's transaction has inserted its node and not yet
    committed when the delete starts; the delete waits for it, sees the file and refuses."""
    info, _ = services.users.create_user(None, "pia")
    services.groups.create_group(None, "busy")
    with services.db.write() as session:
        group_id = session.scalar(sa.select(Group.id).where(Group.name == "busy"))
        root = group_node(info.id, group_id, "", None)
        session.add(root)
    outcome: list[BaseException | None] = []

    def delete() -> None:
        try:
            services.groups.delete_group(None, "busy")
            outcome.append(None)
        except BaseException as exc:  # the assertion below reports it
            outcome.append(exc)

    deleting = threading.Thread(target=delete)
    with services.db.write() as session:  # the upload's transaction
        session.add(group_node(info.id, group_id, "late.txt", root))
        session.flush()
        deleting.start()
        deleting.join(1.0)  # it waits for this transaction (or has run: the assertion tells)
        assert deleting.is_alive(), outcome
    deleting.join(30)
    assert len(outcome) == 1 and isinstance(outcome[0], Conflict), outcome
    with services.db.read() as session:
        assert session.scalar(sa.select(Node.name).where(Node.name == "late.txt")) == "late.txt"
        assert session.scalar(sa.select(Group.name).where(Group.id == group_id)) == "busy"


def test_a_deleted_user_cannot_join_a_group(services: Services) -> None:
    services.users.create_user(None, "nina")
    services.groups.create_group(None, "crew")
    services.users.delete_user(None, "nina")
    with pytest.raises(Conflict, match="deleted"):
        services.groups.add_member(None, "crew", "nina")


def test_a_group_with_files_is_not_deleted(services: Services) -> None:
    info, _ = services.users.create_user(None, "omar")
    services.groups.create_group(None, "archive")
    services.groups.create_group(None, "empty")
    services.groups.add_member(None, "archive", "omar")
    with services.db.write() as session:
        group_id = session.scalar(sa.select(Group.id).where(Group.name == "archive"))
        root = group_node(info.id, group_id, "", None)
        session.add(root)
        session.flush()
        session.add(group_node(info.id, group_id, "plan.txt", root))
    with pytest.raises(Conflict, match="1 item"):
        services.groups.delete_group(None, "archive")
    services.groups.delete_group(None, "empty")
    assert [g.name for g in services.groups.list_groups()] == ["archive"]
    [row] = logbook(services, "group:delete")
    assert row.details["group"] == "empty" and row.details["after"] is None


# ------------------------------------------------------------------------------ API keys


def test_api_key_format_and_storage(services: Services) -> None:
    info, _ = services.users.create_user(None, "pia")
    key_info, plaintext = services.api_keys.create(None, info.id, "backup", scope="read")
    assert plaintext.startswith("dav_") and len(plaintext) == 4 + 43
    assert key_info.prefix == plaintext[:12] and key_info.scope == "read"
    assert key_hash(plaintext) == hashlib.sha256(plaintext.encode()).hexdigest()
    with services.db.read() as session:
        row = session.get(ApiKey, key_info.id)
        assert row is not None and row.key_hash == key_hash(plaintext)
    [listed] = services.api_keys.list_keys(info.id)
    assert listed == key_info and listed.status is KeyStatus.ACTIVE
    assert "key_hash" not in listed.as_dict()
    assert plaintext not in str(logbook(services, "apikey:create")[0].details)


@pytest.mark.parametrize("how", ["prefix", "id", "key"])
def test_api_key_revoke_by_prefix_id_or_key(services: Services, how: str) -> None:
    info, _ = services.users.create_user(None, "quin")
    key_info, plaintext = services.api_keys.create(None, info.id, "ci")
    ref = {"prefix": key_info.prefix, "id": str(key_info.id), "key": plaintext}[how]
    revoked = services.api_keys.revoke(None, info.id, ref)
    assert revoked.status is KeyStatus.REVOKED
    with pytest.raises(NotFound, match="already revoked"):
        services.api_keys.revoke(None, info.id, ref)
    [row] = logbook(services, "apikey:revoke")
    assert row.details["before"] == {"is_active": True}
    assert row.details["after"] == {"is_active": False, "ended_sessions": 0}


def test_api_key_rules(services: Services) -> None:
    owner, _ = services.users.create_user(None, "rita")
    other, _ = services.users.create_user(None, "sam")
    me = Actor(user_id=owner.id, username="rita", roles=frozenset({"user"}))
    key_info, _ = services.api_keys.create(me, owner.id, "mine")  # users manage their own
    with pytest.raises(Forbidden):
        services.api_keys.create(me, other.id, "theirs")
    with pytest.raises(Forbidden):
        services.api_keys.list_keys(other.id, actor=me)
    with pytest.raises(AlreadyExists):
        services.api_keys.create(None, owner.id, "mine")
    with pytest.raises(BadRequest):
        services.api_keys.create(None, owner.id, "x", scope="admin")
    with pytest.raises(BadRequest):
        services.api_keys.create(None, owner.id, "  ")
    # The name is printed by `davserver apikey list` in an admin's terminal: no escapes.
    for name in ("\x1b]0;owned\x07", "two\nlines", "bell\x07", "del\x7f", "c1\x9b31m"):
        with pytest.raises(BadRequest):
            services.api_keys.create(me, owner.id, name)
    with pytest.raises(BadRequest):
        services.api_keys.create(None, owner.id, "late", expires_at=utcnow() - dt.timedelta(1))
    with pytest.raises(NotFound):
        services.api_keys.revoke(None, other.id, key_info.prefix)  # not sam's key
    with pytest.raises(NotFound):
        services.api_keys.create(None, uuid.uuid4(), "ghost")
    soon, _ = services.api_keys.create(
        None, owner.id, "soon", expires_at=utcnow() + dt.timedelta(seconds=1)
    )
    with services.db.write() as session:
        session.execute(
            sa.update(ApiKey)
            .where(ApiKey.id == soon.id)
            .values(expires_at=utcnow() - dt.timedelta(seconds=1))
        )
    statuses = {k.name: k.status for k in services.api_keys.list_keys(owner.id)}
    assert statuses == {"mine": KeyStatus.ACTIVE, "soon": KeyStatus.EXPIRED}
    # An expired key's name is free again: a key made for 90 days is replaced by another.
    services.api_keys.create(None, owner.id, "soon")
    statuses_of_soon = sorted(
        k.status.value for k in services.api_keys.list_keys(owner.id) if k.name == "soon"
    )
    assert statuses_of_soon == sorted([KeyStatus.ACTIVE.value, KeyStatus.EXPIRED.value])


# ------------------------------------------------------------------------------ CSV import


@pytest.mark.parametrize(
    ("password_hash", "scheme"),
    [
        (BCRYPT_HASH, "bcrypt"),
        (BCRYPT_HASH.replace("$2b$", "$2a$", 1), "bcrypt"),
        (BCRYPT_HASH.replace("$2b$", "$2y$", 1), "bcrypt"),
        (ARGON2I_HASH, "argon2"),
        (argon2.using(memory_cost=1024, rounds=1).hash("pw"), "argon2"),
        (BCRYPT_HASH.replace("$2b$", "$2x$", 1), BadRequest),  # the buggy old variant
        (BCRYPT_HASH[:-5], BadRequest),  # truncated
        ("$argon2id$v=19$m=1024,t=1,p=1$garbage", BadRequest),
        (argon2.using(type="d", memory_cost=1024, rounds=1).hash("pw"), BadRequest),
        ("$1$saltsalt$2vnaRpHa6Jxjz5n83ok8Z0", BadRequest),  # md5-crypt
        ("5f4dcc3b5aa765d61d8327deb882cf99", BadRequest),  # bare md5
        ("plaintext-password", BadRequest),
    ],
    ids=[
        "bcrypt-2b",
        "bcrypt-2a",
        "bcrypt-2y",
        "argon2i",
        "argon2id",
        "bcrypt-2x",
        "bcrypt-truncated",
        "argon2id-garbage",
        "argon2d",
        "md5-crypt",
        "bare-md5",
        "plaintext",
    ],
)
def test_accepted_hash_formats(password_hash: str, scheme: str | type[Exception]) -> None:
    if isinstance(scheme, type):
        with pytest.raises(scheme):
            hash_scheme(password_hash)
    else:
        assert hash_scheme(password_hash) == scheme


def test_csv_problems_carry_their_line_numbers() -> None:
    text = (
        "username,email,password_hash,roles,quota\n"  # line 1
        f"anna,anna@example.org,{BCRYPT_HASH},admin;user,10G\n"  # 2: good
        f'"multi\nline",,{BCRYPT_HASH},,\n'  # 3-4: bad name (spans two lines)
        f"bea,not-an-email,{BCRYPT_HASH},,\n"  # 5
        "cara,,$1$saltsalt$2vnaRpHa6Jxjz5n83ok8Z0,,\n"  # 6
        f"dana,,{BCRYPT_HASH},,12Q\n"  # 7
        "\n"  # 8: blank lines are skipped
        f"ANNA,,{BCRYPT_HASH},,\n"  # 9: repeats line 2
        "eve,,,,\n"  # 10: no hash
        f"fay,,{BCRYPT_HASH}\n"  # 11: too few fields
        f'gus,ANNA@example.org,"{ARGON2I_HASH}",viewer,\n'  # 12: repeated e-mail
        f"hal,,{ARGON2I_HASH},,\n"  # 13: an argon2 hash not quoted
    )
    rows, problems = read_user_csv(io.StringIO(text, newline=""))
    assert [row.username for row in rows] == ["anna"]
    assert rows[0].roles == ("admin", "user") and rows[0].quota_bytes == 10 << 30
    assert [p.line for p in problems] == [3, 5, 6, 7, 9, 10, 11, 12, 13]
    reasons = {p.line: p.reason for p in problems}
    assert "repeats line 2" in reasons[9] and "repeats line 2" in reasons[12]
    assert "unsupported password hash" in reasons[6]
    assert "double quotes" in reasons[13]


@pytest.mark.parametrize(
    ("header", "message"),
    [
        ("", "empty"),
        ("username,email", "missing column(s): password_hash"),
        ("username,password_hash,pasword", "unknown column(s): pasword"),
        ("username,password_hash,username", "repeated column(s): username"),
    ],
)
def test_csv_header_is_checked(header: str, message: str) -> None:
    rows, problems = read_user_csv(io.StringIO(header + "\n" if header else ""))
    assert rows == [] and len(problems) == 1
    assert problems[0].line == 1 and message in problems[0].reason


def test_import_is_all_or_nothing(services: Services) -> None:
    services.users.create_user(None, "taken", email="taken@example.org")
    text = (
        "username,password_hash,email,roles\n"
        f"ulla,{BCRYPT_HASH},,\n"
        f"Taken,{BCRYPT_HASH},,\n"  # 3: exists
        f"vera,{BCRYPT_HASH},TAKEN@example.org,\n"  # 4: e-mail in use
        f"walt,{BCRYPT_HASH},,wizard\n"  # 5: unknown role
        "xena,$1$saltsalt$2vnaRpHa6Jxjz5n83ok8Z0,,\n"  # 6: bad hash
    )
    with pytest.raises(ImportRejected) as caught:
        services.user_import.import_csv(None, io.StringIO(text))
    assert [(p.line, p.reason.split(" ")[0]) for p in caught.value.problems] == [
        (3, "username"),
        (4, "e-mail"),
        (5, "unknown"),
        (6, "unsupported"),
    ]
    assert [u.username for u in services.users.list_users()] == ["taken"]
    assert logbook(services, "user:import") == []


def test_import_keeps_hashes_and_can_skip_existing(services: Services) -> None:
    services.users.create_user(None, "yves")
    text = (
        "Username,Password_Hash,Email,Roles,Quota\n"
        f"yves,{BCRYPT_HASH},,,\n"
        f"zoe,{BCRYPT_HASH},zoe@example.org,viewer moderator,1M\n"
        f'abel,"{ARGON2I_HASH}",,,\n'
    )
    with pytest.raises(ImportRejected, match="already exists"):
        services.user_import.import_csv(None, io.StringIO(text))
    report = services.user_import.import_csv(
        None, io.StringIO(text), skip_existing=True, source="people.csv"
    )
    assert report.imported == ["zoe", "abel"] and report.skipped == ["yves"]
    assert stored_user(services, "zoe").password_hash == BCRYPT_HASH  # never rehashed
    assert stored_user(services, "abel").password_hash == ARGON2I_HASH
    zoe = services.users.show_user("zoe")
    assert zoe.roles == ["moderator", "viewer"] and zoe.quota_bytes == 1 << 20
    assert services.users.show_user("abel").roles == ["user"]
    rows = logbook(services, "user:import")
    assert [r.details["user"] for r in rows] == ["zoe", "abel"]
    assert rows[0].details["source"] == "people.csv" and rows[0].details["line"] == 3
    assert rows[0].details["after"]["hash_scheme"] == "bcrypt"
    assert BCRYPT_HASH not in str(rows[0].details)


def test_an_import_costs_the_same_statements_whatever_its_size(services: Services) -> None:
    """20,000 users imported one at a time (three statements each) held the database's write
    lock for 37 s, and a running server's uploads waited for it (on SQLite, then failed).
    The users, their roles and their logbook rows are each inserted in one go."""

    def statements_to_import(prefix: str, count: int) -> int:
        text = "username,password_hash,roles\n" + "".join(
            f"{prefix}{i},{BCRYPT_HASH},user viewer\n" for i in range(count)
        )
        seen: list[str] = []

        def listener(*_args: Any) -> None:
            seen.append("")

        sa.event.listen(services.db.engine, "before_cursor_execute", listener)
        try:
            services.user_import.import_csv(None, io.StringIO(text))
        finally:
            sa.event.remove(services.db.engine, "before_cursor_execute", listener)
        return len(seen)

    statements_to_import("first", 1)  # the first makes the roles the service needs
    assert statements_to_import("few", 2) == statements_to_import("many", 200)
    assert len([u for u in services.users.list_users() if u.username.startswith("many")]) == 200
    assert services.users.show_user("many199").roles == ["user", "viewer"]
    assert len(logbook(services, "user:import")) == 203


def test_two_admins_demoting_each_other_at_once_leave_one(services: Services) -> None:
    # Without serialising account changes, both would see "another admin is left" (PostgreSQL).
    services.users.create_user(None, "ann", roles=["admin"])
    services.users.create_user(None, "ben", roles=["admin"])
    barrier = threading.Barrier(2)
    outcomes: dict[str, str] = {}

    def demote(name: str) -> None:
        barrier.wait()
        try:
            services.users.remove_role(None, name, "admin")
            outcomes[name] = "demoted"
        except Conflict:
            outcomes[name] = "refused"

    threads = [threading.Thread(target=demote, args=(name,)) for name in ("ann", "ben")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(outcomes.values()) == ["demoted", "refused"]
    admins = [u.username for u in services.users.list_users() if "admin" in u.roles]
    assert len(admins) == 1


def test_two_servers_creating_the_first_admin_at_once_both_start(services: Services) -> None:
    """Servers started together on a new database each create the system roles and the first
    admin (``ensure_admin``). On PostgreSQL the second inserted the roles as well and stopped
    with a UniqueViolation traceback (uq_roles_name): that server did not start."""
    inside, second_done = threading.Event(), threading.Event()

    # The first pauses inside its transaction once it has inserted a role, until the second
    # has ended (or had a few seconds).
    @sa.event.listens_for(services.db.engine, "after_cursor_execute")
    def pause(_conn: object, _cursor: object, statement: str, *_args: object) -> None:
        if not inside.is_set() and statement.startswith("INSERT INTO roles"):
            inside.set()
            second_done.wait(3)

    outcomes: list[object] = []

    def start() -> None:
        try:
            outcomes.append(services.accounts.ensure_admin("boss", "first-admin-password"))
        except Exception as exc:
            outcomes.append(exc)

    first = threading.Thread(target=start)
    first.start()
    try:
        assert inside.wait(30)
        start()
        second_done.set()
        first.join(30)
    finally:
        second_done.set()
        first.join(30)
    assert outcomes == [None, None]
    assert services.users.show_user("boss").roles == ["admin", "user"]
    assert len(logbook(services, "user:create")) == 1


def test_the_first_admin_setting_finds_its_user_in_any_case(services: Services) -> None:
    """Names are unique ignoring case. With ``admin.user`` spelled in another case than the
    existing account (``Admin`` for ``admin``), every start stopped with an IntegrityError
    traceback (uq_users_username_lower) instead of leaving the account as it is."""
    assert services.accounts.ensure_admin("admin", "first-admin-password") is None
    assert services.accounts.ensure_admin("ADMIN", None) is None
    assert [u.username for u in services.users.list_users()] == ["admin"]
    assert len(logbook(services, "user:create")) == 1
