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
import os
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


def open_stored(
    blobs: BlobStore, storage_key: str | None, what: str, size: int | None = None
) -> BinaryIO:
    """A seekable reader of the bytes under ``storage_key`` (none for None: a file with no
    version); ``lost_bytes`` for ``what`` when the blob store has lost them, or, for a file
    in a local folder, when the file holds fewer or more than ``size`` bytes (cut short by a
    crash or a disk error): a GET announced ``size`` and then sent what there was."""
    if storage_key is None:
        return io.BytesIO(b"")
    try:
        reader = blobs.open(storage_key)
    except FileNotFoundError as exc:
        raise lost_bytes(what, [storage_key]) from exc
    held = _local_size(reader)
    if size is not None and held is not None and held != size:
        reader.close()
        raise damaged_bytes(what, storage_key, held, size)
    return reader


def damaged_bytes(what: str, storage_key: str, held: int, size: int) -> NotFound:
    """The NotFound for ``what`` whose blob ``storage_key`` holds ``held`` bytes instead of
    its ``size``, once an error naming it is logged."""
    log.error(
        "%s: the blob store holds %d bytes of %s instead of %d (davserver fsck lists every"
        " damaged blob; an upload of the same bytes replaces it)",
        what,
        held,
        storage_key,
        size,
    )
    return NotFound(f"{what}: the bytes are damaged in the blob store")


def _local_size(reader: BinaryIO) -> int | None:
    """The size of the file ``reader`` reads, if it is a local one (one fstat)."""
    try:
        return os.fstat(reader.fileno()).st_size
    except (OSError, ValueError, io.UnsupportedOperation):
        return None


def require_stored(
    blobs: BlobStore, storage_key: str | None, what: str, size: int | None = None
) -> None:
    """What ``open_stored`` would raise, without opening the bytes (a HEAD answers what a
    GET would), from the size the store holds: one stat, or one HeadObject."""
    if storage_key is None:
        return
    held = blobs.size_of(storage_key)
    if held is None:
        raise lost_bytes(what, [storage_key])
    if size is not None and held != size:
        raise damaged_bytes(what, storage_key, held, size)
