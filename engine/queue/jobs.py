"""Jobs of the batch server: one request to run a pinned flow version, kept in the store.

Every state change is one committed transaction before anything acts on it, and is then
published as a ``JobChanged`` event. Claiming the next job is one atomic statement
(``FOR UPDATE SKIP LOCKED`` on PostgreSQL and MariaDB; SQLite takes its write lock), so two
servers can never start the same job.
"""

from __future__ import annotations

import dataclasses
import json
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from engine.clock import Clock, SystemClock
from engine.errors import FlowmillError
from engine.run.events import EventBus, JobChanged
from engine.store.sql import SqlRunStore
from engine.store.tables import job_log, jobs

__all__ = [
    "STATES",
    "FINAL_STATES",
    "ACTIVE_STATES",
    "Delivery",
    "Job",
    "JobError",
    "JobNotFound",
    "JobStore",
]

STATES = (
    "queued",
    "held",
    "running",
    "succeeded",
    "failed",
    "cancelled",
    "expired",
    "aborted",
    "dead_letter",  # Celery: its message was delivered more often than max_attempts
)
FINAL_STATES = frozenset({"succeeded", "failed", "cancelled", "expired", "aborted", "dead_letter"})
ACTIVE_STATES = ("queued", "held", "running")
FAILED_STATES = ("failed", "cancelled", "expired", "aborted", "dead_letter")


class JobError(FlowmillError):
    """An operation that does not fit the job's state; names the job and the state."""


class JobNotFound(JobError):
    def __init__(self, job_id: int) -> None:
        super().__init__(f"job {job_id} does not exist")
        self.job_id = job_id


@dataclass(frozen=True)
class Job:
    id: int
    flow_id: str
    flow_hash: str
    params: dict[str, Any]
    priority: int
    state: str
    submitted_at: datetime
    not_before: datetime
    expires_at: datetime | None
    max_delay: float | None
    group: str | None
    group_pos: int | None
    pool: str | None
    time_condition: str | None
    attempts: int
    max_attempts: int
    run_id: str | None
    worker: str | None
    heartbeat_at: datetime | None
    started_at: datetime | None
    finished_at: datetime | None
    kill_requested: bool
    error: str | None
    error_node: str | None
    source: str
    schedule: str | None
    flow_dir: str | None
    deliveries: int = 0  # Celery executor: how often a worker received the job's message

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["flow"] = data.pop("flow_id")
        for key, value in data.items():
            if isinstance(value, datetime):
                data[key] = value.isoformat()
        return data


@dataclass(frozen=True)
class Delivery:
    """What a worker is to do with a job's broker message (``JobStore.deliver``)."""

    verdict: str  # run | stale | dead_letter | cancelled
    job: Job | None  # None: no such job
    lost_run: str | None = None  # run id of an earlier delivery whose worker died


def _job(row: Any) -> Job:
    m = row._mapping
    return Job(
        id=m["id"],
        flow_id=m["flow_id"],
        flow_hash=m["flow_hash"],
        params=json.loads(m["params"]),
        priority=m["priority"],
        state=m["state"],
        submitted_at=m["submitted_at"],
        not_before=m["not_before"],
        expires_at=m["expires_at"],
        max_delay=m["max_delay"],
        group=m["group_name"],
        group_pos=m["group_pos"],
        pool=m["pool"],
        time_condition=m["time_condition"],
        attempts=m["attempts"],
        max_attempts=m["max_attempts"],
        run_id=m["run_id"],
        worker=m["worker"],
        heartbeat_at=m["heartbeat_at"],
        started_at=m["started_at"],
        finished_at=m["finished_at"],
        kill_requested=bool(m["kill_requested"]),
        error=m["error"],
        error_node=m["error_node"],
        source=m["source"],
        schedule=m["schedule"],
        flow_dir=m["flow_dir"],
        deliveries=m["deliveries"],
    )


# A group member may start only when no earlier member is still waiting or running.
_prev = jobs.alias("prev")
_BLOCKED_BY_GROUP = (
    sa.exists()
    .where(_prev.c.group_name == jobs.c.group_name)
    .where(_prev.c.group_pos < jobs.c.group_pos)
    .where(_prev.c.state.in_(ACTIVE_STATES))
)
_ORDER = (jobs.c.priority.desc(), jobs.c.submitted_at, jobs.c.id)


