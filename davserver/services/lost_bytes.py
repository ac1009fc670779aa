"""Bytes the blob store has lost: what the client and the admin are told.

A version whose blob file is gone (a disk restored from an older backup, a file removed by
hand) cannot be served. The client gets NotFound naming what it asked for, as for anything
else it cannot have, before any byte is sent; the server's log gets an error naming it and
its blob, since only an admin can put the bytes back (``davserver fsck`` lists every blob
whose file is missing).
"""

from __future__ import annotations

import io
import logging
from collections.abc import Iterable
from typing import BinaryIO

from davserver.blobstore import BlobStore
from davserver.errors import NotFound

log = logging.getLogger(__name__)


def lost_bytes(what: str, storage_keys: Iterable[str | None]) -> NotFound:
    """The NotFound for ``what`` (the names the client knows), once an error naming it and
    the missing blobs ``storage_keys`` is logged."""
    keys = sorted({key for key in storage_keys if key is not None})
    log.error(
        "%s: the blob store is missing %s (davserver fsck lists every missing blob)",
        what,
        ", ".join(keys),
    )
    return NotFound(f"{what}: the bytes are missing from the blob store")


def open_stored(blobs: BlobStore, storage_key: str | None, what: str) -> BinaryIO:
    """A seekable reader of the bytes under ``storage_key`` (none for None: a file with no
    version); ``lost_bytes`` for ``what`` when the blob store has lost them."""
    if storage_key is None:
        return io.BytesIO(b"")
    try:
        return blobs.open(storage_key)
    except FileNotFoundError as exc:
        raise lost_bytes(what, [storage_key]) from exc


def require_stored(blobs: BlobStore, storage_key: str | None, what: str) -> None:
    """What ``open_stored`` would raise, without opening the bytes (a HEAD answers what a
    GET would)."""
    if storage_key is not None and not blobs.exists(storage_key):
        raise lost_bytes(what, [storage_key])
