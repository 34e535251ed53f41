"""Browser end-to-end fixtures: a real ``flowmill serve`` and Debian's Chromium, headless.

``server`` starts ``flowmill serve`` in a fresh data directory on a free port (web app,
batch server and workers, exactly as a user starts it) with the users admin, editor,
operator and viewer. ``browser`` is Debian's /usr/bin/chromium driven by Playwright (no
browser download). Screenshots go to ``build/screenshots`` (or ``FLOWMILL_SCREENSHOTS``);
the path is printed so a person can look at them.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.conftest import DEADLINE

ROOT = Path(__file__).parents[2]
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
PASSWORD = "correct horse battery"
ROLES = ("admin", "editor", "operator", "viewer")
IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}
# Every wait of a page (clicks, navigation, expect) may take this long before it fails: a
# busy CI machine renders slowly, and a wait returns as soon as its condition holds.
PAGE_DEADLINE_MS = 60_000


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Server:
    url: str
    data_dir: Path
    admin_password: str
    process: subprocess.Popen[bytes]
    log: Path
    sessions: dict[str, Any] = field(default_factory=dict)

    def api(self, user: str = "admin") -> requests.Session:
        """A logged-in requests session (CSRF header set) for ``user``."""
        if user not in self.sessions:
            http = requests.Session()
            password = self.admin_password if user == "admin" else PASSWORD
            reply = http.post(f"{self.url}/api/login", json={"name": user, "password": password})
            reply.raise_for_status()
            http.headers["X-CSRF-Token"] = reply.json()["csrf_token"]
            self.sessions[user] = http
        return self.sessions[user]

    def password(self, user: str) -> str:
        return self.admin_password if user == "admin" else PASSWORD


def _wait_for(url: str, process: subprocess.Popen[bytes], log: Path, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"flowmill serve exited ({process.returncode}):\n{log.read_text()}")
        try:
            if requests.get(url, timeout=1).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"flowmill serve did not answer within {seconds} s:\n{log.read_text()}")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    data_dir = tmp_path_factory.mktemp("e2e") / "data"
    data_dir.mkdir()
    # the users exist before the server starts, as with `flowmill user add`
    from engine.service import Flowmill

    with Flowmill.open(data_dir) as app:
        for role in ROLES:
            app.users.add(role, PASSWORD, role)
    port = free_port()
    env = {
        **os.environ,
        "FLOWMILL_DATA_DIR": str(data_dir),
        "FLOWMILL_WEB_PORT": str(port),
        "FLOWMILL_FTPS_PORT": "0",  # the file servers on ports of their own
        "FLOWMILL_WEBDAV_PORT": "0",
        "FLOWMILL_WEB_HOST": "127.0.0.1",
        "FLOWMILL_STOP_GRACE": "5",  # at the end, jobs still running are cancelled soon
    }
    log = data_dir.parent / "serve.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "designer.cli", "serve"],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=data_dir.parent,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_for(f"{url}/login", process, log, DEADLINE)
        yield Server(url, data_dir, PASSWORD, process, log)
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(DEADLINE)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)


@pytest.fixture(scope="session")
def browser() -> Iterator[Any]:
    if not Path(CHROMIUM).exists():
        message = f"{CHROMIUM} is missing (scripts/test installs Debian's chromium)"
        if IN_CI:
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    from playwright.sync_api import expect, sync_playwright

    expect.set_options(timeout=PAGE_DEADLINE_MS)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture(scope="session")
def screenshots() -> Path:
    folder = Path(os.environ.get("FLOWMILL_SCREENSHOTS", ROOT / "build" / "screenshots"))
    folder.mkdir(parents=True, exist_ok=True)
    print(f"\nscreenshots: {folder}")
    return folder


@pytest.fixture
def login_as(browser: Any, server: Server) -> Iterator[Any]:
    """``login_as(user)``: a new browser context logged in through the login page; its page.

    Console errors of every page are collected in ``page.errors`` (tests assert none)."""
    contexts: list[Any] = []

    def login(user: str) -> Any:
        context = browser.new_context(viewport={"width": 1400, "height": 900})
        context.set_default_timeout(PAGE_DEADLINE_MS)
        contexts.append(context)
        page = context.new_page()
        page.errors = []
        page.on("pageerror", lambda exc: page.errors.append(str(exc)))
        page.on(
            "console",
            lambda msg: page.errors.append(msg.text) if msg.type == "error" else None,
        )
        page.goto(f"{server.url}/login")
        page.fill("#login-name", user)
        page.fill("#login-password", server.password(user))
        page.click("button[type=submit]")
        page.wait_for_url(f"{server.url}/dashboard")
        return page

    yield login
    for context in contexts:
        context.close()
