"""The command line: ``davserver serve | config | davmount | db upgrade`` and the command groups
in ``davserver.commands``."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import urlsplit

from davserver.commands.common import add_json_flag, settings_of
from davserver.config import ConfigError
from davserver.errors import DomainError

# Command groups, each a module of davserver.commands with register(commands).
COMMAND_GROUPS: tuple[str, ...] = (
    "users",
    "apikeys",
    "sharing",
    "maintenance",
    "variants",
    "packages",
    "versions",
    "trash",
    "audit",
)


def cmd_serve(args: argparse.Namespace) -> int:
    from davserver.bootstrap import SchemaUpgradeFailed, prepare
    from davserver.capacity import accepted_connections, fit_threads
    from davserver.config import unknown_environment
    from davserver.db.engine import check_url
    from davserver.server import CannotListen, serve
    from davserver.tls import check_tls, warn_of_plain_http
    from davserver.workers import serve_workers, worker_count

    settings = settings_of(
        args, server__host=args.host, server__port=args.port, server__workers=args.workers
    )
    logging.basicConfig(
        level=settings.logging.level.upper(), format="%(levelname)s %(name)s: %(message)s"
    )
    # Alembic logs each plugin it sets up, seven lines at INFO on every start; the migrations
    # it runs still say which.
    logging.getLogger("alembic.runtime.plugins").setLevel(logging.WARNING)
    for problem in unknown_environment():
        logging.getLogger("davserver.config").warning("%s", problem)
    workers = worker_count(settings.server.workers)
    check_tls(settings.server)
    warn_of_plain_http(settings.server)
    check_url(settings.database_url)
    settings = fit_threads(settings, workers, accepted_connections(settings.database_url))
    try:
        app, generated = prepare(settings, migrate_in_child=True)
    except SchemaUpgradeFailed as exc:
        if exc.told:  # the child printed why
            return 2
        print(f"davserver: {exc}", file=sys.stderr)
        return 1
    if generated:
        print(
            f"Created the first admin {settings.admin.user!r} with password: {generated}\n"
            "It is shown only this once.",
            flush=True,
        )
    try:
        if workers > 1:
            return serve_workers(app, settings, workers)
        serve(app, settings.server.host, settings.server.port)
    except CannotListen as exc:
        print(f"davserver: {exc}", file=sys.stderr)
        return 1
    return 0


def cmd_db_upgrade(args: argparse.Namespace) -> int:
    from davserver.bootstrap import upgrade_schema

    upgrade_schema(settings_of(args))
    print("database is at the newest schema")
    return 0


def cmd_db_copy(args: argparse.Namespace) -> int:
    import sqlalchemy as sa

    from davserver.commands.common import require_sqlite_file
    from davserver.context import open_blob_store
    from davserver.db import Base, Database
    from davserver.db.copy import CopyFailed, CopyReport, copy_database
    from davserver.db.engine import check_url, is_in_memory
    from davserver.db.migrate import is_at_head, upgrade
    from davserver.models import Op
    from davserver.services.audit import record_audit
    from davserver.services.store_owner import hand_over

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
        upgrade(target)

        def tell(table: str, rows: int) -> None:
            if not args.quiet:
                print(f"db copy: {table}: {rows} rows", file=sys.stderr)

        def log(session: sa.orm.Session, report: CopyReport) -> None:
            details = {"from": source_url.get_backend_name(), "rows": report.rows}
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
        local = settings.storage.backend != "s3"
        store = None if local and not settings.blob_path.is_dir() else open_blob_store(settings)
        handed = hand_over(source, target, store)
    finally:
        source.dispose()
        target.dispose()
    if args.json:
        print(json.dumps({"to": shown, "rows": report.rows, "seconds": report.seconds}))
    else:
        print(f"copied {report.total} rows into {shown} in {report.seconds:.1f} s")
        blobs = settings.blob_path
        keep = (
            f"keep the blobs where they are ({blobs})"
            if blobs.is_dir()
            else f"set storage.blob_dir (DAVSERVER_STORAGE_BLOB_DIR) to the folder holding the"
            f" blobs: these settings name {blobs}, which does not exist (a backup's blobs are"
            " in its blobs/ folder)"
        )
        print(f"to serve it, set database.url (DAVSERVER_DATABASE_URL) to that database and {keep}")
        if handed:
            print(
                "the blob store now belongs to the copy: serve, gc and fsck with these settings"
                " refuse it, so that a gc on this database cannot delete the copy's new files"
            )
    return 0


def cmd_config(args: argparse.Namespace) -> int:
    from davserver.config import documented_defaults

    print(documented_defaults(), end="")
    return 0


def public_url(text: str) -> str:
    """``--url``: an http or https URL naming a host (and a path, behind a proxy), for argparse."""
    try:
        parts = urlsplit(text)
        parts.port  # noqa: B018 (raises ValueError when the port is not a number in range)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{text!r} is not a URL: {exc}") from None
    if (
        parts.scheme not in ("http", "https")
        or not parts.hostname
        or any(c.isspace() for c in text)
    ):
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a URL the clients can use; expected http(s)://host[:port][/path]"
        )
    return text


def cmd_davmount(args: argparse.Namespace) -> int:
    from davserver.davmount import instructions

    settings = settings_of(args)
    if args.url:
        url = args.url
    else:
        scheme = "https" if settings.server.ssl_certificate else "http"
        host = settings.server.host if settings.server.host not in ("0.0.0.0", "::") else "HOST"
        url = f"{scheme}://{host}:{settings.server.port}/"
    print(instructions(url, args.user or settings.admin.user), end="")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="davserver",
        description="A WebDAV file server whose files live in a database: serve it, and "
        "administer its users, groups, grants, packages, versions, trash and logbook.",
        epilog="Every command has --help. Errors are one line on stderr; the exit status is "
        "0 on success, 1 when the command failed (fsck: found a problem), 2 for a usage or "
        "settings error, 130 when interrupted.",
    )
    parser.add_argument("--config", help="settings file (default: ./config.yaml if present)")
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run the WebDAV server")
    serve.add_argument("--host", help="address to listen on (server.host)")
    serve.add_argument("--port", type=int, help="port to listen on (server.port)")
    serve.add_argument(
        "--workers", type=int, help="server processes sharing the port (server.workers)"
    )
    serve.set_defaults(func=cmd_serve)

    config = commands.add_parser("config", help="print every option, documented, at its default")
    config.set_defaults(func=cmd_config)

    davmount = commands.add_parser(
        "davmount", help="print how to mount this server in Explorer, Finder, GNOME, rclone..."
    )
    davmount.add_argument(
        "--url",
        type=public_url,
        help="the server's public URL, http(s)://host[:port][/path] (default: from the settings)",
    )
    davmount.add_argument("--user", help="the user to show in the examples")
    davmount.set_defaults(func=cmd_davmount)

    db = commands.add_parser("db", help="database maintenance")
    db_commands = db.add_subparsers(dest="db_command", required=True)
    upgrade = db_commands.add_parser("upgrade", help="apply pending migrations")
    upgrade.set_defaults(func=cmd_db_upgrade)
    copy = db_commands.add_parser(
        "copy",
        help="copy every row into another, empty database (SQLite to PostgreSQL)",
        description="Copy every row of the configured database into another, empty one"
        " (brought to the newest schema first), keeping ids, in one transaction: moving from"
        " the embedded SQLite to PostgreSQL, or back. Blobs stay where they are. Stop the"
        " server first: what it writes after the copy starts is not copied.",
    )
    copy.add_argument("--to", required=True, metavar="URL", help="SQLAlchemy URL of the target")
    copy.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    add_json_flag(copy)
    copy.set_defaults(func=cmd_db_copy)

    import importlib

    for name in COMMAND_GROUPS:
        importlib.import_module(f"davserver.commands.{name}").register(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from sqlalchemy.exc import InterfaceError, OperationalError

    from davserver.db.engine import unusable

    argv = sys.argv[1:] if argv is None else list(argv)
    for arg in argv:
        if not arg.isascii() and not _is_utf8(arg):
            # Bytes that are not UTF-8 arrive as lone surrogates, which no name may hold and
            # the database driver cannot encode.
            print(f"davserver: the argument {arg!r} is not UTF-8", file=sys.stderr)
            return 2
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except ConfigError as exc:
        print(f"davserver: {exc}", file=sys.stderr)
        return 2
    except DomainError as exc:
        print(f"davserver: {exc}", file=sys.stderr)
        return 1
    except (OperationalError, InterfaceError) as exc:
        print(f"davserver: {unusable(exc)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        # Ctrl-C: what was not committed is rolled back; 128 + SIGINT, as shells report it.
        print("davserver: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # Whoever read the output stopped early (``davserver gc --json | head``): the work
        # is done; send what is left of the output nowhere, so that exiting flushes no more.
        _silence_stdout()
        return 1


def _is_utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _silence_stdout() -> None:
    import os

    try:
        fd = sys.stdout.fileno()
    except (OSError, ValueError):
        return  # not a real file (captured output): nothing will be flushed to the pipe
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, fd)
    os.close(devnull)


if __name__ == "__main__":
    sys.exit(main())
