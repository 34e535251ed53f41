"""Runs one flow: every node in its own thread, record batches flowing through bounded inboxes.

The executor never looks inside node bodies. It validates the flow, pins its hash, starts
the nodes in topological order, wires each output port to the inboxes of its consumers
(fan-out), counts records in and out, keeps the first records of every output as a
sample, and turns whatever a node raises into a node state: ``failed`` for the node that
broke, ``skipped`` for the nodes that stopped because of it. Independent branches run in
parallel because every node runs at once, waiting on its inputs.

Everything it observes goes out as events on the bus; the run store records them.
"""

from __future__ import annotations

import gc
import hashlib
import logging
import shutil
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import networkx as nx

from engine.errors import (
    ConnectionNotFound,
    FlowValidationError,
    NodeError,
    RunCancelled,
    SecretNotFound,
    UpstreamFailed,
    is_permanent,
)
from engine.flows.format import dump_flow
from engine.flows.params import expand_builtins, resolve_params, substitute
from engine.flows.registry import Registry
from engine.flows.validate import config_issues, validate_flow
from engine.run.events import (
    CustomEvent,
    EventBus,
    LogEmitted,
    NodeFinished,
    NodeProgress,
    NodeRetrying,
    NodeSkipped,
    NodeStarted,
    NodeStatus,
    RunFinished,
    RunStarted,
)
from engine.run.streams import Inbox, NodeTimedOut, Spool, json_safe
from engine.spec import DEFAULT_BATCH_SIZE, ERROR_PORT, NodeLogger, NodeSpec, RunContext

__all__ = ["Executor", "NodeOutcome", "RunResult"]

log = logging.getLogger(__name__)

SAMPLE_SIZE = 20
PROGRESS_EVERY = 0.5  # seconds between progress events per node
TIMEOUT_GRACE = 5.0  # seconds a timed-out node gets to stop before it is abandoned
GC_GEN0_THRESHOLD = 10_000


def _tune_gc() -> None:
    """Collect the young generation less often while records stream.

    Records are plain dicts without cycles, but every one is a tracked container: with
    the default threshold (700) the collector walks the batches waiting in the inboxes
    over and over — 15-20 % of a CSV → map → CSV run. Only ever raised, never lowered.
    """
    gen0, gen1, gen2 = gc.get_threshold()
    if gen0 < GC_GEN0_THRESHOLD:
        gc.set_threshold(GC_GEN0_THRESHOLD, gen1, gen2)


@dataclass
class NodeOutcome:
    """What happened to one node in one run (also what ``flowmill run`` prints)."""

    node_id: str
    node_type: str
    state: str = "pending"  # pending | running | succeeded | failed | skipped
    started_at: datetime | None = None
    finished_at: datetime | None = None
    seconds: float = 0.0
    records_in: dict[str, int] = field(default_factory=dict)
    records_out: dict[str, int] = field(default_factory=dict)
    sample: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    last: dict[str, dict[str, Any]] = field(default_factory=dict)  # port -> last record
    attempts: int = 0
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "node": self.node_id,
            "type": self.node_type,
            "state": self.state,
            "attempts": self.attempts,
            "records_in": dict(self.records_in),
            "records_out": dict(self.records_out),
            "seconds": round(self.seconds, 3),
            "error": self.error,
        }


@dataclass
class RunResult:
    run_id: str
    flow_id: str
    flow_hash: str
    state: str  # succeeded | failed | cancelled
    seconds: float
    nodes: dict[str, NodeOutcome]
    error: str | None = None
    error_node: str | None = None

    @property
    def ok(self) -> bool:
        return self.state == "succeeded"

    def to_dict(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "flow": self.flow_id,
            "flow_hash": self.flow_hash,
            "state": self.state,
            "seconds": round(self.seconds, 3),
            "error": self.error,
            "error_node": self.error_node,
            "nodes": [n.to_dict() for n in self.nodes.values()],
        }


