"""HTTP nodes: call a web API per record (or per batch of records) and download files.

URL, header, query and path templates read record fields with ``${record.name}``; flow
params and built-ins (``${data_dir}``) are filled in by the executor before the node runs.
The ``record.`` prefix keeps field names apart from params, so flow validation does not
report them as unknown placeholders (a bare ``${name}`` left over is read from the record
too, but validation flags it). Values are inserted as text, never
evaluated; in URLs they are percent-encoded, so a field cannot add path segments or query
parameters.

Credentials come from a named connection only. Every secret the connection holds is masked
as ``***`` in log lines, error messages and output records, and URLs are shown without their
query string, which is where API keys like to hide.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import re
import secrets as token
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import date, datetime
from decimal import Decimal
from email.utils import parsedate_to_datetime
from itertools import chain
from pathlib import Path
from types import SimpleNamespace
from typing import Any
from urllib.parse import quote, urljoin, urlsplit, urlunsplit

import requests

from engine.errors import FlowmillError, NodeError, PermanentError
from engine.spec import (
    Batch,
    ConfigProblem,
    ConnectionType,
    Inputs,
    NodeSpec,
    Outputs,
    RunContext,
    Stream,
    batched,
)
from nodes.templates import MissingField, RecordTemplate

__all__ = [
    "CONNECTION_TYPES",
    "HTTP_REQUEST",
    "HTTP_DOWNLOAD",
    "NODES",
    "REQUEST_SCHEMA",
    "DOWNLOAD_SCHEMA",
    "check_request",
    "check_download",
    "http_request",
    "http_download",
]

METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE", "HEAD")
AUTH_KINDS = ("none", "basic", "bearer", "api_key")
_SCHEME = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*)://")
_CHUNK = 1 << 16
_EXCERPT = 200
# header names whose values are credentials, whatever the connection says
_SENSITIVE_HEADERS = frozenset({"authorization", "proxy-authorization", "cookie", "x-api-key"})

# -- schemas ------------------------------------------------------------------------------

_CONNECTION_PROP: dict[str, Any] = {
    "type": "string",
    "format": "connection",
    "default": "",
    "title": "Connection",
    "description": "Stored connection with 'base_url' and credentials: 'auth' is basic "
    "(user, password), bearer (token) or api_key (api_key, sent in the header named "
    "'api_key_header', default X-API-Key). Empty: no authentication.",
}

_COMMON_PROPS: dict[str, dict[str, Any]] = {
    "connection": _CONNECTION_PROP,
    "url": {
        "type": "string",
        "minLength": 1,
        "title": "URL",
        "description": "Absolute URL, or a path relative to the connection's base_url. "
        "${record.field} inserts a record field, percent-encoded, e.g. "
        "'/orders/${record.order_id}'.",
    },
    "headers": {
        "type": "object",
        "default": {},
        "title": "Headers",
        "description": 'Header name → value template, e.g. {"Accept": "application/json"}.',
        "additionalProperties": {"type": "string"},
    },
    "query": {
        "type": "object",
        "default": {},
        "title": "Query parameters",
        "description": "Parameter name → value template; values are URL-encoded.",
        "additionalProperties": {"type": "string"},
    },
    "request_timeout": {
        "type": "number",
        "exclusiveMinimum": 0,
        "maximum": 3600,
        "default": 30,
        "title": "Request timeout (s)",
        "description": "Seconds to wait for the server to connect or send data.",
    },
    "request_retries": {
        "type": "integer",
        "minimum": 0,
        "maximum": 10,
        "default": 3,
        "title": "Request retries",
        "description": "How often to repeat a request answered with 429 or 5xx. Other "
        "errors (4xx, failed authentication) are permanent and never retried.",
    },
    "backoff": {
        "type": "number",
        "minimum": 0,
        "maximum": 600,
        "default": 1,
        "title": "Backoff (s)",
        "description": "Seconds before the first repeat; doubles with every further one. "
        "A Retry-After header from the server takes precedence.",
    },
    "max_retry_delay": {
        "type": "number",
        "minimum": 0,
        "maximum": 3600,
        "default": 60,
        "title": "Longest retry wait (s)",
        "description": "Upper limit for one wait between repeats, also for Retry-After.",
    },
}

REQUEST_SCHEMA: dict[str, Any] = {
    "type": "object",
    "title": "HTTP request",
    "additionalProperties": False,
    "required": ["url"],
    "properties": {
        **_COMMON_PROPS,
        "method": {
            "type": "string",
            "enum": list(METHODS),
            "default": "GET",
            "title": "Method",
            "description": "HTTP method.",
        },
        "body": {
            "type": "string",
            "enum": ["none", "json", "form"],
            "default": "none",
            "title": "Body",
            "description": "none: no body; json: the record as a JSON object (a JSON array "
            "of records when batch_size > 1); form: the record as form fields.",
        },
        "body_fields": {
            "type": "array",
            "default": [],
            "items": {"type": "string", "minLength": 1},
            "title": "Body fields",
            "description": "Record fields to send in the body; empty sends every field.",
        },
        "batch_size": {
            "type": "integer",
            "minimum": 1,
            "maximum": 10000,
            "default": 1,
            "title": "Records per request",
            "description": "1: one request per record, the response is added to the record. "
            "More: one request per group of records with a JSON array body; each response "
            "gives one output record {records, response}.",
        },
        "into": {
            "type": "string",
            "minLength": 1,
            "default": "response",
            "title": "Response field",
            "description": "Field that receives {status, headers, body}; a JSON body is "
            "parsed, any other body is text.",
        },
        "fail_on_status": {
            "type": "boolean",
            "default": True,
            "title": "Fail on HTTP errors",
            "description": "On: a 4xx/5xx answer makes the record bad (see 'On error'). "
            "Off: it is passed on like any other response.",
        },
        "max_response_bytes": {
            "type": "integer",
            "minimum": 1,
            "default": 10_000_000,
            "title": "Largest response (bytes)",
            "description": "A bigger response body makes the record bad; use http.download "
            "for files.",
        },
    },
}

DOWNLOAD_SCHEMA: dict[str, Any] = {
    "type": "object",
    "title": "HTTP download",
    "additionalProperties": False,
    "required": ["url", "path"],
    "properties": {
        **_COMMON_PROPS,
        "path": {
            "type": "string",
            "minLength": 1,
            "title": "Path",
            "description": "File to write, e.g. '${data_dir}/invoices/${record.id}.pdf'. "
            "'~' is expanded, relative paths are relative to the working directory, "
            "missing folders are created. A record field may not contain '/' or '..'.",
        },
        "max_bytes": {
            "type": "integer",
            "minimum": 1,
            "default": 1_000_000_000,
            "title": "Largest file (bytes)",
            "description": "A bigger download is stopped and its partial file deleted.",
        },
        "content_types": {
            "type": "array",
            "default": [],
            "items": {"type": "string", "minLength": 1},
            "examples": [["application/pdf"], ["text/*", "application/json"]],
            "title": "Allowed content types",
            "description": "Content-Type values to accept ('type/*' for a family); empty "
            "accepts any.",
        },
        "overwrite": {
            "type": "boolean",
            "default": True,
            "title": "Overwrite",
            "description": "Replace an existing file. Off: the record is bad if it exists.",
        },
    },
}


def _defaults(schema: Mapping[str, Any]) -> dict[str, Any]:
    return {k: p["default"] for k, p in schema["properties"].items() if "default" in p}


_REQUEST_DEFAULTS = _defaults(REQUEST_SCHEMA)
_DOWNLOAD_DEFAULTS = _defaults(DOWNLOAD_SCHEMA)


# -- templates ----------------------------------------------------------------------------


def _url_part(text: str) -> str:
    return quote(text, safe="")


def _path_part(text: str) -> str:
    # a record value names one file or folder, never a way out of the configured folder
    if "/" in text or "\\" in text or text in ("", ".", ".."):
        raise ValueError(f"{text!r} cannot be part of a file name")
    return text


# -- connection and secrets ---------------------------------------------------------------


@dataclass
class _Client:
    """One node run's session, base URL, auth headers and the secrets to mask."""

    session: requests.Session
    base_url: str
    auth_headers: dict[str, str]
    secrets: tuple[str, ...]
    sensitive: frozenset[str] = field(default=_SENSITIVE_HEADERS)

    def mask(self, text: str) -> str:
        for secret in self.secrets:
            if secret in text:
                text = text.replace(secret, "***")
        return text


