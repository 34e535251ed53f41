"""Trigger listeners: the server side of event triggers (TCP, SQL change, mail, MQTT, …).

A trigger node type that waits for something outside declares ``listen`` on its
``NodeSpec``. ``flowmill serve`` runs one ``ListenerHost``, which keeps exactly one
listener thread per enabled flow's trigger node: started when the flow is enabled or
saved, restarted with a fresh config when the node changes, stopped when the flow is
disabled or removed, restarted with back-off (1 s … 60 s) when it fails. Only the server
holding the scheduler lease listens, so two servers never start the same job twice.

``listen(ctx)`` blocks until ``ctx.stopping`` is set. It calls ``ctx.fire(record)`` for
each event: that queues one job of the flow whose first record is ``record`` (carried in
the reserved job param ``_trigger``; a list of records is one job for a batch). With
``on_done`` the listener hears how that job ended, e.g. to advance a watermark or mark a
mail seen only after success. ``ctx.load_state()``/``ctx.save_state()`` keep a small JSON
object per trigger in the database across restarts.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from engine.batch.statusfile import read_status as read_status_file
from engine.batch.statusfile import status_path, write_status
from engine.errors import FlowmillError
from engine.flows.params import TRIGGER_PARAM, param_defaults, substitute
from engine.store.tables import trigger_state

__all__ = [
    "BATCH_KEY",
    "ListenContext",
    "ListenerHost",
    "TriggerStateStore",
    "fired_records",
    "read_status",
]

log = logging.getLogger(__name__)

BATCH_KEY = "$records"  # _trigger = {"$records": [...]}: one job for several events
TERMINAL = {"succeeded", "failed", "cancelled", "killed", "expired", "dead_letter"}
REFRESH_EVERY = 2.0  # seconds between looks at the enabled flows
CHECK_JOBS_EVERY = 0.3  # seconds between looks at the jobs listeners wait for
BACKOFF = (1.0, 2.0, 5.0, 10.0, 30.0, 60.0)


STATUS_EVERY = 2.0


def _status_path(data_dir: Path) -> Path:
    return status_path(data_dir, "listeners")


def read_status(data_dir: Path) -> list[dict[str, Any]] | None:
    """What the running server last wrote about its listeners; None when none runs."""
    status = read_status_file(_status_path(data_dir), 5 * STATUS_EVERY)
    listeners = status.get("listeners") if status else None
    return listeners if isinstance(listeners, list) else None


def fired_records(params: Mapping[str, Any]) -> list[dict[str, Any]] | None:
    """The records of the event that started this job, or None for a run by hand."""
    trigger = params.get(TRIGGER_PARAM)
    if trigger is None:
        return None
    if isinstance(trigger, dict) and isinstance(trigger.get(BATCH_KEY), list):
        return [dict(r) for r in trigger[BATCH_KEY]]
    return [dict(trigger)]


class TriggerStateStore:
    """One JSON object per (flow, trigger node), e.g. a watermark; kept in the database."""

    def __init__(self, store: Any) -> None:
        self.store = store  # SqlRunStore (its ``transaction``)

    def get(self, flow_id: str, node_id: str) -> dict[str, Any]:
        stmt = sa.select(trigger_state.c.state).where(
            trigger_state.c.flow_id == flow_id, trigger_state.c.node_id == node_id
        )
        text = self.store.transaction(lambda c: c.execute(stmt).scalar_one_or_none(), write=False)
        return json.loads(text) if text else {}

    def set(self, flow_id: str, node_id: str, state: Mapping[str, Any]) -> None:
        text = json.dumps(dict(state), sort_keys=True, default=str)
        now = datetime.now(UTC)
        where = (trigger_state.c.flow_id == flow_id) & (trigger_state.c.node_id == node_id)

        def work(conn: sa.Connection) -> None:
            done = conn.execute(
                trigger_state.update().where(where).values(state=text, updated_at=now)
            )
            if done.rowcount == 0:
                conn.execute(
                    trigger_state.insert().values(
                        flow_id=flow_id, node_id=node_id, state=text, updated_at=now
                    )
                )

        self.store.transaction(work)

    def delete(self, flow_id: str, node_id: str) -> None:
        stmt = trigger_state.delete().where(
            trigger_state.c.flow_id == flow_id, trigger_state.c.node_id == node_id
        )
        self.store.transaction(lambda c: c.execute(stmt))


class _TriggerLog:
    """Log lines of one listener, prefixed with its flow and node, also shown by serve."""

    def __init__(self, prefix: str, echo: Callable[[str], None]) -> None:
        self.prefix = prefix
        self.echo = echo

    def _say(self, level: int, msg: str, *args: Any) -> None:
        text = f"{self.prefix}: {msg % args if args else msg}"
        log.log(level, "%s", text)
        if level >= logging.INFO:
            self.echo(text)

    def debug(self, msg: str, *args: Any) -> None:
        self._say(logging.DEBUG, msg, *args)

    def info(self, msg: str, *args: Any) -> None:
        self._say(logging.INFO, msg, *args)

    def warning(self, msg: str, *args: Any) -> None:
        self._say(logging.WARNING, msg, *args)

    def error(self, msg: str, *args: Any) -> None:
        self._say(logging.ERROR, msg, *args)


class ListenContext:
    """What a trigger's ``listen`` may use: its config, lookups, ``fire``, state, stop."""

    def __init__(
        self, host: ListenerHost, flow_id: str, node_id: str, node_type: str, config: dict
    ) -> None:
        self.host = host
        self.flow_id = flow_id
        self.node_id = node_id
        self.node_type = node_type
        self.raw_config = config  # as in the flow; ``config`` has its secrets filled in
        self.config = config
        self.stopping = threading.Event()
        self.log = _TriggerLog(f"flow {flow_id}, node {node_id} ({node_type})", host.echo)
        self.fired = 0
        self._count_lock = threading.Lock()
        self.last_error: str | None = None
        self.ready = threading.Event()  # set by the listener once it listens (tests wait)

    @property
    def work_dir(self) -> Path:
        """A folder of this trigger's own under the data directory (e.g. mail attachments)."""
        path = Path(self.host.data_dir) / "triggers" / self.flow_id / self.node_id
        path.mkdir(parents=True, exist_ok=True)
        return path

    def connection(self, name: str) -> dict[str, Any]:
        return self.host.service.store.get_connection(name)

    def secret(self, name: str) -> str:
        return self.host.service.store.get_secret(name)

    def wait(self, seconds: float) -> bool:
        """Sleep up to ``seconds``; True when the listener is to stop."""
        return self.stopping.wait(seconds)

    def fire(
        self,
        record: Mapping[str, Any] | list[Mapping[str, Any]],
        *,
        on_done: Callable[[Any], None] | None = None,
        source: str | None = None,
    ) -> int:
        """Queue one job of this flow started by ``record`` (or a batch of records); its id.

        ``on_done(job)`` is called (from the host's thread) once that job has ended.
        """
        trigger: dict[str, Any]
        if isinstance(record, list):
            trigger = {BATCH_KEY: [dict(r) for r in record]}
        else:
            trigger = dict(record)
        job = self.host.service.submit(
            self.flow_id,
            trigger=trigger,
            source=source or f"{self.node_type} ({self.node_id})",
            allow_files=False,
        )
        with self._count_lock:  # listeners may fire from several threads
            self.fired += 1
        if on_done is not None:
            self.host.watch_job(job.id, on_done)
        return int(job.id)

    def on_done(self, job_id: int, callback: Callable[[Any], None]) -> None:
        """Call ``callback(job)`` once job ``job_id`` has ended (``job`` None: it is gone),
        e.g. for a job fired before the server restarted."""
        self.host.watch_job(job_id, callback)

    def load_state(self) -> dict[str, Any]:
        return self.host.state.get(self.flow_id, self.node_id)

    def save_state(self, state: Mapping[str, Any]) -> None:
        self.host.state.set(self.flow_id, self.node_id, state)


