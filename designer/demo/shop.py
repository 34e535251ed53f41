"""A stand-in web shop for trying ``shop.push`` without a real shop (and for its tests).

One in-memory catalog served through four APIs, implemented far enough for the node and
checked the way the real ones check requests:

- WooCommerce REST v3: ``GET /wp-json/wc/v3/products`` (``sku`` filter) and
  ``POST /wp-json/wc/v3/products/batch`` (``create``/``update`` lists, at most
  ``Limits.woo_batch`` items, per-item ``error`` objects inside a 200 answer). HTTP basic
  auth with consumer key and secret.
- Shopware 6 Admin API: ``POST /api/oauth/token`` (client_credentials → bearer token),
  ``GET /api/_info/version`` and ``POST /api/_action/sync`` (``upsert`` of ``product``;
  transactional: one bad record fails the request with 400 ``errors`` whose
  ``source.pointer`` names the record, and nothing is written).
- Shopify Admin REST: ``GET /admin/api/<version>/shop.json``,
  ``POST …/products.json``, ``PUT …/products/<id>.json`` and ``PUT …/variants/<id>.json``
  with ``X-Shopify-Access-Token``; a leaky bucket answers 429 with ``Retry-After``; 422
  ``errors`` for invalid records. Each product has one variant with the product's id.
- Generic: ``GET /api/items`` and ``POST /api/items`` (a JSON array, upsert by ``sku``,
  per-item ``results``), bearer token.

Every write request honours ``Idempotency-Key``: the same key with the same body replays
the stored answer (header ``Idempotent-Replayed: true``) without applying it again; the
same key with another body is refused with 422. ``DemoShop.applied`` counts the requests
whose changes were applied, per API. Every request is recorded (``DemoShop.requests``)
and faults can be injected (``DemoShop.fail_next``), including "applied, then the answer
was lost" (``after_apply=True``).

The real APIs do not all document ``Idempotency-Key`` for these endpoints; the stand-in
honours it everywhere so the node's behaviour can be checked.

    shop = DemoShop()
    running = start_shop(shop=shop)           # a thread on a free loopback port
    ...                                       # point a connection at running.url
    running.stop()

``serve_shop(host, port)`` does the same in the foreground (``flowmill demo shop``).
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import secrets
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from flask import Flask, Response, g, request
from werkzeug.serving import BaseWSGIServer, make_server

__all__ = [
    "Credentials",
    "Limits",
    "Recorded",
    "DemoShop",
    "RunningShop",
    "create_shop_app",
    "start_shop",
    "serve_shop",
]

WOO = "/wp-json/wc/v3"
SHOPIFY_VERSION = re.compile(r"^\d{4}-\d{2}$")
_UUID = re.compile(r"^[0-9a-f]{32}$")
_NOT_BLANK = "c1051bb4-d103-4f74-8988-acbcafc7fdc3"  # Symfony's NotBlank violation code
_GREATER_EQUAL = "ea4e51d1-3342-48bd-87f1-9e672cd90cad"  # Symfony's GreaterThanOrEqual


@dataclass(frozen=True)
class Credentials:
    """What each API accepts; the defaults are for demos, tests pass their own."""

    woo_key: str = "ck_demo"
    woo_secret: str = "cs_demo"
    shopware_client_id: str = "SWIADEMO"
    shopware_client_secret: str = "demo-secret"
    shopify_token: str = "shpat_demo"
    api_token: str = "demo-token"


@dataclass(frozen=True)
class Limits:
    """Batch limits and Shopify's rate limit (bucket size, leak per second)."""

    woo_batch: int = 100
    shopware_batch: int = 500
    generic_batch: int = 50
    shopify_bucket: int = 40
    shopify_leak_per_s: float = 2.0
    shopware_token_s: int = 600


@dataclass(frozen=True)
class Recorded:
    """One request as the shop saw it, and what it answered."""

    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: Any
    status: int
    replayed: bool
    answer_headers: dict[str, str] = field(default_factory=dict)


@dataclass
class _Fault:
    path: str
    status: int
    times: int
    after_apply: bool
    retry_after: str | None


@dataclass
class _Stored:
    digest: str
    status: int
    body: Any


class _Refused(Exception):
    """An answer other than success: status and JSON body."""

    def __init__(self, status: int, body: Any, headers: Mapping[str, str] | None = None):
        super().__init__(status)
        self.status = status
        self.body = body
        self.headers = dict(headers or {})


