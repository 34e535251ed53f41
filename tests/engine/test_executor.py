"""The executor, with tiny node types declared here so every behaviour is isolated."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from engine.errors import FlowValidationError
from engine.flows.format import flow_hash
from engine.flows.params import ParamError
from engine.flows.registry import Registry
from engine.run.events import (
    Event,
    EventBus,
    NodeFinished,
    NodeRetrying,
    NodeSkipped,
    RunFinished,
    RunStarted,
)
from engine.run.executor import Executor
from engine.service import Flowmill
from engine.spec import Batch, Inputs, NodeSpec, Outputs, RunContext
from tests.conftest import DEADLINE

COLLECTED: dict[str, list[dict[str, Any]]] = {}
ATTEMPTS: dict[str, int] = {}


def _source(ctx: RunContext, config: dict[str, Any], inputs: Inputs) -> Outputs:
    ATTEMPTS[ctx.node_id] = ATTEMPTS.get(ctx.node_id, 0) + 1
    if ATTEMPTS[ctx.node_id] <= config.get("fail_times", 0):
        raise ConnectionError("database not reachable")

    def gen() -> Iterator[Batch]:
        n, size = config["n"], ctx.batch_size
        for start in range(0, n, size):
            ctx.check_cancelled()
            yield [{"i": i, "v": i * 2} for i in range(start, min(n, start + size))]

    return {"out": gen()}


def _passthrough(ctx: RunContext, config: dict[str, Any], inputs: Inputs) -> Outputs:
    def gen() -> Iterator[Batch]:
        for batch in inputs["in"]:
            out = []
            for r in batch:
                if r["i"] == config.get("fail_at"):
                    raise ValueError(f"record {r['i']} is broken")
                if r["i"] in config.get("reject", []):
                    ctx.reject(r, f"record {r['i']} rejected")
                    continue
                out.append(r)
            yield out

    return {"out": gen()}


def _sink(ctx: RunContext, config: dict[str, Any], inputs: Inputs) -> Outputs:
    ATTEMPTS[ctx.node_id] = ATTEMPTS.get(ctx.node_id, 0) + 1

    def gen() -> Iterator[Batch]:
        got = [r for batch in inputs["in"] for r in batch]
        if ATTEMPTS[ctx.node_id] <= config.get("fail_times", 0):
            raise OSError("disk full")
        COLLECTED[ctx.node_id] = got
        yield [{"rows": len(got)}]

    return {"out": gen()}


def _sleeper(ctx: RunContext, config: dict[str, Any], inputs: Inputs) -> Outputs:
    def gen() -> Iterator[Batch]:
        ctx.sleep(config["seconds"])
        yield from inputs["in"]

    return {"out": gen()}


MEETING: dict[str, threading.Barrier] = {}


def _meet(ctx: RunContext, config: dict[str, Any], inputs: Inputs) -> Outputs:
    """Wait until every node of the meeting has arrived: only branches that run side by
    side can all get there (one after another, the first would wait alone)."""

    def gen() -> Iterator[Batch]:
        MEETING["all"].wait(timeout=DEADLINE)
        yield from inputs["in"]

    return {"out": gen()}


def _ignore_input(ctx: RunContext, config: dict[str, Any], inputs: Inputs) -> Outputs:
    return {"out": iter([[{"done": True}]])}


def _spec(type_: str, run: Any, inputs: tuple[str, ...] = ("in",)) -> NodeSpec:
    return NodeSpec(
        type=type_,
        title=type_,
        category="test",
        inputs=inputs,
        outputs=("out",),
        config_schema={"type": "object", "properties": {"n": {"type": "integer", "minimum": 0}}},
        run=run,
    )


@pytest.fixture
def registry() -> Registry:
    reg = Registry()
    reg.add(_spec("test.source", _source, ()), "tests")
    reg.add(_spec("test.pass", _passthrough), "tests")
    reg.add(_spec("test.sink", _sink), "tests")
    reg.add(_spec("test.sleep", _sleeper), "tests")
    reg.add(_spec("test.ignore", _ignore_input), "tests")
    reg.add(_spec("test.meet", _meet), "tests")
    COLLECTED.clear()
    ATTEMPTS.clear()
    return reg


@pytest.fixture
def events() -> list[Any]:
    return []


@pytest.fixture
def executor(registry: Registry, tmp_path: Path, events: list[Any]) -> Executor:
    bus = EventBus()
    bus.subscribe(Event, events.append)
    return Executor(registry, bus, data_dir=tmp_path, batch_size=100)


def node(node_id: str, type_: str, **config: Any) -> dict[str, Any]:
    return {"id": node_id, "type": type_, "config": config}


def edge(src: str, dst: str, src_port: str = "out", dst_port: str = "in") -> dict[str, str]:
    return {"source": src, "source_port": src_port, "target": dst, "target_port": dst_port}


def flow(nodes: list[dict[str, Any]], edges: list[dict[str, str]], **extra: Any) -> dict:
    return {"format": "flowmill/1", "id": "t", "nodes": nodes, "edges": edges, **extra}


def test_records_stream_through_a_pipeline_with_counts_and_samples(executor, events):
    f = flow(
        [node("src", "test.source", n=1050), node("mid", "test.pass"), node("dst", "test.sink")],
        [edge("src", "mid"), edge("mid", "dst")],
    )
    result = executor.run(f)
    assert result.state == "succeeded"
    assert len(COLLECTED["dst"]) == 1050
    assert [r["i"] for r in COLLECTED["dst"][:3]] == [0, 1, 2]
    mid = result.nodes["mid"]
    assert (mid.state, mid.records_in, mid.records_out) == (
        "succeeded",
        {"in": 1050},
        {"out": 1050},
    )
    assert len(mid.sample["out"]) == 20 and mid.sample["out"][0] == {"i": 0, "v": 0}
    assert result.nodes["dst"].records_out == {"out": 1}
    started = next(e for e in events if isinstance(e, RunStarted))
    assert started.flow_hash == flow_hash(f) == result.flow_hash


def test_fan_out_gives_every_consumer_every_record(executor):
    f = flow(
        [node("src", "test.source", n=500), node("a", "test.sink"), node("b", "test.sink")],
        [edge("src", "a"), edge("src", "b")],
    )
    result = executor.run(f)
    assert result.ok
    assert len(COLLECTED["a"]) == len(COLLECTED["b"]) == 500


def test_two_inputs_into_one_port_are_merged(executor):
    f = flow(
        [
            node("s1", "test.source", n=300),
            node("s2", "test.source", n=200),
            node("d", "test.sink"),
        ],
        [edge("s1", "d"), edge("s2", "d")],
    )
    assert executor.run(f).ok
    assert len(COLLECTED["d"]) == 500


def test_independent_branches_run_in_parallel(executor):
    nodes = [node("s", "test.source", n=10)]
    edges = []
    for b in ("a", "b", "c"):
        nodes += [node(f"meet-{b}", "test.meet"), node(f"sink-{b}", "test.sink")]
        edges += [edge("s", f"meet-{b}"), edge(f"meet-{b}", f"sink-{b}")]
    MEETING["all"] = threading.Barrier(3)
    result = executor.run(flow(nodes, edges))
    assert result.ok, result.error  # a broken barrier: the branches did not run side by side


def test_failing_node_fails_the_run_and_skips_downstream(executor, events):
    f = flow(
        [
            node("src", "test.source", n=1000),
            node("broken", "test.pass", fail_at=450),
            node("dst", "test.sink"),
        ],
        [edge("src", "broken"), edge("broken", "dst")],
    )
    result = executor.run(f)
    assert result.state == "failed"
    assert result.error_node == "broken"
    assert "record 450 is broken" in result.error
    assert result.nodes["broken"].state == "failed"
    assert result.nodes["dst"].state == "skipped"
    assert "dst" not in COLLECTED  # the sink never finished
    assert any(isinstance(e, NodeSkipped) and e.node_id == "dst" for e in events)
    finished = next(e for e in events if isinstance(e, RunFinished))
    assert (finished.state, finished.error_node) == ("failed", "broken")


def test_route_sends_bad_records_to_the_error_port(executor):
    f = flow(
        [
            node("src", "test.source", n=250),
            node("check", "test.pass", reject=[3, 77, 201], on_error="route"),
            node("good", "test.sink"),
            node("bad", "test.sink"),
        ],
        [edge("src", "check"), edge("check", "good"), edge("check", "bad", "error")],
    )
    result = executor.run(f)
    assert result.ok
    assert len(COLLECTED["good"]) == 247
    assert [(r["i"], r["_error"], r["_node"]) for r in COLLECTED["bad"]] == [
        (3, "record 3 rejected", "check"),
        (77, "record 77 rejected", "check"),
        (201, "record 201 rejected", "check"),
    ]
    assert result.nodes["check"].records_out == {"out": 247, "error": 3}


def test_reject_with_on_error_fail_fails_naming_the_node(executor):
    f = flow(
        [node("src", "test.source", n=10), node("check", "test.pass", reject=[4])],
        [edge("src", "check")],
    )
    result = executor.run(f)
    assert result.state == "failed"
    assert result.error_node == "check"
    assert "record 4 rejected" in result.error


def test_source_is_retried_with_backoff(executor, events):
    f = flow(
        [
            node("src", "test.source", n=10, fail_times=2, retries=3, retry_delay=0.05),
            node("dst", "test.sink"),
        ],
        [edge("src", "dst")],
    )
    result = executor.run(f)
    assert result.ok
    assert result.nodes["src"].attempts == 3
    delays = [e.delay for e in events if isinstance(e, NodeRetrying)]
    assert delays == [0.05, 0.1]


def test_retry_replays_the_input_of_a_sink(executor):
    f = flow(
        [
            node("src", "test.source", n=730),
            node("dst", "test.sink", fail_times=1, retries=1, retry_delay=0),
        ],
        [edge("src", "dst")],
    )
    result = executor.run(f)
    assert result.ok
    assert [r["i"] for r in COLLECTED["dst"]] == list(range(730))
    assert result.nodes["dst"].attempts == 2


def test_retries_exhausted_fail_the_node(executor):
    f = flow(
        [node("src", "test.source", n=10, fail_times=5, retries=1, retry_delay=0)],
        [],
    )
    result = executor.run(f)
    assert result.state == "failed"
    assert result.nodes["src"].attempts == 2
    assert "database not reachable" in result.error


def test_timeout_fails_a_slow_node(executor):
    f = flow(
        [node("src", "test.source", n=5), node("slow", "test.sleep", seconds=3600, timeout=0.3)],
        [edge("src", "slow")],
    )
    began = time.monotonic()
    result = executor.run(f)
    assert time.monotonic() - began < DEADLINE  # not the hour the node asked for
    assert result.state == "failed"
    assert result.error_node == "slow"
    assert "timed out after 0.3 s" in result.error


def test_cancel_stops_the_run_between_batches(executor):
    cancel = threading.Event()
    f = flow(
        [
            node("src", "test.source", n=10),
            node("slow", "test.sleep", seconds=3600),
            node("dst", "test.sink"),
        ],
        [edge("src", "slow"), edge("slow", "dst")],
    )
    threading.Timer(0.3, cancel.set).start()
    began = time.monotonic()
    result = executor.run(f, cancel_event=cancel)
    assert time.monotonic() - began < DEADLINE  # not the hour the node asked for
    assert result.state == "cancelled"
    assert result.nodes["slow"].state == "skipped"
    assert result.nodes["dst"].state == "skipped"


def test_disabled_node_is_skipped_and_downstream_sees_no_records(executor):
    f = flow(
        [node("src", "test.source", n=10) | {"disabled": True}, node("dst", "test.sink")],
        [edge("src", "dst")],
    )
    result = executor.run(f)
    assert result.ok
    assert result.nodes["src"].state == "skipped"
    assert COLLECTED["dst"] == []


def test_invalid_flow_is_refused_before_anything_runs(executor):
    f = flow([node("a", "test.pass"), node("b", "test.pass")], [edge("a", "b"), edge("b", "a")])
    with pytest.raises(FlowValidationError) as info:
        executor.run(f)
    assert "cycle" in str(info.value)


def test_params_are_typed_and_unknown_params_refused(executor):
    f = flow(
        [node("src", "test.source", n=1)],
        [],
        params={"limit": {"type": "integer", "default": 5}},
    )
    with pytest.raises(ParamError, match="limit"):
        executor.run(f, {"limit": "many"})
    with pytest.raises(ParamError, match="not declared"):
        executor.run(f, {"other": "1"})
    assert executor.run(f, {"limit": "7"}).ok


@pytest.mark.parametrize("value", ["1e400", "-1e400", "nan", "inf", float("inf"), float("nan")])
def test_a_number_param_must_be_finite(executor, value: Any):
    # float("1e400") is infinity: it neither compares nor stores as a number
    f = flow(
        [node("src", "test.source", n=1)], [], params={"vat": {"type": "number", "default": 1.19}}
    )
    with pytest.raises(ParamError, match=r"param 'vat': .* is not a finite number"):
        executor.run(f, {"vat": value})
    assert executor.run(f, {"vat": "1,07"}).ok


def test_node_finished_events_carry_counts(executor, events):
    f = flow([node("src", "test.source", n=42), node("dst", "test.sink")], [edge("src", "dst")])
    executor.run(f)
    done = {e.node_id: e for e in events if isinstance(e, NodeFinished)}
    assert done["src"].records_out == {"out": 42}
    assert done["dst"].records_in == {"in": 42}


def test_param_value_that_breaks_the_schema_fails_the_node_naming_the_field(executor):
    f = flow(
        [node("src", "test.source", n="${count}"), node("dst", "test.sink")],
        [edge("src", "dst")],
        params={"count": {"type": "integer", "default": 5}},
    )
    assert executor.run(f).ok
    result = executor.run(f, {"count": "-3"})
    assert result.state == "failed" and result.error_node == "src"
    assert result.error.startswith("n: -3 is less than the minimum of 0")
    assert result.nodes["dst"].state == "skipped"


def test_a_node_that_leaves_its_input_unread_does_not_block_the_producer(executor):
    # 50 batches are far more than the inbox holds: the source must not wait forever
    f = flow(
        [node("src", "test.source", n=5000), node("lazy", "test.ignore")],
        [edge("src", "lazy")],
    )
    result = executor.run(f)  # returns at all: a blocked producer would hang here
    assert result.ok
    assert result.nodes["lazy"].records_out == {"out": 1}


COUNT_BY_REGION = {"group_by": ["region"], "aggregations": [{"op": "count", "as": "n"}]}


def test_a_diamond_into_a_two_input_node_does_not_deadlock(tmp_path: Path) -> None:
    """read → join.left and read → aggregate → join.right: the left input fills up long
    before the aggregate can produce its one batch; the join must start anyway."""
    data = tmp_path / "sales.csv"
    data.write_text("region,amount\n" + "".join(f"{'NS'[i % 2]},{i}\n" for i in range(20_000)))
    flow = {
        "format": "flowmill/1",
        "id": "diamond",
        "nodes": [
            {"id": "read", "type": "file.read", "config": {"path": str(data)}},
            {"id": "totals", "type": "transform.aggregate", "config": COUNT_BY_REGION},
            {"id": "join", "type": "transform.join", "config": {"on": ["region"]}},
            {"id": "write", "type": "file.write", "config": {"path": str(tmp_path / "o.csv")}},
        ],
        "edges": [
            {"source": "read", "source_port": "out", "target": "join", "target_port": "left"},
            {"source": "read", "source_port": "out", "target": "totals", "target_port": "in"},
            {"source": "totals", "source_port": "out", "target": "join", "target_port": "right"},
            {"source": "join", "source_port": "out", "target": "write", "target_port": "in"},
        ],
    }
    for node in flow["nodes"]:
        node["config"]["timeout"] = 60  # a deadlock fails the test instead of hanging it
    with Flowmill.open(tmp_path / "data") as app:
        result = app.run_flow(flow)
    assert result.state == "succeeded", result.error
    assert result.nodes["join"].records_out == {"out": 20_000}
