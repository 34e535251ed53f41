"""Benchmark: 200 Socket.IO clients, 1,000 job events each, through a real web process.

Run from the repository root:  python bench/live.py [--clients N] [--events N]

A ``flowmill web`` process (gunicorn, WebSocket) serves ``/live``. A client process holds
N python-socketio asyncio clients (API token, WebSocket). This process publishes the
events of a run on its bus, one every 2 ms as a busy run does, so they travel the real
path: event socket → web process → Socket.IO → every client. Printed: delivery latency
(publish → client handler, one machine, one clock) p50/p99, deliveries per second and
lost events. Baseline, measured in the same run with the same client process layout: a
plain-Python TCP server broadcasting JSON lines to N asyncio stream clients. Goal
(issue 4): p99 under 250 ms, nothing lost.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.measure import free_port, percentile  # noqa: E402
from engine.run.events import NodeProgress  # noqa: E402
from engine.service import Flowmill  # noqa: E402

SPACING = 0.002  # seconds between published events


# -- the client process -------------------------------------------------------------------
async def _socketio_clients(url: str, token: str, count: int, events: int) -> list[float]:
    import socketio

    latencies: list[float] = []
    done = asyncio.Event()

    def on_events(batch: list[dict[str, Any]]) -> None:
        now = time.time()
        for event in batch:
            if "sent" in event:
                latencies.append(now - event["sent"])
        if len(latencies) >= count * events:
            done.set()

    clients = []
    for _ in range(count):
        client = socketio.AsyncClient(reconnection=False)
        client.on("events", on_events, namespace="/live")
        await client.connect(
            url, namespaces=["/live"], auth={"token": token}, transports=["websocket"]
        )
        clients.append(client)
    print("ready", flush=True)
    await _wait(done)
    for client in clients:
        await client.disconnect()
    return latencies


async def _tcp_clients(port: int, count: int, events: int) -> list[float]:
    latencies: list[float] = []

    async def one() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        for _ in range(events):
            line = await reader.readline()
            latencies.append(time.time() - json.loads(line)["sent"])
        writer.close()

    tasks = [asyncio.create_task(one()) for _ in range(count)]
    await asyncio.sleep(0.5)
    print("ready", flush=True)
    await asyncio.wait(tasks, timeout=120)
    return latencies


async def _wait(done: asyncio.Event) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(done.wait(), 120)


def client_main(argv: list[str]) -> None:
    kind, target, token, count, events = argv[0], argv[1], argv[2], int(argv[3]), int(argv[4])
    if kind == "socketio":
        latencies = asyncio.run(_socketio_clients(target, token, count, events))
    else:
        latencies = asyncio.run(_tcp_clients(int(target), count, events))
    print(json.dumps(latencies), flush=True)


def _clients(*args: Any) -> subprocess.Popen[str]:
    process = subprocess.Popen(
        [sys.executable, __file__, "--client", *map(str, args)],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None
    if process.stdout.readline().strip() != "ready":
        raise SystemExit("the client process did not get ready")
    return process


def _latencies(process: subprocess.Popen[str]) -> list[float]:
    assert process.stdout is not None
    line = process.stdout.readline()
    process.wait(30)
    return json.loads(line) if line else []


def report(name: str, latencies: list[float], seconds: float, expected: int) -> dict[str, float]:
    figures = {
        "p50_ms": percentile(latencies, 50) * 1000 if latencies else float("nan"),
        "p99_ms": percentile(latencies, 99) * 1000 if latencies else float("nan"),
        "per_s": len(latencies) / seconds if seconds else 0.0,
        "lost": expected - len(latencies),
    }
    print(
        f"{name:<28} p50 {figures['p50_ms']:7.1f} ms   p99 {figures['p99_ms']:7.1f} ms   "
        f"{figures['per_s']:>9,.0f} deliveries/s   lost {figures['lost']}"
    )
    return figures


# -- plain-Python baseline ----------------------------------------------------------------
def baseline(clients: int, events: int) -> dict[str, float]:
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(clients)
    conns: list[socket.socket] = []
    accepting = threading.Thread(
        target=lambda: conns.extend(server.accept()[0] for _ in range(clients))
    )
    accepting.start()
    process = _clients("tcp", server.getsockname()[1], "-", clients, events)
    accepting.join(30)
    began = time.perf_counter()
    for i in range(events):
        line = (json.dumps({"records": i, "sent": time.time()}) + "\n").encode()
        for conn in conns:
            conn.sendall(line)
        time.sleep(SPACING)
    latencies = _latencies(process)
    seconds = time.perf_counter() - began
    for conn in conns:
        conn.close()
    server.close()
    return report("plain TCP broadcast", latencies, seconds, clients * events)


# -- Flowmill -----------------------------------------------------------------------------
class _Sent(NodeProgress):
    """A NodeProgress that carries its publish time (wall clock) for the latency."""

    def to_dict(self) -> dict[str, Any]:
        data = super().to_dict()
        data["event"] = "NodeProgress"
        data["sent"] = time.time()
        return data


def flowmill(clients: int, events: int, data_dir: Path) -> dict[str, float]:
    with Flowmill.open(data_dir) as app:
        app.users.add("bench", "bench password 123", "viewer")
        _, token = app.users.create_token("bench", "bench/live.py")
    port = free_port()
    env = {**os.environ, "FLOWMILL_DATA_DIR": str(data_dir), "FLOWMILL_WEB_PORT": str(port)}
    web = subprocess.Popen(
        [sys.executable, "-m", "designer.cli", "web"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise SystemExit("flowmill web did not start") from None
                time.sleep(0.1)
        process = _clients("socketio", f"http://127.0.0.1:{port}", token, clients, events)
        with Flowmill.open(data_dir) as app:
            began = time.perf_counter()
            for i in range(events):
                app.bus.publish(_Sent(run_id="bench-run", node_id="read", records=i))
                time.sleep(SPACING)
        latencies = _latencies(process)
        seconds = time.perf_counter() - began
        return report("flowmill /live (Socket.IO)", latencies, seconds, clients * events)
    finally:
        web.terminate()
        web.wait(15)


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--client":
        client_main(sys.argv[2:])
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=200)
    parser.add_argument("--events", type=int, default=1000)
    args = parser.parse_args()
    print(f"{args.clients} clients × {args.events} events, one event every {SPACING * 1000} ms")
    base = baseline(args.clients, args.events)
    folder = Path(tempfile.mkdtemp(prefix="flowmill-bench-live-"))
    try:
        ours = flowmill(args.clients, args.events, folder / "data")
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    print(
        f"ratio to plain TCP: p50 ×{ours['p50_ms'] / base['p50_ms']:.1f}, "
        f"p99 ×{ours['p99_ms'] / base['p99_ms']:.1f}, "
        f"throughput ×{ours['per_s'] / base['per_s']:.2f}"
    )
    verdict = "met" if ours["p99_ms"] < 250 and ours["lost"] == 0 else "NOT met"
    print(f"goal p99 < 250 ms and nothing lost: {verdict}")


if __name__ == "__main__":
    main()
