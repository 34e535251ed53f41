"""The ``flowmill`` command line. Calls the service layer; imports Flask only for ``serve``.

Exit codes: 0 success, 1 a run failed (or ``fmt --check`` found work), 2 invalid flow,
bad parameters or usage.
"""

from __future__ import annotations

import argparse
import getpass
import json
import signal
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from designer.cli import connections, demo, jobs, users
from designer.cli.args import pairs
from designer.web.nodedocs import render_markdown
from engine.errors import FlowFormatError, FlowmillError
from engine.flows.format import dump_flow, load_flow, parse_flow_text
from engine.flows.params import ParamError
from engine.flows.registry import Registry
from engine.flows.validate import validate_flow
from engine.run.executor import RunResult
from engine.service import Flowmill

__all__ = ["main"]

EXIT_OK, EXIT_FAILED, EXIT_INVALID = 0, 1, 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="flowmill", description="Flowmill: draw flows, run them as dependable jobs."
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser("run", help="run a flow once and print a summary")
    run.add_argument("flow", help="a *.flow.json file")
    run.add_argument(
        "--param", "-p", action="append", default=[], metavar="K=V", help="set a flow param"
    )
    run.add_argument(
        "--data-dir", help="data directory (default: $FLOWMILL_DATA_DIR or ~/.local/share/flowmill)"
    )
    run.add_argument("--json", action="store_true", help="print the summary as one JSON document")

    val = sub.add_parser("validate", help="check flows; one line per problem")
    val.add_argument("files", nargs="+", metavar="FILE")

    fmt = sub.add_parser("fmt", help="rewrite flows in canonical form")
    fmt.add_argument("files", nargs="+", metavar="FILE")
    fmt.add_argument("--check", action="store_true", help="exit 1 when a file is not canonical")

    nodes = sub.add_parser("nodes", help="list the node types")
    nodes.add_argument("--json", action="store_true", help="the full catalog as JSON")
    nodes.add_argument("--markdown", action="store_true", help="the node reference (docs/nodes.md)")

    sec = sub.add_parser("secret", help="named secrets (stored encrypted)")
    sec_sub = sec.add_subparsers(dest="action", required=True)
    sset = sec_sub.add_parser("set", help="set a secret (value read from stdin or a prompt)")
    sset.add_argument("name")
    sec_sub.add_parser("list", help="list secret names")
    srm = sec_sub.add_parser("remove", help="delete a secret")
    srm.add_argument("name")

    for leaf in sec_sub.choices.values():
        leaf.add_argument("--data-dir", help="data directory")
    connections.add_parsers(sub)
    jobs.add_parsers(sub)
    users.add_parsers(sub)
    demo.add_parsers(sub)
    return parser


def _print_issues(source: str, issues: Sequence[Any]) -> None:
    for issue in issues:
        parts = [source]
        if issue.node:
            parts.append(f"node {issue.node}")
        if issue.field:
            parts.append(issue.field)
        parts.append(issue.message)
        print(": ".join(parts), file=sys.stderr)


def _print_run(result: RunResult, as_json: bool) -> None:
    if as_json:
        print(json.dumps(result.to_dict(), indent=2, ensure_ascii=False))
    else:
        _print_table(result)
    if result.error:
        where = f"node {result.error_node}: " if result.error_node else ""
        print(f"error: {where}{result.error}", file=sys.stderr)


def _print_table(result: RunResult) -> None:
    print(
        f"flow {result.flow_id}  run {result.run_id[:12]}  {result.state} in {result.seconds:.2f} s"
    )
    rows = [("NODE", "TYPE", "STATE", "IN", "OUT", "SECONDS")]
    for node in result.nodes.values():
        rows.append(
            (
                node.node_id,
                node.node_type,
                node.state,
                _counts(node.records_in),
                _counts(node.records_out),
                f"{node.seconds:.2f}",
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  " + "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)))


def _counts(counts: dict[str, int]) -> str:
    if not counts:
        return "-"
    if len(counts) == 1:
        return str(next(iter(counts.values())))
    return " ".join(f"{port}={n}" for port, n in sorted(counts.items()))


