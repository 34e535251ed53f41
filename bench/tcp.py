"""Benchmark: TCP messages in, jobs queued (``trigger.tcp``).

Run from the repository root:  python bench/tcp.py [--messages N] [--connections M]

N line-framed messages ("seq;sent_at") go over M connections at once, as fast as the
clients can send them, to a ``trigger.tcp`` listener run by a real ``ListenerHost`` on a
SQLite data directory. Measured: the time until all N jobs are queued (messages/s) and,
per message, job ``submitted_at`` minus the moment the client sent it (p50/p99). Under
full load that latency is mostly the wait in the bounded queue, so a second, light run
sends messages one every 5 ms and measures the latency alone; a third run uses batches
of 100 messages per job. Baseline, measured in the same run with the same clients: a
plain-Python selectors server that only counts lines (no parsing, no database).
"""

from __future__ import annotations

import argparse
import selectors
import shutil
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from datetime import UTC
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.measure import free_port, percentile  # noqa: E402
from engine.batch.listeners import ListenerHost  # noqa: E402
from engine.service import Flowmill  # noqa: E402


def send(port: int, n: int, connections: int, pause: float = 0.0) -> float:
    """Send n messages "seq;sent_at" over ``connections``; the time the first one left."""
    socks = [socket.create_connection(("127.0.0.1", port)) for _ in range(connections)]
    barrier = threading.Barrier(connections + 1)

    def client(c: int, sock: socket.socket) -> None:
        barrier.wait()
        for seq in range(c, n, connections):
            sock.sendall(f"{seq};{time.time():.6f}\n".encode())
            if pause:
                time.sleep(pause)
        sock.close()

    threads = [threading.Thread(target=client, args=(c, s)) for c, s in enumerate(socks)]
    for thread in threads:
        thread.start()
    started = time.time()
    barrier.wait()
    for thread in threads:
        thread.join()
    return started


def report(name: str, seconds: float, n: int, delays: list[float]) -> float:
    rate = n / seconds if seconds else float("nan")
    p50, p99 = (percentile(delays, p) * 1000 for p in (50, 99))
    print(f"{name:<44} {rate:9.0f} msg/s   p50 {p50:8.2f} ms   p99 {p99:8.2f} ms   ({n})")
    return rate


def baseline(n: int, connections: int, pause: float = 0.0) -> tuple[float, list[float]]:
    """A plain selectors server that counts lines: seconds for n, and per-line delays."""
    port = free_port()
    server = socket.create_server(("127.0.0.1", port), backlog=128)
    server.setblocking(False)
    sel = selectors.DefaultSelector()
    sel.register(server, selectors.EVENT_READ)
    delays: list[float] = []
    done = threading.Event()
    last = [0.0]

    def serve() -> None:
        buffers: dict[socket.socket, bytes] = {}
        while len(delays) < n:
            for key, _ in sel.select(0.1):
                if key.fileobj is server:
                    conn, _addr = server.accept()
                    conn.setblocking(False)
                    sel.register(conn, selectors.EVENT_READ)
                    buffers[conn] = b""
                    continue
                conn = key.fileobj  # type: ignore[assignment]
                data = conn.recv(65536)
                if not data:
                    sel.unregister(conn)
                    conn.close()
                    continue
                *lines, buffers[conn] = (buffers[conn] + data).split(b"\n")
                now = time.time()
                delays.extend(now - float(line.split(b";")[1]) for line in lines)
        last[0] = time.time()
        done.set()

    thread = threading.Thread(target=serve)
    thread.start()
    started = send(port, n, connections, pause)
    done.wait(300)
    thread.join()
    for key in list(sel.get_map().values()):
        key.fileobj.close()  # type: ignore[union-attr]
    sel.close()
    return last[0] - started, delays


def flowmill(
    data_dir: Path, n: int, connections: int, pause: float = 0.0, **config: object
) -> tuple[float, list[float]]:
    """Seconds until n messages are queued as jobs, and per-message delays to the job."""
    shutil.rmtree(data_dir, ignore_errors=True)
    port = free_port()
    with Flowmill.open(data_dir) as app:
        node = {"id": "tcp", "type": "trigger.tcp", "config": {"port": port, **config}}
        node["config"] |= {"parse": "fields", "fields": ["seq", "sent_at"]}
        app.save_flow({"format": "flowmill/1", "id": "ticker", "nodes": [node], "edges": []})
        host = ListenerHost(app)
        host.refresh()
        ctx = host.context("ticker", "tcp")
        assert ctx is not None and ctx.ready.wait(10), ctx and ctx.last_error
        per_job = int(config.get("batch_size", 0) or 1)  # type: ignore[call-overload]
        try:
            started = send(port, n, connections, pause)
            deadline = time.monotonic() + 600
            while ctx.fired * per_job < n and time.monotonic() < deadline:
                time.sleep(0.001)
            finished = time.time()
        finally:
            host.stop()
        delays = []
        for job in app.jobs.list(limit=n + 10):
            queued = job.submitted_at.astimezone(UTC).timestamp()
            trigger = job.params["_trigger"]
            for record in trigger.get("$records", [trigger]):
                delays.append(queued - float(record["sent_at"]))
    return finished - started, delays


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=5000)
    parser.add_argument("--connections", type=int, default=10)
    args = parser.parse_args()
    n, m = args.messages, args.connections
    folder = Path(tempfile.mkdtemp(prefix="flowmill-bench-tcp-"))
    runs: list[tuple[str, Callable[[], tuple[float, list[float]]], int]] = [
        (f"plain server, counts lines ({m} conns)", lambda: baseline(n, m), n),
        (
            f"trigger.tcp, 1 job per message ({m} conns)",
            lambda: flowmill(folder / "a", n, m),
            n,
        ),
        (
            f"trigger.tcp, batches of 100 ({m} conns)",
            lambda: flowmill(folder / "b", n, m, batch_size=100),
            n,
        ),
        ("plain server, light load (1 msg / 5 ms)", lambda: baseline(400, 1, 0.005), 400),
        (
            "trigger.tcp, light load (1 msg / 5 ms)",
            lambda: flowmill(folder / "c", 400, 1, 0.005),
            400,
        ),
    ]
    try:
        rates = []
        for name, run, count in runs:
            seconds, delays = run()
            rates.append(report(name, seconds, count, delays))
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    print(
        f"throughput vs plain server: 1 job per message ×{rates[1] / rates[0]:.3f}, "
        f"batches of 100 ×{rates[2] / rates[0]:.3f}"
    )


if __name__ == "__main__":
    main()