@dataclass
class DemoShop:
    """The shop's state: catalog, request log, idempotency store, faults. Thread-safe."""

    credentials: Credentials = field(default_factory=Credentials)
    limits: Limits = field(default_factory=Limits)
    clock: Callable[[], float] = time.monotonic

    def __post_init__(self) -> None:
        self.lock = threading.RLock()
        self.products: dict[int, dict[str, Any]] = {}
        self.requests: list[Recorded] = []
        self.applied: Counter[str] = Counter()
        self._idempotent: dict[str, _Stored] = {}
        self._faults: list[_Fault] = []
        self._tokens: dict[str, float] = {}
        self._bucket = 0.0
        self._bucket_at = self.clock()
        self._next_id = 1001

    # -- catalog ------------------------------------------------------------------------
    def add_product(
        self, sku: str, name: str, price: float = 0.0, stock: int = 0
    ) -> dict[str, Any]:
        with self.lock:
            product = {
                "id": self._next_id,
                "uuid": uuid.uuid4().hex,
                "sku": sku,
                "name": name,
                "price": float(price),
                "stock": int(stock),
                "status": "publish",
                "writes": 0,
            }
            self._next_id += 1
            self.products[product["id"]] = product
            return product

    def by_sku(self, sku: str) -> dict[str, Any] | None:
        with self.lock:
            return next((p for p in self.products.values() if p["sku"] == sku), None)

    def by_uuid(self, value: str) -> dict[str, Any] | None:
        with self.lock:
            return next((p for p in self.products.values() if p["uuid"] == value), None)

    # -- test helpers -------------------------------------------------------------------
    def fail_next(
        self,
        path: str,
        status: int,
        *,
        times: int = 1,
        after_apply: bool = False,
        retry_after: str | None = None,
    ) -> None:
        """Answer the next ``times`` requests whose path starts with ``path`` with ``status``.

        ``after_apply``: the request is applied (and its answer stored for its
        Idempotency-Key) first, as when a proxy loses the answer on the way back.
        """
        with self.lock:
            self._faults.append(_Fault(path, status, times, after_apply, retry_after))

    def requests_to(self, path: str, method: str | None = None) -> list[Recorded]:
        with self.lock:
            return [
                r
                for r in self.requests
                if r.path.startswith(path) and (method is None or r.method == method)
            ]

    def _take_fault(self, path: str, after_apply: bool) -> _Fault | None:
        with self.lock:
            for fault in self._faults:
                if fault.after_apply == after_apply and path.startswith(fault.path):
                    fault.times -= 1
                    if fault.times <= 0:
                        self._faults.remove(fault)
                    return fault
        return None

    # -- shopify's leaky bucket ---------------------------------------------------------
    def _drip(self) -> float | None:
        """Add one call to the bucket; seconds to wait when it is full."""
        with self.lock:
            now = self.clock()
            leak = self.limits.shopify_leak_per_s
            self._bucket = max(0.0, self._bucket - (now - self._bucket_at) * leak)
            self._bucket_at = now
            if self._bucket + 1 > self.limits.shopify_bucket:
                return max(0.1, (self._bucket + 1 - self.limits.shopify_bucket) / leak)
            self._bucket += 1
            return None


# -- helpers ---------------------------------------------------------------------------


def _json(status: int, body: Any, headers: Mapping[str, str] | None = None) -> Response:
    response = Response(json.dumps(body), status=status, mimetype="application/json")
    for key, value in (headers or {}).items():
        response.headers[key] = value
    return response


def _shop() -> DemoShop:
    return g.shop


def _body() -> Any:
    """The request's JSON body; 400 like the APIs do when it is not JSON."""
    data = request.get_json(silent=True)
    if data is None:
        raise _Refused(400, {"code": "rest_invalid_json", "message": "Invalid JSON body passed."})
    return data


