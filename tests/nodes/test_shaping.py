"""transform.aggregate / sort / join and route.switch, told as the reports users build."""

from __future__ import annotations

import csv
import random
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from engine.config import Settings
from engine.errors import NodeError, RecordError
from engine.flows.registry import Registry
from engine.flows.validate import validate_flow
from engine.service import Flowmill
from engine.store.factory import open_store
from engine.testing import run_node
from nodes.shaping import AGGREGATE, JOIN, SORT, SWITCH, check_aggregate, check_join, check_switch

ORDERS = [
    {"customer": "Müller", "amount": Decimal("10.10"), "qty": 1, "sku": "a"},
    {"customer": "Weiß", "amount": Decimal("5.00"), "qty": 2, "sku": "b"},
    {"customer": "Müller", "amount": Decimal("0.20"), "qty": 3, "sku": "a"},
    {"customer": "Abel", "amount": None, "qty": 4, "sku": "c"},
    {"customer": "Weiß", "amount": Decimal("1.05"), "qty": 5, "sku": "c"},
]


# --------------------------------------------------------------------------- aggregate
def test_sales_per_customer_sum_exact_decimals_in_order_of_first_appearance():
    config = {
        "group_by": ["customer"],
        "aggregations": [
            {"op": "sum", "field": "amount", "as": "total"},
            {"op": "count", "as": "orders"},
            {"op": "count", "field": "amount", "as": "priced"},
            {"op": "avg", "field": "qty"},
            {"op": "min", "field": "qty"},
            {"op": "max", "field": "qty"},
            {"op": "first", "field": "sku"},
            {"op": "last", "field": "sku"},
            {"op": "count_distinct", "field": "sku", "as": "skus"},
        ],
    }
    out = run_node(AGGREGATE, config, {"in": ORDERS}, batch_size=2)["out"]
    assert [r["customer"] for r in out] == ["Müller", "Weiß", "Abel"]
    assert out[0] == {
        "customer": "Müller",
        "total": Decimal("10.30"),
        "orders": 2,
        "priced": 2,
        "avg_qty": 2.0,
        "min_qty": 1,
        "max_qty": 3,
        "first_sku": "a",
        "last_sku": "a",
        "skus": 1,
    }
    assert out[1]["total"] == Decimal("6.05") and out[1]["skus"] == 2
    # a group with only nulls sums to null, as in SQL
    assert out[2]["total"] is None and out[2]["orders"] == 1 and out[2]["priced"] == 0


def test_aggregate_without_groups_gives_one_record_even_for_no_input():
    config = {"aggregations": [{"op": "count"}, {"op": "sum", "field": "amount"}]}
    assert run_node(AGGREGATE, config, {"in": []})["out"] == [{"count": 0, "sum_amount": None}]
    out = run_node(AGGREGATE, config, {"in": ORDERS})["out"]
    assert out == [{"count": 5, "sum_amount": Decimal("16.35")}]


def test_decimal_and_float_mix_sums_as_decimal_taken_as_written():
    rows = [{"v": Decimal("0.10")}, {"v": 0.2}, {"v": 3}]
    out = run_node(AGGREGATE, {"aggregations": [{"op": "sum", "field": "v"}]}, {"in": rows})
    assert out["out"] == [{"sum_v": Decimal("3.30")}]


def test_a_text_amount_is_rejected_and_changes_no_total():
    rows = [
        {"c": "x", "v": 1, "s": "a"},
        {"c": "x", "v": "zwei", "s": "b"},
        {"c": "x", "v": 3, "s": "c"},
    ]
    config = {
        "group_by": ["c"],
        "aggregations": [
            {"op": "count_distinct", "field": "s"},
            {"op": "sum", "field": "v"},
        ],
        "on_error": "route",
    }
    result = run_node(AGGREGATE, config, {"in": rows})
    assert result["out"] == [{"c": "x", "count_distinct_s": 2, "sum_v": 4}]
    assert len(result["error"]) == 1
    assert "sum of 'v'" in result["error"][0]["_error"]


def test_missing_group_field_names_the_field_or_counts_as_null():
    rows = [{"c": "x", "v": 1}, {"v": 2}]
    config = {"group_by": ["c"], "aggregations": [{"op": "sum", "field": "v"}]}
    with pytest.raises(RecordError, match="missing field 'c'"):
        run_node(AGGREGATE, config, {"in": rows})
    out = run_node(AGGREGATE, {**config, "missing": "null"}, {"in": rows})["out"]
    assert out == [{"c": "x", "sum_v": 1}, {"c": None, "sum_v": 2}]


