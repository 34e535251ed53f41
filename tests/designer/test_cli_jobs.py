"""Batch server commands as an operator types them (no server running: the store only)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import requests

from tests.conftest import DEADLINE

ROOT = Path(__file__).parents[2]
SAMPLE = ROOT / "samples" / "csv-to-sql.flow.json"
FLOWMILL = Path(sys.executable).parent / "flowmill"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def fm(*args: str, data_dir: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "FLOWMILL_DATA_DIR": str(data_dir)}
    return subprocess.run(
        [str(FLOWMILL), *args], capture_output=True, text=True, env=env, cwd=ROOT, timeout=60
    )


def test_submit_list_show_and_steer_a_job(data_dir: Path):
    submitted = fm(
        "submit",
        str(SAMPLE),
        "--param",
        "vat=1.07",
        "--priority",
        "5",
        "--max-delay",
        "2h",
        "--group",
        "night",
        data_dir=data_dir,
    )
    assert submitted.returncode == 0, submitted.stderr
    job_id = submitted.stdout.strip()
    assert job_id.isdigit()

    listed = json.loads(fm("jobs", "list", "--json", data_dir=data_dir).stdout)
    [job] = listed
    for key in (
        "id",
        "flow",
        "state",
        "priority",
        "group",
        "submitted_at",
        "started_at",
        "finished_at",
        "attempts",
        "error",
    ):
        assert key in job
    assert (job["id"], job["flow"], job["state"], job["priority"], job["group"]) == (
        int(job_id),
        "csv-to-sql",
        "queued",
        5,
        "night",
    )
    assert job["params"] == {"vat": 1.07}
    assert job["expires_at"] is not None

    assert "held" in fm("jobs", "hold", job_id, data_dir=data_dir).stdout
    edited = fm("jobs", "set-param", job_id, "vat=1.19", data_dir=data_dir)
    assert edited.returncode == 0, edited.stderr
    bad = fm("jobs", "set-param", job_id, "vat=viel", data_dir=data_dir)
    assert bad.returncode == 2 and "param 'vat'" in bad.stderr
    shown = json.loads(fm("jobs", "show", job_id, "--json", data_dir=data_dir).stdout)
    assert (shown["state"], shown["params"]) == ("held", {"vat": 1.19})
    assert "queued" in fm("jobs", "resume", job_id, data_dir=data_dir).stdout
    assert "cancelled" in fm("jobs", "cancel", job_id, data_dir=data_dir).stdout
    wrong = fm("jobs", "resume", job_id, data_dir=data_dir)
    assert wrong.returncode == 2
    assert f"job {job_id} is cancelled; only held jobs can be resumed" in wrong.stderr
    assert "queued" in fm("jobs", "retry", job_id, data_dir=data_dir).stdout
    log = fm("jobs", "log", job_id, data_dir=data_dir).stdout
    for text in (
        "submitted (cli)",
        "held",
        "params changed: vat=1.19",
        "resumed",
        "cancelled",
        "retry requested",
    ):
        assert text in log
    missing = fm("jobs", "show", "424242", data_dir=data_dir)
    assert missing.returncode == 2 and "job 424242 does not exist" in missing.stderr


def test_submit_refuses_bad_flows_and_params(data_dir: Path, tmp_path: Path):
    nope = fm("submit", str(tmp_path / "nope.flow.json"), data_dir=data_dir)
    assert nope.returncode == 2 and "nope.flow.json" in nope.stderr
    unknown = fm("submit", "no-such-flow", data_dir=data_dir)
    assert unknown.returncode == 2 and "'no-such-flow' is not on the server" in unknown.stderr
    param = fm("submit", str(SAMPLE), "--param", "nope=1", data_dir=data_dir)
    assert param.returncode == 2 and "not declared" in param.stderr
    delay = fm("submit", str(SAMPLE), "--max-delay", "soon", data_dir=data_dir)
    assert delay.returncode == 2 and "max-delay" in delay.stderr


def test_submit_refuses_a_time_outside_the_years_1_to_9999_and_a_vat_of_infinity(data_dir: Path):
    """Fuzzing found both: year 1 local time is year 0 in UTC (a traceback before), and
    1e400 read as infinity, which no database stores as a number."""
    year_one = fm("submit", str(SAMPLE), "--at", "0001-01-01T00:00", data_dir=data_dir)
    assert year_one.returncode == 2, year_one.stderr
    assert "--at: '0001-01-01T00:00' is out of range" in year_one.stderr
    assert "Traceback" not in year_one.stderr
    for value in ("1e400", "nan"):
        vat = fm("submit", str(SAMPLE), "--param", f"vat={value}", data_dir=data_dir)
        assert vat.returncode == 2 and "param 'vat'" in vat.stderr, vat.stderr
        assert "not a finite number" in vat.stderr
    assert fm("jobs", "list", "--json", data_dir=data_dir).stdout.strip() == "[]"


def test_flows_import_list_export_and_submit_by_id(data_dir: Path):
    imported = fm("flows", "import", str(SAMPLE), data_dir=data_dir)
    assert imported.returncode == 0 and "csv-to-sql: imported" in imported.stdout
    again = fm("flows", "import", str(SAMPLE), data_dir=data_dir)
    assert "csv-to-sql: unchanged" in again.stdout
    listing = json.loads(fm("flows", "list", "--json", data_dir=data_dir).stdout)
    assert [(f["id"], f["enabled"]) for f in listing] == [("csv-to-sql", True)]
    assert fm("flows", "export", "csv-to-sql", data_dir=data_dir).stdout == SAMPLE.read_text()
    assert "disabled" in fm("flows", "disable", "csv-to-sql", data_dir=data_dir).stdout
    by_id = fm("submit", "csv-to-sql", "--json", data_dir=data_dir)
    assert json.loads(by_id.stdout)["flow"] == "csv-to-sql"


def test_schedules_preview_prints_one_iso_time_per_line(data_dir: Path):
    result = fm(
        "schedules",
        "preview",
        "--cron",
        "0 2 * * 1-5",
        "--calendar",
        "DE-BY",
        "--from",
        "2026-03-31T00:00:00+02:00",
        "--count",
        "4",
        data_dir=data_dir,
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.split()
    # Good Friday (3 April) and the weekend and Easter Monday (6 April) are skipped
    assert lines == [
        "2026-03-31T02:00:00+02:00",
        "2026-04-01T02:00:00+02:00",
        "2026-04-02T02:00:00+02:00",
        "2026-04-07T02:00:00+02:00",
    ]
    windows = fm(
        "schedules",
        "preview",
        "--every",
        "4h",
        "--window",
        "workday=08:00-17:00",
        "--window",
        "saturday=none",
        "--window",
        "sunday=none",
        "--from",
        "2026-11-27T12:00:00+01:00",
        "--count",
        "2",
        data_dir=data_dir,
    )
    assert windows.stdout.split() == ["2026-11-27T12:00:00+01:00", "2026-11-27T16:00:00+01:00"]
    for line in windows.stdout.split():
        datetime.fromisoformat(line)
    never = fm(
        "schedules",
        "preview",
        "--cron",
        "0 9 25 12 *",
        "--calendar",
        "DE",
        "--window",
        "sunday=none",
        data_dir=data_dir,
    )
    assert never.returncode == 2 and "never fires" in never.stderr


def test_schedules_add_list_remove_and_conditions(data_dir: Path):
    cond = fm(
        "conditions",
        "set",
        "office",
        "--window",
        "workday=06:00-20:00",
        "--window",
        "sunday=none",
        data_dir=data_dir,
    )
    assert cond.returncode == 0, cond.stderr
    assert "office" in fm("conditions", "list", data_dir=data_dir).stdout
    cal = fm(
        "calendars",
        "set",
        "munich",
        "--holidays",
        "DE-BY",
        "--exclude",
        "2026-12-24",
        data_dir=data_dir,
    )
    assert cal.returncode == 0, cal.stderr
    bad = fm("calendars", "set", "x", "--holidays", "XX-YY", data_dir=data_dir)
    assert bad.returncode == 2 and "XX" in bad.stderr
    added = fm(
        "schedules",
        "add",
        "nightly",
        str(SAMPLE),
        "--cron",
        "0 7 * * 1-5",
        "--calendar",
        "munich",
        "--condition",
        "office",
        data_dir=data_dir,
    )
    assert added.returncode == 0, added.stderr
    listed = json.loads(fm("schedules", "list", "--json", data_dir=data_dir).stdout)
    assert [(s["name"], s["flow"]) for s in listed] == [("nightly", "csv-to-sql")]
    assert listed[0]["next_fire"] is not None
    assert fm("schedules", "remove", "nightly", data_dir=data_dir).returncode == 0
    assert json.loads(fm("schedules", "list", "--json", data_dir=data_dir).stdout) == []


def test_status_without_a_server(data_dir: Path):
    fm("submit", str(SAMPLE), data_dir=data_dir)
    report = json.loads(fm("status", "--json", data_dir=data_dir).stdout)
    assert report["lease"] is None and report["servers"] == []
    assert report["queue_depth"] == 1
    text = fm("status", data_dir=data_dir).stdout
    assert "active server: none" in text and "queue depth: 1" in text


def test_serve_runs_a_submitted_job_and_a_stop_file_ends_it_with_exit_0(data_dir: Path):
    job_id = fm("submit", str(SAMPLE), data_dir=data_dir).stdout.strip()
    port = free_port()
    env = {**os.environ, "FLOWMILL_DATA_DIR": str(data_dir), "FLOWMILL_WEB_PORT": str(port)}
    env |= {"FLOWMILL_FTPS_PORT": "0", "FLOWMILL_WEBDAV_PORT": "0"}
    server = subprocess.Popen(
        [str(FLOWMILL), "serve"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
        cwd=ROOT,
    )
    try:
        deadline = time.monotonic() + DEADLINE
        state = ""
        while time.monotonic() < deadline and state != "succeeded":
            shown = fm("jobs", "show", job_id, "--json", data_dir=data_dir)
            state = json.loads(shown.stdout)["state"] if shown.returncode == 0 else ""
            time.sleep(0.3)
        assert state == "succeeded"
        # the web app runs inside serve; the first start made an admin with a printed password
        password_file = data_dir / "initial-admin-password"
        assert password_file.stat().st_mode & 0o777 == 0o600
        password = password_file.read_text().strip()
        base = f"http://127.0.0.1:{port}"
        assert requests.get(f"{base}/api/jobs", timeout=5).status_code == 401
        http = requests.Session()
        login = http.post(
            f"{base}/api/login", json={"name": "admin", "password": password}, timeout=5
        )
        assert login.status_code == 200
        jobs = http.get(f"{base}/api/jobs", timeout=5).json()
        assert [j["state"] for j in jobs] == ["succeeded"]
        (data_dir / "control" / "stop").touch()
        output, _ = server.communicate(timeout=30)
    finally:
        if server.poll() is None:
            server.kill()
    assert server.returncode == 0
    assert "active (holds the scheduler lease)" in output and "stopped" in output
    assert password in output  # printed once on the console
    # the sample wrote into the data directory's demo database
    assert (data_dir / "demo-erp.db").exists()
