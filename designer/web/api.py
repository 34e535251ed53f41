"""The REST API under ``/api``: a thin shell over the service layer (engine/service.py).

Views read the JSON body, call one service function and return JSON. Permissions are
declared with the route (designer/web/routing.py); fields a caller may not set are simply
not read (no mass assignment).
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

from flask import Blueprint, current_app, g, jsonify, request
from jsonschema import Draft202012Validator

from designer.web import auth
from designer.web.errors import BadRequest
from designer.web.routing import api_route, openapi_document
from engine.clock import parse_moment
from engine.errors import FlowmillError, FlowValidationError
from engine.flows.flowstore import FlowNotFound
from engine.flows.format import MAX_FLOW_BYTES, dump_flow, find_unstorable_text, parse_flow_text
from engine.queue.calendars import parse_every
from engine.queue.jobs import JobNotFound
from engine.store.interface import MAX_ID_LENGTH

__all__ = ["PRIORITY", "bp", "body", "prometheus_text", "query_int", "service"]

bp = Blueprint("api", __name__, url_prefix="/api")
bp.before_request(auth.authenticate_request)
auth.register(bp)

FLOW_BODY: dict[str, Any] = {
    "type": "object",
    "required": ["flow"],
    "properties": {
        "flow": {"type": "object", "description": "a flowmill/1 document"},
        "base_hash": {
            "type": "string",
            "description": "hash of the version the edit started from (optimistic locking)",
        },
    },
}
# bounded so every database stores it (PostgreSQL INTEGER) and no one outranks by 2**63
PRIORITY: dict[str, Any] = {
    "type": "integer",
    "minimum": -1000,
    "maximum": 1000,
    "default": 0,
    "description": "higher runs first",
}
IMPORT_BODY: dict[str, Any] = {
    "type": "object",
    "required": ["flow"],
    "properties": {"flow": {"type": "object", "description": "a flowmill/1 document"}},
}
# the same endpoint also takes the file itself (openapi() adds this content type)
IMPORT_UPLOAD: dict[str, Any] = {
    "type": "object",
    "required": ["file"],
    "properties": {"file": {"type": "string", "format": "binary"}},
}
RUN_BODY: dict[str, Any] = {
    "type": "object",
    "properties": {
        "params": {"type": "object"},
        "priority": PRIORITY,
        "not_before": {"type": "string", "format": "date-time"},
        "max_delay": {"type": "string", "examples": ["2h"]},
        "group": {"type": "string", "maxLength": MAX_ID_LENGTH},
    },
}
PATCH_JOB_BODY: dict[str, Any] = {
    "type": "object",
    "required": ["params"],
    "properties": {"params": {"type": "object"}},
}


def service() -> Any:
    return current_app.extensions["flowmill"]


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _storable(data: Any, source: str) -> Any:
    """``data`` if every string in it can be stored: "\\u0000" and an unpaired "\\ud800"
    are valid JSON, but PostgreSQL refuses the first and no UTF-8 database the second."""
    problem = find_unstorable_text(data)
    if problem:
        raise BadRequest(f"{source}: {problem}")
    return data


def _check_text(text: str, source: str) -> None:
    _storable(text, source)


def _json_text() -> bytes:
    if not request.is_json:
        raise BadRequest(
            f"send the body as JSON (Content-Type: application/json), "
            f"not {request.mimetype or 'without a content type'}"
        )
    return request.get_data(cache=True)


_VALIDATORS: dict[int, Draft202012Validator] = {}  # by id() of the module-level schemas


def _check(data: Any, schema: dict[str, Any]) -> dict[str, Any]:
    """``data`` against the route's declared body schema: 400 naming every bad field."""
    validator = _VALIDATORS.get(id(schema))
    if validator is None:
        validator = _VALIDATORS[id(schema)] = Draft202012Validator(schema)
    problems = sorted(validator.iter_errors(data), key=lambda e: list(map(str, e.absolute_path)))
    if problems:
        details = [
            {"field": ".".join(map(str, e.absolute_path)) or None, "message": _message(e)}
            for e in problems
        ]
        first = details[0]
        where = f"{first['field']}: " if first["field"] else ""
        raise BadRequest(f"the request body is not valid: {where}{first['message']}", details)
    return data


