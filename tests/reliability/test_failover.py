"""Two `flowmill serve` processes on one PostgreSQL database: one active, one hot standby."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from cryptography.fernet import Fernet

from engine.flows.format import write_flow
from engine.service import Flowmill
from tests.conftest import DEADLINE, wait_until

FLOWMILL = Path(sys.executable).parent / "flowmill"
KEY = Fernet.generate_key().decode()

# The lease must outlive any stall of a busy machine (a merely slow active server must not
# lose it), yet expire soon enough after a kill -9 for the take-over test; a job's
# heartbeat is never taken for lost here.
LEASE_TIMEOUT = 15
SETTINGS = f"""
[store]
url = "{{url}}"

[scheduler]
max_running = 2
heartbeat_interval = 0.3
heartbeat_timeout = 120
lease_timeout = {LEASE_TIMEOUT}
poll_interval = 0.1
"""

pytestmark = pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)


class Cluster:
    def __init__(self, root: Path, url: str) -> None:
        self.root = root
        self.url = url
        self.servers: dict[str, subprocess.Popen] = {}
        engine = sa.create_engine(url)
        with engine.begin() as conn:
            conn.execute(sa.text("CREATE TABLE done (n integer PRIMARY KEY, run text)"))
        self.engine = engine
        self.flow = self._flow()
        self.app = Flowmill.open(self.data("client"))

    def data(self, name: str) -> Path:
        path = self.root / name
        path.mkdir(exist_ok=True)
        (path / "flowmill.toml").write_text(SETTINGS.format(url=self.url))
        return path

    def _flow(self) -> Path:
        flow = {
            "format": "flowmill/1",
            "id": "mark",
            "params": {"n": {"type": "integer", "required": True}},
            "nodes": [
                {"id": "start", "type": "trigger.manual"},
                {"id": "wait", "type": "util.delay", "config": {"seconds": 0.02}},
                {
                    "id": "mark",
                    "type": "sql.execute",
                    "config": {
                        "url": self.url,
                        "statement": "INSERT INTO done (n, run) VALUES (:n, :run)",
                        "params": {"n": "${n}", "run": "${run_id}"},
                    },
                },
            ],
            "edges": [
                {"source": "start", "source_port": "out", "target": "wait", "target_port": "in"},
                {"source": "wait", "source_port": "out", "target": "mark", "target_port": "in"},
            ],
        }
        path = self.root / "mark.flow.json"
        write_flow(path, flow)
        return path

    def serve(self, name: str) -> subprocess.Popen:
        env = {
            **os.environ,
            "FLOWMILL_DATA_DIR": str(self.data(name)),
            "FLOWMILL_SECRET_KEY": KEY,
            "FLOWMILL_WEB_PORT": "0",  # two servers on one machine: no web app needed here
            "FLOWMILL_FTPS_PORT": "0",  # file servers on ports of their own
            "FLOWMILL_WEBDAV_PORT": "0",
        }
        proc = subprocess.Popen(
            [str(FLOWMILL), "serve"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env=env,
            start_new_session=True,
        )
        self.servers[name] = proc
        return proc

    def holder_pid(self) -> int | None:
        lease = self.app.status()["lease"]
        if lease is None or lease["expired"]:
            return None
        return int(lease["holder"].split("-")[-2])

    def wait_for(self, check: Callable[[], Any], seconds: float = DEADLINE) -> Any:
        return wait_until(check, seconds, interval=0.1)

    def finished(self) -> int:
        counts = self.app.jobs.counts()
        return sum(n for state, n in counts.items() if state not in ("queued", "running"))

    def rows(self) -> list[int]:
        with self.engine.connect() as conn:
            return [r[0] for r in conn.execute(sa.text("SELECT n FROM done ORDER BY n"))]

    def close(self) -> None:
        for name, proc in self.servers.items():
            if proc.poll() is None:
                (self.root / name / "control").mkdir(exist_ok=True)
                (self.root / name / "control" / "stop").touch()
        for proc in self.servers.values():
            try:
                proc.wait(DEADLINE)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(5)
        self.app.close()
        self.engine.dispose()


@pytest.fixture
def cluster(tmp_path: Path, db_url: str) -> Iterator[Cluster]:
    os.environ["FLOWMILL_SECRET_KEY"] = KEY
    c = Cluster(tmp_path, db_url)
    try:
        yield c
    finally:
        c.close()
        os.environ.pop("FLOWMILL_SECRET_KEY", None)


def test_two_servers_on_one_database_run_every_job_exactly_once(cluster: Cluster):
    ids = [cluster.app.submit(str(cluster.flow), {"n": n}).id for n in range(300)]
    a = cluster.serve("a")
    b = cluster.serve("b")
    cluster.wait_for(lambda: cluster.finished() == 300, seconds=3 * DEADLINE)
    jobs = [cluster.app.jobs.get(i) for i in ids]
    assert {j.state for j in jobs} == {"succeeded"}, [(j.id, j.error) for j in jobs if j.error][:3]
    assert {j.attempts for j in jobs} == {1}
    assert cluster.rows() == list(range(300))
    holder = cluster.holder_pid()
    assert holder in (a.pid, b.pid)
    roles = sorted(s["role"] for s in cluster.app.status()["servers"])
    assert roles == ["active", "standby"]
    # only the active server's workers ran jobs
    assert {j.worker.split("/")[0].split("-")[-2] for j in jobs} == {str(holder)}


def test_standby_takes_over_within_the_lease_timeout_when_the_active_dies(cluster: Cluster):
    ids = [cluster.app.submit(str(cluster.flow), {"n": n}).id for n in range(200)]
    first = cluster.serve("a")
    cluster.wait_for(lambda: cluster.holder_pid() == first.pid)
    second = cluster.serve("b")
    cluster.wait_for(lambda: cluster.finished() >= 40)
    os.kill(first.pid, signal.SIGKILL)  # the server process only: no goodbye, no release
    # the dead server's last lease, as the store has it until the standby takes over
    last = {}

    def taken_over() -> bool:
        lease = cluster.app.status()["lease"]
        if lease is not None and lease["holder"].split("-")[-2] == str(first.pid):
            last.update(lease)
        return cluster.holder_pid() == second.pid

    cluster.wait_for(taken_over)
    # never before the dead server's lease expired, and at once after (the standby looks
    # every second; how soon on this machine is measured, not asserted)
    taken = cluster.app.status()["lease"]
    moment = datetime.fromisoformat
    assert last and moment(taken["acquired_at"]) >= moment(last["expires_at"]), (last, taken)
    cluster.wait_for(lambda: cluster.finished() == 200, seconds=3 * DEADLINE)
    jobs = [cluster.app.jobs.get(i) for i in ids]
    assert {j.state for j in jobs} == {"succeeded"}, [(j.id, j.error) for j in jobs if j.error][:3]
    assert cluster.rows() == list(range(200))  # nothing ran twice (the key is unique)
    assert max(j.attempts for j in jobs) == 1
    status = cluster.app.status()
    assert status["lease"]["holder"].split("-")[-2] == str(second.pid)
