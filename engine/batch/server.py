"""The batch server loop: lease, request and control files, expiry, lost workers, kills,
and starting due jobs on free workers.

Only the server holding the scheduler lease does any of this; the others wait as hot
standby. The loop sleeps on the worker pipes and a wake-up pipe, so a job submitted in
this process, a finished job, or the next due time wakes it at once; work submitted by
other processes (the CLI, another server) is seen within ``poll_interval``.

Jobs go to a dispatcher chosen by ``settings.executor``: the local ``WorkerPool`` or the
``CeleryDispatcher`` (engine/batch/celery.py); both offer the ``Dispatcher`` interface.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import secrets
import socket
import time
from collections import Counter
from datetime import datetime, timedelta
from multiprocessing.connection import wait
from typing import Any, Protocol

from engine.batch.requestfiles import RequestFolder
from engine.batch.workers import WorkerPool
from engine.queue.jobs import Job
from engine.queue.leases import Lease
from engine.run.events import JobChanged, ServerHeartbeat
from engine.service import Flowmill

__all__ = ["BatchServer"]

log = logging.getLogger(__name__)

FLOWS_EVERY = 2.0  # seconds between looks at the flows folder and at armed triggers


class Dispatcher(Protocol):
    """What the loop needs from an executor. Slots (``idle``) have a ``name`` that is
    written as the job's worker at claim; ``detached`` executors run jobs outside the
    server's process tree, so a stopping server neither waits for nor kills them."""

    detached: bool

    def describe(self) -> str: ...
    def start(self) -> None: ...
    def stop(self, timeout: float = 5.0) -> None: ...
    def idle(self) -> list[Any]: ...
    def busy(self) -> dict[int, Any]: ...
    def connections(self) -> list[Any]: ...
    def dispatch(self, slot: Any, job_id: int) -> None: ...
    def collect(self) -> list[tuple[int, str, str]]: ...
    def cancel(self, job_id: int) -> bool: ...
    def cancel_age(self, job_id: int) -> float | None: ...
    def kill(self, job_id: int) -> str | None: ...


def make_dispatcher(app: Flowmill, server_id: str) -> Dispatcher:
    """The executor named by ``settings.executor``: ``local`` or ``celery``."""
    settings = app.settings
    if settings.executor == "celery":
        from engine.batch.celery import CeleryDispatcher

        return CeleryDispatcher(app, server_id)
    return WorkerPool(
        settings.max_running, settings.data_dir, server_id, settings.heartbeat_interval
    )