def _reject_failed(
    ctx: RunContext, client: _Client, record: Mapping[str, Any], exc: _Failed
) -> None:
    """A request that failed: the record goes on (error port) with the status, masked."""
    bad = dict(record)
    message = client.mask(str(exc))
    if exc.status is not None:
        bad["_status"] = exc.status
    if exc.status is not None and 400 <= exc.status < 500 and exc.status not in (408, 429):
        # the partner refused this request (auth, payload): the same request fails again,
        # so the node's retries are not spent on it
        ctx.reject(bad, PermanentError(ctx.node_id, message, ctx.node_type))
    else:
        ctx.reject(bad, message)


def _error(ctx: RunContext, message: str) -> NodeError:
    return NodeError(ctx.node_id, message, ctx.node_type)


def _client(ctx: RunContext, config: Mapping[str, Any]) -> _Client:
    name = config.get("connection") or ""
    session = requests.Session()
    session.trust_env = False  # no ~/.netrc credentials or proxies slipping in unseen
    if not name:
        return _Client(session, "", {}, ())
    settings = ctx.connection(name)
    kind = str(settings.get("auth") or "none")
    if kind not in AUTH_KINDS:
        raise _error(
            ctx, f"connection {name!r}: unknown auth {kind!r} (use {', '.join(AUTH_KINDS)})"
        )
    values = [str(settings[k]) for k in ("password", "token", "api_key") if settings.get(k)]
    headers: dict[str, str] = {}
    sensitive = set(_SENSITIVE_HEADERS)

    def need(*keys: str) -> list[str]:
        missing = [k for k in keys if not settings.get(k)]
        if missing:
            raise _error(ctx, f"connection {name!r}: auth {kind} needs {', '.join(missing)}")
        return [str(settings[k]) for k in keys]

    if kind == "basic":
        user, password = need("user", "password")
        encoded = base64.b64encode(f"{user}:{password}".encode()).decode("ascii")
        headers["Authorization"] = f"Basic {encoded}"
        values.append(encoded)
    elif kind == "bearer":
        (secret,) = need("token")
        headers["Authorization"] = f"Bearer {secret}"
    elif kind == "api_key":
        (secret,) = need("api_key")
        header = str(settings.get("api_key_header") or "X-API-Key")
        headers[header] = secret
        sensitive.add(header.lower())
    for key, value in (settings.get("headers") or {}).items():
        headers.setdefault(str(key), str(value))
    # longest first, so a secret containing another is masked whole
    masked = tuple(sorted({v for v in values if v}, key=len, reverse=True))
    return _Client(
        session, str(settings.get("base_url") or ""), headers, masked, frozenset(sensitive)
    )


