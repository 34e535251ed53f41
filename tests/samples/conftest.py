"""Fixtures of the sample tests: a Flowmill installation with the demo data, and a way to
run a sample from ``samples/`` as a job, the way the batch server does.

Each sample test starts the real peers its sample talks to (the stand-in shop, an SMTP
server, a MongoDB wire-protocol server, a local web server) and points the sample's
connections or params at them.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from designer.demo.data import DemoSummary, create_demo
from engine.batch.workers import run_job
from engine.queue.jobs import Job
from engine.service import Flowmill

ROOT = Path(__file__).resolve().parents[2]
SAMPLES = ROOT / "samples"


@dataclass
class Demo:
    """A service with the demo data in its data directory."""

    app: Flowmill
    data_dir: Path
    summary: DemoSummary

    def load(self, name: str) -> str:
        """Import ``samples/NAME.flow.json`` (validated, enabled); its flow id."""
        info, _ = self.app.import_flow(SAMPLES / f"{name}.flow.json")
        return info.id

    def run(self, name: str, params: dict[str, Any] | None = None, **submit: Any) -> Job:
        """Import the sample, queue one job and run it to its end in this process."""
        flow_id = self.load(name)
        job = self.app.submit(flow_id, params or {}, source="test", **submit)
        self.run_queued()
        return self.app.jobs.get(job.id)

    def run_queued(self) -> list[str]:
        """Run every queued job (in order) like a worker; their end states."""
        states = []
        while (job := self.app.jobs.claim("sample-worker")) is not None:
            states.append(run_job(self.app, job.id, "sample-worker", 5.0, threading.Event()))
        return states

    def log(self, job: Job) -> str:
        return "\n".join(self.app.job_log(job.id))


@pytest.fixture
def demo(data_dir: Path) -> Iterator[Demo]:
    """A fresh installation with ``flowmill demo init``'s data (small sizes)."""
    app = Flowmill.open(data_dir)
    summary = create_demo(data_dir, articles_count=200, service=app)
    yield Demo(app, data_dir, summary)
    app.close()
