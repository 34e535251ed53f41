"""Sample ``nightly-prices``: the nightly price job of the legacy job engine, run as a job
against the demo ERP and a running stand-in WooCommerce shop."""

from __future__ import annotations

import csv
from collections.abc import Iterator
from datetime import date, datetime, timedelta
from decimal import ROUND_CEILING, ROUND_HALF_UP, Decimal
from zoneinfo import ZoneInfo

import holidays
import pytest
import sqlalchemy as sa

from designer.demo.data import DEMO_SHOP, create_demo
from designer.demo.shop import Credentials, DemoShop, RunningShop, start_shop

from .conftest import Demo

BERLIN = ZoneInfo("Europe/Berlin")
ARTICLES = 500
BATCH = "/wp-json/wc/v3/products/batch"


def expected_price(cost: Decimal, markup: str = "1.45", min_margin: str = "20") -> Decimal:
    """The sample's rule, computed independently: nearest x.99 of cost × markup, but at
    least the smallest x.99 that is >= cost × (1 + min_margin/100)."""
    cent = Decimal("0.01")
    nearest = (cost * Decimal(markup) + cent).quantize(Decimal(1), ROUND_HALF_UP) - cent
    minimum = cost * (1 + Decimal(min_margin) / 100)
    lowest = (minimum + cent).quantize(Decimal(1), ROUND_CEILING) - cent
    return max(nearest, lowest)


def _erp(demo: Demo) -> sa.Engine:
    return sa.create_engine(demo.summary.erp_url)


def _articles(demo: Demo) -> dict[str, dict]:
    engine = _erp(demo)
    try:
        with engine.connect() as conn:
            rows = conn.execute(sa.text("SELECT sku, cost, price, shop_id FROM articles"))
            return {
                r.sku: {
                    "cost": Decimal(str(r.cost)).quantize(Decimal("0.01")),
                    "price": Decimal(str(r.price)).quantize(Decimal("0.01")),
                    "shop_id": r.shop_id,
                }
                for r in rows
            }
    finally:
        engine.dispose()


@pytest.fixture
def world(demo: Demo) -> Iterator[tuple[Demo, RunningShop]]:
    """500 demo articles (article 7 not listed in the shop, articles 3 and 4 on edges of
    the rule), and a running stand-in shop holding the listed articles at their prices."""
    create_demo(demo.data_dir, articles_count=ARTICLES, service=demo.app)
    engine = _erp(demo)
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE articles SET shop_id = NULL WHERE sku = 'A0000007'"))
        # 1.70 × 1.45 = 2.465 rounds to 1.99, below 1.70 × 1.2 = 2.04: the margin decides
        conn.execute(sa.text("UPDATE articles SET cost = 1.70 WHERE sku = 'A0000003'"))
        # 176.20 × 1.45 = 255.49 exactly: 255.99, where float arithmetic gives 254.99
        conn.execute(sa.text("UPDATE articles SET cost = 176.20 WHERE sku = 'A0000004'"))
    engine.dispose()
    shop = DemoShop(
        credentials=Credentials(woo_key=DEMO_SHOP["user"], woo_secret=DEMO_SHOP["password"])
    )
    for sku, a in sorted(_articles(demo).items()):
        if a["shop_id"] is None:
            shop._next_id += 1  # keep the catalog's ids equal to articles.shop_id
            continue
        product = shop.add_product(sku, f"Artikel {sku}", float(a["price"]), 10)
        assert product["id"] == a["shop_id"]
    running = start_shop(shop=shop)
    settings = {
        "type": "shop",
        "preset": "woocommerce",
        "base_url": running.url,
        "auth": "basic",
        "user": DEMO_SHOP["user"],
        "password": DEMO_SHOP["password"],
    }
    demo.app.set_connection("shop", settings)
    try:
        yield demo, running
    finally:
        running.stop()


def _pushed(shop: DemoShop) -> dict[int, Decimal]:
    """shop id → price, over every batch update the shop applied."""
    out = {}
    for req in shop.requests_to(BATCH, "POST"):
        assert req.status == 200
        for item in req.body["update"]:
            out[item["id"]] = Decimal(str(item["regular_price"]))
    return out


def test_nightly_run_reprices_the_erp_and_pushes_only_changed_prices(world) -> None:
    demo, running = world
    before = _articles(demo)
    expected = {sku: expected_price(a["cost"]) for sku, a in before.items()}
    changed = {sku for sku in before if expected[sku] != before[sku]["price"]}
    assert 0 < len(changed) < ARTICLES  # the data has both kinds
    assert expected["A0000003"] == Decimal("2.99")  # not 1.99: the minimum margin
    assert expected["A0000004"] == Decimal("255.99")

    job = demo.run("nightly-prices")

    assert job.state == "succeeded", demo.log(job)
    after = _articles(demo)
    assert {sku: a["price"] for sku, a in after.items()} == expected
    pushed = _pushed(running.shop)
    listed = {before[s]["shop_id"]: expected[s] for s in changed if before[s]["shop_id"]}
    assert pushed == listed  # only changed prices, each once, with the new price
    assert "A0000007" in changed and None not in pushed  # unlisted: ERP only
    assert all(len(r.body["update"]) <= 100 for r in running.shop.requests_to(BATCH))
    for sku, a in after.items():
        if a["shop_id"] is not None:
            assert (
                Decimal(str(running.shop.products[a["shop_id"]]["price"])).quantize(Decimal("0.01"))
                == a["price"]
            ), sku

    requests = len(running.shop.requests)
    again = demo.run("nightly-prices")

    assert again.state == "succeeded", demo.log(again)
    assert _articles(demo) == after
    assert len(running.shop.requests) == requests  # nothing pushed, nothing asked