def _message(error: Any) -> str:
    # jsonschema starts most messages with the value itself: a password sent as the
    # wrong type must not come back in the answer (or in a proxy's log of it)
    message, shown = error.message, repr(error.instance)
    if message.startswith(shown):
        message = "the value" + message[len(shown) :]
    return message if len(message) <= 200 else message[:200] + "…"


def body(schema: dict[str, Any] | None = None, *, optional: bool = False) -> dict[str, Any]:
    """The JSON object sent, checked against ``schema``; 400 saying what is wrong.

    ``optional``: an empty body means ``{}``.
    """
    if optional and not request.get_data(cache=True).strip():
        return {}
    raw = _json_text()
    try:
        data = json.loads(raw, parse_constant=_no_constant)
    except RecursionError:
        raise BadRequest("the request body is nested too deeply") from None
    except json.JSONDecodeError as exc:
        raise BadRequest(
            f"the request body is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
        ) from None
    except ValueError as exc:  # not UTF-8, NaN
        raise BadRequest(f"the request body is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise BadRequest("the request body must be a JSON object")
    _storable(data, "the request body")
    return _check(data, schema) if schema is not None else data


def query_int(name: str, default: int, lowest: int, highest: int) -> int:
    """A whole-number query parameter in [lowest, highest]; 400 naming it otherwise."""
    text = request.args.get(name)
    if text is None:
        return default
    value = int(text) if text.isascii() and text.isdecimal() and len(text) <= 9 else None
    if value is None or not lowest <= value <= highest:
        raise BadRequest(
            f"{name}: {text[:20]!r} is not a whole number from {lowest} to {highest}",
            [{"field": name, "message": f"a whole number from {lowest} to {highest}"}],
        )
    return value


def flow_body(schema: dict[str, Any]) -> dict[str, Any]:
    """A body carrying a flow, read like a flow file (size, depth, forbidden keys), so
    nothing reaches the store that ``flowmill validate`` would refuse."""
    data = parse_flow_text(_json_text(), "request body")
    return _check(_storable(data, "the request body"), schema)


@bp.before_request
def check_request() -> None:
    """Check what every view reads before it runs: path and query values must be
    storable text, and a JSON body must match the schema declared with its route, so no
    view (login included) ever sees a body of another shape. 400 naming the problem.

    Runs after authentication (401 comes first). Empty and non-JSON bodies are left to
    the view: some bodies are optional, and flow import also takes a file upload.
    """
    for name, value in [*(request.view_args or {}).items(), *request.args.items(multi=True)]:
        if isinstance(value, str):
            _check_text(value, name)
    view = current_app.view_functions.get(request.endpoint or "")
    route = getattr(view, "api_route", None)
    if route is None or route.body is None or not request.is_json:
        return
    if request.get_data(cache=True).strip():
        body(route.body)


# -- documentation and catalog ------------------------------------------------------------
@api_route(
    bp, "GET", "/openapi.json", summary="This OpenAPI document", permission="public", tag="meta"
)
def openapi() -> Any:
    document = openapi_document("Flowmill API", current_app.config["FLOWMILL_VERSION"])
    upload = document["paths"]["/api/flows/import"]["post"]["requestBody"]["content"]
    upload["multipart/form-data"] = {"schema": IMPORT_UPLOAD}
    return jsonify(document)


@api_route(
    bp,
    "GET",
    "/node-types",
    summary="Node types with ports and config schemas",
    permission="flows.read",
    tag="flows",
)
def node_types() -> Any:
    return jsonify(service().registry.catalog())


# -- flows --------------------------------------------------------------------------------
def _flow_out(flow: dict[str, Any], info: Any) -> dict[str, Any]:
    return {"flow": flow, **info.to_dict()}


@api_route(bp, "GET", "/flows", summary="Flows on the server", permission="flows.read", tag="flows")
def list_flows() -> Any:
    return jsonify([info.to_dict() for info in service().flows.list()])


@api_route(
    bp,
    "POST",
    "/flows",
    summary="Create a flow (validated; 409 if the id exists)",
    permission="flows.write",
    tag="flows",
    body=FLOW_BODY,
)
def create_flow() -> Any:
    flow = flow_body(FLOW_BODY)["flow"]  # save_flow validates: nothing is saved if invalid
    info = service().save_flow(flow, base_hash=None, by=g.user.name)
    return jsonify(_flow_out(flow, info)), 201


@api_route(
    bp,
    "POST",
    "/flows/validate",
    summary="Validate a flow without saving it",
    permission="flows.read",
    tag="flows",
    body=FLOW_BODY,
)
def validate_flow() -> Any:
    flow = flow_body(FLOW_BODY)["flow"]
    issues = service().validate(flow)
    return jsonify({"valid": not issues, "issues": [i.to_dict() for i in issues]})


@api_route(
    bp,
    "GET",
    "/flows/<flow_id>",
    summary="One flow with its current hash",
    permission="flows.read",
    tag="flows",
)
def get_flow(flow_id: str) -> Any:
    flow, info = service().flows.get(flow_id)
    return jsonify(_flow_out(flow, info))


@api_route(
    bp,
    "PUT",
    "/flows/<flow_id>",
    summary="Save a flow; refused when invalid or when someone saved it since base_hash",
    permission="flows.write",
    tag="flows",
    body=FLOW_BODY,
)
def put_flow(flow_id: str) -> Any:
    data = flow_body(FLOW_BODY)
    flow = data["flow"]
    _validate(flow)
    if flow.get("id") != flow_id:
        raise FlowmillError(f"the flow's id is {flow.get('id')!r}, the URL says {flow_id!r}")
    app = service()
    try:
        app.flows.info(flow_id)
        base = data.get("base_hash")  # an existing flow: the edit must start from its hash
    except FlowNotFound:
        base = None
    info = app.save_flow(flow, base_hash=base, by=g.user.name)
    return jsonify(_flow_out(flow, info))


@api_route(
    bp,
    "DELETE",
    "/flows/<flow_id>",
    summary="Remove a flow (its versions stay)",
    permission="flows.write",
    tag="flows",
)
def delete_flow(flow_id: str) -> Any:
    service().remove_flow(flow_id, by=g.user.name)
    return jsonify({"ok": True})


@api_route(
    bp,
    "GET",
    "/flows/<flow_id>/export",
    summary="The canonical flow file (no secrets: flows only name connections)",
    permission="flows.read",
    tag="flows",
)
def export_flow(flow_id: str) -> Any:
    flow, _ = service().flows.get(flow_id)
    return current_app.response_class(
        dump_flow(flow),
        mimetype="application/json",
        headers={"Content-Disposition": f'attachment; filename="{flow_id}.flow.json"'},
    )


@api_route(
    bp,
    "POST",
    "/flows/import",
    summary="Import a flow file (JSON {flow} or multipart field 'file'): 201 new, 200 replaced",
    permission="flows.write",
    tag="flows",
    body=IMPORT_BODY,
)
def import_flow() -> Any:
    if request.mimetype == "multipart/form-data":
        upload = request.files.get("file")
        if upload is None:
            raise BadRequest(
                "send the flow file as the multipart field 'file'",
                [{"field": "file", "message": "missing"}],
            )
        source = upload.filename or "upload"
        flow = _storable(parse_flow_text(upload.read(MAX_FLOW_BYTES + 1), source), source)
    elif request.is_json:
        flow = flow_body(IMPORT_BODY)["flow"]
    else:
        raise BadRequest(
            "send the flow as JSON {\"flow\": {...}} or as the multipart/form-data field 'file', "
            f"not {request.mimetype or 'without a content type'}"
        )
    _validate(flow)
    app = service()
    try:
        app.flows.info(flow["id"])
        existed = True
    except FlowNotFound:
        existed = False
    # no base hash: importing a file means "this is the flow now", like `flowmill flows import`
    info = app.save_flow(flow, by=g.user.name)
    return jsonify(_flow_out(flow, info)), 200 if existed else 201


@api_route(
    bp,
    "POST",
    "/flows/<flow_id>/run",
    summary="Queue a job for the flow",
    permission="jobs.run",
    tag="jobs",
    body=RUN_BODY,
)
def run_flow(flow_id: str) -> Any:
    data = body(RUN_BODY, optional=True)
    app = service()
    not_before = _moment(data.get("not_before"), "not_before")
    max_delay = _max_delay(data.get("max_delay"), not_before or app.clock.now())
    job = app.submit(
        flow_id,
        data.get("params") or {},
        priority=int(data.get("priority") or 0),
        not_before=not_before,
        max_delay=max_delay,
        group=data.get("group") or None,
        source=f"api ({g.user.name})",
        allow_files=False,
    )
    return jsonify(job.to_dict()), 201


def _max_delay(text: Any, start: datetime) -> timedelta | None:
    """``max_delay`` as an interval whose expiry (``start`` + it) the store can keep."""
    if not text:
        return None
    delay = parse_every(text, "max_delay")
    try:
        start + delay
    except OverflowError:
        raise BadRequest(
            "max_delay: the job would expire after the year 9999",
            [{"field": "max_delay", "message": "too long"}],
        ) from None
    return delay


def _moment(value: Any, field: str) -> datetime | None:
    """A user-given moment that the store can keep (year 1 to 9999 also in UTC), in UTC."""
    try:
        moment = parse_moment(value, field)
    except FlowmillError as exc:  # e.g. 0001-01-01T00:00+14:00, or 2h after 9999
        message = str(exc)
        detail = {"field": field, "message": message.removeprefix(f"{field}: ")}
        raise BadRequest(message, [detail]) from None
    return moment.astimezone(UTC) if moment else None


def _validate(flow: Any) -> None:
    if not isinstance(flow, dict):
        raise FlowmillError("'flow' must be a flowmill/1 object")
    issues = service().validate(flow)
    if issues:
        raise FlowValidationError(flow.get("id"), issues)


# -- jobs ---------------------------------------------------------------------------------
MAX_JOB_ID = 2**31 - 1  # jobs.id is an INTEGER column (32 bits in PostgreSQL and MariaDB)


def _job_id(job_id: int) -> int:
    # Flask's int converter takes any length; comparing a bigger number with the column
    # fails in PostgreSQL ("integer out of range") and SQLite (beyond 64 bits)
    if job_id > MAX_JOB_ID:
        raise JobNotFound(job_id)
    return job_id


@api_route(
    bp,
    "GET",
    "/jobs",
    summary="Jobs, newest first (?state=&flow=&group=&limit=)",
    permission="jobs.read",
    tag="jobs",
)
def list_jobs() -> Any:
    limit = min(query_int("limit", 100, 1, 999_999_999), 1000)
    jobs = service().jobs.list(
        state=request.args.get("state") or None,
        flow_id=request.args.get("flow") or None,
        group=request.args.get("group") or None,
        limit=limit,
    )
    return jsonify([job.to_dict() for job in jobs])


@api_route(
    bp,
    "GET",
    "/jobs/<int:job_id>",
    summary="One job with its run's node states, counts and sample records",
    permission="jobs.read",
    tag="jobs",
)
def get_job(job_id: int) -> Any:
    app = service()
    job = app.jobs.get(_job_id(job_id))
    out = job.to_dict()
    run = app.store.get_run(job.run_id) if job.run_id else None
    out["run"] = (
        None
        if run is None
        else {
            "run_id": run.run_id,
            "state": run.state,
            "started_at": run.started_at.isoformat(),
            "finished_at": run.finished_at.isoformat() if run.finished_at else None,
            "error": run.error,
            "error_node": run.error_node,
            "nodes": [
                {
                    "node": n.node_id,
                    "type": n.node_type,
                    "state": n.state,
                    "seconds": n.seconds,
                    "records_in": n.records_in,
                    "records_out": n.records_out,
                    "sample": n.sample,
                    "error": n.error,
                    "attempts": n.attempts,
                }
                for n in run.nodes
            ],
        }
    )
    return jsonify(out)


@api_route(
    bp,
    "GET",
    "/jobs/<int:job_id>/log",
    summary="The job's log and its run's log",
    permission="jobs.read",
    tag="jobs",
)
def job_log(job_id: int) -> Any:
    return jsonify({"lines": service().job_log(_job_id(job_id))})


def _job_action(name: str, summary: str) -> None:
    def view(job_id: int) -> Any:
        jobs = service().jobs
        operation = {
            "hold": jobs.hold,
            "resume": jobs.resume,
            "cancel": jobs.cancel,
            "kill": jobs.request_kill,
            "retry": jobs.retry,
        }[name]
        return jsonify(operation(_job_id(job_id)).to_dict())

    view.__name__ = f"job_{name}"
    api_route(
        bp,
        "POST",
        f"/jobs/<int:job_id>/{name}",
        summary=summary,
        permission="jobs.steer",
        tag="jobs",
    )(view)


for _name, _summary in (
    ("hold", "Keep a queued job from starting"),
    ("resume", "Let a held job start"),
    ("cancel", "Cancel a queued or held job"),
    ("kill", "Stop a running job (cancel a waiting one)"),
    ("retry", "Queue a job that did not succeed again"),
):
    _job_action(_name, _summary)


@api_route(
    bp,
    "PATCH",
    "/jobs/<int:job_id>",
    summary="Change params of a queued or held job",
    permission="jobs.steer",
    tag="jobs",
    body=PATCH_JOB_BODY,
)
def patch_job(job_id: int) -> Any:
    params = body(PATCH_JOB_BODY)["params"]
    return jsonify(service().set_job_params(_job_id(job_id), params).to_dict())


# -- status -------------------------------------------------------------------------------
@api_route(
    bp,
    "GET",
    "/status",
    summary="Servers, the active one, queue depth, running jobs",
    permission="status.read",
    tag="status",
)
def status() -> Any:
    from engine.batch.listeners import read_status as listeners_status
    from servers.fileservers import read_status as file_servers_status

    app = service()
    report = app.status()
    # what the running `flowmill serve` last wrote (None: not running)
    report["file_servers"] = file_servers_status(app.settings.data_dir)
    report["listeners"] = listeners_status(app.settings.data_dir)
    return jsonify(report)


def prometheus_text(app: Any) -> str:
    """``GET /metrics``: jobs by state, queue depth, run durations (Prometheus text)."""
    counts = app.jobs.counts()
    lines = [
        "# HELP flowmill_jobs Jobs by state.",
        "# TYPE flowmill_jobs gauge",
        *(f'flowmill_jobs{{state="{state}"}} {n}' for state, n in sorted(counts.items())),
        "# HELP flowmill_queue_depth Jobs waiting to start.",
        "# TYPE flowmill_queue_depth gauge",
        f"flowmill_queue_depth {counts.get('queued', 0)}",
    ]
    finished = [j for j in app.jobs.list(limit=1000) if j.started_at and j.finished_at]
    buckets = (1, 5, 30, 60, 300, 1800, 3600)
    durations = [(j.finished_at - j.started_at) / timedelta(seconds=1) for j in finished]
    lines += [
        "# HELP flowmill_run_seconds Run durations of the latest 1000 finished jobs.",
        "# TYPE flowmill_run_seconds histogram",
        *(
            f'flowmill_run_seconds_bucket{{le="{b}"}} {sum(1 for d in durations if d <= b)}'
            for b in buckets
        ),
        f'flowmill_run_seconds_bucket{{le="+Inf"}} {len(durations)}',
        f"flowmill_run_seconds_sum {sum(durations):.3f}",
        f"flowmill_run_seconds_count {len(durations)}",
    ]
    return "\n".join(lines) + "\n"
