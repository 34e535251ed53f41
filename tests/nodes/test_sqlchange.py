"""``trigger.sql_change`` against SQLite, PostgreSQL and MariaDB: a changed ERP row starts
the flow with exactly that row, once; the watermark moves only after success."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from engine.batch.listeners import ListenerHost, TriggerStateStore
from engine.service import Flowmill
from nodes.sqlchange import check_sql_change
from tests.conftest import run_queued, wait_until

T0 = datetime(2026, 11, 20, 8, 0, 0)
T1 = datetime(2026, 11, 21, 9, 30, 0)
T2 = datetime(2026, 11, 21, 9, 31, 0)

customers = sa.Table(
    "customers",
    sa.MetaData(),
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("name", sa.String(100), nullable=False),
    sa.Column("credit", sa.Integer, nullable=False),
    sa.Column("updated_at", sa.DateTime, nullable=False),
)


@pytest.fixture
def erp(db_url: str) -> Iterator[sa.Engine]:
    engine = sa.create_engine(db_url)
    customers.create(engine)
    with engine.begin() as conn:
        conn.execute(
            customers.insert(),
            [
                {"id": 1, "name": "Alpha", "credit": 10, "updated_at": T0},
                {"id": 2, "name": "Beta", "credit": 20, "updated_at": T0},
                {"id": 3, "name": "Gamma", "credit": 30, "updated_at": T0},
            ],
        )
    yield engine
    engine.dispose()


@pytest.fixture
def app(data_dir: Path) -> Iterator[Flowmill]:
    service = Flowmill.open(data_dir)
    yield service
    service.close()


def _flow(url: str, out: Path, **config: Any) -> dict[str, Any]:
    """Changed customer → 100 / credit (fails for credit 0) → CSV file."""
    return {
        "format": "flowmill/1",
        "id": "customer-sync",
        "nodes": [
            {
                "id": "changed",
                "type": "trigger.sql_change",
                "config": {
                    "url": url,
                    "table": "customers",
                    "watermark": "updated_at",
                    "poll_seconds": 0.2,
                    "retry_seconds": 1,
                    **config,
                },
            },
            {
                "id": "share",
                "type": "transform.map",
                "config": {"fields": {"share": "100 / credit"}},
            },
            {"id": "write", "type": "file.write", "config": {"path": str(out)}},
        ],
        "edges": [
            {"source": "changed", "source_port": "out", "target": "share", "target_port": "in"},
            {"source": "share", "source_port": "out", "target": "write", "target_port": "in"},
        ],
    }


def _update(engine: sa.Engine, customer: int, **values: Any) -> None:
    with engine.begin() as conn:
        conn.execute(customers.update().where(customers.c.id == customer).values(**values))


def _triggers(app: Flowmill) -> list[dict[str, Any]]:
    return [job.params["_trigger"] for job in sorted(app.jobs.list(), key=lambda j: j.id)]


def test_a_changed_row_runs_the_flow_with_that_row_once(
    app: Flowmill, erp: sa.Engine, db_url: str, tmp_path: Path
) -> None:
    out = tmp_path / "changed.csv"
    app.save_flow(_flow(db_url, out))
    host = ListenerHost(app)
    host.start()
    try:
        wait_until(lambda: (ctx := host.context("customer-sync", "changed")) and ctx.ready.is_set())
        time.sleep(0.6)  # three polls: the rows that existed before start nothing
        assert app.jobs.list() == []
        _update(erp, 2, name="Müller GmbH", credit=40, updated_at=T1)
        wait_until(lambda: len(app.jobs.list()) == 1)
        assert _triggers(app) == [
            {"id": 2, "name": "Müller GmbH", "credit": 40, "updated_at": T1.isoformat()}
        ]
        assert run_queued(app) == ["succeeded"]
        assert out.read_text(encoding="utf-8").splitlines()[1].startswith("2,Müller GmbH,40,")
        state = TriggerStateStore(app.store)
        wait_until(lambda: state.get("customer-sync", "changed").get("watermark") is not None)
        wait_until(
            lambda: state.get("customer-sync", "changed")["watermark"]["datetime"].startswith(
                T1.isoformat()
            )
        )
        time.sleep(0.6)
        assert len(app.jobs.list()) == 1  # done: not again
        with erp.begin() as conn:
            conn.execute(customers.insert().values(id=4, name="Delta", credit=5, updated_at=T2))
        wait_until(lambda: len(app.jobs.list()) == 2)
        assert _triggers(app)[1]["name"] == "Delta"
        assert run_queued(app) == ["succeeded"]
    finally:
        host.stop()
    # a restarted server fires nothing that already ran
    again = ListenerHost(app)
    again.start()
    try:
        wait_until(
            lambda: (ctx := again.context("customer-sync", "changed")) and ctx.ready.is_set()
        )
        time.sleep(0.8)
        assert len(app.jobs.list()) == 2
    finally:
        again.stop()


def test_a_failed_job_fires_its_row_again_but_not_the_rows_that_succeeded(
    app: Flowmill, tmp_path: Path
) -> None:
    url = f"sqlite:///{tmp_path / 'erp.db'}"
    engine = sa.create_engine(url)
    customers.create(engine)
    with engine.begin() as conn:
        conn.execute(
            customers.insert(),
            [
                {"id": 1, "name": "Alpha", "credit": 10, "updated_at": T0},
                {"id": 2, "name": "Beta", "credit": 0, "updated_at": T0},  # 100 / 0 fails
                {"id": 3, "name": "Gamma", "credit": 30, "updated_at": T1},
            ],
        )
    app.save_flow(_flow(url, tmp_path / "out.csv", start="all"))
    host = ListenerHost(app)
    host.start()
    try:
        wait_until(lambda: len(app.jobs.list()) == 3)
        assert [t["id"] for t in _triggers(app)] == [1, 2, 3]
        assert sorted(run_queued(app)) == ["failed", "succeeded", "succeeded"]
        wait_until(lambda: len(app.jobs.list()) == 4)  # row 2 again, after 1 s
        assert _triggers(app)[3]["id"] == 2
        assert _triggers(app)[3]["credit"] == 0  # the row as it is: fails again
        _update(engine, 2, credit=50, updated_at=T2)  # fixed in the ERP
        assert run_queued(app) == ["failed"]
        wait_until(lambda: len(app.jobs.list()) == 5)
        assert _triggers(app)[4] | {"id": 2, "credit": 50} == _triggers(app)[4]
        assert run_queued(app) == ["succeeded"]
        state = TriggerStateStore(app.store)
        wait_until(
            lambda: state.get("customer-sync", "changed")["watermark"]["datetime"].startswith(
                T2.isoformat()
            )
        )
        time.sleep(0.6)
        assert [t["id"] for t in _triggers(app)] == [1, 2, 3, 2, 2]  # 1 and 3 never twice
    finally:
        host.stop()
        engine.dispose()


def test_batch_mode_starts_one_job_for_the_rows_of_a_poll(app: Flowmill, tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'erp.db'}"
    engine = sa.create_engine(url)
    customers.create(engine)
    app.save_flow(_flow(url, tmp_path / "out.csv", mode="batch", poll_seconds=1))
    host = ListenerHost(app)
    host.start()
    try:
        wait_until(lambda: (ctx := host.context("customer-sync", "changed")) and ctx.ready.is_set())
        with engine.begin() as conn:  # an empty table at start: every row to come is new
            conn.execute(
                customers.insert(),
                [{"id": i, "name": f"C{i}", "credit": i, "updated_at": T1} for i in (1, 2, 3)],
            )
        wait_until(lambda: len(app.jobs.list()) == 1)
        (trigger,) = _triggers(app)
        assert [r["id"] for r in trigger["$records"]] == [1, 2, 3]
        assert run_queued(app) == ["succeeded"]
        assert len((tmp_path / "out.csv").read_text().splitlines()) == 4
    finally:
        host.stop()
        engine.dispose()


def test_postgresql_notify_starts_the_flow_without_waiting_for_the_poll(
    app: Flowmill, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    from tests.conftest import PG_ADMIN_URL, _server_database

    gen = _server_database(PG_ADMIN_URL, "postgresql")
    url = next(gen)
    request.addfinalizer(lambda: next(gen, None))
    engine = sa.create_engine(url)
    customers.create(engine)
    with engine.begin() as conn:
        conn.execute(customers.insert().values(id=1, name="Alpha", credit=1, updated_at=T0))
        conn.execute(
            sa.text(
                "CREATE FUNCTION customers_notify() RETURNS trigger AS $$ "
                "BEGIN PERFORM pg_notify('customers_changed', NEW.id::text); RETURN NEW; END; "
                "$$ LANGUAGE plpgsql"
            )
        )
        conn.execute(
            sa.text(
                "CREATE TRIGGER customers_changed AFTER INSERT OR UPDATE ON customers "
                "FOR EACH ROW EXECUTE FUNCTION customers_notify()"
            )
        )
    app.save_flow(
        _flow(url, tmp_path / "out.csv", poll_seconds=3600, notify_channel="customers_changed")
    )
    host = ListenerHost(app)
    host.start()
    try:
        wait_until(lambda: (ctx := host.context("customer-sync", "changed")) and ctx.ready.is_set())
        time.sleep(0.3)
        _update(engine, 1, name="Alpha AG", updated_at=T1)
        # long before the next poll (an hour away): the notification started it
        wait_until(lambda: len(app.jobs.list()) == 1)
        assert _triggers(app)[0]["name"] == "Alpha AG"
    finally:
        host.stop()
        engine.dispose()


def test_a_missing_table_or_column_is_named(app: Flowmill, tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'erp.db'}"
    engine = sa.create_engine(url)
    customers.create(engine)
    flow = _flow(url, tmp_path / "out.csv")
    flow["nodes"][0]["config"]["table"] = "kunden"
    app.save_flow(flow)
    host = ListenerHost(app)
    try:
        host.refresh()
        ctx = host.context("customer-sync", "changed")
        assert ctx is not None
        wait_until(lambda: ctx.last_error is not None)
        assert "table 'kunden' does not exist" in ctx.last_error
        flow["nodes"][0]["config"] |= {"table": "customers", "watermark": "changed_on"}
        app.save_flow(flow)
        host.refresh()
        ctx = host.context("customer-sync", "changed")
        assert ctx is not None
        wait_until(lambda: ctx.last_error is not None)
        assert "watermark: table customers has no column 'changed_on'" in ctx.last_error
    finally:
        host.stop()
        engine.dispose()
    problems = check_sql_change({"url": url, "notify_channel": "x"})
    assert [p.field for p in problems] == ["notify_channel"]
    assert json.dumps(app.validate(flow)) == "[]"