def test_params_change_the_rule_and_the_minimum_margin_holds(world) -> None:
    demo, _shop = world
    before = _articles(demo)

    job = demo.run("nightly-prices", {"markup": 1.05, "min_margin": 25})

    assert job.state == "succeeded", demo.log(job)
    after = _articles(demo)
    for sku, a in after.items():
        assert a["price"] == expected_price(before[sku]["cost"], "1.05", "25"), sku
        assert a["price"] >= a["cost"] * Decimal("1.25")
        assert a["price"] % 1 == Decimal("0.99")


def test_a_batch_the_shop_refuses_keeps_its_old_erp_prices_and_is_pushed_next_night(
    world,
) -> None:
    demo, running = world
    before = _articles(demo)
    running.shop.fail_next(BATCH, 400, times=1)  # the first batch: 100 articles

    job = demo.run("nightly-prices")

    assert job.state == "succeeded", demo.log(job)
    after = _articles(demo)
    refused = {s for s in before if after[s]["price"] == before[s]["price"]} - {
        s for s in before if expected_price(before[s]["cost"]) == before[s]["price"]
    }
    assert len(refused) == 100
    rejects_file = demo.data_dir / "nightly-prices-rejected.csv"
    with rejects_file.open(encoding="utf-8", newline="") as handle:
        rows = list(csv.DictReader(handle, delimiter=";"))
    assert {r["sku"] for r in rows} == refused
    assert all("400" in (r.get("_error") or "") for r in rows), rows[0]
    first = len(running.shop.requests_to(BATCH))

    again = demo.run("nightly-prices")

    assert again.state == "succeeded", demo.log(again)
    requests = running.shop.requests_to(BATCH)[first:]
    assert len(requests) == 1
    assert {item["id"] for item in requests[0].body["update"]} == {
        before[s]["shop_id"] for s in refused
    }
    assert {s: a["price"] for s, a in _articles(demo).items()} == {
        s: expected_price(a["cost"]) for s, a in before.items()
    }


def test_refused_credentials_fail_the_run_and_write_no_price(world) -> None:
    demo, running = world
    before = _articles(demo)
    settings = {
        "type": "shop",
        "preset": "woocommerce",
        "base_url": running.url,
        "auth": "basic",
        "user": DEMO_SHOP["user"],
        "password": "not-the-secret",
    }
    demo.app.set_connection("shop", settings)

    job = demo.run("nightly-prices")

    assert job.state == "failed"
    assert "push-shop" in demo.log(job) and "401" in demo.log(job)
    assert _articles(demo) == before  # the ERP write rolled back: no partial prices
    assert all(p["writes"] == 0 for p in running.shop.products.values())


def test_schedule_is_armed_for_workdays_at_two_skipping_german_holidays(demo: Demo) -> None:
    demo.load("nightly-prices")
    # what the batch server does on every turn after reading the flows folder
    assert "schedule flow:nightly-prices:schedule armed" in demo.app.arm_triggers()

    (entry,) = [s for s in demo.app.list_schedules() if s["flow"] == "nightly-prices"]
    assert entry["name"] == "flow:nightly-prices:schedule"
    assert entry["next_fires"], entry  # what the dashboard shows
    de = holidays.Germany()
    for text in entry["next_fires"]:
        moment = datetime.fromisoformat(text).astimezone(BERLIN)
        assert (moment.hour, moment.minute) == (2, 0)
        assert moment.weekday() < 5 and moment.date() not in de

    start = datetime(2026, 12, 21, 12, 0, tzinfo=BERLIN)
    fires = demo.app.preview_schedule(entry["spec"], start, 6)
    days = [m.astimezone(BERLIN) for m in fires]
    assert [d.date() for d in days] == [
        date(2026, 12, 22),
        date(2026, 12, 23),
        date(2026, 12, 24),
        date(2026, 12, 28),  # 25th and 26th are holidays, 27th a Sunday
        date(2026, 12, 29),
        date(2026, 12, 30),
    ]
    assert all((d.hour, d.minute, d.utcoffset()) == (2, 0, timedelta(hours=1)) for d in days)
    assert fires[3].isoformat() == "2026-12-28T02:00:00+01:00"
    easter = demo.app.preview_schedule(entry["spec"], datetime(2026, 4, 2, 3, tzinfo=BERLIN), 1)
    assert easter[0].date() == date(2026, 4, 7)  # Good Friday and Easter Monday skipped
