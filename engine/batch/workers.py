"""The local executor: a pool of worker processes, each running one job at a time.

A job runs in a process, not a thread, so a runaway job cannot hang the server and a kill
really stops it: the process is terminated and the database rolls its open transaction
back when the connection drops. Workers start once (spawned, so nothing of the server's
threads or sockets leaks into them) and are reused, because starting Python and
importing the engine costs far more than a small job.

The worker writes the job's outcome to the store itself and heartbeats while it runs;
the pipe to the server only carries "run", "cancel" and "done" hints.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

__all__ = ["WorkerPool", "worker_main"]

log = logging.getLogger(__name__)


@dataclass
class _Worker:
    name: str
    process: multiprocessing.process.BaseProcess
    conn: Connection
    job_id: int | None = None
    started: float = 0.0
    cancel_sent: float | None = None
    ready: bool = False  # booted: only then is it given a job


class WorkerPool:
    """``size`` worker processes; the batch server hands each idle one a job id."""

    detached = False  # jobs run in the server's own worker processes

    def __init__(self, size: int, data_dir: Path, server_id: str, heartbeat: float) -> None:
        self.size = size
        self.data_dir = Path(data_dir)
        self.server_id = server_id
        self.heartbeat = heartbeat
        self._ctx = multiprocessing.get_context("spawn")
        self._workers: list[_Worker] = []
        self._counter = 0

    def describe(self) -> str:
        return f"{self.size} workers"

    def start(self) -> None:
        while len(self._workers) < self.size:
            self._workers.append(self._spawn())

    def _spawn(self) -> _Worker:
        self._counter += 1
        name = f"{self.server_id}/w{self._counter}"
        parent, child = self._ctx.Pipe()
        process = self._ctx.Process(
            target=worker_main,
            args=(child, str(self.data_dir), name, self.heartbeat),
            name=f"flowmill-worker-{self._counter}",
            daemon=True,
        )
        with _group_signals_ignored():
            process.start()
        child.close()
        return _Worker(name, process, parent)

    # -- the server's view -------------------------------------------------------------
    def idle(self) -> list[_Worker]:
        # A worker gets a job only once it has booted: a job claimed for a worker that is
        # still importing (seconds on a busy machine) would miss its heartbeats and be
        # taken for lost before it ever started.
        return [
            w for w in self._workers if w.ready and w.job_id is None and w.process.is_alive()
        ]

    def busy(self) -> dict[int, _Worker]:
        return {w.job_id: w for w in self._workers if w.job_id is not None}

    def connections(self) -> list[Connection]:
        return [w.conn for w in self._workers]

    def dispatch(self, worker: _Worker, job_id: int) -> None:
        worker.job_id = job_id
        worker.started = time.monotonic()
        worker.cancel_sent = None
        worker.conn.send(("run", job_id))

    def cancel(self, job_id: int) -> bool:
        """Ask the worker to stop the job between batches (cooperative)."""
        worker = self.busy().get(job_id)
        if worker is None:
            return False
        if worker.cancel_sent is None:
            worker.cancel_sent = time.monotonic()
            with contextlib.suppress(OSError):
                worker.conn.send(("cancel", job_id))
        return True

    def cancel_age(self, job_id: int) -> float | None:
        """Seconds since the cancel was sent (None: not sent)."""
        worker = self.busy().get(job_id)
        if worker is None or worker.cancel_sent is None:
            return None
        return time.monotonic() - worker.cancel_sent

    def kill(self, job_id: int) -> str | None:
        """Terminate the worker running ``job_id`` and start a fresh one; its name."""
        worker = self.busy().get(job_id)
        if worker is None:
            return None
        self._terminate(worker)
        self._workers.remove(worker)
        self._workers.append(self._spawn())
        return worker.name

    def collect(self) -> list[tuple[int, str, str]]:
        """Finished jobs as (job_id, outcome, worker name); outcome "died" for a dead worker."""
        done: list[tuple[int, str, str]] = []
        for worker in list(self._workers):
            try:
                while worker.conn.poll():
                    kind, job_id, outcome = worker.conn.recv()
                    if kind == "ready":
                        worker.ready = True
                    elif kind == "done" and worker.job_id == job_id:
                        done.append((job_id, outcome, worker.name))
                        worker.job_id = None
            except (EOFError, OSError):
                pass
            if not worker.process.is_alive():
                if worker.job_id is not None:
                    done.append((worker.job_id, "died", worker.name))
                worker.conn.close()
                self._workers.remove(worker)
                self._workers.append(self._spawn())
        return done

    def stop(self, timeout: float = 5.0) -> None:
        """Tell idle workers to exit; terminate what is left after ``timeout``."""
        for worker in self._workers:
            with contextlib.suppress(OSError):
                worker.conn.send(("exit", None))
        deadline = time.monotonic() + timeout
        for worker in self._workers:
            worker.process.join(max(0.0, deadline - time.monotonic()))
            if worker.process.is_alive():
                self._terminate(worker)
        self._workers.clear()

    @staticmethod
    def _terminate(worker: _Worker) -> None:
        worker.process.terminate()
        worker.process.join(2.0)
        if worker.process.is_alive():
            worker.process.kill()
            worker.process.join(2.0)
        worker.conn.close()


# Ctrl-C at a terminal and `kill -TERM -PGID` reach every process of the server's group.
# Only the server may end a job (cancel, then terminate), so a worker is born ignoring
# both (an ignored signal stays ignored across exec, and Python keeps it so) and then
# leaves the group.
GROUP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


@contextlib.contextmanager
def _group_signals_ignored() -> Iterator[None]:
    """Start a process that ignores SIGINT and SIGTERM from its first instruction. Signal
    handlers belong to the main thread: elsewhere (tests) the worker does it itself."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = [signal.signal(sig, signal.SIG_IGN) for sig in GROUP_SIGNALS]
    try:
        yield
    finally:
        for sig, handler in zip(GROUP_SIGNALS, previous, strict=True):
            signal.signal(sig, signal.SIG_DFL if handler is None else handler)


