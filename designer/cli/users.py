"""User and API token commands of ``flowmill``: ``user …`` and ``token …``.

Thin shells over ``engine.access.users.UserStore`` (through the service layer), the same functions
the web app uses. Errors are ``FlowmillError``s, which ``designer.cli.main`` turns into
exit code 2 with the message.
"""

from __future__ import annotations

import argparse
import getpass
import json
import sys
from collections.abc import Callable
from typing import Any

from engine.access.users import ROLES, User, UserError
from engine.service import Flowmill

__all__ = ["add_parsers", "COMMANDS"]

EXIT_OK = 0

_PASSWORD_HELP = (
    "the password (visible in the process list and shell history: prefer the prompt, or "
    "one line on stdin)"
)


def _data_dir(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data-dir", help="data directory (default: $FLOWMILL_DATA_DIR)")


def add_parsers(sub: Any) -> None:
    user = sub.add_parser("user", help="users who may log in, and their roles")
    user_sub = user.add_subparsers(dest="action", required=True)
    add = user_sub.add_parser("add", help="create a user")
    add.add_argument("name", help="1-64 of a-z 0-9 _ . -")
    add.add_argument("--role", required=True, choices=ROLES)
    add.add_argument("--password", help=_PASSWORD_HELP)
    add.add_argument(
        "--drop",
        action="store_true",
        help="may log in to the FTPS and WebDAV file-drop servers (home DATA/drop/NAME)",
    )
    passwd = user_sub.add_parser("passwd", help="set a user's password")
    passwd.add_argument("name")
    passwd.add_argument("--password", help=_PASSWORD_HELP)
    listing = user_sub.add_parser("list", help="users and their roles")
    listing.add_argument("--json", action="store_true")
    remove = user_sub.add_parser("remove", help="delete a user and their API tokens")
    remove.add_argument("name")
    role = user_sub.add_parser("role", help="change a user's role")
    role.add_argument("name")
    role.add_argument("role", choices=ROLES)
    drop = user_sub.add_parser("drop", help="allow a user to use the file-drop servers")
    drop.add_argument("name")
    drop.add_argument("--off", action="store_true", help="forbid it again")
    for action, text in (
        ("disable", "keep a user from logging in or using tokens"),
        ("enable", "let a disabled user in again"),
    ):
        p = user_sub.add_parser(action, help=text)
        p.add_argument("name")
    for leaf in user_sub.choices.values():
        _data_dir(leaf)

    token = sub.add_parser("token", help="API tokens for scripts (Authorization: Bearer …)")
    token_sub = token.add_subparsers(dest="action", required=True)
    create = token_sub.add_parser("create", help="make a token; it is printed once, alone")
    create.add_argument("user")
    create.add_argument("--label", default="", help="what the token is for")
    tlist = token_sub.add_parser("list", help="tokens (never the tokens themselves)")
    tlist.add_argument("--user")
    tlist.add_argument("--json", action="store_true")
    revoke = token_sub.add_parser("revoke", help="revoke a token for good")
    revoke.add_argument("id")
    for leaf in token_sub.choices.values():
        _data_dir(leaf)


def _read_password(given: str | None, name: str) -> str:
    """--password, else a prompt twice on a terminal, else one line of stdin."""
    if given is not None:
        return given
    if sys.stdin.isatty():
        first = getpass.getpass(f"password for {name}: ")
        if first != getpass.getpass("again: "):
            raise UserError("the two passwords differ")
        return first
    line = sys.stdin.readline()
    if not line:
        raise UserError("no password: give --password, or one line on stdin")
    return line.rstrip("\r\n")


def _user_line(user: User) -> str:
    state = "disabled" if user.disabled else "enabled"
    drop = "drop" if user.file_drop else "-"
    return (
        f"{user.name:<24} {user.role:<9} {state:<9} {drop:<5} created {user.created_at.isoformat()}"
    )


def _dump(items: list[Any]) -> None:
    print(json.dumps([i.to_dict() for i in items], indent=2, ensure_ascii=False))


def cmd_user(args: argparse.Namespace) -> int:
    with Flowmill.open(args.data_dir) as app:
        users = app.users
        if args.action == "add":
            password = _read_password(args.password, args.name)
            user = users.add(args.name, password, args.role, file_drop=args.drop)
            drop = ", may use the file-drop servers" if user.file_drop else ""
            print(f"user {user.name} added ({user.role}{drop})")
        elif args.action == "drop":
            user = users.set_file_drop(args.name, not args.off)
            verb = "may" if user.file_drop else "may not"
            print(f"user {user.name} {verb} use the file-drop servers")
        elif args.action == "passwd":
            users.get(args.name)  # unknown user: say so before asking for a password
            users.set_password(args.name, _read_password(args.password, args.name))
            print(f"password of {args.name} changed")
        elif args.action == "list":
            found = users.list()
            if args.json:
                _dump(found)
            for user in [] if args.json else found:
                print(_user_line(user))
        elif args.action == "remove":
            users.remove(args.name)
            print(f"user {args.name} removed (and their API tokens)")
        elif args.action == "role":
            user = users.set_role(args.name, args.role)
            print(f"user {user.name} is now {user.role}")
        else:
            user = users.set_disabled(args.name, args.action == "disable")
            print(f"user {user.name} {args.action}d")
    return EXIT_OK


def cmd_token(args: argparse.Namespace) -> int:
    with Flowmill.open(args.data_dir) as app:
        users = app.users
        if args.action == "create":
            info, token = users.create_token(args.user, args.label)
            print(
                f"API token {info.id} for {info.user}: store it now, it is not shown again",
                file=sys.stderr,
            )
            print(token)
        elif args.action == "list":
            found = users.list_tokens(args.user)
            if args.json:
                _dump(found)
            for info in [] if args.json else found:
                used = info.last_used_at.isoformat() if info.last_used_at else "never"
                state = "revoked" if info.revoked else "active"
                print(
                    f"{info.id:<14} {info.user:<24} {state:<8} created "
                    f"{info.created_at.isoformat()}  used {used}  {info.label}"
                )
        else:
            users.revoke_token(args.id)
            print(f"API token {args.id} revoked")
    return EXIT_OK


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "user": cmd_user,
    "token": cmd_token,
}
