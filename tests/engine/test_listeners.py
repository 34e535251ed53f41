"""The trigger listener host: one listener per enabled trigger node, restarts, state, jobs."""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from engine.batch.listeners import ListenContext, ListenerHost, TriggerStateStore, read_status
from engine.errors import FlowmillError
from engine.flows.registry import Registry
from engine.service import Flowmill
from engine.spec import NodeSpec
from nodes.triggers import event_records
from tests.conftest import run_queued, wait_until

EVENTS: dict[str, queue.Queue[Any]] = {}  # channel -> what the test "sends"
STARTS: list[tuple[str, str, dict[str, Any]]] = []


def _listen(ctx: ListenContext) -> None:
    """A listener of a made-up event source: fires what the test puts into its channel."""
    STARTS.append((ctx.flow_id, ctx.node_id, dict(ctx.config)))
    if ctx.config.get("fail"):
        raise FlowmillError(f"cannot reach {ctx.config['channel']}")
    channel = EVENTS.setdefault(ctx.config["channel"], queue.Queue())
    ctx.ready.set()
    if ctx.config.get("crash"):
        raise FlowmillError("connection lost")
    while not ctx.stopping.is_set():
        try:
            item = channel.get(timeout=0.05)
        except queue.Empty:
            continue

        def done(job: Any, item: Any = item) -> None:
            if job is not None and job.state == "succeeded":
                state = ctx.load_state()
                ctx.save_state({"done": [*state.get("done", []), item["n"]]})

        ctx.fire(item, on_done=done)


TICKER = NodeSpec(
    type="test.ticker",
    title="Ticker",
    category="trigger",
    outputs=("out",),
    config_schema={
        "type": "object",
        "properties": {
            "channel": {"type": "string"},
            "fail": {"type": "boolean", "default": False},
            "crash": {"type": "boolean", "default": False},
            "token": {"type": "string"},
        },
    },
    trigger=True,
    listen=_listen,
    run=event_records,
)


def _flow(flow_id: str, channel: str, out: Path, **config: Any) -> dict[str, Any]:
    return {
        "format": "flowmill/1",
        "id": flow_id,
        "nodes": [
            {"id": "tick", "type": "test.ticker", "config": {"channel": channel, **config}},
            {"id": "write", "type": "file.write", "config": {"path": str(out)}},
        ],
        "edges": [{"source": "tick", "source_port": "out", "target": "write", "target_port": "in"}],
    }


@pytest.fixture
def app(data_dir: Path) -> Iterator[Flowmill]:
    registry = Registry.discover()
    registry.add(TICKER, "tests.engine.test_listeners")
    service = Flowmill.open(data_dir, registry=registry)
    EVENTS.clear()
    STARTS.clear()
    yield service
    service.close()


def test_an_event_starts_one_job_whose_first_record_is_the_event(
    app: Flowmill, tmp_path: Path
) -> None:
    out = tmp_path / "out.csv"
    app.save_flow(_flow("ticks", "a", out))
    host = ListenerHost(app)
    try:
        assert host.refresh() == ["flow ticks, node tick (test.ticker): listening"]
        ctx = host.context("ticks", "tick")
        assert ctx is not None
        wait_until(ctx.ready.is_set)
        EVENTS["a"].put({"n": 1, "text": "Müller"})
        wait_until(lambda: ctx.fired == 1)
        (job,) = app.jobs.list()
        assert job.params["_trigger"] == {"n": 1, "text": "Müller"}
        assert job.source == "test.ticker (tick)"
        assert run_queued(app) == ["succeeded"]
        assert out.read_text(encoding="utf-8").splitlines() == ["n,text", "1,Müller"]
        host.check_jobs()  # the listener hears that its job succeeded
        assert TriggerStateStore(app.store).get("ticks", "tick") == {"done": [1]}
        assert host.status()[0] | {"fired": 1, "listening": True} == host.status()[0]
    finally:
        host.stop()


def test_a_batch_of_records_is_one_job(app: Flowmill, tmp_path: Path) -> None:
    app.save_flow(_flow("ticks", "b", tmp_path / "out.csv"))
    host = ListenerHost(app)
    try:
        host.refresh()
        ctx = host.context("ticks", "tick")
        assert ctx is not None
        ctx.fire([{"n": 1}, {"n": 2}, {"n": 3}])
        assert run_queued(app) == ["succeeded"]
        assert (tmp_path / "out.csv").read_text().splitlines() == ["n", "1", "2", "3"]
    finally:
        host.stop()


