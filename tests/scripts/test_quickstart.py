"""The README's quick start: ``scripts/quickstart`` serves Flowmill with the demo data and
the samples loaded.

A new user runs the script, opens the printed address, logs in as ``admin`` with the
printed password and runs the sample ``sales-import``: that is exactly what this test
does (tests/e2e/test_first_run.py does the same in a browser). The scheduled samples show
their next run times.
"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import requests

from tests.conftest import DEADLINE, quickstart


def test_quickstart_serves_the_samples_and_runs_one(tmp_path: Path) -> None:
    with quickstart(tmp_path) as started:
        data_dir, log, text = started.data_dir, started.log, started.log.read_text()
        deadline = time.monotonic() + DEADLINE
        base = started.url
        http = requests.Session()
        login = http.post(f"{base}/api/login", json={"name": "admin", "password": started.password})
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
