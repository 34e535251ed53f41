"""``/hooks/<path>``: webhook triggers start flows; token and HMAC checks; wait mode."""

from __future__ import annotations

import hashlib
import hmac
import itertools
import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from engine.batch.workers import run_job
from engine.service import Flowmill
from nodes.webhook import check_webhook
from tests.conftest import run_queued

SECRET = "hook-s3cret-value"


def _flow(flow_id: str, out: Path | None, hook: dict[str, Any], *after: dict[str, Any]) -> dict:
    """webhook → (nodes ``after``) → file.write ``out`` (if given)."""
    nodes = [{"id": "hook", "type": "trigger.webhook", "config": hook}, *after]
    if out is not None:
        nodes.append({"id": "write", "type": "file.write", "config": {"path": str(out)}})
    edges = [
        {"source": a["id"], "source_port": "out", "target": b["id"], "target_port": "in"}
        for a, b in itertools.pairwise(nodes)
    ]
    return {"format": "flowmill/1", "id": flow_id, "nodes": nodes, "edges": edges}


TOKEN_HOOK = {"path": "orders/new", "secret": {"$secret": "orders-hook"}}


@pytest.fixture
def hooks(service: Flowmill, tmp_path: Path) -> Flowmill:
    service.set_secret("orders-hook", SECRET)
    service.save_flow(_flow("orders", tmp_path / "orders.csv", TOKEN_HOOK))
    return service


@pytest.fixture
def worker(service: Flowmill) -> Iterator[None]:
    """Runs queued jobs in the background, like the batch server's workers."""
    stop = threading.Event()

    def loop() -> None:
        while not stop.is_set():
            job = service.jobs.claim("hook-worker")
            if job is None:
                stop.wait(0.02)
                continue
            run_job(service, job.id, "hook-worker", 5.0, threading.Event())

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    yield
    stop.set()
    thread.join(10)


def test_a_call_with_the_token_starts_the_flow_with_the_body_as_first_record(
    hooks: Flowmill, web: Any, tmp_path: Path
) -> None:
    http = web.test_client()
    reply = http.post(
        "/hooks/orders/new?shop=web",
        json={"order": 4711, "customer": "Müller"},
        headers={"X-Flowmill-Token": SECRET},
    )
    assert reply.status_code == 202, reply.json
    (job_id,) = reply.json["jobs"]
    job = hooks.jobs.get(job_id)
    assert job.params["_trigger"] == {"shop": "web", "order": 4711, "customer": "Müller"}
    assert job.source.startswith("webhook /hooks/orders/new")
    assert run_queued(hooks) == ["succeeded"]
    lines = (tmp_path / "orders.csv").read_text(encoding="utf-8").splitlines()
    assert lines == ["shop,order,customer", "web,4711,Müller"]
    bearer = http.post(
        "/hooks/orders/new", json={"order": 1}, headers={"Authorization": f"Bearer {SECRET}"}
    )
    assert bearer.status_code == 202
    assert SECRET not in json.dumps([j.to_dict() for j in hooks.jobs.list()])


@pytest.mark.parametrize(
    "headers",
    [{}, {"X-Flowmill-Token": "wrong"}, {"Authorization": "Bearer wrong"}, {"X-Token": SECRET}],
)
def test_a_call_without_the_right_token_is_refused_and_starts_nothing(
    hooks: Flowmill, web: Any, headers: dict[str, str]
) -> None:
    reply = web.test_client().post("/hooks/orders/new", json={"order": 1}, headers=headers)
    assert reply.status_code == 401
    assert "token" in reply.json["error"] and SECRET not in reply.get_data(as_text=True)
    assert hooks.jobs.list() == []


def test_an_hmac_signed_body_is_accepted_and_a_tampered_one_refused(
    service: Flowmill, web: Any, tmp_path: Path
) -> None:
    service.set_secret("shop-hook", SECRET)
    hook = {"path": "shop", "auth": "hmac", "secret": {"$secret": "shop-hook"}}
    service.save_flow(_flow("shop", tmp_path / "shop.csv", hook))
    body = json.dumps({"sku": "A-1", "stock": 7}).encode()
    signature = hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
    http = web.test_client()
    ok = http.post(
        "/hooks/shop",
        data=body,
        content_type="application/json",
        headers={"X-Hub-Signature-256": f"sha256={signature}"},
    )
    assert ok.status_code == 202
    assert service.jobs.get(ok.json["jobs"][0]).params["_trigger"] == {"sku": "A-1", "stock": 7}
    tampered = body.replace(b"7", b"9")
    for headers, data in (
        ({"X-Hub-Signature-256": f"sha256={signature}"}, tampered),
        ({}, body),
        ({"X-Hub-Signature-256": "sha256=" + "0" * 64}, body),
    ):
        reply = http.post(
            "/hooks/shop", data=data, content_type="application/json", headers=headers
        )
        assert reply.status_code == 401 and "signature" in reply.json["error"]
    assert len(service.jobs.list()) == 1