class _NodeRun:
    """Mutable bookkeeping for one node while the run is going."""

    def __init__(self, node: dict[str, Any], spec: NodeSpec | None) -> None:
        self.node = node
        self.spec = spec
        self.outcome = NodeOutcome(node_id=node["id"], node_type=node["type"])
        self.inboxes: dict[str, Inbox] = {}
        self.consumers: dict[str, list[Inbox]] = {}
        self.emitted = False
        self.thread: threading.Thread | None = None
        self.deadline: float | None = None
        self.done = threading.Event()
        self.last_progress = 0.0


class _Run:
    """One run: what every node thread shares (inputs, the abort switch, the first failure)."""

    def __init__(
        self,
        run_id: str,
        flow: dict[str, Any],
        values: dict[str, Any],
        builtins: dict[str, Any],
        work_dir: Path,
        flow_dir: Path | None,
        cancel: threading.Event,
    ) -> None:
        self.run_id = run_id
        self.flow = flow
        self.values = values
        self.placeholders = {**builtins, **values}
        self.work_dir = work_dir
        self.flow_dir = flow_dir
        self.cancel = cancel
        self.abort = threading.Event()
        self.why: list[str] = []
        self.failed_node: str | None = None
        self.error: str | None = None
        self.lock = threading.Lock()

    def fail(self, node_id: str, message: str) -> None:
        with self.lock:
            if self.failed_node is None and not self.cancel.is_set():
                self.failed_node = node_id
                self.error = message
                self.why[:] = [f"node {node_id} failed"]
        self.abort.set()

    def stop_for_cancel(self) -> None:
        with self.lock:
            if not self.why:
                self.why[:] = ["run cancelled"]
        self.abort.set()


