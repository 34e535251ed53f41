"""Who is calling: session cookie (browser) or ``Authorization: Bearer`` token (scripts).

Every ``/api`` request is authenticated before its view runs. State-changing requests
authenticated by the session cookie also need the CSRF token (header ``X-CSRF-Token``,
handed out at login) and, when the browser sends an ``Origin``, the server's own origin.
Bearer requests carry no ambient credentials, so they need neither.
"""

from __future__ import annotations

import hmac
import secrets
from typing import Any

from flask import Blueprint, current_app, g, jsonify, request, session

from designer.web.errors import Refused
from designer.web.routing import api_route
from engine.access.users import AuthError

__all__ = ["bp", "authenticate_request"]

bp = Blueprint("auth", __name__)

SAFE_METHODS = {"GET", "HEAD", "OPTIONS"}
PUBLIC_ENDPOINTS = {"api.post_login", "api.get_openapi"}

LOGIN_BODY: dict[str, Any] = {
    "type": "object",
    "required": ["name", "password"],
    "additionalProperties": False,
    "properties": {"name": {"type": "string"}, "password": {"type": "string"}},
}


def _service() -> Any:
    return current_app.extensions["flowmill"]


def authenticate_request() -> None:
    """``before_request`` of the API: set ``g.user`` or refuse (401/403)."""
    if request.endpoint in PUBLIC_ENDPOINTS:
        g.user = None
        return
    header = request.headers.get("Authorization", "")
    if header.lower().startswith("bearer "):
        g.user = _service().users.user_for_token(header[7:].strip())
        g.via = "token"
        return
    name = session.get("user")
    if not name:
        raise AuthError("log in first (POST /api/login) or send Authorization: Bearer TOKEN")
    try:
        g.user = _service().users.get(name)
    except Exception as exc:  # user removed meanwhile
        session.clear()
        raise AuthError("your session has ended; log in again") from exc
    if g.user.disabled:
        session.clear()
        raise AuthError("your session has ended; log in again")
    g.via = "session"
    if request.method not in SAFE_METHODS:
        _check_origin()
        sent = request.headers.get("X-CSRF-Token", "")
        expected = session.get("csrf", "")
        if not expected or not hmac.compare_digest(sent, expected):
            raise Refused("missing or wrong X-CSRF-Token header (it comes with POST /api/login)")


def _check_origin() -> None:
    origin = request.headers.get("Origin")
    if origin is None:
        return
    own = request.host_url.rstrip("/")
    if origin.rstrip("/") != own:
        raise Refused(f"cross-origin request from {origin} refused")


def register(api: Blueprint) -> None:
    """Login and logout live under /api like the rest of the JSON interface."""

    @api_route(
        api,
        "POST",
        "/login",
        summary="Log in; sets the session cookie, returns the CSRF token",
        permission="public",
        tag="auth",
        body=LOGIN_BODY,
    )
    def login() -> Any:
        data = request.get_json(silent=True) or {}
        user = _service().users.authenticate(
            str(data.get("name", "")), str(data.get("password", ""))
        )
        session.clear()
        session["user"] = user.name
        session["csrf"] = secrets.token_urlsafe(32)
        session.permanent = True
        return jsonify({"user": user.to_dict(), "csrf_token": session["csrf"]})

    @api_route(
        api, "POST", "/logout", summary="Log out (ends the session)", permission=None, tag="auth"
    )
    def logout() -> Any:
        session.clear()
        return jsonify({"ok": True})

    @api_route(
        api,
        "GET",
        "/me",
        summary="The logged-in user and the CSRF token",
        permission=None,
        tag="auth",
    )
    def me() -> Any:
        return jsonify({"user": g.user.to_dict(), "csrf_token": session.get("csrf")})
