"""The run store: what Flowmill keeps about flow versions, runs, node runs, logs,
connections and secrets.

``RunStore`` is the one interface; ``engine.store.sql.SqlRunStore`` (SQLite, PostgreSQL,
MariaDB) and ``engine.store.memory.MemoryRunStore`` implement it, and one test suite runs
against both; ``engine.store.factory.open_store`` chooses one (this module imports
neither). The executor writes at node start/end and per batch of log lines, never per
record, so every call is one short transaction and safe to make from several threads.

The helpers below (``as_utc``, ``dump_json``, ``normalise_node`` …) are shared by both
implementations so they accept and return exactly the same values.

Example::

    >>> from datetime import UTC, datetime
    >>> from pathlib import Path
    >>> from engine.store.factory import open_store
    >>> store = open_store("memory", Path("."))
    >>> store.create_run("r1", "nightly", "ab12", {"markup": 1.19}, datetime.now(UTC))
    >>> store.get_run("r1").state
    'running'
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time
from typing import Any, Protocol, runtime_checkable

from engine.errors import FlowmillError

__all__ = [
    "RUN_STATES",
    "NODE_STATES",
    "MAX_ID_LENGTH",
    "LogLine",
    "NodeRunRecord",
    "RunRecord",
    "RunNotFound",
    "RunStore",
]

RUN_STATES = ("running", "succeeded", "failed", "cancelled")
FINAL_RUN_STATES = ("succeeded", "failed", "cancelled")
NODE_STATES = ("pending", "running", "succeeded", "failed", "skipped")
# Ids and names are VARCHAR(200) in SQL; checked up front so every backend (and the memory
# store) rejects the same values instead of SQLite silently accepting what MariaDB refuses.
MAX_ID_LENGTH = 200
MAX_HASH_LENGTH = 64  # sha256 hex
MAX_LEVEL_LENGTH = 20


class RunNotFound(FlowmillError, LookupError):
    """A write named a run that was never created (``create_run`` first)."""

    def __init__(self, run_id: str) -> None:
        super().__init__(f"run {run_id!r} does not exist (create_run must come first)")
        self.run_id = run_id


@dataclass(frozen=True)
class LogLine:
    """One line of a run's log; ``seq`` is assigned by the store and increases per run."""

    run_id: str
    node_id: str | None
    ts: datetime
    level: str
    message: str
    seq: int = 0


@dataclass
class NodeRunRecord:
    """What one node did in one run; ``sample`` holds the first records per output port."""

    node_id: str
    node_type: str
    state: str  # pending|running|succeeded|failed|skipped
    started_at: datetime | None = None
    finished_at: datetime | None = None
    seconds: float | None = None
    records_in: dict[str, int] = field(default_factory=dict)
    records_out: dict[str, int] = field(default_factory=dict)
    sample: dict[str, list[dict]] = field(default_factory=dict)
    error: str | None = None
    attempts: int = 0
    status: str | None = None
    last: dict[str, dict] = field(default_factory=dict)  # the last record per output port


@dataclass
class RunRecord:
    """One run of a pinned flow version; ``nodes`` in the order they were first saved."""

    run_id: str
    flow_id: str
    flow_hash: str
    state: str  # running|succeeded|failed|cancelled
    params: dict
    started_at: datetime
    finished_at: datetime | None = None
    error: str | None = None
    error_node: str | None = None
    nodes: list[NodeRunRecord] = field(default_factory=list)


@runtime_checkable
class RunStore(Protocol):
    """Everything the executor, job queue, CLI and API keep between processes."""

    def save_flow_version(self, flow_id: str, flow_hash: str, text: str) -> None:
        """Pin a flow text by its hash; saving the same hash again is a no-op."""

    def get_flow_version(self, flow_hash: str) -> str | None: ...

    def create_run(
        self, run_id: str, flow_id: str, flow_hash: str, params: dict, started_at: datetime
    ) -> None:
        """Start a run in state ``running``; a duplicate ``run_id`` raises ValueError."""

    def finish_run(
        self,
        run_id: str,
        state: str,
        finished_at: datetime,
        error: str | None = None,
        error_node: str | None = None,
    ) -> None:
        """Set a final state (succeeded|failed|cancelled); raises RunNotFound."""

    def save_node_run(self, run_id: str, node: NodeRunRecord) -> None:
        """Insert or replace by (run_id, node_id), keeping the first insert's position."""

    def append_log(self, run_id: str, lines: Sequence[LogLine]) -> None:
        """Append a batch of lines; the store numbers them 1, 2, 3 … per run."""

    def get_run(self, run_id: str) -> RunRecord | None: ...

    def list_runs(self, flow_id: str | None = None, limit: int = 50) -> list[RunRecord]:
        """Newest first, without node records."""

    def get_log(
        self, run_id: str, node_id: str | None = None, after_seq: int = 0, limit: int = 1000
    ) -> list[LogLine]:
        """Lines with seq > after_seq in seq order; ``node_id`` None means every line."""

    def set_connection(self, name: str, settings: dict) -> None: ...

    def get_connection(self, name: str) -> dict:
        """Raises engine.errors.ConnectionNotFound."""

    def list_connections(self) -> list[str]: ...

    def delete_connection(self, name: str) -> bool: ...

    def set_secret(self, name: str, value: str) -> None: ...

    def get_secret(self, name: str) -> str:
        """Raises engine.errors.SecretNotFound."""

    def list_secrets(self) -> list[str]: ...

    def delete_secret(self, name: str) -> bool: ...

    def close(self) -> None: ...