def _shown_url(url: str, params: Mapping[str, str] | None = None) -> str:
    """The URL for messages: no user info, no query string (API keys live there)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    query = "…" if parts.query or params else ""
    return urlunsplit((parts.scheme, host, parts.path, query, ""))


# -- sending ------------------------------------------------------------------------------


@dataclass
class _Request:
    method: str
    url: str
    headers: dict[str, str]
    params: dict[str, str]
    data: bytes | dict[str, str] | None = None


class _Failed(Exception):
    """A request failed for good; ``status`` is None when no answer came."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


def _retry_after(value: str | None) -> float | None:
    if not value:
        return None
    value = value.strip()
    # seconds, also with a fraction: Shopify sends "Retry-After: 2.0"
    if re.fullmatch(r"\d+(?:\.\d+)?", value):
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def _send(
    ctx: RunContext,
    client: _Client,
    config: Mapping[str, Any],
    req: _Request,
    *,
    stream: bool,
) -> requests.Response:
    """Send ``req``, repeating on 429/5xx only; the last answer is returned as it is."""
    retries = int(config["request_retries"])
    delay = float(config["backoff"])
    cap = float(config["max_retry_delay"])
    timeout = float(config["request_timeout"])
    shown = _shown_url(req.url, req.params)
    attempt = 0
    while True:
        attempt += 1
        ctx.check_cancelled()
        try:
            response = client.session.request(
                req.method,
                req.url,
                headers=req.headers,
                params=req.params or None,
                data=req.data,
                timeout=timeout,
                stream=stream,
                allow_redirects=True,
            )
        except requests.Timeout as exc:
            raise _Failed(f"{req.method} {shown}: no answer within {timeout:g} s") from exc
        except requests.RequestException as exc:
            # requests' own messages repeat the full URL, query secrets included
            raise _Failed(f"{req.method} {shown}: {type(exc).__name__}") from exc
        status = response.status_code
        if (status != 429 and status < 500) or attempt > retries:
            return response
        wait = _retry_after(response.headers.get("Retry-After"))
        if wait is None:
            wait = delay * 2 ** (attempt - 1)
        wait = min(wait, cap)
        response.close()
        ctx.logger.warning(
            "%s %s answered %s; repeat %d of %d in %.1f s",
            req.method,
            shown,
            status,
            attempt,
            retries,
            wait,
        )
        ctx.sleep(wait)


