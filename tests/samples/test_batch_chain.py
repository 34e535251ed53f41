"""Sample ``batch-chain``: three flows submitted as one job group, export → transform →
upload, run by the real job store; a failing member aborts the rest of its group.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from decimal import ROUND_HALF_UP, Decimal
from itertools import pairwise
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from designer.demo.data import articles
from designer.demo.shop import Credentials, DemoShop, RunningShop, start_shop
from engine.queue.jobs import Job

from .conftest import Demo

STEPS = ("batch-chain-export", "batch-chain-transform", "batch-chain-upload")
CREDS = Credentials(woo_key="ck_chain_test", woo_secret="cs_chain_s3cret")


@pytest.fixture
def shop(demo: Demo) -> Iterator[RunningShop]:
    """The stand-in shop holding every demo article (by sku), behind the 'shop' connection."""
    running = start_shop(shop=DemoShop(credentials=CREDS))
    for article in erp_articles(demo):
        running.shop.add_product(article["sku"], article["name"], 0.0, 0)
    demo.app.set_connection(
        "shop",
        {
            "type": "shop", "preset": "woocommerce", "base_url": running.url, "auth": "basic",
            "user": CREDS.woo_key, "password": CREDS.woo_secret,
        },
    )  # fmt: skip
    yield running
    running.stop()


def erp_articles(demo: Demo) -> list[dict[str, Any]]:
    engine = sa.create_engine(demo.summary.erp_url)
    try:
        with engine.connect() as conn:
            result = conn.execute(sa.select(articles).order_by(articles.c.sku))
            return [dict(row._mapping) for row in result]
    finally:
        engine.dispose()


def submit_group(demo: Demo, group: str, **params: dict[str, Any]) -> list[Job]:
    """The three steps queued into one group, in order (as three `flowmill submit`s)."""
    jobs = []
    for name in STEPS:
        flow_id = demo.load(name)
        jobs.append(demo.app.submit(flow_id, params.get(name, {}), group=group, source="test"))
    return jobs


def chain_dir(demo: Demo) -> Path:
    return demo.data_dir / "demo" / "chain"


def test_the_group_runs_export_transform_upload_in_order(demo: Demo, shop: RunningShop) -> None:
    jobs = submit_group(demo, "nightly")
    assert demo.run_queued() == ["succeeded"] * 3
    done = [demo.app.jobs.get(job.id) for job in jobs]
    assert [j.state for j in done] == ["succeeded"] * 3
    assert [j.group for j in done] == ["nightly"] * 3
    for before, after in pairwise(done):
        assert before.finished_at is not None and after.started_at is not None
        assert before.finished_at <= after.started_at  # k+1 starts after k has ended

    erp = erp_articles(demo)
    with (chain_dir(demo) / "articles.csv").open(encoding="utf-8", newline="") as fh:
        exported = list(csv.DictReader(fh, delimiter=";"))
    assert [(r["sku"], Decimal(r["price"])) for r in exported] == [
        (a["sku"], a["price"]) for a in erp
    ]
    gross = {
        a["sku"]: (a["price"] * Decimal("1.19")).quantize(Decimal("0.01"), ROUND_HALF_UP)
        for a in erp
    }
    lines = (chain_dir(demo) / "pricelist.jsonl").read_text(encoding="utf-8").splitlines()
    pricelist = [json.loads(line) for line in lines]
    assert {p["sku"]: Decimal(str(p["gross"])) for p in pricelist} == gross
    assert {p["sku"]: p["stock"] for p in pricelist} == {a["sku"]: a["stock"] for a in erp}
    for sku, price in gross.items():
        product = shop.shop.by_sku(sku)
        assert product is not None and Decimal(str(product["price"])) == price
        assert product["stock"] == next(a["stock"] for a in erp if a["sku"] == sku)
    with (chain_dir(demo) / "uploaded.csv").open(encoding="utf-8", newline="") as fh:
        assert len(list(csv.DictReader(fh, delimiter=";"))) == len(erp)


def test_a_failed_step_aborts_the_rest_of_its_group(demo: Demo, shop: RunningShop) -> None:
    missing = demo.data_dir / "no-such-export.csv"
    jobs = submit_group(demo, "nightly", **{"batch-chain-transform": {"source": str(missing)}})
    assert demo.run_queued() == ["succeeded", "failed"]  # the upload never ran
    export, transform, upload = (demo.app.jobs.get(job.id) for job in jobs)
    assert export.state == "succeeded"
    assert transform.state == "failed" and transform.error_node == "read-export"
    assert "no-such-export.csv" in (transform.error or "")
    assert upload.state == "aborted" and upload.started_at is None and upload.run_id is None
    assert f"{transform.id}" in (upload.error or "")
    assert (chain_dir(demo) / "articles.csv").exists()
    assert not (chain_dir(demo) / "pricelist.jsonl").exists()
    assert not (chain_dir(demo) / "uploaded.csv").exists()
    assert shop.shop.requests_to("/wp-json/") == []
    assert all(p["price"] == 0.0 for p in shop.shop.products.values())

    # the next night's group starts a new chain and goes through
    again = submit_group(demo, "nightly")
    assert demo.run_queued() == ["succeeded"] * 3
    assert [demo.app.jobs.get(job.id).state for job in again] == ["succeeded"] * 3
