"""Which database a blob store belongs to, so that gc never runs against another one.

gc deletes the files in the store that no row of its database names. Pointed at a database
the store's blobs do not belong to, it takes every newer blob for an orphan: after a move to
PostgreSQL (``davserver db copy``), a cron job still holding the old settings would run gc on
the old SQLite file and delete every file uploaded since. So each database has an identity
(``database-id`` in ``instance_secrets``, made on first use) and the store names the one it
belongs to (``BlobStore.owner``: a small file, or an object, beside the blobs).

- The first database to serve or collect from an unmarked store claims it (``claim_store``);
  fsck and a dry run only look (``check_store``), so that they work on a read-only store.
- Serving, gc and fsck refuse a store that belongs to another database.
- ``db copy`` gives the copy an identity of its own. It hands the store over only when asked
  (``--take-blob-store``, a move): a copy of a backup must not take the store from the live
  database it was taken from.
- A backup's database has an identity of its own too, the same for every backup into one
  folder (``backup_identity``), and so has the backup's own store: a server or gc run on a
  backup with the live store's settings (an S3 bucket, a ``storage.blob_dir``) is refused,
  where gc took every file uploaded since the backup for an orphan and deleted it from the
  live store.
- The first server run on a backup's database (a restore) gives it an identity of its own,
  and the backup's store with it (``serve_store``): every other copy of the backup keeps the
  backup's identity, so gc run on one with the restored store's settings is refused too.
- ``db claim-blob-store`` gives the store to the configured database whoever had it: after a
  restore, or a copy made without the flag.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Mapping

from davserver.blobstore import MaintainableBlobStore
from davserver.blobstore.base import OWNER_KEY
from davserver.config import ConfigError
from davserver.db import Database
from davserver.services.instance import (
    remove_value,
    replace_if,
    replace_value,
    shared_value,
    value_of,
)

log = logging.getLogger(__name__)

_NAME = "database-id"
_BACKUP = "backup-identity"  # a backup's database, and a restore of it, hold the backup's
CLAIM_COMMAND = "davserver db claim-blob-store"


class StoreOfAnotherDatabase(ConfigError):
    """The blob store belongs to another database: serving or collecting would mix them."""


def database_id(db: Database) -> str:
    """This database's identity, made on first use."""
    return shared_value(db, _NAME, lambda: str(uuid.uuid4()))


def store_owner(blobs: MaintainableBlobStore) -> str | None:
    """The identity the store names, None when unmarked; ConfigError, in one line, when its
    mark cannot be read (not text, a folder, no permission, the object store not answering)."""
    try:
        return blobs.owner()
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise ConfigError(
            f"cannot read which database the blob store ({blobs.describe()}) belongs to, from"
            f" its {OWNER_KEY}: {reason}. If the mark is damaged, remove it and run"
            f" `{CLAIM_COMMAND}` with the settings of the database in use"
        ) from None


def check_store(db: Database, blobs: MaintainableBlobStore) -> None:
    """StoreOfAnotherDatabase when the store belongs to another database; an unmarked store
    is left unmarked (for fsck and dry runs, which must work on a read-only store)."""
    _refuse_another(database_id(db), store_owner(blobs), blobs)


def claim_store(db: Database, blobs: MaintainableBlobStore) -> None:
    """Mark an unmarked store as ``db``'s; StoreOfAnotherDatabase when it is another's."""
    mine, owner = database_id(db), store_owner(blobs)
    if owner is None:
        blobs.set_owner(mine)
    _refuse_another(mine, owner, blobs)


def serve_store(db: Database, blobs: MaintainableBlobStore) -> None:
    """Before a server serves ``db`` with ``blobs``: a backup's database becomes a live one of
    its own (``_go_live``) once the store is known to be the backup's or no one's, and takes
    a store still marked as the backup's (also after a start that stopped in between); then
    ``claim_store``."""
    backup = value_of(db, _BACKUP)
    if backup is not None:
        owner = store_owner(blobs)
        if database_id(db) == backup:  # no server ran on it yet
            _refuse_another(backup, owner, blobs)  # before anything changes
            _go_live(db, backup)
        if owner == backup:
            blobs.set_owner(database_id(db))
    claim_store(db, blobs)


