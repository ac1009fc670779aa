"""``davserver user ...`` and ``davserver group ...``: account administration from the shell.

Passwords never appear on the command line (where ``ps`` and shell history would show them):
``--password-stdin`` reads one line from standard input, otherwise a password is generated and
printed once. Changes are logged with ``"via": "cli"``.
"""

from __future__ import annotations

import argparse
import io
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from davserver.commands.common import add_json_flag, emit_item, emit_rows, open_services
from davserver.errors import BadRequest
from davserver.services.account_rules import UserStatus, format_size, parse_size
from davserver.services.groups import GroupDetail, GroupInfo, GroupMemberInfo
from davserver.services.user_import import ImportRejected
from davserver.services.users import UserDetail, UserInfo

Handler = Callable[[argparse.Namespace], int]

USER_COLUMNS = ("username", "status", "email", "roles", "quota", "last_login_at", "created_at")
GROUP_COLUMNS = ("name", "members", "description", "created_at")
MEMBER_COLUMNS = ("username", "is_admin", "status", "added_at")


# ------------------------------------------------------------------------------ output


def _user_item(info: UserInfo) -> dict[str, Any]:
    item = info.as_dict()
    item["quota"] = format_size(info.quota_bytes)
    return item


def _emit_user(args: argparse.Namespace, info: UserInfo, **extra: Any) -> None:
    item = _user_item(info)
    if not args.json:
        item.pop("quota_bytes")
        if isinstance(info, UserDetail):
            item["groups"] = [f"{m.group} (admin)" if m.is_admin else m.group for m in info.groups]
    emit_item(args, {**item, **extra})


def _emit_once(args: argparse.Namespace, what: str) -> None:
    if not args.json:
        print(f"(the {what} is shown only this once)")


def _read_password(args: argparse.Namespace) -> str | None:
    """One line from stdin with --password-stdin (without its line end), else None."""
    if not args.password_stdin:
        return None
    password = sys.stdin.readline().rstrip("\r\n")
    if not password:
        raise BadRequest("--password-stdin: no password on standard input")
    return password


# ------------------------------------------------------------------------------ user commands


def cmd_user_create(args: argparse.Namespace) -> int:
    password = _read_password(args)
    with open_services(args) as services:
        info, generated = services.users.create_user(
            None,
            args.username,
            email=args.email,
            password=password,
            roles=args.role or ("user",),
            quota_bytes=parse_size(args.quota),
        )
    _emit_user(args, info, **({"password": generated} if generated else {}))
    if generated:
        _emit_once(args, "password")
    return 0


def cmd_user_list(args: argparse.Namespace) -> int:
    status = UserStatus(args.status) if args.status else None
    with open_services(args) as services:
        users = services.users.list_users(status)
    emit_rows(args, [_user_item(info) for info in users], USER_COLUMNS)
    return 0


def cmd_user_show(args: argparse.Namespace) -> int:
    with open_services(args) as services:
        detail = services.users.show_user(args.username)
    _emit_user(args, detail)
    return 0


def cmd_user_disable(args: argparse.Namespace) -> int:
    with open_services(args) as services:
        _emit_user(args, services.users.disable_user(None, args.username))
    return 0


def cmd_user_enable(args: argparse.Namespace) -> int:
    with open_services(args) as services:
        _emit_user(args, services.users.enable_user(None, args.username))
    return 0


def cmd_user_delete(args: argparse.Namespace) -> int:
    with open_services(args) as services:
        _emit_user(args, services.users.delete_user(None, args.username))
    if not args.json:
        print("(the name stays reserved; the user's files are kept; API keys were revoked)")
    return 0


def cmd_user_passwd(args: argparse.Namespace) -> int:
    password = _read_password(args)
    with open_services(args) as services:
        generated = services.users.set_password(None, args.username, password)
    item: dict[str, Any] = {"username": args.username, "password_changed": True}
    if generated:
        item["password"] = generated
    emit_item(args, item)
    if generated:
        _emit_once(args, "password")
    return 0


def cmd_user_email(args: argparse.Namespace) -> int:
    if (args.email is None) == (not args.clear):
        raise BadRequest("give either an e-mail address or --clear")
    with open_services(args) as services:
        _emit_user(args, services.users.set_email(None, args.username, args.email))
    return 0


def cmd_user_role_add(args: argparse.Namespace) -> int:
    with open_services(args) as services:
        _emit_user(args, services.users.add_role(None, args.username, args.role))
    return 0


