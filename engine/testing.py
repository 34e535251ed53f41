"""Run one node outside a flow, for node tests and plugin authors.

``run_node`` builds a real ``RunContext`` (no executor, no store) and drains every output
port into lists, so a test can arrange records, act once and assert on what came out.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine.errors import ConnectionNotFound, SecretNotFound
from engine.spec import ERROR_PORT, NodeLogger, NodeSpec, RunContext, batched

__all__ = ["NodeResult", "run_node"]


@dataclass
class NodeResult:
    """Everything one node run produced, flattened to record lists per port."""

    outputs: dict[str, list[dict[str, Any]]]
    log: list[str] = field(default_factory=list)
    events: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    batches: dict[str, int] = field(default_factory=dict)

    def __getitem__(self, port: str) -> list[dict[str, Any]]:
        return self.outputs.get(port, [])


def run_node(
    spec: NodeSpec,
    config: Mapping[str, Any],
    inputs: Mapping[str, Iterable[dict[str, Any]]] | None = None,
    *,
    params: Mapping[str, Any] | None = None,
    batch_size: int = 1000,
    work_dir: Path | None = None,
    data_dir: Path | None = None,
    connections: Mapping[str, dict[str, Any]] | None = None,
    secrets: Mapping[str, str] | None = None,
    connection_lookup: Callable[[str], dict[str, Any]] | None = None,
) -> NodeResult:
    """Run ``spec`` once with ``config`` on ``inputs`` (records per port) and collect outputs.

    Config defaults from the spec's schema are applied like the executor does.
    """
    cfg = spec.with_defaults(config)
    tmp = Path(tempfile.mkdtemp(prefix="flowmill-node-"))
    log_lines: list[str] = []
    events: list[tuple[str, dict[str, Any]]] = []
    rejected: list[dict[str, Any]] = []
    logger = NodeLogger(lambda level, text: log_lines.append(f"{level} {text}"))

    def lookup(name: str) -> dict[str, Any]:
        if connection_lookup is not None:
            return connection_lookup(name)
        if connections and name in connections:
            return dict(connections[name])
        raise ConnectionNotFound(name)

    def secret(name: str) -> str:
        if secrets and name in secrets:
            return secrets[name]
        raise SecretNotFound(name)

    ctx = RunContext(
        run_id="test-run",
        flow_id="test-flow",
        node_id=f"{spec.type.replace('.', '-')}-test",
        node_type=spec.type,
        params=dict(params or {}),
        work_dir=work_dir or tmp / "work",
        data_dir=data_dir or tmp / "data",
        logger=logger,
        on_error=cfg.get("on_error", "fail"),
        batch_size=batch_size,
        reject_sink=rejected.append,
        connection_lookup=lookup,
        secret_lookup=secret,
        event_sink=lambda name, data: events.append((name, data)),
    )
    ctx.work_dir.mkdir(parents=True, exist_ok=True)
    ctx.data_dir.mkdir(parents=True, exist_ok=True)
    streams = {port: batched(iter(records), batch_size) for port, records in (inputs or {}).items()}
    outputs = spec.run(ctx, cfg, streams)
    result = NodeResult(outputs={})
    for port, stream in outputs.items():
        records: list[dict[str, Any]] = []
        count = 0
        for batch in stream:
            records.extend(batch)
            count += 1
        result.outputs[port] = records
        result.batches[port] = count
    if rejected or ERROR_PORT not in result.outputs:
        result.outputs.setdefault(ERROR_PORT, []).extend(rejected)
    result.log = log_lines
    result.events = events
    return result
