"""The Celery executor: jobs run on Celery workers, possibly on other machines.

The job table stays the truth; a broker message is only a hint that says "job N, claimed
with token T, wants running". The active batch server selects and claims jobs exactly as
with the local executor (one atomic ``JobStore.claim``, at most ``max_running`` jobs
``running`` in the store), then sends ``flowmill.run_job(job_id, token)`` and forgets it.

In the worker the task asks the store what the hint is worth (``JobStore.deliver``, one
transaction): a job that is no longer ``running`` under that token was finished or taken
meanwhile, so the message is acknowledged and nothing happens; a delivery beyond
``max_attempts`` (a worker died on the job too often) puts the job in ``dead_letter``;
otherwise the delivery is counted and the job runs through ``engine.batch.workers.run_job``, the
same function the local worker processes use (heartbeat thread, cooperative cancel, the
outcome written with the token).

Delivery guarantees come from the broker settings: ``task_acks_late`` (the message is
acknowledged only after the job ended), ``task_reject_on_worker_lost`` (a pool process
that dies mid-job puts the message back at once), prefetch 1, and a Redis
``visibility_timeout`` longer than the longest job. A worker machine that vanishes is
caught by the server's heartbeat check as with the local executor; its message, restored
later, is then a stale hint.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import socket
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from engine.config import Settings
from engine.errors import FlowmillError
from engine.store.tables import jobs

if TYPE_CHECKING:
    from celery import Celery

    from engine.service import Flowmill

__all__ = [
    "TASK_NAME",
    "CeleryDispatcher",
    "create_app",
    "execute",
    "run_worker",
]

log = logging.getLogger(__name__)

TASK_NAME = "flowmill.run_job"


def create_app(
    settings: Settings,
    *,
    queue: str | None = None,
    visibility: float | None = None,
) -> Celery:
    """A Celery app for this installation: broker from settings, JSON only, no results.

    The ``flowmill.run_job`` task is registered on it; a worker process runs it against
    ``Flowmill.open(settings.data_dir)``, opened once per pool process.
    """
    if not settings.broker_url:
        raise FlowmillError(
            "the celery executor needs a broker: set [celery] broker in "
            f"{settings.data_dir / 'flowmill.toml'} or FLOWMILL_BROKER_URL "
            "(e.g. redis://127.0.0.1:6379/0 or amqp://user:password@host:5672//)"
        )
    from celery import Celery

    queue = queue or settings.celery_queue
    app = Celery("flowmill", broker=settings.broker_url, set_as_current=False)
    app.conf.update(
        task_serializer="json",
        accept_content=["json"],
        result_serializer="json",
        result_backend=None,  # the outcome lives in the job table
        task_ignore_result=True,
        task_acks_late=True,  # acknowledged after the job ended, not when received
        task_reject_on_worker_lost=True,  # a pool process that died: message goes back
        worker_prefetch_multiplier=1,  # a busy worker holds no second message
        broker_transport_options={
            "visibility_timeout": visibility or settings.celery_visibility_timeout
        },
        # a broker blip must not kill long jobs: they keep writing to the store, and
        # the message that could not be acknowledged comes back later as a stale hint
        worker_cancel_long_running_tasks_on_connection_loss=False,
        broker_connection_retry_on_startup=True,
        task_default_queue=queue,
        task_routes={TASK_NAME: {"queue": queue}},
        worker_hijack_root_logger=False,
        worker_send_task_events=False,
        task_send_sent_event=False,
        enable_utc=True,
    )
    data_dir = str(settings.data_dir)

    @app.task(name=TASK_NAME, ignore_result=True)
    def run_job_task(job_id: int, token: str) -> str:
        return execute(data_dir, int(job_id), str(token))

    return app


# -- in the Celery worker ------------------------------------------------------------------

_opened: tuple[int, Flowmill] | None = None  # (pid, app): one Flowmill per pool process
_opening = threading.Lock()


def _flowmill(data_dir: str) -> Flowmill:
    global _opened
    with _opening:
        if _opened is None or _opened[0] != os.getpid():
            from engine.service import Flowmill

            _opened = (os.getpid(), Flowmill.open(data_dir))
        return _opened[1]


def execute(data_dir: str, job_id: int, token: str) -> str:
    """The task body: check the hint, count the delivery, run the job; returns a verdict.

    ``"stale"``, ``"dead_letter"`` and ``"cancelled"`` (a kill came first) mean the job
    did not run; otherwise the job's final state (or ``"lost"`` when it was taken from
    this worker meanwhile).
    """
    from engine.batch.workers import run_job

    app = _flowmill(data_dir)
    where = f"celery worker {socket.gethostname()} pid {os.getpid()}"
    delivery = app.jobs.deliver(job_id, token, where)
    job = delivery.job
    if delivery.lost_run:
        _close_lost_run(app, delivery.lost_run)
    if delivery.verdict != "run" or job is None:
        state = job.state if job else "missing"
        log.info(
            "job %s (token %s): %s, not run (job is %s)", job_id, token, delivery.verdict, state
        )
        return delivery.verdict
    log.info("job %s: delivery %s, running as %s", job_id, job.deliveries, job.worker)
    return run_job(
        app,
        job_id,
        job.worker or token,
        app.settings.heartbeat_interval,
        threading.Event(),
        watch_kill=True,
    )


def _close_flowmill(**_: Any) -> None:
    """A pool process is about to exit: close its store (flushes what is pending)."""
    global _opened
    with _opening:
        if _opened is not None and _opened[0] == os.getpid():
            with contextlib.suppress(Exception):
                _opened[1].close()
        _opened = None


def _close_lost_run(app: Flowmill, run_id: str) -> None:
    """The run of a delivery whose worker died stays 'running' in the store: fail it."""
    try:
        run = app.store.get_run(run_id)
        if run is not None and run.state == "running":
            app.store.finish_run(
                run_id, "failed", app.clock.now(), "worker lost: the job was redelivered"
            )
    except Exception:  # bookkeeping only: never stop the job for it
        log.exception("could not close run %s", run_id)


def run_worker(settings: Settings, concurrency: int | None = None, loglevel: str = "INFO") -> int:
    """Run a Celery worker (prefork) for this data directory until it is told to stop."""
    from celery.signals import worker_process_shutdown

    worker_process_shutdown.connect(_close_flowmill, weak=False)
    app = create_app(settings)
    worker = app.Worker(
        pool_cls="prefork",
        concurrency=concurrency or settings.max_running,
        loglevel=loglevel,
        queues=[settings.celery_queue],
        hostname=f"flowmill-{os.getpid()}@{socket.gethostname()}",
        without_mingle=True,
        without_gossip=True,
        without_heartbeat=True,
        optimization="fair",  # a free pool process takes the next message, not a busy one
    )
    worker.start()
    return int(worker.exitcode or 0)


# -- in the batch server -------------------------------------------------------------------


@dataclass
class _Slot:
    """Room for one more running job; ``name`` becomes the job's token at claim."""

    name: str


