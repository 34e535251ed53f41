"""shop.push against the stand-in shop (designer.demo.shop) running on a loopback port."""

from __future__ import annotations

import tempfile
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
import requests

from designer.demo.shop import Credentials, DemoShop, Limits, RunningShop, start_shop
from engine.errors import FlowmillError, NodeError, PermanentError, is_permanent
from engine.spec import NodeLogger, RunContext, batched
from engine.testing import NodeResult, run_node
from nodes.shop import SHOP_PUSH, check_push, idempotency_key, shop_connection_test

CREDS = Credentials(
    woo_key="ck_4f1e9a",
    woo_secret="cs_s3cr3t-W00",
    shopware_client_id="SWIAFLOWMILL",
    shopware_client_secret="sw-s3cr3t-Cl13nt",
    shopify_token="shpat_s3cr3t77",
    api_token="tok-s3cr3t-generic",
)
SECRETS = (CREDS.woo_secret, CREDS.shopware_client_secret, CREDS.shopify_token, CREDS.api_token)
FAST = {"backoff": 0.01, "max_retry_delay": 0.5, "request_timeout": 5}


@pytest.fixture
def running() -> Iterator[RunningShop]:
    shop = DemoShop(credentials=CREDS, limits=Limits(shopware_batch=50))
    server = start_shop(shop=shop)
    try:
        yield server
    finally:
        server.stop()


def connections(url: str) -> dict[str, dict[str, Any]]:
    return {
        "woo": {
            "base_url": url,
            "preset": "woocommerce",
            "auth": "basic",
            "user": CREDS.woo_key,
            "password": CREDS.woo_secret,
        },
        "shopware": {
            "base_url": url,
            "preset": "shopware",
            "auth": "client_credentials",
            "client_id": CREDS.shopware_client_id,
            "client_secret": CREDS.shopware_client_secret,
        },
        "shopify": {
            "base_url": url,
            "preset": "shopify",
            "auth": "api_key",
            "api_key_header": "X-Shopify-Access-Token",
            "api_key": CREDS.shopify_token,
        },
        "api": {"base_url": url, "auth": "bearer", "token": CREDS.api_token},
    }


def push(
    running: RunningShop,
    config: Mapping[str, Any],
    records: list[dict[str, Any]],
    **conns: dict[str, Any],
) -> NodeResult:
    return run_node(
        SHOP_PUSH,
        {**FAST, **config},
        {"in": records},
        connections={**connections(running.url), **conns},
    )


def push_in_run(
    running: RunningShop, config: Mapping[str, Any], records: list[dict[str, Any]], run_id: str
) -> list[dict[str, Any]]:
    """One node run inside run ``run_id`` (engine.testing always uses the same run id)."""
    cfg = SHOP_PUSH.with_defaults({**FAST, **config})
    conns = connections(running.url)
    tmp = Path(tempfile.mkdtemp(prefix="flowmill-shop-"))
    ctx = RunContext(
        run_id=run_id,
        flow_id="nightly-prices",
        node_id="push-1a2b",
        node_type=SHOP_PUSH.type,
        params={},
        work_dir=tmp,
        data_dir=tmp,
        logger=NodeLogger(lambda level, text: None),
        on_error="route",
        reject_sink=lambda record: None,
        connection_lookup=lambda name: dict(conns[name]),
    )
    outputs = SHOP_PUSH.run(ctx, cfg, {"in": batched(iter(records), 1000)})
    return [r for batch in outputs["out"] for r in batch]


def seed(shop: DemoShop, n: int) -> list[dict[str, Any]]:
    return [shop.add_product(f"SKU-{i:04d}", f"Article {i}", 10.0, 5) for i in range(n)]


def assert_no_secret(*texts: Any) -> None:
    for text in texts:
        for secret in SECRETS:
            assert secret not in str(text)


WOO_ITEM = {
    "id": "${record.shop_id}",
    "regular_price": "${record.price}",
    "stock_quantity": "${record.stock}",
}


