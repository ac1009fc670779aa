"""Which database a blob store belongs to, so that gc never runs against another one.

gc deletes the files in the store that no row of its database names. Pointed at a database
the store's blobs do not belong to, it takes every newer blob for an orphan: after a move to
PostgreSQL (``davserver db copy``), a cron job still holding the old settings would run gc on
the old SQLite file and delete every file uploaded since. So each database has an identity
(``database-id`` in ``instance_secrets``, made on first use), the store names the one it
belongs to (``BlobStore.owner``: a small file, or an object, beside the blobs), the first
database to serve or collect from an unmarked store claims it, and ``db copy`` gives the copy
an identity of its own and the store to it. Serving, gc and fsck refuse a store that belongs
to another database.
"""

from __future__ import annotations

import uuid

from davserver.blobstore import MaintainableBlobStore
from davserver.blobstore.base import OWNER_KEY
from davserver.config import ConfigError
from davserver.db import Database
from davserver.services.instance import replace_value, shared_value

_NAME = "database-id"


class StoreOfAnotherDatabase(ConfigError):
    """The blob store belongs to another database: serving or collecting would mix them."""


def database_id(db: Database) -> str:
    """This database's identity, made on first use."""
    return shared_value(db, _NAME, lambda: str(uuid.uuid4()))


def claim_store(db: Database, blobs: MaintainableBlobStore) -> None:
    """Mark an unmarked store as ``db``'s; StoreOfAnotherDatabase when it is another's."""
    mine = database_id(db)
    owner = blobs.owner()
    if owner is None:
        blobs.set_owner(mine)
    elif owner != mine:
        raise StoreOfAnotherDatabase(
            f"the blob store ({blobs.describe()}) belongs to another database (id {owner});"
            f" this one is {mine}. After `davserver db copy` the store belongs to the copy:"
            " use the settings that name it (DAVSERVER_DATABASE_URL). If this database is"
            f" the one in use, remove the store's {OWNER_KEY} and start again"
        )


def hand_over(source: Database, target: Database, blobs: MaintainableBlobStore | None) -> bool:
    """After ``target`` was copied from ``source``: give it an identity of its own and, if
    the store is ``source``'s (or no one's), the store. False when there is no store here or
    it is a third database's, which it stays."""
    mine = database_id(source)
    copy = str(uuid.uuid4())
    replace_value(target, _NAME, copy)
    if blobs is None or blobs.owner() not in (None, mine):
        return False
    blobs.set_owner(copy)
    return True