# -- helpers shared by the implementations -------------------------------------------------


def as_utc(value: datetime, what: str = "datetime") -> datetime:
    """Aware datetime in UTC; a naive one is refused because its zone would be a guess."""
    if not isinstance(value, datetime):
        raise TypeError(f"{what} must be a datetime, not {type(value).__name__}")
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(
            f"{what} {value.isoformat()} is naive: pass an aware datetime (e.g. datetime.now(UTC))"
        )
    return value.astimezone(UTC)


def opt_utc(value: datetime | None, what: str = "datetime") -> datetime | None:
    return None if value is None else as_utc(value, what)


def check_id(value: str, what: str, max_length: int = MAX_ID_LENGTH) -> str:
    """Refuse ids SQL would truncate or reject, identically on every backend."""
    if not isinstance(value, str) or not value:
        raise ValueError(f"{what} must be a non-empty string, got {value!r}")
    if len(value) > max_length:
        raise ValueError(f"{what} {value[:40]!r}… is longer than {max_length} characters")
    return value


def check_hash(value: str) -> str:
    return check_id(value, "flow_hash", MAX_HASH_LENGTH)


def _lenient(value: Any) -> Any:
    # Samples are for display in the inspector: a datetime or Decimal in a record must not
    # fail the node save, so it is stored as text.
    if isinstance(value, datetime | date | time):
        return value.isoformat()
    if isinstance(value, bytes | bytearray):
        return f"<{len(value)} bytes>"
    return str(value)


def dump_json(value: Any, *, lenient: bool = False) -> str:
    """The one JSON encoding of stored values (UTF-8 text, umlauts kept as they are)."""
    return json.dumps(
        value, ensure_ascii=False, sort_keys=True, default=_lenient if lenient else None
    )


def normalise_node(node: NodeRunRecord) -> NodeRunRecord:
    """Validated copy of ``node`` exactly as a store hands it back (UTC, JSON round trip)."""
    if not isinstance(node, NodeRunRecord):
        raise TypeError(f"expected a NodeRunRecord, not {type(node).__name__}")
    check_id(node.node_id, "node_id")
    check_id(node.node_type, "node_type")
    if node.state not in NODE_STATES:
        raise ValueError(
            f"node {node.node_id!r}: state {node.state!r} is not one of {', '.join(NODE_STATES)}"
        )
    return dataclasses.replace(
        node,
        started_at=opt_utc(node.started_at, f"node {node.node_id!r} started_at"),
        finished_at=opt_utc(node.finished_at, f"node {node.node_id!r} finished_at"),
        seconds=None if node.seconds is None else float(node.seconds),
        records_in=json.loads(dump_json(dict(node.records_in))),
        records_out=json.loads(dump_json(dict(node.records_out))),
        sample=json.loads(dump_json(dict(node.sample), lenient=True)),
        last=json.loads(dump_json(dict(node.last), lenient=True)),
        attempts=int(node.attempts),
    )


def check_run_state(run_id: str, state: str) -> str:
    if state not in FINAL_RUN_STATES:
        raise ValueError(
            f"run {run_id!r}: final state {state!r} is not one of {', '.join(FINAL_RUN_STATES)}"
        )
    return state


def check_log_lines(run_id: str, lines: Sequence[LogLine]) -> list[LogLine]:
    """Validated lines with UTC timestamps; a line of another run is a caller bug."""
    out = []
    for line in lines:
        if line.run_id != run_id:
            raise ValueError(f"log line of run {line.run_id!r} appended to run {run_id!r}")
        if line.node_id is not None:
            check_id(line.node_id, "node_id")
        check_id(line.level, "log level", MAX_LEVEL_LENGTH)
        out.append(dataclasses.replace(line, ts=as_utc(line.ts, "log line ts")))
    return out


def check_settings(name: str, settings: Mapping[str, Any]) -> str:
    """Connection settings as JSON text; they must be JSON so every store keeps them alike."""
    check_id(name, "connection name")
    if not isinstance(settings, Mapping):
        raise TypeError(
            f"connection {name!r}: settings must be a dict, not {type(settings).__name__}"
        )
    return dump_json(dict(settings))


def check_limit(limit: int) -> int:
    if limit < 0:
        raise ValueError(f"limit must be >= 0, got {limit}")
    return limit
