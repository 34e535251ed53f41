"""The Celery executor against the real Redis on 127.0.0.1:6379 and real worker processes.

Each test gets its own data directory, its own broker queue (so nothing left over in Redis
can reach another test), a ``flowmill worker`` subprocess (prefork, one pool process) and
a batch server in a thread with ``executor = "celery"``.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from engine.batch.celery import TASK_NAME, CeleryDispatcher, create_app
from engine.batch.server import BatchServer
from engine.flows.format import write_flow
from engine.queue.jobs import Job
from engine.service import Flowmill
from tests.conftest import DEADLINE, wait_until

REDIS_URL = os.environ.get("FLOWMILL_TEST_REDIS", "redis://127.0.0.1:6379/15")
IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}
ROOT = Path(__file__).resolve().parents[2]

SETTINGS = """
[scheduler]
executor = "celery"
max_running = 2
heartbeat_interval = 0.2
heartbeat_timeout = 15
lease_timeout = 5
poll_interval = 0.05
kill_grace = 2

[celery]
broker = "{broker}"
"""


def wait_for(check: Callable[[], Any], seconds: float, what: str) -> Any:
    return wait_until(check, seconds, what, interval=0.05)


@pytest.fixture(scope="module")
def redis_url() -> str:
    import redis

    try:
        client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2, socket_timeout=2)
        client.ping()
        client.close()
    except Exception as exc:  # skip locally, fail in CI (as tests/conftest.py does)
        message = f"Redis is not reachable at {REDIS_URL}: {exc}"
        if IN_CI:
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    return REDIS_URL


CONC = ("--concurrency", "1")  # one pool process: messages are taken in order


class Worker:
    """``flowmill worker`` as a subprocess, with its own queue; stopped at the end."""

    def __init__(self, data: Path, queue: str, log: Path) -> None:
        self.log_path = log
        env = {**os.environ, "FLOWMILL_CELERY_QUEUE": queue, "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "designer.cli", "worker", "--data-dir", str(data), *CONC],
            cwd=ROOT,
            env=env,
            stdout=log.open("wb"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_ready(self) -> None:
        wait_for(lambda: " ready." in self.log() or self.proc.poll() is not None, DEADLINE, "ready")
        assert self.proc.poll() is None, self.log()

    def pool_pids(self) -> list[int]:
        return [c.pid for c in psutil.Process(self.proc.pid).children(recursive=True)]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)  # warm shutdown: nothing is running
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(15)
        with contextlib.suppress(ProcessLookupError):  # pool processes too, if any are left
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(5)


class Setup:
    """Data directory, worker, and a batch server in a thread, for one test."""

    def __init__(self, tmp_path: Path, broker: str, queue: str) -> None:
        self.tmp = tmp_path
        self.queue = queue
        self.data = tmp_path / "data"
        self.data.mkdir()
        (self.data / "flowmill.toml").write_text(SETTINGS.format(broker=broker))
        self.worker = Worker(self.data, queue, tmp_path / "worker.log")
        self.app = Flowmill.open(self.data)
        self.server = BatchServer(self.app, echo=lambda text: None)
        assert isinstance(self.server.pool, CeleryDispatcher)
        self.thread = threading.Thread(target=self.server.serve, daemon=True)
        self.thread.start()

    def job(self, job_id: int) -> Job:
        return self.app.jobs.get(job_id)

    def wait_job(self, job_id: int, check: Callable[[Job], bool], seconds: float = DEADLINE) -> Job:
        wait_for(lambda: check(self.job(job_id)), seconds, f"job {job_id}: {self.job(job_id)}")
        return self.job(job_id)

    def delivery_pids(self, job_id: int) -> list[int]:
        """Pool processes that took the job, from its log ("delivery N on ... pid P")."""
        return [
            int(m.group(1))
            for _, line in self.app.jobs.log(job_id)
            if (m := re.match(r"delivery \d+ on celery worker \S+ pid (\d+)", line))
        ]

    def close(self) -> None:
        self.server.request_stop()
        self.thread.join(15)
        self.worker.stop()
        self.app.close()


def _clean_redis(url: str, queue: str) -> None:
    """Remove every key of this test's queue, and its unacknowledged messages."""
    import redis

    client = redis.Redis.from_url(url)
    try:
        for key in client.scan_iter(match=f"*{queue}*"):
            client.delete(key)
        for tag, raw in client.hscan_iter("unacked"):
            if queue.encode() in raw:
                client.hdel("unacked", tag)
                client.zrem("unacked_index", tag)
    finally:
        client.close()


