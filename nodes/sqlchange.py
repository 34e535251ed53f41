"""``trigger.sql_change``: new or changed rows of a table start the flow.

The listener polls the table for rows whose watermark column (an ``updated_at`` timestamp
or an increasing id) is past the stored watermark, fires one job per row (or one per poll
in ``batch`` mode) and waits for those jobs. The watermark is advanced only over rows
whose job succeeded, and kept per trigger in the database, so a row fires once when all
goes well, again when its job failed, and never twice because the server restarted.
Rows that share one watermark value are told apart by their key columns.

On PostgreSQL, ``notify_channel`` makes changes instant: the listener ``LISTEN``\\ s on the
channel and polls as soon as a notification arrives (a table trigger of yours sends
``NOTIFY``; see docs/nodes.md). The watermark query stays the single source of truth, so a
missed or doubled notification changes nothing.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Mapping
from datetime import date, datetime
from decimal import Decimal
from typing import Any

import sqlalchemy as sa
from sqlalchemy.pool import NullPool

from engine.errors import FlowmillError, NodeError
from engine.run.streams import json_safe
from engine.spec import ConfigProblem, NodeSpec
from nodes.sql import _db_message, _resolve_url, _safe
from nodes.triggers import event_records

__all__ = ["NODES", "SQL_CHANGE"]

IDENT = r"^[A-Za-z_][A-Za-z0-9_$]*(\.[A-Za-z_][A-Za-z0-9_$]*)?$"

SQL_CHANGE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["table", "watermark"],
    "oneOf": [{"required": ["url"]}, {"required": ["connection"]}],
    "properties": {
        "connection": {
            "type": "string",
            "minLength": 1,
            "format": "connection",
            "title": "Connection",
            "description": "Name of a stored database connection; its 'url' is used.",
        },
        "url": {
            "type": "string",
            "minLength": 1,
            "title": "Database URL",
            "description": "SQLAlchemy URL, e.g. sqlite:///${data_dir}/erp.db (no passwords "
            "here: use a connection for a server with credentials).",
        },
        "table": {
            "type": "string",
            "pattern": IDENT,
            "title": "Table",
            "description": "The table to watch, e.g. customers (or schema.customers).",
        },
        "watermark": {
            "type": "string",
            "pattern": IDENT,
            "title": "Watermark column",
            "description": "A column that grows with every insert or change: a timestamp such "
            "as updated_at, or an increasing id (then only new rows start the flow).",
        },
        "key": {
            "type": "array",
            "items": {"type": "string", "pattern": IDENT},
            "default": [],
            "title": "Key columns",
            "description": "Columns that identify a row (default: the table's primary key). "
            "They tell apart rows with the same watermark value.",
        },
        "columns": {
            "type": "array",
            "items": {"type": "string", "pattern": IDENT},
            "default": [],
            "title": "Columns",
            "description": "Columns of the record (default: all).",
        },
        "mode": {
            "type": "string",
            "enum": ["row", "batch"],
            "default": "row",
            "title": "Jobs",
            "description": "row: one job per changed row; batch: one job for all rows "
            "found by one poll.",
        },
        "start": {
            "type": "string",
            "enum": ["now", "all"],
            "default": "now",
            "title": "First start",
            "description": "now: only rows changed after the trigger first started; all: "
            "every existing row starts the flow once, too.",
        },
        "poll_seconds": {
            "type": "number",
            "minimum": 0.2,
            "maximum": 86400,
            "default": 5,
            "title": "Poll every (s)",
            "description": "Seconds between looks at the table (with a notify channel, the "
            "longest wait when no notification comes).",
        },
        "max_rows": {
            "type": "integer",
            "minimum": 1,
            "maximum": 100000,
            "default": 1000,
            "title": "Rows per poll",
            "description": "At most this many changed rows per poll; the rest follow at once.",
        },
        "retry_seconds": {
            "type": "number",
            "minimum": 1,
            "maximum": 86400,
            "default": 60,
            "title": "After a failed job (s)",
            "description": "A row whose job failed starts a new job after this many seconds.",
        },
        "notify_channel": {
            "type": "string",
            "pattern": r"^[A-Za-z_][A-Za-z0-9_]*$",
            "title": "PostgreSQL notify channel",
            "description": "PostgreSQL only: LISTEN on this channel and look at once when a "
            "notification arrives (a trigger on the table sends NOTIFY).",
        },
    },
}


def check_sql_change(config: dict[str, Any]) -> list[ConfigProblem]:
    problems = []
    if config.get("notify_channel") and str(config.get("url", "")).startswith(
        ("sqlite", "mysql", "mariadb")
    ):
        problems.append(ConfigProblem("notify_channel", "only PostgreSQL has LISTEN/NOTIFY"))
    return problems


class _Watch:
    """One table under watch: its columns, the change query and the state to keep."""

    def __init__(self, ctx: Any, engine: sa.Engine, config: Mapping[str, Any]) -> None:
        self.ctx = ctx
        self.config = config
        schema, _, name = str(config["table"]).rpartition(".")
        try:
            self.table = sa.Table(name, sa.MetaData(), schema=schema or None, autoload_with=engine)
        except sa.exc.NoSuchTableError:
            raise NodeError(ctx.node_id, f"table {config['table']!r} does not exist") from None
        columns = self.table.c
        self.mark = self._column(config["watermark"], "watermark")
        keys = list(config.get("key") or []) or [c.name for c in self.table.primary_key.columns]
        self.keys = [self._column(k, "key") for k in keys]
        wanted = list(config.get("columns") or [])
        self.columns = [self._column(c, "columns") for c in wanted] if wanted else list(columns)
        for extra in [self.mark, *self.keys]:
            if extra.name not in {c.name for c in self.columns}:
                self.columns.append(extra)

    def _column(self, name: str, field: str) -> sa.Column[Any]:
        try:
            return self.table.c[name]
        except KeyError:
            raise NodeError(
                self.ctx.node_id, f"{field}: table {self.config['table']} has no column {name!r}"
            ) from None

    def entry(self, row: Mapping[str, Any]) -> list[Any]:
        """[watermark, *key] of a row, as kept in the trigger's state."""
        return [_stored(row[self.mark.name]), *(json_safe(row[k.name]) for k in self.keys)]

    def changed(self, conn: sa.Connection, state: Mapping[str, Any]) -> list[dict[str, Any]]:
        """Rows past the watermark (or at it and not yet done), oldest first."""
        query = sa.select(*self.columns).order_by(self.mark, *self.keys)
        if "watermark" in state:
            mark = self.value(state["watermark"])
            query = query.where(self.mark >= sa.bindparam("mark", mark, type_=self.mark.type))
        rows = []
        done = {_same(item) for item in state.get("done", [])}
        limit = int(self.config["max_rows"])
        # rows at the watermark already done are skipped in Python: a page holds at most
        # ``limit`` new rows plus those
        for row in conn.execute(query.limit(limit + len(done))).mappings():
            record = dict(row)
            if _same(self.entry(record)) in done:
                continue
            rows.append(record)
            if len(rows) == limit:
                break
        return rows

    def current_max(self, conn: sa.Connection) -> Any:
        return conn.execute(sa.select(sa.func.max(self.mark))).scalar_one_or_none()

    def value(self, stored: Any) -> Any:
        """A stored (JSON) watermark back as the column's Python value."""
        if isinstance(stored, dict) and "datetime" in stored:
            return datetime.fromisoformat(stored["datetime"])
        if isinstance(stored, dict) and "date" in stored:
            return date.fromisoformat(stored["date"])
        if isinstance(stored, dict) and "decimal" in stored:
            return Decimal(stored["decimal"])
        return stored


