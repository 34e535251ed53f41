"""``trigger.file_drop``: matching, the dispatcher, a watched local folder, request files."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

from engine.batch.filedrops import matches
from engine.flows.params import ParamError
from engine.service import Flowmill
from nodes.file_drop import check_file_drop
from servers.dispatch import DropDispatcher
from servers.drops import DropEvent, DropQueue, drop_home, sha256_of
from servers.localwatch import LocalWatcher
from tests.conftest import run_queued


def _record(**over: Any) -> dict[str, Any]:
    base = {"path": "/x/in/a.csv", "name": "in/a.csv", "size": 1, "user": "ann"}
    base |= {"source": "ftps", "received_at": "2026-11-21T00:00:00+00:00", "sha256": "0"}
    return {**base, **over}


def test_matching_by_source_folder_pattern_and_user() -> None:
    config = {"folder": "in", "pattern": "*.csv"}
    assert matches(config, _record())
    assert matches(config, _record(source="webdav"))
    assert not matches(config, _record(source="local"))
    assert not matches(config, _record(name="in/a.txt"))
    assert not matches(config, _record(name="out/a.csv"))
    assert not matches(config, _record(name="in/sub/a.csv"))
    assert matches({**config, "source": "webdav"}, _record(source="webdav"))
    assert not matches({**config, "source": "webdav"}, _record())
    assert matches({**config, "user": "ann"}, _record())
    assert not matches({**config, "user": "bob"}, _record())
    assert matches({"folder": "/", "pattern": "*"}, _record(name="top.csv"))
    assert check_file_drop({"folder": "../etc"})[0].field == "folder"
    assert check_file_drop({"folder": "in", "source": "local"})[0].field == "folder"
    assert check_file_drop({"folder": "in", "pattern": "a/*.csv"})[0].field == "pattern"


def _flow(folder: str, out: Path, **config: Any) -> dict[str, Any]:
    """Dropped CSV → read it → write it to ``out``."""
    return {
        "format": "flowmill/1",
        "id": config.pop("flow_id", "on-drop"),
        "params": {"out": {"type": "string", "default": str(out)}},
        "nodes": [
            {
                "id": "drop",
                "type": "trigger.file_drop",
                "config": {"folder": folder, "pattern": "*.csv", **config},
            },
            {"id": "read", "type": "file.read", "config": {}},
            {"id": "write", "type": "file.write", "config": {"path": "${out}"}},
        ],
        "edges": [
            {"source": "drop", "source_port": "out", "target": "read", "target_port": "in"},
            {"source": "read", "source_port": "out", "target": "write", "target_port": "in"},
        ],
    }


@pytest.fixture
def app(data_dir: Path):
    service = Flowmill.open(data_dir)
    yield service
    service.close()


def test_a_file_closed_in_a_watched_folder_runs_its_flow_and_is_moved(
    app: Flowmill, tmp_path: Path
) -> None:
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    app.save_flow(_flow(str(inbox), tmp_path / "out.csv", source="local", after="move"))
    drops = DropQueue()
    watcher = LocalWatcher(drops)
    dispatcher = DropDispatcher(app, drops, print, on_folders=watcher.watch)
    watcher.start()
    dispatcher.start()
    try:
        deadline = time.monotonic() + 10
        while not watcher._watches and time.monotonic() < deadline:
            time.sleep(0.05)
        (inbox / ".orders.csv.part").write_text("id;qty\n1;2\n2;5\n")  # hidden: ignored
        (inbox / ".orders.csv.part").rename(inbox / "orders.csv")
        (inbox / "notes.txt").write_text("no flow waits for this\n")
        while dispatcher.started < 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert run_queued(app) == ["succeeded"]
        while (inbox / "orders.csv").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        dispatcher.stop()
        watcher.stop()
    assert (inbox / "processed" / "orders.csv").read_text() == "id;qty\n1;2\n2;5\n"
    written = (tmp_path / "out.csv").read_text().splitlines()
    assert [line.replace(";", ",") for line in written] == ["id,qty", "1,2", "2,5"]
    (job,) = app.jobs.list()
    record = job.params["_trigger"]
    assert record["name"] == "orders.csv" and record["source"] == "local"
    assert record["sha256"] == sha256_of(inbox / "processed" / "orders.csv")
    assert dispatcher.started == 1 and dispatcher.unmatched == 1


def test_uploads_start_one_job_per_matching_flow_and_duplicates_can_be_skipped(
    app: Flowmill, data_dir: Path
) -> None:
    home = drop_home(data_dir, "ann")
    (home / "in").mkdir()
    app.save_flow(_flow("in", data_dir / "every.csv", flow_id="every", after="delete"))
    app.save_flow(_flow("in", data_dir / "once.csv", flow_id="once", duplicates="skip"))
    dispatcher = DropDispatcher(app, DropQueue(), print)
    dispatcher._triggers = dispatcher.triggers()
    for copy in ("a.csv", "b.csv"):
        (home / "in" / copy).write_text("id\n1\n")
        path = home / "in" / copy
        event = DropEvent(str(path), f"in/{copy}", 5, "ann", "ftps", sha256_of(path))
        dispatcher.handle(event)
    jobs = sorted((j.flow_id, j.params["_trigger"]["name"]) for j in app.jobs.list())
    assert jobs == [("every", "in/a.csv"), ("every", "in/b.csv"), ("once", "in/a.csv")]
    assert run_queued(app) == ["succeeded"] * 3
    dispatcher.tidy()
    assert not (home / "in" / "a.csv").exists()  # every job of a.csv succeeded: deleted


def test_a_request_file_uploaded_into_requests_becomes_a_job(app: Flowmill, data_dir: Path) -> None:
    app.save_flow(
        {"format": "flowmill/1", "id": "by-request",
         "nodes": [{"id": "start", "type": "trigger.manual", "config": {}}], "edges": []}
    )  # fmt: skip
    app.users.add("erp", "erp password 123", "operator", file_drop=True)
    app.users.add("scanner", "scanner password 1", "viewer", file_drop=True)
    home = drop_home(data_dir, "erp")
    (home / "requests").mkdir()
    good = home / "requests" / "nightly.json"
    good.write_text(json.dumps({"flow": "by-request", "priority": 5}))
    bad = home / "requests" / "broken.json"
    bad.write_text(json.dumps({"flow": "no-such-flow"}))
    dispatcher = DropDispatcher(app, DropQueue(), print)
    events = [
        DropEvent(str(path), f"requests/{path.name}", 1, "erp", "webdav", sha256_of(path))
        for path in (good, bad)
    ]
    for event in events:  # the first one handles the whole folder, the second finds it done
        assert dispatcher.handle(event) == []
    (job,) = app.jobs.list()
    assert job.flow_id == "by-request" and job.priority == 5
    assert [p.name for p in (home / "requests" / "accepted").iterdir()]
    rejected = sorted(p.name for p in (home / "requests" / "rejected").iterdir())
    assert rejected[0].startswith("broken") and any(n.endswith(".reason.txt") for n in rejected)
    # a drop user whose role may not run jobs cannot send requests either
    viewer_home = drop_home(data_dir, "scanner")
    (viewer_home / "requests").mkdir()
    sneaky = viewer_home / "requests" / "sneaky.json"
    sneaky.write_text(json.dumps({"flow": "by-request"}))
    event = DropEvent(str(sneaky), "requests/sneaky.json", 1, "scanner", "ftps", "0")
    assert dispatcher.handle(event) == []
    assert len(app.jobs.list()) == 1
    reason = viewer_home / "requests" / "rejected" / "sneaky.json.reason.txt"
    assert "may not run jobs" in reason.read_text()


def test_trigger_records_are_set_by_the_server_only(app: Flowmill, tmp_path: Path) -> None:
    app.save_flow(_flow(str(tmp_path), tmp_path / "o.csv", flow_id="guarded", source="local"))
    with pytest.raises(ParamError, match="set by the server"):
        app.submit("guarded", {"_trigger": {"path": "/etc/passwd"}})


def test_run_by_hand_the_node_reads_the_file_named_by_path(app: Flowmill, tmp_path: Path) -> None:
    data = tmp_path / "in.csv"
    data.write_text("id\n7\n")
    flow = _flow(str(tmp_path), tmp_path / "o.csv", flow_id="by-hand", source="local")
    flow["params"]["path"] = {"type": "string"}
    result = app.run_flow(flow, {"path": str(data)})
    assert result.state == "succeeded", result.error
    missing = app.run_flow(
        _flow(str(tmp_path), tmp_path / "o.csv", flow_id="no-path", source="local")
    )
    assert missing.state == "failed" and "no dropped file" in (missing.error or "")


def test_status_of_a_server_that_died_is_not_shown(tmp_path: Path) -> None:
    from servers.fileservers import read_status

    status = tmp_path / "run" / "fileservers.json"
    status.parent.mkdir()
    status.write_text(json.dumps({"at": time.time(), "servers": {}, "drops": {}}))
    assert read_status(tmp_path) is not None
    status.write_text(json.dumps({"at": time.time() - 60, "servers": {}, "drops": {}}))
    assert read_status(tmp_path) is None
    status.write_text("{broken")
    assert read_status(tmp_path) is None
