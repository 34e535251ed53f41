"""The HTML pages: login, editor and dashboard (blueprints ``auth``, ``editor``, ``dashboard``).

Pages are static shells; everything they show comes from ``/api`` and ``/live``, so the
browser and scripts see the same data through the same permission checks. A page asked
for without a session redirects to the login page.
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, redirect, render_template, request, session, url_for

from designer.web import auth

__all__ = ["editor_bp", "dashboard_bp", "register"]

editor_bp = Blueprint("editor", __name__)
dashboard_bp = Blueprint("dashboard", __name__)


def _login_first() -> Any:
    if not session.get("user"):
        return redirect(url_for("auth.login_page", next=request.full_path.rstrip("?")))
    return None


editor_bp.before_request(_login_first)
dashboard_bp.before_request(_login_first)


@auth.bp.get("/login")
def login_page() -> Any:
    return render_template("login.html", page="login")


@dashboard_bp.get("/")
def home() -> Any:
    return redirect(url_for("dashboard.dashboard"))


@dashboard_bp.get("/dashboard")
def dashboard() -> Any:
    return render_template("dashboard.html", page="dashboard")


@editor_bp.get("/editor")
@editor_bp.get("/editor/<flow_id>")
def editor(flow_id: str | None = None) -> Any:
    return render_template("editor.html", page="editor", flow_id=flow_id or "")


def register(app: Any) -> None:
    app.register_blueprint(auth.bp)
    app.register_blueprint(editor_bp)
    app.register_blueprint(dashboard_bp)
