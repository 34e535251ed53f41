"""The /live Socket.IO namespace: who may connect, what arrives, and in which order.

In-process tests use Flask-SocketIO's test client; the rest start real web processes
(``flowmill web``: gunicorn, WebSocket) and python-socketio clients, with events coming
from another process through the data directory's event socket, and two web processes
sharing events through the Redis on 127.0.0.1:6379.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import requests
import socketio

from designer.web.app import create_app
from engine.run.events import NodeProgress
from engine.service import Flowmill
from tests.conftest import DEADLINE

PASSWORD = "correct horse battery"
IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}
REDIS_URL = os.environ.get("FLOWMILL_TEST_REDIS", "redis://127.0.0.1:6379/14")


@pytest.fixture
def service(data_dir: Path) -> Iterator[Flowmill]:
    app = Flowmill.open(data_dir)
    app.users.add("viewer", PASSWORD, "viewer")
    yield app
    app.close()


@pytest.fixture
def web(service: Flowmill) -> Iterator[Any]:
    app = create_app(service, {"TESTING": True})
    yield app
    app.extensions["flowmill_live"].stop()


def _received(client: Any) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = []
    for message in client.get_received("/live"):
        assert message["name"] == "events"
        events.extend(message["args"][0])
    return events


def _wait_received(client: Any, count: int, seconds: float = DEADLINE) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = []
    deadline = time.monotonic() + seconds
    while len(events) < count and time.monotonic() < deadline:
        events.extend(_received(client))
        time.sleep(0.02)
    return events


# -- in process ---------------------------------------------------------------------------
def test_anonymous_clients_are_refused(web: Any) -> None:
    hub = web.extensions["flowmill_live"]
    client = hub.socketio.test_client(web, namespace="/live")
    assert not client.is_connected("/live")


def test_a_logged_in_browser_receives_every_event_in_order(web: Any, service: Flowmill) -> None:
    http = web.test_client()
    assert http.post("/api/login", json={"name": "viewer", "password": PASSWORD}).status_code == 200
    hub = web.extensions["flowmill_live"]
    client = hub.socketio.test_client(web, namespace="/live", flask_test_client=http)
    assert client.is_connected("/live")
    for i in range(300):
        service.bus.publish(NodeProgress(run_id="run-1", node_id="read", records=i))
    events = _wait_received(client, 300)
    assert [e["records"] for e in events] == list(range(300))
    assert {e["event"] for e in events} == {"NodeProgress"}
    client.disconnect("/live")


def test_scripts_connect_with_an_api_token_and_bad_tokens_are_refused(
    web: Any, service: Flowmill
) -> None:
    _, token = service.users.create_token("viewer", "live test")
    hub = web.extensions["flowmill_live"]
    good = hub.socketio.test_client(web, namespace="/live", auth={"token": token})
    assert good.is_connected("/live")
    bad = hub.socketio.test_client(web, namespace="/live", auth={"token": token + "x"})
    assert not bad.is_connected("/live")
    service.bus.publish(NodeProgress(run_id="r", node_id="n", records=7))
    assert [e["records"] for e in _wait_received(good, 1)] == [7]


def test_a_flow_save_through_the_api_is_announced(web: Any, service: Flowmill) -> None:
    http = web.test_client()
    login = http.post("/api/login", json={"name": "viewer", "password": PASSWORD})
    service.users.add("ed", PASSWORD, "editor")
    editor = web.test_client()
    csrf = editor.post("/api/login", json={"name": "ed", "password": PASSWORD}).json["csrf_token"]
    assert login.status_code == 200
    hub = web.extensions["flowmill_live"]
    client = hub.socketio.test_client(web, namespace="/live", flask_test_client=http)
    flow = {
        "format": "flowmill/1",
        "id": "announce",
        "nodes": [{"id": "start", "type": "trigger.manual", "config": {}}],
        "edges": [],
    }
    reply = editor.post("/api/flows", json={"flow": flow}, headers={"X-CSRF-Token": csrf})
    assert reply.status_code == 201, reply.json
    events = [e for e in _wait_received(client, 1) if e["event"] == "FlowSaved"]
    assert events == [
        {
            "event": "FlowSaved",
            "run_id": "",
            "flow_id": "announce",
            "flow_hash": reply.json["hash"],
            "by": "ed",
            "removed": False,
            "at": events[0]["at"],
            "seq": events[0]["seq"],
        }
    ]


# -- real web processes -------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class WebProcess:
    def __init__(self, data_dir: Path, extra_env: dict[str, str] | None = None) -> None:
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, "FLOWMILL_DATA_DIR": str(data_dir), **(extra_env or {})}
        env["FLOWMILL_WEB_PORT"] = str(self.port)
        self.log = data_dir.parent / f"web-{self.port}.log"
        with self.log.open("wb") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "designer.cli", "web"],
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + DEADLINE
        while time.monotonic() < deadline:
            assert self.process.poll() is None, self.log.read_text()
            try:
                if requests.get(f"{self.url}/login", timeout=1).status_code == 200:
                    return
            except requests.RequestException:
                time.sleep(0.1)
        raise AssertionError(f"web process did not start:\n{self.log.read_text()}")

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(5)


@pytest.fixture
def token(data_dir: Path) -> str:
    with Flowmill.open(data_dir) as app:
        app.users.add("viewer", PASSWORD, "viewer")
        app.users.add("ed", PASSWORD, "editor")
        _, secret = app.users.create_token("viewer", "live")
    return secret


class Listener:
    """A python-socketio client over WebSocket collecting the events of /live.

    python-socketio runs each message's handler in a thread of its own, so batches may be
    handled out of order here; ``events`` restores the order the server sent (``seq``)."""

    def __init__(self, url: str, token: str) -> None:
        self.received: list[dict[str, Any]] = []
        self.client = socketio.Client(reconnection=False)
        self.client.on("events", self.received.extend, namespace="/live")
        self.client.connect(
            url, namespaces=["/live"], auth={"token": token}, transports=["websocket"]
        )

    @property
    def events(self) -> list[dict[str, Any]]:
        return sorted(self.received, key=lambda e: e["seq"])

    def wait_for(self, predicate: Any, seconds: float = DEADLINE) -> list[dict[str, Any]]:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            found = [e for e in self.events if predicate(e)]
            if found:
                return found
            time.sleep(0.02)
        raise AssertionError(f"no matching event within {seconds} s; got {self.events[-5:]}")


def test_cross_origin_connections_are_refused(data_dir: Path, token: str) -> None:
    web = WebProcess(data_dir)
    try:
        reply = requests.get(
            f"{web.url}/socket.io/?EIO=4&transport=polling",
            headers={"Origin": "http://evil.example"},
            timeout=5,
        )
        assert reply.status_code == 400
        assert "evil.example" in reply.text or "Not an accepted origin" in reply.text
        same = requests.get(
            f"{web.url}/socket.io/?EIO=4&transport=polling",
            headers={"Origin": web.url},
            timeout=5,
        )
        assert same.status_code == 200
        assert "Access-Control-Allow-Origin" not in reply.headers
    finally:
        web.stop()


def test_events_of_worker_processes_reach_browsers_of_the_web_process(
    data_dir: Path, token: str
) -> None:
    web = WebProcess(data_dir)
    listener = Listener(web.url, token)
    try:
        # a job run by another process of this data directory (as a worker does)
        code = (
            "import sys\n"
            "from engine.service import Flowmill\n"
            "app = Flowmill.open(sys.argv[1])\n"
            "flow = {'format': 'flowmill/1', 'id': 'tiny', 'nodes': [\n"
            "  {'id': 'start', 'type': 'trigger.manual', 'config': {}}], 'edges': []}\n"
            "result = app.run_flow(flow)\n"
            "app.close()\n"
        )
        subprocess.run([sys.executable, "-c", code, str(data_dir)], check=True, timeout=60)
        finished = listener.wait_for(lambda e: e["event"] == "RunFinished")
        assert finished[0]["flow_id"] == "tiny" and finished[0]["state"] == "succeeded"
        kinds = [e["event"] for e in listener.events if e.get("run_id") == finished[0]["run_id"]]
        assert kinds[0] == "RunStarted" and kinds[-1] == "RunFinished"
        assert "NodeFinished" in kinds
    finally:
        listener.client.disconnect()
        web.stop()


def test_two_web_processes_share_every_event_through_redis(data_dir: Path, token: str) -> None:
    try:
        redis.Redis.from_url(REDIS_URL).ping()
    except redis.RedisError as exc:
        if IN_CI:
            pytest.fail(f"Redis is not reachable at {REDIS_URL}: {exc}", pytrace=False)
        pytest.skip(f"Redis is not reachable at {REDIS_URL}: {exc}")
    env = {"FLOWMILL_SOCKETIO_QUEUE": REDIS_URL}
    first = WebProcess(data_dir, env)  # receives the events of this data directory
    second = WebProcess(data_dir, env)  # gets them through Redis only
    listeners = [Listener(first.url, token), Listener(second.url, token)]
    try:
        time.sleep(0.5)  # both Redis subscriptions are up
        # 1. an event of another process (worker/CLI) reaches clients of both web processes
        with Flowmill.open(data_dir) as app:
            for i in range(50):
                app.bus.publish(NodeProgress(run_id="shared", node_id="n", records=i))
        for listener in listeners:
            listener.wait_for(lambda e: e.get("records") == 49)
            got = [e["records"] for e in listener.events if e.get("run_id") == "shared"]
            assert got == list(range(50))  # each event once, in order
        # 2. an action on the second web process reaches clients of the first
        http = requests.Session()
        login = http.post(f"{second.url}/api/login", json={"name": "ed", "password": PASSWORD})
        flow = {
            "format": "flowmill/1",
            "id": "via-second",
            "nodes": [{"id": "start", "type": "trigger.manual", "config": {}}],
            "edges": [],
        }
        reply = http.post(
            f"{second.url}/api/flows",
            json={"flow": flow},
            headers={"X-CSRF-Token": login.json()["csrf_token"]},
        )
        assert reply.status_code == 201, reply.text
        for listener in listeners:
            saved = listener.wait_for(lambda e: e["event"] == "FlowSaved")
            assert [e["flow_id"] for e in saved] == ["via-second"]
    finally:
        for listener in listeners:
            listener.client.disconnect()
        first.stop()
        second.stop()


# Twenty clients in this one test process prove the fan-out (every client, every event, in
# order, no gap); how many clients one web process serves, and how fast, is measured by
# bench/live.py (200 clients, each in its own asyncio loop): 200 threaded clients in the
# test process itself miss their pings on a loaded machine and are dropped.
CLIENTS = 20


def test_every_client_receives_all_1000_events_of_a_run_in_order(
    data_dir: Path, token: str
) -> None:
    web = WebProcess(data_dir)
    listeners: list[Listener] = []
    try:
        errors: list[Exception] = []

        def connect() -> None:
            try:
                listeners.append(Listener(web.url, token))
            except Exception as exc:  # collected: the assertion below names it
                errors.append(exc)

        threads = [threading.Thread(target=connect) for _ in range(CLIENTS)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(DEADLINE)
        assert not errors and len(listeners) == CLIENTS, errors[:3]
        with Flowmill.open(data_dir) as app:
            for i in range(1000):
                app.bus.publish(NodeProgress(run_id="big-run", node_id="read", records=i))
        deadline = time.monotonic() + DEADLINE
        while time.monotonic() < deadline:
            if all(len(x.received) >= 1000 for x in listeners):
                break
            time.sleep(0.1)
        short = [(x.client.connected, len(x.received)) for x in listeners if len(x.received) < 1000]
        assert not short, (short, web.log.read_text()[-3000:])
        for listener in listeners:
            got = [e["records"] for e in listener.events if e.get("run_id") == "big-run"]
            assert got == list(range(1000))  # all, each once, sent in the order published
            seqs = [e["seq"] for e in listener.events]
            assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))  # no gap
    finally:
        for listener in listeners:
            listener.client.disconnect()
        web.stop()
