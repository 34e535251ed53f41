"""Events are small frozen dataclasses published on one bus.

The run store recorder, the CLI's progress output, the dashboard and the Socket.IO bridge
all subscribe to the same ``EventBus``; nobody parses strings.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any, TypeVar

__all__ = [
    "Event",
    "RunStarted",
    "RunFinished",
    "NodeStarted",
    "NodeRetrying",
    "NodeFinished",
    "NodeSkipped",
    "NodeProgress",
    "NodeStatus",
    "LogEmitted",
    "CustomEvent",
    "JobChanged",
    "FlowSaved",
    "ServerHeartbeat",
    "EventBus",
]

log = logging.getLogger(__name__)


def _now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class Event:
    """Base of every event; ``at`` is when it happened (UTC)."""

    run_id: str

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["event"] = type(self).__name__
        for key, value in data.items():
            if isinstance(value, datetime):
                data[key] = value.isoformat()
        return data


@dataclass(frozen=True)
class RunStarted(Event):
    flow_id: str
    flow_hash: str
    params: dict[str, Any]
    at: datetime = field(default_factory=_now)


@dataclass(frozen=True)
class RunFinished(Event):
    flow_id: str
    state: str  # succeeded | failed | cancelled
    seconds: float
    error: str | None = None
    error_node: str | None = None
    at: datetime = field(default_factory=_now)


@dataclass(frozen=True)
class NodeStarted(Event):
    node_id: str
    node_type: str
    attempt: int
    at: datetime = field(default_factory=_now)


@dataclass(frozen=True)
class NodeRetrying(Event):
    node_id: str
    attempt: int
    delay: float
    error: str
    at: datetime = field(default_factory=_now)


@dataclass(frozen=True)
class NodeFinished(Event):
    node_id: str
    node_type: str
    state: str  # succeeded | failed
    seconds: float
    records_in: dict[str, int]
    records_out: dict[str, int]
    sample: dict[str, list[dict[str, Any]]]
    attempts: int
    error: str | None = None
    started_at: datetime | None = None
    at: datetime = field(default_factory=_now)
    last: dict[str, dict[str, Any]] = field(default_factory=dict)  # port -> last record


@dataclass(frozen=True)
class NodeSkipped(Event):
    node_id: str
    node_type: str
    reason: str
    records_in: dict[str, int] = field(default_factory=dict)
    records_out: dict[str, int] = field(default_factory=dict)
    started_at: datetime | None = None
    at: datetime = field(default_factory=_now)


@dataclass(frozen=True)
class NodeProgress(Event):
    node_id: str
    records: int
    at: datetime = field(default_factory=_now)


@dataclass(frozen=True)
class NodeStatus(Event):
    node_id: str
    text: str
    at: datetime = field(default_factory=_now)


@dataclass(frozen=True)
class LogEmitted(Event):
    node_id: str | None
    level: str
    message: str
    at: datetime = field(default_factory=_now)


@dataclass(frozen=True)
class CustomEvent(Event):
    """A node's own event (``ctx.emit_event``), e.g. "sales updated" for dashboards."""

    node_id: str
    name: str
    data: dict[str, Any]
    at: datetime = field(default_factory=_now)


@dataclass(frozen=True)
class JobChanged(Event):
    """A job's state changed (already committed to the store)."""

    job_id: int
    flow_id: str
    state: str
    previous: str | None
    error: str | None = None
    at: datetime = field(default_factory=_now)


@dataclass(frozen=True)
class FlowSaved(Event):
    """A flow was saved or removed (``removed``); open editors offer a reload.

    ``run_id`` is empty: a flow save belongs to no run.
    """

    flow_id: str
    flow_hash: str | None
    by: str | None
    removed: bool = False
    at: datetime = field(default_factory=_now)


@dataclass(frozen=True)
class ServerHeartbeat(Event):
    """A batch server is alive; ``active`` when it holds the scheduler lease."""

    server_id: str
    active: bool
    running: int
    queued: int
    at: datetime = field(default_factory=_now)


E = TypeVar("E", bound=Event)


class EventBus:
    """Synchronous publish/subscribe by event class (subclasses included).

    Handlers run in the publishing thread; a failing handler is logged and never breaks
    the run that published the event.
    """

    def __init__(self) -> None:
        self._handlers: list[tuple[type[Event], Callable[[Any], None]]] = []
        self._lock = threading.Lock()

    def subscribe(self, kind: type[E], handler: Callable[[E], None]) -> Callable[[], None]:
        """Call ``handler`` for every event of ``kind``; returns an unsubscribe function."""
        entry = (kind, handler)
        with self._lock:
            self._handlers = [*self._handlers, entry]

        def unsubscribe() -> None:
            with self._lock:
                self._handlers = [h for h in self._handlers if h is not entry]

        return unsubscribe

    def publish(self, event: Event) -> None:
        for kind, handler in self._handlers:
            if isinstance(event, kind):
                try:
                    handler(event)
                except Exception:
                    log.exception("event handler %r failed on %s", handler, type(event).__name__)
