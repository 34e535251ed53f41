"""The REST API under ``/api``: a thin shell over the service layer (engine/service.py).

Views read the JSON body, call one service function and return JSON. Permissions are
declared with the route (designer/routing.py); fields a caller may not set are simply
not read (no mass assignment).
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from flask import Blueprint, current_app, g, jsonify, request

from designer import auth
from designer.routing import api_route, openapi_document
from engine.calendars import parse_every
from engine.clock import parse_moment
from engine.errors import FlowmillError, FlowValidationError
from engine.flow import dump_flow
from engine.flowstore import FlowNotFound

__all__ = ["bp", "prometheus_text"]

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
RUN_BODY: dict[str, Any] = {
    "type": "object",
    "properties": {
        "params": {"type": "object"},
        "priority": {"type": "integer"},
        "not_before": {"type": "string", "format": "date-time"},
        "max_delay": {"type": "string", "examples": ["2h"]},
        "group": {"type": "string"},
    },
}
PATCH_JOB_BODY: dict[str, Any] = {
    "type": "object",
    "required": ["params"],
    "properties": {"params": {"type": "object"}},
}


def service() -> Any:
    return current_app.extensions["flowmill"]


def body() -> dict[str, Any]:
    data = request.get_json(silent=True)
    if not isinstance(data, dict):
        raise FlowmillError("the request body must be a JSON object")
    return data


# -- documentation and catalog ------------------------------------------------------------
@api_route(
    bp, "GET", "/openapi.json", summary="This OpenAPI document", permission="public", tag="meta"
)
def openapi() -> Any:
    return jsonify(openapi_document("Flowmill API", current_app.config["FLOWMILL_VERSION"]))


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
    flow = body().get("flow")
    _validate(flow)
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
    flow = body().get("flow")
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
    data = body()
    flow = data.get("flow")
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
    "/flows/<flow_id>/run",
    summary="Queue a job for the flow",
    permission="jobs.run",
    tag="jobs",
    body=RUN_BODY,
)
def run_flow(flow_id: str) -> Any:
    data = request.get_json(silent=True) or {}
    if not isinstance(data, dict):
        raise FlowmillError("the request body must be a JSON object")
    params = data.get("params") or {}
    if not isinstance(params, dict):
        raise FlowmillError("params must be an object")
    job = service().submit(
        flow_id,
        params,
        priority=int(data.get("priority") or 0),
        not_before=parse_moment(data.get("not_before"), "not_before"),
        max_delay=parse_every(str(data["max_delay"]), "max_delay")
        if data.get("max_delay")
        else None,
        group=data.get("group") or None,
        source=f"api ({g.user.name})",
    )
    return jsonify(job.to_dict()), 201


def _validate(flow: Any) -> None:
    if not isinstance(flow, dict):
        raise FlowmillError("'flow' must be a flowmill/1 object")
    issues = service().validate(flow)
    if issues:
        raise FlowValidationError(flow.get("id"), issues)


# -- jobs ---------------------------------------------------------------------------------
@api_route(
    bp,
    "GET",
    "/jobs",
    summary="Jobs, newest first (?state=&flow=&group=&limit=)",
    permission="jobs.read",
    tag="jobs",
)
def list_jobs() -> Any:
    limit = min(int(request.args.get("limit", 100)), 1000)
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
    job = app.jobs.get(job_id)
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
    return jsonify({"lines": service().job_log(job_id)})


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
        return jsonify(operation(job_id).to_dict())

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
    params = body().get("params")
    if not isinstance(params, dict):
        raise FlowmillError("params must be an object")
    return jsonify(service().set_job_params(job_id, params).to_dict())


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
    return jsonify(service().status())


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