def _failure(client: _Client, req: _Request, response: requests.Response, excerpt: str) -> str:
    reason = f" {response.reason}" if response.reason else ""
    text = f"{req.method} {_shown_url(req.url, req.params)}: HTTP {response.status_code}{reason}"
    excerpt = " ".join(client.mask(excerpt).split())[:_EXCERPT]
    return f"{text}: {excerpt}" if excerpt else text


def _read_body(response: requests.Response, limit: int, req: _Request) -> bytes:
    chunks: list[bytes] = []
    size = 0
    for chunk in response.iter_content(_CHUNK):
        size += len(chunk)
        if size > limit:
            response.close()
            raise _Failed(
                f"{req.method} {_shown_url(req.url, req.params)}: response is larger than "
                f"max_response_bytes ({limit})",
                response.status_code,
            )
        chunks.append(chunk)
    return b"".join(chunks)


def _is_json(content_type: str) -> bool:
    kind = content_type.split(";", 1)[0].strip().lower()
    return kind == "application/json" or kind.endswith("+json")


def _decode(client: _Client, response: requests.Response, raw: bytes) -> Any:
    """The body as JSON (for a JSON content type) or text, with secrets masked."""
    if not raw:
        return None
    text = raw.decode(response.encoding or "utf-8", errors="replace")
    text = client.mask(text)
    if _is_json(response.headers.get("Content-Type", "")):
        with contextlib.suppress(ValueError):
            return json.loads(text)
    return text


def _headers_out(client: _Client, response: requests.Response) -> dict[str, str]:
    return {
        k: "***" if k.lower() in client.sensitive else client.mask(v)
        for k, v in response.headers.items()
    }


def _json_default(value: Any) -> Any:
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, bytes):
        return base64.b64encode(value).decode("ascii")
    raise TypeError(f"{type(value).__name__} cannot be sent as JSON")


def _form_value(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, dict | list):
        return json.dumps(value, default=_json_default)
    return str(value)


# -- shared request building --------------------------------------------------------------


@dataclass(frozen=True)
class _Plan:
    """The config's templates, parsed once per node run."""

    url: RecordTemplate
    headers: tuple[tuple[str, RecordTemplate], ...]
    query: tuple[tuple[str, RecordTemplate], ...]

    @classmethod
    def parse(cls, config: Mapping[str, Any]) -> _Plan:
        return cls(
            RecordTemplate.parse("url", str(config["url"]), _url_part),
            tuple(
                (k, RecordTemplate.parse(f"headers.{k}", str(v)))
                for k, v in (config.get("headers") or {}).items()
            ),
            tuple(
                (k, RecordTemplate.parse(f"query.{k}", str(v)))
                for k, v in (config.get("query") or {}).items()
            ),
        )

    def request(self, client: _Client, method: str, record: Mapping[str, Any]) -> _Request:
        url = self.url.render(record)
        if client.base_url and not urlsplit(url).scheme:
            url = urljoin(client.base_url.rstrip("/") + "/", url.lstrip("/"))
        headers = dict(client.auth_headers)
        for name, template in self.headers:
            headers[name] = template.render(record)
        params = {name: template.render(record) for name, template in self.query}
        return _Request(method, url, headers, params)


def _records(stream: Iterable[Batch]) -> Iterator[dict[str, Any]]:
    return chain.from_iterable(stream)


def _check_common(cfg: Mapping[str, Any], problems: list[ConfigProblem]) -> None:
    url = cfg.get("url")
    if not isinstance(url, str) or not url:
        problems.append(ConfigProblem("url", "give the URL to call"))
    elif (m := _SCHEME.match(url)) and m.group(1).lower() not in ("http", "https"):
        problems.append(ConfigProblem("url", "only http and https URLs are supported"))
    for key in ("headers", "query"):
        value = cfg.get(key) or {}
        if not isinstance(value, Mapping):
            problems.append(ConfigProblem(key, "must be an object of name → text"))
            continue
        for name, text in value.items():
            if not isinstance(text, str):
                problems.append(ConfigProblem(f"{key}.{name}", "must be text"))
            elif key == "headers" and ("\r" in text or "\n" in text):
                problems.append(ConfigProblem(f"{key}.{name}", "may not contain line breaks"))


