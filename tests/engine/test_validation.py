"""One validation function; one test per class of error, each naming node and field."""

from __future__ import annotations

from typing import Any

import pytest

from engine.flows.registry import Registry
from engine.flows.validate import ValidationIssue, validate_flow
from engine.spec import ConfigProblem, NodeSpec


def _noop(ctx: Any, config: dict, inputs: Any) -> dict:
    return {}


def _check(config: dict) -> list[ConfigProblem]:
    if "bad" in config.get("expr", ""):
        return [ConfigProblem("expr", "'bad' is not allowed at position 3")]
    return []


@pytest.fixture
def registry() -> Registry:
    reg = Registry()
    reg.add(
        NodeSpec(
            type="t.src",
            title="src",
            category="t",
            outputs=("out",),
            run=_noop,
            config_schema={
                "type": "object",
                "additionalProperties": False,
                "properties": {"n": {"type": "integer", "minimum": 0}, "path": {"type": "string"}},
            },
        ),
        "tests.a",
    )
    reg.add(
        NodeSpec(
            type="t.map",
            title="map",
            category="t",
            inputs=("in",),
            outputs=("out",),
            run=_noop,
            check=_check,
            config_schema={
                "type": "object",
                "required": ["expr"],
                "properties": {"expr": {"type": "string"}},
            },
        ),
        "tests.a",
    )
    reg.add(
        NodeSpec(
            type="t.join",
            title="join",
            category="t",
            inputs=("left", "right"),
            required_inputs=("left",),
            outputs=("out",),
            run=_noop,
        ),
        "tests.b",
    )
    return reg


def flow(nodes: list[dict], edges: list[dict] | None = None, **extra: Any) -> dict:
    return {"format": "flowmill/1", "id": "f", "nodes": nodes, "edges": edges or [], **extra}


def e(src: str, dst: str, sp: str = "out", tp: str = "in") -> dict:
    return {"source": src, "source_port": sp, "target": dst, "target_port": tp}


def issues_of(result: list[ValidationIssue]) -> list[tuple]:
    return [(i.node, i.field) for i in result]


def test_a_valid_flow_has_no_issues(registry):
    f = flow(
        [
            {"id": "s", "type": "t.src", "config": {"n": 1}},
            {"id": "m", "type": "t.map", "config": {"expr": "x"}},
        ],
        [e("s", "m")],
    )
    assert validate_flow(f, registry) == []


def test_schema_errors_name_the_node_and_field(registry):
    result = validate_flow(
        {
            "format": "flowmill/2",
            "id": "f",
            "nodes": [{"id": "s", "type": "t.src", "cfg": 1}],
            "edges": [],
        },
        registry,
    )
    assert (None, "format") in issues_of(result)
    assert any(i.node == "s" and "'cfg'" in i.message for i in result)


def test_unknown_node_type(registry):
    result = validate_flow(flow([{"id": "x", "type": "t.nope"}]), registry)
    assert issues_of(result) == [("x", "type")]
    assert "unknown node type 't.nope'" in result[0].message
    assert "t.map" in result[0].message  # lists the known types


def test_duplicate_ids(registry):
    result = validate_flow(
        flow([{"id": "s", "type": "t.src"}, {"id": "s", "type": "t.src"}]), registry
    )
    assert issues_of(result) == [("s", "id")]
    assert "duplicate node id" in result[0].message


def test_dangling_edge(registry):
    result = validate_flow(flow([{"id": "s", "type": "t.src"}], [e("s", "ghost")]), registry)
    assert any(i.field == "edges[0].target" and "'ghost'" in i.message for i in result)


def test_unknown_ports(registry):
    nodes = [{"id": "s", "type": "t.src"}, {"id": "m", "type": "t.map", "config": {"expr": "x"}}]
    result = validate_flow(flow(nodes, [e("s", "m", sp="rows", tp="input")]), registry)
    assert ("s", "source_port") in issues_of(result)
    assert ("m", "target_port") in issues_of(result)
    assert any("unknown output port 'rows' (outputs: out, error)" in i.message for i in result)


