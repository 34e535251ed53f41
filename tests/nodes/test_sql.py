"""sql.read, sql.write and sql.execute against real SQLite, PostgreSQL and MariaDB.

Every test takes ``db_url`` (a fresh empty database of each kind), arranges tables with
SQLAlchemy metadata, runs the node once and checks what a user would see: records on
``out``, rows in the table, the error message.
"""

from __future__ import annotations

import math
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from datetime import date, datetime
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import sqlalchemy as sa
from sqlalchemy.pool import NullPool

from engine.errors import NodeError, RunCancelled
from engine.spec import NodeLogger, NodeSpec, RunContext
from engine.testing import run_node
from nodes.sql import NODES, SQL_EXECUTE, SQL_READ, SQL_WRITE
from tests.conftest import DEADLINE

WRITE_NODE_ID = "sql-write-test"  # the id engine.testing.run_node gives the node


# -- helpers -------------------------------------------------------------------------


@pytest.fixture
def engine(db_url: str) -> Iterator[sa.Engine]:
    """The test's own view of the database; NullPool so it holds no idle session."""
    eng = sa.create_engine(db_url, poolclass=NullPool)
    yield eng
    eng.dispose()


def make_items(engine: sa.Engine) -> sa.Table:
    md = sa.MetaData()
    items = sa.Table(
        "items",
        md,
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("name", sa.String(50), nullable=False),
        sa.Column("qty", sa.Integer, nullable=True),
    )
    md.create_all(engine)
    return items


def item(i: int, **changes: Any) -> dict[str, Any]:
    return {"id": i, "name": f"item {i}", "qty": i % 7, **changes}


def fill(engine: sa.Engine, table: sa.Table, rows: list[dict[str, Any]]) -> None:
    with engine.begin() as conn:
        conn.execute(table.insert(), rows)


def table_rows(engine: sa.Engine, table: sa.Table) -> list[dict[str, Any]]:
    with engine.connect() as conn:
        return [dict(r._mapping) for r in conn.execute(sa.select(table).order_by(table.c.id))]


def count(engine: sa.Engine, table: sa.Table) -> int:
    with engine.connect() as conn:
        return conn.execute(sa.select(sa.func.count()).select_from(table)).scalar_one()


def context(
    tmp_path: Path,
    node_type: str,
    cancel: threading.Event | None = None,
    connections: dict[str, str] | None = None,
    log: list[str] | None = None,
) -> RunContext:
    """A bare context for tests that pull a node's output generator by hand."""
    return RunContext(
        run_id="test-run",
        flow_id="test-flow",
        node_id=f"{node_type.replace('.', '-')}-manual",
        node_type=node_type,
        params={},
        work_dir=tmp_path,
        data_dir=tmp_path,
        logger=NodeLogger(lambda level, text: (log if log is not None else []).append(text)),
        cancel_event=cancel,
        connection_lookup=lambda name: {"url": (connections or {})[name]},
    )


def start(spec: NodeSpec, ctx: RunContext, config: dict[str, Any], inputs: Any = None) -> Any:
    return spec.run(ctx, spec.with_defaults(config), inputs or {})["out"]


def wait_until(check: Callable[[], bool], seconds: float = DEADLINE) -> bool:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if check():
            return True
        time.sleep(0.05)
    return check()


def reader_state(engine: sa.Engine) -> str:
    """What the *other* session on this database is doing: 'streaming' or 'gone'/'idle'."""
    dialect = engine.dialect.name
    if dialect == "sqlite":
        # an active SELECT holds a shared lock: an exclusive lock must fail at once
        probe = sqlite3.connect(engine.url.database, timeout=0)
        try:
            probe.execute("BEGIN EXCLUSIVE")
            probe.execute("ROLLBACK")
            return "gone"
        except sqlite3.OperationalError:
            return "streaming"
        finally:
            probe.close()
    with engine.connect() as conn:
        if dialect == "postgresql":
            queries = conn.execute(
                sa.text(
                    "SELECT query FROM pg_stat_activity "
                    "WHERE datname = current_database() AND pid <> pg_backend_pid()"
                )
            ).scalars()
            # a named (server-side) cursor is read with FETCH; a client cursor would
            # have fetched everything with the SELECT itself
            states = ["streaming" if q.startswith("FETCH") else "idle" for q in queries]
        else:
            commands = conn.execute(
                sa.text(
                    "SELECT command FROM information_schema.processlist "
                    "WHERE db = DATABASE() AND id <> CONNECTION_ID()"
                )
            ).scalars()
            # an unbuffered (SSCursor) result keeps the server busy sending it
            states = ["streaming" if c == "Query" else "idle" for c in commands]
    return states[0] if states else "gone"


