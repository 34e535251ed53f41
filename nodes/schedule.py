"""``trigger.schedule``: a flow that starts itself on a schedule.

The node only declares *when*; the batch server arms it (a stored schedule named
``flow:<flow id>:<node id>``) while the flow is enabled, and each fire becomes a job. In
the run, the node outputs one record with the run's params, like ``trigger.manual``.
"""

from __future__ import annotations

from typing import Any

from engine.queue.calendars import SPEC_KEYS, Schedule, ScheduleError
from engine.spec import ConfigProblem, NodeSpec
from nodes.triggers import manual

__all__ = ["NODES", "SCHEDULE"]

SCHEDULE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "oneOf": [{"required": ["cron"]}, {"required": ["every"]}],
    "properties": {
        "cron": {
            "type": "string",
            "title": "Cron expression",
            "description": "Five fields on local wall-clock time, e.g. '0 2 * * 1-5' for 02:00 "
            "on workdays.",
        },
        "every": {
            "type": "string",
            "title": "Interval",
            "description": "Instead of cron: run every 90s, 15m, 2h, 1d … (absolute time).",
        },
        "tz": {
            "type": "string",
            "default": "Europe/Berlin",
            "title": "Time zone",
            "description": "Time zone of the cron expression and the windows.",
        },
        "calendar": {
            "type": "string",
            "title": "Calendar",
            "description": "Name of a calendar or a region code such as DE-BY: its public "
            "holidays (and exclusion dates) are skipped.",
        },
        "condition": {
            "type": "string",
            "title": "Time condition",
            "description": "Name of a time condition whose windows the fire times must lie in.",
        },
        "windows": {
            "type": "object",
            "title": "Windows",
            "description": 'Instead of a named condition: {"workday": "06:00-20:00", '
            '"saturday": "none", "sunday": "none"}.',
            "additionalProperties": {"type": "string"},
        },
        "misfire": {
            "type": "string",
            "enum": ["run_once", "skip"],
            "default": "run_once",
            "title": "After downtime",
            "description": "run_once: start one missed run (never a burst); skip: wait for "
            "the next fire time.",
        },
    },
}


def check_schedule(config: dict[str, Any]) -> list[ConfigProblem]:
    """Cron, interval, windows and region codes are checked when the flow is validated."""
    # a named condition lives on the server; it is checked when the flow is armed
    spec = {k: v for k, v in config.items() if k in SPEC_KEYS and k != "condition"}
    try:
        Schedule.from_config(spec)
    except ScheduleError as exc:
        return [ConfigProblem(exc.field, exc.message)]
    return []


SCHEDULE = NodeSpec(
    type="trigger.schedule",
    title="Schedule",
    category="trigger",
    description="Starts the flow on a schedule (cron or interval) while the flow is enabled "
    "on the server, honouring holidays, time windows and the misfire policy.",
    outputs=("out",),
    config_schema=SCHEDULE_SCHEMA,
    trigger=True,
    check=check_schedule,
    run=manual,  # a scheduled run starts like a manual one: one record with its params
)

NODES = (SCHEDULE,)