@dataclass
class _Listener:
    key: tuple[str, str]
    digest: str
    ctx: ListenContext
    thread: threading.Thread
    started_at: float = field(default_factory=time.time)
    failures: int = 0


class ListenerHost:
    """Keeps one listener thread per enabled trigger node that declares ``listen``."""

    def __init__(
        self,
        service: Any,
        echo: Callable[[str], None] = lambda _text: None,
        *,
        is_active: Callable[[], bool] = lambda: True,
    ) -> None:
        self.service = service
        self.echo = echo
        self.is_active = is_active
        self.data_dir = Path(service.settings.data_dir)
        self.state = TriggerStateStore(service.store)
        self._listeners: dict[tuple[str, str], _Listener] = {}
        self._jobs: dict[int, list[Callable[[Any], None]]] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- which triggers ------------------------------------------------------------------
    def wanted(self) -> dict[tuple[str, str], tuple[Any, dict[str, Any]]]:
        """(flow, node) -> (spec, config) of every enabled flow's listening trigger node."""
        registry = self.service.registry
        found: dict[tuple[str, str], tuple[Any, dict[str, Any]]] = {}
        for info in self.service.flows.list():
            if not info.enabled:
                continue
            flow, _ = self.service.flows.get(info.id)
            for node in flow.get("nodes", []):
                if node.get("disabled"):
                    continue
                try:
                    spec = registry.get(node.get("type", ""))
                except FlowmillError:
                    continue
                if getattr(spec, "listen", None) is None:
                    continue
                # ${data_dir} and the flow's param defaults are filled in like in a run
                defaults = {k: v for k, v in param_defaults(flow).items() if v is not None}
                values = {**defaults, "data_dir": str(self.data_dir)}
                config = substitute(
                    spec.with_defaults(node.get("config") or {}),
                    spec.full_schema(),
                    values,
                    lambda name: {"$secret": name},  # secrets later, in the thread
                )
                found[(info.id, node["id"])] = (spec, config)
        return found

    def refresh(self) -> list[str]:
        """Start, restart and stop listeners to match the enabled flows; what changed."""
        changes: list[str] = []
        wanted = self.wanted() if self.is_active() else {}
        for key in list(self._listeners):
            current = self._listeners[key]
            spec_config = wanted.get(key)
            if spec_config is None or _digest(spec_config[1]) != current.digest:
                self._stop_one(current)
                del self._listeners[key]
                if spec_config is None:
                    changes.append(f"flow {key[0]}, node {key[1]}: stopped listening")
        for key, (spec, config) in wanted.items():
            if key not in self._listeners:
                self._listeners[key] = self._start_one(key, spec, config)
                changes.append(f"flow {key[0]}, node {key[1]} ({spec.type}): listening")
        return changes

    def _start_one(self, key: tuple[str, str], spec: Any, config: dict[str, Any]) -> _Listener:
        ctx = ListenContext(self, key[0], key[1], spec.type, config)
        listener = _Listener(key, _digest(config), ctx, threading.Thread())
        listener.thread = threading.Thread(
            target=self._run, args=(listener, spec), name=f"listen-{key[0]}-{key[1]}", daemon=True
        )
        listener.thread.start()
        return listener

    def _stop_one(self, listener: _Listener, wait: float = 5.0) -> None:
        listener.ctx.stopping.set()
        listener.thread.join(wait)
        if listener.thread.is_alive():
            listener.ctx.log.warning("did not stop within %.0f s", wait)

    def _run(self, listener: _Listener, spec: Any) -> None:
        ctx = listener.ctx
        while not ctx.stopping.is_set():
            try:
                raw = spec.with_defaults(ctx.raw_config)
                ctx.config = substitute(raw, spec.full_schema(), {}, ctx.secret)
                spec.listen(ctx)
                ctx.ready.clear()
                if ctx.stopping.is_set():
                    return
                raise FlowmillError("the listener ended by itself")
            except Exception as exc:
                if ctx.stopping.is_set():
                    return
                if ctx.ready.is_set():  # it had been listening: the back-off starts over
                    listener.failures = 0
                listener.failures += 1
                ctx.last_error = str(exc) or type(exc).__name__
                delay = BACKOFF[min(listener.failures, len(BACKOFF)) - 1]
                ctx.log.error("%s (again in %.0f s)", ctx.last_error, delay)
                ctx.ready.clear()
                if ctx.wait(delay):
                    return

    # -- jobs a listener waits for -------------------------------------------------------
    def watch_job(self, job_id: int, on_done: Callable[[Any], None]) -> None:
        with self._lock:
            self._jobs.setdefault(job_id, []).append(on_done)

    def check_jobs(self) -> None:
        """Tell listeners about their jobs that have ended."""
        with self._lock:
            waiting = list(self._jobs)
        for job_id in waiting:
            try:
                job = self.service.jobs.get(job_id)
            except FlowmillError:
                job = None
            if job is not None and job.state not in TERMINAL:
                continue
            with self._lock:
                callbacks = self._jobs.pop(job_id, [])
            for callback in callbacks:
                try:
                    callback(job)
                except Exception:
                    log.exception("trigger callback for job %s failed", job_id)

    # -- the thread ----------------------------------------------------------------------
    def step(self) -> None:
        try:
            for change in self.refresh():
                self.echo(change)
        except FlowmillError as exc:
            log.warning("trigger listeners: cannot read the flows: %s", exc)
        self.check_jobs()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="listeners", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        refreshed = written = 0.0
        while not self._stop.is_set():
            now = time.monotonic()
            try:
                if now - refreshed >= REFRESH_EVERY:
                    refreshed = now
                    for change in self.refresh():
                        self.echo(change)
                self.check_jobs()
                if now - written >= STATUS_EVERY:
                    written = now
                    self.write_status()
            except Exception:
                log.exception("trigger listeners")
            self._stop.wait(CHECK_JOBS_EVERY)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)
        for listener in list(self._listeners.values()):
            listener.ctx.stopping.set()
        for listener in list(self._listeners.values()):
            self._stop_one(listener)
        self._listeners.clear()
        _status_path(self.data_dir).unlink(missing_ok=True)

    def context(self, flow_id: str, node_id: str) -> ListenContext | None:
        """The running listener's context (tests and status)."""
        listener = self._listeners.get((flow_id, node_id))
        return listener.ctx if listener else None

    def write_status(self) -> None:
        write_status(_status_path(self.data_dir), {"listeners": self.status()})

    def status(self) -> list[dict[str, Any]]:
        return [
            {
                "flow": key[0],
                "node": key[1],
                "type": item.ctx.node_type,
                "fired": item.ctx.fired,
                "failures": item.failures,
                "error": item.ctx.last_error,
                "listening": item.ctx.ready.is_set(),
            }
            for key, item in sorted(self._listeners.items())
        ]


def _digest(config: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()