# -- sql.read ------------------------------------------------------------------------


def test_read_streams_rows_in_batches_with_bound_params(db_url: str, engine: sa.Engine) -> None:
    items = make_items(engine)
    fill(engine, items, [item(i) for i in range(1, 2501)])

    result = run_node(
        SQL_READ,
        {
            "url": db_url,
            "query": "SELECT id, name FROM items WHERE id >= :first ORDER BY id",
            "params": {"first": 100},
            "batch_size": 400,
        },
    )

    rows = result["out"]
    assert len(rows) == 2401
    assert result.batches["out"] == math.ceil(2401 / 400)
    assert rows[0] == {"id": 100, "name": "item 100"}
    assert rows[-1] == {"id": 2500, "name": "item 2500"}


def test_read_keeps_a_server_side_cursor_and_lets_go_when_cancelled(
    db_url: str, engine: sa.Engine, tmp_path: Path
) -> None:
    md = sa.MetaData()
    wide = sa.Table(
        "wide",
        md,
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("pad", sa.String(400), nullable=False),
    )
    md.create_all(engine)
    fill(engine, wide, [{"id": i, "pad": "x" * 300} for i in range(1000)])
    with engine.begin() as conn:
        # 100,000 rows of ~300 bytes: far more than the socket buffers hold
        conn.execute(
            sa.text(
                "INSERT INTO wide (id, pad) SELECT w.id + 1000 * k.id, w.pad FROM wide w "
                "CROSS JOIN (SELECT id FROM wide WHERE id BETWEEN 1 AND 99) k"
            )
        )
    cancel = threading.Event()
    out = start(
        SQL_READ,
        context(tmp_path, "sql.read", cancel),
        {"url": db_url, "query": "SELECT id, pad FROM wide", "batch_size": 1000},
    )

    first = next(out)

    assert len(first) == 1000
    assert reader_state(engine) == "streaming"
    cancel.set()
    with pytest.raises(RunCancelled):
        next(out)
    assert wait_until(lambda: reader_state(engine) == "gone")


def test_read_through_a_named_connection(db_url: str, engine: sa.Engine) -> None:
    items = make_items(engine)
    fill(engine, items, [item(i) for i in range(1, 11)])

    result = run_node(
        SQL_READ,
        {
            "connection": "erp",
            "query": "SELECT id FROM items WHERE qty = :qty ORDER BY id",
            "params": {"qty": 3},
        },
        connections={"erp": {"url": db_url}},
    )

    assert result["out"] == [{"id": 3}, {"id": 10}]


def test_read_runs_the_query_once_per_incoming_record(db_url: str, engine: sa.Engine) -> None:
    items = make_items(engine)
    fill(engine, items, [item(i) for i in range(1, 31)])

    result = run_node(
        SQL_READ,
        {
            "url": db_url,
            "query": "SELECT id FROM items WHERE qty = :qty AND id <= :upto ORDER BY id",
            "params": {"upto": 20},
            "batch_size": 2,
        },
        {"in": [{"qty": 1}, {"qty": 5, "upto": 30}, {"qty": 6, "unused": "x"}]},
    )

    assert [r["id"] for r in result["out"]] == [1, 8, 15, 5, 12, 19, 26, 6, 13, 20]
    assert result.batches["out"] == 5


def test_read_never_shows_the_password(db_url: str, tmp_path: Path) -> None:
    url = sa.make_url(db_url).set(username="nobody", password="s3cret-pw")
    log: list[str] = []
    ctx = context(tmp_path, "sql.read", connections={"erp": url.render_as_string(False)}, log=log)
    out = start(SQL_READ, ctx, {"connection": "erp", "query": "SELECT 1"})

    with pytest.raises(NodeError) as failure:
        list(out)

    assert failure.value.node == "sql-read-manual"
    assert "s3cret-pw" not in str(failure.value)
    text = "\n".join(log)
    assert "nobody:***@" in text
    assert "s3cret-pw" not in text


# -- sql.write -----------------------------------------------------------------------


def test_write_inserts_records_and_reports_what_it_did(db_url: str, engine: sa.Engine) -> None:
    items = make_items(engine)
    records = [item(i) for i in range(1, 2501)]

    result = run_node(SQL_WRITE, {"url": db_url, "table": "items"}, {"in": records})

    assert result["out"] == [{"table": "items", "inserted": 2500, "updated": 0}]
    assert table_rows(engine, items) == records


