"""The service layer: every operation a user can do, as one function, for every front end.

The CLI (and later the REST API, request files and the dashboard) call these methods, so
behaviour cannot drift apart between them. No Flask here.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from engine.access.users import UserStore
from engine.clock import Clock, SystemClock
from engine.config import Settings
from engine.errors import ConnectionNotFound, FlowmillError, FlowValidationError
from engine.flows.flowstore import ANY, FlowInfo, FlowStore
from engine.flows.format import (
    dump_flow,
    find_unstorable_text,
    flow_hash,
    load_flow,
    parse_flow_text,
)
from engine.flows.params import TRIGGER_PARAM, ParamError, resolve_params
from engine.flows.registry import Registry
from engine.flows.validate import ValidationIssue, validate_flow
from engine.queue.calendars import SPEC_KEYS, Calendar, ScheduleError, TimeCondition, preview
from engine.queue.jobs import Job, JobStore
from engine.queue.schedules import ScheduleInfo, ScheduleStore
from engine.run.eventlink import EventSender, socket_path
from engine.run.events import Event, EventBus, FlowSaved
from engine.run.executor import Executor, RunResult
from engine.run.recorder import RunRecorder
from engine.store.factory import open_store
from engine.store.interface import MAX_ID_LENGTH, RunStore
from engine.store.sql import SqlRunStore

__all__ = ["Flowmill", "TRIGGER_SCHEDULE_PREFIX", "check_name"]

# schedules named so are kept by arm_triggers from the flows' trigger.schedule nodes
TRIGGER_SCHEDULE_PREFIX = "flow:"
# A name must fit in one URL path segment and compare alike in every database (MariaDB
# ignores trailing spaces): no slash, backslash, control character or outer whitespace.
_NAME_CHAR = r"[^/\\\x00-\x1f\x7f]"
_NAME_EDGE = r"[^\s/\\\x00-\x1f\x7f]"
_NAME = re.compile(rf"{_NAME_EDGE}(?:{_NAME_CHAR}*{_NAME_EDGE})?")


def check_name(name: Any, what: str) -> str:
    """A user-given name of a schedule, calendar, time condition, connection, secret, job
    group or pool; the API and the CLI both come through here.

    Raises:
        FlowmillError: naming ``what`` and saying what a name may be.

    >>> check_name("nightly prices", "schedule")
    'nightly prices'
    """
    if (
        not isinstance(name, str)
        or len(name) > MAX_ID_LENGTH
        or name in (".", "..")
        or not _NAME.fullmatch(name)
        or find_unstorable_text(name)  # a lone surrogate passes the pattern
    ):
        raise FlowmillError(
            f"{what} name {str(name)[:60]!r} is not allowed: use 1 to {MAX_ID_LENGTH} "
            "characters without '/', '\\', control characters or leading/trailing spaces"
        )
    return name


class Flowmill:
    """One Flowmill installation: settings, node registry, run store, bus and executor.

    Collaborators come in through the constructor; ``Flowmill.open`` wires the defaults.
    """

    def __init__(
        self,
        settings: Settings,
        registry: Registry,
        store: RunStore,
        bus: EventBus | None = None,
        clock: Clock | None = None,
    ) -> None:
        self.settings = settings
        self.registry = registry
        self.store = store
        self.bus = bus or EventBus()
        self.clock = clock or SystemClock()
        self._jobs: JobStore | None = None
        self._flows: FlowStore | None = None
        self._schedules: ScheduleStore | None = None
        self._users: UserStore | None = None
        self._folder_seen: dict[str, tuple[int, int]] = {}  # flows folder: file -> stat
        self._forwarding: tuple[EventSender, Callable[[], None]] | None = None
        self.recorder = RunRecorder(store, self.bus)
        self.executor = Executor(
            registry,
            self.bus,
            data_dir=settings.data_dir,
            store=store,
            batch_size=settings.batch_size,
            queue_depth=settings.queue_depth,
            connection_lookup=store.get_connection,
            secret_lookup=store.get_secret,
        )

    @classmethod
    def open(
        cls,
        data_dir: str | Path | None = None,
        registry: Registry | None = None,
        clock: Clock | None = None,
    ) -> Flowmill:
        """Settings from the data directory, node types from entry points, the store."""
        settings = Settings.load(data_dir)
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        store = open_store(settings.store_url, settings.data_dir)
        app = cls(settings, registry or Registry.discover(), store, clock=clock)
        app.forward_events()
        return app

    def forward_events(self) -> None:
        """Send this process's events to the web app of the data directory, if one runs,
        so the dashboard sees runs of workers and CLI commands live (engine/run/eventlink.py)."""
        if self._forwarding is None:
            sender = EventSender(socket_path(self.settings.data_dir))
            self._forwarding = (sender, self.bus.subscribe(Event, sender))

    def stop_forwarding(self) -> None:
        """The web app itself publishes its events directly."""
        if self._forwarding is not None:
            sender, unsubscribe = self._forwarding
            unsubscribe()
            sender.close()
            self._forwarding = None

    @property
    def jobs(self) -> JobStore:
        """The job table (needs a SQL store: SQLite, PostgreSQL or MariaDB)."""
        if self._jobs is None:
            self._jobs = JobStore(self._sql_store(), self.bus, self.clock)
        return self._jobs

    @property
    def flows(self) -> FlowStore:
        if self._flows is None:
            self._flows = FlowStore(self._sql_store(), self.clock)
        return self._flows

    @property
    def users(self) -> UserStore:
        """Users, roles, passwords and API tokens (needs a SQL store)."""
        if self._users is None:
            self._users = UserStore(self._sql_store(), self.clock)
        return self._users

    def ensure_admin(self) -> str | None:
        """First start: create ``admin`` with a random password, written to
        ``DATA/initial-admin-password`` (0600); returns it to print once, else None."""
        return self.users.ensure_admin(self.settings.data_dir)

    def _sql_store(self) -> SqlRunStore:
        if not isinstance(self.store, SqlRunStore):
            raise FlowmillError("the batch server needs a SQL store (store url 'memory' has none)")
        return self.store

    def close(self) -> None:
        self.stop_forwarding()
        self.recorder.close()
        self.store.close()

    def __enter__(self) -> Flowmill:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- flows -----------------------------------------------------------------------
    def validate(self, flow: Any) -> list[ValidationIssue]:
        return validate_flow(flow, self.registry)

    def run_flow(
        self,
        flow: dict[str, Any],
        params: Mapping[str, Any] | None = None,
        *,
        flow_dir: Path | None = None,
        cancel_event: threading.Event | None = None,
    ) -> RunResult:
        """Run a flow now, in this process, recording it in the store."""
        return self.executor.run(flow, params, flow_dir=flow_dir, cancel_event=cancel_event)

    # -- connections and secrets -------------------------------------------------------
    def set_connection(
        self, name: str, settings: Mapping[str, Any], *, merge: bool = False
    ) -> bool:
        """Create or replace a connection (stored encrypted); True if it is new.

        Settings are write-only for every front end, so ``merge`` keeps the stored settings
        that are not given (a value of None removes one): a form can change the host
        without the password being shown or typed again.
        """
        check_name(name, "connection")
        if not isinstance(settings, Mapping):
            raise FlowmillError(f"connection {name}: settings must be an object of key: value")
        try:
            current = self.store.get_connection(name)
        except ConnectionNotFound:
            current = None
        merged = {**(current or {}), **settings} if merge else dict(settings)
        self.store.set_connection(name, {k: v for k, v in merged.items() if v is not None})
        return current is None

    def list_connections(self) -> list[str]:
        return self.store.list_connections()

    def describe_connections(self) -> list[dict[str, Any]]:
        """Each connection's name and the names of its settings, never their values: a
        URL carries its password (``postgresql://user:pw@host/db``), and no list of
        "secret-looking" keys can be trusted to catch every one."""
        out = []
        for name in self.store.list_connections():
            try:
                keys, error = sorted(self.store.get_connection(name)), None
            except ConnectionNotFound:  # removed meanwhile
                continue
            except FlowmillError as exc:  # stored under another secret key
                keys, error = [], str(exc)
            kind = None
            if error is None:
                kind = self.connection_type(self.store.get_connection(name))
            out.append({"name": name, "type": kind, "settings": keys, "error": error})
        return out

    def remove_connection(self, name: str) -> bool:
        return self.store.delete_connection(name)

    def connection_type(self, settings: Mapping[str, Any]) -> str | None:
        """The kind of a connection: its ``type`` setting, else the kind that recognises it."""
        kind = self.registry.connection_type_of(dict(settings))
        return kind.kind if kind else settings.get("type")

    def test_connection(self, name: str, timeout: float = 10.0) -> tuple[str, str]:
        """Reach the connection's server and log in; ``(kind, what it reached)``.

        Raises:
            FlowmillError: what went wrong, naming the connection, with every secret
                setting masked.
        """
        settings = self.store.get_connection(name)
        kind = self.registry.connection_type_of(settings)
        if kind is None:
            known = ", ".join(k.kind for k in self.registry.connection_types())
            raise FlowmillError(
                f"connection {name}: cannot tell its type; add the setting type= one of {known}"
            )
        try:
            return kind.kind, _masked(kind.test(dict(settings), float(timeout)), settings)
        except Exception as exc:  # any failure is the answer of a test
            text = _masked(str(exc) or type(exc).__name__, settings)
            raise FlowmillError(f"connection {name} ({kind.kind}): {text}") from None

    def set_secret(self, name: str, value: str) -> None:
        check_name(name, "secret")
        self.store.set_secret(name, value)

    def list_secrets(self) -> list[str]:
        return self.store.list_secrets()

    def remove_secret(self, name: str) -> bool:
        return self.store.delete_secret(name)

    # -- flows on the server -----------------------------------------------------------
    def import_flow(self, path: str | Path) -> tuple[FlowInfo, bool]:
        """Validate a flow file and make it the current version of its id (enabled if new)."""
        flow = load_flow(path)
        self._check(flow)
        info, changed = self.flows.put(flow, str(Path(path).resolve()))
        if changed:
            self._announce(info, None)
        return info, changed

    def _announce(self, info: FlowInfo, by: str | None) -> None:
        self.bus.publish(FlowSaved(run_id="", flow_id=info.id, flow_hash=info.flow_hash, by=by))

    def save_flow(
        self,
        flow: Any,
        *,
        base_hash: Any = ANY,
        by: str | None = None,
        source: str | None = None,
    ) -> FlowInfo:
        """Validate and store a flow edited in the designer or sent by a script.

        ``base_hash`` is the hash the edit started from (None: a new flow; omitted: no
        check). Invalid flows raise ``FlowValidationError`` and nothing is saved. Open
        editors learn about the save from the ``FlowSaved`` event.
        """
        self._check(flow)
        info, changed = self.flows.put(flow, source, expect=base_hash)
        self.arm_triggers()
        if changed:
            self._announce(info, by)
        return info

    def remove_flow(self, flow_id: str, *, by: str | None = None) -> None:
        """Take a flow off the server (its versions stay for the runs that used them)."""
        self.flows.remove(flow_id)
        self.arm_triggers()
        self.bus.publish(FlowSaved(run_id="", flow_id=flow_id, flow_hash=None, by=by, removed=True))

    def resolve_flow(
        self, ref: str, *, allow_files: bool = True
    ) -> tuple[dict[str, Any], str, str | None]:
        """A flow by file path (``*.json``, stored and pinned) or by id of a server flow.

        Returns the flow, its hash and the folder of its file (``${flow_dir}``) if known.
        Remote front ends pass ``allow_files=False``: a caller over the network must not
        make the server read its own files.
        """
        path = Path(ref)
        if allow_files and (ref.endswith(".json") or path.is_file()):
            flow = load_flow(path)
            self._check(flow)
            digest = flow_hash(flow)
            self.store.save_flow_version(flow["id"], digest, dump_flow(flow))
            return flow, digest, str(path.resolve().parent)
        flow, info = self.flows.get(ref)
        folder = str(Path(info.source).parent) if info.source else None
        return flow, info.flow_hash, folder

    def _check(self, flow: dict[str, Any]) -> None:
        issues = self.validate(flow)
        if issues:
            raise FlowValidationError(flow.get("id"), issues)

    # -- jobs --------------------------------------------------------------------------
    def submit(
        self,
        ref: str,
        params: Mapping[str, Any] | None = None,
        *,
        priority: int = 0,
        not_before: datetime | None = None,
        max_delay: timedelta | None = None,
        group: str | None = None,
        pool: str | None = None,
        time_condition: str | None = None,
        max_attempts: int = 1,
        source: str = "cli",
        schedule: str | None = None,
        allow_files: bool = True,
        trigger: Mapping[str, Any] | None = None,
    ) -> Job:
        """Queue a job for a flow (file path or server flow id); params are checked now.

        ``trigger`` is the record of the event that started the job (a dropped file); only
        the server sets it, so a ``_trigger`` among ``params`` is refused.
        """
        if params and TRIGGER_PARAM in params:
            raise ParamError(str(ref), TRIGGER_PARAM, "is set by the server, not by callers")
        if trigger is not None:
            params = {**(params or {}), TRIGGER_PARAM: dict(trigger)}
        for what, name in (("group", group), ("pool", pool), ("condition", time_condition)):
            if name is not None:
                check_name(name, what)
        # a request file's "\ud800" would otherwise fail the store's write, not this call
        problem = find_unstorable_text(dict(params or {}))
        if problem:
            raise FlowmillError(f"params: {problem}")
        flow, digest, folder = self.resolve_flow(ref, allow_files=allow_files)
        typed = resolve_params(flow, params)
        given = {k: typed[k] for k in (params or {})}
        return self.jobs.submit(
            flow["id"],
            digest,
            given,
            priority=priority,
            not_before=not_before,
            max_delay=max_delay,
            group=group,
            pool=pool,
            time_condition=time_condition,
            max_attempts=max_attempts,
            source=source,
            schedule=schedule,
            flow_dir=folder,
        )

    def set_job_params(self, job_id: int, params: Mapping[str, Any]) -> Job:
        """Edit params of a job that has not started, checked against its pinned flow."""
        job = self.jobs.get(job_id)
        text = self.store.get_flow_version(job.flow_hash) or "{}"
        flow = parse_flow_text(text, f"flow {job.flow_id}")
        if TRIGGER_PARAM in params:
            raise ParamError(job.flow_id, TRIGGER_PARAM, "is set by the server, not by callers")
        typed = resolve_params(flow, {**job.params, **params})
        return self.jobs.set_params(job_id, {k: typed[k] for k in params})

    def job_log(self, job_id: int) -> list[str]:
        """The job's own log followed by the log of its latest run, as text lines."""
        lines = [f"{ts.isoformat()} job: {message}" for ts, message in self.jobs.log(job_id)]
        job = self.jobs.get(job_id)
        if job.run_id:
            for line in self.store.get_log(job.run_id, limit=100_000):
                where = f"node {line.node_id}" if line.node_id else "run"
                lines.append(f"{line.ts.isoformat()} {where}: {line.level} {line.message}")
        return lines

    # -- the flows folder and trigger arming ------------------------------------------
    def sync_flows_folder(self) -> list[str]:
        """Import the folder's ``*.flow.json`` files that are new or changed; forget flows
        whose file was deleted. Returns what happened, one line each (for the server log).

        The folder (``[flows] dir``, default ``DATA/flows``) can be a git checkout: it is
        the source of truth for the flows imported from it. A file that does not validate
        is reported and skipped; the version imported before stays.
        """
        folder = self.settings.flows_path
        if not folder.is_dir():
            return []
        events: list[str] = []
        seen: set[str] = set()
        for path in sorted(folder.glob("*.flow.json")):
            key = str(path.resolve())
            seen.add(key)
            try:
                stamp = path.stat()
            except FileNotFoundError:
                continue
            signature = (stamp.st_mtime_ns, stamp.st_size)
            if self._folder_seen.get(key) == signature:
                continue
            self._folder_seen[key] = signature
            try:
                info, changed = self.import_flow(path)
            except FlowmillError as exc:
                events.append(f"{path.name}: not imported: {exc}")
                continue
            if changed:
                events.append(f"{path.name}: imported flow {info.id} ({info.flow_hash[:12]})")
        root = str(folder.resolve())
        for info in self.flows.list():
            source = info.source or ""
            if source.startswith(root + "/") and source not in seen:
                self.flows.remove(info.id)
                self._folder_seen.pop(source, None)
                events.append(f"{Path(source).name}: deleted, flow {info.id} removed")
        return events

    def arm_triggers(self) -> list[str]:
        """Keep one schedule per ``trigger.schedule`` node of every enabled flow, and none
        for disabled or removed flows. Idempotent; returns what changed."""
        wanted: dict[str, tuple[str, dict[str, Any]]] = {}
        for info in self.flows.list():
            if not info.enabled:
                continue
            flow, _ = self.flows.get(info.id)
            for node in flow.get("nodes", []):
                if node.get("type") == "trigger.schedule" and not node.get("disabled"):
                    spec = {k: v for k, v in node.get("config", {}).items() if k in SPEC_KEYS}
                    wanted[f"flow:{info.id}:{node['id']}"] = (info.id, spec)
        changes = []
        existing = {s.name: s for s in self.schedules.list() if s.name.startswith("flow:")}
        for name, (flow_id, spec) in wanted.items():
            current = existing.get(name)
            if current is not None and current.spec == spec and current.flow_id == flow_id:
                continue
            try:
                self.schedules.add(name, flow_id, spec)
                changes.append(f"schedule {name} armed")
            except FlowmillError as exc:
                changes.append(f"schedule {name} not armed: {exc}")
        for name in existing.keys() - wanted.keys():
            self.schedules.remove(name)
            changes.append(f"schedule {name} disarmed")
        return changes

    # -- status --------------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        """Servers, who holds the scheduler lease, queue depth and running jobs."""
        from engine.queue.leases import Lease

        lease = Lease(self._sql_store(), self.clock, holder="status", timeout=1)
        info = lease.info()
        counts = self.jobs.counts()
        return {
            "lease": None
            if info is None
            else {
                "holder": info.holder,
                "acquired_at": info.acquired_at.isoformat(),
                "heartbeat_at": info.heartbeat_at.isoformat(),
                "expires_at": info.expires_at.isoformat(),
                "expired": info.expires_at < self.clock.now(),
            },
            "servers": [
                {
                    "id": s.id,
                    "host": s.host,
                    "pid": s.pid,
                    "role": s.role,
                    "started_at": s.started_at.isoformat(),
                    "heartbeat_at": s.heartbeat_at.isoformat(),
                }
                for s in lease.servers()
            ],
            "jobs": counts,
            "queue_depth": counts.get("queued", 0),
            "running": [j.to_dict() for j in self.jobs.running()],
        }

    # -- schedules, calendars, time conditions ------------------------------------------
    @property
    def schedules(self) -> ScheduleStore:
        if self._schedules is None:
            self._schedules = ScheduleStore(self._sql_store(), self.clock)
        return self._schedules

    def add_schedule(
        self,
        name: str,
        ref: str,
        spec: Mapping[str, Any],
        params: Mapping[str, Any] | None = None,
        priority: int = 0,
        *,
        allow_files: bool = True,
    ) -> ScheduleInfo:
        """Create or replace a schedule that runs a flow recurrently; ``ref`` is a server
        flow id or (with ``allow_files``) a flow file, imported first."""
        check_name(name, "schedule")
        self._not_a_trigger_schedule(name)
        if allow_files and (ref.endswith(".json") or Path(ref).is_file()):
            info, _ = self.import_flow(ref)
            flow_id = info.id
        else:
            flow_id = self.flows.info(ref).id
        flow, _ = self.flows.get(flow_id)
        typed = resolve_params(flow, params)
        given = {k: typed[k] for k in (params or {})}
        return self.schedules.add(name, flow_id, spec, given, priority)

    def remove_schedule(self, name: str) -> None:
        """Delete a schedule (ScheduleNotFound if there is none)."""
        self._not_a_trigger_schedule(name)
        self.schedules.remove(name)

    @staticmethod
    def _not_a_trigger_schedule(name: str) -> None:
        # arm_triggers would re-create or drop it on the next save or server turn
        if name.startswith(TRIGGER_SCHEDULE_PREFIX):
            raise ScheduleError(
                "name",
                f"schedules named {TRIGGER_SCHEDULE_PREFIX}… come from the trigger.schedule "
                "nodes of the flows: edit, disable or remove the node or the flow instead",
            )

    def preview_schedule(
        self, spec: Mapping[str, Any], start: datetime | None = None, count: int = 10
    ) -> list[datetime]:
        """The next ``count`` fire times of ``spec`` from ``start`` (default now) on, on
        the schedule's own clock; named calendars and conditions are resolved."""
        schedule = self.schedules.build(spec)
        moments = preview(schedule, start or self.clock.now(), count)
        return [m.astimezone(schedule.zone) for m in moments]

    def list_schedules(self, upcoming: int = 5) -> list[dict[str, Any]]:
        """Every schedule with its next ``upcoming`` fire times (``next_fires``, ISO on the
        schedule's clock); a stopped or disabled schedule has none."""
        now = self.clock.now()
        return [self._describe(info, now, upcoming) for info in self.schedules.list()]

    def describe_schedule(self, name: str, upcoming: int = 5) -> dict[str, Any]:
        """One schedule as ``list_schedules`` shows it (ScheduleNotFound if none)."""
        return self._describe(self.schedules.get(name), self.clock.now(), upcoming)

    def _describe(self, info: ScheduleInfo, now: datetime, upcoming: int) -> dict[str, Any]:
        entry = info.to_dict()
        entry["next_fires"] = []
        if info.enabled and not info.error:
            try:
                fires = self.preview_schedule(info.spec, now, upcoming)
                entry["next_fires"] = [m.isoformat() for m in fires]
            except FlowmillError as exc:  # e.g. its condition was redefined meanwhile
                entry["error"] = str(exc)
        return entry

    def set_calendar(
        self, name: str, holidays: str | None = None, exclusions: Iterable[Any] = ()
    ) -> Calendar:
        """Create or replace a named calendar: a region's public holidays (``DE-BY``) plus
        exclusion dates (``YYYY-MM-DD``)."""
        check_name(name, "calendar")
        return self.schedules.set_calendar(name, holidays, exclusions)

    def list_calendars(self) -> list[dict[str, Any]]:
        """Each calendar: name, holiday region (``DE-BY``; None: exclusions only) and
        exclusion dates."""
        return [
            {
                "name": name,
                "holidays": "-".join(x for x in (cal.country, cal.subdiv) if x) or None,
                "exclusions": [d.isoformat() for d in sorted(cal.exclusions)],
            }
            for name, cal in self.schedules.calendars().items()
        ]

    def set_condition(
        self, name: str, windows: Mapping[str, Any], calendar: str | None = None
    ) -> TimeCondition:
        """Create or replace a named time condition: allowed windows per day kind, and
        the calendar whose holidays count as Sundays."""
        check_name(name, "condition")
        return self.schedules.set_condition(name, windows, calendar)

    def list_conditions(self) -> list[dict[str, Any]]:
        """Each time condition: name, windows per day kind (text form) and calendar."""
        return [
            {"name": name, "windows": condition.to_spec(), "calendar": calendar}
            for name, (condition, calendar) in self.schedules.conditions().items()
        ]

    def fire_schedules(self) -> list[tuple[str, Any]]:
        """Submit the jobs of every schedule that is due now (one per schedule at most)."""

        def submit(info: ScheduleInfo, moment: datetime) -> Job:
            return self.submit(
                info.flow_id,
                info.params,
                priority=info.priority,
                source=f"schedule {info.name} ({moment.isoformat()})",
                schedule=info.name,
            )

        return self.schedules.fire(submit)

    def closed_conditions(self) -> list[str]:
        """Time conditions whose windows are shut now: their jobs wait."""
        return self.schedules.closed_conditions(self.clock.now())


_SECRET_KEY = re.compile(r"pass|secret|token|key|credential", re.IGNORECASE)


def _masked(text: str, settings: Mapping[str, Any]) -> str:
    """``text`` with the values of secret-looking settings and URL passwords as ***."""
    values: set[str] = set()
    for key, value in settings.items():
        if not isinstance(value, str) or not value:
            continue
        if _SECRET_KEY.search(str(key)):
            values.add(value)
        password = urlsplit(value).password if "://" in value else None
        if password:
            values.update({password, unquote(password)})
    for value in sorted(values, key=len, reverse=True):
        text = text.replace(value, "***")
    return text
