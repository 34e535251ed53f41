"""Batch server commands of ``flowmill``: serve, worker, submit, jobs, flows, status.

Each command is a thin shell over the service layer (``engine.service.Flowmill``), the same
functions the REST API and request files use.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
from collections.abc import Callable
from typing import Any

from designer.cli.args import pairs
from engine.clock import parse_moment
from engine.errors import FlowmillError
from engine.queue.calendars import parse_every
from engine.queue.jobs import STATES, Job
from engine.service import Flowmill

__all__ = ["add_parsers", "COMMANDS"]

EXIT_OK, EXIT_FAILED, EXIT_INVALID = 0, 1, 2


def _data_dir(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data-dir", help="data directory (default: $FLOWMILL_DATA_DIR)")


def add_parsers(sub: Any) -> None:
    serve = sub.add_parser(
        "serve", help="run everything: web app, batch server (scheduler and workers)"
    )
    _data_dir(serve)
    serve.add_argument("--no-ftps", action="store_true", help="do not start the FTPS server")
    serve.add_argument("--no-webdav", action="store_true", help="do not start the WebDAV server")
    web = sub.add_parser(
        "web",
        help="run only the web app (e.g. a second web process; see FLOWMILL_SOCKETIO_QUEUE)",
    )
    _data_dir(web)

    worker = sub.add_parser("worker", help="run a Celery worker for executor 'celery'")
    worker.add_argument(
        "--concurrency", type=int, help="jobs at once (default: [scheduler] max_running)"
    )
    _data_dir(worker)

    submit = sub.add_parser("submit", help="queue a job for a flow; prints the job id")
    submit.add_argument("flow", help="a *.flow.json file (stored and pinned) or a server flow id")
    submit.add_argument("--param", "-p", action="append", default=[], metavar="K=V")
    submit.add_argument("--priority", type=int, default=0, help="higher runs first (default 0)")
    submit.add_argument("--at", help="not before this ISO time (local time if no zone)")
    submit.add_argument("--max-delay", help="expire if not started this long after due (2h)")
    submit.add_argument("--group", help="group name: members run one after another")
    submit.add_argument("--pool", help="pool name (its limit comes from [pools])")
    submit.add_argument("--condition", help="time condition the job must wait for")
    submit.add_argument("--max-attempts", type=int, default=1)
    submit.add_argument("--json", action="store_true", help="print the job as JSON")
    _data_dir(submit)

    jobs = sub.add_parser("jobs", help="list, inspect and steer jobs")
    jobs_sub = jobs.add_subparsers(dest="action", required=True)
    listing = jobs_sub.add_parser("list", help="jobs, newest first")
    listing.add_argument("--state", choices=STATES)
    listing.add_argument("--flow")
    listing.add_argument("--group")
    listing.add_argument("--limit", type=int, default=100)
    listing.add_argument("--json", action="store_true")
    _data_dir(listing)
    for action, text in (
        ("show", "one job with all its fields"),
        ("log", "the job's log and the log of its run"),
        ("hold", "keep a queued job from starting"),
        ("resume", "let a held job start"),
        ("cancel", "cancel a queued or held job"),
        ("kill", "stop a running job (or cancel a waiting one)"),
        ("retry", "queue a job that did not succeed again"),
    ):
        p = jobs_sub.add_parser(action, help=text)
        p.add_argument("id", type=int)
        if action == "show":
            p.add_argument("--json", action="store_true")
        _data_dir(p)
    set_param = jobs_sub.add_parser("set-param", help="change params of a queued or held job")
    set_param.add_argument("id", type=int)
    set_param.add_argument("pairs", nargs="+", metavar="K=V")
    _data_dir(set_param)

    flows = sub.add_parser("flows", help="flows kept by the server")
    flows_sub = flows.add_subparsers(dest="action", required=True)
    imp = flows_sub.add_parser("import", help="import (or update) flow files")
    imp.add_argument("files", nargs="+", metavar="FILE")
    _data_dir(imp)
    fl = flows_sub.add_parser("list", help="flows on the server")
    fl.add_argument("--json", action="store_true")
    _data_dir(fl)
    for action in ("show", "export", "enable", "disable", "remove"):
        p = flows_sub.add_parser(action)
        p.add_argument("id")
        _data_dir(p)

    sched = sub.add_parser("schedules", help="recurring jobs")
    sched_sub = sched.add_subparsers(dest="action", required=True)
    add = sched_sub.add_parser("add", help="run a flow on a schedule")
    add.add_argument("name")
    add.add_argument("flow", help="server flow id, or a flow file (imported)")
    _timing(add)
    add.add_argument("--param", "-p", action="append", default=[], metavar="K=V")
    add.add_argument("--priority", type=int, default=0)
    _data_dir(add)
    sl = sched_sub.add_parser("list", help="schedules with their next fire time")
    sl.add_argument("--json", action="store_true")
    _data_dir(sl)
    rm = sched_sub.add_parser("remove")
    rm.add_argument("name")
    _data_dir(rm)
    pv = sched_sub.add_parser("preview", help="print the next fire times, one ISO time a line")
    _timing(pv)
    pv.add_argument("--from", dest="start", help="ISO time to start from (default now)")
    pv.add_argument("--count", type=int, default=10)
    _data_dir(pv)

    cal = sub.add_parser("calendars", help="named holiday and exclusion calendars")
    cal_sub = cal.add_subparsers(dest="action", required=True)
    cs = cal_sub.add_parser("set", help="define a calendar")
    cs.add_argument("name")
    cs.add_argument("--holidays", help="public holidays of a region, e.g. DE-BY")
    cs.add_argument("--exclude", action="append", default=[], metavar="YYYY-MM-DD")
    _data_dir(cs)
    _data_dir(cal_sub.add_parser("list"))

    cond = sub.add_parser("conditions", help="named time conditions (allowed windows)")
    cond_sub = cond.add_subparsers(dest="action", required=True)
    cn = cond_sub.add_parser("set", help="define a time condition")
    cn.add_argument("name")
    cn.add_argument(
        "--window",
        action="append",
        default=[],
        metavar="KIND=HH:MM-HH:MM",
        help="workday|saturday|sunday = windows, 'all' or 'none'",
    )
    cn.add_argument("--calendar", help="whose holidays count as Sundays")
    _data_dir(cn)
    _data_dir(cond_sub.add_parser("list"))

    status = sub.add_parser("status", help="servers, the active one, queue depth, running jobs")
    status.add_argument("--json", action="store_true")
    _data_dir(status)


def _timing(parser: argparse.ArgumentParser) -> None:
    when = parser.add_mutually_exclusive_group(required=True)
    when.add_argument("--cron", help="cron expression on local time, e.g. '0 2 * * 1-5'")
    when.add_argument("--every", help="interval, e.g. 15m")
    parser.add_argument("--tz", default="Europe/Berlin")
    parser.add_argument("--calendar", help="calendar name or region code (DE-BY)")
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--condition", help="name of a time condition")
    where.add_argument(
        "--window",
        action="append",
        metavar="KIND=HH:MM-HH:MM",
        help="allowed windows, e.g. workday=06:00-20:00 sunday=none",
    )
    parser.add_argument("--misfire", choices=("run_once", "skip"), default="run_once")


def _spec(args: argparse.Namespace) -> dict[str, Any]:
    spec: dict[str, Any] = {"tz": args.tz, "misfire": args.misfire}
    for key in ("cron", "every", "calendar", "condition"):
        if getattr(args, key, None):
            spec[key] = getattr(args, key)
    if getattr(args, "window", None):
        spec["windows"] = pairs(args.window, "--window")
    return spec


def _job_line(job: Job) -> str:
    group = f" group={job.group}#{job.group_pos}" if job.group else ""
    where = f"node {job.error_node}: " if job.error_node else ""
    error = f"  {where}{job.error}" if job.error and job.state != "succeeded" else ""
    return (
        f"{job.id:>6}  {job.state:<9}  prio={job.priority:<3} {job.flow_id}"
        f"{group}  submitted {job.submitted_at:%Y-%m-%d %H:%M:%S}{error}"
    )


def cmd_serve(args: argparse.Namespace) -> int:
    from designer.web.webserver import WebServer
    from engine.batch.listeners import ListenerHost
    from engine.batch.server import BatchServer

    def echo(text: str) -> None:
        print(text, flush=True)

    from servers.fileservers import FileServers

    with Flowmill.open(args.data_dir) as app:
        server = BatchServer(app, echo=echo)
        web = WebServer(app, echo)
        web.start()
        files = FileServers(app, echo, ftps=not args.no_ftps, webdav=not args.no_webdav)
        # only the server holding the scheduler lease listens: two never fire one event twice
        listeners = ListenerHost(app, echo, is_active=lambda: server.active)
        signals = 0

        def on_signal(signum: int, _frame: Any) -> None:
            # only flags and a wake-up here: the loop prints and acts (no I/O in a handler)
            nonlocal signals
            signals += 1
            web.stopping()
            name = signal.Signals(signum).name
            if signals == 1:
                server.request_stop(f"{name}; once more to cancel running jobs now")
            else:
                server.stop_now(f"{name} again")

        try:
            files.start()
            listeners.start()
            for sig in (signal.SIGINT, signal.SIGTERM):
                signal.signal(sig, on_signal)
            return server.serve()
        finally:
            web.stopping()
            listeners.stop()
            echo("trigger listeners: stopped")
            files.stop()
            web.stop()


def cmd_web(args: argparse.Namespace) -> int:
    from designer.web.webserver import WebServer, bind, run_web

    with Flowmill.open(args.data_dir) as app:
        web = WebServer(app, lambda text: print(text, flush=True))
        if web.port == 0:
            raise FlowmillError("FLOWMILL_WEB_PORT=0: the web app is switched off")
        password = app.ensure_admin()
        if password:
            print(f"first start: created user 'admin' with password {password}", flush=True)
        data_dir = str(app.settings.data_dir)
    sock = bind(web.host, web.port)
    host, port = sock.getsockname()[:2]
    print(f"web app: http://{host}:{port}/", flush=True)
    return run_web(data_dir, sock)


def cmd_worker(args: argparse.Namespace) -> int:
    from engine.batch.celery import run_worker
    from engine.config import Settings

    if args.concurrency is not None and args.concurrency < 1:
        raise ValueError("--concurrency must be at least 1")
    settings = Settings.load(args.data_dir)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    if settings.executor != "celery":
        print(
            f"note: [scheduler] executor is {settings.executor!r} here; only a server with "
            "executor 'celery' sends jobs to this worker",
            file=sys.stderr,
        )
    return run_worker(settings, args.concurrency)


def cmd_submit(args: argparse.Namespace) -> int:
    with Flowmill.open(args.data_dir) as app:
        job = app.submit(
            args.flow,
            pairs(args.param, "--param"),
            priority=args.priority,
            not_before=parse_moment(args.at, "--at"),
            max_delay=parse_every(args.max_delay, "--max-delay") if args.max_delay else None,
            group=args.group,
            pool=args.pool,
            time_condition=args.condition,
            max_attempts=args.max_attempts,
            source="cli",
        )
    print(json.dumps(job.to_dict(), indent=2, ensure_ascii=False) if args.json else job.id)
    return EXIT_OK


def cmd_jobs(args: argparse.Namespace) -> int:
    with Flowmill.open(args.data_dir) as app:
        js = app.jobs
        if args.action == "list":
            found = js.list(state=args.state, flow_id=args.flow, group=args.group, limit=args.limit)
            if args.json:
                print(json.dumps([j.to_dict() for j in found], indent=2, ensure_ascii=False))
            else:
                for job in found:
                    print(_job_line(job))
            return EXIT_OK
        if args.action == "show":
            job = js.get(args.id)
            if args.json:
                print(json.dumps(job.to_dict(), indent=2, ensure_ascii=False))
            else:
                for key, value in job.to_dict().items():
                    print(f"{key:>15}: {value}")
            return EXIT_OK
        if args.action == "log":
            for line in app.job_log(args.id):
                print(line)
            return EXIT_OK
        if args.action == "set-param":
            job = app.set_job_params(args.id, pairs(args.pairs, "set-param"))
            print(_job_line(job))
            return EXIT_OK
        operation: Callable[[int], Job] = {
            "hold": js.hold,
            "resume": js.resume,
            "cancel": js.cancel,
            "kill": js.request_kill,
            "retry": js.retry,
        }[args.action]
        print(_job_line(operation(args.id)))
    return EXIT_OK


def cmd_flows(args: argparse.Namespace) -> int:
    with Flowmill.open(args.data_dir) as app:
        if args.action == "import":
            for name in args.files:
                info, changed = app.import_flow(name)
                print(
                    f"{info.id}: {'imported' if changed else 'unchanged'} ({info.flow_hash[:12]})"
                )
        elif args.action == "list":
            found = app.flows.list()
            if args.json:
                print(json.dumps([f.to_dict() for f in found], indent=2, ensure_ascii=False))
            for info in [] if args.json else found:
                state = "enabled" if info.enabled else "disabled"
                print(f"{info.id:<30} {state:<9} {info.flow_hash[:12]}  {info.name or ''}")
        elif args.action in ("show", "export"):
            from engine.flows.format import dump_flow

            flow, info = app.flows.get(args.id)
            if args.action == "show":
                print(json.dumps(info.to_dict(), indent=2, ensure_ascii=False))
            else:
                sys.stdout.write(dump_flow(flow))
        elif args.action in ("enable", "disable"):
            info = app.flows.set_enabled(args.id, args.action == "enable")
            print(f"{info.id}: {'enabled' if info.enabled else 'disabled'}")
        else:
            app.flows.remove(args.id)
            print(f"{args.id}: removed")
    return EXIT_OK


def cmd_schedules(args: argparse.Namespace) -> int:
    with Flowmill.open(args.data_dir) as app:
        if args.action == "add":
            info = app.add_schedule(
                args.name, args.flow, _spec(args), pairs(args.param, "--param"), args.priority
            )
            upcoming = info.next_fire.isoformat() if info.next_fire else "-"
            print(f"schedule {info.name}: next {upcoming}")
        elif args.action == "list":
            found = app.list_schedules()
            if args.json:
                print(json.dumps(found, indent=2, ensure_ascii=False))
            for entry in [] if args.json else found:
                spec = entry["spec"]
                when = spec.get("cron") or f"every {spec.get('every')}"
                nxt = entry["next_fires"][0] if entry["next_fires"] else "-"
                error = f"  ERROR {entry['error']}" if entry["error"] else ""
                print(f"{entry['name']:<24} {entry['flow']:<24} {when:<18} next {nxt}{error}")
        elif args.action == "remove":
            app.remove_schedule(args.name)
            print(f"schedule {args.name}: removed")
        else:
            start = parse_moment(args.start, "--from")
            for moment in app.preview_schedule(_spec(args), start, args.count):
                print(moment.isoformat())
    return EXIT_OK


def cmd_calendars(args: argparse.Namespace) -> int:
    with Flowmill.open(args.data_dir) as app:
        if args.action == "set":
            app.set_calendar(args.name, args.holidays, args.exclude)
            print(f"calendar {args.name} saved")
        else:
            for entry in app.list_calendars():
                days = ", ".join(entry["exclusions"])
                region = entry["holidays"] or "-"
                print(f"{entry['name']:<20} holidays {region:<8} exclusions {days or '-'}")
    return EXIT_OK


def cmd_conditions(args: argparse.Namespace) -> int:
    with Flowmill.open(args.data_dir) as app:
        if args.action == "set":
            app.set_condition(args.name, pairs(args.window, "--window"), args.calendar)
            print(f"condition {args.name} saved")
        else:
            for entry in app.list_conditions():
                windows = " ".join(f"{k}={v}" for k, v in entry["windows"].items())
                print(f"{entry['name']:<20} {windows}  calendar {entry['calendar'] or '-'}")
    return EXIT_OK


def cmd_status(args: argparse.Namespace) -> int:
    from engine.batch.listeners import read_status as read_listeners
    from servers.fileservers import read_status

    with Flowmill.open(args.data_dir) as app:
        report = app.status()
        report["file_servers"] = read_status(app.settings.data_dir)
        report["listeners"] = read_listeners(app.settings.data_dir)
    if args.json:
        print(json.dumps(report, indent=2, ensure_ascii=False))
        return EXIT_OK
    lease = report["lease"]
    active = f"{lease['holder']} (lease until {lease['expires_at']})" if lease else "none"
    print(f"active server: {active}")
    for server in report["servers"]:
        print(
            f"  {server['id']:<40} {server['role']:<8} pid {server['pid']:<7} "
            f"heartbeat {server['heartbeat_at']}"
        )
    counts = report["jobs"]
    print(f"queue depth: {report['queue_depth']}  running: {counts.get('running', 0)}")
    print("jobs: " + ", ".join(f"{state} {n}" for state, n in sorted(counts.items())))
    for job in report["running"]:
        print(
            f"  running: job {job['id']} {job['flow']} on {job['worker']} since {job['started_at']}"
        )
    files = report["file_servers"]
    if files is None:
        print("file servers: not running")
    else:
        for name, state in sorted(files["servers"].items()):
            details = ", ".join(f"{k} {v}" for k, v in sorted(state.items()))
            print(f"{name}: {details}")
        drops = files["drops"]
        print(
            f"file drops: {drops['jobs_started']} jobs started, {drops['waiting']} waiting, "
            f"{drops['unmatched_files']} files no flow waited for"
        )
    listeners = report["listeners"]
    if listeners is None:
        print("trigger listeners: not running")
    elif not listeners:
        print("trigger listeners: none (no enabled flow has an event trigger)")
    for item in listeners or []:
        state = "listening" if item["listening"] else f"not listening: {item['error']}"
        print(
            f"trigger {item['flow']}/{item['node']} ({item['type']}): {state}, "
            f"{item['fired']} jobs started"
        )
    return EXIT_OK


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "serve": cmd_serve,
    "web": cmd_web,
    "worker": cmd_worker,
    "submit": cmd_submit,
    "jobs": cmd_jobs,
    "flows": cmd_flows,
    "status": cmd_status,
    "schedules": cmd_schedules,
    "calendars": cmd_calendars,
    "conditions": cmd_conditions,
}