def cmd_run(args: argparse.Namespace) -> int:
    try:
        flow = load_flow(args.flow)
        params = pairs(args.param, "--param")
    except (FlowFormatError, ParamError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_INVALID
    with Flowmill.open(args.data_dir) as app:
        issues = app.validate(flow)
        if issues:
            _print_issues(args.flow, issues)
            return EXIT_INVALID
        cancel = threading.Event()
        previous = signal.signal(signal.SIGINT, lambda *_: cancel.set())
        try:
            result = app.run_flow(
                flow, params, flow_dir=Path(args.flow).resolve().parent, cancel_event=cancel
            )
        except ParamError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return EXIT_INVALID
        finally:
            signal.signal(signal.SIGINT, previous)
    _print_run(result, args.json)
    return EXIT_OK if result.ok else EXIT_FAILED


def cmd_validate(args: argparse.Namespace) -> int:
    registry = Registry.discover()
    bad = False
    for name in args.files:
        try:
            flow = load_flow(name)
        except FlowFormatError as exc:
            print(str(exc), file=sys.stderr)
            bad = True
            continue
        issues = validate_flow(flow, registry)
        if issues:
            _print_issues(name, issues)
            bad = True
        else:
            print(f"{name}: ok")
    return EXIT_INVALID if bad else EXIT_OK


def cmd_fmt(args: argparse.Namespace) -> int:
    status = EXIT_OK
    for name in args.files:
        path = Path(name)
        try:
            raw = path.read_bytes()
            text = dump_flow(parse_flow_text(raw, name))
        except (OSError, FlowFormatError) as exc:
            print(f"{name}: {exc}" if isinstance(exc, OSError) else str(exc), file=sys.stderr)
            status = EXIT_INVALID
            continue
        if raw == text.encode("utf-8"):
            continue
        if args.check:
            print(f"{name}: not canonical (run `flowmill fmt {name}`)", file=sys.stderr)
            status = max(status, EXIT_FAILED)
        else:
            tmp = path.with_name(f".{path.name}.fmt-tmp")
            tmp.write_text(text, encoding="utf-8")
            tmp.replace(path)
            print(f"reformatted {name}")
    return status


def cmd_nodes(args: argparse.Namespace) -> int:
    registry = Registry.discover()
    if args.json:
        print(json.dumps(registry.catalog(), indent=2, ensure_ascii=False))
        return EXIT_OK
    if args.markdown:
        sys.stdout.write(render_markdown(registry))
        return EXIT_OK
    for spec in registry:
        ins = ",".join(spec.inputs) or "-"
        outs = ",".join(spec.all_outputs)
        print(f"{spec.type:<20} {spec.category:<10} in: {ins:<6} out: {outs:<10} {spec.title}")
    return EXIT_OK


def cmd_secret(args: argparse.Namespace) -> int:
    with Flowmill.open(args.data_dir) as app:
        if args.action == "set":
            if sys.stdin.isatty():
                value = getpass.getpass(f"value of secret {args.name}: ")
            else:
                value = sys.stdin.read().rstrip("\r\n")
            if not value:
                print("error: empty secret", file=sys.stderr)
                return EXIT_INVALID
            app.set_secret(args.name, value)
            print(f"secret {args.name} saved (encrypted)")
        elif args.action == "list":
            for name in app.list_secrets():
                print(name)
        elif not app.remove_secret(args.name):
            print(f"error: no secret {args.name!r}", file=sys.stderr)
            return EXIT_FAILED
    return EXIT_OK


COMMANDS = {
    "run": cmd_run,
    "validate": cmd_validate,
    "fmt": cmd_fmt,
    "nodes": cmd_nodes,
    **connections.COMMANDS,
    "secret": cmd_secret,
    **jobs.COMMANDS,
    **users.COMMANDS,
    **demo.COMMANDS,
}


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except (FlowmillError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_INVALID


if __name__ == "__main__":
    sys.exit(main())
