"""transform.map / filter / select, util.delay and trigger.manual, one node at a time."""

from __future__ import annotations

import threading
import time
from decimal import Decimal

import pytest

from engine.errors import RecordError, RunCancelled
from engine.flows.registry import Registry
from engine.flows.validate import validate_flow
from engine.spec import NodeLogger, RunContext
from engine.testing import run_node
from nodes.transform import FILTER, MAP, SELECT, check_map
from nodes.triggers import MANUAL
from nodes.util import DELAY

ROWS = [
    {"sku": "a-1", "name": " Müller ", "price": Decimal("10.00"), "qty": 3},
    {"sku": "b-2", "name": "Größe", "price": Decimal("2.50"), "qty": 0},
    {"sku": "c-3", "name": "x", "price": None, "qty": 1},
]


def test_map_computes_fields_and_keeps_the_others():
    result = run_node(
        MAP,
        {
            "fields": {"gross": "round(price * markup, 2)", "label": "upper(trim(name))"},
            "on_error": "route",
        },
        {"in": ROWS},
        params={"markup": 1.19},
    )
    out = result["out"]
    assert out[0] == {**ROWS[0], "gross": Decimal("11.90"), "label": "MÜLLER"}
    assert out[1]["gross"] == Decimal("2.98") and out[1]["label"] == "GRÖSSE"
    # the record whose price is missing went to the error port, named by field
    assert [r["sku"] for r in result["error"]] == ["c-3"]
    assert "field 'gross'" in result["error"][0]["_error"]
    assert ROWS[0]["name"] == " Müller "  # input records are never mutated


def test_map_keep_false_outputs_only_computed_fields():
    out = run_node(MAP, {"fields": {"s": "upper(sku)"}, "keep": False}, {"in": ROWS[:2]})["out"]
    assert out == [{"s": "A-1"}, {"s": "B-2"}]


def test_map_evaluates_by_dependency_not_by_key_order():
    # canonical flows sort keys, so "a_total" comes before "net" in the file
    config = {"fields": {"a_total": "net * 2", "net": "price * qty", "price": "price + 1"}}
    out = run_node(MAP, config, {"in": [{"price": 10, "qty": 2}]})["out"]
    # price reads its own (incoming) value; net reads the new price; a_total reads net
    assert out == [{"price": 11, "qty": 2, "net": 22, "a_total": 44}]


def test_map_check_reports_cycles_and_bad_expressions_by_field():
    problems = check_map({"fields": {"a": "b + 1", "b": "a + 1"}})
    assert [p.field for p in problems] == ["fields"] and "read each other" in problems[0].message
    problems = check_map({"fields": {"ok": "1", "bad": "x.__class__"}})
    assert [p.field for p in problems] == ["fields.bad"]
    assert "position" in problems[0].message


def test_map_bad_record_fails_the_node_when_on_error_is_fail():
    with pytest.raises(RecordError, match="field 'gross'"):
        run_node(MAP, {"fields": {"gross": "price * 2"}}, {"in": ROWS})


def test_filter_keeps_matching_records():
    out = run_node(FILTER, {"condition": "qty > 0 and sku != 'zzz'"}, {"in": ROWS})["out"]
    assert [r["sku"] for r in out] == ["a-1", "c-3"]


def test_filter_unknown_field_is_rejected_with_the_field_list():
    result = run_node(FILTER, {"condition": "prcie > 1", "on_error": "route"}, {"in": ROWS[:1]})
    assert result["out"] == []
    assert "unknown field 'prcie'" in result["error"][0]["_error"]
    assert "price" in result["error"][0]["_error"]


def test_select_projects_in_order_and_renames():
    out = run_node(
        SELECT, {"fields": ["qty", "sku"], "rename": {"sku": "article"}}, {"in": ROWS[:1]}
    )["out"]
    assert out == [{"qty": 3, "article": "a-1"}]
    assert list(out[0]) == ["qty", "article"]


def test_select_missing_field_is_rejected_or_null():
    rows = [{"a": 1}]
    result = run_node(SELECT, {"fields": ["a", "b"], "on_error": "route"}, {"in": rows})
    assert result["out"] == [] and "missing field 'b'" in result["error"][0]["_error"]
    out = run_node(SELECT, {"fields": ["a", "b"], "missing": "null"}, {"in": rows})["out"]
    assert out == [{"a": 1, "b": None}]


def test_select_needs_fields_or_rename():
    flow = {
        "format": "flowmill/1",
        "id": "f",
        "edges": [],
        "nodes": [{"id": "s", "type": "transform.select", "config": {}}],
    }
    registry = Registry.from_modules(["nodes.transform"])
    assert any(i.node == "s" for i in validate_flow(flow, registry))


def test_manual_trigger_outputs_the_params():
    assert run_node(MANUAL, {}, params={"day": "2026-11-21"})["out"] == [{"day": "2026-11-21"}]


def test_delay_waits_then_passes_records_through():
    began = time.monotonic()
    out = run_node(DELAY, {"seconds": 0.2}, {"in": ROWS})["out"]
    assert time.monotonic() - began >= 0.2
    assert out == ROWS


def test_delay_wakes_up_when_cancelled(tmp_path):
    cancel = threading.Event()
    ctx = RunContext(
        run_id="r",
        flow_id="f",
        node_id="wait",
        node_type="util.delay",
        params={},
        work_dir=tmp_path,
        data_dir=tmp_path,
        logger=NodeLogger(lambda level, text: None),
        cancel_event=cancel,
    )
    threading.Timer(0.1, cancel.set).start()
    began = time.monotonic()
    stream = DELAY.run(ctx, {"seconds": 3600}, {"in": iter([ROWS])})["out"]
    with pytest.raises(RunCancelled):
        list(stream)
    assert time.monotonic() - began < 600  # not the hour it was asked to wait


def test_map_builds_nested_objects_and_lists_from_expressions():
    config = {
        "fields": {"id": "int(nr)", "name": "trim(name)"},
        "objects": {
            "address": {"city": "upper(city)", "geo": {"country": "'DE'"}, "zip": "zip"},
            "contacts": [{"kind": "'email'", "value": "lower(mail)"}, {"kind": "'x'", "n": 2}],
            "tags": ["name", "concat('id-', id)"],
        },
        "keep": False,
    }
    rows = [{"nr": "7", "name": " Weber KG ", "city": "Passau", "zip": "94032", "mail": "A@B.DE"}]

    (record,) = run_node(MAP, config, {"in": rows})["out"]

    assert record == {
        "id": 7,
        "name": "Weber KG",
        "address": {"city": "PASSAU", "geo": {"country": "DE"}, "zip": "94032"},
        "contacts": [{"kind": "email", "value": "a@b.de"}, {"kind": "x", "n": 2}],
        "tags": ["Weber KG", "id-7"],
    }
    # keep: the incoming fields stay, no temporary path field is left behind
    kept = run_node(MAP, {**config, "keep": True}, {"in": rows})["out"][0]
    assert set(kept) == set(rows[0]) | set(record)


def test_map_nested_object_errors_name_the_path():
    config = {"fields": {"n": "1"}, "objects": {"address": {"city": "upper(ctiy)"}}}
    result = run_node(MAP, {**config, "on_error": "route"}, {"in": [{"city": "x"}]})
    assert result["out"] == []
    assert "field 'address/city': unknown field 'ctiy'" in result["error"][0]["_error"]
    problems = check_map({"fields": {"a": "1"}, "objects": {"a": ["x"], "b": {"c": "x.y"}}})
    assert [p.field for p in problems] == ["objects.a", "objects.b.c"]
