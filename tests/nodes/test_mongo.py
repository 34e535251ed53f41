"""MongoDB nodes against a real wire-protocol server (SecantusDB, started once per session).

Real MongoDB cannot be installed here; ``secantusd-py`` (SecantusDB, GPL, a test
dependency only) speaks the same protocol on WiredTiger: CRUD, unique indexes, aggregate
and change streams. A missing server skips locally and fails in CI.
"""

from __future__ import annotations

import os
import socket
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pymongo
import pytest
from bson import ObjectId

from engine.batch.listeners import ListenerHost, TriggerStateStore
from engine.errors import FlowmillError, PermanentError, RecordError
from engine.flows.registry import Registry
from engine.flows.validate import validate_flow
from engine.service import Flowmill
from engine.testing import run_node
from nodes.mongo import (
    CONNECTION_TYPES,
    MONGO_AGGREGATE,
    MONGO_FIND,
    MONGO_WRITE,
    json_safe,
    mask_url,
)
from tests.conftest import run_queued, wait_until

IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def db_name(mongo_url: str) -> Iterator[str]:
    """A fresh database per test, dropped afterwards."""
    name = f"fm_{uuid.uuid4().hex[:10]}"
    yield name
    with pymongo.MongoClient(mongo_url) as client:
        client.drop_database(name)


@pytest.fixture
def db(mongo_url: str, db_name: str) -> Iterator[Any]:
    with pymongo.MongoClient(mongo_url, tz_aware=True) as client:
        yield client[db_name]


@pytest.fixture
def docs(mongo_url: str, db_name: str) -> dict[str, dict[str, Any]]:
    """The stored connection 'docs' as run_node gets it."""
    return {"docs": {"url": mongo_url, "database": db_name}}


CUSTOMERS = [
    {
        "name": "Müller GmbH",
        "city": "München",
        "revenue": 1200,
        "addresses": [
            {"kind": "billing", "street": "Leopoldstr. 1", "zip": "80802"},
            {"kind": "delivery", "street": "Hafenweg 7", "zip": "20457", "floor": None},
        ],
        "contacts": {"sales": {"name": "Anna", "phones": ["+49 89 1", "+49 89 2"]}},
    },
    {"name": "Schmidt KG", "city": "Berlin", "revenue": 300, "addresses": [], "contacts": {}},
    {"name": "Zeller AG", "city": "München", "revenue": 800, "addresses": [], "contacts": {}},
    {"name": "Arnold OHG", "city": "Hamburg", "revenue": 50, "addresses": [], "contacts": {}},
]


# -- find ----------------------------------------------------------------------------


def test_find_filters_projects_and_sorts(db: Any, docs: dict[str, Any]) -> None:
    db.customers.insert_many([dict(c) for c in CUSTOMERS])
    config = {
        "connection": "docs",
        "collection": "customers",
        "filter": {"city": "München"},
        "projection": {"name": 1, "revenue": 1},
        "sort": [{"field": "revenue", "direction": "asc"}],
    }
    out = run_node(MONGO_FIND, config, connections=docs)["out"]
    assert [(r["name"], r["revenue"]) for r in out] == [("Zeller AG", 800), ("Müller GmbH", 1200)]
    assert set(out[0]) == {"_id", "name", "revenue"}
    assert ObjectId.is_valid(out[0]["_id"]) and isinstance(out[0]["_id"], str)

    text_filter = {**config, "filter": '{"revenue": {"$lt": 500}}', "limit": 1}
    text_filter["sort"] = [{"field": "name", "direction": "desc"}]
    assert [r["name"] for r in run_node(MONGO_FIND, text_filter, connections=docs)["out"]] == [
        "Schmidt KG"
    ]