def _raise_problems(ctx: RunContext, problems: list[ConfigProblem]) -> None:
    if problems:
        raise _error(ctx, "; ".join(f"{p.field}: {p.message}" for p in problems))


# -- http.request -------------------------------------------------------------------------


def check_request(config: Mapping[str, Any]) -> list[ConfigProblem]:
    """Static problems of an http.request config (what the JSON Schema cannot express)."""
    cfg = {**_REQUEST_DEFAULTS, **config}
    problems: list[ConfigProblem] = []
    _check_common(cfg, problems)
    if cfg["method"] not in METHODS:
        problems.append(ConfigProblem("method", f"must be one of {', '.join(METHODS)}"))
    if cfg["body"] not in ("none", "json", "form"):
        problems.append(ConfigProblem("body", "must be none, json or form"))
    if int(cfg["batch_size"]) > 1 and cfg["body"] == "form":
        problems.append(
            ConfigProblem("body", "a batch of records can only be sent as json (or none)")
        )
    if cfg["body"] != "none" and cfg["method"] in ("GET", "HEAD"):
        problems.append(ConfigProblem("body", f"{cfg['method']} requests carry no body"))
    return problems


def http_request(ctx: RunContext, config: dict[str, Any], inputs: Inputs) -> Outputs:
    """Call the URL once per record (or per group of records) and attach the response."""
    _raise_problems(ctx, check_request(config))
    cfg = {**_REQUEST_DEFAULTS, **config}
    stream: Stream = inputs.get("in") or ([{}],)
    return {"out": _request_stream(ctx, cfg, stream)}


def _request_stream(ctx: RunContext, cfg: Mapping[str, Any], stream: Stream) -> Iterator[Batch]:
    plan = _Plan.parse(cfg)
    client = _client(ctx, cfg)
    method = cfg["method"]
    into = cfg["into"]
    group = int(cfg["batch_size"])
    body_kind = cfg["body"]
    fields = tuple(cfg["body_fields"] or ())
    ctx.logger.info(
        "%s %s%s",
        method,
        _shown_url(str(cfg["url"])),
        f" (connection {cfg['connection']!r})" if cfg.get("connection") else "",
    )

    def body_of(record: Mapping[str, Any]) -> dict[str, Any]:
        return {f: record.get(f) for f in fields} if fields else dict(record)

    def call(record: Mapping[str, Any], body: Any) -> dict[str, Any] | None:
        """The response as a record field, or None after the record was rejected."""
        req: _Request | None = None
        try:
            req = plan.request(client, method, record)
            if body_kind == "json":
                req.data = json.dumps(body, default=_json_default).encode()
                req.headers.setdefault("Content-Type", "application/json")
            elif body_kind == "form":
                req.data = {k: _form_value(v) for k, v in body.items()}
            with _send(ctx, client, cfg, req, stream=True) as response:
                raw = _read_body(response, int(cfg["max_response_bytes"]), req)
                status = response.status_code
                if status >= 400 and cfg["fail_on_status"]:
                    excerpt = raw[: _EXCERPT * 2].decode("utf-8", errors="replace")
                    raise _Failed(_failure(client, req, response, excerpt), status)
                return {
                    "status": status,
                    "headers": _headers_out(client, response),
                    "body": _decode(client, response, raw),
                }
        except (MissingField, TypeError, ValueError) as exc:
            ctx.reject(record, client.mask(str(exc)))
        except _Failed as exc:
            _reject_failed(ctx, client, record, exc)
        return None

    def run() -> Iterator[Batch]:
        try:
            if group == 1:
                for batch in stream:
                    ctx.check_cancelled()
                    out: Batch = []
                    for record in batch:
                        response = call(record, body_of(record))
                        if response is not None:
                            out.append({**record, into: response})
                    ctx.progress(len(batch))
                    if out:
                        yield out
            else:
                for chunk in batched(_records(stream), group):
                    ctx.check_cancelled()
                    head = chunk[0]
                    response = call(head, [body_of(r) for r in chunk])
                    ctx.progress(len(chunk))
                    if response is not None:
                        yield [{"records": len(chunk), into: response}]
        finally:
            client.session.close()

    return run()


