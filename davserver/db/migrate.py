"""Bring a database's schema to the newest Alembic revision."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import sqlalchemy as sa
from alembic import command
from alembic.config import Config

from davserver.config import ConfigError
from davserver.db.engine import Database

# PostgreSQL's SQLSTATE for "permission denied".
_INSUFFICIENT_PRIVILEGE = "42501"
# Key of the transaction-level PostgreSQL advisory lock that migrations take ("davmigra").
_MIGRATION_LOCK_KEY = 0x6461766D69677261
MIGRATIONS_DIR = Path(__file__).resolve().parents[2] / "migrations"


def alembic_config() -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.attributes["configure_logger"] = False
    return cfg


def upgrade(db: Database, revision: str = "head") -> None:
    """Run every pending migration on ``db`` in one transaction."""
    _migrate(db, command.upgrade, revision)


def is_at_head(db: Database) -> bool:
    """True when ``db``'s schema is at the newest revision."""
    from alembic.runtime.migration import MigrationContext
    from alembic.script import ScriptDirectory

    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    with db.engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision() == head


def downgrade(db: Database, revision: str) -> None:
    """Undo migrations down to ``revision`` in one transaction (what they added is lost)."""
    _migrate(db, command.downgrade, revision)


def _migrate(db: Database, action: Callable[[Config, str], None], revision: str) -> None:
    cfg = alembic_config()
    try:
        with migration_connection(db, target=revision) as conn:
            _require_known_revision(cfg, conn)
            cfg.attributes["connection"] = conn
            action(cfg, revision)
    except sa.exc.ProgrammingError as exc:
        if getattr(exc.orig, "sqlstate", None) != _INSUFFICIENT_PRIVILEGE:
            raise
        said = str(exc.orig).strip().splitlines()[0]
        raise ConfigError(
            f"the database user may not change the schema ({said}): let it create tables"
            " (GRANT CREATE ON SCHEMA public TO it; PostgreSQL 15 no longer grants that to"
            " everyone), or run `davserver db upgrade` as the database's owner"
        ) from None


def _require_known_revision(cfg: Config, conn: sa.Connection) -> None:
    """ConfigError when the database's schema is at a revision none of ours names: a newer
    davserver migrated it (a rollback of the software), or another application's Alembic
    did. Alembic's own 'Can't locate revision' came as a traceback from every command."""
    from alembic.runtime.migration import MigrationContext
    from alembic.script import ScriptDirectory

    known = {script.revision for script in ScriptDirectory.from_config(cfg).walk_revisions()}
    for current in MigrationContext.configure(conn).get_current_heads():
        if current not in known:
            raise ConfigError(
                f"the database's schema is at revision {current!r}, which this davserver does"
                " not know: a newer davserver upgraded it; run that version, or restore the"
                " backup taken before the upgrade"
            )


@contextmanager
def migration_connection(db: Database, *, target: str | None = None) -> Iterator[sa.Connection]:
    """A connection in a transaction, for migrations to ``target`` (None: unknown).

    On SQLite, foreign keys are off meanwhile, and the rows the migrations left pointing at
    nothing are refused before the commit (ConfigError). Alembic changes a SQLite table it
    cannot ALTER by copying it and dropping the old one; with foreign keys on, that DROP
    fails, or deletes every row that references the table (``ON DELETE CASCADE``: rebuilding
    ``users`` would empty ``nodes``). The check reads every table, so it runs only when the
    schema is not yet at ``target``; and rows that pointed at nothing before (an admin's
    ``DELETE`` in the sqlite3 shell, which keeps foreign keys off) are not the migrations'
    doing and stop nothing: they made every command fail, blaming a migration that never ran.

    One migration runs at a time: servers started together each bring the schema up to date,
    and one that read the version while another was still migrating made the same tables
    again and failed. The transaction takes a lock first (PostgreSQL an advisory lock, SQLite
    its write lock, ``BEGIN IMMEDIATE``), so the next reads the version once the first has
    committed, and finds nothing left to do.
    """
    with db.write_connection() as conn:
        raw = conn.connection.dbapi_connection if db.is_sqlite else None
        if raw is not None:
            raw.execute("PRAGMA foreign_keys=OFF")  # outside a transaction, or it is ignored
        try:
            with conn.begin():
                if not db.is_sqlite:
                    conn.execute(sa.select(sa.func.pg_advisory_xact_lock(_MIGRATION_LOCK_KEY)))
                checked = raw is not None and not _already_at(conn, target)
                before = _broken_references(conn) if checked else []
                yield conn
                if checked:
                    _refuse_broken_references(_broken_references(conn), before)
        finally:
            if raw is not None:
                raw.execute("PRAGMA foreign_keys=ON")


def _already_at(conn: sa.Connection, target: str | None) -> bool:
    """True when the schema is at ``target`` (a revision, "head" or "base"): nothing will
    migrate. False when unsure (no target, or a relative one such as "-1")."""
    from alembic.runtime.migration import MigrationContext
    from alembic.script import ScriptDirectory
    from alembic.util import CommandError

    if target is None or not re.fullmatch(r"\w+", target):
        return False
    try:
        wanted = ScriptDirectory.from_config(alembic_config()).get_revisions(target)
    except CommandError:
        return False
    current = MigrationContext.configure(conn).get_current_heads()
    return {script.revision for script in wanted if script is not None} == set(current)


# A row whose foreign key names nothing: its table, rowid, the parent table, and the key's
# columns and values (the rowid alone does not say which row it was before a migration: a
# table Alembic copies to change it numbers its rows anew).
_Broken = tuple[str, int, str, tuple[tuple[str, object], ...]]


def _broken_references(conn: sa.Connection) -> list[_Broken]:
    """The rows of a SQLite database whose foreign key names a row that does not exist."""
    broken = []
    for table, rowid, parent, fkid in conn.exec_driver_sql("PRAGMA foreign_key_check").all():
        keys = conn.exec_driver_sql(f'PRAGMA foreign_key_list("{table}")').all()
        columns = [key[3] for key in keys if key[0] == fkid]
        selected = ", ".join(f'"{column}"' for column in columns)
        values = conn.exec_driver_sql(
            f'SELECT {selected} FROM "{table}" WHERE rowid = ?', (rowid,)
        ).one()
        broken.append((table, rowid, parent, tuple(zip(columns, values, strict=True))))
    return broken


def _refuse_broken_references(after: list[_Broken], before: list[_Broken]) -> None:
    """ConfigError, naming one, when ``after`` holds rows pointing at nothing that ``before``
    did not (told by table, parent table and key, whatever their rowids)."""
    was = Counter((table, parent, key) for table, _rowid, parent, key in before)
    new = []
    for table, rowid, parent, key in after:
        if was[table, parent, key]:
            was[table, parent, key] -= 1
        else:
            new.append((table, rowid, parent, key))
    if not new:
        return
    table, rowid, parent, key = new[0]
    where = " AND ".join(f"{column} = {_sql_literal(value)}" for column, value in key)
    raise ConfigError(
        f"the migration would leave {len(new)} row(s) pointing at nothing, such as {table}"
        f" row {rowid} ({where}), which names a {parent} row that does not exist; nothing was"
        f" changed. Delete or correct such rows in SQL (DELETE FROM {table} WHERE {where}),"
        " then start again"
    )


def _sql_literal(value: object) -> str:
    if isinstance(value, str):
        return "'" + value.replace("'", "''") + "'"
    return "NULL" if value is None else str(value)
