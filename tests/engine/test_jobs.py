"""The job table as the batch server uses it, on SQLite, PostgreSQL and MariaDB."""

from __future__ import annotations

import threading
from datetime import timedelta
from pathlib import Path

import pytest

from engine.clock import FakeClock, parse_moment
from engine.errors import FlowmillError
from engine.queue.jobs import JobError, JobNotFound, JobStore
from engine.run.events import EventBus, JobChanged
from engine.store.factory import open_store

HASH = "0" * 64


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def events() -> list[JobChanged]:
    return []


@pytest.fixture
def js(db_url: str, data_dir: Path, clock: FakeClock, events: list[JobChanged]):
    store = open_store(db_url, data_dir)
    bus = EventBus()
    bus.subscribe(JobChanged, events.append)
    yield JobStore(store, bus, clock)
    store.close()


def submit(js: JobStore, flow: str = "f", **kw):
    return js.submit(flow, HASH, kw.pop("params", {}), **kw)


def test_highest_priority_first_then_oldest(js: JobStore, clock: FakeClock):
    low = [submit(js, priority=0) for _ in range(3)]
    clock.advance(1)
    high = submit(js, priority=5)
    order = [js.claim("w").id for _ in range(4)]
    assert order == [high.id, low[0].id, low[1].id, low[2].id]
    assert js.claim("w") is None


def test_claim_marks_running_and_counts_the_attempt(js: JobStore, events):
    job = submit(js, params={"day": "2026-11-23"})
    claimed = js.claim("server-a/worker-1")
    assert claimed.id == job.id
    assert (claimed.state, claimed.worker, claimed.attempts) == ("running", "server-a/worker-1", 1)
    assert claimed.params == {"day": "2026-11-23"}
    assert [(e.job_id, e.previous, e.state) for e in events] == [
        (job.id, None, "queued"),
        (job.id, "queued", "running"),
    ]


def test_not_before_is_respected(js: JobStore, clock: FakeClock):
    job = submit(js, not_before=clock.now() + timedelta(minutes=10))
    assert js.claim("w") is None
    assert js.next_due() == job.not_before
    clock.advance(timedelta(minutes=10))
    assert js.claim("w").id == job.id


@pytest.mark.parametrize(
    "text", ["0001-01-01T00:00", "0001-01-01T00:00+14:00", "9999-12-31T23:59-14:00"]
)
def test_a_not_before_outside_the_years_1_to_9999_in_utc_is_refused_naming_the_field(text: str):
    # fuzzing found these crashing (ValueError, OverflowError) on the way to the UTC store
    with pytest.raises(FlowmillError, match=r"^--at: '.*' is out of range"):
        parse_moment(text, "--at")
    assert parse_moment("0001-01-02T00:00+14:00", "--at").year == 1  # still year 1 in UTC
    with pytest.raises(FlowmillError, match="not an ISO date-time") as info:
        parse_moment("x" * 100_000, "--at")
    assert len(str(info.value)) < 100


def test_job_past_max_delay_expires_and_never_runs(js: JobStore, clock: FakeClock):
    job = submit(js, max_delay=timedelta(hours=2))
    held = submit(js, max_delay=timedelta(hours=2), held=True)
    clock.advance(timedelta(hours=2, seconds=1))
    assert js.claim("w") is None
    expired = js.expire()
    assert {j.id for j in expired} == {job.id, held.id}
    assert js.get(job.id).state == "expired"
    assert "max delay" in js.get(job.id).error


def test_hold_edit_resume(js: JobStore):
    job = submit(js, params={"markup": 1.19, "shop": "b2c"})
    js.hold(job.id)
    assert js.claim("w") is None
    edited = js.set_params(job.id, {"markup": 1.25})
    assert edited.params == {"markup": 1.25, "shop": "b2c"}
    js.resume(job.id)
    claimed = js.claim("w")
    assert claimed.id == job.id and claimed.params["markup"] == 1.25
    with pytest.raises(JobError, match=f"job {job.id} is running; only queued or held"):
        js.set_params(job.id, {"markup": 2})
    messages = [m for _, m in js.log(job.id)]
    assert messages[:4] == [
        "submitted (cli) for flow f",
        "held",
        "params changed: markup=1.25",
        "resumed",
    ]


def test_cancel_and_kill_requests(js: JobStore):
    waiting = submit(js)
    running = submit(js)
    js.hold(waiting.id)
    assert js.cancel(waiting.id).state == "cancelled"
    js.claim("w")
    with pytest.raises(JobError, match="use kill"):
        js.cancel(running.id)
    assert js.request_kill(running.id).kill_requested
    assert [j.id for j in js.kill_requests()] == [running.id]
    with pytest.raises(JobNotFound):
        js.get(999_999)


