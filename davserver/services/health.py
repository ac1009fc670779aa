"""Whether this server process can serve: what a load balancer or a monitor asks.

Each part is tried for real, cheaply: the database answers a query, the blob store can take
an upload (its temp folder is writable; an S3 bucket answers). Nothing is written. What went
wrong is logged; the answer itself only says which part failed, since anyone may ask.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import sqlalchemy as sa

from davserver.blobstore import BlobStore
from davserver.db import Database

log = logging.getLogger(__name__)


def probe(db: Database, blobs: BlobStore) -> dict[str, bool]:
    """{"database": works, "blob_store": works}; each failure is logged with its reason."""
    return {
        "database": _works("database", lambda: _answers(db)),
        "blob_store": _works("blob store", blobs.check),
    }


def _works(part: str, check: Callable[[], None]) -> bool:
    try:
        check()
    except Exception as exc:  # whatever it is, the part cannot serve: say so, never raise
        log.warning("health check: the %s fails: %s", part, exc)
        return False
    return True


def _answers(db: Database) -> None:
    with db.connect() as conn:
        conn.execute(sa.text("SELECT 1"))
