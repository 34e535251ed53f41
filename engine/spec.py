"""The node contract: a declaration (NodeSpec) plus the context a node's ``run`` receives.

A node type is declared once, here-shaped, in Python; the editor's palette and forms, the
validator and the executor all read the same declaration.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine.errors import (
    ConnectionNotFound,
    NodeError,
    RecordError,
    RunCancelled,
    SecretNotFound,
)

__all__ = [
    "Batch",
    "Stream",
    "Inputs",
    "Outputs",
    "ConfigProblem",
    "ConnectionType",
    "NodeSpec",
    "RunContext",
    "COMMON_CONFIG_PROPERTIES",
    "ERROR_PORT",
    "DEFAULT_BATCH_SIZE",
    "batched",
    "NodeLogger",
]

Batch = list[dict[str, Any]]
Stream = Iterable[Batch]
Inputs = Mapping[str, Stream]
Outputs = dict[str, Stream]

ERROR_PORT = "error"
DEFAULT_BATCH_SIZE = 1000

# Config keys every node understands; the registry merges them into each node's schema so
# the editor shows them and the validator checks them.
COMMON_CONFIG_PROPERTIES: dict[str, dict[str, Any]] = {
    "on_error": {
        "type": "string",
        "enum": ["fail", "route"],
        "default": "fail",
        "title": "On error",
        "description": "fail: a bad record fails the node; route: bad records go to the "
        "'error' port with the error attached and the node goes on.",
    },
    "retries": {
        "type": "integer",
        "minimum": 0,
        "maximum": 10,
        "default": 0,
        "title": "Retries",
        "description": "How often to retry the node after a failure (only while it has "
        "passed no records downstream yet).",
    },
    "retry_delay": {
        "type": "number",
        "minimum": 0,
        "maximum": 3600,
        "default": 1,
        "title": "Retry delay (s)",
        "description": "Seconds before the first retry; doubles with every further retry.",
    },
    "timeout": {
        "type": "number",
        "exclusiveMinimum": 0,
        "title": "Timeout (s)",
        "description": "Fail the node when it runs longer than this many seconds.",
    },
}


@dataclass(frozen=True)
class ConfigProblem:
    """A static problem in a node's config found by the node's own ``check`` hook."""

    field: str
    message: str


@dataclass(frozen=True)
class NodeSpec:
    """Everything Flowmill knows about a node type.

    ``run(ctx, config, inputs) -> outputs`` maps input port names to record streams and
    returns a dict of output port name to record stream. ``check(config)`` returns static
    problems (e.g. disallowed expressions) so validation can name the field before a run.
    """

    type: str
    title: str
    category: str
    run: Callable[[RunContext, dict[str, Any], Inputs], Outputs]
    description: str = ""
    version: str = "1"
    inputs: tuple[str, ...] = ()
    outputs: tuple[str, ...] = ()
    required_inputs: tuple[str, ...] | None = None
    config_schema: Mapping[str, Any] = field(
        default_factory=lambda: {"type": "object", "properties": {}}
    )
    trigger: bool = False
    check: Callable[[dict[str, Any]], list[ConfigProblem]] | None = None
    # Nodes that run arbitrary code ship disabled; an admin switches them on.
    enabled_by_default: bool = True
    # Event triggers: ``listen(ctx: engine.batch.listeners.ListenContext)`` runs in the server
    # process (never in a run), blocks until ``ctx.stopping`` is set and calls ``ctx.fire``.
    listen: Callable[[Any], None] | None = None

    @property
    def required(self) -> tuple[str, ...]:
        """Input ports that must be connected (all inputs unless declared otherwise)."""
        return self.inputs if self.required_inputs is None else self.required_inputs

    @property
    def all_outputs(self) -> tuple[str, ...]:
        """Declared outputs plus the ``error`` port every node has."""
        return self.outputs if ERROR_PORT in self.outputs else (*self.outputs, ERROR_PORT)

    def full_schema(self) -> dict[str, Any]:
        """The node's config schema with the common keys merged in."""
        schema = dict(self.config_schema)
        props = dict(schema.get("properties", {}))
        for key, value in COMMON_CONFIG_PROPERTIES.items():
            props.setdefault(key, value)
        schema["properties"] = props
        schema.setdefault("type", "object")
        return schema

    def with_defaults(self, config: Mapping[str, Any]) -> dict[str, Any]:
        """The config with top-level schema defaults filled in for keys it leaves out."""
        cfg = dict(config)
        for key, prop in self.full_schema().get("properties", {}).items():
            if key not in cfg and isinstance(prop, dict) and "default" in prop:
                cfg[key] = prop["default"]
        return cfg

    def to_catalog(self) -> dict[str, Any]:
        """JSON-able description used by the editor's palette and forms."""
        return {
            "type": self.type,
            "title": self.title,
            "category": self.category,
            "description": self.description,
            "version": self.version,
            "inputs": list(self.inputs),
            "required_inputs": list(self.required),
            "outputs": list(self.all_outputs),
            "trigger": self.trigger,
            "listens": self.listen is not None,
            "enabled_by_default": self.enabled_by_default,
            "config_schema": self.full_schema(),
        }


