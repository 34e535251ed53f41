"""The setup part of the REST API: schedules, calendars, time conditions, connections.

Registered on the same blueprint as designer/web/api.py (``/api``), with the same shape: read
the body checked against the declared schema, call one service function, return JSON.
Create-or-replace endpoints answer 201 for a new name and 200 for a replaced one.

Connections are write-only: the API shows their names and the names of their settings,
never a value (a database URL carries its password). See docs/web-api.md.
"""

from __future__ import annotations

from typing import Any

from flask import jsonify

from designer.web.api import PRIORITY, body, bp, query_int, service
from designer.web.routing import api_route
from engine.errors import ConnectionNotFound, FlowmillError
from engine.queue.calendars import DAY_KINDS, DEFAULT_TZ, MISFIRE_POLICIES, SPEC_KEYS
from engine.store.interface import MAX_ID_LENGTH

__all__: list[str] = []

MAX_UPCOMING = 50

NAME: dict[str, Any] = {
    "type": "string",
    "minLength": 1,
    "maxLength": MAX_ID_LENGTH,
    "description": "no '/', '\\', control characters or leading/trailing spaces",
}
WINDOWS: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "description": "allowed windows per day kind (holidays count as sunday); a kind left "
    "out is allowed all day",
    "properties": {
        kind: {"type": "string", "maxLength": 200, "examples": ["06:00-20:00", "none", "all"]}
        for kind in DAY_KINDS
    },
}
SCHEDULE_BODY: dict[str, Any] = {
    "type": "object",
    "required": ["name", "flow"],
    "additionalProperties": False,
    "oneOf": [{"required": ["cron"]}, {"required": ["every"]}],
    "properties": {
        "name": NAME,
        "flow": {"type": "string", "minLength": 1, "maxLength": 64, "description": "flow id"},
        "cron": {"type": "string", "maxLength": 200, "examples": ["0 2 * * 1-5"]},
        "every": {"type": "string", "maxLength": 50, "examples": ["15m"]},
        "tz": {"type": "string", "maxLength": 64, "default": DEFAULT_TZ},
        "calendar": {
            "type": ["string", "null"],
            "maxLength": MAX_ID_LENGTH,
            "description": "a calendar name or a region code (DE-BY)",
        },
        "condition": {"type": ["string", "null"], "maxLength": MAX_ID_LENGTH},
        "windows": WINDOWS,
        "misfire": {"enum": list(MISFIRE_POLICIES), "default": "run_once"},
        "anchor": {"type": "string", "format": "date-time"},
        "until": {"type": "string", "format": "date-time"},
        "misfire_grace": {"type": "string", "maxLength": 50, "examples": ["1m"]},
        "params": {"type": "object"},
        "priority": PRIORITY,
    },
}
CALENDAR_BODY: dict[str, Any] = {
    "type": "object",
    "required": ["name"],
    "additionalProperties": False,
    "properties": {
        "name": NAME,
        "holidays": {
            "type": ["string", "null"],
            "maxLength": 64,
            "description": "public holidays of a region",
            "examples": ["DE-BY"],
        },
        "exclusions": {
            "type": "array",
            "maxItems": 1000,
            "items": {"type": "string", "format": "date"},
        },
    },
}
CONDITION_BODY: dict[str, Any] = {
    "type": "object",
    "required": ["name", "windows"],
    "additionalProperties": False,
    "properties": {
        "name": NAME,
        "windows": WINDOWS,
        "calendar": {
            "type": ["string", "null"],
            "maxLength": MAX_ID_LENGTH,
            "description": "whose holidays count as sunday",
        },
    },
}
CONNECTION_BODY: dict[str, Any] = {
    "type": "object",
    "required": ["name", "settings"],
    "additionalProperties": False,
    "properties": {
        "name": NAME,
        "settings": {
            "type": "object",
            "minProperties": 1,
            "maxProperties": 100,
            "propertyNames": {"pattern": "^[A-Za-z0-9_.-]{1,64}$"},
            "description": 'write-only; e.g. {"url": "postgresql+psycopg://u:pw@host/db"}',
        },
        "merge": {
            "type": "boolean",
            "default": False,
            "description": "keep stored settings not given (null removes one)",
        },
    },
}


def _created(is_new: bool) -> int:
    return 201 if is_new else 200


# -- schedules ----------------------------------------------------------------------------
@api_route(
    bp,
    "GET",
    "/schedules",
    summary="Schedules with their next fire times (?upcoming=5)",
    permission="schedules.read",
    tag="schedules",
)
def list_schedules() -> Any:
    return jsonify(service().list_schedules(query_int("upcoming", 5, 0, MAX_UPCOMING)))


