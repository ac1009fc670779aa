"""``davserver trash list | restore | purge``: users' trash from the command line.

``list USER`` shows what ``/trash/`` shows that user (with the group items they deleted, from
any group). ``restore USER ITEM`` puts an item back where it was deleted from, or with ``--to
OWNER:/path`` (``@GROUP:/path``) elsewhere in the same space, or into a folder under its own
name when the path ends with ``/``; ITEM is its name in the trash, or
the name it had when no other item in the trash had that name too. ``purge`` removes for good what
was deleted longer ago than ``trash.retention_days`` (or ``--older-than``), for everyone or one
user: run it from cron. The command line acts with every right; each change is in the logbook.
"""

from __future__ import annotations

import argparse
import datetime as dt
import posixpath
import sys
from typing import Any

from davserver.commands.common import (
    ProgressLine,
    add_json_flag,
    days,
    emit_item,
    emit_rows,
    human_size,
    item_path,
    open_services,
)
from davserver.context import Services
from davserver.errors import NotFound
from davserver.services.trash import TrashEntry, TrashListing
from davserver.services.tree import name_key

LIST_COLUMNS = ("name", "kind", "size", "original_path", "deleted_at", "deleted_by")


def register(commands: Any) -> None:
    trash = commands.add_parser("trash", help="deleted items: list, restore, purge")
    sub = trash.add_subparsers(dest="trash_command", required=True)

    listing = sub.add_parser("list", help="a user's trash, oldest deletion first")
    listing.add_argument("user", help="whose trash (a username)")
    add_json_flag(listing)
    listing.set_defaults(func=cmd_list)

    restore = sub.add_parser("restore", help="bring an item of a user's trash back")
    restore.add_argument("user", help="whose trash (a username)")
    restore.add_argument(
        "item",
        help="its name in the trash (as `trash list` shows it), or the name it was deleted "
        "under if no other item in the trash had it",
    )
    restore.add_argument(
        "--to",
        type=item_path,
        metavar="OWNER:/path",
        help="where to put it, in the same space: a new path (alice:/docs/a-old.txt), or a "
        "folder ending in / to keep its name (alice:/docs/); default: where it was deleted "
        "from",
    )
    add_json_flag(restore)
    restore.set_defaults(func=cmd_restore)

    purge = sub.add_parser(
        "purge",
        help="remove for good what was deleted more than trash.retention_days ago",
        description="Purge trashed items older than the retention period: their rows, versions "
        "and properties go; their blobs are left to davserver gc. Items holding a version a "
        "package pins are kept. Safe while the server runs.",
    )
    purge.add_argument("--user", help="only this user's trash")
    purge.add_argument(
        "--older-than",
        type=days(at_least=0),
        metavar="DAYS",
        help="deleted more than DAYS ago (default: trash.retention_days; 0: everything)",
    )
    purge.add_argument(
        "--dry-run", action="store_true", help="count what would be purged; purge nothing"
    )
    purge.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    add_json_flag(purge)
    purge.set_defaults(func=cmd_purge)


def _listing(services: Services, username: str) -> TrashListing:
    """What the user's ``/trash/`` shows: with what they deleted from groups they still see,
    and what anyone deleted from the groups they are an admin of."""
    ctx = services.namespace.context_of_user(services.users.user_id(username))
    return services.trash.listing_for(services.namespace, ctx)


def _entries(services: Services, username: str) -> list[TrashEntry]:
    return list(_listing(services, username).entries)


def _find(services: Services, username: str, item: str) -> TrashEntry:
    """The item named ``item`` in the user's trash, or the only one deleted under that name."""
    listing = _listing(services, username)
    found = listing.find(item)
    if found is not None:
        return found
    namesakes = [e for e in listing.entries if name_key(e.view.name) == name_key(item)]
    if len(namesakes) == 1:
        return namesakes[0]
    if namesakes:
        raise NotFound(
            f"{username}'s trash holds {len(namesakes)} items deleted as {item!r}; "
            "name one as `trash list` shows it"
        )
    raise NotFound(f"{username}'s trash holds no {item!r}")


def _row(entry: TrashEntry) -> dict[str, Any]:
    return {
        "name": entry.name,
        "id": entry.view.id,
        "kind": entry.view.kind,
        "size": entry.view.size,
        "original_path": entry.original_path,
        "deleted_at": entry.deleted_at,
        "deleted_by": entry.deleted_by,
    }


def cmd_list(args: argparse.Namespace) -> int:
    with open_services(args) as services:
        rows = [_row(entry) for entry in _entries(services, args.user)]
    if not args.json:
        rows = [{**row, "size": human_size(row["size"])} for row in rows]
    emit_rows(args, rows, LIST_COLUMNS)
    return 0


def cmd_restore(args: argparse.Namespace) -> int:
    with open_services(args) as services:
        entry = _find(services, args.user, args.item)
        if args.to is None:
            view = services.trash.restore_original(None, entry)
            where = entry.original_path
        else:
            space, path = args.to
            if path.endswith("/"):
                # Into that folder, as cp and mv take a folder: under the name it had.
                name = posixpath.basename(entry.original_path)
                folder = services.namespace.locate(space, path)
                path += name
            else:
                name = posixpath.basename(path)
                folder = services.namespace.locate(space, posixpath.dirname(path))
            where = f"{space}:{path}"
            view = services.trash.restore(None, entry.view.id, folder, name, where=where)
    emit_item(args, {"restored": entry.name, "to": where, "id": view.id})
    return 0


def cmd_purge(args: argparse.Namespace) -> int:
    with open_services(args) as services:
        older_than = dt.timedelta(days=args.older_than) if args.older_than is not None else None
        if older_than is None and not services.trash.retention_days:
            print(
                "davserver trash purge: trash.retention_days is 0 (keep forever); "
                "name --older-than DAYS to purge anyway",
                file=sys.stderr,
            )
        report = services.trash.purge_expired(
            older_than=older_than,
            user_id=services.users.user_id(args.user) if args.user else None,
            dry_run=args.dry_run,
            progress=None if args.quiet else ProgressLine("purge"),
            via="cli",
        )
    if args.json:
        emit_item(args, report.as_dict())
    else:
        emit_item(
            args,
            {
                "dry run": report.dry_run,
                "older than": f"{report.older_than_days} days",
                "items purged": report.items_purged,
                "nodes removed": report.nodes_removed,
                "versions removed": report.versions_removed,
                "kept (pinned by a package)": report.items_pinned,
                "cut-short purges finished": report.items_finished,
                "seconds": report.seconds,
            },
        )
    return 0