def cmd_user_role_remove(args: argparse.Namespace) -> int:
    with open_services(args) as services:
        _emit_user(args, services.users.remove_role(None, args.username, args.role))
    return 0


def cmd_user_quota(args: argparse.Namespace) -> int:
    if not args.size.strip():  # an empty shell variable must not lift a quota
        raise BadRequest('no size given: a size such as 10G, or "none" for no quota')
    quota = parse_size(args.size)
    with open_services(args) as services:
        _emit_user(args, services.users.set_quota(None, args.username, quota))
    return 0


def _csv_text(path: str) -> str:
    """The CSV file (``-``: stdin) as text; unreadable or non-UTF-8 files are a BadRequest.

    A user list is small, so it is read whole: all rows are checked before any is imported.
    """
    try:
        data = sys.stdin.buffer.read() if path == "-" else Path(path).read_bytes()
    except OSError as exc:
        raise BadRequest(f"cannot read {path}: {exc.strerror}") from None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise BadRequest(f"{path} is not UTF-8 text ({exc.reason} at byte {exc.start})") from None


def cmd_user_import(args: argparse.Namespace) -> int:
    lines = io.StringIO(_csv_text(args.file), newline="")
    with open_services(args) as services:
        try:
            report = services.user_import.import_csv(
                None, lines, skip_existing=args.skip_existing, source=args.file
            )
        except ImportRejected as exc:
            return _import_rejected(args, exc)
    summary = {"imported": report.imported, "skipped": report.skipped}
    if args.json:
        emit_item(args, summary)
    else:
        print(f"imported {len(report.imported)} user(s): {', '.join(report.imported) or '-'}")
        if report.skipped:
            print(f"skipped {len(report.skipped)} existing: {', '.join(report.skipped)}")
    return 0


def _import_rejected(args: argparse.Namespace, exc: ImportRejected) -> int:
    for problem in exc.problems:
        print(f"davserver: {args.file}:{problem.line}: {problem.reason}", file=sys.stderr)
    print(
        f"davserver: nothing imported ({len(exc.problems)} bad row(s))",
        file=sys.stderr,
    )
    if args.json:
        errors = [{"line": p.line, "reason": p.reason} for p in exc.problems]
        emit_item(args, {"imported": [], "skipped": [], "errors": errors})
    return 1


# ------------------------------------------------------------------------------ group commands


def _group_item(info: GroupInfo, args: argparse.Namespace) -> dict[str, Any]:
    item = info.as_dict()
    if isinstance(info, GroupDetail):
        members = item.pop("member_list")
        if args.json:
            item["member_list"] = members
        else:
            item["member_list"] = [
                f"{m.username} (admin)" if m.is_admin else m.username for m in info.member_list
            ]
    return item


def _member_item(group: str, member: GroupMemberInfo) -> Mapping[str, Any]:
    return {"group": group, **member.as_dict()}


def cmd_group_create(args: argparse.Namespace) -> int:
    with open_services(args) as services:
        info = services.groups.create_group(None, args.name, description=args.description)
    emit_item(args, _group_item(info, args))
    return 0


def cmd_group_list(args: argparse.Namespace) -> int:
    with open_services(args) as services:
        groups = services.groups.list_groups()
    emit_rows(args, [_group_item(info, args) for info in groups], GROUP_COLUMNS)
    return 0


def cmd_group_show(args: argparse.Namespace) -> int:
    with open_services(args) as services:
        detail = services.groups.show_group(args.name)
    emit_item(args, _group_item(detail, args))
    return 0


def cmd_group_delete(args: argparse.Namespace) -> int:
    with open_services(args) as services:
        services.groups.delete_group(None, args.name)
    emit_item(args, {"group": args.name, "deleted": True})
    return 0


def cmd_group_add(args: argparse.Namespace) -> int:
    with open_services(args) as services:
        member = services.groups.add_member(None, args.group, args.username, admin=args.admin)
    emit_item(args, _member_item(args.group, member))
    return 0


def cmd_group_remove(args: argparse.Namespace) -> int:
    with open_services(args) as services:
        services.groups.remove_member(None, args.group, args.username)
    emit_item(args, {"group": args.group, "username": args.username, "removed": True})
    return 0


def cmd_group_admin(args: argparse.Namespace) -> int:
    with open_services(args) as services:
        member = services.groups.set_group_admin(
            None, args.group, args.username, admin=not args.unset
        )
    emit_item(args, _member_item(args.group, member))
    return 0


