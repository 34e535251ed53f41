"""``notify.broadcast``: tell every open dashboard and editor something (a toast).

The legacy service's "tell every client to refresh": the node publishes a ``CustomEvent``
named ``broadcast`` with ``{message, level}``; the web app sends it on ``/live`` and every
page shows it as a notice. Records pass through unchanged.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

from engine.spec import Batch, ConfigProblem, Inputs, NodeSpec, Outputs, RunContext

__all__ = ["BROADCAST", "NODES"]

_FIELD = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")
MAX_MESSAGE = 500

BROADCAST_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["message"],
    "properties": {
        "message": {
            "type": "string",
            "minLength": 1,
            "title": "Message",
            "description": "Text shown to every logged-in user. {field} inserts a field of "
            "the record (per record), {count} the number of records (once per run).",
        },
        "level": {
            "type": "string",
            "enum": ["info", "ok", "error"],
            "default": "info",
            "title": "Kind",
            "description": "info, ok (green) or error (red).",
        },
        "per_record": {
            "type": "boolean",
            "default": False,
            "title": "One per record",
            "description": "Off: one message when all records have passed (also for none). "
            "On: one message per record (at most 100 per run).",
        },
    },
}

MAX_PER_RUN = 100


def _fill(template: str, values: dict[str, Any]) -> str:
    """``{name}`` replaced by the value (plain substitution: no attribute access, no code)."""
    text = _FIELD.sub(lambda m: str(values.get(m.group(1), "")), template)
    return text if len(text) <= MAX_MESSAGE else text[: MAX_MESSAGE - 1] + "…"


def check_broadcast(config: dict[str, Any]) -> list[ConfigProblem]:
    message = str(config.get("message", ""))
    leftover = _FIELD.sub("", message)
    if "{" in leftover or "}" in leftover:
        return [ConfigProblem("message", "use {field} with a plain field name, nothing else")]
    return []


def broadcast(ctx: RunContext, config: dict[str, Any], inputs: Inputs) -> Outputs:
    level = config.get("level", "info")

    def stream() -> Iterator[Batch]:
        count = sent = 0
        for batch in inputs.get("in", ()):
            count += len(batch)
            if config.get("per_record"):
                for record in batch:
                    if sent < MAX_PER_RUN:
                        message = _fill(config["message"], record)
                        ctx.emit_event("broadcast", {"message": message, "level": level})
                        sent += 1
            yield batch
        if not config.get("per_record"):
            message = _fill(config["message"], {"count": count})
            ctx.emit_event("broadcast", {"message": message, "level": level})

    return {"out": stream()}


BROADCAST = NodeSpec(
    type="notify.broadcast",
    title="Broadcast",
    category="notify",
    description="Shows a message to every logged-in user of the dashboard and the editor "
    "(e.g. 'sales figures updated: reload'). Records pass through.",
    inputs=("in",),
    required_inputs=(),
    outputs=("out",),
    config_schema=BROADCAST_SCHEMA,
    check=check_broadcast,
    run=broadcast,
)

NODES = (BROADCAST,)
