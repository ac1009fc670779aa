"""Fixtures shared by every test: databases and running servers, on both engines."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from davserver.db import Database
from davserver.db.migrate import upgrade
from tests.dbs import fresh_database_url
from tests.s3 import STORES as S3_STORES
from tests.s3 import S3Endpoints, fresh_bucket
from tests.s3 import server_env as s3_server_env
from tests.servers import InprocServer, LiveServer, run_inproc_server, run_live_server

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


@pytest.fixture(scope="session", params=ENGINES)
def live_server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LiveServer]:
    """A real ``davserver serve`` subprocess with its own database, one per engine and session.

    On PostgreSQL it runs as production would: two worker processes on one port, so every
    real client (litmus, rclone, davfs2, curl...) meets a server whose consecutive connections
    may land on different processes. SQLite is the embedded default: one process.

    Tests share it: put what you create under ``dav_dir`` (or ``live_server.fresh_dir()``).
    """
    tmp_dir = tmp_path_factory.mktemp(f"live-{request.param}")
    workers = {"DAVSERVER_SERVER_WORKERS": "2"} if request.param == "postgresql" else None
    with run_live_server(request.param, tmp_dir, workers) as srv:
        yield srv


@pytest.fixture(scope="session", params=ENGINES)
def inproc_server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[InprocServer]:
    """The application served by cheroot on a thread of this process (``.app`` to inspect rows)."""
    tmp_dir = tmp_path_factory.mktemp(f"inproc-{request.param}")
    with run_inproc_server(request.param, tmp_dir) as srv:
        yield srv


@pytest.fixture
def dav_dir(live_server: LiveServer) -> str:
    """URL of a fresh, empty collection ``/files/t-<random>/`` on ``live_server``."""
    return live_server.fresh_dir()


@pytest.fixture
def inproc_dav_dir(inproc_server: InprocServer) -> str:
    """URL of a fresh, empty collection ``/files/t-<random>/`` on ``inproc_server``."""
    return inproc_server.fresh_dir()


@pytest.fixture(scope="session")
def s3_endpoints(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Endpoints]:
    """The S3-compatible stores' servers, each started once, when a test first needs it."""
    endpoints = S3Endpoints(tmp_path_factory.mktemp("s3"))
    try:
        yield endpoints
    finally:
        endpoints.close()


@pytest.fixture(scope="session", params=S3_STORES)
def s3_kind(request: pytest.FixtureRequest) -> str:
    """Which S3-compatible store (tests.s3.STORES): every S3 test runs on each."""
    store: str = request.param
    return store


@pytest.fixture(scope="session")
def s3_endpoint(s3_kind: str, s3_endpoints: S3Endpoints) -> str:
    """URL of that store's server."""
    return s3_endpoints.url(s3_kind)


@pytest.fixture
def s3_bucket(s3_endpoint: str) -> Iterator[str]:
    """A fresh bucket on ``s3_endpoint``, removed afterwards."""
    with fresh_bucket(s3_endpoint) as bucket:
        yield bucket


@pytest.fixture(scope="session", params=ENGINES)
def s3_live_server(
    request: pytest.FixtureRequest, s3_endpoint: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LiveServer]:
    """``live_server`` with its blobs in an S3 bucket of its own (``.s3_bucket``), as DESIGN's
    production deployment runs: on PostgreSQL, two worker processes."""
    tmp_dir = tmp_path_factory.mktemp(f"live-s3-{request.param}")
    with fresh_bucket(s3_endpoint) as bucket:
        env = s3_server_env(s3_endpoint, bucket)
        if request.param == "postgresql":
            env["DAVSERVER_SERVER_WORKERS"] = "2"
        with run_live_server(request.param, tmp_dir, env) as srv:
            srv.s3_bucket = bucket
            yield srv