def test_listeners_follow_the_flows_enabled_changed_and_removed(
    app: Flowmill, tmp_path: Path
) -> None:
    app.save_flow(_flow("ticks", "a", tmp_path / "out.csv"))
    host = ListenerHost(app)
    try:
        host.refresh()
        first = host.context("ticks", "tick")
        assert host.refresh() == []  # nothing changed: the same listener
        assert host.context("ticks", "tick") is first
        app.save_flow(_flow("ticks", "c", tmp_path / "out.csv"))  # the node's config changed
        host.refresh()
        second = host.context("ticks", "tick")
        assert second is not first and first is not None and first.stopping.is_set()
        assert second is not None and second.config["channel"] == "c"
        app.flows.set_enabled("ticks", False)
        assert host.refresh() == ["flow ticks, node tick: stopped listening"]
        assert host.context("ticks", "tick") is None and second.stopping.is_set()
        app.flows.set_enabled("ticks", True)
        host.refresh()
        app.remove_flow("ticks")
        assert host.refresh() == ["flow ticks, node tick: stopped listening"]
        assert not [t for t in threading.enumerate() if t.name.startswith("listen-")]
    finally:
        host.stop()


def test_only_the_active_server_listens(app: Flowmill, tmp_path: Path) -> None:
    app.save_flow(_flow("ticks", "a", tmp_path / "out.csv"))
    active = threading.Event()
    host = ListenerHost(app, is_active=active.is_set)
    try:
        assert host.refresh() == [] and host.context("ticks", "tick") is None
        active.set()
        assert len(host.refresh()) == 1
        active.clear()
        assert host.refresh() == ["flow ticks, node tick: stopped listening"]
    finally:
        host.stop()


def test_a_failing_listener_is_retried_with_backoff_and_says_why(
    app: Flowmill, tmp_path: Path
) -> None:
    lines: list[str] = []
    app.save_flow(_flow("ticks", "down", tmp_path / "out.csv", fail=True))
    host = ListenerHost(app, lines.append)
    try:
        host.refresh()
        ctx = host.context("ticks", "tick")
        assert ctx is not None
        wait_until(lambda: ctx.last_error is not None)
        assert ctx.last_error == "cannot reach down"
        assert not ctx.ready.is_set()
        wait_until(lambda: len(STARTS) >= 2)  # again after 1 s
        assert "flow ticks, node tick (test.ticker): cannot reach down (again in" in lines[0]
        status = host.status()[0]
        assert status["failures"] >= 1 and status["error"] == "cannot reach down"
        assert status["listening"] is False
    finally:
        host.stop()


def test_a_listener_that_was_listening_is_back_after_a_second_each_time(
    app: Flowmill, tmp_path: Path
) -> None:
    """The back-off grows only while a listener cannot start: one that listened, then lost
    its connection, tries again after 1 s (not after 2, 5, 10 … s)."""
    app.save_flow(_flow("ticks", "flaky", tmp_path / "out.csv", crash=True))
    lines: list[str] = []
    host = ListenerHost(app, lines.append)
    try:
        host.refresh()
        wait_until(lambda: len(STARTS) >= 4)
        waits = [line.rsplit("(again in ", 1)[1] for line in lines if "(again in " in line]
        assert len(waits) >= 3 and set(waits) == {"1 s)"}, lines  # growing: 1, 3, 8 s
    finally:
        host.stop()


def test_secrets_in_a_listener_config_are_filled_in(app: Flowmill, tmp_path: Path) -> None:
    app.set_secret("ticker-token", "s3cr3t")
    app.save_flow(_flow("ticks", "a", tmp_path / "o.csv", token={"$secret": "ticker-token"}))
    host = ListenerHost(app)
    try:
        host.refresh()
        wait_until(lambda: len(STARTS) == 1)
        assert STARTS[0][2]["token"] == "s3cr3t"
    finally:
        host.stop()


def test_the_running_host_writes_its_status_for_flowmill_status(
    app: Flowmill, tmp_path: Path
) -> None:
    app.save_flow(_flow("ticks", "a", tmp_path / "out.csv"))
    host = ListenerHost(app)
    host.start()
    try:
        wait_until(lambda: read_status(app.settings.data_dir) is not None)
        wait_until(lambda: (read_status(app.settings.data_dir) or [{}])[0].get("listening") is True)
        (entry,) = read_status(app.settings.data_dir) or []
        assert entry["flow"] == "ticks" and entry["type"] == "test.ticker"
    finally:
        host.stop()
    assert read_status(app.settings.data_dir) is None


def test_a_trigger_run_by_hand_outputs_the_params(app: Flowmill, tmp_path: Path) -> None:
    flow = _flow("ticks", "a", tmp_path / "out.csv")
    flow["params"] = {"n": {"type": "integer", "default": 7}}
    run = app.run_flow(flow)
    assert run.state == "succeeded"
    assert (tmp_path / "out.csv").read_text().splitlines() == ["n", "7"]
