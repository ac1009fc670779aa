"""``davserver db upgrade | copy | claim-blob-store``: the schema, moving between databases,
and which database the blob store belongs to (``services.store_owner``)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from davserver.commands.common import (
    add_json_flag,
    open_services,
    require_sqlite_file,
    settings_of,
)
from davserver.config import ConfigError, Settings

if TYPE_CHECKING:
    from davserver.blobstore import MaintainableBlobStore


def cmd_db_upgrade(args: argparse.Namespace) -> int:
    from davserver.bootstrap import upgrade_schema

    upgrade_schema(settings_of(args))
    print("database is at the newest schema")
    return 0


def cmd_db_copy(args: argparse.Namespace) -> int:
    import sqlalchemy as sa

    from davserver.db import Base, Database
    from davserver.db.copy import CopyFailed, CopyReport, copy_database
    from davserver.db.engine import check_url, is_in_memory
    from davserver.db.migrate import is_at_head, upgrade
    from davserver.models import Op
    from davserver.services.audit import record_audit
    from davserver.services.store_owner import check_handover, give_identity

    settings = settings_of(args)
    source_url, target_url = check_url(settings.database_url), check_url(args.to, option="--to")
    shown = target_url.render_as_string(hide_password=True)
    if source_url == target_url:
        raise ConfigError(f"--to names the database being copied ({shown})")
    if is_in_memory(target_url):
        raise ConfigError(
            f"--to names an in-memory SQLite database ({shown}), gone when the copy ends;"
            " name a file: sqlite:///path"
        )
    require_sqlite_file(settings)
    if source_url.get_backend_name() == "sqlite" and Path(f"{source_url.database}-wal").exists():
        # Looked at before this command opens it (which makes the -wal file itself).
        print(
            "davserver: warning: the database is open (its -wal file is there): if a server"
            " still runs on it, what it writes after the copy is not copied; stop it first",
            file=sys.stderr,
        )
    source, target = Database(settings.database_url), Database(args.to)
    try:
        if not is_at_head(source):
            print(
                "davserver: the database to copy is not at the newest schema: run"
                " `davserver db upgrade` first",
                file=sys.stderr,
            )
            return 1
        store = _store_to_take(settings) if args.take_blob_store else None
        if store is not None:
            check_handover(source, store)
        upgrade(target)

        def tell(table: str, rows: int) -> None:
            if not args.quiet:
                print(f"db copy: {table}: {rows} rows", file=sys.stderr)

        def log(session: sa.orm.Session, report: CopyReport) -> None:
            details = {
                "from": source_url.get_backend_name(),
                "rows": report.rows,
                "took_blob_store": store is not None,
            }
            record_audit(session, None, Op.MAINTENANCE_COPY, details=details)

        try:
            report = copy_database(source, target, Base.metadata, progress=tell, before_commit=log)
        except CopyFailed as exc:
            print(
                f"davserver: the target refused a row, so nothing was copied: {exc}",
                file=sys.stderr,
            )
            return 1
        # From now on gc, fsck and serve refuse the store on the old settings (store_owner).
        give_identity(target, store)
    finally:
        source.dispose()
        target.dispose()
    if args.json:
        print(
            json.dumps(
                {
                    "to": shown,
                    "rows": report.rows,
                    "seconds": report.seconds,
                    "took_blob_store": store is not None,
                }
            )
        )
    else:
        print(f"copied {report.total} rows into {shown} in {report.seconds:.1f} s")
        _say_where_the_blobs_are(settings, took=store is not None)
    return 0


def _store_to_take(settings: Settings) -> MaintainableBlobStore:
    """The store these settings name, for ``--take-blob-store``; ConfigError when a folder
    they name does not exist (a backup's blobs are beside it, not there)."""
    from davserver.context import open_blob_store

    missing = _missing_blob_folder(settings)
    if missing:
        raise ConfigError(f"--take-blob-store: {missing}")
    return open_blob_store(settings)


def _missing_blob_folder(settings: Settings) -> str | None:
    """What to do when the settings name a blob folder that does not exist, else None."""
    blobs = settings.blob_path
    if settings.storage.backend == "s3" or blobs.is_dir():
        return None
    return (
        f"set storage.blob_dir (DAVSERVER_STORAGE_BLOB_DIR) to the folder holding the blobs:"
        f" these settings name {blobs}, which does not exist (a backup's blobs are in its"
        " blobs/ folder)"
    )


def _say_where_the_blobs_are(settings: Settings, *, took: bool) -> None:
    keep = _missing_blob_folder(settings) or f"keep the blobs where they are ({settings.blob_path})"
    print(f"to serve it, set database.url (DAVSERVER_DATABASE_URL) to that database and {keep}")
    if took:
        print(
            "the blob store now belongs to the copy: serve, gc and fsck with these settings"
            " refuse it, so that a gc on this database cannot delete the copy's new files"
        )
    else:
        print(
            "the blob store still belongs to the database copied from: if the copy replaces it"
            " (a move or a restore), stop every server and cron job on that one, then run"
            " `davserver db claim-blob-store` with the copy's settings"
        )


def cmd_claim_blob_store(args: argparse.Namespace) -> int:
    from davserver.services.store_owner import take_store

    with open_services(args) as services:  # the schema brought up to date, as for gc
        store = services.blobs
        before, mine = take_store(services.db, store)
    if args.json:
        print(json.dumps({"store": store.describe(), "database_id": mine, "before": before}))
    elif before == mine:
        print(f"the blob store ({store.describe()}) already belongs to this database ({mine})")
    else:
        had = (
            f"before, to {before}: serve, gc and fsck on that one refuse it from now on"
            if before
            else "it named no database before"
        )
        print(f"the blob store ({store.describe()}) now belongs to this database ({mine}); {had}")
    return 0


def register(commands: Any) -> None:
    db = commands.add_parser("db", help="database maintenance")
    verbs = db.add_subparsers(dest="db_command", required=True)
    upgrade = verbs.add_parser("upgrade", help="apply pending migrations")
    upgrade.set_defaults(func=cmd_db_upgrade)

    copy = verbs.add_parser(
        "copy",
        help="copy every row into another, empty database (SQLite to PostgreSQL)",
        description="Copy every row of the configured database into another, empty one"
        " (brought to the newest schema first), keeping ids, in one transaction: moving from"
        " the embedded SQLite to PostgreSQL, or back, or restoring a backup into PostgreSQL."
        " Blobs stay where they are. Stop the server first: what it writes after the copy"
        " starts is not copied.",
    )
    copy.add_argument("--to", required=True, metavar="URL", help="SQLAlchemy URL of the target")
    copy.add_argument(
        "--take-blob-store",
        action="store_true",
        help="the copy replaces this database (a move, a restore): give it the blob store, so"
        " that serve, gc and fsck on this one refuse it. Without it the store stays this"
        " database's: right for a copy of a backup taken from a database still in use",
    )
    copy.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    add_json_flag(copy)
    copy.set_defaults(func=cmd_db_copy)

    claim = verbs.add_parser(
        "claim-blob-store",
        help="make the blob store this database's, whichever database it belonged to",
        description="The blob store names the database its blobs belong to, and serve, gc and"
        " fsck refuse a store that names another: gc would delete that one's files as orphans."
        " Run this with the settings of the database in use when it replaces the one the store"
        " names: after a restore, or a `db copy` made without --take-blob-store. Stop every"
        " server and cron job on the other database first.",
    )
    add_json_flag(claim)
    claim.set_defaults(func=cmd_claim_blob_store)