def test_find_makes_object_ids_and_dates_json_safe(db: Any, docs: dict[str, Any]) -> None:
    ref = ObjectId()
    at = datetime(2026, 3, 1, 12, 30, tzinfo=UTC)
    db.orders.insert_one({"_id": "A-1", "customer": ref, "at": at, "lines": [{"at": at}]})
    by_oid = {
        "connection": "docs",
        "collection": "orders",
        "filter": {"customer": {"$oid": str(ref)}},
    }
    (record,) = run_node(MONGO_FIND, by_oid, connections=docs)["out"]
    assert record == {
        "_id": "A-1",
        "customer": str(ref),
        "at": "2026-03-01T12:30:00+00:00",
        "lines": [{"at": "2026-03-01T12:30:00+00:00"}],
    }
    by_date = {**by_oid, "filter": '{"at": {"$gte": {"$date": "2026-03-01T00:00:00Z"}}}'}
    assert len(run_node(MONGO_FIND, by_date, connections=docs)["out"]) == 1


def test_find_streams_20000_documents_in_batches(db: Any, docs: dict[str, Any]) -> None:
    db.items.insert_many([{"n": i, "sku": f"S{i:05d}"} for i in range(20_000)])
    config = {"connection": "docs", "collection": "items", "batch_size": 1000}
    config["sort"] = [{"field": "n"}]
    result = run_node(MONGO_FIND, config, connections=docs, batch_size=1000)
    out = result["out"]
    assert result.batches["out"] == 20
    assert [r["n"] for r in out] == list(range(20_000))
    assert len({r["_id"] for r in out}) == 20_000


def test_find_touches_the_server_only_when_its_output_is_read() -> None:
    conn = {"docs": {"url": f"mongodb://127.0.0.1:{_free_port()}/shop"}}
    config = {"connection": "docs", "collection": "c", "server_timeout": 0.2}
    outputs = MONGO_FIND.run(_ctx(conn), MONGO_FIND.with_defaults(config), {})
    with pytest.raises(FlowmillError, match="cannot reach MongoDB"):
        next(iter(outputs["out"]))


def _ctx(connections: dict[str, Any]) -> Any:
    from engine.spec import NodeLogger, RunContext

    return RunContext(
        run_id="r",
        flow_id="f",
        node_id="find-1",
        node_type="mongo.find",
        params={},
        work_dir=Path("."),
        data_dir=Path("."),
        logger=NodeLogger(lambda *_: None),
        connection_lookup=lambda name: dict(connections[name]),
    )


# -- write ---------------------------------------------------------------------------


def test_insert_then_nested_documents_round_trip_unchanged(db: Any, docs: dict[str, Any]) -> None:
    result = run_node(
        MONGO_WRITE,
        {"connection": "docs", "collection": "customers"},
        {"in": [dict(c) for c in CUSTOMERS]},
        connections=docs,
    )
    (summary,) = result["out"]
    assert summary["inserted"] == 4 and summary["failed"] == 0
    back = run_node(
        MONGO_FIND,
        {"connection": "docs", "collection": "customers", "sort": [{"field": "name"}]},
        connections=docs,
    )["out"]
    assert [{k: v for k, v in r.items() if k != "_id"} for r in back] == sorted(
        CUSTOMERS, key=lambda c: c["name"]
    )
    assert all(isinstance(r["_id"], str) for r in back)
    assert CUSTOMERS[0].get("_id") is None  # the node did not touch the caller's records
    stored = db.customers.find_one({"name": "Müller GmbH"})
    assert stored["contacts"]["sales"]["phones"] == ["+49 89 1", "+49 89 2"]
    assert stored["addresses"][1]["floor"] is None


def test_upsert_by_key_inserts_then_a_rerun_changes_nothing(db: Any, docs: dict[str, Any]) -> None:
    db.products.create_index("sku", unique=True)
    db.products.insert_one({"sku": "A", "price": 1.0, "stock": 5})
    records = [{"sku": "A", "price": 2.5}, {"sku": "B", "price": 9.0}]
    config = {"connection": "docs", "collection": "products", "mode": "upsert", "key": ["sku"]}
    (first,) = run_node(MONGO_WRITE, config, {"in": records}, connections=docs)["out"]
    assert (first["upserted"], first["matched"], first["modified"]) == (1, 1, 1)
    (again,) = run_node(MONGO_WRITE, config, {"in": records}, connections=docs)["out"]
    assert (again["upserted"], again["matched"], again["modified"]) == (0, 2, 0)
    rows = {d["sku"]: d for d in db.products.find({}, {"_id": 0})}
    assert rows == {"A": {"sku": "A", "price": 2.5, "stock": 5}, "B": {"sku": "B", "price": 9.0}}


