"""shop.push: send products, prices, stock or order states to a web shop's REST API.

Records are mapped to the shop's fields with the ``item`` template and sent in batches:
WooCommerce REST v3 (``/wp-json/wc/v3/<resource>/batch``, at most 100 items), the
Shopware 6 Admin API (``/api/_action/sync``, an OAuth client-credentials token), Shopify
Admin REST (one request per item) or any JSON API (``generic``: a JSON array per batch).
Each accepted record leaves on ``out`` with ``shop_id`` and ``shop_status``; each record
the shop refused goes to ``error`` with the shop's own message.

Idempotency: every write carries ``Idempotency-Key: sha256(scope, flow, node, batch
number, sha256(body))`` and repeats of a request (429/5xx) re-send it unchanged, so a
shop that honours the header applies a batch once even when its first answer was lost.
The scope is the run id unless ``idempotency_scope`` is set. A node run cannot see its
job (a retried job starts a new run with a new run id), so with the default scope the key
protects repeats within a run (request repeats and node retries) but not a retried job;
set ``idempotency_scope`` to something stable per job, e.g. a param like
``${business_date}``, to make a retried job's batches replay too. The body hash keeps two
different batches from ever sharing a key.

Credentials come from the connection (``nodes.http`` builds the auth headers; Shopware's
``client_credentials`` is handled here) and are masked as ``***`` in every message.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urljoin, urlsplit

import requests

from engine.errors import FlowmillError, NodeError, PermanentError
from engine.spec import (
    Batch,
    ConfigProblem,
    ConnectionType,
    Inputs,
    NodeLogger,
    NodeSpec,
    Outputs,
    RunContext,
    Stream,
    batched,
)
from nodes.http import (
    _COMMON_PROPS,
    _Client,
    _client,
    _Failed,
    _json_default,
    _Request,
    _send,
    _shown_url,
)
from nodes.templates import PLACEHOLDER, MissingField, RecordTemplate

__all__ = [
    "SHOP_PUSH",
    "NODES",
    "CONNECTION_TYPES",
    "PUSH_SCHEMA",
    "PRESETS",
    "BATCH_LIMITS",
    "check_push",
    "shop_push",
    "idempotency_key",
    "shop_connection_test",
]

PRESETS = ("generic", "woocommerce", "shopware", "shopify")
TITLES = {
    "generic": "JSON API",
    "woocommerce": "WooCommerce",
    "shopware": "Shopware 6",
    "shopify": "Shopify",
}
# items per request each API takes; Shopware has no fixed limit, big syncs get slow
BATCH_LIMITS = {"generic": 10_000, "woocommerce": 100, "shopware": 10_000, "shopify": 1}
OPERATIONS = {
    "generic": ("create", "update", "upsert"),
    "woocommerce": ("create", "update"),
    "shopware": ("upsert",),
    "shopify": ("create", "update"),
}
_DEFAULT_OPERATION = {
    "generic": "upsert",
    "woocommerce": "update",
    "shopware": "upsert",
    "shopify": "update",
}
_DEFAULT_RESOURCE = {
    "generic": "",
    "woocommerce": "products",
    "shopware": "product",
    "shopify": "products",
}
_RESOURCE = re.compile(r"^[a-z_]+(?:/[0-9]+/[a-z_]+)?$")
_ENTITY = re.compile(r"^[a-z_]+$")
_API_VERSION = re.compile(r"^\d{4}-\d{2}$")
_EXCERPT = 300

# -- schema -----------------------------------------------------------------------------

PUSH_SCHEMA: dict[str, Any] = {
    "type": "object",
    "title": "Shop push",
    "additionalProperties": False,
    "required": ["connection"],
    "properties": {
        "connection": {
            "type": "string",
            "format": "connection",
            "minLength": 1,
            "title": "Connection",
            "description": "Stored shop connection: 'base_url' (the shop's root, e.g. "
            "https://shop.example.com) and credentials. WooCommerce: auth basic with the "
            "consumer key as user and the consumer secret as password. Shopware: auth "
            "client_credentials with client_id and client_secret (an integration), or "
            "bearer. Shopify: auth api_key with api_key_header X-Shopify-Access-Token. "
            "Generic: basic, bearer or api_key.",
        },
        "preset": {
            "type": "string",
            "enum": list(PRESETS),
            "default": "generic",
            "title": "Shop API",
            "description": "woocommerce: REST v3 batch endpoint (100 items per request). "
            "shopware: Admin API sync (one transaction per batch). shopify: Admin REST, "
            "one request per item. generic: a JSON array of items to 'url'.",
        },
        "resource": {
            "type": "string",
            "default": "",
            "title": "Resource / entity",
            "description": "What to write. WooCommerce: the collection, e.g. 'products' or "
            "'products/42/variations'. Shopware: the entity name, e.g. 'product'. "
            "Shopify: 'products' or 'variants'. Empty: products (Shopware: product).",
        },
        "operation": {
            "type": "string",
            "enum": ["", "create", "update", "upsert"],
            "default": "",
            "title": "Operation",
            "description": "WooCommerce: create or update (default). Shopware: upsert. "
            "Shopify: create (POST) or update (PUT, default). Generic: informational "
            "only, 'method' decides.",
        },
        "url": {
            "type": "string",
            "default": "",
            "title": "URL (generic)",
            "description": "Generic only: absolute URL or path below the connection's "
            "base_url that takes a JSON array of items, e.g. '/api/items'.",
        },
        "method": {
            "type": "string",
            "enum": ["POST", "PUT", "PATCH"],
            "default": "POST",
            "title": "Method (generic)",
            "description": "Generic only: HTTP method of the batch request.",
        },
        "item": {
            "type": "object",
            "default": {},
            "title": "Item template",
            "description": "The shop's item as JSON, with record fields as "
            "'${record.field}'. A value that is exactly one placeholder keeps the "
            "field's type (number, list, …); inside text it is inserted as text. Example "
            'for WooCommerce: {"id": "${record.shop_id}", "regular_price": '
            '"${record.price}", "stock_quantity": "${record.stock}"}. Empty: the record '
            "as it is.",
        },
        "key_field": {
            "type": "string",
            "default": "",
            "title": "Key field",
            "description": "The item field that names the shop's object. WooCommerce "
            "update: 'id' (default) or 'sku' (ids are looked up by SKU first). Shopify "
            "update: 'id' (goes into the URL). Generic: used to match per-item results "
            "when the shop returns them with this field. Empty: 'id' (generic: 'sku').",
        },
        "batch_size": {
            "type": "integer",
            "minimum": 1,
            "maximum": 10_000,
            "default": 100,
            "title": "Items per request",
            "description": "Capped at what the API takes: WooCommerce 100, Shopify 1.",
        },
        "api_version": {
            "type": "string",
            "default": "2024-01",
            "pattern": r"^\d{4}-\d{2}$",
            "title": "API version (Shopify)",
            "description": "Shopify Admin API version in the URL, e.g. 2024-01.",
        },
        "idempotency_scope": {
            "type": "string",
            "default": "",
            "title": "Idempotency scope",
            "description": "Empty: the run id, so repeats within a run are applied once. "
            "Set it to something that stays the same when a job is retried (e.g. "
            "'${business_date}') and a retried job's batches are applied once too, when "
            "the shop honours Idempotency-Key.",
        },
        "request_timeout": _COMMON_PROPS["request_timeout"],
        "request_retries": _COMMON_PROPS["request_retries"],
        "backoff": _COMMON_PROPS["backoff"],
        "max_retry_delay": _COMMON_PROPS["max_retry_delay"],
        # the point of this node is per-item results: rejected items go on by default
        "on_error": {
            "type": "string",
            "enum": ["fail", "route"],
            "default": "route",
            "title": "On error",
            "description": "route (default): items the shop rejects go to 'error' with the "
            "shop's message and the push goes on; fail: the first rejected item fails "
            "the node.",
        },
    },
}

_DEFAULTS = {k: p["default"] for k, p in PUSH_SCHEMA["properties"].items() if "default" in p}


def _settings(config: Mapping[str, Any]) -> dict[str, Any]:
    """The config with defaults and the preset's own defaults filled in."""
    cfg = {**_DEFAULTS, **config}
    preset = cfg["preset"] if cfg["preset"] in PRESETS else "generic"
    cfg["resource"] = cfg["resource"] or _DEFAULT_RESOURCE[preset]
    cfg["operation"] = cfg["operation"] or _DEFAULT_OPERATION[preset]
    cfg["key_field"] = cfg["key_field"] or ("sku" if preset == "generic" else "id")
    return cfg