# -- WooCommerce ---------------------------------------------------------------------------


def test_woo_pushes_250_prices_in_three_batches_and_routes_the_rejected_items(
    running: RunningShop,
) -> None:
    shop = running.shop
    products = seed(shop, 250)
    records = [
        {"sku": p["sku"], "shop_id": p["id"], "price": 20.0 + i, "stock": i}
        for i, p in enumerate(products)
    ]
    records[7]["price"] = -1.0  # Woo refuses the price
    records[120]["shop_id"] = 999_999  # no such product
    config = {"connection": "woo", "preset": "woocommerce", "item": WOO_ITEM, "batch_size": 500}

    result = push(running, config, records)

    batches = shop.requests_to("/wp-json/wc/v3/products/batch")
    assert [len(r.body["update"]) for r in batches] == [100, 100, 50]
    assert all(r.status == 200 and set(r.body) == {"update"} for r in batches)
    assert all(r.headers["Authorization"].startswith("Basic ") for r in batches)
    keys = [r.headers["Idempotency-Key"] for r in batches]
    assert len(set(keys)) == 3 and all(len(k) == 64 for k in keys)
    assert batches[0].body["update"][0] == {
        "id": products[0]["id"],
        "regular_price": 20.0,
        "stock_quantity": 0,
    }
    assert len(result["out"]) == 248
    assert result["out"][0] == {
        **records[0],
        "shop_id": products[0]["id"],
        "shop_status": "updated",
    }
    errors = {r["sku"]: r for r in result["error"]}
    assert set(errors) == {"SKU-0007", "SKU-0120"}
    assert "Invalid parameter(s): regular_price" in errors["SKU-0007"]["_error"]
    assert (
        errors["SKU-0120"]["_error"]
        == "WooCommerce: Invalid ID. (woocommerce_rest_product_invalid_id)"
    )
    assert errors["SKU-0120"]["shop_code"] == "woocommerce_rest_product_invalid_id"
    assert shop.products[products[8]["id"]]["price"] == 28.0
    assert shop.products[products[7]["id"]]["price"] == 10.0  # the refused one is unchanged
    assert any("batch_size 500 is more than WooCommerce takes" in line for line in result.log)
    assert_no_secret(result.log, result["error"])


def test_woo_update_by_sku_looks_up_the_ids_first(running: RunningShop) -> None:
    products = seed(running.shop, 3)
    records = [{"sku": "SKU-0001", "price": 12.5}, {"sku": "SKU-9999", "price": 1.0}]
    config = {
        "connection": "woo",
        "preset": "woocommerce",
        "key_field": "sku",
        "item": {"sku": "${record.sku}", "regular_price": "${record.price}"},
    }

    result = push(running, config, records)

    (lookup,) = running.shop.requests_to("/wp-json/wc/v3/products", "GET")
    assert lookup.query["sku"] == "SKU-0001,SKU-9999"
    (batch,) = running.shop.requests_to("/wp-json/wc/v3/products/batch")
    assert batch.body == {
        "update": [{"id": products[1]["id"], "sku": "SKU-0001", "regular_price": 12.5}]
    }
    assert [r["shop_id"] for r in result["out"]] == [products[1]["id"]]
    assert result["error"][0]["_error"] == "WooCommerce has no product with sku 'SKU-9999'"


def test_woo_create_reports_duplicated_sku(running: RunningShop) -> None:
    seed(running.shop, 1)
    records = [{"sku": "SKU-0000", "name": "Dup"}, {"sku": "NEW-1", "name": "Fresh"}]
    config = {
        "connection": "woo",
        "preset": "woocommerce",
        "operation": "create",
        "item": {"sku": "${record.sku}", "name": "${record.name}"},
    }

    result = push(running, config, records)

    assert [r["shop_status"] for r in result["out"]] == ["created"]
    assert running.shop.by_sku("NEW-1")["name"] == "Fresh"
    assert (
        result["error"][0]["_error"]
        == "WooCommerce: Invalid or duplicated SKU. (product_invalid_sku)"
    )