@api_route(
    bp,
    "POST",
    "/schedules",
    summary="Create or replace a schedule that runs a server flow",
    permission="schedules.write",
    tag="schedules",
    body=SCHEDULE_BODY,
)
def save_schedule() -> Any:
    data = body(SCHEDULE_BODY)
    app = service()
    name = data["name"]
    is_new = name not in {s.name for s in app.schedules.list()}
    spec = {"tz": DEFAULT_TZ, "misfire": "run_once"}  # stored explicitly, as the CLI does
    spec.update({k: data[k] for k in SPEC_KEYS if data.get(k)})  # "" or null: not set
    app.add_schedule(
        name,
        data["flow"],
        spec,
        data.get("params") or {},
        int(data.get("priority") or 0),
        allow_files=False,
    )
    return jsonify(app.describe_schedule(name)), _created(is_new)


@api_route(
    bp,
    "DELETE",
    "/schedules/<name>",
    summary="Remove a schedule (not one armed by a flow's trigger.schedule node)",
    permission="schedules.write",
    tag="schedules",
)
def delete_schedule(name: str) -> Any:
    service().remove_schedule(name)
    return jsonify({"ok": True})


# -- calendars and time conditions -------------------------------------------------------
@api_route(
    bp,
    "GET",
    "/calendars",
    summary="Holiday and exclusion calendars",
    permission="schedules.read",
    tag="schedules",
)
def list_calendars() -> Any:
    return jsonify(service().list_calendars())


@api_route(
    bp,
    "POST",
    "/calendars",
    summary="Create or replace a calendar (region holidays plus exclusion dates)",
    permission="schedules.write",
    tag="schedules",
    body=CALENDAR_BODY,
)
def save_calendar() -> Any:
    data = body(CALENDAR_BODY)
    app = service()
    is_new = data["name"] not in {c["name"] for c in app.list_calendars()}
    app.set_calendar(data["name"], data.get("holidays"), data.get("exclusions") or ())
    saved = next(c for c in app.list_calendars() if c["name"] == data["name"])
    return jsonify(saved), _created(is_new)


@api_route(
    bp,
    "GET",
    "/conditions",
    summary="Time conditions (allowed windows per day kind)",
    permission="schedules.read",
    tag="schedules",
)
def list_conditions() -> Any:
    return jsonify(service().list_conditions())


@api_route(
    bp,
    "POST",
    "/conditions",
    summary="Create or replace a time condition",
    permission="schedules.write",
    tag="schedules",
    body=CONDITION_BODY,
)
def save_condition() -> Any:
    data = body(CONDITION_BODY)
    app = service()
    is_new = data["name"] not in {c["name"] for c in app.list_conditions()}
    app.set_condition(data["name"], data["windows"], data.get("calendar"))
    saved = next(c for c in app.list_conditions() if c["name"] == data["name"])
    return jsonify(saved), _created(is_new)


# -- connections --------------------------------------------------------------------------
@api_route(
    bp,
    "GET",
    "/connections",
    summary="Connection names and the names of their settings (never values)",
    permission="connections.read",
    tag="connections",
)
def list_connections() -> Any:
    return jsonify(service().describe_connections())


@api_route(
    bp,
    "POST",
    "/connections",
    summary="Create or replace a connection (settings are write-only)",
    permission="connections.write",
    tag="connections",
    body=CONNECTION_BODY,
)
def save_connection() -> Any:
    data = body(CONNECTION_BODY)
    app = service()
    name = data["name"]
    is_new = app.set_connection(name, data["settings"], merge=bool(data.get("merge")))
    saved = next(c for c in app.describe_connections() if c["name"] == name)
    return jsonify(saved), _created(is_new)


@api_route(
    bp,
    "DELETE",
    "/connections/<name>",
    summary="Remove a connection",
    permission="connections.write",
    tag="connections",
)
def delete_connection(name: str) -> Any:
    if not service().remove_connection(name):
        raise ConnectionNotFound(name)
    return jsonify({"ok": True})


@api_route(
    bp,
    "POST",
    "/connections/<name>/test",
    summary="Reach the connection's server and log in (never shows a secret)",
    permission="connections.write",
    tag="connections",
)
def test_connection(name: str) -> Any:
    try:
        kind, reached = service().test_connection(name, timeout=10.0)
    except ConnectionNotFound:
        raise
    except FlowmillError as exc:
        return jsonify({"ok": False, "error": str(exc)})
    return jsonify({"ok": True, "type": kind, "message": reached})
