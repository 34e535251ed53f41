"""file.read and file.write, told as the stories users bring: ERP exports, drops, round trips."""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterator
from datetime import date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from jsonschema.validators import validator_for

from engine.errors import NodeError, RecordError, RunCancelled
from engine.spec import Batch, NodeLogger, RunContext
from engine.testing import run_node
from nodes.files import FILE_READ, FILE_WRITE, NODES, check_read

ERP_EXPORT = (
    "Kunde;Artikel;Menge;Preis;Datum\r\n"
    "Müller GmbH;Größe XL;1.200;1.234,56;31.01.2024\r\n"
    "Jürgen Weiß;Maßband;3;-0,50;01.02.2024\r\n"
)
ERP_TYPES = {"Menge": "int", "Preis": "decimal", "Datum": "date"}


def write_text(path: Path, text: str, encoding: str = "utf-8") -> Path:
    path.write_bytes(text.encode(encoding))
    return path


def test_german_erp_export_reads_typed_records(tmp_path: Path) -> None:
    export = write_text(tmp_path / "export.csv", ERP_EXPORT, "cp1252")

    result = run_node(
        FILE_READ,
        {
            "path": str(export),
            "encoding": "cp1252",
            "delimiter": ";",
            "types": ERP_TYPES,
            "decimal_separator": ",",
            "date_format": "%d.%m.%Y",
        },
    )

    assert result["out"] == [
        {
            "Kunde": "Müller GmbH",
            "Artikel": "Größe XL",
            "Menge": 1200,
            "Preis": Decimal("1234.56"),
            "Datum": date(2024, 1, 31),
        },
        {
            "Kunde": "Jürgen Weiß",
            "Artikel": "Maßband",
            "Menge": 3,
            "Preis": Decimal("-0.50"),
            "Datum": date(2024, 2, 1),
        },
    ]
    assert result["error"] == []


def test_utf8_bom_is_not_part_of_the_first_header(tmp_path: Path) -> None:
    export = write_text(tmp_path / "bom.csv", "\ufeffsku,qty\nA1,2\n")

    for encoding in ("utf-8", "utf-8-sig"):
        result = run_node(FILE_READ, {"path": str(export), "encoding": encoding})
        assert result["out"] == [{"sku": "A1", "qty": "2"}]


def test_headerless_csv_uses_configured_columns_and_skips_lines(tmp_path: Path) -> None:
    export = write_text(tmp_path / "raw.csv", "EXPORT 2024-01-31\nA1,2,9.5\n\nB2,3,1e3\n")

    result = run_node(
        FILE_READ,
        {
            "path": str(export),
            "header": False,
            "skip_lines": 1,
            "columns": ["sku", "qty", "price"],
            "types": {"qty": "int", "price": "float"},
        },
    )

    assert result["out"] == [
        {"sku": "A1", "qty": 2, "price": 9.5},
        {"sku": "B2", "qty": 3, "price": 1000.0},
    ]


def test_empty_typed_values_become_null(tmp_path: Path) -> None:
    export = write_text(tmp_path / "gaps.csv", "sku,qty,due\nA1,,2024-01-31\nB2,4, \n")

    result = run_node(FILE_READ, {"path": str(export), "types": {"qty": "int", "due": "date"}})

    assert result["out"] == [
        {"sku": "A1", "qty": None, "due": date(2024, 1, 31)},
        {"sku": "B2", "qty": 4, "due": None},
    ]


def test_fixed_width_with_consecutive_columns(tmp_path: Path) -> None:
    export = write_text(tmp_path / "stock.txt", "A100  Schraube   00012\nB7    Mutter     00300\n")

    result = run_node(
        FILE_READ,
        {
            "path": str(export),
            "format": "fixed",
            "types": {"qty": "int"},
            "columns": [
                {"name": "sku", "width": 6},
                {"name": "name", "width": 11},
                {"name": "qty", "width": 5},
            ],
        },
    )

    assert result["out"] == [
        {"sku": "A100", "name": "Schraube", "qty": 12},
        {"sku": "B7", "name": "Mutter", "qty": 300},
    ]