class BatchServer:
    """One ``flowmill serve`` process tree: scheduler loop plus its worker pool."""

    def __init__(
        self,
        app: Flowmill,
        *,
        server_id: str | None = None,
        pool: Dispatcher | None = None,
        echo: Any = None,
    ) -> None:
        self.app = app
        settings = app.settings
        self.settings = settings
        self.id = server_id or f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(2)}"
        self.lease = Lease(app.jobs.store, app.clock, self.id, settings.lease_timeout)
        self.pool: Dispatcher = pool or make_dispatcher(app, self.id)
        self.control_dir = settings.data_dir / "control"
        self.requests = RequestFolder(settings.data_dir / "requests", app)
        self.active = False
        self.stopping = False
        self.stop_deadline: float | None = None
        self._stop_reason: str | None = None  # set by request_stop, acted on by the loop
        self._stop_now = False
        self.finished = False
        self._echo = echo or (lambda text: log.info(text))
        self._wake_r, self._wake_w = multiprocessing.Pipe(duplex=False)
        self._last_lease = 0.0
        self._last_sweep = 0.0
        self._last_flows = -FLOWS_EVERY
        self._closed: list[str] = []  # time conditions shut now (refreshed every sweep)
        self._killing: set[int] = set()  # jobs with a kill request, until they end
        self._next_due: datetime | None = None  # when the next queued job becomes due
        app.bus.subscribe(JobChanged, self._on_job_changed)

    # ------------------------------------------------------------------ lifecycle
    def serve(self) -> int:
        """Run until a ``stop`` control file (or ``request_stop``); exit code 0."""
        for folder in (self.control_dir, self.requests.root):
            folder.mkdir(parents=True, exist_ok=True)
        self.pool.start()
        self._echo(f"server {self.id}: {self.pool.describe()}, waiting for lease")
        try:
            while not self.finished:
                self.step()
                if not self.finished:
                    self._sleep()
        finally:
            self.pool.stop()
            if self.active:
                self.lease.release()
            self.lease.register("stopped")
        self._echo(f"server {self.id}: stopped")
        return 0

    def request_stop(self, reason: str = "stop requested") -> None:
        """Stop gracefully: start nothing new, let running jobs end (up to stop_grace),
        then cancel the rest. Only sets a flag and wakes the loop, so a signal handler or
        another thread may call it."""
        if self._stop_reason is None:
            self._stop_reason = reason
        self.wake()

    def stop_now(self, reason: str = "stop requested again") -> None:
        """Stop without waiting for running jobs: they are cancelled at once."""
        self._stop_now = True
        self.request_stop(reason)

    def _begin_stop(self) -> None:
        if not self.stopping:
            self.stopping = True
            self.stop_deadline = time.monotonic() + self.settings.stop_grace
            running = len(self.pool.busy())
            if self.pool.detached:
                waiting = f"{running} jobs continue on their workers"
            else:
                waiting = f"waiting up to {self.settings.stop_grace:g} s for {running} running jobs"
            self._echo(f"server {self.id}: stopping ({self._stop_reason}), {waiting}")
        if self._stop_now and self.stop_deadline is not None:
            self.stop_deadline = min(self.stop_deadline, time.monotonic())

    def wake(self) -> None:
        with contextlib.suppress(OSError):
            self._wake_w.send_bytes(b"w")

    def _on_job_changed(self, event: JobChanged) -> None:
        if event.state == "queued":
            self.wake()

    # ------------------------------------------------------------------ one turn
    def step(self) -> None:
        if self._stop_reason is not None:
            self._begin_stop()
        now = time.monotonic()
        if now - self._last_lease >= min(1.0, self.settings.lease_timeout / 3):
            self._last_lease = now
            was_active = self.active
            self.active = self.lease.acquire()
            self.lease.register("active" if self.active else "standby")
            if self.active and not was_active:
                self._echo(f"server {self.id}: active (holds the scheduler lease)")
            elif was_active and not self.active:
                self._echo(f"server {self.id}: lost the lease, standing by")
            self.app.bus.publish(
                ServerHeartbeat(
                    run_id="",
                    server_id=self.id,
                    active=self.active,
                    running=len(self.pool.busy()),
                    queued=self.app.jobs.counts().get("queued", 0) if self.active else 0,
                )
            )
        self._finish_collected()
        if not self.active:
            if self.stopping:
                self.finished = True
            return
        if now - self._last_sweep >= self.settings.poll_interval:
            self._last_sweep = now
            self._control_files()
            self.requests.scan()
            if now - self._last_flows >= FLOWS_EVERY:
                # the flows folder (maybe a git checkout) and the triggers of enabled flows
                self._last_flows = now
                for line in [*self.app.sync_flows_folder(), *self.app.arm_triggers()]:
                    self._echo(line)
            for name, job in self.app.fire_schedules():
                self._echo(f"schedule {name}: job {job.id}")
            self._closed = self.app.closed_conditions()
            self.app.jobs.expire()
            self.app.jobs.lost(timedelta(seconds=self.settings.heartbeat_timeout))
            self._killing.update(j.id for j in self.app.jobs.kill_requests())
        self._kills()
        if self.stopping:
            self._stop_when_done()
        else:
            self._start_due()

    def _finish_collected(self) -> None:
        for job_id, outcome, worker in self.pool.collect():
            if outcome == "died":
                job = self.app.jobs.finish(
                    job_id, worker, "failed", "worker process died while running the job"
                )
                self._echo(
                    f"job {job_id}: worker {worker} died" + (f", job {job.state}" if job else "")
                )

    def _start_due(self) -> None:
        idle = self.pool.idle()
        if not idle:
            return
        # only the active server starts jobs, so its busy workers are what runs; the
        # store is asked only when per-flow or per-pool limits need the details
        free = self.settings.max_running - len(self.pool.busy())
        if free <= 0:
            return
        by_flow: Counter[str] = Counter()
        by_pool: Counter[str] = Counter()
        if self.settings.flow_limits or self.settings.pools:
            running = self.app.jobs.running()
            by_flow.update(j.flow_id for j in running)
            by_pool.update(j.pool for j in running if j.pool)
        closed = self._closed
        for worker in idle[:free]:
            full_flows = [f for f, n in self.settings.flow_limits.items() if by_flow[f] >= n]
            full_pools = [p for p, n in self.settings.pools.items() if by_pool[p] >= n]
            job = self.app.jobs.claim(
                worker.name,
                exclude_flows=full_flows,
                exclude_pools=full_pools,
                closed_conditions=closed,
            )
            if job is None:
                # nothing due now: remember when the next one is, to wake up for it
                self._next_due = self.app.jobs.next_due()
                return
            self.pool.dispatch(worker, job.id)
            by_flow[job.flow_id] += 1
            if job.pool:
                by_pool[job.pool] += 1

    # ------------------------------------------------------------------ kill and stop
    def _kills(self) -> None:
        """Cancel jobs with a kill request; terminate those that ignore it past the grace."""
        busy = self.pool.busy()
        for job_id in list(self._killing):
            if job_id not in busy:
                self._killing.discard(job_id)
                continue
            self.pool.cancel(job_id)
            age = self.pool.cancel_age(job_id) or 0.0
            if age >= self.settings.kill_grace:
                self._killing.discard(job_id)
                self._hard_kill(
                    self.app.jobs.get(job_id), "killed: did not stop within the grace period"
                )

    def _hard_kill(self, job: Job, reason: str) -> None:
        worker = self.pool.kill(job.id)
        if worker is not None:
            self.app.jobs.finish(job.id, worker, "cancelled", reason)
            self._echo(f"job {job.id}: {reason}")

    def _control_files(self) -> None:
        kill = self.control_dir / "kill"
        stop = self.control_dir / "stop"
        if kill.exists():
            kill.unlink(missing_ok=True)
            running = list(self.pool.busy())
            self._echo(f"control file kill: cancelling {len(running)} running jobs")
            for job_id in running:
                self.app.jobs.request_kill(job_id)
                self._killing.add(job_id)
        if stop.exists():
            stop.unlink(missing_ok=True)
            self._echo("control file stop")
            self.request_stop()

    def _stop_when_done(self) -> None:
        busy = {} if self.pool.detached else self.pool.busy()
        if not busy:
            self.finished = True
            return
        if self.stop_deadline is not None and time.monotonic() >= self.stop_deadline:
            # past the grace: cancel what still runs, the same way as a kill (cooperative
            # first, terminated after kill_grace), so every job ends as "cancelled" with
            # its reason in the log, never as a worker that died
            self.stop_deadline = None
            self._echo(f"server {self.id}: cancelling {len(busy)} running jobs")
            for job_id in list(busy):
                with contextlib.suppress(Exception):
                    self.app.jobs.request_kill(job_id, "the server is stopping")
                self._killing.add(job_id)

    # ------------------------------------------------------------------ waiting
    def _sleep(self) -> None:
        timeout = self.settings.poll_interval
        if self.active and not self.stopping and self.pool.idle():
            due = self._next_due
            if due is not None:
                # a job due in the past that could not start (group, limit, window)
                # must not turn this into a busy loop: only future due times shorten it
                until = (due - self.app.clock.now()).total_seconds()
                if until > 0:
                    timeout = min(timeout, until)
        ready = wait([self._wake_r, *self.pool.connections()], timeout)
        if self._wake_r in ready:
            while self._wake_r.poll():
                self._wake_r.recv_bytes()
