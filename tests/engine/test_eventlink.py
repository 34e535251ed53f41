"""Events cross processes over the data directory's datagram socket, in order."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from engine.run.eventlink import (
    MAX_DATAGRAM,
    RETRY_AFTER,
    EventReceiver,
    EventSender,
    encode_event,
    socket_path,
)
from engine.run.events import LogEmitted, NodeFinished, NodeProgress
from engine.service import Flowmill
from tests.conftest import DEADLINE, wait_until


def _collect(path: Path) -> tuple[EventReceiver, list[dict[str, Any]], threading.Event]:
    got: list[dict[str, Any]] = []
    enough = threading.Event()

    def deliver(data: dict[str, Any]) -> None:
        got.append(data)
        if data.get("records") == 999:
            enough.set()

    receiver = EventReceiver(path, deliver)
    assert receiver.start()
    return receiver, got, enough


def test_events_of_another_process_arrive_complete_and_in_order(data_dir: Path) -> None:
    path = socket_path(data_dir)
    receiver, got, enough = _collect(path)
    try:
        code = (
            "import sys\n"
            "from engine.run.events import NodeProgress\n"
            "from engine.service import Flowmill\n"
            "app = Flowmill.open(sys.argv[1])\n"
            "for i in range(1000):\n"
            "    app.bus.publish(NodeProgress(run_id='r1', node_id='n', records=i))\n"
            "app.close()\n"
        )
        subprocess.run([sys.executable, "-c", code, str(data_dir)], check=True, timeout=60)
        assert enough.wait(DEADLINE)
    finally:
        receiver.stop()
    records = [e["records"] for e in got if e["event"] == "NodeProgress"]
    assert records == list(range(1000))
    assert all(e["run_id"] == "r1" for e in got)


def test_without_a_listener_sending_is_cheap_and_harmless(data_dir: Path) -> None:
    sender = EventSender(socket_path(data_dir))
    attempts = 0
    connect = sender._connect

    def counted() -> Any:
        nonlocal attempts
        attempts += 1
        return connect()

    sender._connect = counted  # type: ignore[method-assign]
    started = time.monotonic()
    for i in range(10_000):
        sender(NodeProgress(run_id="r", node_id="n", records=i))
    seconds = time.monotonic() - started
    # one failed connect per retry pause, not one per event, however slow the machine is
    assert attempts <= 2 + seconds / RETRY_AFTER, (attempts, seconds)
    assert sender.dropped == 0
    sender.close()


def test_a_listener_that_appears_later_gets_the_events_after_the_retry_pause(
    data_dir: Path,
) -> None:
    sender = EventSender(socket_path(data_dir))
    sender(NodeProgress(run_id="r", node_id="n", records=-1))  # nobody listens yet
    receiver, got, enough = _collect(socket_path(data_dir))
    try:
        time.sleep(1.1)
        for i in range(1000):
            sender(NodeProgress(run_id="r", node_id="n", records=i))
        assert enough.wait(DEADLINE)
    finally:
        receiver.stop()
        sender.close()
    assert [e["records"] for e in got] == list(range(1000))


def test_oversized_events_lose_bulk_not_facts() -> None:
    sample = {"out": [{"text": "x" * 1000, "i": i} for i in range(200)]}
    event = NodeFinished(
        run_id="r",
        node_id="big",
        node_type="file.read",
        state="succeeded",
        seconds=1.0,
        records_in={},
        records_out={"out": 200},
        sample=sample,
        attempts=1,
    )
    raw = encode_event(event.to_dict())
    assert len(raw) <= MAX_DATAGRAM
    data = json.loads(raw)
    assert data["truncated"] is True and data["sample"] == {}
    assert data["records_out"] == {"out": 200} and data["state"] == "succeeded"
    long_line = LogEmitted(run_id="r", node_id=None, level="info", message="y" * 100_000)
    assert len(encode_event(long_line.to_dict())) <= MAX_DATAGRAM


def test_a_second_receiver_leaves_a_live_one_alone_and_replaces_a_stale_socket(
    data_dir: Path,
) -> None:
    path = socket_path(data_dir)
    first, got, _ = _collect(path)
    second = EventReceiver(path, lambda data: None)
    assert second.start() is False  # the first one is alive
    sender = EventSender(path)
    sender(NodeProgress(run_id="r", node_id="n", records=1))
    wait_until(lambda: got)
    assert got[0]["records"] == 1
    first._stopped.set()  # dies without cleaning up its socket file
    first._thread.join(2)  # type: ignore[union-attr]
    first._sock.close()  # type: ignore[union-attr]
    first._sock = None
    first.stop()
    assert path.exists()  # the stale socket file of a dead web process
    third = EventReceiver(path, lambda data: None)
    assert third.start() is True
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    assert oct(path.parent.stat().st_mode & 0o777) == "0o700"
    third.stop()
    sender.close()


def test_long_data_directories_get_a_short_private_socket_path(tmp_path: Path) -> None:
    deep = tmp_path / ("d" * 60) / ("e" * 60)
    path = socket_path(deep)
    assert len(os.fsencode(path)) <= 100
    assert path.parent.name == f"flowmill-{os.getuid()}"
    assert socket_path(deep) == path  # stable: every process finds the same socket
    assert socket_path(tmp_path / "other") != path


def test_the_service_forwards_its_events_and_stops_on_request(data_dir: Path) -> None:
    receiver, got, _ = _collect(socket_path(data_dir))
    try:
        app = Flowmill.open(data_dir)
        app.bus.publish(NodeProgress(run_id="a", node_id="n", records=1))
        app.stop_forwarding()
        app.bus.publish(NodeProgress(run_id="b", node_id="n", records=2))
        app.close()
        time.sleep(0.3)
    finally:
        receiver.stop()
    assert [e["run_id"] for e in got] == ["a"]