def test_fixed_width_with_start_positions_and_without_strip(tmp_path: Path) -> None:
    export = write_text(tmp_path / "stock.txt", "XXA100 ..  12\nXXB7   ..   3\n")

    result = run_node(
        FILE_READ,
        {
            "path": str(export),
            "format": "fixed",
            "strip": False,
            "add_source": True,
            "columns": [
                {"name": "qty", "start": 10, "width": 4},
                {"name": "sku", "start": 3, "width": 5},
            ],
        },
    )

    assert result["out"] == [
        {"qty": "  12", "sku": "A100 ", "_file": str(export), "_line": 1},
        {"qty": "   3", "sku": "B7   ", "_file": str(export), "_line": 2},
    ]


def test_fixed_width_line_too_short_goes_to_error(tmp_path: Path) -> None:
    export = write_text(tmp_path / "stock.txt", "A100  00012\nB7  0\nC9    00001\n")

    result = run_node(
        FILE_READ,
        {
            "path": str(export),
            "format": "fixed",
            "on_error": "route",
            "columns": [{"name": "sku", "width": 6}, {"name": "qty", "width": 5}],
        },
    )

    assert [r["sku"] for r in result["out"]] == ["A100", "C9"]
    [bad] = result["error"]
    assert (bad["_line"], bad["_raw"]) == (2, "B7  0")
    assert "stock.txt line 2: line is 5 characters long, the columns need 11" in bad["_error"]


def test_jsonl_reads_objects_and_types(tmp_path: Path) -> None:
    export = write_text(
        tmp_path / "orders.jsonl", '{"id": 1, "total": "12.50"}\n\n{"id": 2, "total": 3.1}\n'
    )

    result = run_node(
        FILE_READ, {"path": str(export), "format": "jsonl", "types": {"total": "decimal"}}
    )

    assert result["out"] == [
        {"id": 1, "total": Decimal("12.50")},
        {"id": 2, "total": Decimal("3.1")},
    ]


def test_jsonl_invalid_line_and_non_object_are_routed(tmp_path: Path) -> None:
    export = write_text(tmp_path / "orders.jsonl", '{"id": 1}\n{"id": \n[1, 2]\n{"id": 4}\n')

    result = run_node(FILE_READ, {"path": str(export), "format": "jsonl", "on_error": "route"})

    assert result["out"] == [{"id": 1}, {"id": 4}]
    assert [(e["_line"], e["_raw"]) for e in result["error"]] == [(2, '{"id": '), (3, "[1, 2]")]
    assert "orders.jsonl line 2: invalid JSON" in result["error"][0]["_error"]
    assert "line 3: expected a JSON object, got list" in result["error"][1]["_error"]


def test_jsonl_type_errors_name_their_own_line(tmp_path: Path) -> None:
    export = write_text(
        tmp_path / "orders.jsonl",
        '{"qty": 1}\nnot json\n{"qty": "x"}\n{"qty": 2.5}\n{"qty": "4"}\n',
    )

    result = run_node(
        FILE_READ,
        {"path": str(export), "format": "jsonl", "on_error": "route", "types": {"qty": "int"}},
    )

    assert result["out"] == [{"qty": 1}, {"qty": 4}]
    assert [(e["_line"], e["_error"].split(": ", 1)[1]) for e in result["error"]] == [
        (2, "invalid JSON: Expecting value at column 1"),
        (3, "field 'qty': 'x' is not an int"),
        (4, "field 'qty': 2.5 is not an int"),
    ]


def test_json_array_reads_records_in_batches(tmp_path: Path) -> None:
    export = tmp_path / "items.json"
    export.write_text(json.dumps([{"n": i} for i in range(5)] + [7]))

    result = run_node(
        FILE_READ, {"path": str(export), "format": "json", "on_error": "route"}, batch_size=2
    )

    assert result["out"] == [{"n": i} for i in range(5)]
    assert result.batches["out"] == 3
    assert [e["_item"] for e in result["error"]] == [6]


def test_glob_reads_every_match_in_sorted_order(tmp_path: Path) -> None:
    write_text(tmp_path / "sales_02.csv", "n\n3\n4\n")
    write_text(tmp_path / "sales_01.csv", "n\n1\n2\n")
    write_text(tmp_path / "other.csv", "n\n99\n")

    result = run_node(FILE_READ, {"path": str(tmp_path / "sales_*.csv"), "add_source": True})

    assert [(Path(r["_file"]).name, r["_line"], r["n"]) for r in result["out"]] == [
        ("sales_01.csv", 2, "1"),
        ("sales_01.csv", 3, "2"),
        ("sales_02.csv", 2, "3"),
        ("sales_02.csv", 3, "4"),
    ]