def _stored(value: Any) -> Any:
    """A watermark value as JSON that ``_Watch.value`` turns back into the same value."""
    if isinstance(value, datetime):
        return {"datetime": value.isoformat()}
    if isinstance(value, date):
        return {"date": value.isoformat()}
    if isinstance(value, Decimal):
        return {"decimal": str(value)}
    return value


def _same(entry: list[Any]) -> str:
    """An entry of ``done`` as a comparable string."""
    return json.dumps(entry, sort_keys=True, default=str)


def listen(ctx: Any) -> None:
    """Poll (or wait for a PostgreSQL notification), fire, wait, advance the watermark."""
    config = ctx.config
    url = _resolve_url(ctx, config)
    connect_args = {"check_same_thread": False} if url.get_backend_name() == "sqlite" else {}
    engine = sa.create_engine(url, poolclass=NullPool, connect_args=connect_args)
    waiter = None
    try:
        try:
            with engine.connect() as conn:
                watch = _Watch(ctx, engine, config)
                state = ctx.load_state()
                if "watermark" not in state and config["start"] == "now":
                    state = {"watermark": _stored(watch.current_max(conn)), "done": []}
                    if state["watermark"] is None:
                        state = {}  # an empty table: every row to come is new
                    else:  # rows at the current maximum already exist: not new
                        at_max = conn.execute(
                            sa.select(*watch.columns).where(
                                watch.mark == watch.value(state["watermark"])
                            )
                        ).mappings()
                        state["done"] = [watch.entry(row) for row in at_max]
                    ctx.save_state(state)
        except NodeError:
            raise
        except Exception as exc:
            raise FlowmillError(f"cannot watch {_safe(url)}: {_db_message(exc)}") from exc
        if config.get("notify_channel"):
            if url.get_backend_name() != "postgresql":
                raise FlowmillError("notify_channel: only PostgreSQL has LISTEN/NOTIFY")
            waiter = _Notifications(engine, config["notify_channel"])
        if state.get("pending"):  # jobs started before a restart: wait for them first
            state, _ = _settle(ctx, watch, state)
            ctx.save_state(state)
        ctx.ready.set()
        ctx.log.info("watching %s.%s (watermark %s)", _safe(url), config["table"], watch.mark.name)
        while not ctx.stopping.is_set():
            try:
                with engine.connect() as conn:
                    rows = watch.changed(conn, state)
            except Exception as exc:
                raise FlowmillError(f"cannot read {config['table']}: {_db_message(exc)}") from exc
            if rows:
                state = _fire(ctx, watch, rows, state)
                ctx.save_state(state)
                state, failed = _settle(ctx, watch, state)
                ctx.save_state(state)
                if failed and ctx.wait(float(config["retry_seconds"])):
                    return
                if len(rows) == int(config["max_rows"]) and not failed:
                    continue  # more are waiting
            if waiter is not None:
                waiter.wait(float(config["poll_seconds"]), ctx.stopping)
            elif ctx.wait(float(config["poll_seconds"])):
                return
    except _Stopping:
        return
    finally:
        if waiter is not None:
            waiter.close()
        engine.dispose()


