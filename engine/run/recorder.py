"""Writes what the bus reports into the run store.

Writes happen at run and node boundaries and for batches of log lines — never per
record — so recording costs the same for ten rows and for ten million. A node's
"running" state is written only if it is still running a moment later: a node that
finishes sooner costs one write, not two, which matters when thousands of small jobs run.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from engine.run.events import (
    EventBus,
    LogEmitted,
    NodeFinished,
    NodeSkipped,
    NodeStarted,
    RunFinished,
    RunStarted,
)
from engine.store.interface import LogLine, NodeRunRecord, RunStore

__all__ = ["RunRecorder"]

LOG_FLUSH_LINES = 200
START_DELAY = 0.25  # seconds before a started node is written as "running"

log = logging.getLogger(__name__)


class RunRecorder:
    """Subscribes a store to a bus; ``close()`` unsubscribes."""

    def __init__(self, store: RunStore, bus: EventBus) -> None:
        self.store = store
        self._pending: dict[str, list[LogLine]] = {}
        self._lock = threading.Lock()
        # (run, node) -> (when to write it, the "running" record)
        self._starting: dict[tuple[str, str], tuple[float, NodeRunRecord]] = {}
        self._write_lock = threading.Lock()  # a "running" write never lands after the end
        self._closed = threading.Event()
        self._flusher: threading.Thread | None = None
        self._unsubscribe: list[Callable[[], None]] = [
            bus.subscribe(RunStarted, self._run_started),
            bus.subscribe(NodeStarted, self._node_started),
            bus.subscribe(NodeFinished, self._node_finished),
            bus.subscribe(NodeSkipped, self._node_skipped),
            bus.subscribe(LogEmitted, self._log),
            bus.subscribe(RunFinished, self._run_finished),
        ]

    def close(self) -> None:
        for unsubscribe in self._unsubscribe:
            unsubscribe()
        self._closed.set()
        if self._flusher is not None:
            self._flusher.join(2)
        self._write_starts(all_of_them=True)

    def _flush_starts(self) -> None:
        while not self._closed.wait(0.05):
            self._write_starts()

    def _write_starts(self, all_of_them: bool = False) -> None:
        now = time.monotonic()
        with self._write_lock:
            with self._lock:
                due = [k for k, (t, _) in self._starting.items() if all_of_them or t <= now]
                records = [(k[0], self._starting.pop(k)[1]) for k in due]
            for run_id, record in records:
                try:
                    self.store.save_node_run(run_id, record)
                except Exception:
                    log.exception("recording node %s of run %s failed", record.node_id, run_id)

    def _run_started(self, event: RunStarted) -> None:
        self.store.create_run(event.run_id, event.flow_id, event.flow_hash, event.params, event.at)

    def _node_started(self, event: NodeStarted) -> None:
        record = NodeRunRecord(
            node_id=event.node_id,
            node_type=event.node_type,
            state="running",
            started_at=event.at,
            attempts=event.attempt,
        )
        with self._lock:
            self._starting[(event.run_id, event.node_id)] = (
                time.monotonic() + START_DELAY,
                record,
            )
            if self._flusher is None:
                self._flusher = threading.Thread(
                    target=self._flush_starts, name="flowmill-recorder", daemon=True
                )
                self._flusher.start()

    def _ended(self, run_id: str, record: NodeRunRecord) -> None:
        """Write a node's final record; a pending "running" record is dropped."""
        with self._write_lock:
            with self._lock:
                self._starting.pop((run_id, record.node_id), None)
            self.store.save_node_run(run_id, record)

    def _node_finished(self, event: NodeFinished) -> None:
        self._flush(event.run_id)
        self._ended(
            event.run_id,
            NodeRunRecord(
                node_id=event.node_id,
                node_type=event.node_type,
                state=event.state,
                started_at=event.started_at,
                finished_at=event.at,
                seconds=event.seconds,
                records_in=event.records_in,
                records_out=event.records_out,
                sample=event.sample,
                last=event.last,
                error=event.error,
                attempts=event.attempts,
            ),
        )

    def _node_skipped(self, event: NodeSkipped) -> None:
        self._ended(
            event.run_id,
            NodeRunRecord(
                node_id=event.node_id,
                node_type=event.node_type,
                state="skipped",
                started_at=event.started_at,
                finished_at=event.at,
                records_in=event.records_in,
                records_out=event.records_out,
                error=event.reason,
            ),
        )

    def _log(self, event: LogEmitted) -> None:
        line = LogLine(event.run_id, event.node_id, event.at, event.level, event.message)
        with self._lock:
            lines = self._pending.setdefault(event.run_id, [])
            lines.append(line)
            full = len(lines) >= LOG_FLUSH_LINES
        if full:
            self._flush(event.run_id)

    def _flush(self, run_id: str) -> None:
        with self._lock:
            lines = self._pending.pop(run_id, [])
        if lines:
            self.store.append_log(run_id, lines)

    def _run_finished(self, event: RunFinished) -> None:
        self._flush(event.run_id)
        self.store.finish_run(event.run_id, event.state, event.at, event.error, event.error_node)
