"""Benchmark: 5,000 queued no-op jobs through the local executor with 2 workers.

Run from the repository root:  python bench/jobs.py [--jobs N] [--store URL]

Prints jobs/s (first start to last finish) and the delay from "due with a free slot" to
"started": for each job, started_at minus the later of its due time and the moment the
worker that took it finished its previous job. Baseline, measured in the same run: the
same number of no-op tasks through a plain ``multiprocessing.Pool(2)`` (no store, no
state, no flow), to show what the bookkeeping costs. Goals (issue 3): at least 200 jobs/s
and a p99 start delay under 50 ms.
"""

from __future__ import annotations

import argparse
import multiprocessing
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.measure import percentile  # noqa: E402
from engine.batch.server import BatchServer  # noqa: E402
from engine.flows.format import write_flow  # noqa: E402
from engine.service import Flowmill  # noqa: E402

NOOP = {
    "format": "flowmill/1",
    "id": "noop",
    "nodes": [{"id": "start", "type": "trigger.manual"}],
    "edges": [],
}


def _noop(_: int) -> None:
    return None


def baseline(n: int) -> float:
    """Seconds for n no-op tasks through multiprocessing.Pool(2), pool start excluded."""
    with multiprocessing.get_context("spawn").Pool(2) as pool:
        pool.map(_noop, range(2))  # warm
        began = time.perf_counter()
        for _ in pool.imap_unordered(_noop, range(n), chunksize=1):
            pass
        return time.perf_counter() - began


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=5000)
    parser.add_argument("--store", help="store URL (default: SQLite in a temporary folder)")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="flowmill-jobs-"))
    try:
        data = work / "data"
        data.mkdir()
        toml = "[scheduler]\nmax_running = 2\npoll_interval = 0.2\n"
        if args.store:
            toml = f'[store]\nurl = "{args.store}"\n' + toml
        (data / "flowmill.toml").write_text(toml)
        write_flow(work / "noop.flow.json", NOOP)
        app = Flowmill.open(data)
        app.import_flow(work / "noop.flow.json")
        print(f"submitting {args.jobs:,} jobs ...")
        began = time.perf_counter()
        ids = [app.submit("noop").id for _ in range(args.jobs)]
        submit_s = time.perf_counter() - began
        print(f"  submitted in {submit_s:.2f} s ({args.jobs / submit_s:,.0f} submissions/s)")

        server = BatchServer(app, echo=lambda text: None)
        thread = threading.Thread(target=server.serve, daemon=True)
        thread.start()
        last = ids[-1]
        while app.jobs.get(last).state not in ("succeeded", "failed"):
            time.sleep(0.2)
        while app.jobs.counts().get("running") or app.jobs.counts().get("queued"):
            time.sleep(0.1)
        server.request_stop()
        thread.join(30)

        jobs = [app.jobs.get(i) for i in ids]
        states = {j.state for j in jobs}
        if states != {"succeeded"}:
            raise SystemExit(f"not every job succeeded: {states}")
        first = min(j.started_at for j in jobs)
        end = max(j.finished_at for j in jobs)
        wall = (end - first).total_seconds()
        free_at: dict[str, object] = {}
        delays = []
        for job in sorted(jobs, key=lambda j: j.started_at):
            if job.worker in free_at:  # a worker's first job waited for the server to start
                ready = max(job.not_before, free_at[job.worker])
                delays.append((job.started_at - ready).total_seconds() * 1000)
            free_at[job.worker] = job.finished_at
        app.close()

        base = baseline(args.jobs)
        rate = args.jobs / wall
        print(f"\n{args.jobs:,} no-op jobs, local executor, 2 workers")
        print(f"  flowmill: {wall:.2f} s, {rate:,.0f} jobs/s")
        print(
            f"  start delay with a free slot: p50 {statistics.median(delays):.1f} ms, "
            f"p99 {percentile(delays, 99):.1f} ms, max {max(delays):.1f} ms"
        )
        print(
            f"  baseline multiprocessing.Pool(2), no bookkeeping: {base:.2f} s, "
            f"{args.jobs / base:,.0f} tasks/s"
        )
        print(f"  ratio: flowmill jobs/s = {rate / (args.jobs / base):.3f}x the bare pool")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