def test_aggregate_check_names_missing_field_and_duplicate_outputs():
    problems = check_aggregate(
        {
            "group_by": ["total"],
            "aggregations": [{"op": "sum"}, {"op": "sum", "field": "v", "as": "total"}],
        }
    )
    assert [p.field for p in problems] == ["aggregations.0.field", "aggregations.1.as"]


# --------------------------------------------------------------------------- sort
def test_sort_by_several_keys_with_nulls_last_and_descending():
    rows = [
        {"c": "b", "v": 1},
        {"c": "a", "v": 2},
        {"c": None, "v": 3},
        {"c": "a", "v": None},
        {"c": "a", "v": 5},
    ]
    config = {"keys": [{"field": "c"}, {"field": "v", "descending": True}]}
    out = run_node(SORT, config, {"in": rows})["out"]
    assert [(r["c"], r["v"]) for r in out] == [
        ("a", 5),
        ("a", 2),
        ("a", None),
        ("b", 1),
        (None, 3),
    ]
    first = run_node(SORT, {**config, "nulls": "first"}, {"in": rows})["out"]
    assert [(r["c"], r["v"]) for r in first][:2] == [(None, 3), ("a", None)]


def test_sort_spills_sorted_runs_and_removes_them(tmp_path: Path):
    rng = random.Random(7)
    rows = [{"n": rng.randrange(1000), "i": i} for i in range(10_000)]
    work = tmp_path / "work"
    config = {"keys": [{"field": "n", "descending": True}], "memory_records": 100}
    result = run_node(SORT, config, {"in": rows}, work_dir=work, batch_size=500)
    out = result["out"]
    # stable: equal keys keep their input order, across runs
    assert out == sorted(rows, key=lambda r: -r["n"])
    assert result.batches["out"] == 20
    assert list(work.iterdir()) == []


def test_sort_merges_in_several_passes_when_there_are_many_runs(tmp_path: Path):
    rows = [{"n": (i * 7919) % 5000} for i in range(5000)]
    result = run_node(
        SORT, {"keys": [{"field": "n"}], "memory_records": 10}, {"in": rows}, work_dir=tmp_path
    )
    assert [r["n"] for r in result["out"]] == list(range(5000))
    assert list(tmp_path.iterdir()) == []


def test_mixed_types_in_a_sort_key_name_the_field():
    rows = [{"plz": 10115}, {"plz": "01067"}]
    with pytest.raises(RecordError, match="cannot sort field 'plz': text value '01067' among "):
        run_node(SORT, {"keys": [{"field": "plz"}]}, {"in": rows})
    routed = run_node(SORT, {"keys": [{"field": "plz"}], "on_error": "route"}, {"in": rows})
    assert routed["out"] == [{"plz": 10115}] and routed["error"][0]["plz"] == "01067"


def test_unorderable_values_fail_naming_the_key(tmp_path: Path):
    rows = [{"k": {"a": 1}}, {"k": {"b": 2}}]
    with pytest.raises(NodeError, match="cannot sort by k"):
        run_node(SORT, {"keys": [{"field": "k"}]}, {"in": rows})


# --------------------------------------------------------------------------- join
CUSTOMERS = [
    {"customer": "Müller", "city": "Berlin", "sku": "ignored"},
    {"customer": "Weiß", "city": "Wien", "sku": "x"},
]


def test_orders_joined_with_customers_prefix_clashing_fields():
    result = run_node(JOIN, {"on": ["customer"]}, {"left": ORDERS, "right": CUSTOMERS})
    out = result["out"]
    assert [r["customer"] for r in out] == ["Müller", "Weiß", "Müller", "Weiß"]
    assert out[0] == {**ORDERS[0], "city": "Berlin", "right_sku": "ignored"}


def test_left_join_keeps_unmatched_with_null_right_fields():
    config = {"on": ["customer"], "type": "left", "prefix": "kunde_"}
    out = run_node(JOIN, config, {"left": ORDERS, "right": CUSTOMERS})["out"]
    assert len(out) == 5
    assert out[3] == {**ORDERS[3], "city": None, "kunde_sku": None}


def test_left_join_with_an_empty_right_input_adds_the_declared_right_fields():
    config = {"on": ["customer"], "type": "left", "right_fields": ["city", "customer"]}
    out = run_node(JOIN, config, {"left": ORDERS[:2], "right": []})["out"]
    assert out == [{**ORDERS[0], "city": None}, {**ORDERS[1], "city": None}]  # key kept once
    plain = run_node(JOIN, {**config, "right_fields": []}, {"left": ORDERS[:1], "right": []})
    assert plain["out"] == [ORDERS[0]]  # without the list the node cannot know them


