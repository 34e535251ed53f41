"""Trigger nodes: they say how a run starts and what its first records are.

Listening (sockets, watchers, polls) is the server's job, never done inside ``run``.
"""

from __future__ import annotations

from typing import Any

from engine.batch.listeners import fired_records
from engine.flows.params import TRIGGER_PARAM
from engine.spec import Inputs, NodeSpec, Outputs, RunContext, batched

__all__ = ["NODES", "MANUAL", "event_records"]

MANUAL_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "properties": {},
}


def manual(ctx: RunContext, config: dict[str, Any], inputs: Inputs) -> Outputs:
    """One record holding the run's params: the start of a run begun by hand or by a job."""
    return {"out": iter([[dict(ctx.params)]])}


def event_records(ctx: RunContext, config: dict[str, Any], inputs: Inputs) -> Outputs:
    """``run`` of an event trigger (TCP, SQL change, mail, MQTT, …): the records of the
    event its listener fired. Run by hand (editor, CLI), there is no event: the node then
    outputs one record holding the run's params, so a flow can be tried with a made-up
    event."""
    records = fired_records(ctx.params)
    if records is None:
        ctx.logger.info("run by hand: no event, one record of the run's params instead")
        records = [{k: v for k, v in ctx.params.items() if k != TRIGGER_PARAM}]
    return {"out": batched(records, ctx.batch_size)}


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