def test_stand_in_refuses_woo_batches_over_100_items(running: RunningShop) -> None:
    response = requests.post(
        f"{running.url}/wp-json/wc/v3/products/batch",
        json={"update": [{"id": i} for i in range(101)]},
        auth=(CREDS.woo_key, CREDS.woo_secret),
        timeout=5,
    )
    assert response.status_code == 413
    assert response.json()["code"] == "rest_request_entity_too_large"


def test_wrong_woo_secret_fails_at_once_without_retry_or_secret(running: RunningShop) -> None:
    wrong = {**connections(running.url)["woo"], "password": "cs_wrong-s3cr3t"}
    config = {"connection": "woo", "preset": "woocommerce", "item": WOO_ITEM, "retries": 3}
    records = [{"shop_id": p["id"], "price": 1.0, "stock": 1} for p in seed(running.shop, 2)]

    with pytest.raises(PermanentError) as caught:
        push(running, config, records, woo=wrong)

    assert is_permanent(caught.value)
    assert len(running.shop.requests) == 1
    assert "Consumer secret is invalid." in str(caught.value)
    assert "cs_wrong-s3cr3t" not in str(caught.value)


def test_lost_answer_is_repeated_with_the_same_key_and_applied_once(running: RunningShop) -> None:
    shop = running.shop
    products = seed(shop, 3)
    shop.fail_next("/wp-json/wc/v3/products/batch", 503, after_apply=True)
    records = [{"shop_id": p["id"], "price": 30.0, "stock": 2} for p in products]
    config = {"connection": "woo", "preset": "woocommerce", "item": WOO_ITEM}

    result = push(running, config, records)

    first, second = shop.requests_to("/wp-json/wc/v3/products/batch")
    assert (first.status, second.status) == (503, 200)
    assert first.headers["Idempotency-Key"] == second.headers["Idempotency-Key"]
    assert second.replayed
    assert shop.applied["woocommerce"] == 1
    assert [shop.products[p["id"]]["writes"] for p in products] == [1, 1, 1]
    assert len(result["out"]) == 3
    assert any("1 answer(s) replayed by the shop" in line for line in result.log)


def test_shop_down_after_repeats_fails_the_node_for_a_retry(running: RunningShop) -> None:
    running.shop.fail_next("/wp-json/wc/v3/products/batch", 503, times=10)
    records = [{"shop_id": p["id"], "price": 1.0, "stock": 1} for p in seed(running.shop, 1)]
    config = {"connection": "woo", "preset": "woocommerce", "item": WOO_ITEM, "request_retries": 2}

    with pytest.raises(NodeError) as caught:
        push(running, config, records)

    assert not is_permanent(caught.value)
    assert "HTTP 503 after 2 repeats" in str(caught.value)
    assert len(running.shop.requests_to("/wp-json/wc/v3/products/batch")) == 3


# -- Shopware ------------------------------------------------------------------------------


