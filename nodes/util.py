"""Utility nodes."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from engine.spec import Batch, Inputs, NodeSpec, Outputs, RunContext

__all__ = ["NODES", "DELAY"]

DELAY_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["seconds"],
    "properties": {
        "seconds": {
            "type": "number",
            "minimum": 0,
            "maximum": 86400,
            "default": 1,
            "title": "Seconds",
            "description": "How long to wait before the records are passed on.",
        },
    },
}


def delay(ctx: RunContext, config: dict[str, Any], inputs: Inputs) -> Outputs:
    """Wait once, then pass every batch through unchanged; cancellation ends the wait."""

    def stream() -> Iterator[Batch]:
        ctx.status(f"waiting {config['seconds']} s")
        ctx.sleep(float(config["seconds"]))
        ctx.status("")
        for batch in inputs["in"]:
            ctx.check_cancelled()
            yield batch

    return {"out": stream()}


DELAY = NodeSpec(
    type="util.delay",
    title="Delay",
    category="util",
    description="Waits the given number of seconds, then passes the records through. "
    "A cancelled run stops the wait at once.",
    inputs=("in",),
    outputs=("out",),
    config_schema=DELAY_SCHEMA,
    run=delay,
)

NODES = (DELAY,)