# -- http.download ------------------------------------------------------------------------


def check_download(config: Mapping[str, Any]) -> list[ConfigProblem]:
    """Static problems of an http.download config (what the JSON Schema cannot express)."""
    cfg = {**_DOWNLOAD_DEFAULTS, **config}
    problems: list[ConfigProblem] = []
    _check_common(cfg, problems)
    if not cfg.get("path"):
        problems.append(ConfigProblem("path", "give the file to write"))
    for i, kind in enumerate(cfg["content_types"] or ()):
        if not isinstance(kind, str) or "/" not in kind:
            problems.append(
                ConfigProblem(f"content_types.{i}", f"{kind!r} is not like 'type/subtype'")
            )
    return problems


def http_download(ctx: RunContext, config: dict[str, Any], inputs: Inputs) -> Outputs:
    """Fetch one file per incoming record (or one file when 'in' is not connected)."""
    _raise_problems(ctx, check_download(config))
    cfg = {**_DOWNLOAD_DEFAULTS, **config}
    stream: Stream = inputs.get("in") or ([{}],)
    return {"out": _download_stream(ctx, cfg, stream)}


def _allowed(content_type: str, allowed: tuple[str, ...]) -> bool:
    if not allowed:
        return True
    kind = content_type.split(";", 1)[0].strip().lower()
    for pattern in allowed:
        pattern = pattern.strip().lower()
        if pattern == kind or (pattern.endswith("/*") and kind.startswith(pattern[:-1])):
            return True
    return False


def _download_stream(ctx: RunContext, cfg: Mapping[str, Any], stream: Stream) -> Iterator[Batch]:
    plan = _Plan.parse(cfg)
    path_template = RecordTemplate.parse("path", str(cfg["path"]), _path_part)
    client = _client(ctx, cfg)
    limit = int(cfg["max_bytes"])
    allowed = tuple(cfg["content_types"] or ())

    def fetch(record: Mapping[str, Any]) -> dict[str, Any] | None:
        try:
            target = Path(os.path.abspath(ctx.resolve_path(path_template.render(record))))
            req = plan.request(client, "GET", record)
            if target.is_dir():
                raise _Failed(f"path: {target} is a folder")
            if not cfg["overwrite"] and os.path.lexists(target):
                raise _Failed(f"path: {target} already exists and overwrite is off")
            with _send(ctx, client, cfg, req, stream=True) as response:
                return _save(ctx, client, req, response, target, limit, allowed)
        except (MissingField, ValueError) as exc:
            ctx.reject(record, client.mask(str(exc)))
        except _Failed as exc:
            _reject_failed(ctx, client, record, exc)
        return None

    def run() -> Iterator[Batch]:
        try:
            for batch in stream:
                ctx.check_cancelled()
                out = [f for f in map(fetch, batch) if f is not None]
                ctx.progress(len(batch))
                if out:
                    yield out
        finally:
            client.session.close()

    return run()


def _save(
    ctx: RunContext,
    client: _Client,
    req: _Request,
    response: requests.Response,
    target: Path,
    limit: int,
    allowed: tuple[str, ...],
) -> dict[str, Any]:
    """Stream the body to a hidden file next to ``target``; rename it only when complete."""
    shown = f"GET {_shown_url(req.url, req.params)}"
    status = response.status_code
    if status >= 400:
        excerpt = next(response.iter_content(_EXCERPT * 2), b"").decode("utf-8", "replace")
        raise _Failed(_failure(client, req, response, excerpt), status)
    content_type = response.headers.get("Content-Type", "")
    if not _allowed(content_type, allowed):
        raise _Failed(
            f"{shown}: content type {content_type or 'none'!r} is not allowed "
            f"(content_types: {', '.join(allowed)})",
            status,
        )
    declared = response.headers.get("Content-Length", "")
    if declared.isdigit() and int(declared) > limit:
        raise _Failed(f"{shown}: {declared} bytes is more than max_bytes ({limit})", status)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise _Failed(f"path: cannot create folder {target.parent}: {exc.strerror}") from exc
    tmp = target.with_name(f".{target.name}.part-{token.token_hex(4)}")
    digest = hashlib.sha256()
    size = 0
    try:
        with open(tmp, "xb") as f:
            for chunk in response.iter_content(_CHUNK):
                size += len(chunk)
                if size > limit:
                    raise _Failed(
                        f"{shown}: download stopped after more than max_bytes ({limit}) "
                        "bytes; the partial file was deleted",
                        status,
                    )
                digest.update(chunk)
                f.write(chunk)
                ctx.check_cancelled()
        os.replace(tmp, target)
    except requests.RequestException as exc:
        raise _Failed(f"{shown}: download broke off ({type(exc).__name__})", status) from exc
    except OSError as exc:
        raise _Failed(f"path: cannot write {target}: {exc.strerror or exc}") from exc
    finally:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
    ctx.logger.info("%s → %s (%d bytes)", shown, target, size)
    return {
        "path": str(target),
        "name": target.name,
        "size": size,
        "content_type": content_type,
        "sha256": digest.hexdigest(),
    }


