"""Stopping ``flowmill serve``: Ctrl-C and SIGTERM end it cleanly, a kill -9 leaves nothing.

Ctrl-C at a terminal sends SIGINT to the whole process group, so the tests do the same
(``os.killpg``): workers and the web process get the signal too, which is what used to
print tracebacks, fail running jobs as "worker died" and restart the web app.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest

from engine.flows.format import write_flow
from engine.service import Flowmill
from tests.conftest import DEADLINE, wait_until

WAIT_FLOW = {
    "format": "flowmill/1",
    "id": "wait",
    "params": {"seconds": {"type": "number", "default": 1}},
    "nodes": [
        {"id": "start", "type": "trigger.manual"},
        {"id": "wait", "type": "util.delay", "config": {"seconds": "${seconds}"}},
    ],
    "edges": [{"source": "start", "source_port": "out", "target": "wait", "target_port": "in"}],
}


@dataclass
class Serve:
    process: subprocess.Popen[bytes]
    data_dir: Path
    log: Path
    flow: Path

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def job_state(self, job_id: int) -> str:
        with Flowmill.open(self.data_dir) as app:
            return app.jobs.get(job_id).state

    def job_log(self, job_id: int) -> str:
        with Flowmill.open(self.data_dir) as app:
            return "\n".join(app.job_log(job_id))

    def submit(self, seconds: float) -> int:
        with Flowmill.open(self.data_dir) as app:
            return app.submit(str(self.flow), {"seconds": str(seconds)}).id

    def exit_code(self) -> int:
        return self.process.wait(DEADLINE)


@contextmanager
def serving(tmp_path: Path, **settings: str) -> Iterator[Serve]:
    """``flowmill serve`` in a session of its own (as a terminal runs it), with every part
    on: web app, FTPS, WebDAV, batch server and workers."""
    data_dir = tmp_path / "data"
    flow = tmp_path / "wait.flow.json"
    write_flow(flow, WAIT_FLOW)
    env = {**os.environ, "FLOWMILL_DATA_DIR": str(data_dir), "FLOWMILL_FTPS_PORT": "0"}
    env |= {"FLOWMILL_WEBDAV_PORT": "0", "FLOWMILL_MAX_RUNNING": "2", **settings}
    env.setdefault("FLOWMILL_WEB_PORT", "0")
    log = tmp_path / "serve.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "designer.cli", "serve"],
            env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    serve = Serve(process, data_dir, log, flow)
    try:
        wait_until(
            lambda: "holds the scheduler lease" in serve.text() or process.poll() is not None,
            what="serve active",
        )
        assert process.poll() is None, serve.text()
        yield serve
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(DEADLINE)


def assert_clean(serve: Serve) -> None:
    code = serve.exit_code()
    text = serve.text()
    assert code == 0, text
    for noise in ("Traceback", "KeyboardInterrupt", "restarting", " died"):
        assert noise not in text, text
    for line in ("trigger listeners: stopped", "FTPS: stopped", "WebDAV: stopped"):
        assert line in text, text
    assert text.rstrip().splitlines()[-1] == "web app: stopped" or "web app: off" in text


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_a_stop_signal_waits_for_the_running_job_and_stops_every_part_in_one_line(
    tmp_path: Path, sig: signal.Signals
) -> None:
    with serving(tmp_path, FLOWMILL_WEB_PORT=str(_free_port())) as serve:
        job = serve.submit(3)
        wait_until(lambda: serve.job_state(job) == "running", what="job running")
        os.killpg(serve.process.pid, sig)
        assert_clean(serve)
        assert f"stopping ({sig.name}" in serve.text()
        assert "web app: stopped" in serve.text()
        assert serve.job_state(job) == "succeeded"  # waited for, within stop_grace


def test_past_the_grace_period_a_running_job_is_cancelled_with_its_reason(tmp_path: Path):
    with serving(tmp_path, FLOWMILL_STOP_GRACE="1") as serve:
        job = serve.submit(600)
        wait_until(lambda: serve.job_state(job) == "running", what="job running")
        os.killpg(serve.process.pid, signal.SIGTERM)
        assert_clean(serve)
        assert serve.job_state(job) == "cancelled"
        assert "kill requested: the server is stopping" in serve.job_log(job)


def test_a_second_ctrl_c_cancels_running_jobs_at_once(tmp_path: Path):
    with serving(tmp_path, FLOWMILL_STOP_GRACE="3600") as serve:
        job = serve.submit(600)
        wait_until(lambda: serve.job_state(job) == "running", what="job running")
        os.killpg(serve.process.pid, signal.SIGINT)
        wait_until(lambda: "stopping (SIGINT" in serve.text(), what="first Ctrl-C seen")
        os.killpg(serve.process.pid, signal.SIGINT)
        assert_clean(serve)
        assert serve.job_state(job) == "cancelled"


def test_kill_minus_9_of_serve_takes_its_web_process_along(tmp_path: Path):
    port = _free_port()
    with serving(tmp_path, FLOWMILL_WEB_PORT=str(port)) as serve:
        web = wait_until(lambda: _web_children(serve.process.pid), what="web process")
        serve.process.kill()  # only serve itself, as `kill -9 PID` does
        serve.process.wait(DEADLINE)
        wait_until(lambda: not any(_alive(p) for p in web), what="web process gone")
        # the port is free for the next start
        again = subprocess.run(
            [sys.executable, "-c", f"import socket; socket.create_server(('127.0.0.1', {port}))"],
            capture_output=True, text=True, timeout=DEADLINE,
        )  # fmt: skip
        assert again.returncode == 0, again.stderr


def _web_children(pid: int) -> list[psutil.Process]:
    try:
        children = psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []
    return [p for p in children if "designer.web.webserver" in " ".join(_cmdline(p))]


def _alive(process: psutil.Process) -> bool:
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _cmdline(process: psutil.Process) -> list[str]:
    try:
        return process.cmdline()
    except psutil.Error:
        return []


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
