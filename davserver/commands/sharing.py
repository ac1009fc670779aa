"""``davserver grant | revoke | grants``: who may do what with an item, from the command line.

Items are named ``OWNER:/path`` (a path in that user's own space) or ``@GROUP:/path`` (in a
group's space). Grantees are a username, or ``@group``. The command line acts with every
right; each grant and revoke is in the logbook.
"""

from __future__ import annotations

import argparse

from davserver.commands.common import (
    add_json_flag,
    days,
    emit_item,
    emit_rows,
    item_path,
    open_services,
)
from davserver.errors import BadRequest
from davserver.services.bounds import days_from_now
from davserver.services.permissions import Perm

GRANT_COLUMNS = ("id", "grantee", "rights", "granted_by", "granted_at", "expires_at")


def _grantee(text: str) -> dict[str, str]:
    return {"group": text[1:]} if text.startswith("@") else {"user": text}


def cmd_grant(args: argparse.Namespace) -> int:
    try:
        rights = Perm.parse(args.rights.split(","))
    except ValueError as exc:
        raise BadRequest(str(exc)) from None
    expires = days_from_now(args.expires)
    with open_services(args) as services:
        node = services.namespace.locate(*args.item)
        grantee = _grantee(args.to)
        info = services.sharing.grant(
            None,
            node,
            Perm.NONE,
            user=grantee.get("user"),
            group=grantee.get("group"),
            rights=rights,
            expires_at=expires,
        )
    emit_item(args, info.as_dict())
    return 0


def cmd_revoke(args: argparse.Namespace) -> int:
    with open_services(args) as services:
        node = services.namespace.locate(*args.item)
        services.sharing.revoke_grantee(None, node, Perm.NONE, **_grantee(args.grantee))
    if not args.json:
        print(f"revoked {args.grantee}'s grant on {args.item[0]}:{args.item[1]}")
    else:
        emit_item(args, {"revoked": True})
    return 0


def cmd_grants(args: argparse.Namespace) -> int:
    with open_services(args) as services:
        node = services.namespace.locate(*args.item)
        grants = services.sharing.grants_on(node)
    emit_rows(args, [g.as_dict() for g in grants], GRANT_COLUMNS)
    return 0


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    grant = commands.add_parser(
        "grant", help="give a user or group rights on an item (replaces an earlier grant)"
    )
    grant.add_argument("item", type=item_path, help="OWNER:/path or @GROUP:/path")
    grant.add_argument("--to", required=True, help="a username, or @group")
    grant.add_argument(
        "--rights", required=True, help="comma-separated: read, download, write, share (or all)"
    )
    grant.add_argument(
        "--expires", type=days(at_least=1), metavar="DAYS", help="expire after DAYS days"
    )
    add_json_flag(grant)
    grant.set_defaults(func=cmd_grant)

    revoke = commands.add_parser("revoke", help="remove a user's or group's grant on an item")
    revoke.add_argument("item", type=item_path, help="OWNER:/path or @GROUP:/path")
    revoke.add_argument("grantee", help="a username, or @group")
    add_json_flag(revoke)
    revoke.set_defaults(func=cmd_revoke)

    grants = commands.add_parser("grants", help="list the grants on an item")
    grants.add_argument("item", type=item_path, help="OWNER:/path or @GROUP:/path")
    add_json_flag(grants)
    grants.set_defaults(func=cmd_grants)