def test_shopware_sync_upserts_and_sends_the_rest_again_without_the_bad_items(
    running: RunningShop,
) -> None:
    shop = running.shop
    existing = seed(shop, 2)
    records = [
        {
            "uuid": existing[0]["uuid"],
            "number": "SKU-0000",
            "name": "Kettle",
            "gross": 39.9,
            "stock": 4,
        },
        {
            "uuid": existing[1]["uuid"],
            "number": "SKU-0001",
            "name": "Cup",
            "gross": -2.0,
            "stock": 9,
        },
        {"uuid": "ab" * 16, "number": "NEW-7", "name": "Teapot", "gross": 25.0, "stock": 3},
    ]
    item = {
        "id": "${record.uuid}",
        "productNumber": "${record.number}",
        "name": "${record.name}",
        "stock": "${record.stock}",
        "price": [
            {
                "currencyId": "b7d2554b0ce847cd82f3ac9bd1c0dfca",
                "gross": "${record.gross}",
                "net": "${record.gross}",
                "linked": False,
            }
        ],
    }

    result = push(running, {"connection": "shopware", "preset": "shopware", "item": item}, records)

    (token,) = shop.requests_to("/api/oauth/token")
    assert token.body["grant_type"] == "client_credentials"
    first, second = shop.requests_to("/api/_action/sync")
    assert first.status == 400 and second.status == 200
    op = second.body["write-product"]
    assert (op["entity"], op["action"]) == ("product", "upsert")
    assert [p["productNumber"] for p in op["payload"]] == ["SKU-0000", "NEW-7"]
    assert first.headers["Idempotency-Key"] != second.headers["Idempotency-Key"]
    assert second.headers["Authorization"].startswith("Bearer ")
    assert [(r["name"], r["shop_id"], r["shop_status"]) for r in result["out"]] == [
        ("Kettle", existing[0]["uuid"], "upserted"),
        ("Teapot", "ab" * 16, "upserted"),
    ]
    (bad,) = result["error"]
    assert bad["name"] == "Cup"
    assert (
        bad["_error"] == "Shopware: price/0/gross: This value should be greater than or equal to 0."
    )
    assert shop.products[existing[0]["id"]]["price"] == 39.9
    assert shop.by_sku("NEW-7")["stock"] == 3
    assert_no_secret(result.log, result["error"])


def test_shopware_wrong_client_secret_is_permanent(running: RunningShop) -> None:
    wrong = {**connections(running.url)["shopware"], "client_secret": "sw-wrong-s3cr3t"}

    with pytest.raises(PermanentError) as caught:
        push(
            running, {"connection": "shopware", "preset": "shopware"}, [{"id": "x"}], shopware=wrong
        )

    assert "The user credentials were incorrect." in str(caught.value)
    assert "sw-wrong-s3cr3t" not in str(caught.value)
    assert len(running.shop.requests) == 1


# -- Shopify -------------------------------------------------------------------------------


def test_shopify_updates_one_item_per_request_with_its_access_token(running: RunningShop) -> None:
    products = seed(running.shop, 2)
    records = [
        {"variant": products[0]["id"], "price": "14.90"},
        {"variant": products[1]["id"], "price": "-3"},
        {"variant": 424242, "price": "5.00"},
    ]
    config = {
        "connection": "shopify",
        "preset": "shopify",
        "resource": "variants",
        "batch_size": 100,
        "item": {"id": "${record.variant}", "price": "${record.price}"},
    }

    result = push(running, config, records)

    calls = running.shop.requests_to("/admin/api/2024-01/variants/")
    assert [(c.method, c.path, c.status) for c in calls] == [
        ("PUT", f"/admin/api/2024-01/variants/{products[0]['id']}.json", 200),
        ("PUT", f"/admin/api/2024-01/variants/{products[1]['id']}.json", 422),
        ("PUT", "/admin/api/2024-01/variants/424242.json", 404),
    ]
    assert calls[0].body == {"variant": {"id": products[0]["id"], "price": "14.90"}}
    assert all(c.headers["X-Shopify-Access-Token"] == CREDS.shopify_token for c in calls)
    assert len({c.headers["Idempotency-Key"] for c in calls}) == 3
    assert [(r["shop_id"], r["shop_status"]) for r in result["out"]] == [
        (products[0]["id"], "updated")
    ]
    assert [r["_error"] for r in result["error"]] == [
        "Shopify: HTTP 422: price: must be greater than or equal to 0",
        "Shopify: HTTP 404: Not Found",
    ]
    assert running.shop.products[products[0]["id"]]["price"] == 14.9
    assert_no_secret(result.log, result["error"])