def _broker_idle(url: str, queue: str) -> bool:
    """Nothing waits in the queue and nothing of it is unacknowledged."""
    import redis

    client = redis.Redis.from_url(url)
    try:
        waiting = sum(client.llen(key) for key in client.scan_iter(match=f"{queue}*"))
        unacked = [raw for _, raw in client.hscan_iter("unacked") if queue.encode() in raw]
        return waiting == 0 and not unacked
    finally:
        client.close()


@pytest.fixture
def celery_setup(
    tmp_path: Path, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Setup]:
    queue = f"flowmill-test-{uuid.uuid4().hex[:12]}"
    monkeypatch.setenv("FLOWMILL_CELERY_QUEUE", queue)
    setup = Setup(tmp_path, redis_url, queue)
    try:
        yield setup
    finally:
        try:
            setup.close()
        finally:
            _clean_redis(redis_url, queue)


def delay_flow(folder: Path, flow_id: str = "wait") -> Path:
    flow = {
        "format": "flowmill/1",
        "id": flow_id,
        "params": {"seconds": {"type": "number", "default": 0.2}},
        "nodes": [
            {"id": "start", "type": "trigger.manual"},
            {"id": "wait", "type": "util.delay", "config": {"seconds": "${seconds}"}},
        ],
        "edges": [{"source": "start", "source_port": "out", "target": "wait", "target_port": "in"}],
    }
    path = folder / f"{flow_id}.flow.json"
    write_flow(path, flow)
    return path


def marks_flow(folder: Path, database: Path) -> Path:
    """Writes n at once and n + 1000 after a delay, in ONE sql.write transaction."""

    def edge(source: str, target: str) -> dict[str, str]:
        return {"source": source, "source_port": "out", "target": target, "target_port": "in"}

    flow = {
        "format": "flowmill/1",
        "id": "marks",
        "params": {
            "n": {"type": "integer", "required": True},
            "seconds": {"type": "number", "default": 2.5},
        },
        "nodes": [
            {"id": "start", "type": "trigger.manual"},
            {"id": "now", "type": "transform.select", "config": {"fields": ["n"]}},
            {"id": "wait", "type": "util.delay", "config": {"seconds": "${seconds}"}},
            {
                "id": "later",
                "type": "transform.map",
                "config": {"fields": {"n": "n + 1000"}, "keep": False},
            },
            {
                "id": "write",
                "type": "sql.write",
                "config": {
                    "url": f"sqlite:///{database}",
                    "table": "marks",
                    "batch_size": 1,
                    "transaction": "run",
                },
            },
        ],
        "edges": [
            edge("start", "now"),
            edge("now", "write"),
            edge("start", "wait"),
            edge("wait", "later"),
            edge("later", "write"),
        ],
    }
    path = folder / "marks.flow.json"
    write_flow(path, flow)
    return path


def _write_in_flight(database: Path) -> bool:
    """True while another connection holds the database's write lock (uncommitted rows)."""
    conn = sqlite3.connect(database, timeout=0, isolation_level=None)
    try:
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("ROLLBACK")
        return False
    except sqlite3.OperationalError as exc:
        return "locked" in str(exc)
    finally:
        conn.close()


def _kill_pool_process_running(setup: Setup, job_id: int) -> int:
    """SIGKILL the worker's pool process that runs the job (not the worker itself)."""
    pid = setup.delivery_pids(job_id)[-1]
    assert pid in setup.worker.pool_pids() and pid != setup.worker.proc.pid
    os.kill(pid, signal.SIGKILL)
    return pid


# -- the tests -------------------------------------------------------------------------------


