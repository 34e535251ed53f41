"""``/hooks/<path>``: partners start flows over HTTP (``trigger.webhook`` nodes).

No login: the caller proves itself with the node's token or HMAC signature instead
(nodes/webhook.py). Every answer is JSON. Which flows listen on which path is read from
the enabled flows and kept for a second (a new path is looked up at once).
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass
from typing import Any

from flask import Blueprint, Response, current_app, jsonify, request

from engine.errors import FlowmillError, SecretNotFound
from nodes.webhook import HookRefused, check_caller, request_records

__all__ = ["bp", "last_record"]

bp = Blueprint("hooks", __name__)

CACHE_SECONDS = 1.0
TERMINAL = {"succeeded", "failed", "cancelled", "killed", "expired", "dead_letter"}


@dataclass(frozen=True)
class _Hook:
    flow_id: str
    node_id: str
    config: dict[str, Any]


class _HookTable:
    """Enabled flows' webhook nodes by path, re-read at most once a second."""

    def __init__(self) -> None:
        self._hooks: dict[str, list[_Hook]] = {}
        self._read = 0.0
        self._lock = threading.Lock()

    def find(self, service: Any, path: str) -> list[_Hook]:
        """The hooks of ``path``; an unknown path reads the flows again (it may just have
        been saved), a known one at most once a second (it may just have been disabled)."""
        with self._lock:
            if time.monotonic() - self._read > CACHE_SECONDS or path not in self._hooks:
                self._hooks = self._load(service)
                self._read = time.monotonic()
            return list(self._hooks.get(path, []))

    @staticmethod
    def _load(service: Any) -> dict[str, list[_Hook]]:
        hooks: dict[str, list[_Hook]] = {}
        spec = service.registry.get("trigger.webhook")
        for info in service.flows.list():
            if not info.enabled:
                continue
            flow, _ = service.flows.get(info.id)
            for node in flow.get("nodes", []):
                if node.get("type") == "trigger.webhook" and not node.get("disabled"):
                    config = spec.with_defaults(node.get("config") or {})
                    hook = _Hook(info.id, node["id"], config)
                    hooks.setdefault(str(config.get("path", "")), []).append(hook)
        return hooks


def _service() -> Any:
    return current_app.extensions["flowmill"]


def _table() -> _HookTable:
    """This app's table (each app serves its own service)."""
    return current_app.extensions.setdefault("flowmill_hooks", _HookTable())


def _answer(status: int, **body: Any) -> Response:
    response = jsonify(body)
    response.status_code = status
    response.headers["Cache-Control"] = "no-store"
    return response


@bp.route("/hooks/<path:path>", methods=["GET", "POST", "PUT", "PATCH"])
def hook(path: str) -> Response:
    service = _service()
    hooks = _table().find(service, path)
    if not hooks:
        return _answer(404, error=f"no enabled flow listens on /hooks/{path}")
    hooks = [h for h in hooks if request.method in h.config.get("methods", ["POST"])]
    if not hooks:
        return _answer(405, error=f"/hooks/{path} does not take {request.method}")
    limit = min(int(h.config.get("max_body_kb", 1024)) for h in hooks) * 1024
    if (request.content_length or 0) > limit:
        return _answer(413, error=f"the body is larger than {limit // 1024} KiB")
    body = request.stream.read(limit + 1)
    if len(body) > limit:
        return _answer(413, error=f"the body is larger than {limit // 1024} KiB")
    started: list[tuple[_Hook, int]] = []
    refused: HookRefused | None = None
    for item in hooks:
        try:
            check_caller(item.config, _secret(service, item), request.headers, body)
            records = request_records(request.content_type or "", body, request.args.to_dict())
        except HookRefused as exc:
            refused = refused or exc
            continue
        try:
            job = service.submit(
                item.flow_id,
                trigger={"$records": records} if isinstance(records, list) else records,
                source=f"webhook /hooks/{path} ({request.remote_addr})",
                allow_files=False,
            )
        except FlowmillError as exc:
            return _answer(422, error=f"flow {item.flow_id}: {exc}")
        started.append((item, job.id))
    if not started:
        assert refused is not None
        return _answer(refused.status, error=refused.message)
    waiting = [(h, job_id) for h, job_id in started if h.config.get("respond") == "wait"]
    if len(started) == 1 and waiting:
        item, job_id = waiting[0]
        return _wait(service, item, job_id)
    return _answer(202, jobs=[job_id for _, job_id in started], state="queued")


def _secret(service: Any, item: _Hook) -> str | None:
    ref = item.config.get("secret")
    if not (isinstance(ref, dict) and isinstance(ref.get("$secret"), str)):
        return None
    try:
        return str(service.store.get_secret(ref["$secret"]))
    except SecretNotFound:
        return None


def _wait(service: Any, item: _Hook, job_id: int) -> Response:
    """Answer with the flow's last record once job ``job_id`` ended (or 202 in time)."""
    deadline = time.monotonic() + float(item.config.get("wait_seconds", 30))
    pause = 0.05
    while True:
        job = service.jobs.get(job_id)
        if job.state in TERMINAL:
            break
        if time.monotonic() >= deadline:
            return _answer(202, job=job_id, state=job.state, message="still running")
        time.sleep(min(pause, max(0.0, deadline - time.monotonic())))
        pause = min(pause * 1.5, 0.5)
    if job.state != "succeeded":
        where = f"node {job.error_node}: " if job.error_node else ""
        return _answer(500, job=job_id, state=job.state, error=f"{where}{job.error or job.state}")
    record = last_record(service, item.flow_id, job.run_id)
    response = jsonify(record if record is not None else {"job": job_id, "state": job.state})
    response.headers["X-Flowmill-Job"] = str(job_id)
    response.headers["Cache-Control"] = "no-store"
    return response


def last_record(service: Any, flow_id: str, run_id: str | None) -> dict[str, Any] | None:
    """The last record the run's final node put out: of the nodes nothing follows (the
    last to finish among them), else of any node."""
    if not run_id:
        return None
    run = service.store.get_run(run_id)
    if run is None:
        return None
    text = service.store.get_flow_version(run.flow_hash)
    flow = json.loads(text) if text else {"edges": []}
    feeding = {e["source"] for e in flow.get("edges", []) if e.get("source_port") != "error"}
    done = [n for n in run.nodes if n.state == "succeeded" and n.last and n.finished_at]
    for pool in ([n for n in done if n.node_id not in feeding], done):
        candidates = [(n.finished_at, n) for n in pool if _main_last(n) is not None]
        if candidates:
            return _main_last(max(candidates, key=lambda c: c[0])[1])
    return None


def _main_last(node: Any) -> dict[str, Any] | None:
    ports = sorted((p for p in node.last if p != "error"), key=lambda p: p != "out")
    return node.last[ports[0]] if ports else None
