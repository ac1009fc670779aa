"""Fixtures shared by every test: databases on both engines."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from davserver.db import Database
from davserver.db.migrate import upgrade
from tests.dbs import fresh_database_url

ENGINES = ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)]


@pytest.fixture(params=ENGINES)
def db_url(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """An empty database URL, once per engine."""
    with fresh_database_url(request.param, str(tmp_path_factory.mktemp("db"))) as url:
        yield url


@pytest.fixture
def database(db_url: str) -> Iterator[Database]:
    """A migrated, empty database, once per engine."""
    db = Database(db_url, pool_size=2)
    upgrade(db)
    try:
        yield db
    finally:
        db.dispose()
