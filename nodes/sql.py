"""SQL nodes: stream rows out of a database, write records into a table, run a statement.

Every node run opens its own engine (NullPool) inside the output generator and disposes
it in a ``finally``: nothing touches the database until the executor drains ``out``, and a
failed or cancelled run leaves no connection behind. URLs are logged with the password
hidden; database errors are reported by their first line, never with bound values.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import mysql, postgresql, sqlite
from sqlalchemy.pool import NullPool

from engine.errors import FlowmillError, NodeError
from engine.spec import (
    DEFAULT_BATCH_SIZE,
    Batch,
    ConnectionType,
    Inputs,
    NodeSpec,
    Outputs,
    RunContext,
    Stream,
)

__all__ = ["CONNECTION_TYPES", "NODES", "SQL_EXECUTE", "SQL_READ", "SQL_WRITE"]

# How many key values one "which keys exist already?" query may carry; far below the
# bound-parameter limits of SQLite (32766), PostgreSQL (65535) and MariaDB.
_KEY_LOOKUP_CHUNK = 10_000

# -- schemas -------------------------------------------------------------------------

_URL_PROP: dict[str, Any] = {
    "type": "string",
    "minLength": 1,
    "title": "Database URL",
    "description": "SQLAlchemy URL, e.g. sqlite:///${data_dir}/shop.db. A flow never holds "
    "passwords: for a server with credentials use a connection (or a $secret).",
}
_CONNECTION_PROP: dict[str, Any] = {
    "type": "string",
    "minLength": 1,
    "format": "connection",
    "title": "Connection",
    "description": "Name of a stored connection; its 'url' is used.",
}
_PARAMS_PROP: dict[str, Any] = {
    "type": "object",
    "default": {},
    "title": "Parameters",
    "description": "Values bound to :name placeholders (never pasted into the SQL text). "
    "With the 'in' port connected, each record's fields are merged over these.",
}
_BATCH_SIZE_PROP: dict[str, Any] = {
    "type": "integer",
    "minimum": 1,
    "maximum": 100_000,
    "default": DEFAULT_BATCH_SIZE,
    "title": "Batch size",
    "description": "Records per batch (and per round trip to the database).",
}
# Exactly one of url / connection: both or neither match zero or two branches.
_ONE_DATABASE: list[dict[str, Any]] = [{"required": ["url"]}, {"required": ["connection"]}]

READ_SCHEMA: dict[str, Any] = {
    "type": "object",
    "title": "SQL read",
    "additionalProperties": False,
    "required": ["query"],
    "oneOf": _ONE_DATABASE,
    "properties": {
        "url": _URL_PROP,
        "connection": _CONNECTION_PROP,
        "query": {
            "type": "string",
            "minLength": 1,
            "format": "sql",
            "title": "Query",
            "description": "One SELECT; use :name placeholders for values "
            "(write \\: for a literal colon).",
        },
        "params": _PARAMS_PROP,
        "batch_size": _BATCH_SIZE_PROP,
    },
}

WRITE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "title": "SQL write",
    "additionalProperties": False,
    "required": ["table"],
    "oneOf": _ONE_DATABASE,
    "if": {"properties": {"mode": {"enum": ["upsert", "update"]}}, "required": ["mode"]},
    "then": {"required": ["key"]},
    "properties": {
        "url": _URL_PROP,
        "connection": _CONNECTION_PROP,
        "table": {
            "type": "string",
            "minLength": 1,
            "title": "Table",
            "description": "Existing table to write to; its columns are read from the database.",
        },
        "schema": {
            "type": "string",
            "minLength": 1,
            "title": "Schema",
            "description": "Database schema of the table (PostgreSQL schema, MariaDB "
            "database). Leave empty for the connection's default.",
        },
        "mode": {
            "type": "string",
            "enum": ["insert", "upsert", "update"],
            "default": "insert",
            "title": "Mode",
            "description": "insert: new rows only (a duplicate key fails); upsert: insert or "
            "update by key (the key columns need a primary key or unique index); update: "
            "change existing rows by key, records whose key matches no row are skipped.",
        },
        "key": {
            "type": "array",
            "items": {"type": "string", "minLength": 1},
            "minItems": 1,
            "uniqueItems": True,
            "title": "Key columns",
            "description": "Columns that identify a row; required for upsert and update.",
        },
        "batch_size": _BATCH_SIZE_PROP,
        "transaction": {
            "type": "string",
            "enum": ["run", "batch"],
            "default": "run",
            "title": "Transaction",
            "description": "run: the whole node run is one transaction, a failure leaves "
            "the table untouched; batch: commit after every batch, a failure keeps the rows "
            "of the batches committed before it.",
        },
        "create_table": {
            "type": "boolean",
            "default": False,
            "title": "Create the table if missing",
            "description": "When the table does not exist, create it from the first batch: "
            "one column per field (types from the values: integer, number, decimal, date, "
            "timestamp, boolean, text, JSON), the key columns as primary key.",
        },
        "extra_fields": {
            "type": "string",
            "enum": ["error", "ignore"],
            "default": "error",
            "title": "Fields without a column",
            "description": "error: a record field that is not a column of the table fails "
            "the node, naming the field; ignore: such fields are left out.",
        },
    },
}

EXECUTE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "title": "SQL execute",
    "additionalProperties": False,
    "required": ["statement"],
    "oneOf": _ONE_DATABASE,
    "properties": {
        "url": _URL_PROP,
        "connection": _CONNECTION_PROP,
        "statement": {
            "type": "string",
            "minLength": 1,
            "format": "sql",
            "title": "Statement",
            "description": "One statement (UPDATE, DELETE, CALL, DDL …) with :name "
            "placeholders for values.",
        },
        "params": _PARAMS_PROP,
    },
}

# -- shared helpers ------------------------------------------------------------------


def _fail(ctx: RunContext, message: str) -> NodeError:
    return NodeError(ctx.node_id, message, ctx.node_type)


def _db_message(exc: BaseException) -> str:
    """The database's own message, first line only: no SQL text, no bound values."""
    orig = getattr(exc, "orig", None) or exc
    args = getattr(orig, "args", ())
    # PyMySQL errors carry (code, text); show the text first so it reads like the others.
    if len(args) == 2 and isinstance(args[0], int) and isinstance(args[1], str):
        text = f"{args[1]} (error {args[0]})"
    else:
        text = str(orig) or type(orig).__name__
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[0] if lines else type(orig).__name__


