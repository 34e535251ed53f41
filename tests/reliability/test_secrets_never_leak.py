"""Network nodes that fail with credentials in play: the secrets appear in no job log, run
log, node error, event, export, connection listing or connection test."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from engine.batch.workers import run_job
from engine.errors import FlowmillError
from engine.flows.format import dump_flow
from engine.run.events import Event
from engine.service import Flowmill

API_TOKEN = "Tq4-api-token-9911"
DB_PASSWORD = "Db7-password-2024"
HOOK_SECRET = "Hk2-hook-secret-5150"


class EchoRefuse(BaseHTTPRequestHandler):
    """Answers 401 and repeats the request's headers: a partner that echoes credentials."""

    def do_GET(self) -> None:
        body = json.dumps({"error": "denied", "you_sent": dict(self.headers.items())}).encode()
        self.send_response(401)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def partner() -> Iterator[str]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), EchoRefuse)
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def _flow(out: Path) -> dict[str, Any]:
    return {
        "format": "flowmill/1",
        "id": "leaky-network",
        "nodes": [
            {"id": "start", "type": "trigger.manual", "config": {}},
            {
                "id": "call",
                "type": "http.request",
                "config": {"url": "/orders", "connection": "shop-api", "on_error": "route"},
            },
            {"id": "rejected", "type": "file.write", "config": {"path": str(out)}},
            {
                "id": "erp",
                "type": "sql.read",
                "config": {"connection": "erp", "query": "SELECT 1"},
            },
        ],
        "edges": [
            {"source": "start", "source_port": "out", "target": "call", "target_port": "in"},
            {"source": "call", "source_port": "error", "target": "rejected", "target_port": "in"},
        ],
    }


def test_failing_network_nodes_never_show_their_secrets(
    data_dir: Path, tmp_path: Path, partner: str
) -> None:
    out = tmp_path / "rejected.csv"
    with Flowmill.open(data_dir) as app:
        app.set_connection("shop-api", {"base_url": partner, "auth": "bearer", "token": API_TOKEN})
        # MariaDB's root has no password here: this one is refused
        app.set_connection(
            "erp", {"url": "mysql+pymysql://root@127.0.0.1:3306/test", "password": DB_PASSWORD}
        )
        app.set_secret("hook", HOOK_SECRET)
        events: list[str] = []
        app.bus.subscribe(Event, lambda e: events.append(json.dumps(e.to_dict(), default=str)))
        app.save_flow(_flow(out))
        job = app.submit("leaky-network")
        claimed = app.jobs.claim("w")
        assert claimed is not None
        assert run_job(app, claimed.id, "w", 5.0, threading.Event()) == "failed"
        finished = app.jobs.get(job.id)
        run = app.store.get_run(finished.run_id or "")
        assert run is not None
        texts = {
            "job": json.dumps(finished.to_dict(), default=str),
            "job log": "\n".join(app.job_log(job.id)),
            "nodes": json.dumps([n.__dict__ for n in run.nodes], default=str),
            "events": "\n".join(events),
            "export": dump_flow(app.flows.get("leaky-network")[0]),
            "rejected records": out.read_text(encoding="utf-8"),
        }
        for kind in ("erp", "shop-api"):
            texts[f"test {kind}"] = "no error"
            try:
                app.test_connection(kind, timeout=5)
            except FlowmillError as exc:  # the message is what is checked
                texts[f"test {kind}"] = str(exc)
    env = {**os.environ, "FLOWMILL_DATA_DIR": str(data_dir)}
    listed = subprocess.run(
        [sys.executable, "-m", "designer.cli", "connection", "list"],
        env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    texts["connection list"] = listed.stdout + listed.stderr
    # the texts are about the failures that involved the secrets
    assert "401" in texts["rejected records"] and "Access denied" in texts["job"]
    assert "Access denied" in texts["test erp"] and "401" in texts["test shop-api"]
    assert "shop-api" in texts["connection list"] and "token" in texts["connection list"]
    for where, text in texts.items():
        for value in (API_TOKEN, DB_PASSWORD, HOOK_SECRET):
            assert value not in text, f"{value} leaked in {where}"