def check_push(config: Mapping[str, Any]) -> list[ConfigProblem]:
    """Static problems of a shop.push config (what the JSON Schema cannot express)."""
    cfg = _settings(config)
    preset = cfg["preset"]
    problems: list[ConfigProblem] = []
    if preset not in PRESETS:
        return [ConfigProblem("preset", f"must be one of {', '.join(PRESETS)}")]
    if not cfg.get("connection"):
        problems.append(ConfigProblem("connection", "name the shop connection"))
    if cfg["operation"] not in OPERATIONS[preset]:
        problems.append(
            ConfigProblem(
                "operation",
                f"{TITLES[preset]} supports {', '.join(OPERATIONS[preset])}, "
                f"not {cfg['operation']!r}",
            )
        )
    if preset == "generic":
        if not cfg["url"]:
            problems.append(ConfigProblem("url", "give the URL that takes the items"))
        elif "://" in cfg["url"] and urlsplit(cfg["url"]).scheme not in ("http", "https"):
            problems.append(ConfigProblem("url", "only http and https URLs are supported"))
        elif PLACEHOLDER.search(cfg["url"]):
            problems.append(
                ConfigProblem("url", "a batch goes to one URL: record fields cannot be used")
            )
    elif cfg["url"]:
        problems.append(
            ConfigProblem("url", f"{TITLES[preset]} builds its own URL: leave url empty")
        )
    pattern = _ENTITY if preset == "shopware" else _RESOURCE
    if preset != "generic" and not pattern.match(str(cfg["resource"])):
        problems.append(
            ConfigProblem(
                "resource", f"{cfg['resource']!r} is not a {TITLES[preset]} resource name"
            )
        )
    if (
        preset == "woocommerce"
        and cfg["operation"] == "update"
        and cfg["key_field"]
        not in (
            "id",
            "sku",
        )
    ):
        problems.append(ConfigProblem("key_field", "WooCommerce updates by 'id' or 'sku'"))
    if preset == "shopify" and not _API_VERSION.match(str(cfg["api_version"])):
        problems.append(ConfigProblem("api_version", "like 2024-01"))
    if not isinstance(cfg["item"], Mapping):
        problems.append(ConfigProblem("item", "must be a JSON object"))
    return problems


