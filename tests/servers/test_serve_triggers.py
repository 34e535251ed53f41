"""``flowmill serve`` with event triggers: a TCP message and a webhook call each run their
flow, and ``flowmill status`` shows the listeners."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import requests

from engine.service import Flowmill
from tests.conftest import DEADLINE, status_shown, wait_until

TOKEN = "ticker-hook-token-1"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _ticker(port: int, out: Path) -> dict:
    """Sales messages 'store;sku;qty' on TCP → one CSV per message in ``out``."""
    config = {"port": port, "parse": "fields", "fields": ["store", "sku", "qty"], "ack": "line"}
    return {
        "format": "flowmill/1",
        "id": "ticker",
        "nodes": [
            {"id": "tcp", "type": "trigger.tcp", "config": config},
            {
                "id": "pick",
                "type": "transform.select",
                "config": {"fields": ["store", "sku", "qty"]},
            },
            {"id": "write", "type": "file.write", "config": {"path": f"{out}/${{run_id}}.csv"}},
        ],
        "edges": [
            {"source": "tcp", "source_port": "out", "target": "pick", "target_port": "in"},
            {"source": "pick", "source_port": "out", "target": "write", "target_port": "in"},
        ],
    }


def _quote() -> dict:
    """POST /hooks/quote {qty, price} → the total, as the answer."""
    hook = {"path": "quote", "respond": "wait", "secret": {"$secret": "quote-hook"}}
    return {
        "format": "flowmill/1",
        "id": "quote",
        "nodes": [
            {"id": "hook", "type": "trigger.webhook", "config": hook},
            {
                "id": "total",
                "type": "transform.map",
                "config": {"fields": {"total": "qty * price"}},
            },
        ],
        "edges": [{"source": "hook", "source_port": "out", "target": "total", "target_port": "in"}],
    }


def _wait(check, seconds: float, what: str, log: Path):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            result = check()
        except OSError:
            result = None
        if result:
            return result
        time.sleep(0.1)
    raise AssertionError(f"{what} within {seconds} s; serve log:\n{log.read_text()}")


def test_serve_listens_for_tcp_messages_and_webhooks(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    tcp_port, web_port = _free_port(), _free_port()
    out = tmp_path / "sales"
    with Flowmill.open(data_dir) as app:
        app.set_secret("quote-hook", TOKEN)
        app.save_flow(_ticker(tcp_port, out))
        app.save_flow(_quote())
    env = {**os.environ, "FLOWMILL_DATA_DIR": str(data_dir), "FLOWMILL_WEB_PORT": str(web_port)}
    env |= {"FLOWMILL_WEB_HOST": "127.0.0.1", "FLOWMILL_FTPS_PORT": "0"}
    env |= {"FLOWMILL_WEBDAV_PORT": "0"}
    log = tmp_path / "serve.log"
    with log.open("wb") as sink:
        serve = subprocess.Popen(
            [sys.executable, "-m", "designer.cli", "serve", "--no-ftps", "--no-webdav"],
            env=env, stdout=sink, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:

        def send() -> bytes:
            with socket.create_connection(("127.0.0.1", tcp_port), timeout=5) as conn:
                conn.sendall("München;A-100;3\r\nHamburg;B-7;12\r\n".encode())
                conn.settimeout(10)
                replies = b""
                while replies.count(b"\n") < 2:
                    chunk = conn.recv(100)
                    if not chunk:
                        break
                    replies += chunk
                return replies

        assert _wait(send, DEADLINE, "the TCP trigger answered", log) == b"ACK\nACK\n"

        with Flowmill.open(data_dir) as app:
            _wait(
                lambda: sum(j.state == "succeeded" for j in app.jobs.list(flow_id="ticker")) == 2,
                DEADLINE,
                "both ticker jobs succeeded",
                log,
            )
        written = sorted(p.read_text(encoding="utf-8") for p in out.glob("*.csv"))
        assert written == ["store,sku,qty\nHamburg,B-7,12\n", "store,sku,qty\nMünchen,A-100,3\n"]

        url = f"http://127.0.0.1:{web_port}/hooks/quote"
        _wait(lambda: requests.get(url, timeout=5).status_code == 405, DEADLINE, "web app up", log)
        refused = requests.post(url, json={"qty": 2, "price": 4.5}, timeout=30)
        assert refused.status_code == 401
        answer = requests.post(
            url, json={"qty": 2, "price": 4.5}, headers={"X-Flowmill-Token": TOKEN}, timeout=60
        )
        assert answer.status_code == 200, answer.text
        assert answer.json() == {"qty": 2, "price": 4.5, "total": 9.0}

        # the listener status is rewritten every 2 s: wait for the one that counts both jobs
        expected = "trigger ticker/tcp (trigger.tcp): listening, 2 jobs started"
        wait_until(lambda: expected in status_shown(env), what=expected, interval=0.5)
    finally:
        serve.send_signal(signal.SIGTERM)
        serve.wait(30)
    assert serve.returncode == 0, log.read_text()
    assert TOKEN not in log.read_text()
