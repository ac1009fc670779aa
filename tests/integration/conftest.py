"""Fixtures for service-level tests: a blob store, the file service, a user and their home."""

from __future__ import annotations

from pathlib import Path

import pytest

from davserver.blobstore import FileSystemBlobStore
from davserver.db import Database
from davserver.models import User
from davserver.services.actor import Actor
from davserver.services.files import FileService
from davserver.services.maintenance import MaintenanceService
from davserver.services.tree import NodeView


@pytest.fixture
def store(tmp_path: Path) -> FileSystemBlobStore:
    return FileSystemBlobStore(tmp_path / "blobs", fsync=False)


@pytest.fixture
def files(database: Database, store: FileSystemBlobStore) -> FileService:
    return FileService(database, store)


@pytest.fixture
def maintenance(database: Database, store: FileSystemBlobStore) -> MaintenanceService:
    return MaintenanceService(database, store)


@pytest.fixture
def actor(database: Database) -> Actor:
    """The user ``alice``."""
    with database.write() as session:
        user = User(username="alice", password_hash="x")
        session.add(user)
        session.flush()
        return Actor(user_id=user.id, username="alice")


@pytest.fixture
def home(files: FileService, actor: Actor) -> NodeView:
    """The root folder of alice's own space."""
    view = files.resolve(files.home_id(actor.user_id), [])
    assert view is not None
    return view
