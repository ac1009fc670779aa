"""First start: the schema, the blob folder and the first admin."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import sqlalchemy as sa

from davserver.config import ConfigError, Settings
from davserver.db import Database
from davserver.db.engine import check_url, is_in_memory, unusable
from davserver.errors import BadRequest
from davserver.processes import run_in_child

if TYPE_CHECKING:  # the command line makes folders and migrates without the WebDAV app
    from davserver.app import Application


class SchemaUpgradeFailed(RuntimeError):
    """The child process that brings the schema up to date failed (its error is logged,
    or, for a ConfigError, printed as one ``davserver:`` line: ``told``)."""

    def __init__(self, message: str, *, told: bool = False) -> None:
        super().__init__(message)
        self.told = told


# The exit code of a schema upgrade child that printed a ConfigError.
_TOLD = 2


def prepare(
    settings: Settings, *, migrate_in_child: bool = False
) -> tuple[Application, str | None]:
    """Migrate the database, create the first admin if missing, and build the application.

    Returns the application and the admin password when one was generated (to print once).

    With ``migrate_in_child`` the migration runs in a forked child process, so this process
    never loads Alembic (with Mako, some 10 MiB resident for as long as the server runs).
    Only where no other thread runs yet: ``davserver serve`` at its start.
    """
    from davserver.app import Application
    from davserver.context import open_s3_store
    from davserver.services.store_owner import serve_store

    if is_in_memory(check_url(settings.database_url)):
        # Each pooled connection (and the child that migrates) would have a database of its
        # own: "no such table: roles".
        raise ConfigError(
            "database.url names an in-memory SQLite database, which a server cannot share"
            " between its connections; name a file: sqlite:///path"
        )
    blobs = open_s3_store(settings)  # asks the bucket before anything is made
    make_folders(settings)
    if migrate_in_child:
        _upgrade_schema_in_child(settings)
    app = Application(settings, blobs)
    if not migrate_in_child:
        upgrade_schema(settings, app.db)
    try:
        serve_store(app.db, app.blobs)
    except ConfigError:  # another database's store, or one whose mark cannot be read
        app.close()
        raise
    try:
        generated = app.accounts.ensure_admin(settings.admin.user, settings.admin.password or None)
    except BadRequest as exc:  # a name or a password the account rules refuse
        app.close()
        raise ConfigError(
            f"admin.user / admin.password (DAVSERVER_ADMIN_USER / _PASSWORD): {exc}"
        ) from None
    return app, generated


def make_folders(settings: Settings) -> None:
    """The data folder (for SQLite's file) and the blob folder with its ``tmp/`` (uploads in
    progress; an S3 store's staging), made where missing; ConfigError naming the option whose
    folder cannot be made."""
    if not settings.database.url:
        _make_folder("data_dir", Path(settings.data_dir))
    _make_folder("storage.blob_dir", settings.blob_path)
    _make_folder("storage.blob_dir", settings.blob_path / "tmp")


def _make_folder(option: str, path: Path) -> None:
    """``mkdir -p path``, or ConfigError naming the option that gave the path."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"{option}: cannot create the folder {path}: {exc.strerror}") from None


def upgrade_schema(settings: Settings, db: Database | None = None) -> None:
    """Bring the database's schema to the newest revision (on ``db``, or a connection of its
    own)."""
    from davserver.db.migrate import upgrade  # Alembic: see prepare()

    own = db is None
    if own:
        make_folders(settings)
    db = db or Database(settings.database_url)
    try:
        upgrade(db)
    finally:
        if own:
            db.dispose()


def _upgrade_schema_in_child(settings: Settings) -> None:
    """``upgrade_schema`` in a forked child, waited for; SchemaUpgradeFailed when it fails
    (its error is logged)."""

    def work() -> None:
        try:
            upgrade_schema(settings)
        except ConfigError as exc:  # a reason for the user, not a traceback
            print(f"davserver: {exc}", file=sys.stderr, flush=True)
            os._exit(_TOLD)
        except (sa.exc.OperationalError, sa.exc.InterfaceError) as exc:
            print(f"davserver: {unusable(exc)}", file=sys.stderr, flush=True)
            os._exit(_TOLD)

    code = run_in_child(work)
    if code != 0:
        raise SchemaUpgradeFailed(
            f"bringing the database schema up to date failed (exit {code})", told=code == _TOLD
        )