# -- item templates -------------------------------------------------------------------------


def _compile(value: Any, where: str) -> Callable[[Mapping[str, Any]], Any]:
    """A function record → the template value, parsed once per run."""
    if isinstance(value, str):
        whole = PLACEHOLDER.fullmatch(value)
        if whole:
            name = whole.group(1)

            def field(record: Mapping[str, Any]) -> Any:
                try:
                    return record[name]
                except KeyError:
                    raise MissingField(where, name) from None

            return field
        template = RecordTemplate.parse(where, value)
        return template.render if template.fields else (lambda _r: value)
    if isinstance(value, dict):
        parts = [(k, _compile(v, f"{where}.{k}")) for k, v in value.items()]
        return lambda r: {k: f(r) for k, f in parts}
    if isinstance(value, list):
        items = [_compile(v, f"{where}.{i}") for i, v in enumerate(value)]
        return lambda r: [f(r) for f in items]
    return lambda _r: value


def _whole_record(record: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in record.items() if not k.startswith("_")}


def idempotency_key(scope: str, flow_id: str, node_id: str, batch: int, body: bytes) -> str:
    """The Idempotency-Key of one batch request (hex sha256)."""
    content = hashlib.sha256(body).hexdigest()
    text = "\n".join(("flowmill-shop/1", scope, flow_id, node_id, str(batch), content))
    return hashlib.sha256(text.encode()).hexdigest()


# -- connection -------------------------------------------------------------------------------


class _Lookup:
    """What ``nodes.http._client``/``_send`` need from a context, for a connection test."""

    def __init__(self, settings: Mapping[str, Any], node_type: str = "shop connection") -> None:
        self._settings = dict(settings)
        self.node_id = "connection-test"
        self.node_type = node_type
        self.logger = NodeLogger(lambda level, text: None)

    def connection(self, name: str) -> dict[str, Any]:
        return self._settings

    def check_cancelled(self) -> None:
        pass

    def sleep(self, seconds: float) -> None:
        pass


@dataclass
class _Connection:
    client: _Client
    refresh: Callable[[], None] | None  # a new Shopware token after a 401


