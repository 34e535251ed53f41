"""``trigger.webhook``: an HTTP request to ``/hooks/<path>`` on the web port starts the flow.

The web app (designer/web/hooks.py) finds the enabled flows whose webhook node has the
request's path and method, checks the caller (a shared token or an HMAC signature of the
body, both compared in constant time), turns the body and query into the first record and
queues a job. ``respond: immediately`` answers 202 with the job id; ``respond: wait``
answers with the flow's last record once the job ended (or 202 after ``wait_seconds``).

The secret is never in the flow: ``secret`` is ``{"$secret": "NAME"}`` (``flowmill secret
set NAME``). Without one the node must say ``auth: none`` explicitly.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Mapping
from typing import Any
from urllib.parse import parse_qsl

from engine.spec import ConfigProblem, NodeSpec
from nodes.triggers import event_records

__all__ = ["NODES", "WEBHOOK", "HookRefused", "check_caller", "request_records"]

PATH_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._~-]*(/[A-Za-z0-9][A-Za-z0-9._~-]*)*$"
TOKEN_HEADER = "X-Flowmill-Token"

WEBHOOK_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["path"],
    "properties": {
        "path": {
            "type": "string",
            "pattern": PATH_PATTERN,
            "maxLength": 200,
            "title": "Path",
            "description": "The hook's address below /hooks/, e.g. 'orders/new' for "
            "POST https://server:8080/hooks/orders/new.",
        },
        "methods": {
            "type": "array",
            "items": {"type": "string", "enum": ["GET", "POST", "PUT", "PATCH"]},
            "minItems": 1,
            "uniqueItems": True,
            "default": ["POST"],
            "title": "Methods",
            "description": "HTTP methods that start the flow.",
        },
        "respond": {
            "type": "string",
            "enum": ["immediately", "wait"],
            "default": "immediately",
            "title": "Answer",
            "description": "immediately: 202 with the job id; wait: the flow's last record "
            "as JSON once the job has ended (202 with the job id after the wait time).",
        },
        "wait_seconds": {
            "type": "number",
            "minimum": 1,
            "maximum": 300,
            "default": 30,
            "title": "Wait at most (s)",
            "description": "With answer 'wait': how long the caller is kept waiting.",
        },
        "auth": {
            "type": "string",
            "enum": ["token", "hmac", "none"],
            "default": "token",
            "title": "Caller check",
            "description": "token: the caller sends the secret in the X-Flowmill-Token header "
            "(or as 'Authorization: Bearer …'); hmac: the caller signs the body with it "
            "(HMAC-SHA256, hex, optionally prefixed 'sha256='); none: anyone may call.",
        },
        "secret": {
            "type": "string",
            "title": "Secret",
            "description": 'The shared secret as {"$secret": "NAME"} (flowmill secret set '
            "NAME); never written into the flow.",
        },
        "signature_header": {
            "type": "string",
            "default": "X-Hub-Signature-256",
            "pattern": r"^[A-Za-z0-9-]{1,100}$",
            "title": "Signature header",
            "description": "With hmac: the request header that carries the signature.",
        },
        "max_body_kb": {
            "type": "integer",
            "minimum": 1,
            "maximum": 5120,
            "default": 1024,
            "title": "Largest body (KiB)",
            "description": "Longer request bodies are refused with 413.",
        },
    },
}


def check_webhook(config: dict[str, Any]) -> list[ConfigProblem]:
    problems = []
    secret = config.get("secret")
    if config.get("auth", "token") != "none":
        if secret is None:
            problems.append(
                ConfigProblem(
                    "secret",
                    'a token or hmac hook needs a secret: {"$secret": "NAME"} (or set auth '
                    "to none)",
                )
            )
        elif not (isinstance(secret, dict) and set(secret) == {"$secret"}):
            problems.append(
                ConfigProblem("secret", 'must be a stored secret {"$secret": "NAME"}, not text')
            )
    if ".." in str(config.get("path", "")).split("/"):
        problems.append(ConfigProblem("path", "no '..' segments"))
    return problems


class HookRefused(Exception):
    """The request may not start the flow; ``status`` is the HTTP answer."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def check_caller(
    config: Mapping[str, Any], secret: str | None, headers: Mapping[str, str], body: bytes
) -> None:
    """Refuse (401) a caller without the right token or signature."""
    kind = config.get("auth", "token")
    if kind == "none":
        return
    if not secret:
        raise HookRefused(503, "this hook's secret is not set on the server")
    if kind == "token":
        given = headers.get(TOKEN_HEADER) or ""
        bearer = headers.get("Authorization") or ""
        if not given and bearer.lower().startswith("bearer "):
            given = bearer[7:].strip()
        if not given or not hmac.compare_digest(given.encode(), secret.encode()):
            raise HookRefused(401, f"missing or wrong token ({TOKEN_HEADER} header)")
        return
    header = str(config.get("signature_header") or "X-Hub-Signature-256")
    signature = (headers.get(header) or "").strip()
    if signature.lower().startswith("sha256="):
        signature = signature[7:]
    expected = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    if not signature or not hmac.compare_digest(signature.lower().encode(), expected.encode()):
        raise HookRefused(401, f"missing or wrong HMAC-SHA256 signature ({header} header)")


def request_records(
    content_type: str, body: bytes, query: Mapping[str, str]
) -> dict[str, Any] | list[dict[str, Any]]:
    """The first record(s) of the run: a JSON object, a JSON array of objects (one job
    for all), form fields, or ``{"body": text}``; query parameters are added as fields
    (body fields win)."""
    kind = content_type.split(";")[0].strip().lower()
    fields: dict[str, Any] | list[dict[str, Any]]
    if not body:
        fields = {}
    elif kind == "application/json" or kind.endswith("+json"):
        try:
            value = json.loads(body)
        except (ValueError, UnicodeDecodeError) as exc:
            raise HookRefused(400, f"the body is not JSON: {exc}") from None
        if isinstance(value, dict):
            fields = value
        elif isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
            return [{**query, **item} for item in value]
        else:
            fields = {"body": value}
    elif kind == "application/x-www-form-urlencoded":
        try:
            fields = dict(parse_qsl(body.decode("utf-8"), keep_blank_values=True))
        except UnicodeDecodeError:
            raise HookRefused(400, "the form body is not UTF-8") from None
    else:
        try:
            fields = {"body": body.decode("utf-8")}
        except UnicodeDecodeError:
            raise HookRefused(415, "send JSON, a form or UTF-8 text") from None
    return {**query, **fields}


WEBHOOK = NodeSpec(
    type="trigger.webhook",
    title="Webhook",
    category="trigger",
    description="Starts a run when a partner calls /hooks/<path> on the web port. The JSON "
    "body (or form, or text) and the query become the first record; the caller is checked "
    "by a token or an HMAC signature. Answers at once with the job id, or waits and "
    "answers with the flow's last record.",
    outputs=("out",),
    config_schema=WEBHOOK_SCHEMA,
    trigger=True,
    check=check_webhook,
    run=event_records,
)

NODES = (WEBHOOK,)
