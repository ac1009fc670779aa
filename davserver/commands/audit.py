"""``davserver audit``: read the logbook, newest first, by user, item, operation and time.

Every state change, login and administrative action is in the logbook; this prints the rows
that match, as a table (``details`` as compact JSON) or with ``--json`` for scripts.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import uuid
from typing import Any

from davserver.commands.common import (
    add_json_flag,
    days,
    emit_rows,
    item_path,
    open_services,
    timestamp,
    whole_number,
)
from davserver.db.types import utcnow
from davserver.services.audit import MAX_ROWS, read_logbook

COLUMNS = ("id", "occurred_at", "user", "op", "node_id", "remote_addr", "details")


def cmd_audit(args: argparse.Namespace) -> int:
    since = utcnow() - dt.timedelta(days=args.days) if args.days is not None else args.since
    with open_services(args) as services:
        user_id = services.users.user_id(args.user, include_deleted=True) if args.user else None
        node_id = services.namespace.locate(*args.item).id if args.item else args.node
        rows = read_logbook(
            services.db,
            user_id=user_id,
            about_user=True,
            node_id=node_id,
            op=args.op,
            since=since,
            until=args.until,
            before=args.before,
            limit=args.limit,
        )
    listed: list[dict[str, Any]] = [row.as_dict() for row in rows]
    if not args.json:
        for row in listed:
            row["details"] = json.dumps(row["details"], sort_keys=True, default=str)
    emit_rows(args, listed, COLUMNS)
    return 0


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    audit = commands.add_parser(
        "audit",
        help="read the logbook (newest first)",
        description="Print logbook rows, newest first, filtered by user, item, operation, age.",
    )
    audit.add_argument(
        "--user",
        help="rows of this user (deleted users too) and about their account: failed sign-ins"
        " under their name, bans, what admins did to it",
    )
    item = audit.add_mutually_exclusive_group()
    item.add_argument("--item", type=item_path, help="rows about OWNER:/path or @GROUP:/path")
    item.add_argument(
        "--node",
        type=uuid.UUID,
        metavar="ID",
        help="rows about the item with this node_id (one in the trash, or purged, too)",
    )
    audit.add_argument(
        "--op", help="an operation (share:grant:create) or a family of them (share, auth:login)"
    )
    since = audit.add_mutually_exclusive_group()
    since.add_argument(
        "--days", type=days(at_least=1), metavar="DAYS", help="only the last DAYS days"
    )
    since.add_argument(
        "--since", type=timestamp, metavar="TIME", help="rows from TIME (ISO 8601; UTC by default)"
    )
    audit.add_argument("--until", type=timestamp, metavar="TIME", help="rows before TIME")
    audit.add_argument(
        "--limit",
        type=whole_number(1, MAX_ROWS),
        default=100,
        help=f"at most this many rows (default 100, at most {MAX_ROWS})",
    )
    audit.add_argument(
        "--before",
        type=whole_number(1, 2**63 - 1),
        metavar="ID",
        help="only rows older than the row ID: the last id of a page asks for the next page",
    )
    add_json_flag(audit)
    audit.set_defaults(func=cmd_audit)
