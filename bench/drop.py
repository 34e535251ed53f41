"""Benchmark: from the end of an upload to the start of its job (FTPS, WebDAV, local folder).

Run from the repository root:  python bench/drop.py [--uploads N]

Starts ``flowmill serve`` (SQLite, 4 workers, FTPS and WebDAV on free ports) with three
flows whose ``trigger.file_drop`` nodes wait for ``in/*.csv`` over FTPS, over WebDAV and
in a local folder. N small files go in one after the other by each way (ftplib with TLS,
requests, a local write-and-rename); for each, the delay is the job's ``started_at``
minus the moment the client saw the upload complete. Prints p50/p99 per way. Baseline,
measured in the same run: a plain-Python loop that polls the local folder with
``os.scandir`` every 50 ms (what a careful home-made poller achieves; the legacy batch
server polls every 30-60 s). Goal (issue 5): p50 under 100 ms.
"""

from __future__ import annotations

import argparse
import ftplib
import os
import re
import shutil
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.measure import free_port, percentile  # noqa: E402
from engine.service import Flowmill  # noqa: E402

USER, PASSWORD = "bench", "bench password 123"


def flow(flow_id: str, **config: str) -> dict:
    return {
        "format": "flowmill/1",
        "id": flow_id,
        "nodes": [
            {"id": "drop", "type": "trigger.file_drop", "config": {"pattern": "*.csv", **config}}
        ],
        "edges": [],
    }


def report(name: str, delays: list[float], expected: int) -> float:
    p50 = percentile(delays, 50) * 1000 if delays else float("nan")
    p99 = percentile(delays, 99) * 1000 if delays else float("nan")
    print(f"{name:<36} p50 {p50:7.1f} ms   p99 {p99:7.1f} ms   jobs {len(delays)}/{expected}")
    return p50


