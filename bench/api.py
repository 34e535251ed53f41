"""Benchmark: ``POST /api/flows/<id>/run`` of a 3-node flow, one client, every job persisted.

Run from the repository root:  python bench/api.py [--requests N]

A ``flowmill web`` process (gunicorn gthread, SQLite store in a fresh data directory)
answers a sequential ``requests`` client with an API token; each request validates the
parameters, writes the job (committed) and its log line, and publishes ``JobChanged``.
Printed: runs/s and p50/p99 latency. Baseline, measured in the same run: a bare Flask
endpoint (``POST`` returning a small JSON object) served by the same gunicorn settings,
to show what authentication, validation and persisting cost on top of the web stack.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.measure import free_port, percentile  # noqa: E402
from engine.service import Flowmill  # noqa: E402

FLOW = {
    "format": "flowmill/1",
    "id": "bench-api",
    "params": {"day": {"type": "string", "default": "2026-11-21"}},
    "nodes": [
        {"id": "start", "type": "trigger.manual", "config": {}},
        {"id": "wait", "type": "util.delay", "config": {"seconds": 0}},
        {"id": "keep", "type": "transform.filter", "config": {"condition": "true"}},
    ],
    "edges": [
        {"source": "start", "source_port": "out", "target": "wait", "target_port": "in"},
        {"source": "wait", "source_port": "out", "target": "keep", "target_port": "in"},
    ],
}

BARE_APP = textwrap.dedent(
    """
    import socket, sys
    from flask import Flask, jsonify, request
    from gunicorn.app.base import BaseApplication

    app = Flask("bare")

    @app.post("/run")
    def run():
        return jsonify({"id": 1, "state": "queued", "params": request.get_json()}), 201

    class Bare(BaseApplication):
        def load_config(self):
            self.cfg.set("bind", ["127.0.0.1:" + sys.argv[1]])
            self.cfg.set("workers", 1)
            self.cfg.set("worker_class", "gthread")
            self.cfg.set("threads", 256)
            self.cfg.set("loglevel", "warning")

        def load(self):
            return app

    Bare().run()
    """
)


def wait_port(port: int) -> None:
    deadline = time.monotonic() + 30
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise SystemExit(f"nothing answers on port {port}") from None
            time.sleep(0.1)


def measure(name: str, url: str, headers: dict[str, str], n: int) -> dict[str, float]:
    http = requests.Session()
    http.headers.update(headers)
    body = {"params": {"day": "2026-11-20"}}
    for _ in range(20):  # warm up
        http.post(url, json=body).raise_for_status()
    latencies = []
    began = time.perf_counter()
    for _ in range(n):
        start = time.perf_counter()
        reply = http.post(url, json=body)
        latencies.append(time.perf_counter() - start)
        if reply.status_code != 201:
            raise SystemExit(f"{name}: {reply.status_code} {reply.text}")
    seconds = time.perf_counter() - began
    figures = {
        "per_s": n / seconds,
        "p50_ms": percentile(latencies, 50) * 1000,
        "p99_ms": percentile(latencies, 99) * 1000,
    }
    print(
        f"{name:<34} {figures['per_s']:8,.0f} req/s   p50 {figures['p50_ms']:6.2f} ms   "
        f"p99 {figures['p99_ms']:6.2f} ms"
    )
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=1000)
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="flowmill-bench-api-"))
    data_dir = folder / "data"
    processes: list[subprocess.Popen[bytes]] = []
    try:
        bare_port = free_port()
        processes.append(subprocess.Popen([sys.executable, "-c", BARE_APP, str(bare_port)]))
        with Flowmill.open(data_dir) as app:
            app.users.add("bench", "bench password 123", "editor")
            _, token = app.users.create_token("bench", "bench/api.py")
            app.save_flow(FLOW, by="bench")
        port = free_port()
        env = {**os.environ, "FLOWMILL_DATA_DIR": str(data_dir), "FLOWMILL_WEB_PORT": str(port)}
        processes.append(
            subprocess.Popen(
                [sys.executable, "-m", "designer.cli", "web"], env=env, stdout=subprocess.DEVNULL
            )
        )
        wait_port(bare_port)
        wait_port(port)
        print(f"{args.requests} sequential POSTs, one client, SQLite store")
        bare = measure(
            "bare Flask endpoint (gunicorn)", f"http://127.0.0.1:{bare_port}/run", {}, args.requests
        )
        ours = measure(
            "POST /api/flows/bench-api/run",
            f"http://127.0.0.1:{port}/api/flows/bench-api/run",
            {"Authorization": f"Bearer {token}"},
            args.requests,
        )
        with Flowmill.open(data_dir) as app:
            persisted = len(app.jobs.list(flow_id="bench-api", limit=args.requests + 100))
        print(f"jobs persisted: {persisted} (expected {args.requests + 20})")
        print(
            f"ratio to the bare endpoint: throughput ×{ours['per_s'] / bare['per_s']:.2f}, "
            f"p99 ×{ours['p99_ms'] / bare['p99_ms']:.1f}"
        )
    finally:
        for process in processes:
            process.terminate()
            process.wait(15)
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