@dataclass(frozen=True)
class ConnectionType:
    """A kind of named connection (SMTP, IMAP, Mongo, MQTT, …) that node modules declare in
    ``CONNECTION_TYPES`` beside ``NODES``, so ``flowmill connection test`` can check one.

    ``test(settings, timeout)`` connects and logs in, returns a short line saying what it
    reached, and raises with a clear message (never the password) when it cannot.
    ``detect(settings)`` recognises settings stored without an explicit ``type``.
    """

    kind: str
    title: str
    test: Callable[[dict[str, Any], float], str]
    description: str = ""
    detect: Callable[[dict[str, Any]], bool] | None = None


MAX_LOG_LINES = 10_000


class NodeLogger:
    """The logger a node sees (``ctx.logger``): each line goes to ``emit(level, text)``.

    Not a ``logging.Logger``: those are cached forever by name, and a server would keep one
    per node run alive.
    """

    def __init__(self, emit: Callable[[str, str], None]) -> None:
        self._emit = emit
        self._lines = 0

    def log(self, level: int, msg: str, *args: Any, **_: Any) -> None:
        self._lines += 1
        if self._lines > MAX_LOG_LINES:
            if self._lines == MAX_LOG_LINES + 1:
                self._emit("WARNING", f"log truncated after {MAX_LOG_LINES} lines")
            return
        text = msg % args if args else str(msg)
        self._emit(logging.getLevelName(level), text)

    def debug(self, msg: str, *args: Any, **kw: Any) -> None:
        self.log(logging.DEBUG, msg, *args, **kw)

    def info(self, msg: str, *args: Any, **kw: Any) -> None:
        self.log(logging.INFO, msg, *args, **kw)

    def warning(self, msg: str, *args: Any, **kw: Any) -> None:
        self.log(logging.WARNING, msg, *args, **kw)

    def error(self, msg: str, *args: Any, **kw: Any) -> None:
        self.log(logging.ERROR, msg, *args, **kw)

    def exception(self, msg: str, *args: Any, **kw: Any) -> None:
        self.log(logging.ERROR, msg, *args, **kw)