def test_shopify_rate_limit_429_is_waited_out_as_retry_after_says() -> None:
    shop = DemoShop(credentials=CREDS, limits=Limits(shopify_bucket=2, shopify_leak_per_s=4.0))
    server = start_shop(shop=shop)
    try:
        products = seed(shop, 5)
        records = [{"id": p["id"], "title": f"Neu {i}"} for i, p in enumerate(products)]
        config = {"connection": "shopify", "preset": "shopify", "item": {}, "max_retry_delay": 5}
        started = time.monotonic()
        result = push(server, config, records)
        took = time.monotonic() - started
    finally:
        server.stop()

    limited = [r for r in shop.requests if r.status == 429]
    assert limited  # the bucket overflowed ...
    assert len(result["out"]) == 5 and result["error"] == []  # ... and every item got through
    assert shop.applied["shopify"] == 5
    waited = sum(float(r.answer_headers["Retry-After"]) for r in limited)
    assert took >= waited  # each Retry-After was waited out before the repeat
    assert any("answered 429" in line for line in result.log)


def test_429_with_retry_after_header_is_honoured(running: RunningShop) -> None:
    running.shop.fail_next("/api/items", 429, retry_after="0.4")
    config = {"connection": "api", "url": "/api/items", "backoff": 0.01, "max_retry_delay": 5}

    started = time.monotonic()
    result = push(running, config, [{"sku": "A-1", "price": 2.0}])

    assert time.monotonic() - started >= 0.4
    assert [r.status for r in running.shop.requests_to("/api/items")] == [429, 200]
    assert result["out"][0]["shop_status"] == "created"


# -- generic -------------------------------------------------------------------------------


def test_generic_push_keeps_placeholder_types_and_matches_results_by_key(
    running: RunningShop,
) -> None:
    records = [
        {"sku": "A-1", "price": 9.5, "qty": 3},
        {"sku": "A-2", "price": -1, "qty": 1},
        {"sku": "A-3", "price": 4, "qty": 0},
    ]
    config = {
        "connection": "api",
        "url": "/api/items",
        "batch_size": 2,
        "item": {
            "sku": "${record.sku}",
            "price": "${record.price}",
            "stock": "${record.qty}",
            "name": "Article ${record.sku} (${record.qty})",
        },
    }

    result = push(running, config, records)

    calls = running.shop.requests_to("/api/items")
    assert [len(c.body) for c in calls] == [2, 1]
    assert calls[0].body[0] == {"sku": "A-1", "price": 9.5, "stock": 3, "name": "Article A-1 (3)"}
    assert [(r["sku"], r["shop_status"]) for r in result["out"]] == [
        ("A-1", "created"),
        ("A-3", "created"),
    ]
    assert result["error"][0]["sku"] == "A-2"
    assert result["error"][0]["_error"] == "price must not be negative"


def test_missing_record_field_rejects_only_that_record(running: RunningShop) -> None:
    config = {"connection": "api", "url": "/api/items", "item": {"sku": "${record.sku}"}}

    result = push(running, config, [{"sku": "A-1"}, {"name": "no sku"}])

    assert [r["sku"] for r in result["out"]] == ["A-1"]
    assert result["error"][0]["_error"] == "item.sku: the record has no field 'sku'"


def test_rerun_in_the_same_run_replays_and_a_stable_scope_spans_retried_jobs(
    running: RunningShop,
) -> None:
    shop = running.shop
    records = [{"sku": "P-1", "price": 5.0}, {"sku": "P-2", "price": 6.0}]
    config = {"connection": "api", "url": "/api/items", "batch_size": 1}

    push_in_run(running, config, records, "run-a")
    again = push_in_run(running, config, records, "run-a")  # node retried in its run
    assert shop.applied["generic"] == 2
    assert [r["shop_status"] for r in again] == ["created", "created"]  # the stored answers

    push_in_run(running, config, records, "run-b")  # a retried job: new run, new keys
    assert shop.applied["generic"] == 4

    scoped = {**config, "idempotency_scope": "prices-2024-05-01"}
    push_in_run(running, scoped, records, "run-c")
    push_in_run(running, scoped, records, "run-d")
    assert shop.applied["generic"] == 6
    assert shop.by_sku("P-1")["writes"] == 3


