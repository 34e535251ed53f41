"""Writes what the bus reports into the run store.

Writes happen at run and node boundaries and for batches of log lines — never per
record — so recording costs the same for ten rows and for ten million.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from engine.events import (
    EventBus,
    LogEmitted,
    NodeFinished,
    NodeSkipped,
    NodeStarted,
    RunFinished,
    RunStarted,
)
from engine.store import LogLine, NodeRunRecord, RunStore

__all__ = ["RunRecorder"]

LOG_FLUSH_LINES = 200


class RunRecorder:
    """Subscribes a store to a bus; ``close()`` unsubscribes."""

    def __init__(self, store: RunStore, bus: EventBus) -> None:
        self.store = store
        self._pending: dict[str, list[LogLine]] = {}
        self._lock = threading.Lock()
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

    def _run_started(self, event: RunStarted) -> None:
        self.store.create_run(event.run_id, event.flow_id, event.flow_hash, event.params, event.at)

    def _node_started(self, event: NodeStarted) -> None:
        self.store.save_node_run(
            event.run_id,
            NodeRunRecord(
                node_id=event.node_id,
                node_type=event.node_type,
                state="running",
                started_at=event.at,
                attempts=event.attempt,
            ),
        )

    def _node_finished(self, event: NodeFinished) -> None:
        self._flush(event.run_id)
        self.store.save_node_run(
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
                error=event.error,
                attempts=event.attempts,
            ),
        )

    def _node_skipped(self, event: NodeSkipped) -> None:
        self.store.save_node_run(
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