def test_a_job_runs_through_a_real_celery_worker_and_succeeds(celery_setup: Setup) -> None:
    s = celery_setup
    job = s.app.submit(str(delay_flow(s.tmp)), {"seconds": "0.3"})
    done = s.wait_job(job.id, lambda j: j.state in ("succeeded", "failed"))
    assert done.state == "succeeded", done
    assert (done.attempts, done.deliveries) == (1, 1)
    assert re.fullmatch(r"celery:.+#1", done.worker or "")
    run = s.app.store.get_run(done.run_id or "")
    assert run is not None and run.state == "succeeded"
    assert [n.node_id for n in run.nodes] and all(n.state == "succeeded" for n in run.nodes)
    log = "\n".join(message for _, message in s.app.jobs.log(job.id))
    assert "delivery 1 on celery worker" in log and "succeeded" in log
    pid = s.delivery_pids(job.id)[0]
    assert pid in s.worker.pool_pids()  # it ran in the worker's pool, not in the server
    wait_for(lambda: _broker_idle(s.app.settings.broker_url or "", s.queue), DEADLINE, "ack")


def test_worker_killed_mid_job_is_redelivered_once_without_duplicate_side_effects(
    celery_setup: Setup,
) -> None:
    s = celery_setup
    database = s.tmp / "marks.db"
    with sqlite3.connect(database) as conn:
        conn.execute("CREATE TABLE marks (n INTEGER PRIMARY KEY)")
    job = s.app.submit(str(marks_flow(s.tmp, database)), {"n": "7"}, max_attempts=2)
    s.wait_job(job.id, lambda j: j.state == "running" and j.deliveries == 1)
    # the first delivery has inserted n = 7 and waits, its transaction open
    wait_for(lambda: _write_in_flight(database), DEADLINE, "first delivery writing")
    first = s.job(job.id)
    killed = _kill_pool_process_running(s, job.id)

    done = s.wait_job(job.id, lambda j: j.state in ("succeeded", "failed", "dead_letter"), 30)
    assert done.state == "succeeded", (done, s.app.job_log(job.id))
    assert (done.deliveries, done.attempts) == (2, 2)
    assert done.worker == f"{(first.worker or '').split('#')[0]}#2"
    pids = s.delivery_pids(job.id)
    assert len(pids) == 2 and pids[0] == killed and pids[1] != killed
    with sqlite3.connect(database) as conn:
        rows = [r[0] for r in conn.execute("SELECT n FROM marks ORDER BY n")]
    assert rows == [7, 1007]  # the killed delivery's insert was rolled back, none twice
    # the lost delivery's run is closed, the redelivery recorded a run of its own
    lost = s.app.store.get_run(first.run_id or "")
    assert lost is not None and lost.state == "failed" and "redelivered" in (lost.error or "")
    assert done.run_id != first.run_id
    assert s.app.store.get_run(done.run_id or "").state == "succeeded"  # type: ignore[union-attr]
    log = "\n".join(s.app.job_log(job.id))
    assert log.count("redelivered") == 1
    wait_for(lambda: _broker_idle(s.app.settings.broker_url or "", s.queue), DEADLINE, "ack")


def test_a_message_for_a_finished_job_is_a_stale_hint_and_does_nothing(
    celery_setup: Setup,
) -> None:
    s = celery_setup
    flow = delay_flow(s.tmp)
    job = s.app.submit(str(flow), {"seconds": "0"})
    before = s.wait_job(job.id, lambda j: j.state == "succeeded")
    log_before = s.app.jobs.log(job.id)
    runs_before = len(s.app.store.list_runs(limit=100))
    token = (before.worker or "").split("#")[0]

    celery = create_app(s.app.settings, queue=s.queue)
    try:
        for n, (job_id, hint) in enumerate(
            [(job.id, token), (job.id, "celery:elsewhere:1"), (999_999, "celery:elsewhere:2")]
        ):
            celery.send_task(TASK_NAME, args=[job_id, hint], task_id=f"stale-{n}", queue=s.queue)
    finally:
        celery.close()
    # one pool process takes messages in order: once this job is done, so are the hints
    after = s.app.submit(str(flow), {"seconds": "0"})
    s.wait_job(after.id, lambda j: j.state == "succeeded")

    assert s.job(job.id) == before
    assert s.app.jobs.log(job.id) == log_before
    assert len(s.app.store.list_runs(limit=100)) == runs_before + 1  # only the new job's
    wait_for(lambda: s.worker.log().count("stale, not run") == 3, DEADLINE, "stale hints in log")
    wait_for(lambda: _broker_idle(s.app.settings.broker_url or "", s.queue), DEADLINE, "acks")