def test_wait_mode_answers_with_the_flows_last_record(
    service: Flowmill, web: Any, tmp_path: Path, worker: None
) -> None:
    hook = {"path": "quote", "respond": "wait", "auth": "none", "methods": ["GET", "POST"]}
    total = {"id": "total", "type": "transform.map", "config": {"fields": {"total": "qty * price"}}}
    service.save_flow(_flow("quote", None, hook, total))
    http = web.test_client()
    reply = http.post("/hooks/quote", json=[{"qty": 2, "price": 5}, {"qty": 3, "price": 7}])
    assert reply.status_code == 200, reply.json
    assert reply.json == {"qty": 3, "price": 7, "total": 21}  # the last record
    job = service.jobs.get(int(reply.headers["X-Flowmill-Job"]))
    assert job.state == "succeeded" and len(job.params["_trigger"]["$records"]) == 2
    hello = {"path": "hello", "respond": "wait", "auth": "none", "methods": ["GET"]}
    shout = {"id": "shout", "type": "transform.map", "config": {"fields": {"hi": "upper(name)"}}}
    service.save_flow(_flow("hello", tmp_path / "hello.csv", hello, shout))
    by_query = http.get("/hooks/hello?name=ann")
    assert by_query.status_code == 200  # the file writer ends the flow: its record answers
    assert by_query.json == {"path": str(tmp_path / "hello.csv"), "rows": 1}
    assert (tmp_path / "hello.csv").read_text().splitlines() == ["name,hi", "ann,ANN"]


def test_wait_mode_reports_a_failed_run_and_a_run_that_takes_too_long(
    service: Flowmill, web: Any, tmp_path: Path, worker: None
) -> None:
    failing = {"id": "div", "type": "transform.map", "config": {"fields": {"x": "1 / qty"}}}
    hook = {"path": "divide", "respond": "wait", "auth": "none"}
    service.save_flow(_flow("divide", tmp_path / "d.csv", hook, failing))
    reply = web.test_client().post("/hooks/divide", json={"qty": 0})
    assert reply.status_code == 500
    assert reply.json["state"] == "failed" and "node div" in reply.json["error"]
    slow = {"id": "sleep", "type": "util.delay", "config": {"seconds": 3}}
    hook = {"path": "slow", "respond": "wait", "wait_seconds": 1, "auth": "none"}
    service.save_flow(_flow("slow", tmp_path / "s.csv", hook, slow))
    reply = web.test_client().post("/hooks/slow", json={"a": 1})
    assert reply.status_code == 202
    assert reply.json["state"] in ("queued", "running") and reply.json["job"] > 0


def test_unknown_paths_methods_big_and_broken_bodies_get_clear_answers(
    hooks: Flowmill, web: Any, tmp_path: Path
) -> None:
    http = web.test_client()
    token = {"X-Flowmill-Token": SECRET}
    assert http.post("/hooks/nothing", json={}).status_code == 404
    assert http.get("/hooks/orders/new", headers=token).status_code == 405
    broken = http.post(
        "/hooks/orders/new", data=b"{no json", content_type="application/json", headers=token
    )
    assert broken.status_code == 400 and "not JSON" in broken.json["error"]
    big = http.post(
        "/hooks/orders/new",
        data=b"x" * (1024 * 1024 + 1),
        content_type="text/plain",
        headers=token,
    )
    assert big.status_code == 413
    form = http.post("/hooks/orders/new", data={"order": "12", "note": "ä"}, headers=token)
    assert form.status_code == 202
    assert hooks.jobs.get(form.json["jobs"][0]).params["_trigger"] == {"order": "12", "note": "ä"}
    hooks.flows.set_enabled("orders", False)
    web.extensions["flowmill_hooks"]._read = 0.0  # forget the cached table at once
    assert http.post("/hooks/orders/new", json={}, headers=token).status_code == 404
    assert len(hooks.jobs.list()) == 1


def test_a_hook_without_a_stored_secret_is_refused_by_validation(service: Flowmill) -> None:
    assert [p.field for p in check_webhook({"path": "a"})] == ["secret"]
    assert "not text" in check_webhook({"path": "a", "secret": "plain"})[0].message
    assert check_webhook({"path": "a", "auth": "none"}) == []
    assert check_webhook({"path": "a", "secret": {"$secret": "k"}}) == []
    flow = _flow("x", Path("/tmp/x.csv"), {"path": "a", "secret": "plain"})
    issues = service.validate(flow)
    assert [(i.node, i.field) for i in issues] == [("hook", "secret")]