def _resolve_url(ctx: RunContext, config: Mapping[str, Any]) -> sa.URL:
    """The URL from ``url`` or from the named connection; exactly one must be set."""
    url, name = config.get("url"), config.get("connection")
    if bool(url) == bool(name):
        raise _fail(ctx, "set exactly one of 'url' and 'connection'")
    source = "url"
    settings: Mapping[str, Any] = {}
    if name:
        settings = ctx.connection(name)
        url = settings.get("url")
        source = f"connection {name!r}"
        if not url:
            raise _fail(ctx, f"connection {name!r} has no 'url'")
    try:
        return _with_credentials(sa.make_url(url), settings)
    except sa.exc.ArgumentError:
        # the parse error repeats the whole string, password included: leave it out
        raise _fail(
            ctx,
            f"{source} is not a SQLAlchemy URL (e.g. sqlite:///data.db or "
            "postgresql+psycopg://user@host/db)",
        ) from None


def _with_credentials(url: sa.URL, settings: Mapping[str, Any]) -> sa.URL:
    """A connection may keep ``user`` and ``password`` apart from its URL (so the URL can
    be shown); they fill in what the URL leaves out."""
    if settings.get("user") and not url.username:
        url = url.set(username=str(settings["user"]))
    if settings.get("password") and url.password is None:
        url = url.set(password=str(settings["password"]))
    return url


def _safe(url: sa.URL) -> str:
    return url.render_as_string(hide_password=True)


