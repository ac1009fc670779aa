"""`alembic upgrade head` on an empty database gives exactly the models' schema, both engines,
and migrating down and up again keeps the rows that both revisions have."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

import davserver.models  # noqa: F401  (fills the metadata)
from davserver.db import Base, Database
from davserver.db.migrate import downgrade, upgrade
from davserver.services.actor import Actor
from davserver.services.files import FileService
from davserver.services.tree import NodeView


def test_upgrade_head_equals_models(database: Database) -> None:
    with database.engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"compare_type": True})
        assert compare_metadata(context, Base.metadata) == []


def test_downgrade_to_base_and_up_again(database: Database) -> None:
    downgrade(database, "base")
    with database.engine.connect() as conn:
        assert set(database.engine.dialect.get_table_names(conn)) <= {"alembic_version"}
    upgrade(database)
    with database.engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"compare_type": True})
        assert compare_metadata(context, Base.metadata) == []


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
