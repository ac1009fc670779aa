"""``davserver package create | update | add | remove | list | show | delete | purge``.

A package is named ``OWNER:NAME`` (it belongs to the user OWNER, who sees it under
``/packages/``); items are added as ``OWNER:/path`` or ``@GROUP:/path``, like ``davserver
grant``. The command line acts for the package's owner: an item is pinned only if the owner may
download it, as over WebDAV or the JSON API. Each change is in the logbook (``via: cli``).
"""

from __future__ import annotations

import argparse
from typing import Any

from davserver.commands.common import (
    add_json_flag,
    days,
    emit_item,
    emit_rows,
    item_path,
    open_services,
)
from davserver.context import Services
from davserver.services.package_archive import PackageView

PACKAGE_COLUMNS = ("owner", "name", "items", "size", "expires_at", "description")
ITEM_COLUMNS = ("path", "size", "version", "sha256", "available")


def _package_name(text: str) -> tuple[str, str]:
    owner, colon, name = text.partition(":")
    if not colon or not owner or not name:
        raise argparse.ArgumentTypeError(f"name a package as OWNER:NAME, not {text!r}")
    return owner, name


def _find(services: Services, named: tuple[str, str]) -> PackageView:
    owner, name = named
    return services.packages.get(services.users.user_id(owner), name)


def _detail(services: Services, package: PackageView) -> dict[str, Any]:
    ctx = services.packages.creator_context(package.created_by)
    unavailable = services.packages.unavailable(ctx, package)
    layout = services.packages.layout(package)
    return {
        **package.summary(),
        "zip_size": layout.size,
        "zip_etag": layout.etag,
        "files": [
            {**item.as_dict(), "available": item.path not in unavailable} for item in package.items
        ],
        "unavailable": unavailable,
    }


def cmd_create(args: argparse.Namespace) -> int:
    owner, name = args.package
    with open_services(args) as services:
        created = services.packages.create(
            None,
            services.users.user_id(owner),
            name,
            description=args.description,
            expires_days=args.expires,
        )
        emit_item(args, created.summary())
    return 0


def cmd_update(args: argparse.Namespace) -> int:
    with open_services(args) as services:
        changed = services.packages.update(
            None,
            _find(services, args.package),
            name=args.name,
            description=args.description,
            expires_days=args.expires,
        )
        emit_item(args, changed.summary())
    return 0


def cmd_add(args: argparse.Namespace) -> int:
    with open_services(args) as services:
        package = _find(services, args.package)
        node = services.namespace.locate(*args.item)
        ctx = services.packages.creator_context(package.created_by)
        added = services.packages.add(None, package, ctx, node, args.as_path)
        emit_rows(args, [item.as_dict() for item in added], ("path", "size", "version", "sha256"))
    return 0


def cmd_remove(args: argparse.Namespace) -> int:
    with open_services(args) as services:
        count = services.packages.remove(None, _find(services, args.package), args.path)
    if args.json:
        emit_item(args, {"removed": count})
    else:
        print(f"unpinned {count} file(s) at {args.path}")
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    with open_services(args) as services:
        owner_id = services.users.user_id(args.owner) if args.owner else None
        found = services.packages.list_packages(owner_id)
    emit_rows(args, [p.summary() for p in found], PACKAGE_COLUMNS)
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    with open_services(args) as services:
        detail = _detail(services, _find(services, args.package))
    if args.json:
        emit_item(args, detail)
        return 0
    files = detail.pop("files")
    problems = detail.pop("unavailable")
    emit_item(args, {**detail, "unavailable": [f"{p} ({why})" for p, why in problems.items()]})
    print()
    emit_rows(args, files, ITEM_COLUMNS)
    return 0


def cmd_delete(args: argparse.Namespace) -> int:
    with open_services(args) as services:
        services.packages.delete(None, _find(services, args.package))
    if args.json:
        emit_item(args, {"deleted": True})
    else:
        print(f"deleted package {args.package[0]}:{args.package[1]}")
    return 0


def cmd_purge(args: argparse.Namespace) -> int:
    with open_services(args) as services:
        purged = services.packages.purge_expired(None)
    if args.json:
        emit_item(args, {"purged": purged})
    else:
        print(f"purged {len(purged)} expired package(s)")
    return 0


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    package = commands.add_parser("package", help="packages: named sets of pinned versions")
    verbs = package.add_subparsers(dest="package_command", required=True)

    create = verbs.add_parser("create", help="create an empty package")
    create.add_argument("package", type=_package_name, help="OWNER:NAME")
    create.add_argument("--description", default="", help="shown in listings and the manifest")
    create.add_argument(
        "--expires",
        type=days(at_least=0),
        metavar="DAYS",
        help="expire after DAYS days (0: never; default: packages.default_expiry_days)",
    )
    create.set_defaults(func=cmd_create)

    update = verbs.add_parser(
        "update", help="rename a package, or change its description or expiry"
    )
    update.add_argument("package", type=_package_name, help="OWNER:NAME")
    update.add_argument("--name", help="a new name")
    update.add_argument("--description", help="a new description")
    update.add_argument(
        "--expires",
        type=days(at_least=0),
        metavar="DAYS",
        help="expire DAYS days from now (0: never)",
    )
    update.set_defaults(func=cmd_update)

    add = verbs.add_parser("add", help="pin a file, or every file below a folder")
    add.add_argument("package", type=_package_name, help="OWNER:NAME")
    add.add_argument("item", type=item_path, help="OWNER:/path or @GROUP:/path")
    add.add_argument(
        "--as", dest="as_path", metavar="PATH", help="path in the archive (default: its name)"
    )
    add.set_defaults(func=cmd_add)

    remove = verbs.add_parser("remove", help="unpin a path of the archive (a folder: all below)")
    remove.add_argument("package", type=_package_name, help="OWNER:NAME")
    remove.add_argument("path", help="a path in the archive")
    remove.set_defaults(func=cmd_remove)

    listing = verbs.add_parser("list", help="live packages (every user's, or OWNER's)")
    listing.add_argument("owner", nargs="?", help="only this user's packages")
    listing.set_defaults(func=cmd_list)

    show = verbs.add_parser("show", help="a package's files, zip size and ETag")
    show.add_argument("package", type=_package_name, help="OWNER:NAME")
    show.set_defaults(func=cmd_show)

    delete = verbs.add_parser("delete", help="delete a package (its files stay)")
    delete.add_argument("package", type=_package_name, help="OWNER:NAME")
    delete.set_defaults(func=cmd_delete)

    purge = verbs.add_parser("purge", help="delete expired packages, releasing their versions")
    purge.set_defaults(func=cmd_purge)

    for parser in (create, update, add, remove, listing, show, delete, purge):
        add_json_flag(parser)