class CeleryDispatcher:
    """What the batch server drives instead of a local ``WorkerPool``.

    Slots are free while fewer than ``max_running`` jobs are ``running`` in the store;
    ``dispatch`` sends the hint and forgets it. Nothing comes back over a pipe, so
    ``connections`` is empty and the server looks again every ``poll_interval``.
    """

    detached = True  # jobs run in other processes and outlive the server

    def __init__(self, app: Flowmill, server_id: str, celery: Celery | None = None) -> None:
        self.app = app
        self.settings = app.settings
        self.server_id = server_id
        self.queue = app.settings.celery_queue
        self.celery = celery or create_app(app.settings, queue=self.queue)
        self._counter = 0
        self._salt = secrets.token_hex(3)
        self._cancelled: dict[int, float] = {}  # job id -> when this server first asked
        self._broker_down_until = 0.0

    def describe(self) -> str:
        from kombu.utils.url import maybe_sanitize_url  # masks a password

        url = maybe_sanitize_url(self.settings.broker_url or "")
        return f"celery executor: broker {url}, queue {self.queue}"

    def start(self) -> None:
        pass  # the workers are started apart: `flowmill worker`

    def stop(self, timeout: float = 5.0) -> None:
        with contextlib.suppress(Exception):
            self.celery.close()

    def _running(self) -> dict[int, str]:
        query = sa.select(jobs.c.id, jobs.c.worker).where(jobs.c.state == "running")
        rows = self.app.jobs.store.transaction(lambda conn: conn.execute(query).all(), write=False)
        return {job_id: worker or "" for job_id, worker in rows}

    # -- the server's view -----------------------------------------------------------------
    def busy(self) -> dict[int, str]:
        """Every job ``running`` in the store (on any worker), with its worker token."""
        running = self._running()
        for job_id in list(self._cancelled):
            if job_id not in running:
                del self._cancelled[job_id]
        return running

    def idle(self) -> list[_Slot]:
        if time.monotonic() < self._broker_down_until:
            return []
        free = self.settings.max_running - len(self._running())
        slots = []
        for _ in range(max(0, free)):
            self._counter += 1
            slots.append(_Slot(f"celery:{self.server_id}:{self._salt}-{self._counter}"))
        return slots

    def connections(self) -> list[Any]:
        return []

    def dispatch(self, slot: _Slot, job_id: int) -> None:
        """Send the hint; the task id is the token, so a kill can revoke it by id."""
        try:
            self.celery.send_task(
                TASK_NAME,
                args=[job_id, slot.name],
                task_id=slot.name,
                queue=self.queue,
                retry=True,
                retry_policy={"max_retries": 2, "interval_start": 0.2, "interval_step": 0.5},
            )
        except Exception as exc:
            # the broker is away: the claim stands in the store, so record the failure
            # (retried while attempts remain) and claim nothing for a few seconds
            self._broker_down_until = time.monotonic() + 5.0
            log.error("job %s: could not send to the Celery broker: %s", job_id, exc)
            self.app.jobs.finish(
                job_id, slot.name, "failed", f"could not send the job to the Celery broker: {exc}"
            )

    def collect(self) -> list[tuple[int, str, str]]:
        return []  # workers write outcomes to the store; lost ones are found by heartbeat

    def cancel(self, job_id: int) -> bool:
        """The kill request is already in the store, where the job's heartbeat reads it."""
        if job_id not in self.busy():
            return False
        self._cancelled.setdefault(job_id, time.monotonic())
        return True

    def cancel_age(self, job_id: int) -> float | None:
        since = self._cancelled.get(job_id)
        return None if since is None else time.monotonic() - since

    def kill(self, job_id: int) -> str | None:
        """Past the kill grace: revoke the task with SIGKILL (its transaction is rolled
        back when the process dies); returns the job's worker token for ``finish``."""
        worker = self.busy().get(job_id)
        if worker is None:
            return None
        self._cancelled.pop(job_id, None)
        if worker.startswith("celery:"):
            task_id = worker.split("#", 1)[0]
            try:
                self.celery.control.revoke(task_id, terminate=True, signal="SIGKILL")
            except Exception as exc:  # the store still says cancelled; the worker obeys it
                log.error("job %s: could not revoke task %s: %s", job_id, task_id, exc)
        return worker
