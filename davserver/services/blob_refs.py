"""Rows that reference a blob, and the bytes they need (rule 2 of ``davserver.blobstore.base``).

A version or an image variant that references a blob must not be committed while the blob's
bytes are missing, though gc may have removed them after the write that stored them finished
(gc's side is in ``davserver.services.maintenance``). There are two ways, by store:

- A local store (the file system): inside the referencing transaction, upsert the blob row
  (``reference_id``), write the reference, then ``referenced``: ``ensure_stored``, one stat().
  gc cannot take the bytes after that look: on SQLite the transaction holds the write lock, on
  PostgreSQL the reference's foreign key check holds the blob row.
- A ``RemoteBlobStore`` (S3), whose ``ensure_stored`` is a round trip: inside the transaction
  it would hold SQLite's only write lock, or PostgreSQL's row lock, for as long. ``place`` runs
  before the transaction: it reads the blob row, or inserts it in a short transaction of its own
  when there is none, then calls ``ensure_stored`` with no transaction open. The referencing
  transaction takes that same row (``reference_id``), locking it against gc's delete on
  PostgreSQL (FOR KEY SHARE; on SQLite the write lock does), and writes the reference.

Why the row still being there means the bytes ``place`` saw are still there: gc takes a blob's
bytes only in the transaction that deletes its row (it moves them aside before it commits, and
back before it rolls back), and a row's id is never used again. The row existed before
``ensure_stored`` looked; if it still exists, no gc that took the bytes has committed since, and
none can until the reference is committed. If it is gone, ``reference_id`` raises ``Unplaced``:
the transaction rolls back and ``placing`` places again, the spare putting the bytes back.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import TypeVar

import sqlalchemy as sa
from sqlalchemy.orm import Session

from davserver.blobstore import BlobStore, StoredBlob
from davserver.db import Base, Database
from davserver.db.dialect import for_bind, insert_or_ignore
from davserver.db.types import utcnow
from davserver.errors import Unavailable

T = TypeVar("T")
_RETRIES = 4


class Unplaced(Exception):
    """The referencing transaction needs the blob placed (again) first: roll it back."""


def is_remote(blobs: BlobStore) -> bool:
    """Whether ``blobs`` is a ``RemoteBlobStore``. By its ``remote`` flag: isinstance() of a
    runtime-checkable protocol looks up each of its members, 35 us, three times per upload."""
    return getattr(blobs, "remote", False) is True


def placing(
    db: Database, blobs: BlobStore, blob: StoredBlob, work: Callable[[uuid.UUID | None], T]
) -> T:
    """``work(placed)``, which runs the referencing transaction and passes ``placed`` on to
    ``reference_id``: for a remote store, the row ``place`` returned (None for a local one).

    Empty bytes are placed only when ``work`` asks (a new empty file references no blob);
    others before ``work`` first runs. ``work`` runs again, placed again, each time it raises
    Unplaced; Unavailable when gc keeps taking the bytes away.
    """
    placed = place(db, blobs, blob) if is_remote(blobs) and blob.size > 0 else None
    for _attempt in range(_RETRIES):
        try:
            return work(placed)
        except Unplaced:
            placed = place(db, blobs, blob)
    raise Unavailable("the blob store's clean-up kept removing these bytes; try again")


def place(db: Database, blobs: BlobStore, blob: StoredBlob) -> uuid.UUID:
    """The id of ``blob``'s row (inserted, in a transaction of its own, when there is none),
    once its bytes are in place: ``ensure_stored`` runs after the row is there, and outside
    any transaction. Raises what ``ensure_stored`` raises."""
    with db.connect() as conn:
        found = conn.scalar(_BLOB_ID, {"sha256": blob.sha256})
    if found is None:
        with db.write() as session:
            found = row_id(session, blob)
    blobs.ensure_stored(blob)
    return found


def reference_id(
    session: Session, blobs: BlobStore, blob: StoredBlob, placed: uuid.UUID | None
) -> uuid.UUID:
    """The id of the blob row a reference about to be written uses. Local store: upserted
    (``referenced`` follows the reference). Remote store: ``placed``, held until the
    transaction ends; Unplaced when it was not placed yet or gc has deleted it since."""
    if not is_remote(blobs):
        return row_id(session, blob)
    if placed is None or session.scalar(_HOLD, {"id": placed}) is None:
        raise Unplaced
    return placed


def referenced(session: Session, blobs: BlobStore, blob: StoredBlob) -> None:
    """Once the reference is written (local store): its bytes must be in place, as gc may
    have removed them after the write finished. A remote store's were placed before."""
    if not is_remote(blobs):
        session.flush()
        blobs.ensure_stored(blob)


def row_id(session: Session, blob: StoredBlob) -> uuid.UUID:
    """The id of the blob row for these bytes, inserting it if this is their first upload
    (one statement then; two when the bytes are stored already)."""
    inserted = session.scalar(
        for_bind(_INSERT_BLOB, session),
        {
            "id": uuid.uuid4(),
            "sha256": blob.sha256,
            "md5": blob.md5,
            "sha1": blob.sha1,
            "size_bytes": blob.size,
            "storage_key": blob.storage_key,
            "created_at": utcnow(),
            "crc32": blob.crc32,
        },
    )
    # None: the row exists, from an earlier or a concurrent upload of the same bytes.
    blob_id = inserted or session.scalar(_BLOB_ID, {"sha256": blob.sha256})
    assert blob_id is not None
    return blob_id


_b = Base.metadata.tables["blobs"]
_INSERT_BLOB = {
    dialect: insert.returning(_b.c.id) for dialect, insert in insert_or_ignore(_b, "sha256").items()
}
_BLOB_ID = sa.select(_b.c.id).where(_b.c.sha256 == sa.bindparam("sha256"))
# FOR KEY SHARE on PostgreSQL, what the reference's foreign key check takes anyway: gc's
# DELETE of the row waits for this transaction, then fails. SQLite has no row locks.
_HOLD = (
    sa.select(_b.c.id)
    .where(_b.c.id == sa.bindparam("id", type_=sa.Uuid))
    .with_for_update(read=True, key_share=True)
)
