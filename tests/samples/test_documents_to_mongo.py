"""The documents-to-mongo sample against a real MongoDB wire-protocol server (SecantusDB).

A missing ``secantusd-py`` skips locally and fails in CI, like tests/nodes/test_mongo.py.
"""

from __future__ import annotations

import json
import os
import socket
import uuid
from collections.abc import Iterator
from typing import Any

import pymongo
import pytest
import sqlalchemy as sa

from designer.demo.data import customers

IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def collection(demo: Any, mongo_url: str) -> Iterator[Any]:
    """The 'mongo' connection the sample's description asks for, on a fresh database."""
    name = f"fm_{uuid.uuid4().hex[:10]}"
    demo.app.set_connection("mongo", {"type": "mongo", "url": mongo_url, "database": name})
    with pymongo.MongoClient(mongo_url) as client:
        yield client[name]["customers"]
        client.drop_database(name)


def _expected_documents(demo: Any) -> list[dict[str, Any]]:
    """The documents as the sample should build them, straight from the ERP's rows."""
    engine = sa.create_engine(demo.summary.erp_url)
    with engine.connect() as conn:
        rows = conn.execute(sa.select(customers).order_by(customers.c.id)).mappings().all()
    engine.dispose()
    return [
        {
            "_id": r["id"],
            "name": r["name"],
            "credit_limit": float(r["credit_limit"]),
            "address": {
                "street": r["street"],
                "zip": r["zip"],
                "city": r["city"],
                "country": r["country"],
            },
            "contacts": [
                {"kind": "email", "value": r["email"]},
                {"kind": "phone", "value": r["phone"]},
            ],
        }
        for r in rows
    ]


def test_customers_are_stored_nested_and_read_back_by_city(demo: Any, collection: Any) -> None:
    expected = _expected_documents(demo)
    assert len(expected) == 40

    job = demo.run("documents-to-mongo")

    assert job.state == "succeeded", demo.log(job)
    stored = list(collection.find().sort("_id", 1))
    assert stored == expected  # nested exactly as built, field for field
    assert all(isinstance(d["contacts"], list) and isinstance(d["address"], dict) for d in stored)

    export = demo.data_dir / "demo" / "mongo-customers.jsonl"
    found = [json.loads(line) for line in export.read_text("utf-8").splitlines()]
    munich = sorted(
        (d for d in expected if d["address"]["city"] == "München"),
        key=lambda d: (d["name"], d["_id"]),
    )
    assert 0 < len(munich) < 40
    assert found == munich


def test_running_again_upserts_the_same_documents(demo: Any, collection: Any) -> None:
    first = demo.run("documents-to-mongo")
    assert first.state == "succeeded", demo.log(first)
    collection.update_one({"_id": 7}, {"$set": {"name": "Von Hand geändert", "note": "extra"}})

    again = demo.run("documents-to-mongo", {"find_city": "Augsburg"})

    assert again.state == "succeeded", demo.log(again)
    assert collection.count_documents({}) == 40
    assert list(collection.find().sort("_id", 1)) == [
        {**d, "note": "extra"} if d["_id"] == 7 else d for d in _expected_documents(demo)
    ]  # upsert sets the built fields back; a field the flow does not build stays
    run = demo.app.store.get_run(again.run_id)
    summary = next(n for n in run.nodes if n.node_id == "upsert-documents").sample["out"][0]
    assert summary["inserted"] + summary["upserted"] == 0
    assert summary["matched"] == 40 and summary["modified"] == 1
    found = [
        json.loads(line)
        for line in (demo.data_dir / "demo" / "mongo-customers.jsonl").read_text().splitlines()
    ]
    assert [d["_id"] for d in found] == [
        d["_id"]
        for d in sorted(
            (d for d in _expected_documents(demo) if d["address"]["city"] == "Augsburg"),
            key=lambda d: (d["name"], d["_id"]),
        )
    ]
    assert {d["address"]["city"] for d in found} == {"Augsburg"}