def _connect(ctx: Any, name: str, settings: Mapping[str, Any], timeout: float) -> _Connection:
    """Auth headers for the connection; Shopware's client credentials become a token."""
    if str(settings.get("auth") or "") != "client_credentials":
        return _Connection(_client(ctx, {"connection": name}), None)
    missing = [k for k in ("base_url", "client_id", "client_secret") if not settings.get(k)]
    if missing:
        raise NodeError(
            ctx.node_id,
            f"connection {name!r}: auth client_credentials needs {', '.join(missing)}",
            ctx.node_type,
        )
    plain = _client(_Lookup({**settings, "auth": "none"}), {"connection": name})
    secret = str(settings["client_secret"])
    client = _Client(
        plain.session,
        plain.base_url,
        plain.auth_headers,
        (secret,),
        plain.sensitive,
    )

    def refresh() -> None:
        url = _join(client.base_url, "/api/oauth/token")
        body = {
            "grant_type": "client_credentials",
            "client_id": str(settings["client_id"]),
            "client_secret": secret,
        }
        try:
            response = client.session.post(url, json=body, timeout=timeout)
        except requests.RequestException as exc:
            raise NodeError(
                ctx.node_id, f"POST {_shown_url(url)}: {type(exc).__name__}", ctx.node_type
            ) from exc
        data = _json_of(response)
        token = data.get("access_token") if isinstance(data, dict) else None
        if response.status_code != 200 or not isinstance(token, str):
            message = client.mask(_message(data) or response.text[:_EXCERPT])
            error = PermanentError if response.status_code in (400, 401, 403) else NodeError
            raise error(
                ctx.node_id,
                f"POST {_shown_url(url)}: HTTP {response.status_code}: the shop gave no "
                f"token for client {settings['client_id']!r}: {message}",
                ctx.node_type,
            )
        client.auth_headers["Authorization"] = f"Bearer {token}"
        client.secrets = tuple(sorted({secret, token}, key=len, reverse=True))

    refresh()
    return _Connection(client, refresh)


def _join(base: str, path: str) -> str:
    if urlsplit(path).scheme or not base:
        return path
    return urljoin(base.rstrip("/") + "/", path.lstrip("/"))


