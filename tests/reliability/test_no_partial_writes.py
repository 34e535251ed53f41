"""Bad input loses nothing and leaves nothing half-written, on every database.

Whole flows through the service layer (the same path as ``flowmill run``), with the run
store on the database under test as well.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from engine.config import Settings
from engine.flows.registry import Registry
from engine.service import Flowmill
from engine.store.factory import open_store

ROWS = 10_000
BAD_ROW = 5_000


@pytest.fixture
def app(db_url: str, data_dir: Path):
    # the run store lives on the server under test too; for SQLite it keeps its own file,
    # as in production (one SQLite file has one writer at a time, and sql.write holds the
    # write lock for the whole run)
    store_url = None if db_url.startswith("sqlite") else db_url
    settings = Settings(data_dir=data_dir, store_url=store_url)
    service = Flowmill(settings, Registry.discover(), open_store(store_url, data_dir))
    yield service
    service.close()


@pytest.fixture
def orders(db_url: str):
    engine = sa.create_engine(db_url)
    meta = sa.MetaData()
    table = sa.Table(
        "orders",
        meta,
        sa.Column("order_no", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("customer", sa.String(80), nullable=False),
        sa.Column("amount", sa.Numeric(12, 2), nullable=False),
    )
    meta.create_all(engine)
    yield engine, table
    engine.dispose()


def export(path: Path, bad_row: int | None) -> Path:
    """An order export of ROWS lines; line ``bad_row`` has no customer."""
    with path.open("w", encoding="utf-8") as fh:
        for i in range(1, ROWS + 1):
            customer = None if i == bad_row else f"Kunde {i % 97}"
            fh.write(json.dumps({"order_no": i, "customer": customer, "amount": i % 500}) + "\n")
    return path


def import_flow(src: Path, db_url: str, **map_config: Any) -> dict[str, Any]:
    return {
        "format": "flowmill/1",
        "id": "order-import",
        "nodes": [
            {"id": "read", "type": "file.read", "config": {"path": str(src), "format": "jsonl"}},
            {
                "id": "net",
                "type": "transform.map",
                "config": {"fields": {"amount": "round(amount * 1.19, 2)"}, **map_config},
            },
            {
                "id": "write",
                "type": "sql.write",
                "config": {"url": db_url, "table": "orders", "mode": "upsert", "key": ["order_no"]},
            },
        ],
        "edges": [
            {"source": "read", "source_port": "out", "target": "net", "target_port": "in"},
            {"source": "net", "source_port": "out", "target": "write", "target_port": "in"},
        ],
    }


def count(engine: sa.Engine, table: sa.Table) -> int:
    with engine.connect() as conn:
        return conn.execute(sa.select(sa.func.count()).select_from(table)).scalar_one()


def test_constraint_violation_at_row_5000_leaves_zero_rows_and_a_fixed_rerun_upserts(
    app: Flowmill, orders, db_url: str, tmp_path: Path
):
    engine, table = orders
    flow = import_flow(export(tmp_path / "orders.jsonl", BAD_ROW), db_url)
    result = app.run_flow(flow)
    assert result.state == "failed"
    assert result.error_node == "write"
    assert "orders" in result.error and "rows 4001–5000" in result.error
    assert count(engine, table) == 0  # nothing of the run remains

    recorded = app.store.get_run(result.run_id)
    assert recorded.state == "failed" and recorded.error_node == "write"

    fixed = import_flow(export(tmp_path / "orders.jsonl", None), db_url)
    first = app.run_flow(fixed)
    assert first.ok, first.error
    assert count(engine, table) == ROWS
    again = app.run_flow(fixed)
    assert again.ok
    assert count(engine, table) == ROWS  # upsert: no duplicates
    summary = again.nodes["write"].sample["out"][0]
    assert (summary["inserted"], summary["updated"]) == (0, ROWS)


def test_failure_upstream_of_the_writer_rolls_its_writes_back(
    app: Flowmill, orders, db_url: str, tmp_path: Path
):
    engine, table = orders
    src = tmp_path / "orders.jsonl"
    export(src, None)
    # the map fails on record 7,000 — long after the writer has written earlier batches
    flow = import_flow(src, db_url)
    flow["nodes"][1]["config"]["fields"]["amount"] = (
        "round(amount * 1.19, 2) if order_no != 7000 else amount / (order_no - 7000)"
    )
    result = app.run_flow(flow)
    assert result.state == "failed" and result.error_node == "net"
    assert result.nodes["write"].state == "skipped"
    # the map could only reach record 7,000 with at most 4 batches queued before the
    # writer, so the writer had taken (and written) at least 2 batches of 1,000…
    assert result.nodes["write"].records_in["in"] >= 2000
    assert count(engine, table) == 0  # …and wrote none of it


def test_bad_records_routed_to_error_do_not_stop_the_good_ones(
    app: Flowmill, orders, db_url: str, tmp_path: Path
):
    engine, table = orders
    flow = import_flow(export(tmp_path / "orders.jsonl", None), db_url, on_error="route")
    flow["nodes"][1]["config"]["fields"]["amount"] = "amount / (order_no % 1000)"
    flow["nodes"].append(
        {
            "id": "rejects",
            "type": "file.write",
            "config": {"path": str(tmp_path / "rejects.jsonl"), "format": "jsonl"},
        }
    )
    flow["edges"].append(
        {"source": "net", "source_port": "error", "target": "rejects", "target_port": "in"}
    )
    result = app.run_flow(flow)
    assert result.ok, result.error
    assert count(engine, table) == ROWS - 10
    lines = [json.loads(x) for x in (tmp_path / "rejects.jsonl").read_text().splitlines()]
    assert sorted(r["order_no"] for r in lines) == list(range(1000, ROWS + 1, 1000))
    assert all("division by zero" in r["_error"] and r["_node"] == "net" for r in lines)


def test_failed_writer_leaves_no_output_file(app: Flowmill, tmp_path: Path):
    src = tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps({"n": i}) + "\n" for i in range(3000)))
    out = tmp_path / "out.csv"
    flow = {
        "format": "flowmill/1",
        "id": "file-copy",
        "nodes": [
            {"id": "read", "type": "file.read", "config": {"path": str(src), "format": "jsonl"}},
            {
                "id": "check",
                "type": "transform.filter",
                "config": {"condition": "10 / (n - 2500) != 0"},
            },
            {"id": "write", "type": "file.write", "config": {"path": str(out)}},
        ],
        "edges": [
            {"source": "read", "source_port": "out", "target": "check", "target_port": "in"},
            {"source": "check", "source_port": "out", "target": "write", "target_port": "in"},
        ],
    }
    result = app.run_flow(flow)
    assert result.state == "failed" and result.error_node == "check"
    assert list(tmp_path.glob("*out.csv*")) == []  # neither the file nor a temp file
