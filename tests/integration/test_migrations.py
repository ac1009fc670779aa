"""`alembic upgrade head` on an empty database gives exactly the models' schema, both engines,
and migrating down and up again keeps the rows that both revisions have."""

from __future__ import annotations

import datetime as dt
import re
import secrets
import sqlite3
import threading
import uuid
import warnings
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy.exc import IntegrityError

import davserver.models  # noqa: F401  (fills the metadata)
from davserver.config import ConfigError
from davserver.db import Base, Database
from davserver.db.migrate import downgrade, is_at_head, migration_connection, upgrade
from davserver.models import Grant, Group, LogEntry, Op, Role, User, UserRole
from davserver.services import usage
from davserver.services.actor import Actor
from davserver.services.audit import read_logbook
from davserver.services.files import FileService
from davserver.services.trash import TrashService
from davserver.services.tree import NodeView
from tests.conftest import ENGINES
from tests.dbs import fresh_database_url, fresh_pg_database, pg_admin
from tests.integration.test_db_copy import assert_serves, populate
from tests.integration.test_startup_errors import command
from tests.servers import run_inproc_server

# SQLite cannot reflect the lower() indexes (0006), so autogenerate skips them there; the
# behaviour test below checks them on both engines.
pytestmark = [
    pytest.mark.filterwarnings("ignore:.*expression-based index"),
]


def test_upgrade_head_equals_models(database: Database) -> None:
    with database.engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"compare_type": True})
        assert compare_metadata(context, Base.metadata) == []


def test_upgrading_an_empty_database_warns_of_nothing(db_url: str) -> None:
    """Every first start runs the migrations, on the admin's terminal. On SQLite, Alembic's
    batch mode (a table copied to drop a foreign key) reflected the other tables and
    SQLAlchemy printed three SAWarnings about the expression indexes it cannot read back,
    which look like a fault and are none."""
    db = Database(db_url, pool_size=1)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            upgrade(db)
    finally:
        db.dispose()
    assert [f"{w.category.__name__}: {w.message}" for w in caught] == []


def test_downgrade_to_base_and_up_again(database: Database) -> None:
    downgrade(database, "base")
    with database.engine.connect() as conn:
        assert set(database.engine.dialect.get_table_names(conn)) <= {"alembic_version"}
    upgrade(database)
    with database.engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"compare_type": True})
        assert compare_metadata(context, Base.metadata) == []


def test_two_processes_starting_at_once_on_an_empty_database_both_come_up(
    db_url: str, tmp_path: Path
) -> None:
    """Several servers started together (a scaled deployment's first start) each bring the
    schema up to date. The second read the version while the first was still creating the
    tables, created them too and failed: UniqueViolation on PostgreSQL, "database is locked" on
    SQLite, a traceback and no server."""
    first = Database(db_url, pool_size=1)
    inside, second_done = threading.Event(), threading.Event()
    errors: list[BaseException] = []

    # This process's migration pauses inside its transaction, after creating its first table,
    # until the other process's has ended (or had a few seconds).
    @sa.event.listens_for(first.engine, "after_cursor_execute")
    def pause(_conn: object, _cursor: object, statement: str, *_args: object) -> None:
        if not inside.is_set() and statement.lstrip().startswith("CREATE TABLE"):
            inside.set()
            second_done.wait(3)

    def migrate() -> None:
        try:
            upgrade(first)
        except BaseException as exc:
            errors.append(exc)

    migrating = threading.Thread(target=migrate)
    migrating.start()
    try:
        assert inside.wait(30)
        other = command(tmp_path, {"DAVSERVER_DATABASE_URL": db_url}, "db", "upgrade")
        second_done.set()
        migrating.join(30)
        assert (other.returncode, other.stderr) == (0, "")
        assert errors == []
        with first.engine.connect() as conn:
            context = MigrationContext.configure(conn, opts={"compare_type": True})
            assert compare_metadata(context, Base.metadata) == []
    finally:
        second_done.set()
        migrating.join(30)
        first.dispose()


