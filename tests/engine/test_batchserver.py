"""The batch server with real worker processes, as operators use it."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from engine.batch.server import BatchServer
from engine.flows.format import write_flow
from engine.queue.jobs import Job
from engine.service import Flowmill
from tests.conftest import DEADLINE, wait_until

# Quick polls, but heartbeat and lease timeouts far beyond any stall of a busy machine: a
# worker or a server that is merely slow must never be taken for lost in these tests (the
# reliability tests and tests/engine/test_jobs.py cover loss, with clocks of their own).
FAST = """
[scheduler]
max_running = {max_running}
heartbeat_interval = 0.2
heartbeat_timeout = 120
lease_timeout = 120
poll_interval = 0.05
kill_grace = 1.5
stop_grace = 10
"""


def delay_flow(folder: Path, seconds: float, flow_id: str = "wait") -> Path:
    flow = {
        "format": "flowmill/1",
        "id": flow_id,
        "params": {"seconds": {"type": "number", "default": seconds}},
        "nodes": [
            {"id": "start", "type": "trigger.manual"},
            {"id": "wait", "type": "util.delay", "config": {"seconds": "${seconds}"}},
        ],
        "edges": [{"source": "start", "source_port": "out", "target": "wait", "target_port": "in"}],
    }
    path = folder / f"{flow_id}.flow.json"
    write_flow(path, flow)
    return path


def failing_flow(folder: Path) -> Path:
    flow = {
        "format": "flowmill/1",
        "id": "broken",
        "nodes": [
            {"id": "read", "type": "file.read", "config": {"path": str(folder / "missing.csv")}}
        ],
        "edges": [],
    }
    path = folder / "broken.flow.json"
    write_flow(path, flow)
    return path


class Running:
    """A BatchServer serving in a thread, stopped at the end of the test."""

    def __init__(self, app: Flowmill) -> None:
        self.app = app
        self.server = BatchServer(app, echo=lambda text: None)
        self.thread = threading.Thread(target=self.server.serve, daemon=True)
        self.thread.start()

    def wait_for(self, check: Callable[[], Any], seconds: float = DEADLINE) -> Any:
        return wait_until(check, seconds, interval=0.05)

    def job(self, job_id: int) -> Job:
        return self.app.jobs.get(job_id)

    def wait_state(self, job_id: int, *states: str, seconds: float = DEADLINE) -> Job:
        self.wait_for(lambda: self.job(job_id).state in states, seconds)
        return self.job(job_id)

    def stop(self) -> None:
        self.server.request_stop()
        self.thread.join(30)


@pytest.fixture
def make_server(tmp_path: Path) -> Iterator[Callable[..., Running]]:
    started: list[Running] = []
    apps: list[Flowmill] = []

    def make(max_running: int = 2) -> Running:
        data = tmp_path / "data"
        data.mkdir(exist_ok=True)
        (data / "flowmill.toml").write_text(FAST.format(max_running=max_running))
        app = Flowmill.open(data)
        apps.append(app)
        server = Running(app)
        started.append(server)
        return server

    yield make
    for server in started:
        server.stop()
    for app in apps:
        app.close()


def most_at_once(jobs: list[Job]) -> int:
    """The most jobs that ran at the same time, from their stored start and finish times."""
    edges = sorted(
        [(j.started_at, 1) for j in jobs] + [(j.finished_at, -1) for j in jobs],
        key=lambda edge: (edge[0], edge[1]),  # a finish before a start at the same instant
    )
    peak = current = 0
    for _, step in edges:
        current += step
        peak = max(peak, current)
    return peak


def test_concurrency_limit_is_reached_and_never_exceeded(make_server, tmp_path):
    srv = make_server(max_running=2)
    # jobs that would run for an hour: two at a time hold the slots until the test ends
    # them, however slow the machine is; the next two start only then
    ids = [srv.app.submit(str(delay_flow(tmp_path, 3600))).id for _ in range(4)]
    for _ in range(2):
        srv.wait_for(lambda: sum(srv.job(i).state == "running" for i in ids) == 2)
        running = [i for i in ids if srv.job(i).state == "running"]
        for job_id in running:
            srv.app.jobs.request_kill(job_id)
        for job_id in running:
            srv.wait_state(job_id, "cancelled")
    jobs = [srv.job(i) for i in ids]
    assert [j.state for j in jobs] == ["cancelled"] * 4
    assert most_at_once(jobs) == 2  # from the stored start and finish times


def test_high_priority_job_submitted_last_starts_first(make_server, tmp_path):
    srv = make_server(max_running=2)
    # the blockers hold both slots until every job is queued, however slow the machine
    blockers = [srv.app.submit(str(delay_flow(tmp_path, 600, "block"))).id for _ in range(2)]
    srv.wait_for(lambda: all(srv.job(i).state == "running" for i in blockers))
    quick = delay_flow(tmp_path, 0.0, "quick")
    low = [srv.app.submit(str(quick), priority=0).id for _ in range(20)]
    high = srv.app.submit(str(quick), priority=10).id
    for job_id in blockers:
        srv.app.jobs.request_kill(job_id)
    srv.wait_state(high, "succeeded")
    for job_id in low:
        srv.wait_state(job_id, "succeeded")
    high_start = srv.job(high).started_at
    assert all(high_start < srv.job(i).started_at for i in low)


# How soon a due job starts on a free worker is speed, measured by bench/jobs.py
# ("start delay"), not asserted here.


def test_job_not_started_within_max_delay_expires(make_server, tmp_path):

    srv = make_server(max_running=1)
    blocker = srv.app.submit(str(delay_flow(tmp_path, 600, "block"))).id
    srv.wait_state(blocker, "running")
    late = srv.app.submit(str(delay_flow(tmp_path, 0, "quick")), max_delay=timedelta(seconds=0.5))
    assert srv.wait_state(late.id, "expired", "succeeded").state == "expired"
    srv.app.jobs.request_kill(blocker)  # the slot is free now, and the expired job stays so
    assert srv.wait_state(blocker, "cancelled").state == "cancelled"
    after = srv.app.submit(str(delay_flow(tmp_path, 0, "quick")))
    assert srv.wait_state(after.id, "succeeded").state == "succeeded"
    assert srv.job(late.id).state == "expired" and srv.job(late.id).started_at is None


def test_group_runs_in_order_and_a_failure_aborts_the_rest(make_server, tmp_path):
    srv = make_server(max_running=2)
    export = srv.app.submit(str(delay_flow(tmp_path, 0.3, "export")), group="chain")
    transform = srv.app.submit(str(failing_flow(tmp_path)), group="chain")
    upload = srv.app.submit(str(delay_flow(tmp_path, 0, "upload")), group="chain")
    assert srv.wait_state(upload.id, "aborted", "succeeded").state == "aborted"
    first, second = srv.job(export.id), srv.job(transform.id)
    assert (first.state, second.state) == ("succeeded", "failed")
    assert first.finished_at <= second.started_at
    assert second.error_node == "read" and "missing.csv" in second.error
    assert srv.job(upload.id).started_at is None


def test_hold_edit_resume_and_cancel(make_server, tmp_path):
    srv = make_server(max_running=1)
    blocker = srv.app.submit(str(delay_flow(tmp_path, 600, "block"))).id
    srv.wait_state(blocker, "running")
    job = srv.app.submit(str(delay_flow(tmp_path, 5.0)))
    other = srv.app.submit(str(delay_flow(tmp_path, 5.0)))
    srv.app.jobs.hold(job.id)
    srv.app.set_job_params(job.id, {"seconds": "0.1"})
    srv.app.jobs.cancel(other.id)
    srv.app.jobs.request_kill(blocker)
    srv.wait_state(blocker, "cancelled")
    # a job queued after the held one runs while the held one waits
    behind = srv.app.submit(str(delay_flow(tmp_path, 0, "quick")))
    srv.wait_state(behind.id, "succeeded")
    assert srv.job(job.id).state == "held"  # a held job never starts
    srv.app.jobs.resume(job.id)
    done = srv.wait_state(job.id, "succeeded")
    assert done.params == {"seconds": 0.1}
    assert srv.job(other.id).state == "cancelled" and srv.job(other.id).started_at is None
    log = "\n".join(srv.app.job_log(job.id))
    assert "held" in log and "params changed: seconds=0.1" in log and "resumed" in log


def test_kill_of_a_running_job_stops_it_cooperatively(make_server, tmp_path):
    srv = make_server(max_running=1)
    job = srv.app.submit(str(delay_flow(tmp_path, 3600)))
    srv.wait_state(job.id, "running")
    srv.app.jobs.request_kill(job.id)
    killed = srv.wait_state(job.id, "cancelled")
    # ended by the kill, not by its hour of waiting
    assert killed.finished_at - killed.started_at < timedelta(seconds=DEADLINE)
    # the worker is free again
    after = srv.app.submit(str(delay_flow(tmp_path, 0, "quick")))
    assert srv.wait_state(after.id, "succeeded").state == "succeeded"


@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
def test_kill_of_a_blocked_sql_write_terminates_the_worker_and_leaves_zero_rows(
    make_server, tmp_path, db_url
):
    engine = sa.create_engine(db_url)
    with engine.begin() as conn:
        conn.execute(sa.text("CREATE TABLE orders (id integer PRIMARY KEY, amount integer)"))
    rows = tmp_path / "orders.jsonl"
    rows.write_text("".join(json.dumps({"id": i, "amount": i % 97}) + "\n" for i in range(100_000)))
    flow = {
        "format": "flowmill/1",
        "id": "load-orders",
        "nodes": [
            {"id": "read", "type": "file.read", "config": {"path": str(rows), "format": "jsonl"}},
            {"id": "write", "type": "sql.write", "config": {"url": db_url, "table": "orders"}},
        ],
        "edges": [{"source": "read", "source_port": "out", "target": "write", "target_port": "in"}],
    }
    path = tmp_path / "load.flow.json"
    write_flow(path, flow)
    # another session holds row 50,000: the job's insert waits there, mid-write, with
    # 49,999 rows written in its open transaction — a stuck job that only a kill ends
    blocker = engine.connect()
    blocker_tx = blocker.begin()
    blocker.execute(sa.text("INSERT INTO orders VALUES (50000, 0)"))
    srv = make_server(max_running=1)
    try:
        job = srv.app.submit(str(path))
        srv.wait_state(job.id, "running")
        srv.wait_for(lambda: _waiting_on_lock(engine))
        srv.app.jobs.request_kill(job.id)
        killed = srv.wait_state(job.id, "cancelled")
        assert "grace period" in killed.error
    finally:
        blocker_tx.rollback()
        blocker.close()
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM orders")).scalar() == 0
    engine.dispose()


def _waiting_on_lock(engine: sa.Engine) -> bool:
    with engine.connect() as conn:
        return bool(
            conn.execute(
                sa.text(
                    "SELECT count(*) FROM pg_stat_activity "
                    "WHERE wait_event_type = 'Lock' AND query LIKE 'INSERT INTO orders%'"
                )
            ).scalar()
        )


def test_kill_minus_9_of_a_worker_fails_the_attempt_and_the_retry_succeeds(make_server, tmp_path):
    srv = make_server(max_running=1)
    job = srv.app.submit(str(delay_flow(tmp_path, 8.0)), max_attempts=2)
    srv.wait_state(job.id, "running")
    srv.wait_for(lambda: srv.server.pool.busy())
    pid = next(iter(srv.server.pool.busy().values())).process.pid
    os.kill(pid, signal.SIGKILL)
    done = srv.wait_state(job.id, "succeeded", "failed")
    assert (done.state, done.attempts) == ("succeeded", 2)
    log = "\n".join(srv.app.job_log(job.id))
    assert "worker process died" in log


def test_request_files_become_jobs_or_are_rejected_with_a_reason(make_server, tmp_path):
    srv = make_server(max_running=1)
    flow = delay_flow(tmp_path, 0, "quick")
    requests = srv.app.settings.data_dir / "requests"
    requests.mkdir(exist_ok=True)
    (requests / "ok.json").write_text(
        json.dumps({"flow": str(flow), "params": {"seconds": 0}, "priority": 3, "max_delay": "2h"})
    )
    (requests / "bad-flow.json").write_text(json.dumps({"flow": str(tmp_path / "nope.flow.json")}))
    (requests / "bad-key.json").write_text(json.dumps({"flow": str(flow), "prio": 1}))
    (requests / "bad-json.json").write_text('{"flow": ')
    os.utime(requests / "bad-json.json", (time.time() - 60, time.time() - 60))
    srv.wait_for(lambda: len(list((requests / "rejected").glob("*.reason.txt"))) == 3)
    # the folder is scanned in name order, and a scan may end between two files
    accepted = srv.wait_for(lambda: list((requests / "accepted").glob("ok.job-*.json")))
    assert len(accepted) == 1
    job_id = int(accepted[0].name.split("job-")[1].split(".")[0])
    job = srv.wait_state(job_id, "succeeded")
    assert job.priority == 3 and job.source == "request file ok.json"
    reasons = {p.name: p.read_text() for p in (requests / "rejected").glob("*.reason.txt")}
    assert "nope.flow.json" in reasons["bad-flow.json.reason.txt"]
    assert "'prio' was unexpected" in reasons["bad-key.json.reason.txt"]
    assert "not valid JSON" in reasons["bad-json.json.reason.txt"]
    assert list(requests.glob("*.json")) == []


def test_kill_file_cancels_running_jobs_and_stop_file_stops_the_server(make_server, tmp_path):
    srv = make_server(max_running=2)
    ids = [srv.app.submit(str(delay_flow(tmp_path, 60))).id for _ in range(2)]
    for job_id in ids:
        srv.wait_state(job_id, "running")
    control = srv.app.settings.data_dir / "control"
    (control / "kill").touch()
    (control / "stop").touch()
    srv.thread.join(DEADLINE)
    assert not srv.thread.is_alive()
    assert [srv.job(i).state for i in ids] == ["cancelled", "cancelled"]
    assert not (control / "kill").exists() and not (control / "stop").exists()
    status: dict[str, Any] = srv.app.status()
    assert status["lease"] is None  # released on a graceful stop
    assert [s["role"] for s in status["servers"]] == ["stopped"]


def test_flows_folder_flow_with_a_schedule_trigger_runs_by_itself(make_server, tmp_path):
    data = tmp_path / "data"
    (data / "flows").mkdir(parents=True)
    write_flow(
        data / "flows" / "tick.flow.json",
        {
            "format": "flowmill/1",
            "id": "tick",
            "nodes": [
                {"id": "every-second", "type": "trigger.schedule", "config": {"every": "1s"}},
                {"id": "wait", "type": "util.delay", "config": {"seconds": 0}},
            ],
            "edges": [
                {
                    "source": "every-second",
                    "source_port": "out",
                    "target": "wait",
                    "target_port": "in",
                }
            ],
        },
    )
    srv = make_server(max_running=1)

    def ticks() -> list[Job]:
        return [j for j in srv.app.jobs.list(flow_id="tick") if j.state == "succeeded"]

    srv.wait_for(lambda: len(ticks()) >= 2)
    assert {j.schedule for j in ticks()} == {"flow:tick:every-second"}
    srv.app.flows.set_enabled("tick", False)
    # the server disarms it on its next look at the flows (its own thread, before any fire)
    srv.wait_for(lambda: "flow:tick:every-second" not in {s.name for s in srv.app.schedules.list()})
    settled = len(srv.app.jobs.list(flow_id="tick"))
    time.sleep(2.5)
    assert len(srv.app.jobs.list(flow_id="tick")) == settled


def test_a_worker_gets_jobs_only_once_it_has_booted(tmp_path):
    """A job handed to a worker that is still importing would miss its heartbeats (seconds
    on a busy machine) and be taken for lost before it ever ran."""
    from engine.batch.workers import WorkerPool

    pool = WorkerPool(1, tmp_path, "test-server", heartbeat=0.2)
    pool.start()
    try:
        assert pool.idle() == []  # started, not yet booted
        wait_until(lambda: pool.collect() == [] and pool.idle())
        assert [w.ready for w in pool.idle()] == [True]
    finally:
        pool.stop()