def test_write_does_nothing_until_its_output_is_drained(
    db_url: str, engine: sa.Engine, tmp_path: Path
) -> None:
    items = make_items(engine)
    out = start(
        SQL_WRITE,
        context(tmp_path, "sql.write"),
        {"url": db_url, "table": "items"},
        {"in": iter([[item(1), item(2)]])},
    )

    assert count(engine, items) == 0
    assert list(out) == [[{"table": "items", "inserted": 2, "updated": 0}]]
    assert count(engine, items) == 2


def test_upsert_twice_updates_instead_of_duplicating(db_url: str, engine: sa.Engine) -> None:
    items = make_items(engine)
    config = {"url": db_url, "table": "items", "mode": "upsert", "key": ["id"], "batch_size": 300}

    first = run_node(SQL_WRITE, config, {"in": [item(i) for i in range(1, 1001)]})
    second = run_node(
        SQL_WRITE, config, {"in": [item(i, name=f"new {i}") for i in range(501, 1501)]}
    )

    assert first["out"] == [{"table": "items", "inserted": 1000, "updated": 0}]
    assert second["out"] == [{"table": "items", "inserted": 500, "updated": 500}]
    rows = table_rows(engine, items)
    assert [r["id"] for r in rows] == list(range(1, 1501))
    assert rows[499]["name"] == "item 500"
    assert rows[500]["name"] == "new 501"