def test_config_against_the_node_schema(registry):
    nodes = [{"id": "s", "type": "t.src", "config": {"n": -1, "extra": True}}]
    result = validate_flow(flow(nodes), registry)
    assert ("s", "n") in issues_of(result)
    assert any(i.node == "s" and "'extra'" in i.message for i in result)


def test_missing_required_config_key_names_the_field(registry):
    nodes = [{"id": "s", "type": "t.src"}, {"id": "m", "type": "t.map"}]
    result = validate_flow(flow(nodes, [e("s", "m")]), registry)
    assert issues_of(result) == [("m", "expr")]


def test_common_config_keys_are_checked_too(registry):
    nodes = [{"id": "s", "type": "t.src", "config": {"on_error": "ignore", "retries": 99}}]
    result = validate_flow(flow(nodes), registry)
    assert {("s", "on_error"), ("s", "retries")} <= set(issues_of(result))


def test_node_check_hook_reports_field_and_position(registry):
    nodes = [
        {"id": "s", "type": "t.src"},
        {"id": "m", "type": "t.map", "config": {"expr": "a bad"}},
    ]
    result = validate_flow(flow(nodes, [e("s", "m")]), registry)
    assert issues_of(result) == [("m", "expr")]
    assert "position 3" in result[0].message


def test_required_input_not_connected(registry):
    nodes = [{"id": "m", "type": "t.map", "config": {"expr": "x"}}, {"id": "j", "type": "t.join"}]
    result = validate_flow(flow(nodes), registry)
    assert set(issues_of(result)) == {("m", "inputs.in"), ("j", "inputs.left")}


def test_cycle_message_names_every_node_on_the_cycle(registry):
    nodes = [{"id": "s", "type": "t.src"}] + [
        {"id": x, "type": "t.map", "config": {"expr": "x"}} for x in ("a", "b", "c")
    ]
    edges = [e("s", "a"), e("a", "b"), e("b", "c"), e("c", "a", tp="in")]
    # a needs its input twice to close the loop; use the join's optional port instead
    nodes.append({"id": "j", "type": "t.join"})
    edges = [e("s", "a"), e("a", "b"), e("b", "j", tp="left"), e("j", "c"), e("c", "b")]
    result = validate_flow(flow(nodes, edges), registry)
    cyc = [i for i in result if i.message.startswith("cycle")]
    assert {i.node for i in cyc} == {"b", "j", "c"}
    for name in ("b", "j", "c"):
        assert name in cyc[0].message
    assert "a" not in {i.node for i in cyc}


def test_error_port_wired_without_route_is_reported(registry):
    nodes = [{"id": "s", "type": "t.src"}, {"id": "m", "type": "t.map", "config": {"expr": "x"}}]
    result = validate_flow(flow(nodes, [e("s", "m", sp="error")]), registry)
    assert issues_of(result) == [("s", "on_error")]


def test_unknown_placeholder_is_reported(registry):
    nodes = [{"id": "s", "type": "t.src", "config": {"path": "${data_dir}/${nope}.csv"}}]
    result = validate_flow(flow(nodes), registry)
    assert len(result) == 1 and "${nope}" in result[0].message


def test_placeholder_takes_the_param_default_for_schema_checks(registry):
    nodes = [{"id": "s", "type": "t.src", "config": {"n": "${limit}"}}]
    ok = flow(nodes, params={"limit": {"type": "integer", "default": 5}})
    bad = flow(nodes, params={"limit": {"type": "integer", "default": -5}})
    assert validate_flow(ok, registry) == []
    assert issues_of(validate_flow(bad, registry)) == [("s", "n")]


def test_non_object_flow():
    assert validate_flow([1, 2], Registry())[0].message == "a flow must be a JSON object"