def test_batches_honour_batch_size(tmp_path: Path) -> None:
    export = write_text(tmp_path / "n.csv", "n\n" + "".join(f"{i}\n" for i in range(25)))
    batches: list[int] = []

    result = run_node(FILE_READ, {"path": str(export)}, batch_size=10)
    ctx_out = FILE_READ.run(
        _ctx(batch_size=10, progress=batches.append),
        FILE_READ.with_defaults({"path": str(export)}),
        {},
    )

    assert len(result["out"]) == 25
    assert result.batches["out"] == 3
    assert [len(b) for b in ctx_out["out"]] == [10, 10, 5]
    assert batches == [10, 10, 5]


def test_bad_lines_go_to_error_port_and_reading_goes_on(tmp_path: Path) -> None:
    export = write_text(
        tmp_path / "sales.csv",
        'sku,qty,note\nA1,2,ok\nB2,abc,x\nC3,1\nD4,5,"two\nlines"\nE5,x,"a\nb"\nF6,7,z\n',
    )

    result = run_node(
        FILE_READ,
        {"path": str(export), "on_error": "route", "types": {"qty": "int"}, "add_source": True},
        batch_size=4,
    )

    assert [(r["sku"], r["qty"], r["_line"]) for r in result["out"]] == [
        ("A1", 2, 2),
        ("D4", 5, 5),
        ("F6", 7, 9),
    ]
    assert [(e["_line"], e["_raw"]) for e in result["error"]] == [
        (3, "B2,abc,x"),
        (4, "C3,1"),
        (7, 'E5,x,"a\nb"'),
    ]
    errors = [e["_error"] for e in result["error"]]
    assert errors[0] == f"{export} line 3: field 'qty': 'abc' is not an int"
    assert errors[1] == f"{export} line 4: expected 3 fields, got 2"
    assert all(e["_file"] == str(export) for e in result["error"])


def test_bad_line_fails_the_node_naming_file_and_line(tmp_path: Path) -> None:
    export = write_text(tmp_path / "sales.csv", "sku,qty\nA1,2\nB2,2\nC3,abc\n")

    with pytest.raises(RecordError, match=r"sales\.csv line 4: field 'qty': 'abc' is not an int"):
        run_node(FILE_READ, {"path": str(export), "types": {"qty": "int"}})


def test_bad_date_names_the_expected_format(tmp_path: Path) -> None:
    export = write_text(tmp_path / "d.csv", "d\n2024-01-31\n")

    with pytest.raises(
        RecordError,
        match=r"d\.csv line 2: field 'd': '2024-01-31' is not a "
        r"date \(expected %d\.%m\.%Y\)",
    ):
        run_node(
            FILE_READ, {"path": str(export), "types": {"d": "date"}, "date_format": "%d.%m.%Y"}
        )


def test_missing_file_and_empty_glob_name_the_path(tmp_path: Path) -> None:
    missing = tmp_path / "nope.csv"

    with pytest.raises(NodeError, match=r"file not found: .*nope\.csv"):
        run_node(FILE_READ, {"path": str(missing)})
    with pytest.raises(NodeError, match=r"no file matches .*drop_\*\.csv"):
        run_node(FILE_READ, {"path": str(tmp_path / "drop_*.csv")})
    with pytest.raises(NodeError, match="path: give a file or glob pattern"):
        run_node(FILE_READ, {})


def test_wrong_encoding_names_file_and_line(tmp_path: Path) -> None:
    export = write_text(tmp_path / "export.csv", ERP_EXPORT, "cp1252")

    with pytest.raises(NodeError, match=r"export\.csv line 2: cannot be decoded as utf-8"):
        run_node(FILE_READ, {"path": str(export), "delimiter": ";"})


def test_unknown_type_field_and_bad_config_are_named(tmp_path: Path) -> None:
    export = write_text(tmp_path / "a.csv", "sku,qty\nA,1\n")

    with pytest.raises(
        NodeError,
        match=r"types: field 'qtty' is not a column of .*a\.csv "
        r"\(columns: sku, qty\)",
    ):
        run_node(FILE_READ, {"path": str(export), "types": {"qtty": "int"}})
    assert [p.field for p in check_read({"format": "fixed"})] == ["columns"]
    assert [p.field for p in check_read({"header": False, "encoding": "klingon"})] == [
        "encoding",
        "columns",
    ]