class RunContext:
    """What a node's ``run`` may use: logging, progress, cancellation, params, lookups.

    One context per node run. The executor builds it; tests build it through
    ``engine.testing``. Nodes never reach the store, the bus or other nodes directly.
    """

    def __init__(
        self,
        *,
        run_id: str,
        flow_id: str,
        node_id: str,
        node_type: str,
        params: Mapping[str, Any],
        work_dir: Path,
        data_dir: Path,
        logger: NodeLogger,
        on_error: str = "fail",
        batch_size: int = DEFAULT_BATCH_SIZE,
        cancel_event: threading.Event | None = None,
        deadline: float | None = None,
        reject_sink: Callable[[dict[str, Any]], None] | None = None,
        connection_lookup: Callable[[str], dict[str, Any]] | None = None,
        secret_lookup: Callable[[str], str] | None = None,
        event_sink: Callable[[str, dict[str, Any]], None] | None = None,
        progress_sink: Callable[[int], None] | None = None,
        status_sink: Callable[[str], None] | None = None,
        flow_dir: Path | None = None,
    ) -> None:
        self.run_id = run_id
        self.flow_id = flow_id
        self.node_id = node_id
        self.node_type = node_type
        self.params = params
        self.work_dir = work_dir
        self.data_dir = data_dir
        self.flow_dir = flow_dir
        self.logger = logger
        self.on_error = on_error
        self.batch_size = batch_size
        self.deadline = deadline
        self._cancel = cancel_event or threading.Event()
        self._reject_sink = reject_sink
        self._connection_lookup = connection_lookup
        self._secret_lookup = secret_lookup
        self._event_sink = event_sink
        self._progress_sink = progress_sink
        self._status_sink = status_sink
        self.rejected = 0

    # -- cancellation ----------------------------------------------------------------
    @property
    def cancelled(self) -> bool:
        """True once the run was cancelled or this node's timeout passed."""
        if self._cancel.is_set():
            return True
        return self.deadline is not None and time.monotonic() > self.deadline

    def check_cancelled(self) -> None:
        """Raise ``RunCancelled`` if the node should stop; call it between batches."""
        if self.cancelled:
            raise RunCancelled(f"node {self.node_id}: stopped (run cancelled or timed out)")

    def sleep(self, seconds: float) -> None:
        """Wait, but wake up and raise at once when the run is cancelled."""
        end = time.monotonic() + seconds
        while True:
            self.check_cancelled()
            left = end - time.monotonic()
            if left <= 0:
                return
            self._cancel.wait(min(left, 0.05))

    # -- reporting -------------------------------------------------------------------
    def progress(self, n: int) -> None:
        """Report that ``n`` more records were processed (cheap; call once per batch)."""
        if self._progress_sink is not None:
            self._progress_sink(n)

    def status(self, text: str) -> None:
        """A short live status line shown under the node in the editor and dashboard."""
        if self._status_sink is not None:
            self._status_sink(text)

    def emit_event(self, name: str, data: dict[str, Any]) -> None:
        """Publish a custom event (e.g. "sales updated") to every live client."""
        if self._event_sink is not None:
            self._event_sink(name, data)

    # -- bad records -----------------------------------------------------------------
    def reject(self, record: Mapping[str, Any], error: BaseException | str) -> None:
        """Hand over a record that failed.

        With ``on_error: route`` it goes to the node's ``error`` port with ``_error`` and
        ``_node`` attached and the node goes on; with ``fail`` this raises ``RecordError``.
        """
        message = error.message if isinstance(error, NodeError) else str(error)
        if self.on_error != "route" or self._reject_sink is None:
            raise RecordError(self.node_id, message, self.node_type) from (
                error if isinstance(error, BaseException) else None
            )
        self.rejected += 1
        self._reject_sink({**record, "_error": message, "_node": self.node_id})

    # -- lookups ---------------------------------------------------------------------
    def connection(self, name: str) -> dict[str, Any]:
        """A named connection's settings (secrets decrypted), e.g. ``{"url": ...}``."""
        if self._connection_lookup is None:
            raise ConnectionNotFound(name)
        return self._connection_lookup(name)

    def secret(self, name: str) -> str:
        """A named secret's value; never log it."""
        if self._secret_lookup is None:
            raise SecretNotFound(name)
        return self._secret_lookup(name)

    def resolve_path(self, path: str) -> Path:
        """A path from a config: absolute as given, relative to the working directory."""
        return Path(path).expanduser()


def batched(records: Iterable[dict[str, Any]], size: int) -> Iterator[Batch]:
    """Group a record iterator into lists of ``size`` (the last one may be shorter)."""
    batch: Batch = []
    append = batch.append
    for record in records:
        append(record)
        if len(batch) >= size:
            yield batch
            batch = []
            append = batch.append
    if batch:
        yield batch