# -- declarations -------------------------------------------------------------------------

HTTP_REQUEST = NodeSpec(
    type="http.request",
    title="HTTP request",
    category="http",
    description="Call a web API once per record (or once per group of records with a JSON "
    "array body) and add the answer as {status, headers, body}. Credentials come from a "
    "connection (basic, bearer, API key) and never show in logs or records. 429 and 5xx "
    "answers are repeated with backoff (honouring Retry-After); other errors go to 'error' "
    "(on_error: route) with _status, or fail the node. Without 'in' it calls once.",
    inputs=("in",),
    required_inputs=(),
    outputs=("out",),
    config_schema=REQUEST_SCHEMA,
    run=http_request,
    check=check_request,
)

HTTP_DOWNLOAD = NodeSpec(
    type="http.download",
    title="HTTP download",
    category="http",
    description="Download a URL to a file, streamed, with a size limit and an allow-list of "
    "content types; a file appears under its name only when complete. 'out' gets "
    "{path, name, size, content_type, sha256} per file. Once per incoming record, or once "
    "when 'in' is not connected.",
    inputs=("in",),
    required_inputs=(),
    outputs=("out",),
    config_schema=DOWNLOAD_SCHEMA,
    run=http_download,
    check=check_download,
)

NODES = (HTTP_REQUEST, HTTP_DOWNLOAD)


# -- connection type ------------------------------------------------------------------
def try_http_connection(settings: dict[str, Any], timeout: float) -> str:
    """``flowmill connection test`` for a REST API: GET ``base_url`` (or ``base_url`` +
    ``test_path``) with the connection's auth. 401/403 fail; other answers show that the
    server is reachable, and the message says what it answered.

    Raises:
        FlowmillError: naming the URL without credentials, never a secret.
    """
    shim: Any = SimpleNamespace(
        node_id="connection test", node_type=None, connection=lambda _name: settings
    )
    try:
        client = _client(shim, {"connection": "under test"})
    except NodeError as exc:
        raise FlowmillError(exc.message) from None
    base = str(settings.get("base_url") or "")
    if not urlsplit(base).scheme.startswith("http"):
        raise FlowmillError("'base_url' must be an http:// or https:// URL")
    url = urljoin(base.rstrip("/") + "/", str(settings.get("test_path") or "").lstrip("/"))
    shown = _shown_url(url)
    try:
        response = client.session.get(
            url, headers=client.auth_headers, timeout=timeout, allow_redirects=True, stream=True
        )
        response.close()
    except requests.RequestException as exc:
        raise FlowmillError(client.mask(f"GET {shown}: {type(exc).__name__}")) from None
    finally:
        client.session.close()
    status = response.status_code
    if status in (401, 403):
        raise FlowmillError(f"GET {shown}: HTTP {status}: the credentials were refused")
    if status >= 500:
        raise FlowmillError(f"GET {shown}: HTTP {status}: the server has a problem")
    checked = "credentials accepted" if status < 400 else "reachable (credentials not checked)"
    return f"GET {shown}: HTTP {status}, {checked}"


def _looks_like_http(settings: dict[str, Any]) -> bool:
    return "preset" not in settings and str(settings.get("base_url") or "").startswith("http")


CONNECTION_TYPES = (
    ConnectionType(
        kind="http",
        title="REST API",
        test=try_http_connection,
        description="Settings: base_url, auth (none | basic | bearer | api_key) with user and "
        "password, token, or api_key and api_key_header; headers (optional); test_path "
        "(optional, what the connection test GETs below base_url).",
        detect=_looks_like_http,
    ),
)