def _number(value: Any) -> float | None:
    """A price/stock value as the shops read it (numbers or numeric text), else None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value.strip())
        except ValueError:
            return None
    return None


def _price_text(value: float) -> str:
    return f"{value:.2f}"


def _idempotent(api: str, apply: Callable[[], tuple[int, Any]]) -> Response:
    """Apply a write once per Idempotency-Key; replay the stored answer on a repeat."""
    shop = _shop()
    key = request.headers.get("Idempotency-Key")
    digest = hashlib.sha256(request.get_data()).hexdigest()
    with shop.lock:  # one write at a time: a repeat racing its original waits for it
        if key:
            stored = shop._idempotent.get(key)
            if stored is not None:
                if stored.digest != digest:
                    raise _Refused(
                        422,
                        {
                            "error": "idempotency_key_reused",
                            "message": "This Idempotency-Key was used with a different "
                            "request body.",
                        },
                    )
                g.replayed = True
                return _json(stored.status, stored.body, {"Idempotent-Replayed": "true"})
        status, body = apply()
        if status < 300:
            shop.applied[api] += 1
        if key:
            shop._idempotent[key] = _Stored(digest, status, body)
    fault = shop._take_fault(request.path, after_apply=True)
    if fault is not None:
        return _fault_response(fault)
    return _json(status, body)


def _fault_response(fault: _Fault) -> Response:
    headers = {"Retry-After": fault.retry_after} if fault.retry_after else {}
    return _json(fault.status, {"error": "injected fault", "status": fault.status}, headers)


# -- WooCommerce ------------------------------------------------------------------------


def _woo_auth() -> None:
    creds = _shop().credentials
    auth = request.authorization
    if auth is None or auth.type != "basic":
        raise _Refused(
            401,
            {
                "code": "woocommerce_rest_cannot_view",
                "message": "Sorry, you cannot list resources.",
                "data": {"status": 401},
            },
        )
    if auth.username != creds.woo_key:
        raise _Refused(
            401,
            {
                "code": "woocommerce_rest_authentication_error",
                "message": "Consumer key is invalid.",
                "data": {"status": 401},
            },
        )
    if auth.password != creds.woo_secret:
        raise _Refused(
            401,
            {
                "code": "woocommerce_rest_authentication_error",
                "message": "Consumer secret is invalid.",
                "data": {"status": 401},
            },
        )


def _woo_view(p: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "id": p["id"],
        "sku": p["sku"],
        "name": p["name"],
        "status": p["status"],
        "price": _price_text(p["price"]),
        "regular_price": _price_text(p["price"]),
        "manage_stock": True,
        "stock_quantity": p["stock"],
    }


def _woo_error(code: str, message: str, item_id: Any = 0) -> dict[str, Any]:
    return {"id": item_id, "error": {"code": code, "message": message, "data": {"status": 400}}}


def _woo_fields(item: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """Writable fields of a Woo product item, or a per-item error."""
    changes: dict[str, Any] = {}
    if "regular_price" in item:
        price = _number(item["regular_price"])
        if price is None or price < 0:
            return {}, _woo_error(
                "rest_invalid_param", "Invalid parameter(s): regular_price", item.get("id", 0)
            )
        changes["price"] = price
    if "stock_quantity" in item:
        stock = _number(item["stock_quantity"])
        if stock is None or stock != int(stock):
            return {}, _woo_error(
                "rest_invalid_param", "Invalid parameter(s): stock_quantity", item.get("id", 0)
            )
        changes["stock"] = int(stock)
    for key, target in (("name", "name"), ("status", "status"), ("sku", "sku")):
        if key in item:
            changes[target] = str(item[key])
    return changes, None


def _woo_batch() -> Response:
    _woo_auth()
    shop = _shop()
    body = _body()
    if not isinstance(body, dict) or not set(body) <= {"create", "update", "delete"}:
        raise _Refused(
            400,
            {
                "code": "rest_invalid_param",
                "message": "Invalid parameter(s): expected create, update and delete lists.",
                "data": {"status": 400},
            },
        )
    lists = {k: v for k, v in body.items()}
    if any(not isinstance(v, list) for v in lists.values()):
        raise _Refused(
            400,
            {
                "code": "rest_invalid_param",
                "message": "Invalid parameter(s): create, update and delete must be lists.",
                "data": {"status": 400},
            },
        )
    total = sum(len(v) for v in lists.values())
    if total > shop.limits.woo_batch:
        raise _Refused(
            413,
            {
                "code": "rest_request_entity_too_large",
                "message": f"Unable to accept more than {shop.limits.woo_batch} items for "
                "this request.",
                "data": {"status": 413},
            },
        )

    def apply() -> tuple[int, Any]:
        out: dict[str, list[Any]] = {}
        if "create" in lists:
            out["create"] = [_woo_create(item) for item in lists["create"]]
        if "update" in lists:
            out["update"] = [_woo_update(item) for item in lists["update"]]
        if "delete" in lists:
            out["delete"] = [_woo_delete(item) for item in lists["delete"]]
        return 200, out

    return _idempotent("woocommerce", apply)


def _woo_create(item: Any) -> dict[str, Any]:
    shop = _shop()
    if not isinstance(item, dict):
        return _woo_error("rest_invalid_param", "Invalid parameter(s): item")
    changes, error = _woo_fields(item)
    if error:
        return error
    sku = changes.get("sku", "")
    if sku and shop.by_sku(sku) is not None:
        return _woo_error("product_invalid_sku", "Invalid or duplicated SKU.")
    product = shop.add_product(sku, changes.get("name", "Product"))
    product.update(changes)
    product["writes"] += 1
    return _woo_view(product)


def _woo_update(item: Any) -> dict[str, Any]:
    shop = _shop()
    if not isinstance(item, dict):
        return _woo_error("rest_invalid_param", "Invalid parameter(s): item")
    raw = item.get("id")
    item_id = int(raw) if isinstance(raw, str) and raw.isdigit() else raw  # Woo casts to int
    product = shop.products.get(item_id) if isinstance(item_id, int) else None
    if product is None:
        return _woo_error("woocommerce_rest_product_invalid_id", "Invalid ID.", item.get("id", 0))
    changes, error = _woo_fields(item)
    if error:
        return error
    sku = changes.get("sku")
    if sku and (other := shop.by_sku(sku)) is not None and other is not product:
        return _woo_error("product_invalid_sku", "Invalid or duplicated SKU.", product["id"])
    product.update(changes)
    product["writes"] += 1
    return _woo_view(product)


def _woo_delete(item: Any) -> dict[str, Any]:
    shop = _shop()
    product = shop.products.pop(item, None) if isinstance(item, int) else None
    if product is None:
        return _woo_error("woocommerce_rest_product_invalid_id", "Invalid ID.", item)
    return _woo_view(product)


def _woo_list() -> Response:
    _woo_auth()
    shop = _shop()
    skus = {s for s in request.args.get("sku", "").split(",") if s}
    per_page = min(int(request.args.get("per_page", "10") or 10), 100)
    with shop.lock:
        found = [p for p in shop.products.values() if not skus or p["sku"] in skus]
    return _json(200, [_woo_view(p) for p in found[:per_page]])


# -- Shopware 6 ------------------------------------------------------------------------


def _shopware_token() -> Response:
    shop = _shop()
    data = request.get_json(silent=True) or request.form.to_dict()
    creds = shop.credentials
    if data.get("grant_type") != "client_credentials":
        raise _Refused(
            400,
            {
                "errors": [
                    {
                        "code": "0",
                        "status": "400",
                        "title": "Bad Request",
                        "detail": "The authorization grant type is not supported by the "
                        "authorization server.",
                    }
                ]
            },
        )
    if (
        data.get("client_id") != creds.shopware_client_id
        or data.get("client_secret") != creds.shopware_client_secret
    ):
        raise _Refused(
            401,
            {
                "errors": [
                    {
                        "code": "9",
                        "status": "401",
                        "title": "Unauthorized",
                        "detail": "The user credentials were incorrect.",
                    }
                ]
            },
        )
    token = secrets.token_urlsafe(24)
    with shop.lock:
        shop._tokens[token] = shop.clock() + shop.limits.shopware_token_s
    return _json(
        200,
        {"token_type": "Bearer", "expires_in": shop.limits.shopware_token_s, "access_token": token},
    )


def _shopware_auth() -> None:
    shop = _shop()
    header = request.headers.get("Authorization", "")
    token = header[7:] if header.startswith("Bearer ") else ""
    with shop.lock:
        expires = shop._tokens.get(token)
    if expires is None or expires < shop.clock():
        raise _Refused(
            401,
            {
                "errors": [
                    {
                        "code": "9",
                        "status": "401",
                        "title": "Unauthorized",
                        "detail": "Access token could not be verified.",
                    }
                ]
            },
        )


def _sw_error(code: str, detail: str, pointer: str) -> dict[str, Any]:
    return {
        "code": code,
        "status": "400",
        "title": "Constraint violation error",
        "detail": detail,
        "source": {"pointer": pointer},
    }


def _shopware_version() -> Response:
    _shopware_auth()
    return _json(200, {"version": "6.5.8.0"})


def _shopware_sync() -> Response:
    _shopware_auth()
    shop = _shop()
    body = _body()
    if not isinstance(body, dict) or not body:
        raise _Refused(
            400,
            {"errors": [_sw_error("FRAMEWORK__INVALID_SYNC_PAYLOAD", "Empty sync payload.", "/")]},
        )
    errors: list[dict[str, Any]] = []
    plans: list[tuple[str, list[tuple[dict[str, Any] | None, dict[str, Any]]]]] = []
    total = 0
    for key, op in body.items():
        where = f"/{key}"
        if not isinstance(op, dict) or not isinstance(op.get("payload"), list):
            errors.append(
                _sw_error("FRAMEWORK__INVALID_SYNC_OPERATION", "Invalid sync operation.", where)
            )
            continue
        if op.get("entity") != "product":
            errors.append(
                _sw_error(
                    "FRAMEWORK__DEFINITION_NOT_FOUND",
                    f'Definition for entity "{op.get("entity")}" does not exist.',
                    f"{where}/entity",
                )
            )
            continue
        if op.get("action") != "upsert":
            errors.append(
                _sw_error(
                    "FRAMEWORK__INVALID_SYNC_OPERATION",
                    f'Action "{op.get("action")}" is not supported by this shop (upsert).',
                    f"{where}/action",
                )
            )
            continue
        total += len(op["payload"])
        plans.append(
            (key, [_sw_check(item, f"{where}/{i}", errors) for i, item in enumerate(op["payload"])])
        )
    if total > shop.limits.shopware_batch:
        raise _Refused(
            400,
            {
                "errors": [
                    _sw_error(
                        "FRAMEWORK__SYNC_LIMIT",
                        f"The sync request holds {total} records; this shop accepts at most "
                        f"{shop.limits.shopware_batch} per request.",
                        "/",
                    )
                ]
            },
        )
    if errors:  # the sync API writes in one transaction: nothing is applied
        raise _Refused(400, {"errors": errors})

    def apply() -> tuple[int, Any]:
        written: list[str] = []
        for _key, items in plans:
            for product, changes in items:
                if product is None:
                    product = shop.add_product(changes["sku"], changes["name"])
                    if changes.get("uuid"):
                        product["uuid"] = changes["uuid"]
                product.update({k: v for k, v in changes.items() if k != "uuid"})
                product["writes"] += 1
                written.append(product["uuid"])
        return 200, {"data": {"product": written}, "deleted": [], "notFound": []}

    return _idempotent("shopware", apply)


def _sw_check(
    item: Any, where: str, errors: list[dict[str, Any]]
) -> tuple[dict[str, Any] | None, dict[str, Any]]:
    """Validate one product upsert; the product it updates (None: create) and its changes."""
    shop = _shop()
    if not isinstance(item, dict):
        errors.append(_sw_error("FRAMEWORK__WRITE_TYPE_INTEND_ERROR", "Expected an object.", where))
        return None, {}
    changes: dict[str, Any] = {}
    product = None
    if "id" in item:
        if not isinstance(item["id"], str) or not _UUID.match(item["id"]):
            errors.append(
                _sw_error(
                    "FRAMEWORK__INVALID_UUID",
                    f"Value is not a valid UUID: {item['id']}",
                    f"{where}/id",
                )
            )
            return None, {}
        product = shop.by_uuid(item["id"])
        if product is None:
            changes["uuid"] = item["id"]
    if "productNumber" in item:
        changes["sku"] = str(item["productNumber"])
        other = shop.by_sku(changes["sku"])
        if other is not None and other is not product:
            errors.append(
                _sw_error(
                    "CONTENT__DUPLICATE_PRODUCT_NUMBER",
                    f'Product with number "{changes["sku"]}" already exists.',
                    f"{where}/productNumber",
                )
            )
    if "name" in item:
        changes["name"] = str(item["name"])
    if "stock" in item:
        if not isinstance(item["stock"], int) or isinstance(item["stock"], bool):
            errors.append(
                _sw_error(
                    "ba785a8c-82cb-4283-967c-3cf342181b40",
                    "This value should be of type int.",
                    f"{where}/stock",
                )
            )
        else:
            changes["stock"] = item["stock"]
    if "price" in item:
        prices = item["price"]
        if not isinstance(prices, list) or not prices or not isinstance(prices[0], dict):
            errors.append(
                _sw_error(_NOT_BLANK, "This value should not be blank.", f"{where}/price")
            )
        else:
            gross = _number(prices[0].get("gross"))
            if gross is None or gross < 0:
                errors.append(
                    _sw_error(
                        _GREATER_EQUAL,
                        "This value should be greater than or equal to 0.",
                        f"{where}/price/0/gross",
                    )
                )
            else:
                changes["price"] = gross
    if product is None:  # a new product needs its required fields
        for name, key in (
            ("productNumber", "sku"),
            ("name", "name"),
            ("stock", "stock"),
            ("price", "price"),
        ):
            if key not in changes and name not in item:
                errors.append(
                    _sw_error(_NOT_BLANK, "This value should not be blank.", f"{where}/{name}")
                )
    return product, changes


# -- Shopify ---------------------------------------------------------------------------


def _shopify_auth(version: str) -> None:
    shop = _shop()
    if request.headers.get("X-Shopify-Access-Token") != shop.credentials.shopify_token:
        raise _Refused(
            401,
            {
                "errors": "[API] Invalid API key or access token (unrecognized login or "
                "wrong password)"
            },
        )
    if not SHOPIFY_VERSION.match(version):
        raise _Refused(404, {"errors": "Not Found"})
    wait = shop._drip()
    if wait is not None:
        raise _Refused(
            429,
            {
                "errors": "Exceeded 2 calls per second for api client. Reduce request rates "
                "to resume uninterrupted service."
            },
            {"Retry-After": f"{math.ceil(wait * 10) / 10:.1f}"},
        )


def _shopify_view(p: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "id": p["id"],
        "title": p["name"],
        "status": "active" if p["status"] == "publish" else p["status"],
        "variants": [
            {
                "id": p["id"],
                "product_id": p["id"],
                "sku": p["sku"],
                "price": _price_text(p["price"]),
                "inventory_quantity": p["stock"],
            }
        ],
    }


def _shopify_root(name: str) -> dict[str, Any]:
    body = _body()
    if not isinstance(body, dict) or set(body) != {name} or not isinstance(body[name], dict):
        raise _Refused(400, {"errors": {name: "Required parameter missing or invalid"}})
    return body[name]


def _shopify_variant_changes(variant: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    changes: dict[str, Any] = {}
    errors: dict[str, list[str]] = {}
    if "price" in variant:
        price = _number(variant["price"])
        if price is None:
            errors["price"] = ["is not a number"]
        elif price < 0:
            errors["price"] = ["must be greater than or equal to 0"]
        else:
            changes["price"] = price
    if "sku" in variant:
        changes["sku"] = str(variant["sku"])
    return changes, errors


def _shopify_product_changes(item: Mapping[str, Any], creating: bool) -> dict[str, Any]:
    changes: dict[str, Any] = {}
    errors: dict[str, list[str]] = {}
    if "title" in item or creating:
        title = str(item.get("title") or "").strip()
        if not title:
            errors["title"] = ["can't be blank"]
        changes["name"] = title
    if "status" in item:
        if item["status"] not in ("active", "draft", "archived"):
            errors["status"] = ["is not included in the list"]
        else:
            changes["status"] = "publish" if item["status"] == "active" else item["status"]
    variants = item.get("variants") or []
    if variants:
        if not isinstance(variants, list) or not isinstance(variants[0], dict):
            errors["variants"] = ["is invalid"]
        else:
            more, problems = _shopify_variant_changes(variants[0])
            changes.update(more)
            errors.update({f"variants.{k}": v for k, v in problems.items()})
    if errors:
        raise _Refused(422, {"errors": errors})
    return changes


def _shopify_shop(version: str) -> Response:
    _shopify_auth(version)
    return _json(200, {"shop": {"id": 1, "name": "Flowmill Demo Shop", "currency": "EUR"}})


def _shopify_create_product(version: str) -> Response:
    _shopify_auth(version)
    shop = _shop()
    item = _shopify_root("product")

    def apply() -> tuple[int, Any]:
        changes = _shopify_product_changes(item, creating=True)
        sku = changes.get("sku", "")
        product = shop.add_product(sku, changes["name"])
        product.update(changes)
        product["writes"] += 1
        return 201, {"product": _shopify_view(product)}

    return _idempotent("shopify", _catching(apply))


def _shopify_update(version: str, resource: str, item_id: int) -> Response:
    _shopify_auth(version)
    shop = _shop()
    name = "product" if resource == "products" else "variant"
    item = _shopify_root(name)
    if "id" in item and item["id"] != item_id:
        raise _Refused(400, {"errors": {"id": ["does not match the id in the URL"]}})

    def apply() -> tuple[int, Any]:
        product = shop.products.get(item_id)
        if product is None:
            return 404, {"errors": "Not Found"}
        if name == "product":
            changes = _shopify_product_changes(item, creating=False)
        else:
            changes, errors = _shopify_variant_changes(item)
            if errors:
                return 422, {"errors": errors}
        product.update(changes)
        product["writes"] += 1
        view = _shopify_view(product)
        return 200, {name: view if name == "product" else view["variants"][0]}

    return _idempotent("shopify", _catching(apply))


def _catching(apply: Callable[[], tuple[int, Any]]) -> Callable[[], tuple[int, Any]]:
    """Validation answers (422) are stored for the Idempotency-Key like any answer."""

    def run() -> tuple[int, Any]:
        try:
            return apply()
        except _Refused as exc:
            return exc.status, exc.body

    return run


# -- generic ---------------------------------------------------------------------------


def _generic_auth() -> None:
    header = request.headers.get("Authorization", "")
    if header != f"Bearer {_shop().credentials.api_token}":
        raise _Refused(401, {"error": "unauthorized", "message": "missing or wrong bearer token"})


def _generic_list() -> Response:
    _generic_auth()
    shop = _shop()
    with shop.lock:
        items = [
            {
                "id": p["id"],
                "sku": p["sku"],
                "name": p["name"],
                "price": p["price"],
                "stock": p["stock"],
            }
            for p in shop.products.values()
        ]
    return _json(200, items)


def _generic_push() -> Response:
    _generic_auth()
    shop = _shop()
    body = _body()
    items = body.get("items") if isinstance(body, dict) else body
    if not isinstance(items, list):
        raise _Refused(400, {"error": "bad_request", "message": "expected a JSON array of items"})
    if len(items) > shop.limits.generic_batch:
        raise _Refused(
            413,
            {
                "error": "too_many_items",
                "message": f"at most {shop.limits.generic_batch} items per request",
            },
        )

    def apply() -> tuple[int, Any]:
        return 200, {"results": [_generic_item(item) for item in items]}

    return _idempotent("generic", apply)


def _generic_item(item: Any) -> dict[str, Any]:
    shop = _shop()
    if not isinstance(item, dict) or not isinstance(item.get("sku"), str) or not item["sku"]:
        return {"sku": None, "error": "sku is required"}
    sku = item["sku"]
    changes: dict[str, Any] = {}
    for key in ("price", "stock"):
        if key in item:
            value = _number(item[key])
            if value is None:
                return {"sku": sku, "error": f"{key} must be a number"}
            if value < 0:
                return {"sku": sku, "error": f"{key} must not be negative"}
            changes[key] = value if key == "price" else int(value)
    if "name" in item:
        changes["name"] = str(item["name"])
    product = shop.by_sku(sku)
    status = "updated"
    if product is None:
        product = shop.add_product(sku, changes.get("name", sku))
        status = "created"
    product.update(changes)
    product["writes"] += 1
    return {"sku": sku, "id": product["id"], "status": status}


# -- the app ---------------------------------------------------------------------------


def create_shop_app(shop: DemoShop | None = None) -> Flask:
    """A Flask app serving ``shop`` (a fresh ``DemoShop`` if none) on all four APIs.

    The shop is at ``app.extensions["demoshop"]``.
    """
    shop = shop or DemoShop()
    app = Flask("flowmill-demoshop")
    app.extensions["demoshop"] = shop

    @app.before_request
    def _before() -> Response | None:
        g.shop = shop
        g.replayed = False
        fault = shop._take_fault(request.path, after_apply=False)
        return _fault_response(fault) if fault is not None else None

    @app.after_request
    def _record(response: Response) -> Response:
        with shop.lock:
            shop.requests.append(
                Recorded(
                    method=request.method,
                    path=request.path,
                    query=request.args.to_dict(),
                    headers=dict(request.headers.items()),
                    body=request.get_json(silent=True),
                    status=response.status_code,
                    replayed=bool(g.get("replayed")),
                    answer_headers=dict(response.headers.items()),
                )
            )
        return response

    @app.errorhandler(_Refused)
    def _refused(exc: _Refused) -> Response:
        return _json(exc.status, exc.body, exc.headers)

    routes: Iterable[tuple[str, str, Callable[..., Response]]] = (
        (f"{WOO}/products", "GET", _woo_list),
        (f"{WOO}/products/batch", "POST", _woo_batch),
        ("/api/oauth/token", "POST", _shopware_token),
        ("/api/_info/version", "GET", _shopware_version),
        ("/api/_action/sync", "POST", _shopware_sync),
        ("/admin/api/<version>/shop.json", "GET", _shopify_shop),
        ("/admin/api/<version>/products.json", "POST", _shopify_create_product),
        ("/api/items", "GET", _generic_list),
        ("/api/items", "POST", _generic_push),
        ("/demo/forecast.json", "GET", _demo_forecast),
        ("/demo/webcam.jpg", "GET", _demo_webcam),
    )
    for rule, method, view in routes:
        app.add_url_rule(rule, f"{method} {rule}", view, methods=[method])
    app.add_url_rule(
        "/admin/api/<version>/<any(products, variants):resource>/<int:item_id>.json",
        "PUT shopify",
        _shopify_update,
        methods=["PUT"],
    )
    return app


# -- the other partners of the samples -----------------------------------------------------
# The downloads sample fetches a weather forecast and a webcam still. So that it works
# without the internet, the stand-in also plays those two partners (no login, as theirs).


def _demo_forecast() -> Response:
    """A three-day forecast for Munich in the shape weather services answer with."""
    today = datetime.now(UTC).date()
    days = [
        {
            "date": (today + timedelta(days=n)).isoformat(),
            "min_c": 2 + n,
            "max_c": 9 + 2 * n,
            "rain_mm": [0.0, 1.5, 4.2][n],
            "summary": ["sonnig", "wolkig", "Regen"][n],
        }
        for n in range(3)
    ]
    return _json(200, {"place": "München", "issued": datetime.now(UTC).isoformat(), "days": days})


def _demo_webcam() -> Response:
    """A still image of 320×180 pixels with the time on it, as JPEG."""
    import io

    from PIL import Image, ImageDraw

    image = Image.new("RGB", (320, 180), (90, 140, 200))
    draw = ImageDraw.Draw(image)
    draw.rectangle((0, 120, 320, 180), fill=(70, 120, 60))
    stamp = f"Flowmill demo webcam {datetime.now(UTC):%Y-%m-%d %H:%M} UTC"
    draw.text((10, 10), stamp, fill="white")
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=80)
    return Response(buffer.getvalue(), mimetype="image/jpeg")


@dataclass
class RunningShop:
    """A stand-in shop serving in a background thread."""

    shop: DemoShop
    server: BaseWSGIServer
    thread: threading.Thread

    @property
    def url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}"

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


def start_shop(
    host: str = "127.0.0.1", port: int = 0, *, shop: DemoShop | None = None
) -> RunningShop:
    """Serve a stand-in shop in a daemon thread (port 0: a free port); ``stop()`` ends it."""
    shop = shop or DemoShop()
    server = make_server(host, port, create_shop_app(shop), threaded=True)
    thread = threading.Thread(target=server.serve_forever, name="flowmill-demoshop", daemon=True)
    thread.start()
    return RunningShop(shop, server, thread)


def serve_shop(
    host: str = "127.0.0.1",
    port: int = 8085,
    *,
    shop: DemoShop | None = None,
    products: Iterable[Mapping[str, Any]] = (),
) -> None:
    """Serve a stand-in shop in the foreground until interrupted (``flowmill demo shop``).

    ``products`` seeds the catalog: mappings with ``sku``, ``name``, ``price``, ``stock``.
    """
    shop = shop or DemoShop()
    for p in products:
        shop.add_product(
            str(p["sku"]), str(p.get("name", p["sku"])), p.get("price", 0), p.get("stock", 0)
        )
    server = make_server(host, port, create_shop_app(shop), threaded=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