def _leave_the_servers_group() -> None:
    """In a new worker: a process group of its own, where the group's signals no longer
    reach it; then SIGTERM works again, for the server's terminate."""
    for sig in GROUP_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)
    with contextlib.suppress(OSError):
        os.setpgid(0, 0)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


# -- inside the worker process -----------------------------------------------------------


def worker_main(conn: Connection, data_dir: str, name: str, heartbeat: float) -> None:
    """Run jobs sent over ``conn`` until told to exit or the server goes away."""
    _leave_the_servers_group()  # a Ctrl-C of the server must not end a job halfway
    # imported here: the spawned process starts with a clean interpreter
    from engine.service import Flowmill

    app = Flowmill.open(data_dir)
    with contextlib.suppress(OSError):
        conn.send(("ready", None, None))
    jobs: list[int] = []
    ready = threading.Condition()
    cancel = threading.Event()
    state = {"current": None, "exit": False}

    def listen() -> None:
        while True:
            try:
                kind, job_id = conn.recv()
            except (EOFError, OSError):
                kind, job_id = "exit", None  # the server is gone: finish, then leave
            with ready:
                if kind == "run":
                    jobs.append(job_id)
                elif kind == "cancel" and state["current"] == job_id:
                    cancel.set()
                elif kind == "exit":
                    state["exit"] = True
                ready.notify()
            if kind == "exit":
                return

    threading.Thread(target=listen, name="flowmill-worker-listen", daemon=True).start()
    try:
        while True:
            with ready:
                while not jobs and not state["exit"]:
                    ready.wait()
                if not jobs:
                    return
                job_id = jobs.pop(0)
                state["current"] = job_id
                cancel.clear()
            outcome = run_job(app, job_id, name, heartbeat, cancel)
            state["current"] = None
            with contextlib.suppress(OSError):
                conn.send(("done", job_id, outcome))
    finally:
        app.close()


# flow versions never change (they are named by their hash): parse each once per worker
_FLOWS: dict[str, dict[str, Any]] = {}


def run_job(
    app: Any,
    job_id: int,
    worker: str,
    heartbeat: float,
    cancel: threading.Event,
    *,
    watch_kill: bool = False,
) -> str:
    """Run one claimed job to its end and record the outcome; returns the job state.

    Used by both executors: the local worker processes and the Celery task. A heartbeat
    thread keeps the job ours; it sets ``cancel`` when the job was taken from us, and with
    ``watch_kill`` also when a kill was requested in the store (a Celery worker has no pipe
    from the server, so it reads the kill request itself).
    """
    import uuid

    from engine.errors import FlowmillError
    from engine.flows.format import parse_flow_text

    js = app.jobs
    job = js.get(job_id)
    # the first beat, before anything runs, says "taken": a claimed job that never got one
    # was not started, and the heartbeat rule may queue it again (JobStore.lost)
    if not js.heartbeat(job_id, worker):
        return "lost"
    stop_beating = threading.Event()

    def beat() -> None:
        while not stop_beating.wait(heartbeat):
            try:
                if not js.heartbeat(job_id, worker):
                    cancel.set()  # the job was taken from us (lost heartbeat, kill)
                    return
                if watch_kill and not cancel.is_set() and js.get(job_id).kill_requested:
                    log.info("job %s: kill requested, cancelling", job_id)
                    cancel.set()  # keep beating: the job is still ours until it finishes
            except Exception:  # a store hiccup must not kill the job; next beat retries
                log.exception("heartbeat of job %s failed", job_id)

    threading.Thread(target=beat, name="flowmill-heartbeat", daemon=True).start()
    try:
        run_id = job.run_id or uuid.uuid4().hex
        flow = _FLOWS.get(job.flow_hash)
        if flow is None:
            text = app.store.get_flow_version(job.flow_hash)
            if text is None:
                final = js.finish(job_id, worker, "failed", f"flow version {job.flow_hash} is gone")
                return final.state if final else "failed"
            flow = _FLOWS[job.flow_hash] = parse_flow_text(text, f"flow {job.flow_id}")
        result = app.executor.run(
            flow,
            job.params,
            run_id=run_id,
            cancel_event=cancel,
            flow_dir=Path(job.flow_dir) if job.flow_dir else None,
        )
        final = js.finish(job_id, worker, result.state, result.error, result.error_node)
    except FlowmillError as exc:
        final = js.finish(job_id, worker, "failed", str(exc))
    except Exception as exc:
        log.exception("job %s crashed in worker %s (pid %s)", job_id, worker, os.getpid())
        final = js.finish(job_id, worker, "failed", f"{type(exc).__name__}: {exc}")
    finally:
        stop_beating.set()
    return final.state if final else "lost"