def test_idempotency_key_depends_on_scope_node_batch_and_content() -> None:
    key = idempotency_key("run:r1", "flow", "push-1", 1, b"[1]")
    assert key == idempotency_key("run:r1", "flow", "push-1", 1, b"[1]")
    others = {
        idempotency_key("run:r2", "flow", "push-1", 1, b"[1]"),
        idempotency_key("run:r1", "flow", "push-2", 1, b"[1]"),
        idempotency_key("run:r1", "flow", "push-1", 2, b"[1]"),
        idempotency_key("run:r1", "flow", "push-1", 1, b"[2]"),
    }
    assert key not in others and len(others) == 4


def test_stand_in_refuses_a_reused_key_with_another_body(running: RunningShop) -> None:
    headers = {"Authorization": f"Bearer {CREDS.api_token}", "Idempotency-Key": "k1"}
    first = requests.post(
        f"{running.url}/api/items", json=[{"sku": "Z"}], headers=headers, timeout=5
    )
    other = requests.post(
        f"{running.url}/api/items", json=[{"sku": "Y"}], headers=headers, timeout=5
    )
    assert first.status_code == 200
    assert other.status_code == 422
    assert running.shop.by_sku("Y") is None


# -- connection type and checks ------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("woo", "WooCommerce REST v3 at http://127.0.0.1"),
        ("shopware", "Shopware 6.5.8.0 at http://127.0.0.1"),
        ("shopify", "Shopify shop 'Flowmill Demo Shop'"),
    ],
)
def test_connection_test_logs_in_per_preset(running: RunningShop, name: str, expected: str) -> None:
    assert shop_connection_test(connections(running.url)[name], 5).startswith(expected)


@pytest.mark.parametrize(
    ("name", "key", "message"),
    [
        ("woo", "password", "Consumer secret is invalid."),
        ("shopware", "client_secret", "The user credentials were incorrect."),
        ("shopify", "api_key", "Invalid API key or access token"),
    ],
)
def test_connection_test_with_a_wrong_key_fails_without_the_key(
    running: RunningShop, name: str, key: str, message: str
) -> None:
    settings = {**connections(running.url)[name], key: "wrong-s3cr3t-value"}

    with pytest.raises(FlowmillError) as caught:
        shop_connection_test(settings, 5)

    assert message in str(caught.value)
    assert "wrong-s3cr3t-value" not in str(caught.value)


def test_connection_test_generic_says_only_what_the_server_answered(running: RunningShop) -> None:
    settings = {**connections(running.url)["api"], "test_path": "/api/items"}
    assert shop_connection_test(settings, 5) == (
        f"{running.url} answered HTTP 200 to GET {running.url}/api/items with bearer auth"
    )
    with pytest.raises(FlowmillError, match="refused the credentials: HTTP 401"):
        shop_connection_test({**settings, "token": "nope"}, 5)


def test_connection_test_unreachable_shop() -> None:
    with pytest.raises(FlowmillError, match=r"cannot reach WooCommerce at http://127\.0\.0\.1:9"):
        shop_connection_test({"base_url": "http://127.0.0.1:9", "preset": "woocommerce"}, 2)


def test_check_names_the_fields_that_do_not_fit_the_preset() -> None:
    problems = {
        p.field: p.message
        for p in check_push(
            {
                "connection": "s",
                "preset": "shopware",
                "operation": "create",
                "url": "/x",
                "resource": "Product!",
            }
        )
    }
    assert problems == {
        "operation": "Shopware 6 supports upsert, not 'create'",
        "url": "Shopware 6 builds its own URL: leave url empty",
        "resource": "'Product!' is not a Shopware 6 resource name",
    }
    assert [p.field for p in check_push({"connection": "s"})] == ["url"]
    assert (
        check_push({"connection": "s", "preset": "woocommerce", "key_field": "ean"})[0].field
        == "key_field"
    )
    assert check_push({"connection": "s", "url": "/api/items"}) == []
