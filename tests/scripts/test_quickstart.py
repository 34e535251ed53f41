"""The README's quick start: ``scripts/quickstart`` serves Flowmill with the demo data and
the samples loaded.

A new user runs the script, opens the printed address, logs in as ``admin`` with the
printed password and runs the sample ``sales-import``: that is exactly what this test
does (tests/e2e/test_first_run.py does the same in a browser). The scheduled samples show
their next run times.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import sqlite3
import subprocess
import time
from pathlib import Path

import requests

ROOT = Path(__file__).parents[2]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_quickstart_serves_the_samples_and_runs_one(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    port = _free_port()
    env = {**os.environ, "FLOWMILL_DATA_DIR": str(data_dir), "FLOWMILL_WEB_PORT": str(port)}
    env |= {"FLOWMILL_FTPS_PORT": "0", "FLOWMILL_WEBDAV_PORT": "0"}  # ports of their own
    env.pop("FLOWMILL_FLOWS_DIR", None)
    log = tmp_path / "quickstart.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            ["bash", str(ROOT / "scripts" / "quickstart")],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 180
        text = ""
        while "imported flow sales-import" not in text or "schedule flow:" not in text:
            assert process.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.3)
            text = log.read_text()
        password = re.search(r"user 'admin' with password (\S+)", text)
        assert password, text
        assert f"web app: http://127.0.0.1:{port}/" in text
        base = f"http://127.0.0.1:{port}"
        http = requests.Session()
        login = http.post(
            f"{base}/api/login", json={"name": "admin", "password": password.group(1)}
        )
        assert login.status_code == 200, login.text
        http.headers["X-CSRF-Token"] = login.json()["csrf_token"]
        assert "demo built in" in text  # flowmill demo init ran first
        flows = [f["id"] for f in http.get(f"{base}/api/flows").json()]
        assert {"sales-import", "nightly-prices", "order-status-report"} <= set(flows)
        schedules = {s["flow"]: s for s in http.get(f"{base}/api/schedules").json()}
        assert schedules["nightly-prices"]["next_fires"], schedules  # next fire times shown
        assert schedules["nightly-prices"]["next_fires"][0].endswith(
            ("T02:00:00+01:00", "T02:00:00+02:00")
        )

        def run(flow: str) -> dict:
            job = http.post(f"{base}/api/flows/{flow}/run", json={}).json()
            while True:
                state = http.get(f"{base}/api/jobs/{job['id']}").json()
                if state["state"] in {"succeeded", "failed"}:
                    return state
                assert time.monotonic() < deadline, state
                time.sleep(0.2)

        state = run("sales-import")
        assert state["state"] == "succeeded", state
        # the samples' partners run beside the server: the shop (also the weather service
        # and webcam of the downloads sample) and the mail server that keeps every mail
        for flow in ("downloads", "order-status-report", "nightly-prices"):
            assert run(flow)["state"] == "succeeded", (flow, log.read_text()[-3000:])
        downloads = sorted(p.suffix for p in (data_dir / "demo" / "downloads").iterdir())
        assert downloads == [".jpg", ".json"]
        outbox = list((data_dir / "demo" / "outbox").glob("*.eml"))
        assert outbox and b"application/pdf" in outbox[0].read_bytes()
        with sqlite3.connect(data_dir / "demo" / "erp.db") as db:
            (rows,) = db.execute("SELECT count(*) FROM sales").fetchone()
        assert rows == 24  # the demo export's good lines
        assert http.get(f"{base}/dashboard").status_code == 200
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(30)