def test_in_port_reads_the_file_each_record_names(tmp_path: Path) -> None:
    first = write_text(tmp_path / "drop [1].csv", "n\n1\n")
    second = write_text(tmp_path / "drop2.csv", "n\n2\n3\n")
    drops = [
        {"path": str(first), "name": first.name},
        {"path": str(second)},
        {"path": str(tmp_path / "gone.csv")},
        {"name": "no path"},
    ]

    result = run_node(FILE_READ, {"on_error": "route"}, {"in": drops})

    assert [r["n"] for r in result["out"]] == ["1", "2", "3"]
    assert [e["_error"] for e in result["error"]] == [
        f"file not found: {tmp_path / 'gone.csv'}",
        "input record has no 'path' field naming a file to read",
    ]


# -- file.write ---------------------------------------------------------------------------

ROWS = [
    {
        "sku": "A1",
        "name": 'Müller, Größe "XL"',
        "qty": 1200,
        "price": Decimal("1234.56"),
        "due": date(2024, 1, 31),
        "note": None,
    },
    {
        "sku": "B2",
        "name": "Weiß\nzweizeilig",
        "qty": 3,
        "price": Decimal("-0.50"),
        "due": date(2024, 2, 1),
        "note": "x",
    },
]
ROW_TYPES = {"qty": "int", "price": "decimal", "due": "date"}


@pytest.mark.parametrize("fmt", ["csv", "jsonl", "json"])
def test_write_then_read_round_trips(tmp_path: Path, fmt: str) -> None:
    target = tmp_path / "out" / f"rows.{fmt}"

    written = run_node(FILE_WRITE, {"path": str(target), "format": fmt}, {"in": ROWS})
    read = run_node(FILE_READ, {"path": str(target), "format": fmt, "types": ROW_TYPES})

    assert written["out"] == [{"path": str(target), "rows": 2}]
    expected = [dict(r) for r in ROWS]
    if fmt == "csv":
        expected[0]["note"] = ""  # csv has no null
    assert read["out"] == expected


def test_write_german_csv_in_cp1252(tmp_path: Path) -> None:
    target = tmp_path / "erp.csv"

    run_node(
        FILE_WRITE,
        {
            "path": str(target),
            "encoding": "cp1252",
            "delimiter": ";",
            "decimal_separator": ",",
            "date_format": "%d.%m.%Y",
            "columns": ["name", "price", "due", "ts", "share"],
        },
        {
            "in": [
                {
                    "name": "Müller",
                    "price": Decimal("1234.5"),
                    "due": date(2024, 1, 31),
                    "ts": datetime(2024, 1, 31, 8, 30),
                    "share": 0.25,
                }
            ]
        },
    )

    assert target.read_bytes().decode("cp1252") == (
        "name;price;due;ts;share\r\nMüller;1234,5;31.01.2024;31.01.2024;0,25\r\n"
    )


def test_write_rejects_records_the_encoding_cannot_hold(tmp_path: Path) -> None:
    target = tmp_path / "erp.csv"

    result = run_node(
        FILE_WRITE,
        {"path": str(target), "encoding": "cp1252", "on_error": "route"},
        {"in": [{"name": "Łódź"}, {"name": "Köln"}]},
    )

    assert target.read_bytes().decode("cp1252") == "name\r\nKöln\r\n"
    assert result["out"][0]["rows"] == 1
    assert "record 1: field 'name': 'Ł' cannot be written as cp1252" in result["error"][0]["_error"]


def test_write_extra_fields_error_and_missing_fields_empty(tmp_path: Path) -> None:
    target = tmp_path / "x.csv"

    result = run_node(
        FILE_WRITE,
        {"path": str(target), "columns": ["a", "b"], "extra_fields": "error", "on_error": "route"},
        {"in": [{"a": 1, "b": 2}, {"a": 3, "c": 4}, {"b": 5}]},
    )

    assert target.read_bytes() == b"a,b\r\n1,2\r\n,5\r\n"
    assert [e["_error"].split(": ", 1)[1] for e in result["error"]] == [
        "field 'c' is not among the columns (a, b); set extra_fields to 'ignore' to drop it"
    ]


def failing_records(batches_before_failure: int, batch_size: int) -> Iterator[dict[str, Any]]:
    for i in range(batches_before_failure * batch_size):
        yield {"n": i}
    raise NodeError("upstream-1", "database went away")


@pytest.mark.parametrize("fmt", ["csv", "jsonl", "json"])
def test_upstream_failure_leaves_no_file_and_no_temp_file(tmp_path: Path, fmt: str) -> None:
    target = tmp_path / f"out.{fmt}"

    with pytest.raises(NodeError, match="database went away"):
        run_node(
            FILE_WRITE,
            {"path": str(target), "format": fmt},
            {"in": failing_records(2, 10)},
            batch_size=10,
        )

    assert os.listdir(tmp_path) == []