def test_a_job_redelivered_more_often_than_max_attempts_becomes_dead_letter(
    celery_setup: Setup,
) -> None:
    s = celery_setup
    job = s.app.submit(str(delay_flow(s.tmp)), {"seconds": "30"}, max_attempts=1)
    s.wait_job(job.id, lambda j: j.state == "running" and j.deliveries == 1)
    _kill_pool_process_running(s, job.id)

    done = s.wait_job(job.id, lambda j: j.state != "running")
    assert done.state == "dead_letter", done
    assert done.error == "dead letter: delivered 2 times"
    assert done.deliveries == 2 and done.finished_at is not None
    assert len(s.delivery_pids(job.id)) == 1  # it never ran a second time
    wait_for(lambda: _broker_idle(s.app.settings.broker_url or "", s.queue), DEADLINE, "ack")
    time.sleep(0.5)  # the server's sweeps leave a dead letter alone
    assert s.job(job.id).state == "dead_letter"
    # an operator can queue it again, with the delivery count starting from zero
    again = s.app.jobs.retry(job.id)
    assert (again.state, again.deliveries) == ("queued", 0)
    s.app.jobs.request_kill(job.id)
    s.wait_job(job.id, lambda j: j.state == "cancelled")


def test_kill_request_reaches_the_job_on_its_celery_worker(celery_setup: Setup) -> None:
    s = celery_setup
    job = s.app.submit(str(delay_flow(s.tmp)), {"seconds": "60"})
    s.wait_job(job.id, lambda j: j.state == "running" and j.deliveries == 1)
    s.app.jobs.request_kill(job.id)
    done = s.wait_job(job.id, lambda j: j.state != "running")
    assert done.state == "cancelled", done
    assert "grace period" not in (done.error or "")  # stopped by itself, not revoked
    assert s.worker.proc.poll() is None
    wait_for(lambda: _broker_idle(s.app.settings.broker_url or "", s.queue), DEADLINE, "ack")


def test_a_job_that_ignores_the_kill_is_revoked_after_the_grace_period(
    celery_setup: Setup,
) -> None:
    s = celery_setup
    database = s.tmp / "marks.db"
    with sqlite3.connect(database) as conn:
        conn.execute("CREATE TABLE marks (n INTEGER PRIMARY KEY)")
    flow = {
        "format": "flowmill/1",
        "id": "stuck",
        "nodes": [
            {"id": "start", "type": "trigger.manual"},
            {"id": "n", "type": "transform.map", "config": {"fields": {"n": "1"}, "keep": False}},
            {
                "id": "write",
                "type": "sql.write",
                "config": {"url": f"sqlite:///{database}?timeout=60", "table": "marks"},
            },
        ],
        "edges": [
            {"source": "start", "source_port": "out", "target": "n", "target_port": "in"},
            {"source": "n", "source_port": "out", "target": "write", "target_port": "in"},
        ],
    }
    write_flow(s.tmp / "stuck.flow.json", flow)
    blocker = sqlite3.connect(database, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")  # the job's insert waits here, deaf to a cancel
    try:
        job = s.app.submit(str(s.tmp / "stuck.flow.json"))
        s.wait_job(job.id, lambda j: j.state == "running" and j.deliveries == 1)
        time.sleep(0.5)
        pid = s.delivery_pids(job.id)[0]
        s.app.jobs.request_kill(job.id)
        done = s.wait_job(job.id, lambda j: j.state != "running")
        assert done.state == "cancelled", done
        assert "grace period" in (done.error or "")
        wait_for(lambda: not psutil.pid_exists(pid), DEADLINE, "revoked pool process gone")
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    wait_for(lambda: _broker_idle(s.app.settings.broker_url or "", s.queue), DEADLINE, "ack")
    time.sleep(0.5)  # a requeued message of the revoked task must not run it again
    assert s.job(job.id) == done
    with sqlite3.connect(database) as conn:
        assert conn.execute("SELECT count(*) FROM marks").fetchone()[0] == 0


def test_settings_without_a_broker_are_refused_with_the_place_to_set_it(tmp_path: Path) -> None:
    from engine.config import Settings
    from engine.errors import FlowmillError

    with pytest.raises(FlowmillError, match=r"\[celery\] broker"):
        create_app(Settings(data_dir=tmp_path, executor="celery"))
