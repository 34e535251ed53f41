"""RunStore on SQLAlchemy Core: SQLite (default, WAL), PostgreSQL, MariaDB.

Every method is one short transaction on a pooled connection, so the executor may call it
from many threads. Writes that touch a run first bump a counter on the run's row: that row
lock serialises the writers of one run (SQLite serialises all writers anyway with
``BEGIN IMMEDIATE``) and yields gap-free log seqs and node positions without a race.
"""

from __future__ import annotations

import fcntl
import json
import os
import random
import threading
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from sqlalchemy import event
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import DBAPIError, IntegrityError

from engine.errors import ConnectionNotFound, SecretNotFound
from engine.store.interface import (
    LogLine,
    NodeRunRecord,
    RunNotFound,
    RunRecord,
    as_utc,
    check_hash,
    check_id,
    check_limit,
    check_log_lines,
    check_run_state,
    check_settings,
    dump_json,
    normalise_node,
)
from engine.store.secrets import SecretBox
from engine.store.tables import (
    connections,
    flow_versions,
    node_runs,
    run_logs,
    runs,
    secrets,
)

__all__ = ["SqlRunStore", "make_engine", "upgrade", "alembic_config", "MIGRATIONS_DIR"]

MIGRATIONS_DIR = Path(__file__).with_name("migrations")
SQLITE_BUSY_TIMEOUT_MS = 30_000
_WRITE = "flowmill_write"
_DEADLOCK_RETRIES = 4

T = TypeVar("T")


# -- engine and migrations -----------------------------------------------------------------


def make_engine(url: str | sa.URL) -> Engine:
    """An engine configured for many threads of short transactions on each backend."""
    url = sa.make_url(url)
    backend = url.get_backend_name()
    if backend == "sqlite":
        engine = sa.create_engine(url, connect_args={"check_same_thread": False})
        event.listen(engine, "connect", _sqlite_on_connect)
        if url.database and url.database != ":memory:":
            gate = _WriteGate(Path(url.database).with_name(Path(url.database).name + "-writers"))
            event.listen(engine, "begin", gate.begin)
            event.listen(engine.pool, "checkin", gate.checkin)
        else:
            event.listen(engine, "begin", _sqlite_on_begin)
        return engine
    options: dict[str, Any] = {"pool_pre_ping": True}
    if backend in ("mysql", "mariadb"):
        # READ COMMITTED: no gap locks, so concurrent upserts of different runs don't
        # deadlock; MariaDB also drops idle connections after wait_timeout.
        options.update(isolation_level="READ COMMITTED", pool_recycle=3600)
    return sa.create_engine(url, **options)


def _sqlite_on_connect(dbapi_connection: Any, _record: Any) -> None:
    # We issue BEGIN ourselves: pysqlite's implicit BEGIN skips DDL and cannot be IMMEDIATE.
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    cursor.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}")
    cursor.execute("PRAGMA foreign_keys = ON")
    cursor.execute("PRAGMA journal_mode = WAL")
    cursor.execute("PRAGMA synchronous = NORMAL")  # safe with WAL: a crash loses no commit
    cursor.close()


def _sqlite_on_begin(conn: Connection) -> None:
    # A deferred transaction that reads and then writes cannot wait for the lock in WAL
    # mode (SQLITE_BUSY at once); IMMEDIATE takes the write lock up front and waits.
    conn.exec_driver_sql("BEGIN IMMEDIATE" if conn.get_execution_options().get(_WRITE) else "BEGIN")