def test_failed_rewrite_keeps_the_old_file(tmp_path: Path) -> None:
    target = write_text(tmp_path / "out.csv", "old\r\n")

    with pytest.raises(NodeError):
        run_node(FILE_WRITE, {"path": str(target)}, {"in": failing_records(2, 10)}, batch_size=10)

    assert os.listdir(tmp_path) == ["out.csv"]
    assert target.read_bytes() == b"old\r\n"


def test_write_happens_while_out_is_drained(tmp_path: Path) -> None:
    target = tmp_path / "lazy.csv"

    outputs = FILE_WRITE.run(
        _ctx(),
        FILE_WRITE.with_defaults({"path": str(target)}),
        {"in": iter([[{"a": 1}], [{"a": 2}]])},
    )
    assert not target.exists()
    assert list(outputs["out"]) == [[{"path": str(target), "rows": 2}]]
    assert target.read_bytes() == b"a\r\n1\r\n2\r\n"


def test_cancelled_write_leaves_no_file(tmp_path: Path) -> None:
    target = tmp_path / "out.csv"
    cancel = threading.Event()

    def records() -> Iterator[Batch]:
        yield [{"a": 1}]
        cancel.set()
        yield [{"a": 2}]

    outputs = FILE_WRITE.run(
        _ctx(cancel=cancel), FILE_WRITE.with_defaults({"path": str(target)}), {"in": records()}
    )
    with pytest.raises(RunCancelled):
        list(outputs["out"])

    assert os.listdir(tmp_path) == []


def test_overwrite_off_never_replaces_a_file_that_appeared_while_writing(tmp_path: Path) -> None:
    target = tmp_path / "report.csv"

    def records() -> Iterator[dict[str, Any]]:
        yield {"a": 1}
        target.write_text("written by someone else\n")
        yield {"a": 2}

    with pytest.raises(NodeError, match="already exists and overwrite is off"):
        run_node(
            FILE_WRITE, {"path": str(target), "overwrite": False}, {"in": records()}, batch_size=1
        )

    assert target.read_text() == "written by someone else\n"
    assert os.listdir(tmp_path) == ["report.csv"]


def test_overwrite_off_refuses_an_existing_file(tmp_path: Path) -> None:
    target = write_text(tmp_path / "report.csv", "keep me\n")

    with pytest.raises(NodeError, match=r"report\.csv already exists and overwrite is off"):
        run_node(FILE_WRITE, {"path": str(target), "overwrite": False}, {"in": [{"a": 1}]})

    assert target.read_text() == "keep me\n"
    assert os.listdir(tmp_path) == ["report.csv"]


def test_write_creates_folders_and_reports_path_and_rows(tmp_path: Path) -> None:
    target = tmp_path / "a" / "b" / "rows.jsonl"

    result = run_node(
        FILE_WRITE,
        {"path": str(target), "format": "jsonl", "columns": ["id"]},
        {"in": [{"id": i, "skip": True} for i in range(3)]},
    )

    assert result["out"] == [{"path": str(target), "rows": 3}]
    assert target.read_text() == '{"id": 0}\n{"id": 1}\n{"id": 2}\n'


def test_schemas_are_complete_for_the_editor() -> None:
    for spec in NODES:
        schema = spec.config_schema
        assert schema["additionalProperties"] is False
        assert "required" in schema
        for key, prop in schema["properties"].items():
            assert prop.get("title") and prop.get("description"), (spec.type, key)
            assert "default" in prop or key in schema["required"], (spec.type, key)
        assert not {"on_error", "retries", "retry_delay", "timeout"} & set(schema["properties"])
        validator_for(spec.full_schema()).check_schema(spec.full_schema())
    assert FILE_READ.required == ()


def _ctx(
    batch_size: int = 1000, progress: Any = None, cancel: threading.Event | None = None
) -> RunContext:
    """A bare context for driving a node's generators by hand (batch by batch)."""
    return RunContext(
        run_id="r",
        flow_id="f",
        node_id="n",
        node_type="t",
        params={},
        work_dir=Path("."),
        data_dir=Path("."),
        logger=NodeLogger(lambda level, text: None),
        batch_size=batch_size,
        progress_sink=progress,
        cancel_event=cancel,
    )
