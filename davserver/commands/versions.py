"""``davserver versions list | prune``: a file's history, and the retention policy applied to
every file.

Files are named ``OWNER:/path`` (in that user's own space) or ``@GROUP:/path``. ``prune`` keeps
what ``versions.keep_last`` and ``versions.thin_after_days`` say, never the current version or
one a package pins, and leaves the blobs of removed versions to ``davserver gc``. It prints a
progress line on stderr about once a second on long runs (``--quiet`` for none).
"""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any

from davserver.commands.common import (
    ProgressLine,
    add_json_flag,
    emit_item,
    emit_rows,
    human_size,
    item_path,
    open_services,
)
from davserver.errors import BadRequest

HISTORY_COLUMNS = ("version_no", "size", "author", "uploaded_at", "sha256", "is_current")


def register(commands: Any) -> None:
    versions = commands.add_parser("versions", help="file version history")
    sub = versions.add_subparsers(dest="versions_command", required=True)

    listing = sub.add_parser("list", help="the versions of one file, oldest first")
    listing.add_argument("file", type=item_path, help="OWNER:/path or @GROUP:/path")
    add_json_flag(listing)
    listing.set_defaults(func=cmd_list)

    prune = sub.add_parser(
        "prune",
        help="apply the retention policy (versions.keep_last, versions.thin_after_days)",
        description="Remove the versions the retention policy no longer keeps, from every "
        "file; the current version and versions a package pins always stay. Safe while the "
        "server runs; their blobs are left to davserver gc.",
    )
    prune.add_argument(
        "--dry-run", action="store_true", help="count what would be removed; remove nothing"
    )
    prune.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    add_json_flag(prune)
    prune.set_defaults(func=cmd_prune)


def cmd_list(args: argparse.Namespace) -> int:
    with open_services(args) as services:
        node = services.namespace.locate(*args.file)
        if node.is_folder:
            raise BadRequest(f"{args.file[0]}:{args.file[1]} is a folder")
        history = services.versions.history(node.id)
    rows = [dataclasses.asdict(v) for v in history]
    emit_rows(args, rows if args.json else _readable(rows), HISTORY_COLUMNS)
    return 0


def _readable(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{**row, "size": human_size(row["size"]), "sha256": row["sha256"][:16]} for row in rows]


def cmd_prune(args: argparse.Namespace) -> int:
    with open_services(args) as services:
        report = services.versions.prune(
            dry_run=args.dry_run, progress=None if args.quiet else ProgressLine("prune")
        )
    if args.json:
        emit_item(args, report.as_dict())
    else:
        emit_item(
            args,
            {
                "dry run": report.dry_run,
                "policy": f"keep last {report.keep_last or 'all'}, "
                + (
                    f"thin after {report.thin_after_days} days"
                    if report.thin_after_days
                    else "never thin"
                ),
                "files checked": report.files_checked,
                "files pruned": report.files_pruned,
                "versions removed": (
                    f"{report.versions_removed} ({human_size(report.bytes_removed)})"
                ),
                "seconds": report.seconds,
            },
        )
    return 0 if report.ok else 1