class Executor:
    """Runs flows. Built once with its collaborators, used for many runs.

    ``connection_lookup``/``secret_lookup`` resolve named connections and secrets (the
    store's, usually). ``store`` is only used to pin the flow text by hash; node and run
    state reach the store through the bus.
    """

    def __init__(
        self,
        registry: Registry,
        bus: EventBus | None = None,
        *,
        data_dir: Path,
        store: Any = None,
        batch_size: int = DEFAULT_BATCH_SIZE,
        queue_depth: int = 4,
        connection_lookup: Callable[[str], dict[str, Any]] | None = None,
        secret_lookup: Callable[[str], str] | None = None,
    ) -> None:
        self.registry = registry
        self.bus = bus or EventBus()
        self.data_dir = Path(data_dir)
        self.store = store
        self.batch_size = batch_size
        self.queue_depth = queue_depth
        self.connection_lookup = connection_lookup
        self.secret_lookup = secret_lookup
        self._known: set[str] = set()  # hashes of flow versions validated and pinned

    # ------------------------------------------------------------------ public
    def run(
        self,
        flow: dict[str, Any],
        params: Mapping[str, Any] | None = None,
        *,
        run_id: str | None = None,
        cancel_event: threading.Event | None = None,
        flow_dir: Path | None = None,
    ) -> RunResult:
        """Validate and run ``flow`` once; returns when every node has finished.

        Raises:
            FlowValidationError: the flow is not valid (nothing ran).
            ParamError: a param is missing or has the wrong type (nothing ran).
        """
        text = dump_flow(flow) if isinstance(flow, dict) else ""
        digest = hashlib.sha256(text.encode("utf-8")).hexdigest()
        if digest not in self._known:
            # a flow version is validated and pinned once per process, not once per run
            issues = validate_flow(flow, self.registry)
            if issues:
                raise FlowValidationError(
                    flow.get("id") if isinstance(flow, dict) else None, issues
                )
            if self.store is not None:
                self.store.save_flow_version(flow["id"], digest, text)
            self._known.add(digest)
        values = resolve_params(flow, params)
        _tune_gc()
        run_id = run_id or uuid.uuid4().hex
        work_dir = self.data_dir / "work" / run_id
        work_dir.mkdir(parents=True, exist_ok=True)
        builtins = {
            "data_dir": str(self.data_dir),
            "flow_dir": str(flow_dir or Path.cwd()),
            "work_dir": str(work_dir),
            "run_id": run_id,
            "today": date.today().isoformat(),
        }
        values = expand_builtins(values, builtins)
        run = _Run(
            run_id, flow, values, builtins, work_dir, flow_dir, cancel_event or threading.Event()
        )
        started = time.monotonic()
        self.bus.publish(RunStarted(run_id, flow["id"], digest, json_safe(values)))

        nodes = self._prepare(flow, run)
        for node_run in nodes.values():
            thread = threading.Thread(
                target=self._node_thread,
                args=(run, node_run),
                name=f"flowmill-{node_run.outcome.node_id}",
                daemon=True,
            )
            node_run.thread = thread
            thread.start()
        self._wait(run, nodes)

        seconds = time.monotonic() - started
        if run.cancel.is_set() and run.failed_node is None:
            state = "cancelled"
        elif run.failed_node is not None or any(
            n.outcome.state == "failed" for n in nodes.values()
        ):
            state = "failed"
        else:
            state = "succeeded"
        error_node = run.failed_node
        error = (
            run.error if state == "failed" else ("run cancelled" if state == "cancelled" else None)
        )
        if state == "failed" and error_node is None:
            first = next(n for n in nodes.values() if n.outcome.state == "failed")
            error_node, error = first.outcome.node_id, first.outcome.error
        self.bus.publish(RunFinished(run_id, flow["id"], state, seconds, error, error_node))
        shutil.rmtree(work_dir / ".spool", ignore_errors=True)
        if work_dir.exists() and not any(work_dir.iterdir()):
            work_dir.rmdir()
        return RunResult(
            run_id=run_id,
            flow_id=flow["id"],
            flow_hash=digest,
            state=state,
            seconds=seconds,
            nodes={nid: n.outcome for nid, n in nodes.items()},
            error=error,
            error_node=error_node,
        )

    # ------------------------------------------------------------------ wiring
    def _prepare(self, flow: dict[str, Any], run: _Run) -> dict[str, _NodeRun]:
        graph = nx.DiGraph()
        by_id = {n["id"]: n for n in flow["nodes"]}
        graph.add_nodes_from(sorted(by_id))
        for edge in flow["edges"]:
            graph.add_edge(edge["source"], edge["target"])
        order = list(nx.lexicographical_topological_sort(graph))
        nodes = {nid: _NodeRun(by_id[nid], self.registry.get(by_id[nid]["type"])) for nid in order}
        producers: dict[tuple[str, str], int] = {}
        for edge in flow["edges"]:
            key = (edge["target"], edge["target_port"])
            producers[key] = producers.get(key, 0) + 1
        for (target, port), count in producers.items():
            nodes[target].inboxes[port] = Inbox(count, self.queue_depth, run.abort, run.why)
        for edge in flow["edges"]:
            inbox = nodes[edge["target"]].inboxes[edge["target_port"]]
            nodes[edge["source"]].consumers.setdefault(edge["source_port"], []).append(inbox)
        return nodes

    def _wait(self, run: _Run, nodes: dict[str, _NodeRun]) -> None:
        """Join the node threads; enforce cancellation and hard timeouts meanwhile."""
        pending = list(nodes.values())
        while pending:
            if run.cancel.is_set() and not run.abort.is_set():
                run.stop_for_cancel()
            now = time.monotonic()
            still = []
            for node_run in pending:
                if node_run.done.is_set():
                    continue
                if node_run.deadline is not None and now > node_run.deadline + TIMEOUT_GRACE:
                    # the node ignores its deadline (blocked in a call): give up on it
                    message = f"timed out after {node_run.node.get('config', {}).get('timeout')} s"
                    self._finish_failed(run, node_run, message)
                    node_run.done.set()
                    continue
                still.append(node_run)
            pending = still
            if pending:
                pending[0].done.wait(0.05)

    # ------------------------------------------------------------------ one node
    def _node_thread(self, run: _Run, node_run: _NodeRun) -> None:
        try:
            self._run_node(run, node_run)
        except BaseException as exc:  # the last line of defence: never lose a thread silently
            log.exception("node %s crashed the executor", node_run.outcome.node_id)
            self._finish_failed(run, node_run, f"internal error: {exc!r}")
        finally:
            for inboxes in node_run.consumers.values():
                for inbox in inboxes:
                    inbox.close()
            # a node may finish without reading all its input: never leave a producer
            # waiting for room in an inbox nobody will empty
            for inbox in node_run.inboxes.values():
                inbox.consumer_gone = True
            node_run.done.set()

    def _run_node(self, run: _Run, node_run: _NodeRun) -> None:
        spec = node_run.spec
        assert spec is not None
        outcome = node_run.outcome
        node_id = outcome.node_id
        if node_run.node.get("disabled"):
            self._finish_skipped(run, node_run, "node is disabled")
            return
        try:
            inboxes = list(node_run.inboxes.values())
            if len(inboxes) == 1:
                inboxes[0].wait_ready()
            elif inboxes:
                # one ready input is enough: waiting for all would deadlock a diamond
                # (read → join.left and read → aggregate → join.right), where the first
                # input fills up before the other can produce anything
                while not any(inbox.poll_ready(0.01) for inbox in inboxes):
                    pass
        except UpstreamFailed as exc:
            self._finish_skipped(run, node_run, str(exc))
            return

        raw_config = spec.with_defaults(node_run.node.get("config", {}))
        schema = spec.full_schema()
        placeholders = run.placeholders
        # the run's param values can break a schema the defaults satisfied: check again,
        # with secrets masked so no secret can end up in an error message
        masked = substitute(raw_config, schema, placeholders, lambda _: "***")
        problems = config_issues(node_id, masked, schema)
        if problems:
            self._finish_failed(
                run,
                node_run,
                "; ".join(f"{p.field}: {p.message}" if p.field else p.message for p in problems),
            )
            return
        try:
            config = substitute(raw_config, schema, placeholders, self._secret)
        except SecretNotFound as exc:
            self._finish_failed(run, node_run, str(exc))
            return
        retries = int(config.get("retries", 0))
        timeout = config.get("timeout")
        spools: dict[str, Spool] = {}
        if retries and node_run.inboxes:
            spool_dir = run.work_dir / ".spool"
            spool_dir.mkdir(parents=True, exist_ok=True)
            spools = {
                port: Spool(iter(inbox), spool_dir / f"{node_id}.{port}.pickle")
                for port, inbox in node_run.inboxes.items()
            }

        attempt = 0
        while True:
            attempt += 1
            outcome.attempts = attempt
            outcome.state = "running"
            outcome.started_at = outcome.started_at or datetime.now(UTC)
            begun = time.monotonic()
            node_run.deadline = begun + float(timeout) if timeout else None
            for inbox in node_run.inboxes.values():
                inbox.deadline = node_run.deadline
            self.bus.publish(NodeStarted(run.run_id, node_id, spec.type, attempt))
            try:
                self._attempt(run, node_run, spec, config, spools)
            except BaseException as exc:
                outcome.seconds += time.monotonic() - begun
                stopped = self._stopped_by_run(run, exc)
                if stopped is not None:
                    self._finish_skipped(run, node_run, stopped)
                    return
                message = self._describe(node_run, exc)
                permanent = is_permanent(exc)
                can_retry = attempt <= retries and not node_run.emitted and not permanent
                if can_retry and not run.abort.is_set():
                    delay = float(config.get("retry_delay", 1)) * (2 ** (attempt - 1))
                    self._log(run, node_id, "WARNING", f"attempt {attempt} failed: {message}")
                    self.bus.publish(NodeRetrying(run.run_id, node_id, attempt, delay, message))
                    if run.abort.wait(delay):
                        self._finish_skipped(run, node_run, run.why[0] if run.why else "stopped")
                        return
                    outcome.records_out.clear()
                    outcome.sample.clear()
                    outcome.last.clear()
                    continue
                if attempt <= retries and permanent:
                    message += " (not retried: a permanent error)"
                elif attempt <= retries and node_run.emitted:
                    message += " (not retried: records had already passed downstream)"
                self._finish_failed(run, node_run, message)
                return
            outcome.seconds += time.monotonic() - begun
            break
        for spool in spools.values():
            spool.discard()
        self._finish(run, node_run, "succeeded")

    def _attempt(
        self,
        run: _Run,
        node_run: _NodeRun,
        spec: NodeSpec,
        config: dict[str, Any],
        spools: dict[str, Spool],
    ) -> None:
        outcome = node_run.outcome
        node_id = outcome.node_id
        error_inboxes = node_run.consumers.get(ERROR_PORT, [])
        rejected: list[dict[str, Any]] = []
        reject_lock = threading.Lock()
        batch_size = self.batch_size

        deliver_lock = threading.Lock()  # rejects may come from several pump threads

        def flush_rejected() -> None:
            with reject_lock:
                batch = rejected[:]
                rejected.clear()
            if batch:
                with deliver_lock:
                    self._deliver(run, node_run, ERROR_PORT, batch, error_inboxes)

        def reject_sink(record: dict[str, Any]) -> None:
            with reject_lock:
                rejected.append(record)
                full = len(rejected) >= batch_size
            if full:
                flush_rejected()

        ctx = RunContext(
            run_id=run.run_id,
            flow_id=run.flow["id"],
            node_id=node_id,
            node_type=spec.type,
            params=run.values,
            work_dir=run.work_dir,
            data_dir=self.data_dir,
            flow_dir=run.flow_dir,
            logger=NodeLogger(lambda level, text: self._log(run, node_id, level, text)),
            on_error=config.get("on_error", "fail"),
            batch_size=batch_size,
            cancel_event=run.abort,
            deadline=node_run.deadline,
            reject_sink=reject_sink,
            connection_lookup=self._connection,
            secret_lookup=self._secret,
            event_sink=lambda name, data: self.bus.publish(
                CustomEvent(run.run_id, node_id, name, json_safe(data))
            ),
            status_sink=lambda text: self.bus.publish(NodeStatus(run.run_id, node_id, text)),
        )
        inputs: dict[str, Any] = {
            port: spools[port].reader() if port in spools else iter(inbox)
            for port, inbox in node_run.inboxes.items()
        }
        outputs = spec.run(ctx, config, inputs)
        if not isinstance(outputs, dict):
            raise NodeError(
                node_id, f"run() returned {type(outputs).__name__}, not a dict of ports"
            )
        unknown = set(outputs) - set(spec.all_outputs)
        if unknown:
            raise NodeError(node_id, f"run() returned unknown ports {sorted(unknown)}")
        ports = list(outputs.items())
        extra_threads: list[threading.Thread] = []
        errors: list[BaseException] = []

        def pump_guarded(port: str, stream: Any) -> None:
            try:
                self._pump(run, node_run, port, stream)
            except BaseException as exc:
                errors.append(exc)

        for port, stream in ports[1:]:
            t = threading.Thread(target=pump_guarded, args=(port, stream), daemon=True)
            t.start()
            extra_threads.append(t)
        if ports:
            pump_guarded(*ports[0])
        for t in extra_threads:
            t.join()
        if errors:
            raise errors[0]
        # inputs the node did not read to the end still count what it did read
        for port, inbox in node_run.inboxes.items():
            outcome.records_in[port] = inbox.records
        flush_rejected()

    def _pump(self, run: _Run, node_run: _NodeRun, port: str, stream: Any) -> None:
        """Drain one output port: count, sample, hand each batch to every consumer."""
        consumers = node_run.consumers.get(port, [])
        node_id = node_run.outcome.node_id
        for batch in stream:
            if not isinstance(batch, list):
                raise NodeError(
                    node_id, f"port {port!r} produced {type(batch).__name__}, not a list of records"
                )
            self._deliver(run, node_run, port, batch, consumers)
            if node_run.deadline is not None and time.monotonic() > node_run.deadline:
                raise NodeTimedOut()
            if run.abort.is_set():
                raise UpstreamFailed(run.why[0] if run.why else "run stopped")

    def _deliver(
        self,
        run: _Run,
        node_run: _NodeRun,
        port: str,
        batch: list[dict[str, Any]],
        consumers: list[Inbox],
    ) -> None:
        outcome = node_run.outcome
        n = len(batch)
        outcome.records_out[port] = outcome.records_out.get(port, 0) + n
        sample = outcome.sample.setdefault(port, [])
        if len(sample) < SAMPLE_SIZE:
            sample.extend(json_safe(r) for r in batch[: SAMPLE_SIZE - len(sample)])
        if n:  # a copy: consumers may change the records they get
            outcome.last[port] = json_safe(batch[-1])
        if n and consumers:
            node_run.emitted = True
            for inbox in consumers:
                inbox.put(batch)
        for p, inbox in node_run.inboxes.items():
            outcome.records_in[p] = inbox.records
        now = time.monotonic()
        if now - node_run.last_progress >= PROGRESS_EVERY:
            node_run.last_progress = now
            total = sum(outcome.records_out.values())
            self.bus.publish(NodeProgress(run.run_id, outcome.node_id, total))

    # ------------------------------------------------------------------ outcomes
    @staticmethod
    def _stopped_by_run(run: _Run, exc: BaseException) -> str | None:
        """Why the node stopped, if it stopped because the run did (not its own fault)."""
        chain: BaseException | None = exc
        while chain is not None:
            if isinstance(chain, UpstreamFailed):
                return str(chain)
            if isinstance(chain, RunCancelled) and run.abort.is_set():
                return run.why[0] if run.why else "run stopped"
            chain = chain.__cause__ or chain.__context__
        return None

    @staticmethod
    def _describe(node_run: _NodeRun, exc: BaseException) -> str:
        timeout = node_run.node.get("config", {}).get("timeout")
        past_deadline = node_run.deadline is not None and time.monotonic() > node_run.deadline
        if isinstance(exc, NodeTimedOut) or (past_deadline and isinstance(exc, RunCancelled)):
            return f"timed out after {timeout} s"
        if isinstance(exc, NodeError) and exc.node == node_run.outcome.node_id:
            return exc.message
        text = str(exc) or type(exc).__name__
        if isinstance(exc, ConnectionNotFound | SecretNotFound):
            return text
        return f"{type(exc).__name__}: {text}" if not isinstance(exc, NodeError) else text

    def _finish(self, run: _Run, node_run: _NodeRun, state: str, error: str | None = None) -> None:
        outcome = node_run.outcome
        if outcome.finished_at is not None:
            return  # already finished (e.g. abandoned after a hard timeout)
        outcome.state = state
        outcome.error = error
        outcome.finished_at = datetime.now(UTC)
        for port, inbox in node_run.inboxes.items():
            outcome.records_in[port] = inbox.records
        self.bus.publish(
            NodeFinished(
                run.run_id,
                outcome.node_id,
                outcome.node_type,
                state,
                outcome.seconds,
                dict(outcome.records_in),
                dict(outcome.records_out),
                {k: list(v) for k, v in outcome.sample.items()},
                outcome.attempts,
                error,
                outcome.started_at,
                last=dict(outcome.last),
            )
        )

    def _finish_failed(self, run: _Run, node_run: _NodeRun, message: str) -> None:
        if node_run.outcome.finished_at is not None:
            return
        self._log(run, node_run.outcome.node_id, "ERROR", message)
        run.fail(node_run.outcome.node_id, message)
        self._finish(run, node_run, "failed", message)

    def _finish_skipped(self, run: _Run, node_run: _NodeRun, reason: str) -> None:
        outcome = node_run.outcome
        if outcome.finished_at is not None:
            return
        outcome.state = "skipped"
        outcome.error = reason
        outcome.finished_at = datetime.now(UTC)
        for port, inbox in node_run.inboxes.items():
            outcome.records_in[port] = inbox.records
        self.bus.publish(
            NodeSkipped(
                run.run_id,
                outcome.node_id,
                outcome.node_type,
                reason,
                dict(outcome.records_in),
                dict(outcome.records_out),
                outcome.started_at,
            )
        )

    # ------------------------------------------------------------------ helpers
    def _log(self, run: _Run, node_id: str | None, level: str, message: str) -> None:
        self.bus.publish(LogEmitted(run.run_id, node_id, level, message))

    def _connection(self, name: str) -> dict[str, Any]:
        if self.connection_lookup is None:
            raise ConnectionNotFound(name)
        return self.connection_lookup(name)

    def _secret(self, name: str) -> str:
        if self.secret_lookup is None:
            raise SecretNotFound(name)
        return self.secret_lookup(name)
