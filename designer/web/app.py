"""The web app: ``create_app(service, config)`` wires Flask around the service layer.

Collaborators come in (the ``Flowmill`` service); nothing is built at import time. The
session key is kept in the data directory (``session.key``, mode 0600) or given by
``FLOWMILL_SESSION_KEY`` when several web processes must accept each other's cookies.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from datetime import timedelta
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from flask import Flask, Response

import designer.web.api_setup  # noqa: F401 - adds its routes to api.bp before it is registered
from designer.web import api, auth, errors, hooks, pages
from designer.web.live import LiveHub

__all__ = ["create_app", "session_key"]


def session_key(data_dir: Path) -> bytes:
    """The key that signs session cookies: from the environment or ``DATA/session.key``."""
    if os.environ.get("FLOWMILL_SESSION_KEY"):
        return os.environ["FLOWMILL_SESSION_KEY"].encode()
    path = data_dir / "session.key"
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return path.read_bytes()
    with os.fdopen(fd, "wb") as fh:
        key = os.urandom(32).hex().encode()
        fh.write(key)
    return key


def create_app(service: Any, config: Mapping[str, Any] | None = None) -> Flask:
    """The web app for ``service`` (a ``engine.service.Flowmill``): pages, API and /live.

    ``config`` may set ``FLOWMILL_SOCKETIO_QUEUE`` (default: the environment variable of
    that name) so several web processes share events through Redis.
    """
    app = Flask("designer", root_path=str(Path(__file__).parent))
    try:
        release = version("flowmill")
    except PackageNotFoundError:  # pragma: no cover - running from a plain checkout
        release = "0"
    app.config.update(
        SECRET_KEY=session_key(service.settings.data_dir),
        SESSION_COOKIE_NAME="flowmill_session",
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Lax",
        PERMANENT_SESSION_LIFETIME=timedelta(hours=12),
        MAX_CONTENT_LENGTH=6 * 1024 * 1024,  # a flow is at most 5 MiB
        FLOWMILL_VERSION=release,
    )
    app.config.update(config or {})
    app.json.sort_keys = False  # config schemas keep the field order their node declares
    app.extensions["flowmill"] = service
    errors.install(app)
    app.register_blueprint(api.bp)
    app.register_blueprint(hooks.bp)
    pages.register(app)
    queue_url = app.config.get("FLOWMILL_SOCKETIO_QUEUE", os.environ.get("FLOWMILL_SOCKETIO_QUEUE"))
    app.extensions["flowmill_live"] = LiveHub(app, service, queue_url)

    @app.after_request
    def security_headers(response: Response) -> Response:
        # scripts and styles only from this server; no framing (clickjacking)
        response.headers.setdefault(
            "Content-Security-Policy",
            "default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; "
            "connect-src 'self'; frame-ancestors 'none'; base-uri 'self'; form-action 'self'",
        )
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault("X-Frame-Options", "DENY")
        response.headers.setdefault("Referrer-Policy", "same-origin")
        return response

    @app.get("/metrics")
    def metrics() -> Response:
        auth.authenticate_request()
        from flask import g

        g.user.require("status.read")
        return Response(api.prometheus_text(service), mimetype="text/plain; version=0.0.4")

    return app