def test_replace_swaps_the_whole_document_and_keeps_object_ids(
    db: Any, docs: dict[str, Any]
) -> None:
    oid = db.products.insert_one({"sku": "A", "price": 1.0, "stock": 5}).inserted_id
    (found,) = run_node(
        MONGO_FIND, {"connection": "docs", "collection": "products"}, connections=docs
    )["out"]
    changed = {**found, "price": 3.0}
    del changed["stock"]
    config = {"connection": "docs", "collection": "products", "mode": "replace", "key": ["_id"]}
    (summary,) = run_node(MONGO_WRITE, config, {"in": [changed]}, connections=docs)["out"]
    assert (summary["matched"], summary["modified"], summary["upserted"]) == (1, 1, 0)
    assert list(db.products.find()) == [{"_id": oid, "sku": "A", "price": 3.0}]


def _dup_setup(db: Any) -> list[dict[str, Any]]:
    db.products.create_index("sku", unique=True)
    db.products.insert_one({"sku": "S0003"})
    # batch 1: S0000-S0002 fine; batch 2 holds the clash at record 4 and then more records
    return [{"sku": f"S{i:04d}", "n": i} for i in range(8)]


def test_duplicate_key_fails_naming_record_key_and_exact_written_count(
    db: Any, docs: dict[str, Any]
) -> None:
    records = _dup_setup(db)
    config = {"connection": "docs", "collection": "products", "batch_size": 3}
    with pytest.raises(RecordError) as info:
        run_node(MONGO_WRITE, config, {"in": records}, connections=docs, batch_size=3)
    message = str(info.value)
    assert "record 4 (sku='S0003')" in message
    assert "duplicate key" in message
    assert "3 documents were written before it" in message
    assert db.products.count_documents({}) == 4  # 3 written + the one that was there


def test_duplicate_key_with_route_goes_to_error_and_the_rest_is_written(
    db: Any, docs: dict[str, Any]
) -> None:
    records = _dup_setup(db)
    config = {"connection": "docs", "collection": "products", "batch_size": 3, "on_error": "route"}
    result = run_node(MONGO_WRITE, config, {"in": records}, connections=docs, batch_size=3)
    (summary,) = result["out"]
    assert (summary["inserted"], summary["failed"]) == (7, 1)
    (bad,) = result["error"]
    assert bad["sku"] == "S0003" and bad["n"] == 3
    assert "record 4 (sku='S0003'): duplicate key" in bad["_error"]
    assert "3 documents were written before it" in bad["_error"]
    assert db.products.count_documents({}) == 8


def test_upsert_missing_key_field_names_the_record(db: Any, docs: dict[str, Any]) -> None:
    config = {"connection": "docs", "collection": "p", "mode": "upsert", "key": ["sku"]}
    with pytest.raises(RecordError, match=r"record 2: key field 'sku' is missing"):
        run_node(MONGO_WRITE, config, {"in": [{"sku": "A"}, {"name": "x"}]}, connections=docs)


# -- aggregate -----------------------------------------------------------------------


def test_aggregate_groups_with_a_pipeline(db: Any, docs: dict[str, Any]) -> None:
    db.customers.insert_many([dict(c) for c in CUSTOMERS])
    config = {
        "connection": "docs",
        "collection": "customers",
        "pipeline": [
            {"$group": {"_id": "$city", "revenue": {"$sum": "$revenue"}, "n": {"$sum": 1}}},
            {"$sort": {"revenue": -1}},
        ],
        "allow_disk_use": True,
    }
    out = run_node(MONGO_AGGREGATE, config, connections=docs)["out"]
    assert out == [
        {"_id": "München", "revenue": 2000, "n": 2},
        {"_id": "Berlin", "revenue": 300, "n": 1},
        {"_id": "Hamburg", "revenue": 50, "n": 1},
    ]