class JobStore:
    """Jobs on the run store's SQL database. Thread-safe; one short transaction per call."""

    def __init__(
        self, store: SqlRunStore, bus: EventBus | None = None, clock: Clock | None = None
    ) -> None:
        self.store = store
        self.bus = bus or EventBus()
        self.clock = clock or SystemClock()

    # ------------------------------------------------------------------ helpers
    def _tx(self, work: Callable[[Connection], Any], write: bool = True) -> Any:
        return self.store.transaction(work, write=write)

    def _changed(self, job: Job, previous: str | None) -> Job:
        self.bus.publish(
            JobChanged(
                run_id=job.run_id or "",
                job_id=job.id,
                flow_id=job.flow_id,
                state=job.state,
                previous=previous,
                error=job.error,
            )
        )
        return job

    @staticmethod
    def _get(conn: Connection, job_id: int) -> Job:
        row = conn.execute(sa.select(jobs).where(jobs.c.id == job_id)).first()
        if row is None:
            raise JobNotFound(job_id)
        return _job(row)

    def _log(self, conn: Connection, job_id: int, message: str) -> None:
        conn.execute(sa.insert(job_log).values(job_id=job_id, ts=self.clock.now(), message=message))

    def _transition(
        self,
        job_id: int,
        allowed: Iterable[str],
        action: str,
        values: dict[str, Any],
        message: str,
    ) -> Job:
        """Change one job if it is in an ``allowed`` state; otherwise say why not."""
        allowed = tuple(allowed)
        now = self.clock.now()

        def work(conn: Connection) -> tuple[Job, str]:
            job = self._get(conn, job_id)
            if job.state not in allowed:
                raise JobError(
                    f"job {job_id} is {job.state}; only {' or '.join(allowed)} jobs can be {action}"
                )
            conn.execute(
                sa.update(jobs).where(jobs.c.id == job_id).values(**values, updated_at=now)
            )
            self._log(conn, job_id, message)
            if values.get("state") in FAILED_STATES:
                self._abort_group_rest(conn, job)
            return self._get(conn, job_id), job.state

        job, previous = self._tx(work)
        return self._changed(job, previous) if job.state != previous else job

    def _abort_group_rest(self, conn: Connection, job: Job) -> list[int]:
        """A member that did not succeed aborts every later member still waiting."""
        if job.group is None:
            return []
        rest = (
            conn.execute(
                sa.select(jobs.c.id)
                .where(jobs.c.group_name == job.group)
                .where(jobs.c.group_pos > job.group_pos)
                .where(jobs.c.state.in_(("queued", "held")))
            )
            .scalars()
            .all()
        )
        if rest:
            conn.execute(
                sa.update(jobs)
                .where(jobs.c.id.in_(rest))
                .values(
                    state="aborted",
                    error=f"group {job.group}: job {job.id} did not succeed",
                    finished_at=self.clock.now(),
                    updated_at=self.clock.now(),
                )
            )
            for other in rest:
                self._log(
                    conn, other, f"aborted: job {job.id} of group {job.group} did not succeed"
                )
        return list(rest)

    # ------------------------------------------------------------------ submit and read
    def submit(
        self,
        flow_id: str,
        flow_hash: str,
        params: Mapping[str, Any] | None = None,
        *,
        priority: int = 0,
        not_before: datetime | None = None,
        max_delay: timedelta | None = None,
        group: str | None = None,
        pool: str | None = None,
        time_condition: str | None = None,
        max_attempts: int = 1,
        source: str = "cli",
        schedule: str | None = None,
        held: bool = False,
        flow_dir: str | None = None,
    ) -> Job:
        """Queue a job (committed before this returns)."""
        now = self.clock.now()
        start = not_before or now
        if start.tzinfo is None:
            raise JobError("not_before must have a time zone")
        if max_attempts < 1:
            raise JobError("max_attempts must be at least 1")

        def work(conn: Connection) -> Job:
            position = None
            if group is not None:
                top = conn.execute(
                    sa.select(sa.func.max(jobs.c.group_pos)).where(jobs.c.group_name == group)
                ).scalar()
                position = (top or 0) + 1
            result = conn.execute(
                sa.insert(jobs).values(
                    flow_id=flow_id,
                    flow_hash=flow_hash,
                    params=json.dumps(dict(params or {}), ensure_ascii=False, default=str),
                    priority=int(priority),
                    state="held" if held else "queued",
                    submitted_at=now,
                    not_before=start,
                    expires_at=start + max_delay if max_delay is not None else None,
                    max_delay=max_delay.total_seconds() if max_delay is not None else None,
                    group_name=group,
                    group_pos=position,
                    pool=pool,
                    time_condition=time_condition,
                    attempts=0,
                    max_attempts=max_attempts,
                    kill_requested=False,
                    source=source,
                    schedule=schedule,
                    flow_dir=flow_dir,
                    deliveries=0,
                    updated_at=now,
                )
            )
            job_id = result.inserted_primary_key[0]
            where = f" in group {group} at position {position}" if group else ""
            self._log(conn, job_id, f"submitted ({source}) for flow {flow_id}{where}")
            return self._get(conn, job_id)

        return self._changed(self._tx(work), None)

    def get(self, job_id: int) -> Job:
        return self._tx(lambda conn: self._get(conn, job_id), write=False)

    def list(
        self,
        state: str | None = None,
        flow_id: str | None = None,
        group: str | None = None,
        limit: int = 200,
    ) -> list[Job]:
        """Newest first."""
        query = sa.select(jobs).order_by(jobs.c.id.desc()).limit(limit)
        if state:
            query = query.where(jobs.c.state == state)
        if flow_id:
            query = query.where(jobs.c.flow_id == flow_id)
        if group:
            query = query.where(jobs.c.group_name == group)
        return self._tx(lambda conn: [_job(r) for r in conn.execute(query)], write=False)

    def log(self, job_id: int) -> list[tuple[datetime, str]]:
        """The job's own log: submission, state changes, errors (run logs are separate)."""

        def work(conn: Connection) -> list[tuple[datetime, str]]:
            self._get(conn, job_id)
            rows = conn.execute(
                sa.select(job_log.c.ts, job_log.c.message)
                .where(job_log.c.job_id == job_id)
                .order_by(job_log.c.id)
            )
            return [(r.ts, r.message) for r in rows]

        return self._tx(work, write=False)

    def add_log(self, job_id: int, message: str) -> None:
        self._tx(lambda conn: self._log(conn, job_id, message))

    def counts(self) -> dict[str, int]:
        """Jobs per state (for status and metrics)."""
        query = sa.select(jobs.c.state, sa.func.count()).group_by(jobs.c.state)
        return self._tx(lambda conn: dict(conn.execute(query).all()), write=False)

    # ------------------------------------------------------------------ operations
    def hold(self, job_id: int) -> Job:
        return self._transition(job_id, ("queued",), "held", {"state": "held"}, "held")

    def resume(self, job_id: int) -> Job:
        return self._transition(job_id, ("held",), "resumed", {"state": "queued"}, "resumed")

    def set_params(self, job_id: int, params: Mapping[str, Any]) -> Job:
        """Replace some params of a job that has not started yet."""
        job = self.get(job_id)
        merged = {**job.params, **params}
        changed = ", ".join(f"{k}={v!r}" for k, v in params.items())
        return self._transition(
            job_id,
            ("queued", "held"),
            "edited",
            {"params": json.dumps(merged, ensure_ascii=False, default=str)},
            f"params changed: {changed}",
        )

    def cancel(self, job_id: int) -> Job:
        """Cancel a job that has not started (a running one needs ``request_kill``)."""
        return self._transition(
            job_id,
            ("queued", "held"),
            "cancelled (use kill for a running job)",
            {"state": "cancelled", "finished_at": self.clock.now(), "error": "cancelled"},
            "cancelled",
        )

    def request_kill(self, job_id: int, reason: str = "") -> Job:
        """Ask the server running the job to stop it; a waiting job is cancelled at once.
        ``reason`` (why, when it is not a user's kill) goes into the job's log."""
        text = f"kill requested: {reason}" if reason else "kill requested"
        for _ in range(3):  # it may start (or end) between the look and the change
            job = self.get(job_id)
            try:
                if job.state in ("queued", "held"):
                    return self.cancel(job_id)
                return self._transition(
                    job_id, ("running",), "killed", {"kill_requested": True}, text
                )
            except JobError:
                if self.get(job_id).state == job.state:
                    raise  # not a race: the state does not allow it
        return self._transition(job_id, ("running",), "killed", {"kill_requested": True}, text)

    def retry(self, job_id: int) -> Job:
        """Queue a finished job that did not succeed again, now, with a fresh attempt count."""
        return self._transition(
            job_id,
            FAILED_STATES,
            "retried",
            {
                "state": "queued",
                "not_before": self.clock.now(),
                "expires_at": None,
                "attempts": 0,
                "error": None,
                "error_node": None,
                "finished_at": None,
                "started_at": None,
                "kill_requested": False,
                "worker": None,
                "deliveries": 0,
            },
            "retry requested",
        )

    # ------------------------------------------------------------------ the scheduler's side
    def expire(self) -> list[Job]:
        """Jobs not started within max_delay become ``expired`` and never run."""
        now = self.clock.now()
        stale = self._tx(
            lambda conn: (
                conn.execute(
                    sa.select(jobs.c.id)
                    .where(jobs.c.state.in_(("queued", "held")))
                    .where(jobs.c.expires_at < now)
                )
                .scalars()
                .all()
            ),
            write=False,
        )
        done = []
        for job_id in stale:
            try:
                done.append(
                    self._transition(
                        job_id,
                        ("queued", "held"),
                        "expired",
                        {
                            "state": "expired",
                            "finished_at": now,
                            "error": "not started within its max delay",
                        },
                        "expired: not started within its max delay",
                    )
                )
            except JobError:
                continue  # started or cancelled meanwhile
        return done

    def claim(
        self,
        worker: str,
        *,
        exclude_flows: Iterable[str] = (),
        exclude_pools: Iterable[str] = (),
        closed_conditions: Iterable[str] = (),
    ) -> Job | None:
        """Atomically take the best due job for ``worker`` (highest priority, then oldest).

        Returns None when nothing is due. The job is ``running`` in the store when this
        returns; ``attempts`` counts this start.
        """
        now = self.clock.now()
        where = [
            jobs.c.state == "queued",
            jobs.c.not_before <= now,
            sa.or_(jobs.c.expires_at.is_(None), jobs.c.expires_at >= now),
            sa.or_(jobs.c.group_name.is_(None), ~_BLOCKED_BY_GROUP),
        ]
        flows = list(exclude_flows)
        pools = list(exclude_pools)
        closed = list(closed_conditions)
        if flows:
            where.append(jobs.c.flow_id.not_in(flows))
        if pools:
            where.append(sa.or_(jobs.c.pool.is_(None), jobs.c.pool.not_in(pools)))
        if closed:
            where.append(
                sa.or_(jobs.c.time_condition.is_(None), jobs.c.time_condition.not_in(closed))
            )
        values = {
            "state": "running",
            "run_id": uuid.uuid4().hex,  # the run this start will record
            "worker": worker,
            "started_at": now,
            "heartbeat_at": now,
            "attempts": jobs.c.attempts + 1,
            "kill_requested": False,
            "updated_at": now,
        }

        def work(conn: Connection) -> Job | None:
            pick = sa.select(jobs.c.id).where(*where).order_by(*_ORDER).limit(1)
            if conn.dialect.name in ("postgresql", "sqlite"):
                if conn.dialect.name == "postgresql":
                    pick = pick.with_for_update(skip_locked=True)
                row = conn.execute(
                    sa.update(jobs)
                    .where(jobs.c.id == pick.scalar_subquery())
                    .values(**values)
                    .returning(*jobs.c)
                ).first()
                if row is None:
                    return None
                job = _job(row)
            else:
                # MariaDB cannot UPDATE … RETURNING nor read the updated table in a
                # subquery: lock the row (skipping rows others hold), then update it.
                job_id = conn.execute(pick.with_for_update(skip_locked=True)).scalar()
                if job_id is None:
                    return None
                conn.execute(sa.update(jobs).where(jobs.c.id == job_id).values(**values))
                job = self._get(conn, job_id)
            if job.group:
                # the member before it may have finished after ``now`` was read: its start
                # is stamped now, after that finish is visible, so starts follow finishes
                stamp = self.clock.now()
                if stamp > now:
                    stamps = {"started_at": stamp, "heartbeat_at": stamp, "updated_at": stamp}
                    conn.execute(sa.update(jobs).where(jobs.c.id == job.id).values(**stamps))
                    job = dataclasses.replace(job, started_at=stamp, heartbeat_at=stamp)
            self._log(conn, job.id, f"started on {worker}")
            return job

        job = self._tx(work)
        return self._changed(job, "queued") if job else None

    def heartbeat(self, job_id: int, worker: str) -> bool:
        """Worker is alive; False when the job is no longer this worker's (stop it)."""
        now = self.clock.now()
        result = self._tx(
            lambda conn: conn.execute(
                sa.update(jobs)
                .where(jobs.c.id == job_id, jobs.c.worker == worker, jobs.c.state == "running")
                .values(heartbeat_at=now)
            )
        )
        return result.rowcount == 1

    def deliver(self, job_id: int, token: str, where: str = "") -> Delivery:
        """A Celery worker received the job's message: check it and count the delivery.

        Broker messages are hints; this one transaction decides what the hint is worth.
        ``token`` is the ``worker`` value the server wrote at claim. The ``verdict`` of the
        ``Delivery``:

        - ``"stale"``: the job is no longer ``running`` under ``token`` (finished, requeued
          or claimed again meanwhile; ``job`` is None when it does not exist): do nothing.
        - ``"dead_letter"``: this delivery would be number ``max_attempts + 1``: the job is
          now ``dead_letter`` and must not run.
        - ``"cancelled"``: a kill was requested before this delivery could start it.
        - ``"run"``: run it as ``job.worker`` (``token#n`` for delivery n): this delivery
          now owns the job, so an earlier delivery that is somehow still alive loses its
          heartbeat and stops. A delivery counts as an attempt: ``attempts`` is raised to
          ``deliveries`` when a worker died mid-run and the message came back; such a
          redelivery records a new run (``lost_run`` names the one left unfinished).
        """
        now = self.clock.now()

        def work(conn: Connection) -> tuple[Delivery, str | None]:
            query = sa.select(jobs).where(jobs.c.id == job_id)
            if conn.dialect.name != "sqlite":  # SQLite: the write transaction serialises
                query = query.with_for_update()
            row = conn.execute(query).first()
            if row is None:
                return Delivery("stale", None), None
            job = _job(row)
            redelivery = (job.worker or "").startswith(token + "#")
            if job.state != "running" or not (job.worker == token or redelivery):
                return Delivery("stale", job), None
            count = job.deliveries + 1
            on = f" on {where}" if where else ""
            values: dict[str, Any] = {"deliveries": count, "updated_at": now}
            if count > job.max_attempts:
                verdict = "dead_letter"
                error = f"dead letter: delivered {count} times"
                values.update(state="dead_letter", error=error, finished_at=now)
                message = f"{error}{on} (max_attempts {job.max_attempts}); not run again"
            elif job.kill_requested:
                verdict = "cancelled"
                values.update(state="cancelled", error="killed", finished_at=now)
                message = f"cancelled: killed before delivery {count} started{on}"
            else:
                verdict = "run"
                values.update(
                    worker=f"{token}#{count}",
                    heartbeat_at=now,
                    attempts=max(job.attempts, count),
                )
                if redelivery:  # the run id of the claim was used by the lost delivery
                    values["run_id"] = uuid.uuid4().hex
                again = " (redelivered: the previous delivery's worker was lost)"
                message = f"delivery {count}{on}" + (again if redelivery else "")
            conn.execute(sa.update(jobs).where(jobs.c.id == job_id).values(**values))
            self._log(conn, job_id, message)
            updated = dataclasses.replace(
                job, **{k: v for k, v in values.items() if k != "updated_at"}
            )
            delivery = Delivery(verdict, updated, job.run_id if redelivery else None)
            if verdict != "run":
                self._abort_group_rest(conn, updated)
                return delivery, job.state
            return delivery, None

        delivery, previous = self._tx(work)
        if previous is not None and delivery.job is not None:
            self._changed(delivery.job, previous)
        return delivery

    def finish(
        self,
        job_id: int,
        worker: str,
        state: str,
        error: str | None = None,
        error_node: str | None = None,
    ) -> Job | None:
        """Record the outcome of a run; retries a failure while attempts remain.

        Only the worker that holds the job can finish it (None otherwise: the job was
        taken over meanwhile, e.g. after a missed heartbeat).
        """
        if state not in ("succeeded", "failed", "cancelled"):
            raise JobError(f"job {job_id}: {state!r} is not an outcome of a run")
        now = self.clock.now()

        def work(conn: Connection) -> tuple[Job, str] | None:
            job = self._get(conn, job_id)
            if job.state != "running" or job.worker != worker:
                return None
            final = state
            values: dict[str, Any] = {"error": error, "error_node": error_node, "updated_at": now}
            if state == "failed" and job.attempts < job.max_attempts and not job.kill_requested:
                final = "queued"
                values.update(worker=None, heartbeat_at=None)
                message = f"attempt {job.attempts} failed, queued again: {error}"
            else:
                values.update(finished_at=now)
                message = state + (f": {error}" if error else "")
            values["state"] = final
            conn.execute(sa.update(jobs).where(jobs.c.id == job_id).values(**values))
            self._log(conn, job_id, message)
            changed = {k: v for k, v in values.items() if k != "updated_at"}
            updated = dataclasses.replace(job, **changed)
            if final in FAILED_STATES:
                self._abort_group_rest(conn, updated)
            return updated, job.state

        outcome = self._tx(work)
        if outcome is None:
            return None
        job, previous = outcome
        return self._changed(job, previous)

    def lost(self, timeout: timedelta) -> list[Job]:
        """Fail (or requeue) running jobs whose worker stopped heartbeating."""
        limit = self.clock.now() - timeout
        stale = self._tx(
            lambda conn: conn.execute(
                sa.select(jobs.c.id, jobs.c.worker, jobs.c.started_at, jobs.c.heartbeat_at)
                .where(jobs.c.state == "running")
                .where(jobs.c.heartbeat_at < limit)
            ).all(),
            write=False,
        )
        done = []
        for job_id, worker, started_at, beat_at in stale:
            if beat_at == started_at:
                # no worker ever took it (a worker beats before it does anything): its
                # server died between the claim and the hand-over. Nothing of it ran.
                job = self._requeue_untaken(job_id, worker, started_at)
            else:
                job = self.finish(job_id, worker, "failed", "worker lost: no heartbeat")
            if job is not None:
                done.append(job)
        return done

    def _requeue_untaken(self, job_id: int, worker: str, started_at: datetime) -> Job | None:
        """Put a claimed job that no worker took back in the queue, its attempt not counted."""
        now = self.clock.now()

        def work(conn: Connection) -> Job | None:
            changed = conn.execute(
                sa.update(jobs)
                .where(
                    jobs.c.id == job_id,
                    jobs.c.worker == worker,
                    jobs.c.state == "running",
                    jobs.c.heartbeat_at == started_at,  # still untaken: no beat since the claim
                )
                .values(
                    state="queued",
                    worker=None,
                    started_at=None,
                    heartbeat_at=None,
                    attempts=jobs.c.attempts - 1,
                    updated_at=now,
                )
            )
            if changed.rowcount != 1:
                return None
            self._log(
                conn, job_id, f"not started: no worker took it from {worker}; queued again"
            )
            return self._get(conn, job_id)

        job = self._tx(work)
        return self._changed(job, "running") if job is not None else None

    def running(self) -> list[Job]:
        return self.list(state="running", limit=10_000)

    def next_due(self) -> datetime | None:
        """When the earliest queued job becomes due (for timed wake-ups)."""
        query = sa.select(sa.func.min(jobs.c.not_before)).where(jobs.c.state == "queued")
        return self._tx(lambda conn: conn.execute(query).scalar(), write=False)

    def kill_requests(self) -> list[Job]:
        query = sa.select(jobs).where(jobs.c.state == "running", jobs.c.kill_requested)
        return self._tx(lambda conn: [_job(r) for r in conn.execute(query)], write=False)