def _index_predicates(database: Database) -> tuple[dict[str, str], dict[str, str]]:
    """{index: its WHERE} of the partial indexes, in the models and in the database, spelled
    alike (PostgreSQL gives its WHERE back as ``((a IS NULL) AND ((b)::text = 'x'::text))``)."""
    dialect = "sqlite" if database.is_sqlite else "postgresql"

    def spelled(where: object) -> str:
        return re.sub(r"::\w+|[()]", "", str(getattr(where, "text", where)))

    models, found = {}, {}
    inspector = sa.inspect(database.engine)
    for table in Base.metadata.sorted_tables:
        for index in table.indexes:
            where = index.dialect_options[dialect]["where"]
            if where is not None:
                models[str(index.name)] = spelled(where)
        for reflected in inspector.get_indexes(table.name):
            where = reflected.get("dialect_options", {}).get(f"{dialect}_where")
            if where is not None:
                found[str(reflected["name"])] = spelled(where)
    return models, found


def test_upgrade_and_downgrade_keep_the_partial_indexes_of_the_models(database: Database) -> None:
    """compare_metadata ignores an index's WHERE: a migration that left one out, or kept an old
    one, would pass the tests above."""
    models, found = _index_predicates(database)
    assert "ix_nodes_trash_expiry" in models
    assert found == models
    downgrade(database, "0006")
    _, before = _index_predicates(database)
    assert "ix_nodes_trash" not in before and "ix_nodes_trash_expiry" not in before
    upgrade(database)
    assert _index_predicates(database)[1] == models


TABLES = ("users", "nodes", "file_versions", "blobs", "logbook")


def test_a_round_trip_to_the_first_revision_keeps_files_and_versions(
    database: Database, files: FileService, actor: Actor, home: NodeView
) -> None:
    """On SQLite, Alembic rebuilds a table it cannot ALTER by dropping the old one: with foreign
    keys on, that failed (blobs) or emptied the tables referencing it (users -> nodes)."""
    folder = files.create_folder(actor, home, "kept")
    for n in range(3):
        for version in range(2):
            data = f"file {n} version {version}".encode()
            writer = files.blobs.writer()
            writer.write(data)
            files.commit_upload(actor, folder, f"f{n}.txt", writer.finish())

    def counts() -> dict[str, int]:
        with database.engine.connect() as conn:
            return {
                t: conn.exec_driver_sql(f"SELECT count(*) FROM {t}").scalar_one() for t in TABLES
            }

    before = counts()
    assert before["file_versions"] == 6
    downgrade(database, "0001")
    assert counts() == before
    upgrade(database)
    assert counts() == before
    assert files.usage(actor.user_id)[0] == sum(len(f"file {n} version 1") for n in range(3))


@pytest.mark.parametrize("revision", ["0004", "0005", "0006"])
@pytest.mark.parametrize("engine", ENGINES)
def test_a_deployment_at_an_older_revision_is_upgraded_on_start_and_serves_it_all(
    engine: str, revision: str, tmp_path: Path
) -> None:
    """What a server at an older revision held (versions, a thumbnail, a dead property, a
    lock, a share, a package, the trash, an API key, a rotated refresh token) is served as
    before once the next start has brought the schema up to date, and the quota totals that
    migration 0005 filled in match the files."""
    password = secrets.token_urlsafe(16)
    with fresh_database_url(engine, str(tmp_path)) as url:
        with run_inproc_server(engine, tmp_path, existing=(url, password)) as server:
            deployment = populate(server)
        older = Database(url)
        try:
            downgrade(older, revision)
        finally:
            older.dispose()
        with run_inproc_server(engine, tmp_path, existing=(url, password)) as server:
            assert is_at_head(server.application.db)
            assert_serves(server, deployment)
            assert usage.recount(server.application.db) == []


def _add(database: Database, row: object) -> None:
    """Insert a row with the ORM alone, past the services and their checks."""
    with database.write() as session:
        session.add(row)


def _user(name: str, email: str | None = None) -> User:
    return User(username=name, email=email, password_hash="x")


def test_names_are_unique_ignoring_case_for_every_writer(database: Database) -> None:
    """Rows written past the services (a script, another tool) meet the lower() indexes."""
    _add(database, _user("Carol", "Carol@Example.org"))
    _add(database, Group(name="Team"))
    for row in (_user("carol"), _user("someone", "carol@example.ORG"), Group(name="TEAM")):
        with pytest.raises(IntegrityError):
            _add(database, row)
    _add(database, _user("carol2"))  # a different name is fine


