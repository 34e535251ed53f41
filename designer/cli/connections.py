"""Connection commands of ``flowmill``: ``connection add|list|remove|test|types``.

Connections (databases, SMTP, IMAP, shops, MongoDB, MQTT, REST APIs) are stored encrypted
and named in flows. Secret settings are best given with ``--secret KEY``: the value is
then read from a prompt or one line on stdin, never from the command line (which the
process list and shell history keep).
"""

from __future__ import annotations

import argparse
import getpass
import json
import sys
from collections.abc import Callable
from typing import Any

from designer.cli.args import pairs
from engine.errors import FlowmillError
from engine.service import Flowmill

__all__ = ["add_parsers", "COMMANDS"]

EXIT_OK, EXIT_FAILED, EXIT_INVALID = 0, 1, 2


def _data_dir(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data-dir", help="data directory (default: $FLOWMILL_DATA_DIR)")


def add_parsers(sub: Any) -> None:
    conn = sub.add_parser("connection", help="named connections (stored encrypted)")
    conn_sub = conn.add_subparsers(dest="action", required=True)
    for action, text in (
        ("add", "create or replace a connection"),
        ("set", "the same as add"),
    ):
        add = conn_sub.add_parser(action, help=text)
        _data_dir(add)
        add.add_argument("name")
        add.add_argument("--type", help="the kind: see `flowmill connection types`")
        add.add_argument(
            "--url", help="a URL, e.g. postgresql+psycopg://user@host/db or mongodb://host"
        )
        add.add_argument(
            "--option", action="append", default=[], metavar="K=V", help="a further setting"
        )
        add.add_argument(
            "--secret",
            action="append",
            default=[],
            metavar="KEY",
            help="a secret setting such as password: its value is asked for (or one line "
            "per --secret read from stdin)",
        )
        add.add_argument(
            "--merge", action="store_true", help="keep the stored settings not given here"
        )
    lst = conn_sub.add_parser("list", help="connection names, types and setting names")
    _data_dir(lst)
    lst.add_argument("--json", action="store_true")
    rm = conn_sub.add_parser("remove", help="delete a connection")
    _data_dir(rm)
    rm.add_argument("name")
    test = conn_sub.add_parser("test", help="reach the server and log in")
    _data_dir(test)
    test.add_argument("name")
    test.add_argument("--timeout", type=float, default=10.0, help="seconds (default 10)")
    types = conn_sub.add_parser("types", help="the kinds of connection and their settings")
    _data_dir(types)


def _read_secret(key: str, name: str) -> str:
    if sys.stdin.isatty():
        value = getpass.getpass(f"{key} of connection {name}: ")
    else:
        value = sys.stdin.readline().rstrip("\r\n")
    if not value:
        raise FlowmillError(f"connection {name}: empty {key}")
    return value


def cmd_connection(args: argparse.Namespace) -> int:
    with Flowmill.open(args.data_dir) as app:
        if args.action in ("add", "set"):
            settings: dict[str, Any] = pairs(args.option, "--option")
            if args.url:
                settings["url"] = args.url
            if args.type:
                known = [k.kind for k in app.registry.connection_types()]
                if args.type not in known:
                    raise FlowmillError(f"--type {args.type}: not one of {', '.join(known)}")
                settings["type"] = args.type
            for key in args.secret:
                settings[key] = _read_secret(key, args.name)
            if not settings:
                print("error: give --url, --option K=V and/or --secret KEY", file=sys.stderr)
                return EXIT_INVALID
            is_new = app.set_connection(args.name, settings, merge=args.merge)
            kind = app.connection_type(app.store.get_connection(args.name)) or "unknown type"
            state = "added" if is_new else "replaced" if not args.merge else "updated"
            print(f"connection {args.name} {state} ({kind}; stored encrypted)")
        elif args.action == "list":
            found = app.describe_connections()
            if args.json:
                print(json.dumps(found, indent=2))
            for item in [] if args.json else found:
                what = item["error"] or ", ".join(item["settings"])
                print(f"{item['name']:<24} {item['type'] or '?':<8} {what}")
        elif args.action == "remove":
            if not app.remove_connection(args.name):
                print(f"error: no connection {args.name!r}", file=sys.stderr)
                return EXIT_FAILED
            print(f"connection {args.name} removed")
        elif args.action == "test":
            try:
                kind, reached = app.test_connection(args.name, args.timeout)
            except FlowmillError as exc:
                print(f"failed: {exc}", file=sys.stderr)
                return EXIT_FAILED
            print(f"ok: connection {args.name} ({kind}): {reached}")
        else:
            for kind in app.registry.connection_types():
                print(f"{kind.kind:<8} {kind.title}: {kind.description}")
    return EXIT_OK


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {"connection": cmd_connection}
