"""``flowmill serve`` with its file servers: an upload starts the flow that waits for it."""

from __future__ import annotations

import ftplib
import io
import os
import re
import signal
import ssl
import subprocess
import sys
import time
from pathlib import Path

import requests

from engine.service import Flowmill
from tests.conftest import DEADLINE, status_shown, wait_until

USER, PASSWORD = "erp", "erp drop password 1"
DROP = {"folder": "in", "pattern": "*.csv", "after": "move"}


def _flow(out: Path, source: str) -> dict:
    return {
        "format": "flowmill/1",
        "id": f"orders-{source}",
        "nodes": [
            {"id": "drop", "type": "trigger.file_drop", "config": DROP | {"source": source}},
            {"id": "read", "type": "file.read", "config": {}},
            {"id": "write", "type": "file.write", "config": {"path": str(out)}},
        ],
        "edges": [
            {"source": "drop", "source_port": "out", "target": "read", "target_port": "in"},
            {"source": "read", "source_port": "out", "target": "write", "target_port": "in"},
        ],
    }


def _wait_for_job(data_dir: Path, flow_id: str, seconds: float = DEADLINE) -> str:
    deadline = time.monotonic() + seconds
    with Flowmill.open(data_dir) as app:
        while time.monotonic() < deadline:
            jobs = app.jobs.list(flow_id=flow_id)
            if jobs and jobs[0].state in {"succeeded", "failed"}:
                return jobs[0].state
            time.sleep(0.2)
    raise AssertionError(f"no finished job of {flow_id} within {seconds} s")


def test_uploads_over_ftps_and_webdav_run_their_flows_and_status_shows_the_servers(
    tmp_path: Path,
) -> None:
    data_dir = tmp_path / "data"
    with Flowmill.open(data_dir) as app:
        app.users.add(USER, PASSWORD, "operator", file_drop=True)
        app.users.add("clerk", PASSWORD, "operator")  # no --drop: no file servers
        for source in ("ftps", "webdav"):
            app.save_flow(_flow(tmp_path / f"out-{source}.csv", source))
    env = {**os.environ, "FLOWMILL_DATA_DIR": str(data_dir), "FLOWMILL_WEB_PORT": "0"}
    env |= {"FLOWMILL_FTPS_PORT": "0", "FLOWMILL_WEBDAV_PORT": "0"}
    log = tmp_path / "serve.log"
    with log.open("wb") as out:
        serve = subprocess.Popen(
            [sys.executable, "-m", "designer.cli", "serve"], env=env, stdout=out,
            stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while "active (holds" not in log.read_text():
            assert serve.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
        text = log.read_text()
        ftps_port = int(re.search(r"FTPS: ftp://[\d.]+:(\d+)/", text).group(1))  # type: ignore[union-attr]
        webdav = re.search(r"WebDAV: (\S+)", text).group(1).rstrip("/")  # type: ignore[union-attr]
        payload = b"id;qty\n1;5\n2;7\n"

        context = ssl.create_default_context(cafile=str(data_dir / "tls" / "cert.pem"))
        ftp = ftplib.FTP_TLS(context=context)
        ftp.connect("127.0.0.1", ftps_port)
        try:
            ftp.login("clerk", PASSWORD)
            raise AssertionError("a user without --drop logged in")
        except ftplib.error_perm:
            pass
        ftp = ftplib.FTP_TLS(context=context)
        ftp.connect("127.0.0.1", ftps_port)
        ftp.login(USER, PASSWORD)
        ftp.prot_p()
        ftp.mkd("in")
        ftp.storbinary("STOR in/orders.csv", io.BytesIO(payload))
        ftp.quit()
        assert _wait_for_job(data_dir, "orders-ftps") == "succeeded"

        http = requests.Session()
        http.auth = (USER, PASSWORD)
        assert requests.put(f"{webdav}/in/x.csv", data=payload).status_code == 401
        http.put(f"{webdav}/in/orders.csv", data=payload).raise_for_status()
        assert _wait_for_job(data_dir, "orders-webdav") == "succeeded"

        home = data_dir / "drop" / USER / "in"
        for source in ("ftps", "webdav"):
            written = (tmp_path / f"out-{source}.csv").read_text().splitlines()
            assert [line.replace(",", ";") for line in written] == ["id;qty", "1;5", "2;7"]
        wait_until(lambda: not (home / "orders.csv").exists(), what="the upload moved away")
        assert (home / "processed" / "orders.csv").read_bytes() == payload

        def both_counted() -> str:
            text = status_shown(env)
            return text if "file drops: 2 jobs started" in text else ""

        # the status file is rewritten every 2 s: wait for the one that counts both jobs
        shown = wait_until(both_counted, what="status with both jobs", interval=0.5)
        assert "ftps:" in shown and "webdav:" in shown
    finally:
        serve.send_signal(signal.SIGTERM)
        serve.wait(30)