def test_migration_0006_stops_on_names_differing_only_in_case(database: Database) -> None:
    downgrade(database, "0005")
    _add(database, _user("Dave"))
    _add(database, _user("dave"))
    _add(database, Group(name="crew"))
    # A reason in one line (exit 2 from any command), naming the pair and how to rename it.
    with pytest.raises(
        ConfigError, match=r"in SQL \(UPDATE users SET.*users\.username: 'Dave', 'dave'"
    ):
        upgrade(database)
    with database.engine.begin() as conn:  # nothing was changed: still at 0005
        assert conn.exec_driver_sql("SELECT version_num FROM alembic_version").scalar() == "0005"
        conn.exec_driver_sql("UPDATE users SET username = 'dave-2' WHERE username = 'dave'")
    upgrade(database)
    with pytest.raises(IntegrityError):
        _add(database, _user("DAVE"))


def _orphan_a_role(path: str) -> int:
    """A user_roles row whose user is gone, as ``sqlite3 db "DELETE FROM users ..."`` leaves
    it (the sqlite3 shell keeps foreign keys off); returns its rowid."""
    with sqlite3.connect(path) as raw:
        raw.execute(
            "INSERT OR IGNORE INTO roles (name, description, is_system) VALUES ('user', '', 1)"
        )
        raw.execute(
            "INSERT INTO users (id, username, password_hash, is_active, created_at, updated_at,"
            " home_bytes) VALUES ('0123456789abcdef0123456789abcdef', 'carol', 'x', 1,"
            " '2026-03-01', '2026-03-01', 0)"
        )
        rowid = raw.execute(
            "INSERT INTO user_roles (user_id, role_id, assigned_at) SELECT"
            " '0123456789abcdef0123456789abcdef', id, '2026-03-01' FROM roles WHERE name = 'user'"
        ).lastrowid
        raw.execute("DELETE FROM users WHERE username = 'carol'")
    raw.close()
    assert rowid is not None
    return rowid


def test_a_broken_reference_the_migrations_did_not_make_stops_nothing(tmp_path: Path) -> None:
    """A row an admin's edit left pointing at nothing made every upgrade (so every command)
    fail, blaming a migration, even when none ran; a migration that runs keeps it as it was."""
    path = str(tmp_path / "davserver.sqlite3")
    db = Database(f"sqlite:///{path}", pool_size=1)
    try:
        upgrade(db)
        rowid = _orphan_a_role(path)
        upgrade(db)  # nothing to do
        downgrade(db, "0012")
        upgrade(db)
        assert is_at_head(db)
        with db.engine.connect() as conn:
            broken = conn.exec_driver_sql("PRAGMA foreign_key_check").all()
    finally:
        db.dispose()
    assert [tuple(row)[:3] for row in broken] == [("user_roles", rowid, "users")]


def test_a_migration_that_breaks_references_is_stopped_in_one_line(tmp_path: Path) -> None:
    """A migration that leaves rows pointing at nothing is rolled back, with the row named
    and how to repair it (exit 2 from any command), and rows broken before do not count."""
    path = str(tmp_path / "davserver.sqlite3")
    db = Database(f"sqlite:///{path}", pool_size=1)
    try:
        upgrade(db)
        _orphan_a_role(path)
        _add(db, _user("dave"))
        with db.engine.connect() as conn:
            dave = conn.execute(sa.select(User.id).where(User.username == "dave")).scalar_one()
            role = conn.execute(sa.select(Role.id).where(Role.name == "user")).scalar_one()
        _add(db, UserRole(user_id=dave, role_id=role))
        with db.engine.connect() as conn:
            rowid = conn.exec_driver_sql(
                "SELECT rowid FROM user_roles WHERE user_id = ?", (dave.hex,)
            ).scalar_one()
        with (
            pytest.raises(ConfigError) as raised,
            migration_connection(db) as conn,  # as a migration would, deleting a user
        ):
            conn.execute(sa.delete(User).where(User.username == "dave"))
        with db.engine.connect() as conn:  # nothing was changed
            assert conn.execute(sa.select(User.id).where(User.username == "dave")).one()
    finally:
        db.dispose()
    said = str(raised.value)
    assert "\n" not in said
    assert f"user_roles row {rowid}" in said
    assert "users row that does not exist" in said
    assert f"DELETE FROM user_roles WHERE user_id = '{dave.hex}')" in said
    assert "1 row" in said  # carol's, broken before, is not the migration's