def _create_engine(ctx: RunContext, url: sa.URL) -> sa.Engine:
    """One engine per node run, without a pool: the run owns exactly one connection."""
    # the generator may be drained by another thread than the one that created it
    connect_args = {"check_same_thread": False} if url.get_backend_name() == "sqlite" else {}
    try:
        return sa.create_engine(url, poolclass=NullPool, connect_args=connect_args)
    except Exception as exc:
        raise _fail(ctx, f"cannot use {_safe(url)}: {_db_message(exc)}") from exc


def _connect(ctx: RunContext, engine: sa.Engine) -> sa.Connection:
    try:
        return engine.connect()
    except Exception as exc:
        raise _fail(ctx, f"cannot connect to {_safe(engine.url)}: {_db_message(exc)}") from exc


def _records(stream: Iterable[Batch]) -> Iterator[dict[str, Any]]:
    for batch in stream:
        yield from batch


def _rebatch(stream: Iterable[Batch], size: int) -> Iterator[Batch]:
    """Batches of exactly ``size`` (last one shorter), passing right-sized ones through."""
    pending: Batch = []
    for batch in stream:
        if not pending and len(batch) == size:
            yield batch
            continue
        pending.extend(batch)
        start = 0
        while len(pending) - start >= size:
            yield pending[start : start + size]
            start += size
        if start:
            pending = pending[start:]
    if pending:
        yield pending


# -- sql.read ------------------------------------------------------------------------


def sql_read(ctx: RunContext, config: dict[str, Any], inputs: Inputs) -> Outputs:
    """Stream the query's rows as dict records, once, or once per incoming record."""
    return {"out": _read_stream(ctx, config, inputs.get("in"))}


def _read_stream(
    ctx: RunContext, config: Mapping[str, Any], stream: Iterable[Batch] | None
) -> Iterator[Batch]:
    size = int(config.get("batch_size") or DEFAULT_BATCH_SIZE)
    query = sa.text(config["query"])
    base = dict(config.get("params") or {})
    url = _resolve_url(ctx, config)
    ctx.logger.info("reading from %s", _safe(url))
    engine = _create_engine(ctx, url)
    conn: sa.Connection | None = None
    finished = False
    try:
        conn = _connect(ctx, engine)
        # server-side cursor on PostgreSQL (named cursor) and MariaDB (SSCursor); SQLite
        # steps its statement lazily anyway. Never the whole result in memory.
        conn.execution_options(stream_results=True, yield_per=size)
        if stream is None:
            param_sets: Iterable[dict[str, Any]] = (base,)
        else:
            param_sets = ({**base, **record} for record in _records(stream))
        pending: Batch = []
        total = 0
        for n, params in enumerate(param_sets, start=1):
            # with 'in' connected, queries that find nothing yield nothing: check here too
            ctx.check_cancelled()
            which = f" for input record {n}" if stream is not None else ""
            for rows in _fetch(ctx, conn, query, params, size, which):
                if stream is not None:
                    pending.extend(rows)
                    if len(pending) < size:
                        continue
                    rows, pending = pending[:size], pending[size:]
                ctx.check_cancelled()
                total += len(rows)
                ctx.progress(len(rows))
                yield rows
        if pending:
            total += len(pending)
            ctx.progress(len(pending))
            yield pending
        finished = True
        ctx.logger.info("read %d rows", total)
    finally:
        if conn is not None:
            if not finished:
                _abandon(conn)
            conn.close()
        engine.dispose()


def _fetch(
    ctx: RunContext,
    conn: sa.Connection,
    query: sa.TextClause,
    params: Mapping[str, Any],
    size: int,
    which: str,
) -> Iterator[Batch]:
    """Run the query once and yield its rows as dict lists of at most ``size``."""
    completed = False
    try:
        result = conn.execute(query, params)
        if not result.returns_rows:
            raise _fail(ctx, "the query returns no rows: use sql.execute for statements")
        keys = tuple(result.keys())
        for part in result.partitions(size):
            yield [dict(zip(keys, row, strict=False)) for row in part]
        completed = True
    except sa.exc.SQLAlchemyError as exc:
        # SQLAlchemy's own text carries the SQL and bound values: report the database's
        raise _fail(ctx, f"query failed{which}: {_db_message(exc)}") from exc
    finally:
        if not completed:
            _abandon(conn)