def _json_of(response: requests.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        return None


def _message(data: Any) -> str:
    """The shop's own words from an error body (Woo, Shopware, Shopify, generic)."""
    if isinstance(data, str):
        return data
    if isinstance(data, list):
        return "; ".join(m for m in map(_message, data) if m)
    if not isinstance(data, dict):
        return ""
    if isinstance(data.get("errors"), dict):  # Shopify: {"title": ["can't be blank"]}
        return "; ".join(
            f"{k}: {', '.join(map(str, v)) if isinstance(v, list) else v}"
            for k, v in data["errors"].items()
        )
    if "errors" in data:
        return _message(data["errors"])
    if "error" in data:
        return _message(data["error"])
    for key in ("detail", "message", "title"):
        if isinstance(data.get(key), str):
            text = data[key]
            pointer = (data.get("source") or {}).get("pointer") if key == "detail" else None
            code = data.get("code") if key == "message" else None
            if pointer:
                text += f" ({pointer.rsplit('/', 1)[-1] if '/' in pointer else pointer})"
            elif isinstance(code, str) and code:
                text += f" ({code})"
            return text
    return ""


# -- pushing ----------------------------------------------------------------------------------


@dataclass
class _Answer:
    status: int
    data: Any
    text: str
    replayed: bool


class _Pusher:
    """One node run's pushing: connection, templates, counters."""

    def __init__(self, ctx: RunContext, cfg: Mapping[str, Any]) -> None:
        self.ctx = ctx
        self.cfg = cfg
        self.preset: str = cfg["preset"]
        self.resource: str = cfg["resource"]
        self.operation: str = cfg["operation"]
        self.key_field: str = cfg["key_field"]
        name = str(cfg["connection"])
        self.conn = _connect(ctx, name, ctx.connection(name), float(cfg["request_timeout"]))
        self.client = self.conn.client
        self.scope = str(cfg["idempotency_scope"] or f"run:{ctx.run_id}")
        item = cfg["item"]
        self.render = _compile(item, "item") if item else _whole_record
        self.accepted = self.rejected = self.replayed = self.requests = 0

    # -- one request ----------------------------------------------------------------------
    def send(self, method: str, path: str, body: Any, batch: int) -> _Answer:
        """One write with its Idempotency-Key; 401/403 and exhausted repeats raise."""
        data = json.dumps(body, sort_keys=True, separators=(",", ":"), default=_json_default)
        raw = data.encode()
        key = idempotency_key(self.scope, self.ctx.flow_id, self.ctx.node_id, batch, raw)
        url = _join(self.client.base_url, path)
        refreshed = False
        while True:
            headers = {
                **self.client.auth_headers,
                "Content-Type": "application/json",
                "Accept": "application/json",
                "Idempotency-Key": key,
            }
            req = _Request(method, url, headers, {}, raw)
            shown = f"{method} {_shown_url(url)}"
            self.requests += 1
            try:
                with _send(self.ctx, self.client, self.cfg, req, stream=False) as response:
                    status = response.status_code
                    text = response.text
                    answer = _Answer(
                        status,
                        _json_of(response),
                        text,
                        response.headers.get("Idempotent-Replayed", "").lower() == "true",
                    )
            except _Failed as exc:
                raise NodeError(
                    self.ctx.node_id,
                    self.client.mask(
                        f"{exc}; batch {batch} may or may not be applied: "
                        "retrying the run re-sends it"
                    ),
                    self.ctx.node_type,
                ) from exc
            if status == 401 and self.conn.refresh is not None and not refreshed:
                refreshed = True  # the Shopware token may have expired mid-run
                self.conn.refresh()
                continue
            break
        message = self.client.mask(_message(answer.data) or " ".join(text.split())[:_EXCERPT])
        if status in (401, 403):
            raise PermanentError(
                self.ctx.node_id,
                f"{shown}: HTTP {status}: {message or 'refused'} (check the credentials of "
                f"connection {self.cfg['connection']!r})",
                self.ctx.node_type,
            )
        if status == 413:
            raise PermanentError(
                self.ctx.node_id,
                f"{shown}: HTTP 413: {message or 'batch too large'} (lower batch_size)",
                self.ctx.node_type,
            )
        if status == 429 or status >= 500:
            raise NodeError(
                self.ctx.node_id,
                f"{shown}: HTTP {status} after {self.cfg['request_retries']} repeats: "
                f"{message}; batch {batch} was not applied or its answer was lost",
                self.ctx.node_type,
            )
        if answer.replayed:
            self.replayed += 1
        return answer

    # -- results ------------------------------------------------------------------------
    def ok(self, record: Mapping[str, Any], shop_id: Any, status: Any) -> dict[str, Any]:
        self.accepted += 1
        return {**record, "shop_id": shop_id, "shop_status": status}

    def reject(
        self, record: Mapping[str, Any], message: str, status: int | None, code: Any = None
    ) -> None:
        self.rejected += 1
        bad = dict(record)
        if status is not None:
            bad["_status"] = status
        if code:
            bad["shop_code"] = code
        self.ctx.reject(bad, self.client.mask(message))

    def reject_all(self, pairs: list[tuple[dict[str, Any], Any]], answer: _Answer) -> None:
        message = self.client.mask(_message(answer.data) or answer.text[:_EXCERPT])
        for record, _item in pairs:
            self.reject(
                record,
                f"{TITLES[self.preset]} refused the batch: HTTP {answer.status}: {message}",
                answer.status,
            )

    # -- presets ---------------------------------------------------------------------------
    def push(self, batch: int, pairs: list[tuple[dict[str, Any], Any]]) -> Batch:
        return getattr(self, f"_{self.preset}")(batch, pairs)

    def _woocommerce(self, batch: int, pairs: list[tuple[dict[str, Any], Any]]) -> Batch:
        base = f"/wp-json/wc/v3/{self.resource}"
        op = self.operation
        if op == "update":
            pairs = self._woo_ids(base, pairs)
            if not pairs:
                return []
        answer = self.send("POST", f"{base}/batch", {op: [item for _r, item in pairs]}, batch)
        results = answer.data.get(op) if isinstance(answer.data, dict) else None
        if answer.status >= 400 or not isinstance(results, list) or len(results) != len(pairs):
            self.reject_all(pairs, answer)
            return []
        out: Batch = []
        done = "created" if op == "create" else "updated"
        for (record, _item), result in zip(pairs, results, strict=True):
            error = result.get("error") if isinstance(result, dict) else "no result"
            if error:
                status = (
                    (error.get("data") or {}).get("status") if isinstance(error, dict) else None
                )
                code = error.get("code") if isinstance(error, dict) else None
                self.reject(record, f"WooCommerce: {_message(error)}", status or 400, code)
            else:
                out.append(self.ok(record, result.get("id"), done))
        return out

    def _woo_ids(
        self, base: str, pairs: list[tuple[dict[str, Any], Any]]
    ) -> list[tuple[dict[str, Any], Any]]:
        """Updates need ids: items without one are rejected; by sku, ids are looked up."""
        key = self.key_field
        if key == "id":
            keep = []
            for record, item in pairs:
                if item.get("id") in (None, ""):
                    self.reject(record, "item has no 'id' to update (see key_field)", None)
                else:
                    keep.append((record, item))
            return keep
        skus = sorted({str(item.get("sku")) for _r, item in pairs if item.get("sku")})
        url = _join(self.client.base_url, base)
        ids: dict[str, Any] = {}
        if skus:
            req = _Request(
                "GET",
                url,
                {**self.client.auth_headers, "Accept": "application/json"},
                {"sku": ",".join(skus), "per_page": "100"},
            )
            with _send(self.ctx, self.client, self.cfg, req, stream=False) as response:
                if response.status_code in (401, 403):
                    raise PermanentError(
                        self.ctx.node_id,
                        f"GET {_shown_url(url)}: HTTP {response.status_code}: "
                        f"{self.client.mask(_message(_json_of(response)))}",
                        self.ctx.node_type,
                    )
                found = _json_of(response) if response.status_code == 200 else None
            if not isinstance(found, list):
                raise NodeError(
                    self.ctx.node_id,
                    f"GET {_shown_url(url)}: could not look up ids by sku "
                    f"(HTTP {response.status_code})",
                    self.ctx.node_type,
                )
            ids = {str(p.get("sku")): p.get("id") for p in found if isinstance(p, dict)}
        keep = []
        for record, item in pairs:
            sku = str(item.get("sku") or "")
            if sku not in ids:
                self.reject(record, f"WooCommerce has no product with sku {sku!r}", 404)
            else:
                keep.append((record, {**item, "id": ids[sku]}))
        return keep

    def _shopware(self, batch: int, pairs: list[tuple[dict[str, Any], Any]]) -> Batch:
        entity = self.resource
        op_key = f"write-{entity}"
        while pairs:
            body = {
                op_key: {"entity": entity, "action": "upsert", "payload": [i for _r, i in pairs]}
            }
            answer = self.send("POST", "/api/_action/sync", body, batch)
            if answer.status < 300:
                written = (
                    answer.data.get("data", {}).get(entity)
                    if isinstance(answer.data, dict)
                    else None
                )
                if not isinstance(written, list) or len(written) != len(pairs):
                    written = [item.get(self.key_field) for _r, item in pairs]
                return [
                    self.ok(record, shop_id, "upserted")
                    for (record, _i), shop_id in zip(pairs, written, strict=True)
                ]
            bad = self._shopware_errors(op_key, answer, len(pairs))
            if not bad:
                self.reject_all(pairs, answer)
                return []
            # the sync is one transaction: nothing was written; send the rest again
            for index, (messages, code) in sorted(bad.items()):
                self.reject(
                    pairs[index][0], f"Shopware: {'; '.join(messages)}", answer.status, code
                )
            pairs = [p for i, p in enumerate(pairs) if i not in bad]
            if pairs:
                self.ctx.logger.info(
                    "batch %d: Shopware refused %d item(s); sending the other %d again",
                    batch,
                    len(bad),
                    len(pairs),
                )
        return []

    @staticmethod
    def _shopware_errors(
        op_key: str, answer: _Answer, count: int
    ) -> dict[int, tuple[list[str], Any]]:
        """Item index → (messages, code), when every error points at an item of the batch."""
        errors = answer.data.get("errors") if isinstance(answer.data, dict) else None
        if answer.status != 400 or not isinstance(errors, list) or not errors:
            return {}
        bad: dict[int, tuple[list[str], Any]] = {}
        prefix = f"/{op_key}/"
        for error in errors:
            pointer = (
                ((error or {}).get("source") or {}).get("pointer")
                if isinstance(error, dict)
                else None
            )
            if not isinstance(pointer, str) or not pointer.startswith(prefix):
                return {}
            index_text, _, field = pointer[len(prefix) :].partition("/")
            if not index_text.isdigit() or int(index_text) >= count:
                return {}
            messages, _code = bad.setdefault(int(index_text), ([], error.get("code")))
            detail = str(error.get("detail") or error.get("title") or "invalid")
            messages.append(f"{field}: {detail}" if field else detail)
        return bad

    def _shopify(self, batch: int, pairs: list[tuple[dict[str, Any], Any]]) -> Batch:
        out: Batch = []
        version = self.cfg["api_version"]
        name = _singular(self.resource.rsplit("/", 1)[-1])
        for record, item in pairs:
            if self.operation == "update":
                key = item.get(self.key_field)
                if key in (None, ""):
                    self.reject(record, f"item has no {self.key_field!r} to update", None)
                    continue
                path = f"/admin/api/{version}/{self.resource}/{quote(str(key), safe='')}.json"
                answer = self.send("PUT", path, {name: item}, batch)
            else:
                answer = self.send(
                    "POST", f"/admin/api/{version}/{self.resource}.json", {name: item}, batch
                )
            result = answer.data.get(name) if isinstance(answer.data, dict) else None
            if answer.status < 300 and isinstance(result, dict):
                done = "created" if self.operation == "create" else "updated"
                out.append(self.ok(record, result.get("id"), done))
            else:
                message = _message(answer.data) or answer.text[:_EXCERPT]
                self.reject(record, f"Shopify: HTTP {answer.status}: {message}", answer.status)
        return out

    def _generic(self, batch: int, pairs: list[tuple[dict[str, Any], Any]]) -> Batch:
        items = [item for _r, item in pairs]
        answer = self.send(self.cfg["method"], self.cfg["url"], items, batch)
        if answer.status >= 300:
            self.reject_all(pairs, answer)
            return []
        results = _result_list(answer.data)
        key = self.key_field
        if results is not None and all(isinstance(r, dict) and key in r for r in results):
            by_key = {str(r[key]): r for r in results}
            matched = [
                by_key.get(str(item.get(key))) if isinstance(item, dict) else None for item in items
            ]
        elif results is not None and len(results) == len(items):
            matched = list(results)
        else:  # no per-item answer: the request as a whole was accepted
            return [self.ok(record, None, answer.status) for record, _i in pairs]
        out: Batch = []
        for (record, _item), result in zip(pairs, matched, strict=True):
            if not isinstance(result, dict):
                self.reject(record, "the shop's answer has no result for this item", answer.status)
                continue
            status = result.get("status")
            failed = (
                result.get("error")
                or result.get("errors")
                or (isinstance(status, int) and status >= 400)
            )
            if failed:
                self.reject(record, _message(result) or f"status {status}", answer.status)
            else:
                out.append(
                    self.ok(record, result.get("id"), status if status is not None else "ok")
                )
        return out


def _result_list(data: Any) -> list[Any] | None:
    if isinstance(data, list):
        return data
    if isinstance(data, dict):
        for key in ("results", "items", "data"):
            if isinstance(data.get(key), list):
                return data[key]
    return None


def _singular(resource: str) -> str:
    if resource.endswith("ies"):
        return resource[:-3] + "y"
    return resource[:-1] if resource.endswith("s") else resource


# -- the node ---------------------------------------------------------------------------------


def shop_push(ctx: RunContext, config: dict[str, Any], inputs: Inputs) -> Outputs:
    """Push the records on 'in' to the shop in batches; per-item results on out/error."""
    problems = check_push(config)
    if problems:
        raise PermanentError(
            ctx.node_id, "; ".join(f"{p.field}: {p.message}" for p in problems), ctx.node_type
        )
    return {"out": _push_stream(ctx, _settings(config), inputs["in"])}


def _push_stream(ctx: RunContext, cfg: Mapping[str, Any], stream: Stream) -> Iterator[Batch]:
    preset = cfg["preset"]
    limit = BATCH_LIMITS[preset]
    size = min(int(cfg["batch_size"]), limit)

    def run() -> Iterator[Batch]:
        pusher = _Pusher(ctx, cfg)
        if int(cfg["batch_size"]) > limit:
            ctx.logger.info(
                "batch_size %s is more than %s takes per request: sending %d",
                cfg["batch_size"],
                TITLES[preset],
                size,
            )
        ctx.logger.info(
            "%s %s %s at %s in batches of %d (connection %r)",
            cfg["operation"],
            cfg["resource"] or cfg["url"],
            TITLES[preset],
            _shown_url(pusher.client.base_url) or "?",
            size,
            cfg["connection"],
        )
        number = 0
        try:
            for chunk in batched((r for b in stream for r in b), size):
                ctx.check_cancelled()
                pairs: list[tuple[dict[str, Any], Any]] = []
                for record in chunk:
                    try:
                        pairs.append((record, pusher.render(record)))
                    except (MissingField, TypeError, ValueError) as exc:
                        pusher.reject(record, str(exc), None)
                if pairs:
                    number += 1
                    out = pusher.push(number, pairs)
                    if out:
                        yield out
                ctx.progress(len(chunk))
                ctx.status(f"{pusher.accepted} accepted, {pusher.rejected} rejected")
        finally:
            pusher.client.session.close()
        replays = f"; {pusher.replayed} answer(s) replayed by the shop" if pusher.replayed else ""
        ctx.logger.info(
            "%d accepted, %d rejected in %d batch(es), %d request(s)%s",
            pusher.accepted,
            pusher.rejected,
            number,
            pusher.requests,
            replays,
        )

    return run()


# -- connection test --------------------------------------------------------------------------


def shop_connection_test(settings: dict[str, Any], timeout: float) -> str:
    """Reach the shop and log in the way its preset does; what it answered, or raise."""
    preset = str(settings.get("preset") or "generic")
    if preset not in PRESETS:
        raise FlowmillError(f"preset {preset!r} is unknown (use {', '.join(PRESETS)})")
    base = str(settings.get("base_url") or "")
    if not base:
        raise FlowmillError("the connection has no base_url")
    host = _shown_url(base)
    lookup = _Lookup(settings)
    quick = {"request_retries": 0, "backoff": 0, "max_retry_delay": 0, "request_timeout": timeout}
    try:
        conn = _connect(lookup, "shop", settings, timeout)
    except NodeError as exc:
        raise FlowmillError(f"{TITLES[preset]} at {host}: {exc.message}") from None
    client = conn.client
    if preset == "woocommerce":
        path, params = "/wp-json/wc/v3/products", {"per_page": "1"}
    elif preset == "shopware":
        path, params = "/api/_info/version", {}
    elif preset == "shopify":
        version = str(settings.get("api_version") or _DEFAULTS["api_version"])
        path, params = f"/admin/api/{version}/shop.json", {}
    else:
        path, params = str(settings.get("test_path") or ""), {}
    url = _join(base, path) if path else base
    req = _Request("GET", url, {**client.auth_headers, "Accept": "application/json"}, params)
    try:
        with _send(lookup, client, quick, req, stream=False) as response:  # type: ignore[arg-type]
            status, data, text = response.status_code, _json_of(response), response.text
    except _Failed as exc:
        raise FlowmillError(
            f"cannot reach {TITLES[preset]} at {host}: {client.mask(str(exc))}"
        ) from None
    finally:
        client.session.close()
    said = client.mask(_message(data) or " ".join(text.split())[:_EXCERPT])
    if status in (401, 403):
        raise FlowmillError(
            f"{TITLES[preset]} at {host} refused the credentials: HTTP {status}: {said}"
        )
    if status >= 300:
        raise FlowmillError(
            f"{TITLES[preset]} at {host}: GET {_shown_url(url)} answered HTTP {status}: {said}"
        )
    if preset == "woocommerce":
        return f"WooCommerce REST v3 at {host}: consumer key accepted (products listed)"
    if preset == "shopware":
        version = data.get("version") if isinstance(data, dict) else None
        return f"Shopware {version or '(version not given)'} at {host}: token granted and accepted"
    if preset == "shopify":
        shop = data.get("shop") if isinstance(data, dict) else None
        name = shop.get("name") if isinstance(shop, dict) else None
        return f"Shopify shop {name!r} at {host}: access token accepted"
    auth = str(settings.get("auth") or "none")
    with_auth = f" with {auth} auth" if auth != "none" else " without credentials"
    return f"{host} answered HTTP {status} to GET {_shown_url(url)}{with_auth}"


def _detect(settings: dict[str, Any]) -> bool:
    return settings.get("preset") in ("woocommerce", "shopware", "shopify")


# -- declarations -----------------------------------------------------------------------------

SHOP_PUSH = NodeSpec(
    type="shop.push",
    title="Shop push",
    category="shop",
    description="Send products, prices, stock or order states to a web shop in batches: "
    "WooCommerce REST v3 (batch of 100), Shopware 6 Admin API (sync), Shopify Admin REST "
    "(per item) or any JSON API. 'item' maps record fields to the shop's fields. Accepted "
    "records go to 'out' with shop_id and shop_status; rejected ones to 'error' with the "
    "shop's message. Every batch carries an Idempotency-Key that repeats re-send "
    "unchanged. 429/5xx are repeated (honouring Retry-After); refused credentials fail "
    "the node without retry.",
    inputs=("in",),
    outputs=("out",),
    config_schema=PUSH_SCHEMA,
    run=shop_push,
    check=check_push,
)

NODES = (SHOP_PUSH,)

CONNECTION_TYPES = (
    ConnectionType(
        kind="shop",
        title="Web shop",
        test=shop_connection_test,
        description="A web shop's REST API: base_url, preset (woocommerce, shopware, "
        "shopify, generic) and credentials (basic, bearer, api_key, or "
        "client_credentials with client_id/client_secret for Shopware). The test logs in "
        "and reads one small resource.",
        detect=_detect,
    ),
)