class _WriteGate:
    """Queue SQLite writers of all processes on an flock before ``BEGIN IMMEDIATE``.

    SQLite lets one writer in at a time and makes the others retry after sleeps of 1, 2,
    5, 10… ms; with a server and worker processes writing small transactions all the
    time, those sleeps cost more than the writes. Waiting on a file lock instead wakes
    the next writer the moment the previous one is done. The kernel drops the lock of a
    process that dies, so a killed worker never blocks the others.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.RLock()
        self._fd: int | None = None
        self._holders: dict[int, int] = {}  # id(dbapi connection) -> depth

    def begin(self, conn: Connection) -> None:
        if conn.get_execution_options().get(_WRITE):
            self._lock.acquire()
            try:
                if not self._holders:
                    if self._fd is None:
                        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
                    fcntl.flock(self._fd, fcntl.LOCK_EX)
                key = id(conn.connection.dbapi_connection)
                self._holders[key] = self._holders.get(key, 0) + 1
            except BaseException:
                self._lock.release()
                raise
            conn.exec_driver_sql("BEGIN IMMEDIATE")
        else:
            conn.exec_driver_sql("BEGIN")

    def checkin(self, dbapi_connection: Any, _record: Any) -> None:
        depth = self._holders.pop(id(dbapi_connection), 0)
        if not depth:
            return
        if not self._holders and self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
        for _ in range(depth):
            self._lock.release()


def alembic_config(connection: Connection | None = None) -> Config:
    """Alembic configuration of the run store, built in code (no alembic.ini).

    Also for writing the next migration::

        command.revision(alembic_config(), message="jobs", rev_id="0002")
    """
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR).replace("%", "%%"))
    config.set_main_option("file_template", "%%(rev)s_%%(slug)s")
    if connection is not None:
        config.attributes["connection"] = connection
    return config


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Migrate the database to ``revision``; safe when several servers start at once."""
    dialect = engine.dialect.name
    with engine.connect() as conn:
        if dialect in ("mysql", "mariadb"):
            # MariaDB DDL commits implicitly, so a session lock must span the migration.
            conn.execute(sa.text("SELECT GET_LOCK('flowmill_migrate', 300)"))
            conn.commit()
        try:
            conn.execution_options(**{_WRITE: True})
            with conn.begin():
                if dialect == "postgresql":
                    conn.execute(sa.text("SELECT pg_advisory_xact_lock(7046151530)"))
                command.upgrade(alembic_config(conn), revision)
        finally:
            if dialect in ("mysql", "mariadb"):
                conn.execute(sa.text("SELECT RELEASE_LOCK('flowmill_migrate')"))
                conn.commit()


def _is_transient(exc: DBAPIError) -> bool:
    """A deadlock or serialisation failure: the transaction can simply be run again."""
    orig = exc.orig
    if getattr(orig, "sqlstate", None) in ("40P01", "40001"):  # PostgreSQL
        return True
    args = getattr(orig, "args", ())
    return bool(args) and args[0] in (1213, 1205)  # MariaDB deadlock, lock wait timeout


# -- the store -----------------------------------------------------------------------------