def _fire(
    ctx: Any, watch: _Watch, rows: list[dict[str, Any]], state: Mapping[str, Any]
) -> dict[str, Any]:
    """Start the jobs of ``rows``; the state with those jobs as ``pending``, so a restarted
    server waits for them instead of firing their rows again."""
    batch = ctx.config["mode"] == "batch"
    groups = [rows] if batch else [[r] for r in rows]
    pending = []
    for group in groups:
        records = [json_safe(r) for r in group]
        try:
            job_id: int | None = ctx.fire(records if batch else records[0])
        except FlowmillError as exc:
            ctx.log.error("not started: %s", exc)
            job_id = None
        pending.append({"job": job_id, "rows": [watch.entry(r) for r in group]})
    return {**state, "pending": pending}


def _settle(ctx: Any, watch: _Watch, state: Mapping[str, Any]) -> tuple[dict[str, Any], bool]:
    """Wait for the pending jobs; the new state and whether any failed (None, None when
    the listener is to stop first). The watermark moves up to the first row whose job
    failed; rows at or past it whose job succeeded are kept in ``done``, never fired twice.
    """
    pending = list(state.get("pending", []))
    outcome: dict[int, bool] = {}
    lock = threading.Lock()
    ended = threading.Event()

    def done(job: Any, index: int) -> None:
        with lock:
            outcome[index] = job is not None and job.state == "succeeded"
            if len(outcome) == len(pending):
                ended.set()

    for index, item in enumerate(pending):
        if item["job"] is None:
            done(None, index)
        else:
            ctx.on_done(int(item["job"]), lambda job, i=index: done(job, i))
    while pending and not ended.wait(0.2):
        if ctx.stopping.is_set():  # the jobs go on; a restarted listener waits for them
            raise _Stopping
    entries = [(row, outcome[i]) for i, item in enumerate(pending) for row in item["rows"]]
    failed = next((row for row, good in entries if not good), None)
    new_mark = watch.value((failed or entries[-1][0])[0])
    if failed is not None:
        ctx.log.warning(
            "the job for the row with %s = %s failed: it starts again in %.0f s",
            watch.mark.name,
            json_safe(new_mark),
            float(ctx.config["retry_seconds"]),
        )
    succeeded = [row for row, good in entries if good]
    kept = [e for e in [*state.get("done", []), *succeeded] if watch.value(e[0]) >= new_mark]
    return {"watermark": _stored(new_mark), "done": kept}, failed is not None


class _Stopping(Exception):
    """The listener was told to stop while it waited for its jobs."""


class _Notifications:
    """A PostgreSQL connection that LISTENs on one channel (psycopg 3)."""

    def __init__(self, engine: sa.Engine, channel: str) -> None:
        self.raw = engine.raw_connection()
        self.conn = self.raw.driver_connection
        self.conn.autocommit = True
        self.conn.execute(f'LISTEN "{channel}"')

    def wait(self, seconds: float, stopping: threading.Event) -> None:
        """Return when a notification came, ``seconds`` passed or ``stopping`` was set."""
        deadline = time.monotonic() + seconds
        while not stopping.is_set() and time.monotonic() < deadline:
            for _ in self.conn.notifies(timeout=min(0.5, deadline - time.monotonic())):
                return

    def close(self) -> None:
        with contextlib.suppress(Exception):  # a broken connection is closed anyway
            self.raw.close()


SQL_CHANGE = NodeSpec(
    type="trigger.sql_change",
    title="SQL change",
    category="trigger",
    description="Starts a run for each new or changed row of a table (SQLite, PostgreSQL, "
    "MariaDB): rows past a watermark column such as updated_at. The watermark advances "
    "only after the row's job succeeded. On PostgreSQL, LISTEN/NOTIFY makes it instant.",
    outputs=("out",),
    config_schema=SQL_CHANGE_SCHEMA,
    trigger=True,
    check=check_sql_change,
    listen=listen,
    run=event_records,
)

NODES = (SQL_CHANGE,)
