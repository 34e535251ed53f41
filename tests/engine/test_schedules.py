"""Stored schedules turned into jobs, with a controllable clock."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from engine.clock import FakeClock
from engine.errors import FlowmillError
from engine.flows.format import write_flow
from engine.queue.calendars import ScheduleError
from engine.service import Flowmill

# Monday 2026-11-23 07:30 in Berlin (CET, UTC+1)
MONDAY_0730 = datetime(2026, 11, 23, 6, 30, tzinfo=UTC)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(MONDAY_0730)


@pytest.fixture
def app(data_dir: Path, clock: FakeClock, tmp_path: Path):
    service = Flowmill.open(data_dir, clock=clock)
    flow = {
        "format": "flowmill/1",
        "id": "report",
        "params": {"shop": {"type": "string", "default": "b2c"}},
        "nodes": [{"id": "start", "type": "trigger.manual"}],
        "edges": [],
    }
    write_flow(tmp_path / "report.flow.json", flow)
    service.import_flow(tmp_path / "report.flow.json")
    yield service
    service.close()


def fired(app: Flowmill) -> list[int]:
    return [job.id for _, job in app.fire_schedules()]


def test_hourly_schedule_submits_one_job_per_hour(app: Flowmill, clock: FakeClock):
    app.add_schedule("hourly", "report", {"cron": "0 * * * *"}, {"shop": "b2b"}, priority=3)
    assert fired(app) == []  # 07:30: nothing due yet
    clock.advance(timedelta(minutes=30))
    first = fired(app)
    assert len(first) == 1
    job = app.jobs.get(first[0])
    assert (job.flow_id, job.params, job.priority, job.schedule) == (
        "report",
        {"shop": "b2b"},
        3,
        "hourly",
    )
    assert fired(app) == []  # the same hour never fires twice
    clock.advance(timedelta(hours=1))
    assert len(fired(app)) == 1
    info = app.schedules.get("hourly")
    assert info.next_fire == datetime(2026, 11, 23, 9, 0, tzinfo=UTC)  # 10:00 Berlin


@pytest.mark.parametrize(("misfire", "expected"), [("run_once", 1), ("skip", 0)])
def test_three_hour_outage_runs_once_or_skips_never_a_burst(
    app: Flowmill, clock: FakeClock, misfire: str, expected: int
):
    app.add_schedule("hourly", "report", {"cron": "0 * * * *", "misfire": misfire})
    clock.advance(timedelta(hours=3, minutes=10))  # the server was down 08:00–10:40
    assert len(fired(app)) == expected
    assert fired(app) == []
    assert app.schedules.get("hourly").next_fire == datetime(2026, 11, 23, 10, 0, tzinfo=UTC)


def test_holidays_of_the_calendar_are_skipped(app: Flowmill, clock: FakeClock):
    clock.set(datetime(2026, 12, 23, 12, 0, tzinfo=UTC))
    app.add_schedule("nightly", "report", {"cron": "0 2 * * *", "calendar": "DE-BY"})
    days = []
    for _ in range(6):  # 24.12. to 29.12.
        clock.advance(timedelta(days=1))
        for job_id in fired(app):
            days.append(app.jobs.get(job_id).submitted_at.date().isoformat())
    # 25 and 26 December are public holidays in Bavaria
    assert days == ["2026-12-24", "2026-12-27", "2026-12-28", "2026-12-29"]


def test_time_condition_keeps_schedule_and_jobs_to_their_windows(app: Flowmill, clock: FakeClock):
    app.schedules.set_calendar("munich", "DE-BY", ["2026-11-24"])  # a company holiday
    app.schedules.set_condition(
        "office", {"workday": "06:00-20:00", "saturday": "none", "sunday": "none"}, "munich"
    )
    assert app.closed_conditions() == []  # Monday 07:30
    clock.set(datetime(2026, 11, 24, 9, 0, tzinfo=UTC))  # Tuesday, the company holiday
    assert app.closed_conditions() == ["office"]
    job = app.submit("report", time_condition="office")
    assert app.jobs.claim("w", closed_conditions=app.closed_conditions()) is None
    clock.set(datetime(2026, 11, 25, 5, 0, tzinfo=UTC))  # Wednesday 06:00
    assert app.jobs.claim("w", closed_conditions=app.closed_conditions()).id == job.id


def test_impossible_schedule_is_refused_quickly(app: Flowmill):
    began = time.thread_time()  # CPU time of this thread: no matter how busy the machine is
    with pytest.raises(ScheduleError, match="never fires"):
        app.add_schedule(
            "xmas-but-not-on-holidays",
            "report",
            {"cron": "0 9 25 12 *", "calendar": "DE", "windows": {"sunday": "none"}},
        )
    assert time.thread_time() - began < 1
    assert app.schedules.list() == []


def test_schedule_whose_flow_is_gone_stops_with_an_error(app: Flowmill, clock: FakeClock):
    app.add_schedule("hourly", "report", {"every": "1h"})
    app.flows.remove("report")
    clock.advance(timedelta(hours=2))
    assert fired(app) == []
    info = app.schedules.get("hourly")
    assert "report" in info.error and info.next_fire is None
    clock.advance(timedelta(hours=2))
    assert fired(app) == []  # stopped: not retried every turn


@pytest.mark.parametrize("name", ["nightly\x00", "nightly\n", "\x1b[2Jnightly", "caf\udce9"])
def test_schedule_calendar_condition_group_and_pool_names_must_be_plain_text(
    app: Flowmill, name: str
):
    """NUL reached PostgreSQL through the CLI; the API refused it. Both come through here."""
    calls = {
        "schedule": lambda: app.add_schedule(name, "report", {"every": "1h"}),
        "calendar": lambda: app.set_calendar(name, "DE-BY"),
        "condition": lambda: app.set_condition(name, {"saturday": "none"}),
        "group": lambda: app.submit("report", group=name),
        "pool": lambda: app.submit("report", pool=name),
    }
    for what, call in calls.items():
        with pytest.raises(FlowmillError, match=f"^{what} name .* is not allowed"):
            call()
    with pytest.raises(FlowmillError, match=r"^params: shop: unpaired surrogates"):
        app.submit("report", {"shop": "\ud800"})  # a request file's JSON escape
    assert app.schedules.list() == [] and app.list_calendars() == []
    assert app.list_conditions() == [] and app.jobs.list() == []