def test_join_on_differently_named_keys_matches_every_right_record():
    prices = [{"article": "a", "price": 1}, {"article": "a", "price": 2}, {"article": None}]
    config = {"left_on": ["sku"], "right_on": ["article"]}
    out = run_node(JOIN, config, {"left": ORDERS, "right": prices})["out"]
    assert [(r["customer"], r["price"], r["article"]) for r in out] == [
        ("Müller", 1, "a"),
        ("Müller", 2, "a"),
        ("Müller", 1, "a"),
        ("Müller", 2, "a"),
    ]


def test_join_key_missing_names_the_side_and_field():
    with pytest.raises(RecordError, match="left record has no key field 'customer'"):
        run_node(JOIN, {"on": ["customer"]}, {"left": [{"x": 1}], "right": CUSTOMERS})
    assert check_join({"left_on": ["a", "b"], "right_on": ["a"]})[0].field == "right_on"


# --------------------------------------------------------------------------- switch
def test_switch_first_match_wins_and_rest_goes_to_other():
    config = {
        "routes": [
            {"port": "out1", "label": "big", "condition": "amount >= big"},
            {"port": "out2", "label": "Müller", "condition": "customer == 'Müller'"},
        ],
        "on_error": "route",
    }
    result = run_node(SWITCH, config, {"in": ORDERS}, params={"big": 5})
    assert [r["qty"] for r in result["out1"]] == [1, 2]
    assert [r["qty"] for r in result["out2"]] == [3]
    assert [r["qty"] for r in result["other"]] == [5]
    assert result["out3"] == result["out4"] == []
    # None >= 5 cannot be compared: the record is rejected naming the route
    assert "route 'big'" in result["error"][0]["_error"]


def test_switch_all_matches_sends_a_record_to_every_matching_port():
    config = {
        "routes": [
            {"port": "out1", "condition": "qty > 1"},
            {"port": "out2", "condition": "sku == 'c'"},
            {"port": "out2", "condition": "qty > 0"},
        ],
        "all_matches": True,
    }
    result = run_node(SWITCH, config, {"in": ORDERS})
    assert [r["qty"] for r in result["out1"]] == [2, 3, 4, 5]
    assert [r["qty"] for r in result["out2"]] == [1, 2, 3, 4, 5]  # once per port
    assert result["other"] == []


def test_switch_check_marks_the_condition_with_its_position():
    problems = check_switch({"routes": [{"port": "out1", "condition": "x.__class__"}]})
    assert problems[0].field == "routes.0.condition"
    assert "position 2" in problems[0].message


def test_switch_ports_are_static_and_validated():
    registry = Registry.discover()
    flow = {
        "format": "flowmill/1",
        "id": "s",
        "nodes": [
            {"id": "src", "type": "trigger.manual", "config": {}},
            {
                "id": "sw",
                "type": "route.switch",
                "config": {"routes": [{"port": "out1", "condition": "1 +"}]},
            },
            {"id": "dst", "type": "util.delay", "config": {"seconds": 0}},
        ],
        "edges": [
            {"source": "src", "source_port": "out", "target": "sw", "target_port": "in"},
            {"source": "sw", "source_port": "big", "target": "dst", "target_port": "in"},
        ],
    }
    issues = {(i.node, i.field) for i in validate_flow(flow, registry)}
    assert ("sw", "routes.0.condition") in issues
    assert ("sw", "source_port") in issues


# --------------------------------------------------------------------------- flows
@pytest.fixture
def app(tmp_path: Path):
    service = Flowmill(
        Settings(data_dir=tmp_path, batch_size=100),
        Registry.discover(),
        open_store("memory", tmp_path),
    )
    yield service
    service.close()


def _write_sales(path: Path, rows: int) -> None:
    with path.open("w", encoding="utf-8", newline="") as fh:
        writer = csv.writer(fh, delimiter=";")
        writer.writerow(["region", "amount"])
        for i in range(rows):
            writer.writerow([("Nord", "Süd", "West")[i % 3], f"{i % 10}.25"])


def _read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(encoding="utf-8", newline="") as fh:
        return list(csv.DictReader(fh, delimiter=";"))


def node(node_id: str, type_: str, **config: Any) -> dict[str, Any]:
    return {"id": node_id, "type": type_, "config": config}


