"""Bytes the blob store has lost: what the client and the admin are told.

A version whose blob file is gone (a disk restored from an older backup, a file removed by
hand) cannot be served. The client gets NotFound naming what it asked for, as for anything
else it cannot have, before any byte is sent; the server's log gets an error naming it and
its blob, since only an admin can put the bytes back (``davserver fsck`` lists every blob
whose file is missing).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

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
