"""Blobs for maintenance tests: loose rows, orphan files, backdated files."""

from __future__ import annotations

import datetime as dt
import hashlib
import os
import time
import uuid
from pathlib import Path

import sqlalchemy as sa

from davserver.blobstore import BlobStore, FileSystemBlobStore, StoredBlob, storage_key_for
from davserver.db import Database
from davserver.db.types import utcnow
from davserver.models import Blob
from davserver.services.actor import Actor
from davserver.services.files import FileService
from davserver.services.tree import NodeView

HOUR = dt.timedelta(hours=1)
OLD = 2 * 3600  # seconds: older than a one-hour grace period


def write(store: BlobStore, data: bytes) -> StoredBlob:
    writer = store.writer()
    writer.write(data)
    return writer.finish()


def put(files: FileService, actor: Actor, parent: NodeView, name: str, data: bytes) -> NodeView:
    view, _ = files.commit_upload(actor, parent, name, write(files.blobs, data))
    return view


def loose_blob(
    database: Database,
    store: BlobStore,
    data: bytes,
    *,
    age: float = OLD,
    blob_id: uuid.UUID | None = None,
) -> uuid.UUID:
    """A blob row (with ``blob_id``, else a random one) and file that nothing references,
    created ``age`` seconds ago."""
    blob = write(store, data)
    store.ensure_stored(blob)  # what a commit would have done (the S3 store sends them then)
    store.release(blob)
    with database.write() as session:
        row = Blob(
            id=blob_id or uuid.uuid4(),
            sha256=blob.sha256,
            md5=blob.md5,
            sha1=blob.sha1,
            size_bytes=blob.size,
            storage_key=blob.storage_key,
            crc32=blob.crc32,
            created_at=utcnow() - dt.timedelta(seconds=age),
        )
        session.add(row)
        session.flush()
        return row.id


def orphan_file(store: FileSystemBlobStore, data: bytes, *, age: float = OLD) -> Path:
    """A blob file with no row, last modified ``age`` seconds ago."""
    return _file_at(path_of(store, data), data, age)


def two_level_file(store: FileSystemBlobStore, data: bytes, *, age: float = OLD) -> Path:
    """A blob file where the store put it when it fanned out twice (``ab/cd/abcd…``), with no
    row, last modified ``age`` seconds ago."""
    digest = sha(data)
    return _file_at(store.root / digest[:2] / digest[2:4] / digest, data, age)


def _file_at(path: Path, data: bytes, age: float) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    backdate(path, age)
    return path


def backdate(path: Path, age: float) -> None:
    then = time.time() - age
    os.utime(path, (then, then))


def path_of(store: FileSystemBlobStore, data: bytes) -> Path:
    return store.path_of(storage_key_for(hashlib.sha256(data).hexdigest()))


def blob_shas(database: Database) -> set[str]:
    with database.read() as session:
        return set(session.scalars(sa.select(Blob.sha256)))


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
