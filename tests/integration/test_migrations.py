"""`alembic upgrade head` on an empty database gives exactly the models' schema, both engines."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

import davserver.models  # noqa: F401  (fills the metadata)
from davserver.db import Base, Database
from davserver.db.migrate import alembic_config, upgrade


def test_upgrade_head_equals_models(database: Database) -> None:
    with database.engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"compare_type": True})
        assert compare_metadata(context, Base.metadata) == []


def test_downgrade_to_base_and_up_again(database: Database) -> None:
    from alembic import command

    cfg = alembic_config()
    with database.engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.downgrade(cfg, "base")
    with database.engine.connect() as conn:
        assert set(database.engine.dialect.get_table_names(conn)) <= {"alembic_version"}
    upgrade(database)
    with database.engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"compare_type": True})
        assert compare_metadata(context, Base.metadata) == []