def _abandon(conn: sa.Connection) -> None:
    """Drop a connection in the middle of a result, without reading the rest of it."""
    if conn.invalidated:
        return
    raw = conn.connection.dbapi_connection
    # PyMySQL's SSCursor reads every remaining row when it is closed or garbage collected
    # (minutes for a big table after a cancel): detach the pending result before the
    # socket is dropped, so neither happens
    if raw is not None and type(raw).__module__.startswith("pymysql"):
        pending = getattr(raw, "_result", None)
        if pending is not None:
            pending.unbuffered_active = False
        raw._result = None
    conn.invalidate()


# -- sql.write -----------------------------------------------------------------------


@dataclass
class _Plan:
    """Statements for one set of record fields, built once and reused for every batch."""

    statement: sa.Executable
    key_count: sa.Executable | None = None  # upsert: how many keys exist already
    key_fields: tuple[str, ...] = ()
    rename: tuple[tuple[str, str], ...] = ()  # update: record field -> key bind name


def _upsert_statement(
    dialect: str, table: sa.Table, columns: Sequence[str], key: Sequence[str]
) -> sa.Executable:
    values = {c: sa.bindparam(c, type_=table.c[c].type) for c in columns}
    changes = [c for c in columns if c not in key]
    if dialect in ("postgresql", "sqlite"):
        module = postgresql if dialect == "postgresql" else sqlite
        ins = module.insert(table).values(values)
        if not changes:
            return ins.on_conflict_do_nothing(index_elements=list(key))
        return ins.on_conflict_do_update(
            index_elements=list(key), set_={c: ins.excluded[c] for c in changes}
        )
    if dialect in ("mysql", "mariadb"):
        ins = mysql.insert(table).values(values)
        # MariaDB needs at least one assignment; a no-op keeps "only keys" records legal
        return ins.on_duplicate_key_update({c: ins.inserted[c] for c in changes or key[:1]})
    raise ValueError(
        f"upsert is not supported on {dialect} (supported: sqlite, postgresql, mariadb/mysql)"
    )