def baseline(n: int) -> float:
    """A plain poller: os.scandir every 50 ms; delay from rename to noticing."""
    folder = Path(tempfile.mkdtemp(prefix="flowmill-bench-poll-"))
    seen: dict[str, float] = {}
    stop = threading.Event()

    def poll() -> None:
        while not stop.is_set():
            for entry in os.scandir(folder):
                if entry.name.endswith(".csv") and entry.name not in seen:
                    seen[entry.name] = time.time()
            time.sleep(0.05)

    poller = threading.Thread(target=poll)
    poller.start()
    done: dict[str, float] = {}
    for i in range(n):
        temp = folder / f".{i}.tmp"
        temp.write_text("id\n1\n")
        temp.rename(folder / f"{i}.csv")
        done[f"{i}.csv"] = time.time()
        time.sleep(0.01)
    time.sleep(0.2)
    stop.set()
    poller.join()
    shutil.rmtree(folder, ignore_errors=True)
    return report("plain poller (scandir, 50 ms)", [seen[k] - done[k] for k in done], n)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--uploads", type=int, default=200)
    args = parser.parse_args()
    n = args.uploads
    base = baseline(n)
    folder = Path(tempfile.mkdtemp(prefix="flowmill-bench-drop-"))
    data_dir, local = folder / "data", folder / "local"
    local.mkdir()
    with Flowmill.open(data_dir) as app:
        app.users.add(USER, PASSWORD, "operator", file_drop=True)
        app.save_flow(flow("by-ftps", source="ftps", folder="in"))
        app.save_flow(flow("by-webdav", source="webdav", folder="in"))
        app.save_flow(flow("by-local", source="local", folder=str(local)))
    env = {
        **os.environ,
        "FLOWMILL_DATA_DIR": str(data_dir),
        "FLOWMILL_WEB_PORT": "0",
        "FLOWMILL_FTPS_PORT": str(free_port()),
        "FLOWMILL_WEBDAV_PORT": str(free_port()),
    }
    serve = subprocess.Popen(
        [sys.executable, "-m", "designer.cli", "serve"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    finished: dict[str, dict[str, float]] = {"ftps": {}, "webdav": {}, "local": {}}
    try:
        assert serve.stdout is not None
        lines: list[str] = []
        while not any("active (holds" in line for line in lines):
            line = serve.stdout.readline()
            if not line:
                raise SystemExit("flowmill serve stopped:\n" + "".join(lines))
            lines.append(line)
        threading.Thread(target=lambda: [None for _ in serve.stdout], daemon=True).start()
        text = "".join(lines)
        webdav_url = re.search(r"WebDAV: (\S+)", text).group(1).rstrip("/")  # type: ignore[union-attr]
        time.sleep(2.5)  # the dispatcher has read the flows and watches the local folder
        context = ssl.create_default_context(cafile=str(data_dir / "tls" / "cert.pem"))
        ftp = ftplib.FTP_TLS(context=context)
        ftp.connect("127.0.0.1", int(env["FLOWMILL_FTPS_PORT"]))
        ftp.login(USER, PASSWORD)
        ftp.prot_p()
        ftp.mkd("in")
        webdav = requests.Session()
        webdav.auth = (USER, PASSWORD)
        webdav.verify = str(data_dir / "tls" / "cert.pem")
        # in/ exists already: FTPS made it (one home per user on both servers)
        for i in range(n):
            name = f"f{i}.csv"
            with tempfile.TemporaryFile() as fh:
                fh.write(b"id\n1\n")
                fh.seek(0)
                ftp.storbinary(f"STOR in/{name}", fh)
            finished["ftps"][f"in/{name}"] = time.time()
            webdav.put(f"{webdav_url}/in/{name}", data=b"id\n1\n").raise_for_status()
            finished["webdav"][f"in/{name}"] = time.time()
            temp = local / f".{name}.part"
            temp.write_bytes(b"id\n1\n")
            temp.rename(local / name)
            finished["local"][name] = time.time()
            time.sleep(0.01)
        ftp.quit()
        deadline = time.monotonic() + 120
        with Flowmill.open(data_dir) as app:
            while time.monotonic() < deadline:
                jobs = app.jobs.list(limit=10 * n)
                if sum(1 for j in jobs if j.started_at) >= 3 * n:
                    break
                time.sleep(0.5)
        delays: dict[str, list[float]] = {"ftps": [], "webdav": [], "local": []}
        noticed: dict[str, list[float]] = {"ftps": [], "webdav": [], "local": []}
        for job in jobs:
            record = job.params.get("_trigger") or {}
            way = record.get("source")
            if job.started_at and way in finished and record.get("name") in finished[way]:
                done = finished[way][record["name"]]
                delays[way].append(job.started_at.astimezone(UTC).timestamp() - done)
                noticed[way].append(job.submitted_at.astimezone(UTC).timestamp() - done)
        for way in noticed:
            report(f"{way}: upload end → job queued", noticed[way], n)
        results = {
            way: report(f"{way}: upload end → job started", delays[way], n) for way in delays
        }
        queued = [(j.started_at - j.submitted_at).total_seconds() for j in jobs if j.started_at]
        print(
            f"{'all: job queued → started':<36} p50 {percentile(queued, 50) * 1000:7.1f} ms"
            f"   p99 {percentile(queued, 99) * 1000:7.1f} ms"
        )
        print(
            "ratio of p50 to the plain poller: "
            + ", ".join(f"{way} ×{p50 / base:.2f}" for way, p50 in results.items())
        )
        ok = all(p50 < 100 for p50 in results.values())
        print(f"goal p50 < 100 ms: {'met' if ok else 'NOT met'}")
        overall = statistics.median([d for way in delays.values() for d in way]) * 1000
        print(f"(median of all: {overall:.1f} ms; {datetime.now(UTC):%Y-%m-%d %H:%M} UTC)")
    finally:
        serve.terminate()
        serve.wait(30)
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
