"""The db-sync sample: the ERP's customers kept in sync with a mirror database.

Runs on the demo's SQLite files and with source and target on PostgreSQL and MariaDB
(each its own database, the tables made from the demo's table definition).
"""

from __future__ import annotations

import itertools
import os
import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
import sqlalchemy as sa

from designer.demo.data import customers
from engine.queue.jobs import Job

PG_ADMIN_URL = os.environ.get(
    "FLOWMILL_TEST_PG", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
MARIADB_ADMIN_URL = os.environ.get(
    "FLOWMILL_TEST_MARIADB", "mysql+pymysql://root@127.0.0.1:3306/test"
)


class Sync:
    """The source and target databases of one test, as the sample's connections see them."""

    def __init__(self, demo: Any, source_url: str, target_url: str) -> None:
        self.demo = demo
        self.source = sa.create_engine(source_url)
        self.target = sa.create_engine(target_url)

    def run(self) -> tuple[Job, dict[str, Any]]:
        """One run of the sample; the job and the upsert node's summary record."""
        job = self.demo.run("db-sync")
        run = self.demo.app.store.get_run(job.run_id)
        node = next(n for n in run.nodes if n.node_id == "upsert-target")
        summary = node.sample.get("out", [None])[0] if node.state == "succeeded" else None
        return job, summary

    @staticmethod
    def rows(engine: sa.Engine) -> list[tuple[Any, ...]]:
        with engine.connect() as conn:
            return [tuple(r) for r in conn.execute(sa.select(customers).order_by(customers.c.id))]

    def close(self) -> None:
        self.source.dispose()
        self.target.dispose()


def _second_database(db_url: str) -> Iterator[str]:
    """Another empty database on the server of ``db_url`` (the target), dropped after."""
    dialect = sa.make_url(db_url).get_backend_name()
    admin_url = PG_ADMIN_URL if dialect == "postgresql" else MARIADB_ADMIN_URL
    name = f"fm_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f"CREATE DATABASE {name}"))
    try:
        yield sa.make_url(admin_url).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            if dialect == "postgresql":
                conn.execute(
                    sa.text(
                        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                        "WHERE datname = :n AND pid <> pg_backend_pid()"
                    ),
                    {"n": name},
                )
            conn.execute(sa.text(f"DROP DATABASE IF EXISTS {name}"))
        admin.dispose()


@pytest.fixture
def sync(demo: Any, db_url: str) -> Iterator[Sync]:
    """SQLite: the demo's erp.db and mirror.db as demo init made them. PostgreSQL and
    MariaDB: the demo's customers copied into a source database, an empty target."""
    if db_url.startswith("sqlite"):
        yield (s := Sync(demo, demo.summary.erp_url, demo.summary.mirror_url))
        s.close()
        return
    erp_rows = Sync.rows(sa.create_engine(demo.summary.erp_url))
    for target_url in _second_database(db_url):
        for url in (db_url, target_url):
            engine = sa.create_engine(url)
            meta = sa.MetaData()
            customers.to_metadata(meta)
            meta.create_all(engine)
            engine.dispose()
        with sa.create_engine(db_url).begin() as conn:
            conn.execute(
                customers.insert(),
                [dict(zip(customers.c.keys(), r, strict=True)) for r in erp_rows],
            )
        demo.app.set_connection("erp", {"type": "sql", "url": db_url})
        demo.app.set_connection("mirror", {"type": "sql", "url": target_url})
        s = Sync(demo, db_url, target_url)
        yield s
        s.close()


def _change_two_add_one(engine: sa.Engine, later: datetime) -> None:
    with engine.begin() as conn:
        conn.execute(
            customers.update()
            .where(customers.c.id == 3)
            .values(name="Schneider Bau GmbH & Co. KG", updated_at=later)
        )
        conn.execute(
            customers.update()
            .where(customers.c.id == 17)
            .values(credit_limit=Decimal("77777.50"), city="Passau", updated_at=later)
        )
        conn.execute(
            customers.insert().values(
                id=41,
                name="Neukunde Straßenbau AG",
                email="einkauf41@neukunde.example",
                street="Ringstraße 41",
                zip="94032",
                city="Passau",
                country="DE",
                phone="+49 851 123456",
                credit_limit=Decimal("15000.00"),
                updated_at=later + timedelta(seconds=1),
            )
        )


def test_first_run_copies_rerun_changes_nothing_then_only_the_changes(sync: Sync) -> None:
    source_rows = Sync.rows(sync.source)
    assert len(source_rows) == 40 and Sync.rows(sync.target) == []

    job, summary = sync.run()
    assert job.state == "succeeded", sync.demo.log(job)
    assert summary == {"table": "customers", "inserted": 40, "updated": 0}
    assert Sync.rows(sync.target) == source_rows  # every column, every row, exactly

    job, summary = sync.run()
    assert job.state == "succeeded", sync.demo.log(job)
    assert summary == {"table": "customers", "inserted": 0, "updated": 0}
    assert Sync.rows(sync.target) == source_rows

    newest = max(r[-1] for r in source_rows)
    _change_two_add_one(sync.source, newest + timedelta(minutes=5))
    changed_rows = Sync.rows(sync.source)
    job, summary = sync.run()
    assert job.state == "succeeded", sync.demo.log(job)
    assert summary == {"table": "customers", "inserted": 1, "updated": 2}
    target = Sync.rows(sync.target)
    assert target == changed_rows and len(target) == 41
    by_id = {r[0]: r for r in target}
    assert by_id[3][1] == "Schneider Bau GmbH & Co. KG"
    assert by_id[17][5] == "Passau" and by_id[17][8] == Decimal("77777.50")

    job, summary = sync.run()
    assert summary == {"table": "customers", "inserted": 0, "updated": 0}
    assert Sync.rows(sync.target) == changed_rows


def test_failure_in_the_middle_of_the_write_leaves_the_target_unchanged(sync: Sync) -> None:
    job, _ = sync.run()
    assert job.state == "succeeded", sync.demo.log(job)
    # the target allows one customer per e-mail address; the source does not care
    with sync.target.begin() as conn:
        conn.execute(sa.text("CREATE UNIQUE INDEX ux_customers_email ON customers (email)"))
    before = Sync.rows(sync.target)
    newest = max(r[-1] for r in before)
    with sync.source.begin() as conn:
        for n, (cid, email) in enumerate(
            [(5, "neu5@example.test"), (9, "einkauf12@bauer.example"), (20, "neu20@example.test")]
        ):
            conn.execute(
                customers.update()
                .where(customers.c.id == cid)
                .values(email=email, updated_at=newest + timedelta(minutes=1 + n))
            )
    # the second changed row (id 9) now collides with customer 12's address in the target
    assert {r[0]: r[2] for r in before}[12] == "einkauf12@bauer.example"

    job, summary = sync.run()
    assert job.state == "failed"
    assert job.error_node == "upsert-target"
    assert "rolled back, nothing written" in (job.error or "")
    assert summary is None
    assert Sync.rows(sync.target) == before  # id 5, written before the failure, rolled back

    # fixed in the source: the watermark stayed where it was, so the next run brings all 3
    with sync.source.begin() as conn:
        conn.execute(
            customers.update()
            .where(customers.c.id == 9)
            .values(email="neu9@example.test", updated_at=newest + timedelta(minutes=2))
        )
    job, summary = sync.run()
    assert job.state == "succeeded", sync.demo.log(job)
    assert summary == {"table": "customers", "inserted": 0, "updated": 3}
    assert Sync.rows(sync.target) == Sync.rows(sync.source)


def test_the_sync_is_armed_every_ten_minutes(demo: Any) -> None:
    demo.load("db-sync")
    assert "schedule flow:db-sync:every-10-minutes armed" in demo.app.arm_triggers()
    fires = demo.app.describe_schedule("flow:db-sync:every-10-minutes", upcoming=4)["next_fires"]
    moments = [datetime.fromisoformat(f) for f in fires]
    assert len(moments) == 4
    assert {b - a for a, b in itertools.pairwise(moments)} == {timedelta(minutes=10)}
    assert all(m.minute % 10 == 0 and m.second == 0 for m in moments)