def test_bad_json_is_reported_by_validation_before_a_run() -> None:
    registry = Registry.discover()
    flow = {
        "format": "flowmill/1",
        "id": "bad-json",
        "nodes": [
            {
                "id": "f",
                "type": "mongo.find",
                "config": {"connection": "docs", "collection": "c", "filter": "{status: open"},
            },
            {
                "id": "a",
                "type": "mongo.aggregate",
                "config": {"connection": "docs", "collection": "c", "pipeline": '{"$match": {}}'},
            },
            {
                "id": "s",
                "type": "mongo.aggregate",
                "config": {"connection": "docs", "collection": "c", "pipeline": [{"match": {}}]},
            },
            {
                "id": "w",
                "type": "mongo.write",
                "config": {"connection": "docs", "collection": "c", "mode": "upsert"},
            },
        ],
        "edges": [{"source": "f", "source_port": "out", "target": "w", "target_port": "in"}],
    }
    issues = {(i.node, i.field): i.message for i in validate_flow(flow, registry)}
    assert "not valid JSON" in issues[("f", "filter")]
    assert "must be a JSON array" in issues[("a", "pipeline")]
    assert "'match' is not a stage" in issues[("s", "pipeline")]
    assert any(node == "w" and "key" in msg for (node, _), msg in issues.items())


# -- connections and errors ----------------------------------------------------------


def test_wrong_password_is_permanent_and_never_shows_the_password(
    mongo_url: str, db_name: str
) -> None:
    host = mongo_url.removeprefix("mongodb://")
    with pymongo.MongoClient(mongo_url) as client:
        client[db_name].command("createUser", "ann", pwd="right-pw", roles=["readWrite"])
    bad = {"docs": {"url": f"mongodb://ann:Wr0ng-S3cret@{host}/{db_name}", "server_timeout": 5}}
    with pytest.raises(PermanentError) as info:
        run_node(MONGO_FIND, {"connection": "docs", "collection": "c"}, connections=bad)
    message = str(info.value)
    assert "Wr0ng-S3cret" not in message
    assert "refused the login" in message and "ann:***@" in message
    assert info.value.__cause__ is None  # pymongo's own text is not chained in


def test_unreachable_server_says_where_and_how_long_without_the_password() -> None:
    port = _free_port()
    conn = {"docs": {"url": f"mongodb://ann:Pa55word@127.0.0.1:{port}/shop"}}
    started = time.monotonic()
    with pytest.raises(FlowmillError) as info:
        run_node(
            MONGO_FIND,
            {"connection": "docs", "collection": "c", "server_timeout": 0.5},
            connections=conn,
        )
    assert time.monotonic() - started < 20  # its 0.5 s, not pymongo's default of 30 s
    message = str(info.value)
    assert (
        f"cannot reach MongoDB at mongodb://ann:***@127.0.0.1:{port}/shop within 0.5 s" in message
    )
    assert "Pa55word" not in message
    assert not isinstance(info.value, PermanentError)  # a server may come back: retryable


def test_connection_type_test_pings_and_lists_the_database(
    db: Any, mongo_url: str, db_name: str
) -> None:
    db.a.insert_one({"x": 1})
    db.b.insert_one({"x": 1})
    (kind,) = CONNECTION_TYPES
    assert kind.kind == "mongo"
    assert kind.detect is not None
    assert kind.detect({"url": "mongodb+srv://c.example.net/db"})
    assert not kind.detect({"url": "postgresql://h/db"})
    assert Registry.discover().connection_type_of({"url": mongo_url}) is kind
    line = kind.test({"url": mongo_url, "database": db_name}, 5.0)
    assert line == f"MongoDB at {mongo_url}: database {db_name}, 2 collections"
    port = _free_port()
    with pytest.raises(FlowmillError, match=r"cannot reach MongoDB") as info:
        kind.test({"url": f"mongodb://u:Top5ecret@127.0.0.1:{port}/x"}, 0.5)
    assert "Top5ecret" not in str(info.value)


def test_json_safe_and_mask_url() -> None:
    oid = ObjectId()
    assert json_safe({"a": [oid, datetime(2026, 1, 2, tzinfo=UTC)]}) == {
        "a": [str(oid), "2026-01-02T00:00:00+00:00"]
    }
    assert mask_url("mongodb://u:p%40ss@h1,h2/db?w=1") == "mongodb://u:***@h1,h2/db?w=1"