def test_group_members_run_in_order_and_a_failure_aborts_the_rest(js: JobStore):
    export, transform, upload = (submit(js, group="nightly") for _ in range(3))
    alone = submit(js)
    first = js.claim("w")
    assert first.id == export.id
    assert js.claim("w").id == alone.id  # later members wait for the export
    assert js.claim("w") is None
    js.finish(export.id, "w", "succeeded")
    assert js.claim("w").id == transform.id
    js.finish(transform.id, "w", "failed", "division by zero", "map-1")
    assert js.get(upload.id).state == "aborted"
    assert f"job {transform.id}" in js.get(upload.id).error
    assert js.claim("w") is None


def test_failure_is_retried_while_attempts_remain(js: JobStore):
    job = submit(js, max_attempts=2)
    js.claim("w")
    again = js.finish(job.id, "w", "failed", "timeout")
    assert (again.state, again.attempts) == ("queued", 1)
    js.claim("w")
    final = js.finish(job.id, "w", "failed", "timeout")
    assert (final.state, final.attempts) == ("failed", 2)
    retried = js.retry(job.id)
    assert (retried.state, retried.attempts, retried.error) == ("queued", 0, None)


def test_only_the_holding_worker_can_finish(js: JobStore):
    job = submit(js)
    js.claim("w1")
    assert js.finish(job.id, "w2", "succeeded") is None
    assert js.get(job.id).state == "running"


def test_worker_without_heartbeat_is_lost(js: JobStore, clock: FakeClock):
    job = submit(js, max_attempts=2)
    js.claim("w")
    clock.advance(10)
    assert js.heartbeat(job.id, "w")
    clock.advance(31)
    lost = js.lost(timedelta(seconds=30))
    assert [(j.id, j.state) for j in lost] == [(job.id, "queued")]
    assert "no heartbeat" in js.get(job.id).error
    assert not js.heartbeat(job.id, "w")  # the old worker is told to stop


def test_limits_exclude_full_flows_and_pools(js: JobStore):
    busy = submit(js, flow="prices", pool="erp")
    other = submit(js, flow="report", pool="erp")
    free = submit(js, flow="report", pool="mail")
    assert js.claim("w", exclude_flows=["prices"], exclude_pools=["erp"]).id == free.id
    assert js.claim("w", exclude_pools=["erp"]) is None
    assert js.claim("w").id == busy.id
    assert js.claim("w").id == other.id


def test_closed_time_conditions_keep_jobs_waiting(js: JobStore):
    job = submit(js, time_condition="office-hours")
    assert js.claim("w", closed_conditions=["office-hours"]) is None
    assert js.claim("w", closed_conditions=["night"]).id == job.id


def test_concurrent_claims_take_every_job_exactly_once(js: JobStore):
    ids = {submit(js).id for _ in range(60)}
    taken: list[int] = []
    lock = threading.Lock()

    def worker(name: str) -> None:
        while (job := js.claim(name)) is not None:
            with lock:
                taken.append(job.id)

    threads = [threading.Thread(target=worker, args=(f"w{i}",)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(taken) == sorted(ids)


def test_a_kill_of_a_job_that_starts_meanwhile_asks_its_worker_to_stop(
    js: JobStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """request_kill looks at the state, then changes it: a worker claiming the job in
    between must not turn the operator's kill into an error."""
    job = submit(js)
    cancel = js.cancel

    def claimed_first(job_id: int):  # type: ignore[no-untyped-def]
        js.claim("w1")  # the server starts it just now
        return cancel(job_id)

    monkeypatch.setattr(js, "cancel", claimed_first)
    killed = js.request_kill(job.id)
    assert (killed.state, killed.kill_requested) == ("running", True)
    with pytest.raises(JobError, match="succeeded"):
        js.finish(job.id, "w1", "succeeded")
        js.request_kill(job.id)  # a finished job cannot be killed: that is not a race


def test_a_claimed_job_no_worker_took_is_queued_again_without_using_an_attempt(
    js: JobStore, clock: FakeClock
):
    """Its server died between the claim and the hand-over: nothing of it ran."""
    job = submit(js, max_attempts=1)
    js.claim("w")
    clock.advance(31)
    lost = js.lost(timedelta(seconds=30))
    assert [(j.id, j.state, j.attempts) for j in lost] == [(job.id, "queued", 0)]
    assert "not started: no worker took it from w; queued again" in [m for _, m in js.log(job.id)]
    assert not js.heartbeat(job.id, "w")  # a late worker is told it is no longer its job
    again = js.claim("w2")
    assert (again.id, again.attempts) == (job.id, 1)