def take_store(db: Database, blobs: MaintainableBlobStore) -> tuple[str | None, str]:
    """Make the store ``db``'s whoever had it (a backup's database becomes a live one of its
    own first); (the identity the store named before, ``db``'s)."""
    backup = value_of(db, _BACKUP)
    if backup is not None and database_id(db) == backup:
        _go_live(db, backup)
    mine, before = database_id(db), store_owner(blobs)
    if before != mine:
        blobs.set_owner(mine)
    return before, mine


def check_handover(source: Database, blobs: MaintainableBlobStore) -> None:
    """Before a copy that is to take the store: ConfigError unless the store is ``source``'s
    or no one's (settings naming a third database's store are a mistake to stop at)."""
    mine, owner = database_id(source), store_owner(blobs)
    if owner not in (None, mine):
        raise ConfigError(
            f"--take-blob-store: the blob store ({blobs.describe()}) belongs to another database"
            f" (id {owner}), not to the one being copied ({mine}); nothing was copied. Name the"
            " store of the database being copied (storage.blob_dir), or copy without the flag"
            f" and run `{CLAIM_COMMAND}` with the copy's settings"
        )


def give_identity(
    target: Database, blobs: MaintainableBlobStore | None = None, *, identity: str | None = None
) -> None:
    """After ``target`` was copied from another database: an identity of its own (the copied
    one is the source's; ``identity``, else a new one) and, with ``blobs``, the store
    (check_handover first)."""
    copy = identity or str(uuid.uuid4())
    replace_value(target, _NAME, copy)
    remove_value(target, _BACKUP)  # a copy of a backup is no backup
    if blobs is not None:
        blobs.set_owner(copy)


def mark_backup(target: Database, identity: str) -> None:
    """``target`` is a backup's database: ``identity`` (``backup_identity``) is its own until
    a server runs on it (``serve_store``)."""
    give_identity(target, identity=identity)
    replace_value(target, _BACKUP, identity)


def backup_identity(db: Database, folder: str) -> str:
    """The identity of the backups of ``db`` into ``folder``: derived from both, so that each
    backup into one folder has the one the server run on it earlier claimed its blobs with."""
    return str(uuid.uuid5(uuid.UUID(database_id(db)), f"backup:{folder}"))


def is_backup_into(db: Database, folder: str, values: Mapping[str, str]) -> bool:
    """Whether a database whose ``instance_secrets`` are ``values`` is a backup of ``db`` into
    ``folder``: marked with ``backup_identity`` (a server run on it since keeps the mark), or
    holding it as its own identity (a backup taken by a release before the mark)."""
    mine = backup_identity(db, folder)
    return mine in (values.get(_BACKUP), values.get(_NAME))


def _go_live(db: Database, backup: str) -> None:
    """``db``, a backup's database (``backup``) no server ran on yet (a restore, or a look at
    the backup), gets an identity of its own from now on, logged; of servers starting at once,
    one makes it. The backup and its other copies (an rsync, a snapshot) keep the backup's
    identity, so the store this one serves from refuses them. The mark stays: a store still
    named by the backup's identity is this database's to take."""
    if replace_if(db, _NAME, backup, str(uuid.uuid4())):
        log.warning(
            "this database is a backup's (id %s); it now has an identity of its own (%s),"
            " and the backup and its copies are refused the blob store it uses",
            backup,
            database_id(db),
        )


def _refuse_another(mine: str, owner: str | None, blobs: MaintainableBlobStore) -> None:
    if owner is not None and owner != mine:
        raise StoreOfAnotherDatabase(
            f"the blob store ({blobs.describe()}) belongs to another database (id {owner});"
            f" this one is {mine}. Use the settings of the database in use (after `davserver"
            " db copy --take-blob-store` the store belongs to the copy). If this database"
            f" replaces that one (a restore, or a copy made without the flag), run"
            f" `{CLAIM_COMMAND}` with these settings"
        )
