"""``davserver gc``, ``davserver fsck`` and ``davserver backup``: upkeep of the blob store.

They print a progress line on stderr about once a second on long runs (``--quiet`` for none),
a summary on stdout (``--json`` for scripts), and exit with status 1 when something is wrong.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import sqlite3
import sys
from pathlib import Path
from typing import Any

from davserver.blobstore.base import QUARANTINE
from davserver.commands.common import (
    ProgressLine,
    add_json_flag,
    emit_item,
    human_size,
    open_services,
    timestamp,
    whole_number,
)
from davserver.housekeeping import Housekeeper
from davserver.services import usage
from davserver.services.bounds import MAX_INTEGER, MAX_SECONDS
from davserver.services.fsck import FsckReport, FsckService
from davserver.services.maintenance import MaintenanceService


def register(commands: Any) -> None:
    gc = commands.add_parser(
        "gc",
        help="remove blobs that no version, image variant or package uses",
        description="Remove blob rows and files that nothing references, files without a row "
        "and upload leftovers, all older than the grace period. Safe while the server runs.",
    )
    gc.add_argument(
        "--dry-run", action="store_true", help="count what would be removed; remove nothing"
    )
    gc.add_argument(
        "--grace",
        type=whole_number(0, MAX_SECONDS),
        metavar="SECONDS",
        help="leave anything younger alone (default: maintenance.gc_grace_seconds); "
        "0 also takes the temp files of uploads in progress, so only with the server stopped",
    )
    gc.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    add_json_flag(gc)
    gc.set_defaults(func=cmd_gc)

    fsck = commands.add_parser(
        "fsck",
        help="re-hash blobs; report missing, corrupt and orphan files",
        description="Re-hash every blob (SHA-256, size, CRC-32) against its row, then list "
        "files in the store that have no row. A corrupt blob is moved to the store's "
        "quarantine/, so that the next upload of its bytes stores them again; nothing else "
        "is changed.",
    )
    fsck.add_argument(
        "--sample",
        type=whole_number(1, MAX_INTEGER),
        metavar="N",
        help="check N blobs picked at random (skips the orphan scan)",
    )
    fsck.add_argument(
        "--since",
        type=timestamp,
        metavar="TIME",
        help="check blobs created at or after TIME, ISO 8601, UTC unless it has a zone "
        "(skips the orphan scan)",
    )
    fsck.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    add_json_flag(fsck)
    fsck.set_defaults(func=cmd_fsck)

    backup = commands.add_parser(
        "backup",
        help="copy the database and its blobs into a folder a server can run from",
        description="Copy the database, as of one moment, into FOLDER/davserver.sqlite3 and "
        "every blob it refers to into FOLDER/blobs/, checking each blob's SHA-256; blobs "
        "already there from an earlier backup are kept, so the next run copies only new ones. "
        "Safe while the server runs. DAVSERVER_DATA_DIR=FOLDER davserver serve serves the "
        "backup; README.md says how to restore one.",
    )
    backup.add_argument("folder", metavar="FOLDER", help="where the backup goes (made if missing)")
    backup.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    add_json_flag(backup)
    backup.set_defaults(func=cmd_backup)

    recount = commands.add_parser(
        "recount",
        help="recount each user's space usage (for quotas) from the files",
        description="Set each user's running total of their files' sizes, which quota checks "
        "read, from the files themselves, and list the users whose total was off. Every "
        "change keeps the total; this is for a database edited by hand or restored in part. "
        "Safe while the server runs.",
    )
    recount.add_argument("--user", metavar="NAME", help="only this user")
    add_json_flag(recount)
    recount.set_defaults(func=cmd_recount)

    housekeeping = commands.add_parser(
        "housekeeping",
        help="run the server's housekeeping sweep once (for cron, where it is switched off)",
        description="Purge expired trash items, packages and refresh tokens, logbook rows past "
        "maintenance.logbook_retention_days (and old sessions' client addresses), and upload "
        "leftovers: what a running server does every maintenance.housekeeping_seconds. With "
        "that set to 0, run this from cron instead. Safe while the server runs.",
    )
    add_json_flag(housekeeping)
    housekeeping.set_defaults(func=cmd_housekeeping)


def cmd_housekeeping(args: argparse.Namespace) -> int:
    with open_services(args) as services:
        swept = Housekeeper(services, 0).run_once()
    done = dataclasses.asdict(swept)
    if args.json:
        emit_item(args, done)
    else:
        print(", ".join(f"{what.replace('_', ' ')}: {count}" for what, count in done.items()))
    return 0


def cmd_gc(args: argparse.Namespace) -> int:
    with open_services(args) as services:
        grace = args.grace
        if grace is None:
            grace = services.settings.maintenance.gc_grace_seconds
        report = MaintenanceService(services.db, services.blobs).collect_garbage(
            grace=dt.timedelta(seconds=grace),
            dry_run=args.dry_run,
            progress=None if args.quiet else ProgressLine("gc"),
        )
    if args.json:
        emit_item(args, report.as_dict())
    else:
        emit_item(
            args,
            {
                "dry run": report.dry_run,
                "blobs removed": f"{report.blobs_removed} ({human_size(report.bytes_removed)})",
                "rows without a file": report.blobs_without_file,
                "orphan files removed": f"{report.orphan_files_removed} "
                f"({human_size(report.orphan_bytes_removed)})",
                "temp files removed": f"{report.temp_files_removed} "
                f"({human_size(report.temp_bytes_removed)})",
                "s3 uploads aborted": f"{report.multipart_uploads_aborted} "
                f"({human_size(report.multipart_bytes_aborted)})",
                "seconds": report.seconds,
            },
        )
    for error in report.errors:
        print(f"davserver gc: {error}", file=sys.stderr)
    return 0 if report.ok else 1


def cmd_backup(args: argparse.Namespace) -> int:
    from davserver.services.backup import BackupRefused, back_up  # Alembic: only for this

    folder = Path(args.folder).resolve()
    with open_services(args) as services:
        settings = services.settings
        data_dir, blobs = Path(settings.data_dir).resolve(), settings.blob_path
        if folder == data_dir or blobs.is_relative_to(folder) or folder.is_relative_to(blobs):
            print(
                f"davserver backup: {folder} is the server's own data folder ({data_dir}), or holds"
                f" or is inside its blobs ({blobs}): name another folder",
                file=sys.stderr,
            )
            return 2
        try:
            report = back_up(
                services.db,
                services.blobs,
                folder,
                fsync=settings.storage.fsync,
                progress=None if args.quiet else ProgressLine("backup"),
            )
        except BackupRefused as exc:
            print(f"davserver backup: {exc}", file=sys.stderr)
            return 1
        except (OSError, sqlite3.Error) as exc:  # the backup folder: full, read-only, gone
            print(
                f"davserver backup: cannot write the backup into {folder}: {exc}", file=sys.stderr
            )
            return 1
    if args.json:
        emit_item(args, report.as_dict())
        return 0 if report.ok else 1
    for problem in report.problems:
        print(f"{problem.kind:<10} {problem.storage_key}  {problem.detail}")
    if report.snapshots > 1:
        print(
            f"the database was copied {report.snapshots} times: gc collected blobs the earlier"
            " copy referred to"
        )
    print(
        f"backed up into {report.folder}: the database in {report.database_seconds}s, "
        f"{report.blobs} blobs ({report.blobs_copied} copied, "
        f"{human_size(report.bytes_copied)}; {report.blobs_kept} there already) "
        f"in {report.seconds}s; problems: {report.problem_count or 'none'}"
    )
    return 0 if report.ok else 1


def cmd_recount(args: argparse.Namespace) -> int:
    with open_services(args) as services:
        owner = services.users.user_id(args.user) if args.user else None
        drifts = usage.recount(services.db, owner)
    if args.json:
        emit_item(args, {"off": [drift.as_dict() for drift in drifts]})
        return 0
    for drift in drifts:
        print(f"{drift.username}: {drift.kept} -> {drift.counted} bytes")
    print(f"recounted; {len(drifts)} user(s) were off" if drifts else "recounted; all were right")
    return 0


def cmd_fsck(args: argparse.Namespace) -> int:
    with open_services(args) as services:
        report = FsckService(services.db, services.blobs).check(
            sample=args.sample,
            since=args.since,
            progress=None if args.quiet else ProgressLine("fsck"),
        )
    if args.json:
        emit_item(args, report.as_dict())
    else:
        _print_fsck(report)
    return 0 if report.ok else 1


def _print_fsck(report: FsckReport) -> None:
    for problem in report.problems:
        print(f"{problem.kind:<10} {problem.storage_key}  {problem.detail}")
    if report.problems_truncated:
        print(f"... and more: {sum(report.counts.values())} problems in all")
    for key in report.foreign:
        print(f"{'foreign':<10} {key}  not a blob: left alone (gc and backup leave it too)")
    if report.foreign_files > len(report.foreign):
        print(f"... and more: {report.foreign_files} foreign files in all")
    found = ", ".join(f"{n} {kind}" for kind, n in sorted(report.counts.items())) or "none"
    scanned = f", {report.files_scanned} files scanned" if report.orphan_scan else ""
    print(
        f"checked {report.blobs_checked} blobs ({human_size(report.bytes_checked)}){scanned} "
        f"in {report.seconds}s; problems: {found}"
    )
    if report.quarantined:
        print(
            f"{report.quarantined} corrupt blobs moved to the blob store's {QUARANTINE}/: missing"
            " now, each comes back with the next upload of its bytes (or from a backup)"
        )
    if report.garbage_without_file:
        print(
            f"{report.garbage_without_file} unused blob rows have no file (a gc stopped half-way"
            " or is running): not a problem, the next gc removes them"
        )