def test_upsert_by_composite_key_counts_a_repeated_key_once_as_new(
    db_url: str, engine: sa.Engine
) -> None:
    md = sa.MetaData()
    stock = sa.Table(
        "stock",
        md,
        sa.Column("sku", sa.String(20), primary_key=True),
        sa.Column("store", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("qty", sa.Integer, nullable=False),
    )
    md.create_all(engine)
    fill(engine, stock, [{"sku": "A", "store": 1, "qty": 1}])
    records = [
        {"sku": "A", "store": 1, "qty": 10},  # exists: update
        {"sku": "A", "store": 2, "qty": 20},  # new
        {"sku": "B", "store": 1, "qty": 30},  # new ...
        {"sku": "B", "store": 1, "qty": 31},  # ... and again in the same batch: update
    ]

    result = run_node(
        SQL_WRITE,
        {"url": db_url, "table": "stock", "mode": "upsert", "key": ["sku", "store"]},
        {"in": records},
    )

    assert result["out"] == [{"table": "stock", "inserted": 2, "updated": 2}]
    with engine.connect() as conn:
        got = conn.execute(sa.select(stock).order_by(stock.c.sku, stock.c.store)).all()
    assert [tuple(r) for r in got] == [("A", 1, 10), ("A", 2, 20), ("B", 1, 31)]


def test_update_changes_existing_rows_by_key_and_skips_unknown_keys(
    db_url: str, engine: sa.Engine
) -> None:
    items = make_items(engine)
    fill(engine, items, [item(i) for i in range(1, 6)])

    result = run_node(
        SQL_WRITE,
        {"url": db_url, "table": "items", "mode": "update", "key": ["id"]},
        {"in": [{"id": 2, "qty": 200}, {"id": 4, "qty": 4}, {"id": 99, "qty": 1}]},
    )

    # id 4 keeps its value (4 % 7 == 4) but matched: it counts as updated everywhere
    assert result["out"] == [{"table": "items", "inserted": 0, "updated": 2}]
    rows = table_rows(engine, items)
    assert [r["qty"] for r in rows] == [1, 200, 3, 4, 5]
    assert [r["name"] for r in rows] == [f"item {i}" for i in range(1, 6)]
    assert count(engine, items) == 5


@pytest.mark.parametrize(
    ("mode", "bad_row"),
    [("upsert", item(5000, name=None)), ("insert", item(10))],
    ids=["not-null", "duplicate-key"],
)
def test_a_bad_row_fails_the_node_and_leaves_nothing_then_the_fixed_input_goes_in(
    db_url: str, engine: sa.Engine, mode: str, bad_row: dict[str, Any]
) -> None:
    items = make_items(engine)
    records = [item(i) for i in range(1, 10_001)]
    records[4999] = bad_row
    config = {"url": db_url, "table": "items", "mode": mode, "key": ["id"]}

    with pytest.raises(NodeError) as failure:
        run_node(SQL_WRITE, config, {"in": records})

    message = str(failure.value)
    assert failure.value.node == WRITE_NODE_ID
    assert "items" in message and "rows 4001–5000" in message and "rolled back" in message
    assert isinstance(failure.value.__cause__, sa.exc.IntegrityError)
    assert count(engine, items) == 0

    fixed = [item(i) for i in range(1, 10_001)]
    result = run_node(SQL_WRITE, {**config, "mode": "upsert"}, {"in": fixed})

    assert result["out"] == [{"table": "items", "inserted": 10_000, "updated": 0}]
    with engine.connect() as conn:
        distinct = conn.execute(sa.select(sa.func.count(sa.distinct(items.c.id)))).scalar_one()
    assert count(engine, items) == distinct == 10_000


@pytest.mark.parametrize("how", ["upstream-error", "cancelled"])
def test_input_that_breaks_after_three_batches_leaves_no_rows(
    db_url: str, engine: sa.Engine, tmp_path: Path, how: str
) -> None:
    items = make_items(engine)
    cancel = threading.Event()

    def batches() -> Iterator[list[dict[str, Any]]]:
        for b in range(3):
            yield [item(i) for i in range(b * 1000 + 1, b * 1000 + 1001)]
        if how == "cancelled":
            cancel.set()  # the node must notice before asking for more
            yield [item(i) for i in range(3001, 4001)]
        raise RuntimeError("upstream node broke")

    out = start(
        SQL_WRITE,
        context(tmp_path, "sql.write", cancel),
        {"url": db_url, "table": "items"},
        {"in": batches()},
    )
    with pytest.raises(NodeError) as failure:
        list(out)

    assert "items" in str(failure.value) and "rolled back" in str(failure.value)
    expected = RunCancelled if how == "cancelled" else RuntimeError
    assert isinstance(failure.value.__cause__, expected)
    assert count(engine, items) == 0


def test_transaction_batch_keeps_the_batches_committed_before_a_failure(
    db_url: str, engine: sa.Engine
) -> None:
    items = make_items(engine)

    def records() -> Iterator[dict[str, Any]]:
        yield from (item(i) for i in range(1, 3001))
        raise RuntimeError("upstream node broke")

    with pytest.raises(NodeError) as failure:
        run_node(
            SQL_WRITE,
            {"url": db_url, "table": "items", "transaction": "batch"},
            {"in": records()},
        )

    assert "rows 1–3000 were committed" in str(failure.value)
    assert count(engine, items) == 3000


def test_unknown_table_is_named(db_url: str, engine: sa.Engine) -> None:
    make_items(engine)

    with pytest.raises(NodeError) as failure:
        run_node(SQL_WRITE, {"url": db_url, "table": "itemz"}, {"in": [item(1)]})

    assert "table itemz does not exist" in str(failure.value)
    assert failure.value.node == WRITE_NODE_ID


def test_unknown_field_is_named_unless_extra_fields_are_ignored(
    db_url: str, engine: sa.Engine
) -> None:
    items = make_items(engine)
    records = [item(1), item(2, colour="red")]

    with pytest.raises(NodeError) as failure:
        run_node(SQL_WRITE, {"url": db_url, "table": "items"}, {"in": records})

    assert "field 'colour' is not a column" in str(failure.value)
    assert "items" in str(failure.value)
    assert count(engine, items) == 0

    result = run_node(
        SQL_WRITE, {"url": db_url, "table": "items", "extra_fields": "ignore"}, {"in": records}
    )

    assert result["out"] == [{"table": "items", "inserted": 2, "updated": 0}]
    assert table_rows(engine, items) == [item(1), item(2)]


# -- sql.execute ---------------------------------------------------------------------


def test_execute_once_with_bound_params(db_url: str, engine: sa.Engine) -> None:
    items = make_items(engine)
    fill(engine, items, [item(i) for i in range(1, 6)])

    result = run_node(
        SQL_EXECUTE,
        {
            "url": db_url,
            "statement": "UPDATE items SET qty = qty + :inc WHERE id <= :upto",
            "params": {"inc": 100, "upto": 3},
        },
    )

    assert result["out"] == [{"rowcount": 3}]
    assert [r["qty"] for r in table_rows(engine, items)] == [101, 102, 103, 4, 5]


def test_execute_per_record_in_one_transaction(db_url: str, engine: sa.Engine) -> None:
    items = make_items(engine)
    fill(engine, items, [item(i) for i in range(1, 6)])
    config = {"url": db_url, "statement": "UPDATE items SET name = :name WHERE id = :id"}

    result = run_node(
        SQL_EXECUTE,
        config,
        {"in": [{"id": 1, "name": "one"}, {"id": 2, "name": "two"}, {"id": 99, "name": "x"}]},
    )

    assert result["out"] == [{"rowcount": 2}]
    assert [r["name"] for r in table_rows(engine, items)][:3] == ["one", "two", "item 3"]

    # the second batch fails: the first one must not stay
    insert = {"url": db_url, "statement": "INSERT INTO items (id, name) VALUES (:id, :name)"}
    records = [{"id": i, "name": f"n{i}"} for i in range(100, 1600)]
    records[-1]["name"] = None
    with pytest.raises(NodeError) as failure:
        run_node(SQL_EXECUTE, insert, {"in": records})

    assert "records 1001–1500" in str(failure.value)
    assert count(engine, items) == 5


# -- config schemas ------------------------------------------------------------------


@pytest.mark.parametrize("spec", NODES, ids=lambda s: s.type)
def test_schema_wants_exactly_one_of_url_and_connection(db_url: str, spec: NodeSpec) -> None:
    schema = spec.full_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    body = {
        "sql.read": {"query": "SELECT 1"},
        "sql.write": {"table": "items"},
        "sql.execute": {"statement": "SELECT 1"},
    }[spec.type]

    jsonschema.validate({**body, "url": db_url, "on_error": "route"}, schema)
    jsonschema.validate({**body, "connection": "erp"}, schema)
    for wrong in (
        {**body, "url": db_url, "connection": "erp"},
        body,
        {**body, "url": db_url, "colour": "red"},
    ):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(wrong, schema)


def test_upsert_and_update_need_a_key(db_url: str, engine: sa.Engine) -> None:
    make_items(engine)
    schema = SQL_WRITE.full_schema()
    for mode in ("upsert", "update"):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate({"url": db_url, "table": "items", "mode": mode}, schema)
        jsonschema.validate({"url": db_url, "table": "items", "mode": mode, "key": ["id"]}, schema)
    jsonschema.validate({"url": db_url, "table": "items", "mode": "insert"}, schema)

    with pytest.raises(NodeError) as failure:
        run_node(SQL_WRITE, {"url": db_url, "table": "items", "mode": "upsert"}, {"in": [item(1)]})
    assert "needs 'key'" in str(failure.value)

    with pytest.raises(NodeError) as failure:
        run_node(
            SQL_WRITE,
            {"url": db_url, "table": "items", "mode": "upsert", "key": ["sku"]},
            {"in": [item(1)]},
        )
    assert "key column 'sku' does not exist" in str(failure.value)


def test_sqlite_to_sqlite_copy_takes_the_timestamps_sql_read_gives_as_text(
    tmp_path: Path,
) -> None:
    # SQLite keeps DATE/DATETIME as text and a text query returns that text unchanged
    source, target = (f"sqlite:///{tmp_path / n}" for n in ("source.db", "target.db"))
    meta = sa.MetaData()
    t = sa.Table(
        "events",
        meta,
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("at", sa.DateTime, nullable=False),
        sa.Column("day", sa.Date, nullable=True),
    )
    rows = [
        {"id": 1, "at": datetime(2026, 3, 29, 1, 59, 59, 250), "day": date(2026, 3, 29)},
        {"id": 2, "at": datetime(2026, 3, 29, 3, 0), "day": None},
    ]
    engines = [sa.create_engine(u) for u in (source, target)]
    for engine in engines:
        meta.create_all(engine)
    with engines[0].begin() as conn:
        conn.execute(t.insert(), rows)

    read = run_node(SQL_READ, {"url": source, "query": "SELECT * FROM events ORDER BY id"})
    assert isinstance(read["out"][0]["at"], str)
    config = {"url": target, "table": "events", "mode": "upsert", "key": ["id"]}
    written = run_node(SQL_WRITE, config, {"in": read["out"]})
    with pytest.raises(NodeError, match="column at: 'yesterday' is not an ISO date or timestamp"):
        run_node(SQL_WRITE, config, {"in": [{"id": 3, "at": "yesterday"}]})

    assert written["out"] == [{"table": "events", "inserted": 2, "updated": 0}]
    with engines[1].connect() as conn:
        assert [dict(r._mapping) for r in conn.execute(sa.select(t).order_by(t.c.id))] == rows
    for engine in engines:
        engine.dispose()