def edge(src: str, dst: str, src_port: str = "out", dst_port: str = "in") -> dict[str, str]:
    return {"source": src, "source_port": src_port, "target": dst, "target_port": dst_port}


def test_sales_file_is_summed_per_region_into_a_report(app: Flowmill, tmp_path: Path):
    _write_sales(tmp_path / "sales.csv", 3000)
    report = tmp_path / "report.csv"
    flow = {
        "format": "flowmill/1",
        "id": "sales-report",
        "nodes": [
            node(
                "read",
                "file.read",
                path=str(tmp_path / "sales.csv"),
                delimiter=";",
                types={"amount": "decimal"},
            ),
            node(
                "sum",
                "transform.aggregate",
                group_by=["region"],
                aggregations=[
                    {"op": "sum", "field": "amount", "as": "total"},
                    {"op": "count", "as": "n"},
                ],
            ),
            node(
                "sort",
                "transform.sort",
                keys=[{"field": "total", "descending": True}],
                memory_records=10,
            ),
            node("write", "file.write", path=str(report), delimiter=";"),
        ],
        "edges": [edge("read", "sum"), edge("sum", "sort"), edge("sort", "write")],
    }
    result = app.run_flow(flow)
    assert result.ok, result.error
    rows = _read_csv(report)
    # amounts cycle 0.25 .. 9.25 over i % 10; regions cycle over i % 3
    expected = {r: Decimal(0) for r in ("Nord", "Süd", "West")}
    for i in range(3000):
        expected[("Nord", "Süd", "West")[i % 3]] += Decimal(f"{i % 10}.25")
    assert {r["region"]: Decimal(r["total"]) for r in rows} == expected
    assert [r["n"] for r in rows] == ["1000"] * 3
    assert result.nodes["sum"].records_in == {"in": 3000}


def test_switch_in_a_flow_feeds_two_writers_with_back_pressure(app: Flowmill, tmp_path: Path):
    _write_sales(tmp_path / "sales.csv", 5000)
    flow = {
        "format": "flowmill/1",
        "id": "split",
        "nodes": [
            node("read", "file.read", path=str(tmp_path / "sales.csv"), delimiter=";"),
            node(
                "sw",
                "route.switch",
                routes=[{"port": "out1", "label": "Nord", "condition": "region == 'Nord'"}],
            ),
            node("nord", "file.write", path=str(tmp_path / "nord.csv"), delimiter=";"),
            node("rest", "file.write", path=str(tmp_path / "rest.csv"), delimiter=";"),
        ],
        "edges": [
            edge("read", "sw"),
            edge("sw", "nord", "out1"),
            edge("sw", "rest", "other"),
        ],
    }
    result = app.run_flow(flow)
    assert result.ok, result.error
    assert len(_read_csv(tmp_path / "nord.csv")) == 1667
    assert len(_read_csv(tmp_path / "rest.csv")) == 3333
    assert result.nodes["sw"].records_out["out1"] == 1667


def test_self_join_of_one_file_does_not_stall(app: Flowmill, tmp_path: Path):
    # both inputs fed by the same port: the join reads right first, left waits on disk
    (tmp_path / "items.csv").write_text(
        "id;parent\n" + "".join(f"{i};{i // 2}\n" for i in range(5000)), encoding="utf-8"
    )
    flow = {
        "format": "flowmill/1",
        "id": "self-join",
        "nodes": [
            node(
                "read",
                "file.read",
                path=str(tmp_path / "items.csv"),
                delimiter=";",
                types={"id": "int", "parent": "int"},
            ),
            node("join", "transform.join", left_on=["parent"], right_on=["id"], timeout=30),
            node("write", "file.write", path=str(tmp_path / "out.csv"), delimiter=";"),
        ],
        "edges": [
            edge("read", "join", dst_port="left"),
            edge("read", "join", dst_port="right"),
            edge("join", "write"),
        ],
    }
    result = app.run_flow(flow)
    assert result.ok, result.error
    rows = _read_csv(tmp_path / "out.csv")
    assert len(rows) == 5000
    assert rows[4999] == {
        "id": "4999",
        "parent": "2499",
        "right_id": "2499",
        "right_parent": "1249",
    }


def test_join_leaves_no_parked_files(tmp_path: Path):
    run_node(
        JOIN,
        {"on": ["customer"]},
        {"left": ORDERS * 500, "right": CUSTOMERS},
        work_dir=tmp_path,
        batch_size=10,
    )
    assert list(tmp_path.iterdir()) == []