# -- trigger.mongo_change -----------------------------------------------------------


def _change_flow(db_name: str) -> dict[str, Any]:
    """A change in 'orders' is logged into 'order_log' by the flow itself."""
    return {
        "format": "flowmill/1",
        "id": "on-order",
        "nodes": [
            {
                "id": "change",
                "type": "trigger.mongo_change",
                "config": {
                    "connection": "docs",
                    "collection": "orders",
                    "operations": ["insert", "update"],
                },
            },
            {
                "id": "log",
                "type": "mongo.write",
                "config": {"connection": "docs", "collection": "order_log"},
            },
        ],
        "edges": [{"source": "change", "source_port": "out", "target": "log", "target_port": "in"}],
    }


@pytest.fixture
def app(data_dir: Path, mongo_url: str, db_name: str) -> Iterator[Flowmill]:
    service = Flowmill.open(data_dir)
    service.set_connection("docs", {"url": mongo_url, "database": db_name})
    yield service
    service.close()


def test_an_inserted_document_starts_one_job_and_a_restart_resumes(app: Flowmill, db: Any) -> None:
    app.save_flow(_change_flow(db.name))
    host = ListenerHost(app)
    try:
        assert host.refresh() == ["flow on-order, node change (trigger.mongo_change): listening"]
        ctx = host.context("on-order", "change")
        assert ctx is not None
        wait_until(ctx.ready.is_set)
        oid = db.orders.insert_one({"no": "A-1", "customer": {"name": "Müller"}}).inserted_id
        db.other.insert_one({"no": "not watched"})
        wait_until(lambda: ctx.fired == 1)
        time.sleep(0.5)  # nothing more arrives
        (job,) = app.jobs.list()
        trigger = job.params["_trigger"]
        assert trigger["operation"] == "insert" and trigger["collection"] == "orders"
        assert trigger["id"] == str(oid)
        assert trigger["document"] == {"_id": str(oid), "no": "A-1", "customer": {"name": "Müller"}}
        assert datetime.fromisoformat(trigger["at"]).tzinfo is not None
        state = TriggerStateStore(app.store).get("on-order", "change")
        assert state["resume_token"]["_data"]
        assert run_queued(app) == ["succeeded"]
        (logged,) = db.order_log.find({}, {"_id": 0})
        assert logged["operation"] == "insert" and logged["document"]["no"] == "A-1"
    finally:
        host.stop()

    # while no server listens, an order changes: the next listener resumes and sees it
    db.orders.update_one({"_id": oid}, {"$set": {"status": "paid"}})
    host = ListenerHost(app)
    try:
        host.refresh()
        ctx = host.context("on-order", "change")
        assert ctx is not None
        wait_until(lambda: ctx.fired == 1)
        job = max(app.jobs.list(), key=lambda j: j.id)
        assert job.params["_trigger"]["operation"] == "update"
        assert job.params["_trigger"]["document"]["status"] == "paid"
        assert len(app.jobs.list()) == 2
        assert TriggerStateStore(app.store).get("on-order", "change") != state
    finally:
        host.stop()


def test_find_with_in_connected_runs_once_per_record_after_it_arrived(
    db: Any, docs: dict[str, Any]
) -> None:
    # in a flow: mongo.write's summary record arrives once the documents are written
    def written() -> Iterator[dict[str, Any]]:
        db.customers.insert_many([dict(c) for c in CUSTOMERS])
        yield {"inserted": len(CUSTOMERS)}
        db.customers.delete_many({"name": "Zeller AG"})
        yield {"deleted": 1}

    config = {
        "connection": "docs",
        "collection": "customers",
        "filter": {"city": "München"},
        "sort": [{"field": "name"}],
    }
    out = run_node(MONGO_FIND, config, {"in": written()}, connections=docs, batch_size=1)["out"]

    assert [r["name"] for r in out] == ["Müller GmbH", "Zeller AG", "Müller GmbH"]
    assert run_node(MONGO_FIND, config, {"in": []}, connections=docs)["out"] == []
