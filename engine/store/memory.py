"""RunStore in process memory: for tests, ``flowmill run`` without a data directory, and
as the executable specification the SQL store is tested against.

It validates and normalises exactly like the SQL store (UTC datetimes, JSON round trip of
params, samples and settings), and hands out copies, so callers cannot tell them apart
except that nothing survives the process — and that nothing is encrypted, since nothing
leaves it.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime

from engine.errors import ConnectionNotFound, SecretNotFound
from engine.store.interface import (
    LogLine,
    NodeRunRecord,
    RunNotFound,
    RunRecord,
    as_utc,
    check_hash,
    check_id,
    check_limit,
    check_log_lines,
    check_run_state,
    check_settings,
    dump_json,
    normalise_node,
)

__all__ = ["MemoryRunStore"]


@dataclass
class _Run:
    record: RunRecord  # nodes kept empty here; they live in ``nodes``
    nodes: dict[str, NodeRunRecord] = field(default_factory=dict)  # insertion-ordered
    log: list[LogLine] = field(default_factory=list)


class MemoryRunStore:
    """The RunStore in dicts behind one lock."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._flows: dict[str, str] = {}
        self._runs: dict[str, _Run] = {}
        self._connections: dict[str, str] = {}  # name -> settings JSON
        self._secrets: dict[str, str] = {}

    def __enter__(self) -> MemoryRunStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Nothing to release; the data stays readable until the object is dropped."""

    def _run(self, run_id: str) -> _Run:
        try:
            return self._runs[run_id]
        except KeyError:
            raise RunNotFound(run_id) from None

    # -- flow versions -------------------------------------------------------------------

    def save_flow_version(self, flow_id: str, flow_hash: str, text: str) -> None:
        check_id(flow_id, "flow_id")
        check_hash(flow_hash)
        with self._lock:
            self._flows.setdefault(flow_hash, text)

    def get_flow_version(self, flow_hash: str) -> str | None:
        with self._lock:
            return self._flows.get(flow_hash)

    # -- runs ----------------------------------------------------------------------------

    def create_run(
        self, run_id: str, flow_id: str, flow_hash: str, params: dict, started_at: datetime
    ) -> None:
        record = RunRecord(
            run_id=check_id(run_id, "run_id"),
            flow_id=check_id(flow_id, "flow_id"),
            flow_hash=check_hash(flow_hash),
            state="running",
            params=json.loads(dump_json(params)),
            started_at=as_utc(started_at, "started_at"),
        )
        with self._lock:
            if run_id in self._runs:
                raise ValueError(f"run {run_id!r} already exists")
            self._runs[run_id] = _Run(record)

    def finish_run(
        self,
        run_id: str,
        state: str,
        finished_at: datetime,
        error: str | None = None,
        error_node: str | None = None,
    ) -> None:
        check_run_state(run_id, state)
        finished_at = as_utc(finished_at, "finished_at")
        if error_node is not None:
            check_id(error_node, "error_node")
        with self._lock:
            run = self._run(run_id)
            run.record = dataclasses.replace(
                run.record, state=state, finished_at=finished_at, error=error, error_node=error_node
            )

    def save_node_run(self, run_id: str, node: NodeRunRecord) -> None:
        node = normalise_node(node)  # already a private copy
        with self._lock:
            # Assigning to an existing key keeps its place: position of the first save.
            self._run(run_id).nodes[node.node_id] = node

    def append_log(self, run_id: str, lines: Sequence[LogLine]) -> None:
        checked = check_log_lines(run_id, lines)
        if not checked:
            return
        with self._lock:
            log = self._run(run_id).log
            start = len(log) + 1
            log.extend(dataclasses.replace(line, seq=start + i) for i, line in enumerate(checked))

    def get_run(self, run_id: str) -> RunRecord | None:
        with self._lock:
            run = self._runs.get(run_id)
            if run is None:
                return None
            return dataclasses.replace(
                copy.deepcopy(run.record), nodes=copy.deepcopy(list(run.nodes.values()))
            )

    def list_runs(self, flow_id: str | None = None, limit: int = 50) -> list[RunRecord]:
        check_limit(limit)
        with self._lock:
            records = [
                r.record
                for r in self._runs.values()
                if flow_id is None or r.record.flow_id == flow_id
            ]
            records.sort(key=lambda r: (r.started_at, r.run_id), reverse=True)
            return copy.deepcopy(records[:limit])

    def get_log(
        self, run_id: str, node_id: str | None = None, after_seq: int = 0, limit: int = 1000
    ) -> list[LogLine]:
        check_limit(limit)
        with self._lock:
            run = self._runs.get(run_id)
            if run is None:
                return []
            # Lines are frozen: sharing them is safe. seq n sits at index n - 1.
            lines = run.log[max(after_seq, 0) :]
            if node_id is not None:
                lines = [line for line in lines if line.node_id == node_id]
            return lines[:limit]

    # -- connections and secrets ---------------------------------------------------------

    def set_connection(self, name: str, settings: dict) -> None:
        text = check_settings(name, settings)
        with self._lock:
            self._connections[name] = text

    def get_connection(self, name: str) -> dict:
        with self._lock:
            text = self._connections.get(name)
        if text is None:
            raise ConnectionNotFound(name)
        return json.loads(text)

    def list_connections(self) -> list[str]:
        with self._lock:
            return sorted(self._connections)

    def delete_connection(self, name: str) -> bool:
        with self._lock:
            return self._connections.pop(name, None) is not None

    def set_secret(self, name: str, value: str) -> None:
        check_id(name, "secret name")
        if not isinstance(value, str):
            raise TypeError(f"secret {name!r}: value must be a string, not {type(value).__name__}")
        with self._lock:
            self._secrets[name] = value

    def get_secret(self, name: str) -> str:
        with self._lock:
            value = self._secrets.get(name)
        if value is None:
            raise SecretNotFound(name)
        return value

    def list_secrets(self) -> list[str]:
        with self._lock:
            return sorted(self._secrets)

    def delete_secret(self, name: str) -> bool:
        with self._lock:
            return self._secrets.pop(name, None) is not None