class SqlRunStore:
    """The RunStore on a SQL database (see module docstring for the concurrency design)."""

    def __init__(self, url: str | sa.URL, box: SecretBox, *, migrate: bool = True) -> None:
        self._engine = make_engine(url)
        self._box = box
        if migrate:
            try:
                upgrade(self._engine)
            except BaseException:
                self._engine.dispose()
                raise

    @property
    def engine(self) -> Engine:
        """The SQLAlchemy engine, for later stores (jobs, schedules) sharing the database."""
        return self._engine

    def __enter__(self) -> SqlRunStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        self._engine.dispose()

    def _tx(self, work: Callable[[Connection], T], *, write: bool = True) -> T:
        """Run ``work`` in one transaction, again if the database chose it as deadlock victim."""
        for attempt in range(_DEADLOCK_RETRIES):
            try:
                with self._engine.connect() as conn:
                    if write:
                        conn.execution_options(**{_WRITE: True})
                    with conn.begin():
                        return work(conn)
            except DBAPIError as exc:
                if attempt + 1 == _DEADLOCK_RETRIES or not _is_transient(exc):
                    raise
                time.sleep(random.uniform(0.005, 0.05) * (attempt + 1))
        raise AssertionError("unreachable")

    def transaction(self, work: Callable[[Connection], T], *, write: bool = True) -> T:
        """Run ``work(conn)`` in one transaction (retried on deadlock); for other stores
        sharing this database, such as the job store."""
        return self._tx(work, write=write)

    def _upsert(
        self, conn: Connection, table: sa.Table, values: dict[str, Any], update: Sequence[str]
    ) -> None:
        """Insert ``values`` or, if the primary key exists, update the ``update`` columns."""
        keys = [c.name for c in table.primary_key.columns]
        dialect = conn.dialect.name
        if dialect in ("sqlite", "postgresql"):
            if dialect == "sqlite":
                from sqlalchemy.dialects.sqlite import insert
            else:
                from sqlalchemy.dialects.postgresql import insert
            stmt = insert(table).values(values)
            if update:
                stmt = stmt.on_conflict_do_update(
                    index_elements=keys, set_={c: stmt.excluded[c] for c in update}
                )
            else:
                stmt = stmt.on_conflict_do_nothing(index_elements=keys)
            conn.execute(stmt)
        elif dialect in ("mysql", "mariadb"):
            from sqlalchemy.dialects.mysql import insert as mysql_insert

            mstmt = mysql_insert(table).values(values)
            changes = {c: mstmt.inserted[c] for c in update} or {keys[0]: table.c[keys[0]]}
            conn.execute(mstmt.on_duplicate_key_update(changes))
        else:  # another SQLAlchemy dialect: portable, fine under the run-row lock
            where = sa.and_(*(table.c[k] == values[k] for k in keys))
            exists = conn.execute(sa.select(sa.literal(1)).select_from(table).where(where))
            if exists.first() is None:
                conn.execute(table.insert().values(values))
            elif update:
                conn.execute(table.update().where(where).values({c: values[c] for c in update}))

    @staticmethod
    def _bump(conn: Connection, run_id: str, column: sa.Column[int], by: int) -> int:
        """Add ``by`` to a counter of the run (locking its row) and return the new value."""
        result = conn.execute(
            runs.update().where(runs.c.run_id == run_id).values({column.name: column + by})
        )
        if result.rowcount == 0:
            raise RunNotFound(run_id)
        return int(conn.execute(sa.select(column).where(runs.c.run_id == run_id)).scalar_one())

    # -- flow versions -------------------------------------------------------------------

    def save_flow_version(self, flow_id: str, flow_hash: str, text: str) -> None:
        check_id(flow_id, "flow_id")
        check_hash(flow_hash)
        values = {
            "hash": flow_hash,
            "flow_id": flow_id,
            "text": text,
            "created_at": datetime.now(UTC),
        }
        self._tx(lambda conn: self._upsert(conn, flow_versions, values, update=()))

    def get_flow_version(self, flow_hash: str) -> str | None:
        stmt = sa.select(flow_versions.c.text).where(flow_versions.c.hash == flow_hash)
        return self._tx(lambda conn: conn.execute(stmt).scalar_one_or_none(), write=False)

    # -- runs ----------------------------------------------------------------------------

    def create_run(
        self, run_id: str, flow_id: str, flow_hash: str, params: dict, started_at: datetime
    ) -> None:
        values = {
            "run_id": check_id(run_id, "run_id"),
            "flow_id": check_id(flow_id, "flow_id"),
            "flow_hash": check_hash(flow_hash),
            "state": "running",
            "params": dump_json(params),
            "started_at": as_utc(started_at, "started_at"),
            "node_seq": 0,
            "log_seq": 0,
        }
        try:
            self._tx(lambda conn: conn.execute(runs.insert().values(values)))
        except IntegrityError as exc:
            raise ValueError(f"run {run_id!r} already exists") from exc

    def finish_run(
        self,
        run_id: str,
        state: str,
        finished_at: datetime,
        error: str | None = None,
        error_node: str | None = None,
    ) -> None:
        values = {
            "state": check_run_state(run_id, state),
            "finished_at": as_utc(finished_at, "finished_at"),
            "error": error,
            "error_node": None if error_node is None else check_id(error_node, "error_node"),
        }

        def work(conn: Connection) -> None:
            result = conn.execute(runs.update().where(runs.c.run_id == run_id).values(values))
            if result.rowcount == 0:
                raise RunNotFound(run_id)

        self._tx(work)

    def save_node_run(self, run_id: str, node: NodeRunRecord) -> None:
        node = normalise_node(node)
        values = {
            "run_id": run_id,
            "node_id": node.node_id,
            "node_type": node.node_type,
            "state": node.state,
            "started_at": node.started_at,
            "finished_at": node.finished_at,
            "seconds": node.seconds,
            "records_in": dump_json(node.records_in),
            "records_out": dump_json(node.records_out),
            "sample": dump_json(node.sample),
            "last": dump_json(node.last),
            "error": node.error,
            "attempts": node.attempts,
            "status": node.status,
        }
        update = [k for k in values if k not in ("run_id", "node_id")]  # position stays

        def work(conn: Connection) -> None:
            position = self._bump(conn, run_id, runs.c.node_seq, 1)
            self._upsert(conn, node_runs, {**values, "position": position}, update)

        self._tx(work)

    def append_log(self, run_id: str, lines: Sequence[LogLine]) -> None:
        checked = check_log_lines(run_id, lines)
        if not checked:
            return

        def work(conn: Connection) -> None:
            last = self._bump(conn, run_id, runs.c.log_seq, len(checked))
            first = last - len(checked) + 1
            conn.execute(
                run_logs.insert(),
                [
                    {
                        "run_id": run_id,
                        "seq": first + i,
                        "node_id": line.node_id,
                        "ts": line.ts,
                        "level": line.level,
                        "message": line.message,
                    }
                    for i, line in enumerate(checked)
                ],
            )

        self._tx(work)

    def get_run(self, run_id: str) -> RunRecord | None:
        def work(conn: Connection) -> RunRecord | None:
            row = conn.execute(sa.select(runs).where(runs.c.run_id == run_id)).first()
            if row is None:
                return None
            record = _run_record(row)
            node_rows = conn.execute(
                sa.select(node_runs)
                .where(node_runs.c.run_id == run_id)
                .order_by(node_runs.c.position)
            )
            record.nodes = [_node_record(r) for r in node_rows]
            return record

        return self._tx(work, write=False)

    def list_runs(self, flow_id: str | None = None, limit: int = 50) -> list[RunRecord]:
        stmt = sa.select(runs).order_by(runs.c.started_at.desc(), runs.c.run_id.desc())
        if flow_id is not None:
            stmt = stmt.where(runs.c.flow_id == flow_id)
        stmt = stmt.limit(check_limit(limit))
        return self._tx(lambda conn: [_run_record(r) for r in conn.execute(stmt)], write=False)

    def get_log(
        self, run_id: str, node_id: str | None = None, after_seq: int = 0, limit: int = 1000
    ) -> list[LogLine]:
        stmt = sa.select(run_logs).where(run_logs.c.run_id == run_id, run_logs.c.seq > after_seq)
        if node_id is not None:
            stmt = stmt.where(run_logs.c.node_id == node_id)
        stmt = stmt.order_by(run_logs.c.seq).limit(check_limit(limit))

        def work(conn: Connection) -> list[LogLine]:
            return [
                LogLine(
                    run_id=r.run_id,
                    node_id=r.node_id,
                    ts=r.ts,
                    level=r.level,
                    message=r.message,
                    seq=r.seq,
                )
                for r in conn.execute(stmt)
            ]

        return self._tx(work, write=False)

    # -- connections and secrets (encrypted) ---------------------------------------------

    def _set_encrypted(self, table: sa.Table, name: str, plaintext: str) -> None:
        values = {
            "name": name,
            "ciphertext": self._box.encrypt(plaintext),
            "updated_at": datetime.now(UTC),
        }
        self._tx(lambda conn: self._upsert(conn, table, values, ["ciphertext", "updated_at"]))

    def _get_ciphertext(self, table: sa.Table, name: str) -> str | None:
        stmt = sa.select(table.c.ciphertext).where(table.c.name == name)
        return self._tx(lambda conn: conn.execute(stmt).scalar_one_or_none(), write=False)

    def _names(self, table: sa.Table) -> list[str]:
        # Sorted in Python: database collations disagree on case and accents.
        names = self._tx(
            lambda conn: conn.execute(sa.select(table.c.name)).scalars().all(), write=False
        )
        return sorted(names)

    def _delete(self, table: sa.Table, name: str) -> bool:
        stmt = table.delete().where(table.c.name == name)
        return self._tx(lambda conn: conn.execute(stmt).rowcount > 0)

    def set_connection(self, name: str, settings: dict) -> None:
        self._set_encrypted(connections, name, check_settings(name, settings))

    def get_connection(self, name: str) -> dict:
        token = self._get_ciphertext(connections, name)
        if token is None:
            raise ConnectionNotFound(name)
        return json.loads(self._box.decrypt(token, what=f"connection {name!r}"))

    def list_connections(self) -> list[str]:
        return self._names(connections)

    def delete_connection(self, name: str) -> bool:
        return self._delete(connections, name)

    def set_secret(self, name: str, value: str) -> None:
        check_id(name, "secret name")
        if not isinstance(value, str):
            raise TypeError(f"secret {name!r}: value must be a string, not {type(value).__name__}")
        self._set_encrypted(secrets, name, value)

    def get_secret(self, name: str) -> str:
        token = self._get_ciphertext(secrets, name)
        if token is None:
            raise SecretNotFound(name)
        return self._box.decrypt(token, what=f"secret {name!r}")

    def list_secrets(self) -> list[str]:
        return self._names(secrets)

    def delete_secret(self, name: str) -> bool:
        return self._delete(secrets, name)


def _run_record(row: sa.Row[Any]) -> RunRecord:
    return RunRecord(
        run_id=row.run_id,
        flow_id=row.flow_id,
        flow_hash=row.flow_hash,
        state=row.state,
        params=json.loads(row.params),
        started_at=row.started_at,
        finished_at=row.finished_at,
        error=row.error,
        error_node=row.error_node,
    )


def _node_record(row: sa.Row[Any]) -> NodeRunRecord:
    return NodeRunRecord(
        node_id=row.node_id,
        node_type=row.node_type,
        state=row.state,
        started_at=row.started_at,
        finished_at=row.finished_at,
        seconds=row.seconds,
        records_in=json.loads(row.records_in),
        records_out=json.loads(row.records_out),
        sample=json.loads(row.sample),
        last=json.loads(row.last) if row.last else {},
        error=row.error,
        attempts=row.attempts,
        status=row.status,
    )
