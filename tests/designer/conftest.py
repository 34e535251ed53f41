"""Fixtures of the web app tests: a service with one user per role, the Flask app, and
browser-like clients that log in, keep the cookie and send the CSRF header."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from designer.web.app import create_app
from engine.service import Flowmill

PASSWORD = "correct horse battery"
ROLES = ("admin", "editor", "operator", "viewer")


@pytest.fixture
def service(data_dir: Path) -> Iterator[Flowmill]:
    """A fresh installation with the users admin, editor, operator and viewer."""
    app = Flowmill.open(data_dir)
    for role in ROLES:
        app.users.add(role, PASSWORD, role)
    yield app
    app.close()


@pytest.fixture
def web(service: Flowmill) -> Iterator[Any]:
    app = create_app(service, {"TESTING": True})
    yield app
    live = app.extensions.get("flowmill_live")
    if live is not None:
        live.stop()


class Client:
    """A browser-like session: logs in, keeps the cookie, sends the CSRF header."""

    def __init__(self, web: Any, role: str | None) -> None:
        self.http = web.test_client()
        self.csrf = ""
        if role:
            reply = self.http.post("/api/login", json={"name": role, "password": PASSWORD})
            assert reply.status_code == 200, reply.json
            self.csrf = reply.json["csrf_token"]

    def get(self, path: str, **kw: Any) -> Any:
        return self.http.get(path, **kw)

    def send(self, method: str, path: str, body: Any = None, csrf: bool = True, **kw: Any) -> Any:
        headers = kw.pop("headers", {})
        if csrf:
            headers["X-CSRF-Token"] = self.csrf
        if "data" in kw:  # a form upload: the test client sets its multipart content type
            return self.http.open(path, method=method, headers=headers, **kw)
        return self.http.open(path, method=method, json=body, headers=headers, **kw)


@pytest.fixture
def as_role(web: Any) -> Callable[[str | None], Client]:
    """``as_role("editor")`` is a logged-in client; ``as_role(None)`` an anonymous one."""
    return lambda role: Client(web, role)