def test_0008_keeps_a_purged_files_logbook_ids_and_downgrading_clears_them(
    database: Database, files: FileService, actor: Actor, home: NodeView
) -> None:
    """After 0008 the logbook names what is gone; going back to 0007 (whose foreign keys
    would refuse such rows) sets those ids to NULL, as its ON DELETE SET NULL would have."""
    writer = files.blobs.writer()
    writer.write(b"soon gone")
    view, _created = files.commit_upload(actor, home, "gone.txt", writer.finish())
    files.delete(actor, view.id)
    TrashService(database, files).purge_expired(older_than=dt.timedelta(0))

    query = sa.text(
        "SELECT op_type, version_id IS NOT NULL FROM logbook WHERE node_id = :id ORDER BY id"
    ).bindparams(sa.bindparam("id", view.id, type_=sa.Uuid))

    def about_it() -> list[tuple[str, bool]]:
        with database.engine.connect() as conn:
            return [(op, bool(has_version)) for op, has_version in conn.execute(query)]

    kept = [("file:create", True), ("node:delete", False), ("node:purge", False)]
    assert about_it() == kept
    downgrade(database, "0007")
    assert about_it() == []
    upgrade(database)
    with database.engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"compare_type": True})
        assert compare_metadata(context, Base.metadata) == []


def test_0009_downgrade_waits_for_unfinished_purges(
    database: Database, files: FileService, actor: Actor, home: NodeView
) -> None:
    """Without 0009's mark, an item whose purge stopped half-way would come back into its
    owner's trash with part of its content gone: going back to 0008 refuses until a purge
    has finished it. Nothing is changed by the refusal."""
    folder = files.create_folder(actor, home, "half")
    files.delete(actor, folder.id)
    marked = sa.text("UPDATE nodes SET purge_started_at = CURRENT_TIMESTAMP WHERE id = :id")
    with database.engine.begin() as conn:
        conn.execute(marked.bindparams(sa.bindparam("id", folder.id, type_=sa.Uuid)))
    with pytest.raises(Exception, match="1 trash items are being purged"):
        downgrade(database, "0008")
    assert is_at_head(database)
    assert TrashService(database, files).purge_expired().items_finished == 1
    downgrade(database, "0008")
    with database.engine.connect() as conn:
        columns = {c["name"] for c in sa.inspect(conn).get_columns("nodes")}
    assert "purge_started_at" not in columns
    upgrade(database)
    _, found = _index_predicates(database)
    assert found["ix_nodes_purging"] == "purge_started_at IS NOT NULL"


def test_0011_fills_in_the_account_each_row_was_about(database: Database) -> None:
    """The rows written before 0011 get the account they named: by id in their details, or
    by the name of a failed sign-in or a ban, ignoring case. Other rows, a name no account
    has and an address's ban get none; and reading an account's history finds them."""
    downgrade(database, "0010")
    alice, admin = uuid.uuid4(), uuid.uuid4()
    now = dt.datetime(2026, 3, 1, tzinfo=dt.UTC)
    with database.write() as session:
        people = [{"id": i, "username": n, "created_at": now, "updated_at": now}
                  for i, n in ((alice, "Alice"), (admin, "admin"))]  # fmt: skip
        session.execute(sa.insert(User.__table__), people)
    written: list[tuple[uuid.UUID | None, Op, dict[str, str], uuid.UUID | None]] = [
        (None, Op.LOGIN_FAILURE, {"username": "ALICE"}, alice),
        (None, Op.LOGIN_FAILURE, {"username": "nobody-has-it"}, None),
        (None, Op.LOGIN_BAN, {"key": "user:alice"}, alice),
        (None, Op.LOGIN_BAN, {"key": "addr:192.0.2.1"}, None),
        (None, Op.TOKEN_REUSE, {"user_id": str(alice)}, alice),
        (admin, Op.USER_DISABLE, {"user_id": str(alice)}, alice),
        (admin, Op.ROLE_ASSIGN, {"user_id": str(admin)}, admin),
        (admin, Op.APIKEY_CREATE, {"user_id": str(alice)}, alice),
        (alice, Op.SESSION_END, {"user_id": str(alice)}, alice),
        (alice, Op.FILE_CREATE, {"user_id": str(admin)}, None),  # not a row about accounts
        (alice, Op.LOGIN_SUCCESS, {}, None),
    ]
    rows = [
        {"occurred_at": now + dt.timedelta(seconds=i), "user_id": who, "op_type": op.value,
         "details": details}
        for i, (who, op, details, _account) in enumerate(written)
    ]  # fmt: skip
    with database.write() as session:
        session.execute(sa.insert(LogEntry.__table__), rows)
    upgrade(database)
    log = LogEntry.__table__
    with database.connect() as conn:
        found = conn.execute(sa.select(log.c.op_type, log.c.account_id).order_by(log.c.id)).all()
    assert found == [(op.value, account) for _who, op, _details, account in written]
    history = read_logbook(database, user_id=alice, about_user=True)
    assert [row.op for row in history][::-1] == [
        "auth:login:failure",
        "auth:login:ban",
        "auth:token:reuse",
        "user:disable",
        "apikey:create",
        "auth:session:end",
        "file:create",
        "auth:login",
    ]


