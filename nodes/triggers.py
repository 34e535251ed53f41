"""Trigger nodes: they say how a run starts and what its first records are.

Listening (sockets, watchers, polls) is the server's job, never done inside ``run``.
"""

from __future__ import annotations

from typing import Any

from engine.spec import Inputs, NodeSpec, Outputs, RunContext

__all__ = ["NODES", "MANUAL"]

MANUAL_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "properties": {},
}


def manual(ctx: RunContext, config: dict[str, Any], inputs: Inputs) -> Outputs:
    """One record holding the run's params: the start of a run begun by hand or by a job."""
    return {"out": iter([[dict(ctx.params)]])}


MANUAL = NodeSpec(
    type="trigger.manual",
    title="Manual start",
    category="trigger",
    description="Starts a run by hand (editor, CLI, API or a job). Outputs one record "
    "with the run's params.",
    outputs=("out",),
    config_schema=MANUAL_SCHEMA,
    trigger=True,
    run=manual,
)

NODES = (MANUAL,)
