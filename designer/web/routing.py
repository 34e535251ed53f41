"""API routes declared once: the Flask view, its permission and its OpenAPI entry.

``api_route`` registers the view on a blueprint and records what the OpenAPI document
needs, so ``/api/openapi.json`` cannot drift from the implementation (a test compares the
document with Flask's URL map).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import wraps
from typing import Any

from flask import Blueprint, g

__all__ = ["ApiRoute", "ROUTES", "api_route", "openapi_document"]


@dataclass(frozen=True)
class ApiRoute:
    method: str
    path: str  # Flask rule, relative to /api
    summary: str
    permission: str | None  # None: any logged-in user; "public": no login
    tag: str
    body: dict[str, Any] | None = None
    responses: dict[str, str] = field(default_factory=dict)


ROUTES: list[ApiRoute] = []


def api_route(
    bp: Blueprint,
    method: str,
    path: str,
    *,
    summary: str,
    permission: str | None,
    tag: str,
    body: dict[str, Any] | None = None,
    responses: dict[str, str] | None = None,
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Register a view; its permission is checked before it runs (403 otherwise)."""
    spec = ApiRoute(method, path, summary, permission, tag, body, responses or {})
    ROUTES.append(spec)

    def decorate(view: Callable[..., Any]) -> Callable[..., Any]:
        @wraps(view)
        def guarded(*args: Any, **kwargs: Any) -> Any:
            if permission not in (None, "public"):
                g.user.require(permission)
            return view(*args, **kwargs)

        guarded.api_route = spec  # type: ignore[attr-defined]
        bp.add_url_rule(
            path, endpoint=f"{method.lower()}_{view.__name__}", view_func=guarded, methods=[method]
        )
        return guarded

    return decorate


_PARAM = re.compile(r"<(?:(\w+):)?(\w+)>")


def openapi_path(rule: str) -> str:
    return _PARAM.sub(lambda m: "{" + m.group(2) + "}", rule)


def openapi_document(title: str, version: str) -> dict[str, Any]:
    """The OpenAPI 3.1 document of every declared route."""
    paths: dict[str, dict[str, Any]] = {}
    for route in ROUTES:
        full = "/api" + openapi_path(route.path)
        operation: dict[str, Any] = {
            "summary": route.summary,
            "tags": [route.tag],
            "operationId": f"{route.method.lower()}_{full.strip('/').replace('/', '_')}".replace(
                "{", ""
            ).replace("}", ""),
            "responses": {
                "200": {"description": "OK", "content": {"application/json": {}}},
                **{
                    code: {
                        "description": text,
                        "content": {
                            "application/json": {"schema": {"$ref": "#/components/schemas/Error"}}
                        },
                    }
                    for code, text in {
                        "400": "bad request (details say what)",
                        "401": "not logged in",
                        "403": "the role may not do this, or CSRF/origin check failed",
                        "404": "not found",
                        "409": "conflict with the current state",
                        "422": "invalid flow (details are the validation issues)",
                        **route.responses,
                    }.items()
                },
            },
        }
        if route.permission == "public":
            operation["security"] = []
        else:
            operation["x-permission"] = route.permission or "any logged-in user"
        params = []
        for kind, name in _PARAM.findall(route.path):
            params.append(
                {
                    "name": name,
                    "in": "path",
                    "required": True,
                    "schema": {"type": "integer" if kind == "int" else "string"},
                }
            )
        if params:
            operation["parameters"] = params
        if route.body is not None:
            operation["requestBody"] = {
                "required": True,
                "content": {"application/json": {"schema": route.body}},
            }
        paths.setdefault(full, {})[route.method.lower()] = operation
    return {
        "openapi": "3.1.0",
        "info": {"title": title, "version": version},
        "paths": dict(sorted(paths.items())),
        "components": {
            "securitySchemes": {
                "session": {"type": "apiKey", "in": "cookie", "name": "flowmill_session"},
                "bearer": {"type": "http", "scheme": "bearer"},
            },
            "schemas": {
                "Error": {
                    "type": "object",
                    "required": ["error"],
                    "properties": {
                        "error": {"type": "string"},
                        "details": {"type": "array"},
                    },
                }
            },
        },
        "security": [{"session": []}, {"bearer": []}],
    }