# ------------------------------------------------------------------------------ parsers


def _command(
    subparsers: Any, name: str, help_text: str, func: Handler, *positionals: tuple[str, str]
) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        name, help=help_text, description=help_text
    )
    for dest, arg_help in positionals:
        parser.add_argument(dest, help=arg_help)
    add_json_flag(parser)
    parser.set_defaults(func=func)
    return parser


USERNAME = ("username", "the user's name")
GROUP = ("group", "the group's name")


def register(commands: Any) -> None:
    """Add ``user`` and ``group`` to the top-level parser's sub-commands."""
    user = commands.add_parser("user", help="create and administer users")
    users = user.add_subparsers(dest="user_command", required=True, metavar="COMMAND")

    create = _command(users, "create", "create a user", cmd_user_create, USERNAME)
    create.add_argument("--email", help="e-mail address (unique)")
    create.add_argument(
        "--role",
        action="append",
        metavar="ROLE",
        help="a role (admin, moderator, user, viewer); repeat for several (default: user)",
    )
    create.add_argument("--quota", default="", help="quota, e.g. 500M or 10G (default: unlimited)")
    create.add_argument(
        "--password-stdin",
        action="store_true",
        help="read the password from one line of standard input (default: generate one)",
    )

    listing = _command(users, "list", "list users (not deleted ones by default)", cmd_user_list)
    listing.add_argument("--status", choices=[s.value for s in UserStatus], help="only these")

    _command(users, "show", "show a user with roles, groups, keys", cmd_user_show, USERNAME)
    _command(users, "disable", "stop a user from signing in", cmd_user_disable, USERNAME)
    _command(users, "enable", "let a disabled user sign in again", cmd_user_enable, USERNAME)
    _command(
        users,
        "delete",
        "delete a user (soft: the name stays reserved, files are kept)",
        cmd_user_delete,
        USERNAME,
    )
    passwd = _command(users, "passwd", "set a user's password", cmd_user_passwd, USERNAME)
    passwd.add_argument(
        "--password-stdin",
        action="store_true",
        help="read the password from one line of standard input (default: generate one)",
    )
    email = _command(users, "email", "set or clear a user's e-mail", cmd_user_email, USERNAME)
    email.add_argument("email", nargs="?", help="the new address")
    email.add_argument("--clear", action="store_true", help="remove the address")
    _command(
        users,
        "quota",
        "set a user's quota",
        cmd_user_quota,
        USERNAME,
        ("size", "bytes, or with K/M/G/T (binary), or 'unlimited'"),
    )

    role = users.add_parser("role", help="add or remove a user's roles")
    roles = role.add_subparsers(dest="role_command", required=True, metavar="COMMAND")
    role_arg = ("role", "admin, moderator, user or viewer")
    _command(roles, "add", "give a user a role", cmd_user_role_add, USERNAME, role_arg)
    _command(roles, "remove", "take a role away", cmd_user_role_remove, USERNAME, role_arg)

    imports = _command(
        users,
        "import",
        "import users from CSV with their bcrypt or argon2 hashes (all or nothing)",
        cmd_user_import,
        ("file", "CSV file with a header row (username, password_hash, email, roles, quota)"),
    )
    imports.add_argument(
        "--skip-existing", action="store_true", help="skip rows whose username exists"
    )

    group = commands.add_parser("group", help="create groups and manage their members")
    groups = group.add_subparsers(dest="group_command", required=True, metavar="COMMAND")
    gcreate = _command(
        groups, "create", "create a group", cmd_group_create, ("name", "the group's name")
    )
    gcreate.add_argument("--description", default="", help="what the group is for")
    _command(groups, "list", "list groups", cmd_group_list)
    _command(groups, "show", "show a group and its members", cmd_group_show, ("name", "group"))
    _command(
        groups,
        "delete",
        "delete an empty group (its files must be gone first)",
        cmd_group_delete,
        ("name", "group"),
    )
    add = _command(groups, "add", "add a member", cmd_group_add, GROUP, USERNAME)
    add.add_argument("--admin", action="store_true", help="as a group admin")
    _command(groups, "remove", "remove a member", cmd_group_remove, GROUP, USERNAME)
    admin = _command(
        groups, "admin", "make a member a group admin", cmd_group_admin, GROUP, USERNAME
    )
    admin.add_argument("--unset", action="store_true", help="make them an ordinary member")