class _Writer:
    """Writes record batches into one reflected table and counts inserted/updated rows."""

    def __init__(
        self, ctx: RunContext, conn: sa.Connection, table: sa.Table, config: Mapping[str, Any]
    ) -> None:
        self.ctx = ctx
        self.conn = conn
        self.table = table
        self.name = table.fullname
        self.mode: str = config.get("mode") or "insert"
        self.key: tuple[str, ...] = tuple(config.get("key") or ())
        self.ignore_extra = config.get("extra_fields") == "ignore"
        self.dialect = conn.dialect.name
        self.plans: dict[frozenset[str], _Plan] = {}
        # SQLite keeps dates and timestamps as text and sql.read hands that text on, but
        # SQLAlchemy's SQLite types take only date objects: read ISO text back into them
        self.iso_columns: dict[str, Any] = {}
        if self.dialect == "sqlite":
            for column in table.c:
                if isinstance(column.type, sa.DateTime):
                    self.iso_columns[column.name] = datetime.fromisoformat
                elif isinstance(column.type, sa.Date):
                    self.iso_columns[column.name] = date.fromisoformat
        self.inserted = 0
        self.updated = 0
        if self.mode in ("upsert", "update"):
            if not self.key:
                raise _fail(ctx, f"table {self.name}: mode {self.mode!r} needs 'key' columns")
            missing = [k for k in self.key if k not in table.c]
            if missing:
                raise _fail(
                    ctx,
                    f"table {self.name}: key column {missing[0]!r} does not exist "
                    f"(columns: {', '.join(table.c.keys())})",
                )

    def _plan(self, fields: frozenset[str]) -> _Plan:
        """Check one field set against the table and build its statements."""
        table, name = self.table, self.name
        extra = sorted(f for f in fields if f not in table.c)
        if extra and not self.ignore_extra:
            raise _fail(
                self.ctx,
                f"table {name}: field {extra[0]!r} is not a column (columns: "
                f"{', '.join(table.c.keys())}); set extra_fields to 'ignore' to leave it out",
            )
        names = table.c.keys()  # Column objects iterate as columns, not names
        columns = [c for c in names if c in fields]
        if not columns:
            raise _fail(self.ctx, f"table {name}: records have no field that is a column")
        absent = [k for k in self.key if k not in fields]
        if self.mode != "insert" and absent:
            raise _fail(self.ctx, f"table {name}: records lack the key field {absent[0]!r}")
        if self.mode == "insert":
            values = {c: sa.bindparam(c, type_=table.c[c].type) for c in columns}
            return _Plan(sa.insert(table).values(values))
        if self.mode == "update":
            changes = [c for c in columns if c not in self.key]
            if not changes:
                raise _fail(
                    self.ctx, f"table {name}: records carry only key fields, nothing to update"
                )
            # SQLAlchemy reserves column names for SET binds: the WHERE binds get new names
            rename = tuple((k, f"_key_{i}") for i, k in enumerate(self.key))
            where = [table.c[k] == sa.bindparam(b, type_=table.c[k].type) for k, b in rename]
            values = {c: sa.bindparam(c, type_=table.c[c].type) for c in changes}
            return _Plan(sa.update(table).where(*where).values(values), rename=rename)
        try:
            statement = _upsert_statement(self.dialect, table, columns, self.key)
        except ValueError as exc:
            raise _fail(self.ctx, f"table {name}: {exc}") from None
        cols = [table.c[k] for k in self.key]
        target = cols[0] if len(cols) == 1 else sa.tuple_(*cols)
        key_count = (
            sa.select(sa.func.count())
            .select_from(table)
            .where(target.in_(sa.bindparam("keys", expanding=True)))
        )
        return _Plan(statement, key_count=key_count, key_fields=self.key)

    def write(self, batch: Batch) -> None:
        """Write one batch; records with differing field sets go in consecutive runs."""
        first = batch[0].keys()
        if all(record.keys() == first for record in batch):
            self._write_group(frozenset(first), batch)
            return
        start = 0
        for i in range(1, len(batch) + 1):
            if i == len(batch) or batch[i].keys() != batch[start].keys():
                self._write_group(frozenset(batch[start].keys()), batch[start:i])
                start = i

    def _write_group(self, fields: frozenset[str], rows: Batch) -> None:
        plan = self.plans.get(fields)
        if plan is None:
            plan = self.plans[fields] = self._plan(fields)
        if self.iso_columns:
            rows = self._parse_iso(fields, rows)
        if self.mode == "insert":
            self.conn.execute(plan.statement, rows)
            self.inserted += len(rows)
        elif self.mode == "update":
            params = [{**r, **{b: r[k] for k, b in plan.rename}} for r in rows]
            result = self.conn.execute(plan.statement, params)
            self.updated += max(result.rowcount, 0)
        else:
            existing, distinct = self._existing_keys(plan, rows)
            self.conn.execute(plan.statement, rows)
            # a key seen twice in one batch is inserted once, then updated
            new = distinct - existing
            self.inserted += new
            self.updated += len(rows) - new

    def _parse_iso(self, fields: frozenset[str], rows: Batch) -> Batch:
        """``rows`` with ISO text in SQLite date/timestamp columns turned into dates."""
        parsers = [(f, p) for f, p in self.iso_columns.items() if f in fields]
        if not parsers or not any(isinstance(r[f], str) for r in rows for f, _ in parsers):
            return rows
        out = []
        for row in rows:
            row = dict(row)
            for name, parse in parsers:
                if isinstance(row[name], str):
                    try:
                        row[name] = parse(row[name])
                    except ValueError:
                        raise ValueError(
                            f"column {name}: {row[name]!r} is not an ISO date or timestamp"
                        ) from None
            out.append(row)
        return out

    def _existing_keys(self, plan: _Plan, rows: Batch) -> tuple[int, int]:
        """(keys of ``rows`` already in the table, distinct keys in ``rows``)."""
        if len(plan.key_fields) == 1:
            (k,) = plan.key_fields
            keys = list({r[k] for r in rows})
        else:
            keys = list({tuple(r[k] for k in plan.key_fields) for r in rows})
        assert plan.key_count is not None
        chunk = max(1, _KEY_LOOKUP_CHUNK // len(plan.key_fields))
        existing = 0
        for start in range(0, len(keys), chunk):
            part = keys[start : start + chunk]
            existing += self.conn.execute(plan.key_count, {"keys": part}).scalar_one()
        return existing, len(keys)


def sql_write(ctx: RunContext, config: dict[str, Any], inputs: Inputs) -> Outputs:
    """Write every incoming record to the table; one summary record after the commit."""
    return {"out": _write_stream(ctx, config, inputs["in"])}


def _write_stream(ctx: RunContext, config: Mapping[str, Any], stream: Stream) -> Iterator[Batch]:
    size = int(config.get("batch_size") or DEFAULT_BATCH_SIZE)
    per_batch = config.get("transaction") == "batch"
    name = config["table"] if not config.get("schema") else f"{config['schema']}.{config['table']}"
    url = _resolve_url(ctx, config)
    ctx.logger.info("writing to table %s in %s (%s)", name, _safe(url), config.get("mode"))
    engine = _create_engine(ctx, url)
    conn: sa.Connection | None = None
    try:
        conn = _connect(ctx, engine)
        done = 0  # rows written (and, with transaction 'batch', committed)
        try:
            writer: _Writer | None = None
            try:
                table = sa.Table(
                    config["table"],
                    sa.MetaData(),
                    schema=config.get("schema"),
                    autoload_with=conn,
                )
                writer = _Writer(ctx, conn, table, config)
            except sa.exc.NoSuchTableError:
                if not config.get("create_table"):
                    raise _fail(
                        ctx,
                        f"table {name} does not exist in {_safe(url)} "
                        "(create it, or set create_table: true)",
                    ) from None
            batches = _rebatch(stream, size)
            while True:
                try:
                    ctx.check_cancelled()
                    batch = next(batches)
                except StopIteration:
                    break
                except Exception as exc:
                    # upstream failed or the run was cancelled: __cause__ keeps which
                    raise _fail(
                        ctx,
                        f"table {name}: stopped after row {done} "
                        f"({_rolled_back(done, per_batch)}): {_db_message(exc)}",
                    ) from exc
                if not batch:
                    continue
                try:
                    if writer is None:
                        table = _create_table(ctx, conn, config, batch)
                        writer = _Writer(ctx, conn, table, config)
                    writer.write(batch)
                    if per_batch:
                        conn.commit()
                except NodeError:
                    raise
                except Exception as exc:
                    rows = f"rows {done + 1}–{done + len(batch)}"
                    raise _fail(
                        ctx,
                        f"table {name}: {rows}: {_db_message(exc)} "
                        f"({_rolled_back(done, per_batch)})",
                    ) from exc
                done += len(batch)
                ctx.progress(len(batch))
            try:
                conn.commit()
            except Exception as exc:
                raise _fail(
                    ctx,
                    f"table {name}: commit failed, {_rolled_back(done, per_batch)}:"
                    f" {_db_message(exc)}",
                ) from exc
        except BaseException:
            _rollback(ctx, conn)
            raise
        inserted, updated = (writer.inserted, writer.updated) if writer else (0, 0)
        ctx.logger.info("table %s: %d inserted, %d updated", name, inserted, updated)
        summary = {"table": name, "inserted": inserted, "updated": updated}
    finally:
        if conn is not None:
            conn.close()
        engine.dispose()
    yield [summary]


def _column_type(values: list[Any]) -> sa.types.TypeEngine[Any]:
    """A column type that holds every value seen for the field in the first batch."""
    seen = [v for v in values if v is not None]
    kinds = {type(v) for v in seen}
    if not kinds:
        return sa.String(255)
    if kinds <= {bool}:
        return sa.Boolean()
    if kinds <= {int}:
        return sa.BigInteger()
    if kinds <= {int, float}:
        return sa.Float()
    if kinds <= {int, Decimal}:
        return sa.Numeric(18, 4)
    if kinds <= {datetime}:
        return sa.DateTime(timezone=any(v.tzinfo for v in seen))
    if kinds <= {date}:
        return sa.Date()
    if kinds <= {dict, list}:
        return sa.JSON()
    longest = max(len(str(v)) for v in seen)
    return sa.String(255) if longest <= 255 else sa.Text()


def _create_table(
    ctx: RunContext, conn: sa.Connection, config: Mapping[str, Any], batch: Batch
) -> sa.Table:
    """Create the missing table from the first batch (``create_table: true``)."""
    fields: dict[str, None] = {}
    for record in batch:
        fields.update(dict.fromkeys(record))
    key = list(config.get("key") or [])
    missing = [k for k in key if k not in fields]
    if missing:
        raise _fail(
            ctx,
            f"cannot create table {config['table']}: key field {missing[0]!r} "
            f"is not in the records (fields: {', '.join(fields)})",
        )
    columns = []
    for field in fields:
        kind = _column_type([r.get(field) for r in batch])
        if field in key and isinstance(kind, sa.Text):
            kind = sa.String(255)  # MariaDB cannot index TEXT without a length
        columns.append(sa.Column(field, kind, primary_key=field in key, nullable=field not in key))
    table = sa.Table(config["table"], sa.MetaData(), *columns, schema=config.get("schema"))
    table.create(conn)
    ctx.logger.info("created table %s with columns %s", config["table"], ", ".join(fields))
    return table


def _rolled_back(done: int, per_batch: bool) -> str:
    if per_batch and done:
        return f"rolled back; rows 1–{done} were committed before (transaction: batch)"
    return "rolled back, nothing written"


def _rollback(ctx: RunContext, conn: sa.Connection) -> None:
    """Roll back without hiding the error that got us here."""
    try:
        conn.rollback()
    except Exception as exc:  # the original error matters more
        ctx.logger.warning("rollback failed: %s", _db_message(exc))
        conn.invalidate()


# -- sql.execute ---------------------------------------------------------------------


def sql_execute(ctx: RunContext, config: dict[str, Any], inputs: Inputs) -> Outputs:
    """Run the statement once, or once per incoming record, in one transaction."""
    return {"out": _execute_stream(ctx, config, inputs.get("in"))}


def _execute_stream(
    ctx: RunContext, config: Mapping[str, Any], stream: Iterable[Batch] | None
) -> Iterator[Batch]:
    statement = sa.text(config["statement"])
    base = dict(config.get("params") or {})
    url = _resolve_url(ctx, config)
    ctx.logger.info("executing on %s", _safe(url))
    engine = _create_engine(ctx, url)
    conn: sa.Connection | None = None
    counts: list[int] = []
    try:
        conn = _connect(ctx, engine)
        done = 0
        try:
            if stream is None:
                counts.append(_run_statement(ctx, conn, statement, base, "statement"))
            else:
                for batch in stream:
                    ctx.check_cancelled()
                    if not batch:
                        continue
                    params = [{**base, **record} for record in batch]
                    where = f"records {done + 1}–{done + len(batch)}"
                    counts.append(_run_statement(ctx, conn, statement, params, where))
                    done += len(batch)
                    ctx.progress(len(batch))
            conn.commit()
        except BaseException:
            _rollback(ctx, conn)
            raise
    finally:
        if conn is not None:
            conn.close()
        engine.dispose()
    # DBAPI reports -1 when it cannot count (DDL, some drivers): keep that honest
    rowcount = -1 if any(c < 0 for c in counts) else sum(counts)
    ctx.logger.info("statement done, rowcount %d", rowcount)
    yield [{"rowcount": rowcount}]


def _run_statement(
    ctx: RunContext,
    conn: sa.Connection,
    statement: sa.TextClause,
    params: dict[str, Any] | list[dict[str, Any]],
    where: str,
) -> int:
    try:
        return conn.execute(statement, params).rowcount
    except sa.exc.SQLAlchemyError as exc:
        raise _fail(ctx, f"{where} failed: {_db_message(exc)} (rolled back)") from exc


# -- declarations --------------------------------------------------------------------

SQL_READ = NodeSpec(
    type="sql.read",
    title="SQL read",
    category="sql",
    description="Runs a SELECT and streams its rows as records, batch by batch through a "
    "server-side cursor, so any result size fits in memory. With 'in' connected the query "
    "runs once per incoming record, the record's fields bound over 'params'.",
    inputs=("in",),
    required_inputs=(),
    outputs=("out",),
    config_schema=READ_SCHEMA,
    run=sql_read,
)

SQL_WRITE = NodeSpec(
    type="sql.write",
    title="SQL write",
    category="sql",
    description="Writes records into an existing table (insert, upsert or update by key) "
    "in batches and outputs one record {table, inserted, updated} after the commit. "
    "transaction 'run' (default): all or nothing; any failure, including an upstream one, "
    "rolls everything back. transaction 'batch': each batch is committed, so after a "
    "failure the rows of earlier batches stay in the table. Counts are exact unless "
    "another writer changes the same keys at the same time.",
    inputs=("in",),
    outputs=("out",),
    config_schema=WRITE_SCHEMA,
    run=sql_write,
)

SQL_EXECUTE = NodeSpec(
    type="sql.execute",
    title="SQL execute",
    category="sql",
    description="Runs one statement (UPDATE, DELETE, DDL …): once, or with 'in' connected "
    "once per record (fields bound over 'params'), all in one transaction. Outputs "
    "{rowcount} (-1 when the database cannot tell). MariaDB commits DDL at once.",
    inputs=("in",),
    required_inputs=(),
    outputs=("out",),
    config_schema=EXECUTE_SCHEMA,
    run=sql_execute,
)

NODES = (SQL_READ, SQL_WRITE, SQL_EXECUTE)


# -- connection type ------------------------------------------------------------------
_SQL_BACKENDS = ("sqlite", "postgresql", "mysql", "mariadb", "mssql", "oracle")


def _looks_like_sql(settings: dict[str, Any]) -> bool:
    url = str(settings.get("url") or "")
    return url.split(":", 1)[0].split("+", 1)[0] in _SQL_BACKENDS


def try_sql_connection(settings: dict[str, Any], timeout: float) -> str:
    """``flowmill connection test`` for a database: connect, ``SELECT 1``, name the server.

    Raises:
        FlowmillError: naming the URL without its password.
    """
    try:
        url = _with_credentials(sa.make_url(str(settings.get("url") or "")), settings)
    except sa.exc.ArgumentError:
        raise FlowmillError("'url' is not a SQLAlchemy URL") from None
    backend = url.get_backend_name()
    args: dict[str, Any] = {}
    if backend == "postgresql":
        args = {"connect_timeout": max(1, int(timeout))}
    elif backend in ("mysql", "mariadb"):
        args = {"connect_timeout": max(1, int(timeout)), "read_timeout": max(1, int(timeout))}
    elif backend == "sqlite":
        database = url.database or ""
        if database and database != ":memory:" and not Path(database).exists():
            raise FlowmillError(f"{_safe(url)}: the database file does not exist")
    engine = sa.create_engine(url, poolclass=NullPool, connect_args=args)
    try:
        with engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))
            version = ".".join(str(p) for p in (conn.dialect.server_version_info or ()))
    except Exception as exc:
        raise FlowmillError(f"cannot connect to {_safe(url)}: {_db_message(exc)}") from None
    finally:
        engine.dispose()
    return f"{_safe(url)}: {backend} {version}".rstrip()


CONNECTION_TYPES = (
    ConnectionType(
        kind="sql",
        title="SQL database",
        test=try_sql_connection,
        description="Settings: url, a SQLAlchemy URL such as postgresql+psycopg://user@host/db, "
        "mysql+pymysql://… or sqlite:///file.db; password (and user) may be kept apart from "
        "the URL (flowmill connection add NAME --url … --secret password).",
        detect=_looks_like_sql,
    ),
)
