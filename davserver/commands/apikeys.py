"""``davserver apikey create|list|revoke``: API keys, used in place of a password.

The key is printed once, by ``create``; the server keeps only its SHA-256. ``list`` shows each
key's prefix (its first 12 characters), which ``revoke`` accepts, as it does the key's id.
"""

from __future__ import annotations

import argparse
from typing import Any

from davserver.commands.common import add_json_flag, days, emit_item, emit_rows, open_services
from davserver.services.bounds import days_from_now

KEY_COLUMNS = ("prefix", "name", "scope", "status", "created_at", "expires_at", "last_used_at")


def cmd_apikey_create(args: argparse.Namespace) -> int:
    expires_at = days_from_now(args.expires)
    with open_services(args) as services:
        user_id = services.users.user_id(args.username)
        info, key = services.api_keys.create(
            None,
            user_id,
            args.name,
            scope="read" if args.read_only else "readwrite",
            expires_at=expires_at,
        )
    emit_item(args, {**info.as_dict(), "key": key})
    if not args.json:
        print("(the key is shown only this once; use it as the password, with the username)")
    return 0


def cmd_apikey_list(args: argparse.Namespace) -> int:
    with open_services(args) as services:
        user_id = services.users.user_id(args.username, include_deleted=True)
        keys = services.api_keys.list_keys(user_id)
    emit_rows(args, [info.as_dict() for info in keys], KEY_COLUMNS)
    return 0


def cmd_apikey_revoke(args: argparse.Namespace) -> int:
    with open_services(args) as services:
        user_id = services.users.user_id(args.username, include_deleted=True)
        info = services.api_keys.revoke(None, user_id, args.key)
    emit_item(args, info.as_dict())
    return 0


def register(commands: Any) -> None:
    """Add ``apikey`` to the top-level parser's sub-commands."""
    apikey = commands.add_parser("apikey", help="create, list and revoke users' API keys")
    keys = apikey.add_subparsers(dest="apikey_command", required=True, metavar="COMMAND")

    create = keys.add_parser(
        "create",
        help="create a key (printed once)",
        description="Create an API key for a user; it is printed once and never again.",
    )
    create.add_argument("username", help="the key's owner")
    create.add_argument("--name", required=True, help="what the key is for, e.g. 'backup job'")
    create.add_argument("--read-only", action="store_true", help="the key may read but never write")
    create.add_argument(
        "--expires",
        type=days(at_least=1),
        metavar="DAYS",
        help="expire after DAYS days (default: never)",
    )
    add_json_flag(create)
    create.set_defaults(func=cmd_apikey_create)

    listing = keys.add_parser(
        "list",
        help="list a user's keys",
        description="List a user's keys (revoked and expired ones too), never the keys.",
    )
    listing.add_argument("username", help="the keys' owner")
    add_json_flag(listing)
    listing.set_defaults(func=cmd_apikey_list)

    revoke = keys.add_parser(
        "revoke",
        help="revoke a key",
        description="Revoke a key; it stops working on the next request.",
    )
    revoke.add_argument("username", help="the key's owner")
    revoke.add_argument("key", help="the key's prefix (as listed), its id, or the key itself")
    add_json_flag(revoke)
    revoke.set_defaults(func=cmd_apikey_revoke)
