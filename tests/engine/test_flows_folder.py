"""The flows folder as the source of truth, and schedule triggers armed from flows."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from engine.clock import FakeClock
from engine.flows.format import write_flow
from engine.service import Flowmill


def scheduled_flow(every: str = "1h") -> dict:
    return {
        "format": "flowmill/1",
        "id": "hourly-export",
        "nodes": [
            {"id": "tick", "type": "trigger.schedule", "config": {"every": every}},
            {"id": "wait", "type": "util.delay", "config": {"seconds": 0}},
        ],
        "edges": [{"source": "tick", "source_port": "out", "target": "wait", "target_port": "in"}],
    }


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(datetime(2026, 11, 23, 8, 0, tzinfo=UTC))


@pytest.fixture
def app(data_dir: Path, clock: FakeClock):
    service = Flowmill.open(data_dir, clock=clock)
    service.settings.flows_path.mkdir()
    yield service
    service.close()


def test_folder_files_are_imported_and_their_schedule_triggers_armed(app: Flowmill, clock):
    write_flow(app.settings.flows_path / "hourly-export.flow.json", scheduled_flow())
    assert app.sync_flows_folder() == [
        f"hourly-export.flow.json: imported flow hourly-export "
        f"({app.flows.info('hourly-export').flow_hash[:12]})"
    ]
    assert app.sync_flows_folder() == []  # unchanged files are not read again
    assert app.arm_triggers() == ["schedule flow:hourly-export:tick armed"]
    assert app.arm_triggers() == []
    clock.advance(timedelta(hours=1))
    [(name, job)] = app.fire_schedules()
    assert (name, job.flow_id) == ("flow:hourly-export:tick", "hourly-export")


def test_a_disabled_flow_is_not_armed(app: Flowmill):
    write_flow(app.settings.flows_path / "x.flow.json", scheduled_flow())
    app.sync_flows_folder()
    app.arm_triggers()
    app.flows.set_enabled("hourly-export", False)
    assert app.arm_triggers() == ["schedule flow:hourly-export:tick disarmed"]
    assert app.schedules.list() == []
    app.flows.set_enabled("hourly-export", True)
    assert app.arm_triggers() == ["schedule flow:hourly-export:tick armed"]


def test_a_changed_file_is_reimported_and_rearmed(app: Flowmill):
    path = app.settings.flows_path / "x.flow.json"
    write_flow(path, scheduled_flow("1h"))
    app.sync_flows_folder()
    app.arm_triggers()
    before = app.flows.info("hourly-export").flow_hash
    write_flow(path, scheduled_flow("15m"))
    [line] = app.sync_flows_folder()
    assert "imported flow hourly-export" in line
    assert app.flows.info("hourly-export").flow_hash != before
    assert app.arm_triggers() == ["schedule flow:hourly-export:tick armed"]
    assert app.schedules.get("flow:hourly-export:tick").spec == {"every": "15m"}


def test_a_deleted_file_removes_the_flow_and_disarms_it(app: Flowmill):
    path = app.settings.flows_path / "x.flow.json"
    write_flow(path, scheduled_flow())
    app.sync_flows_folder()
    app.arm_triggers()
    path.unlink()
    assert app.sync_flows_folder() == ["x.flow.json: deleted, flow hourly-export removed"]
    assert app.flows.list() == []
    assert app.arm_triggers() == ["schedule flow:hourly-export:tick disarmed"]


def test_an_invalid_file_is_reported_and_the_previous_version_stays(app: Flowmill):
    path = app.settings.flows_path / "x.flow.json"
    write_flow(path, scheduled_flow())
    app.sync_flows_folder()
    good = app.flows.info("hourly-export").flow_hash
    broken = scheduled_flow()
    broken["nodes"][0]["config"] = {"cron": "61 * * * *"}
    path.write_text(json.dumps(broken))
    [line] = app.sync_flows_folder()
    assert line.startswith("x.flow.json: not imported:") and "node tick: cron" in line
    assert app.flows.info("hourly-export").flow_hash == good
