"""The command line: ``davserver serve | config | davmount`` and the command groups
in ``davserver.commands``."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from urllib.parse import urlsplit

from davserver.commands.common import settings_of
from davserver.config import ConfigError
from davserver.errors import DomainError

# Command groups, each a module of davserver.commands with register(commands).
COMMAND_GROUPS: tuple[str, ...] = (
    "database",
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


def cmd_config(args: argparse.Namespace) -> int:
    from davserver.config import documented_defaults

    print(documented_defaults(), end="")
    return 0


def public_url(text: str) -> str:
    """``--url``: an http or https URL naming a host (and a path, behind a proxy), for argparse.
    Nothing the instructions would carry wrongly: no query or fragment (the clients append
    paths), no user or password (``--user`` names the user; a password does not belong in
    printed instructions), no empty or zero port, no backslash (Windows reads it as a ``/``)."""
    try:
        parts = urlsplit(text)
        port = parts.port  # ValueError when the port is not a number in range
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{text!r} is not a URL: {exc}") from None
    expected = "expected http(s)://host[:port][/path]"
    if (
        parts.scheme not in ("http", "https")
        or not parts.hostname
        or any(c.isspace() or c == "\\" for c in text)
        or port == 0
        or parts.netloc.endswith(":")
    ):
        raise argparse.ArgumentTypeError(f"{text!r} is not a URL the clients can use; {expected}")
    if parts.username is not None or parts.password is not None:
        raise argparse.ArgumentTypeError(
            f"{text!r} holds a user name or password; {expected}, and the user in --user"
        )
    if parts.query or parts.fragment or text.endswith(("?", "#")):
        raise argparse.ArgumentTypeError(
            f"{text!r} has a query or fragment, which the clients would take for part of a"
            f" path; {expected}"
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
