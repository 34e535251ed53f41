"""The REST API with real users, roles, sessions, CSRF and tokens (Flask test client)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from openapi_spec_validator import validate

from engine.flows.format import dump_flow, load_flow
from engine.service import Flowmill

ROOT = Path(__file__).parents[2]
SAMPLE = ROOT / "samples" / "csv-to-sql.flow.json"
PASSWORD = "correct horse battery"  # of every user of the `service` fixture (conftest.py)


def sample() -> dict[str, Any]:
    return load_flow(SAMPLE)


def test_every_call_needs_a_login(as_role: Any):
    anonymous = as_role(None)
    for path in ("/api/flows", "/api/jobs", "/api/status", "/api/node-types", "/metrics"):
        reply = anonymous.get(path)
        assert reply.status_code == 401, path
        assert set(reply.json) == {"error", "details"}


def test_wrong_password_and_unknown_user_look_the_same(web: Any):
    http = web.test_client()
    wrong = http.post("/api/login", json={"name": "admin", "password": "nope-nope-nope"})
    unknown = http.post("/api/login", json={"name": "ghost", "password": "nope-nope-nope"})
    assert wrong.status_code == unknown.status_code == 401
    assert wrong.json == unknown.json


def test_session_cookie_is_httponly_and_samesite_lax(web: Any):
    reply = web.test_client().post("/api/login", json={"name": "viewer", "password": PASSWORD})
    cookie = reply.headers["Set-Cookie"]
    assert "flowmill_session=" in cookie and "HttpOnly" in cookie and "SameSite=Lax" in cookie


def test_state_changes_need_the_csrf_token_and_the_own_origin(as_role: Any):
    editor = as_role("editor")
    flow = sample()
    assert editor.send("POST", "/api/flows", {"flow": flow}, csrf=False).status_code == 403
    foreign = editor.send(
        "POST", "/api/flows", {"flow": flow}, headers={"Origin": "https://evil.example"}
    )
    assert foreign.status_code == 403 and "cross-origin" in foreign.json["error"]
    assert editor.send("POST", "/api/flows", {"flow": flow}).status_code == 201


def test_bearer_token_works_without_csrf_and_stops_when_revoked(web: Any, service: Flowmill):
    info, token = service.users.create_token("operator", "nightly script")
    http = web.test_client()
    auth = {"Authorization": f"Bearer {token}"}
    assert http.get("/api/jobs", headers=auth).status_code == 200
    service.flows.put(sample())
    created = http.post("/api/flows/csv-to-sql/run", json={}, headers=auth)
    assert created.status_code == 201 and created.json["source"] == "api (operator)"
    service.users.revoke_token(info.id)
    assert http.get("/api/jobs", headers=auth).status_code == 401


@pytest.mark.parametrize(
    ("role", "run", "steer", "edit"),
    [
        ("viewer", 403, 403, 403),
        ("operator", 201, 200, 403),
        ("editor", 201, 200, 200),
        ("admin", 201, 200, 200),
    ],
)
def test_roles(as_role: Any, service: Flowmill, role: str, run: int, steer: int, edit: int):
    service.flows.put(sample())
    client = as_role(role)
    assert client.get("/api/flows").status_code == 200
    assert client.send("POST", "/api/flows/csv-to-sql/run", {}).status_code == run
    job = service.submit("csv-to-sql")
    assert client.send("POST", f"/api/jobs/{job.id}/hold").status_code == steer
    assert client.send("POST", f"/api/jobs/{job.id}/kill").status_code in (steer, 409)
    base = service.flows.info("csv-to-sql").flow_hash
    changed = {**sample(), "name": f"changed by {role}"}
    put = client.send("PUT", "/api/flows/csv-to-sql", {"flow": changed, "base_hash": base})
    assert put.status_code == edit


def test_flow_crud_validation_and_optimistic_locking(as_role: Any):
    editor = as_role("editor")
    flow = sample()
    created = editor.send("POST", "/api/flows", {"flow": flow})
    assert created.status_code == 201
    first_hash = created.json["hash"]
    assert editor.send("POST", "/api/flows", {"flow": flow}).status_code == 409

    broken = json.loads(json.dumps(flow))
    next(n for n in broken["nodes"] if n["id"] == "map-amounts")["config"]["fields"]["sku"] = (
        "Artikelnummer.__class__"
    )
    bad = editor.send("PUT", "/api/flows/csv-to-sql", {"flow": broken, "base_hash": first_hash})
    assert bad.status_code == 422
    assert any(
        d["node"] == "map-amounts" and d["field"] == "fields.sku" for d in bad.json["details"]
    )
    assert editor.get("/api/flows/csv-to-sql").json["hash"] == first_hash  # nothing saved

    mine = {**flow, "name": "mine"}
    theirs = {**flow, "name": "theirs"}
    assert (
        editor.send(
            "PUT", "/api/flows/csv-to-sql", {"flow": mine, "base_hash": first_hash}
        ).status_code
        == 200
    )
    stale = editor.send("PUT", "/api/flows/csv-to-sql", {"flow": theirs, "base_hash": first_hash})
    assert stale.status_code == 409 and "saved by someone else" in stale.json["error"]

    exported = editor.get("/api/flows/csv-to-sql/export")
    assert exported.data.decode() == dump_flow(mine)
    check = editor.send("POST", "/api/flows/validate", {"flow": broken})
    assert check.status_code == 200 and check.json["valid"] is False
    assert editor.send("DELETE", "/api/flows/csv-to-sql").status_code == 200
    assert editor.get("/api/flows/csv-to-sql").status_code == 404


def test_jobs_through_the_api(as_role: Any, service: Flowmill):
    service.flows.put(sample())
    operator = as_role("operator")
    created = operator.send(
        "POST",
        "/api/flows/csv-to-sql/run",
        {"params": {"vat": "1.07"}, "priority": 4, "max_delay": "2h"},
    )
    assert created.status_code == 201
    job = created.json
    assert (job["state"], job["priority"], job["params"]) == ("queued", 4, {"vat": 1.07})
    job_id = job["id"]
    assert [j["id"] for j in operator.get("/api/jobs?state=queued").json] == [job_id]
    assert operator.send("POST", f"/api/jobs/{job_id}/hold").json["state"] == "held"
    patched = operator.send("PATCH", f"/api/jobs/{job_id}", {"params": {"vat": 1.19}})
    assert patched.status_code == 200 and patched.json["params"] == {"vat": 1.19}
    bad = operator.send("PATCH", f"/api/jobs/{job_id}", {"params": {"vat": "viel"}})
    assert bad.status_code == 400 and "vat" in bad.json["error"]
    assert operator.send("POST", f"/api/jobs/{job_id}/resume").json["state"] == "queued"
    assert operator.send("POST", f"/api/jobs/{job_id}/cancel").json["state"] == "cancelled"
    conflict = operator.send("POST", f"/api/jobs/{job_id}/hold")
    assert conflict.status_code == 409 and f"job {job_id} is cancelled" in conflict.json["error"]
    detail = operator.get(f"/api/jobs/{job_id}").json
    assert detail["run"] is None and detail["flow"] == "csv-to-sql"
    log = operator.get(f"/api/jobs/{job_id}/log").json["lines"]
    assert any("held" in line for line in log)
    assert operator.get("/api/jobs/999999").status_code == 404
    missing = operator.send("POST", "/api/flows/nope/run", {})
    assert missing.status_code == 404


def test_job_detail_has_node_runs_counts_and_samples(as_role: Any, service: Flowmill):
    import threading

    from engine.batch.workers import run_job

    service.import_flow(SAMPLE)  # keeps the file's folder for ${flow_dir}
    job = service.submit("csv-to-sql")
    claimed = service.jobs.claim("test-worker")
    assert run_job(service, claimed.id, "test-worker", 5.0, threading.Event()) == "succeeded"
    detail = as_role("viewer").get(f"/api/jobs/{job.id}").json
    nodes = {n["node"]: n for n in detail["run"]["nodes"]}
    assert nodes["read-export"]["records_out"]["error"] == 2
    assert len(nodes["map-amounts"]["sample"]["out"]) == 20
    assert detail["state"] == "succeeded"


def test_status_metrics_and_node_types(as_role: Any, service: Flowmill):
    viewer = as_role("viewer")
    service.submit(str(SAMPLE))
    assert viewer.get("/api/status").json["queue_depth"] == 1
    metrics = viewer.get("/metrics")
    assert metrics.status_code == 200
    assert 'flowmill_jobs{state="queued"} 1' in metrics.data.decode()
    assert "flowmill_queue_depth 1" in metrics.data.decode()
    types = {t["type"] for t in viewer.get("/api/node-types").json}
    assert {"sql.write", "transform.map", "trigger.schedule"} <= types


def test_openapi_document_is_valid_and_matches_the_routes(web: Any):
    document = web.test_client().get("/api/openapi.json").json
    validate(document)
    documented = {
        (method.upper(), path)
        for path, operations in document["paths"].items()
        for method in operations
    }
    served = set()
    for rule in web.url_map.iter_rules():
        if rule.rule.startswith("/api"):
            path = rule.rule.replace("<int:", "{").replace("<", "{").replace(">", "}")
            served |= {(m, path) for m in rule.methods - {"HEAD", "OPTIONS"}}
    assert documented == served


def test_secrets_never_leave_the_server(as_role: Any, service: Flowmill):
    secret = "Pa55-w0rd-of-the-ERP"
    service.set_connection("erp", {"url": f"postgresql+psycopg://erp:{secret}@db/erp"})
    service.set_secret("shop_token", secret)
    service.flows.put(sample())
    admin = as_role("admin")
    service.submit("csv-to-sql")
    seen = []
    for path in (
        "/api/flows",
        "/api/flows/csv-to-sql",
        "/api/flows/csv-to-sql/export",
        "/api/jobs",
        "/api/status",
        "/metrics",
        "/api/openapi.json",
        "/api/me",
    ):
        seen.append(admin.get(path).data.decode())
    assert all(secret not in text for text in seen)
