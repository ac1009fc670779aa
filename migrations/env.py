"""Alembic environment: runs migrations for davserver's models on SQLite or PostgreSQL."""

from __future__ import annotations

import logging.config
import warnings

import sqlalchemy as sa
from alembic import context

from davserver.config import load_settings
from davserver.db import Base, Database
from davserver.db.migrate import migration_connection
from davserver.models import __all__ as _all_models  # noqa: F401  (fills the metadata)

config = context.config
if config.config_file_name is not None and config.attributes.get("configure_logger", True):
    logging.config.fileConfig(config.config_file_name, disable_existing_loggers=False)

target_metadata = Base.metadata


def _url() -> str:
    url = context.get_x_argument(as_dictionary=True).get("url") or config.get_main_option(
        "sqlalchemy.url"
    )
    return url or load_settings("config.yaml").database_url


def run_migrations_offline() -> None:
    context.configure(
        url=_url(),
        target_metadata=target_metadata,
        literal_binds=True,
        render_as_batch=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    db = Database(_url(), pool_size=1)
    try:
        with migration_connection(db) as conn:
            _run(conn)
    finally:
        db.dispose()


def _run(connection: object) -> None:
    context.configure(
        connection=connection,  # type: ignore[arg-type]
        target_metadata=target_metadata,
        render_as_batch=True,
        compare_type=True,
    )
    with context.begin_transaction(), warnings.catch_warnings():
        # Batch mode (SQLite: a table copied to change a constraint) reflects the tables
        # around it, and SQLite's reflection cannot read back expression indexes (users' and
        # groups' lower(name)). It says so on the admin's terminal at every first start; the
        # copied table has none, and the others are not touched.
        warnings.filterwarnings(
            "ignore", "Skipped unsupported reflection of expression-based index", sa.exc.SAWarning
        )
        context.run_migrations()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
