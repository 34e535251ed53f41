"""Sample ``customer-to-shop``: a customer changed in the demo ERP reaches the stand-in
shop at once, through the real listener host (as in ``flowmill serve``)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa

from designer.demo.shop import DemoShop, RunningShop, start_shop
from engine.batch.listeners import ListenerHost

from .conftest import Demo

FLOW, NODE = "customer-to-shop", "customer-changed"


def _until(check: Any, seconds: float = 20.0) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting")
        time.sleep(0.05)


@pytest.fixture
def shop(demo: Demo) -> Iterator[RunningShop]:
    running = start_shop(shop=DemoShop())
    demo.app.set_connection(
        "shop-api",
        {
            "type": "shop",
            "preset": "generic",
            "base_url": running.url,
            "auth": "bearer",
            "token": running.shop.credentials.api_token,
        },
    )
    yield running
    running.stop()


def _listening(demo: Demo) -> ListenerHost:
    host = ListenerHost(demo.app)
    host.start()
    _until(lambda: (ctx := host.context(FLOW, NODE)) is not None and ctx.ready.is_set())
    return host


def _change_customer(demo: Demo, customer: int, **values: Any) -> None:
    engine = sa.create_engine(demo.summary.erp_url)
    try:
        with engine.begin() as conn:
            now = conn.execute(sa.text("SELECT max(updated_at) FROM customers")).scalar_one()
            stamp = datetime.fromisoformat(str(now)) + timedelta(minutes=5)
            sets = ", ".join(f"{k} = :{k}" for k in values)
            conn.execute(
                sa.text(f"UPDATE customers SET {sets}, updated_at = :stamp WHERE id = :id"),
                {**values, "stamp": stamp, "id": customer},
            )
    finally:
        engine.dispose()


def test_a_changed_customer_arrives_at_the_shop_once(demo: Demo, shop: RunningShop) -> None:
    demo.load(FLOW)
    host = _listening(demo)
    try:
        time.sleep(4.5)  # two polls: the customers that exist start nothing
        assert demo.app.jobs.list() == []
        _change_customer(demo, 7, name="Wagner Bau GmbH & Co. KG", city="Landshut", zip="84028")
        _until(lambda: len(demo.app.jobs.list()) == 1)

        assert demo.run_queued() == ["succeeded"]

        pushes = shop.shop.requests_to("/api/items", "POST")
        assert len(pushes) == 1 and pushes[0].status == 200
        (item,) = pushes[0].body
        assert item["sku"] == "K000007"
        assert (item["name"], item["city"], item["zip"]) == (
            "Wagner Bau GmbH & Co. KG",
            "Landshut",
            "84028",
        )
        assert item["email"] == "einkauf7@wagner.example" and item["country"] == "DE"
        assert [p["sku"] for p in shop.shop.products.values()] == ["K000007"]
        assert shop.shop.by_sku("K000007")["name"] == "Wagner Bau GmbH & Co. KG"
        time.sleep(4.5)  # the watermark moved: no second job for the same change
        assert len(demo.app.jobs.list()) == 1
    finally:
        host.stop()

    again = _listening(demo)  # a restarted server
    try:
        time.sleep(4.5)
        assert len(demo.app.jobs.list()) == 1
        assert demo.run_queued() == []
        assert len(shop.shop.requests_to("/api/items", "POST")) == 1
        assert shop.shop.by_sku("K000007")["writes"] == 1
    finally:
        again.stop()


def test_a_push_the_shop_refuses_fails_the_job_and_writes_nothing(
    demo: Demo, shop: RunningShop
) -> None:
    demo.load(FLOW)
    host = _listening(demo)
    try:
        time.sleep(2.5)
        shop.shop.fail_next("/api/items", 401)  # e.g. the token was rotated in the shop
        _change_customer(demo, 3, phone="+49 89 111111")
        _until(lambda: len(demo.app.jobs.list()) == 1)
        assert demo.run_queued() == ["failed"]
        assert shop.shop.products == {}
        (job,) = demo.app.jobs.list()
        assert "push-customer" in demo.log(job) and "401" in demo.log(job)
        time.sleep(2.5)  # within retry_seconds: the failed row does not fire again yet
        assert len(demo.app.jobs.list()) == 1
    finally:
        host.stop()