def test_0013_keeps_the_newest_of_each_item_and_grantees_grants(
    database: Database, files: FileService, actor: Actor, home: NodeView
) -> None:
    """Before 0013 two grants sent at once could both be stored: the newest of each item
    and grantee stays, a user's and a group's grants on one item both stay, and then the
    database takes no second one."""
    folder = files.create_folder(actor, home, "shared")
    downgrade(database, "0012")
    bob, team = uuid.uuid4(), uuid.uuid4()
    now = dt.datetime(2026, 3, 1, tzinfo=dt.UTC)
    with database.write() as session:
        session.execute(sa.insert(User.__table__), [{"id": bob, "username": "bob",
                        "created_at": now, "updated_at": now}])  # fmt: skip
        session.execute(sa.insert(Group.__table__), [{"id": team, "name": "team",
                        "created_at": now}])  # fmt: skip
        rows = [(bob, None, False, 0), (bob, None, True, 2), (bob, None, False, 1),
                (None, team, True, 0), (None, team, False, 0)]  # fmt: skip
        ids = sorted(uuid.uuid4() for _ in rows)
        session.execute(
            sa.insert(Grant.__table__),
            [{"id": ids[i], "node_id": folder.id, "user_id": user, "group_id": group,
              "can_read": True, "can_write": write, "granted_at": now + dt.timedelta(days=d)}
             for i, (user, group, write, d) in enumerate(rows)],
        )  # fmt: skip
    upgrade(database)
    with database.connect() as conn:
        kept = conn.execute(
            sa.select(Grant.id, Grant.can_write).where(Grant.node_id == folder.id)
        ).all()
    # bob's newest (2 days) and, of the team's two of one time, the higher id
    assert sorted(kept) == sorted([(ids[1], True), (ids[4], False)])
    with pytest.raises(IntegrityError), database.write() as session:
        session.add(Grant(node_id=folder.id, user_id=bob, can_read=True))


@pytest.mark.postgres
def test_a_database_user_that_may_not_create_tables_is_told_so() -> None:
    """PostgreSQL 15 lets only the owner create tables in schema public: the first start
    as another user ended in a ProgrammingError traceback (serve, db upgrade, db copy)."""
    role = f"davserver_r_{secrets.token_hex(4)}"
    with pg_admin() as admin:
        admin.exec_driver_sql(f'CREATE ROLE "{role}" LOGIN')
    try:
        with fresh_pg_database() as url:
            owner = sa.create_engine(url, isolation_level="AUTOCOMMIT")
            try:
                with owner.connect() as conn:
                    conn.exec_driver_sql("REVOKE CREATE ON SCHEMA public FROM PUBLIC")
            finally:
                owner.dispose()
            as_role = sa.make_url(url).set(username=role).render_as_string(hide_password=False)
            db = Database(as_role)
            try:
                with pytest.raises(ConfigError, match=r"may not change the schema \(permission"):
                    upgrade(db)
            finally:
                db.dispose()
    finally:
        with pg_admin() as admin:
            admin.exec_driver_sql(f'DROP ROLE IF EXISTS "{role}"')
