"""The run store: one suite against every implementation (memory, SQLite, PostgreSQL,
MariaDB), plus the migration checks only SQL stores have."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory

from engine.errors import ConnectionNotFound, FlowmillError, SecretNotFound
from engine.store import tables
from engine.store.factory import open_store
from engine.store.interface import (
    LogLine,
    NodeRunRecord,
    RunNotFound,
    RunRecord,
    RunStore,
)
from engine.store.memory import MemoryRunStore
from engine.store.secrets import ENV_KEY
from engine.store.sql import SqlRunStore, alembic_config

# The memory store borrows the cheap "sqlite" db_url (a path string) and ignores it.
every_store = pytest.mark.parametrize(
    ("kind", "db_url"),
    [
        pytest.param("memory", "sqlite", id="memory"),
        pytest.param("sqlite", "sqlite", id="sqlite"),
        pytest.param("postgresql", "postgresql", id="postgresql", marks=pytest.mark.postgresql),
        pytest.param("mariadb", "mariadb", id="mariadb", marks=pytest.mark.mariadb),
    ],
    indirect=["db_url"],
)

T0 = datetime(2025, 3, 30, 0, 59, 59, 123456, tzinfo=UTC)


@pytest.fixture(autouse=True)
def _no_key_in_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ENV_KEY, raising=False)


@pytest.fixture
def store(kind: str, db_url: str, data_dir: Path) -> Iterator[RunStore]:
    opened = open_store("memory" if kind == "memory" else db_url, data_dir)
    yield opened
    opened.close()


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def log(run_id: str, message: str, node_id: str | None = None, level: str = "INFO") -> LogLine:
    return LogLine(run_id=run_id, node_id=node_id, ts=T0, level=level, message=message)


# -- migrations (SQL only) -----------------------------------------------------------------


def test_migrations_create_every_table(db_url: str, data_dir: Path) -> None:
    with open_store(db_url, data_dir) as store:
        names = set(sa.inspect(store.engine).get_table_names())
    assert names == set(tables.metadata.tables) | {tables.VERSION_TABLE}


def test_migrated_database_matches_the_table_definitions(db_url: str, data_dir: Path) -> None:
    with open_store(db_url, data_dir) as store, store.engine.connect() as conn:
        context = MigrationContext.configure(
            conn, opts={"compare_type": True, "version_table": tables.VERSION_TABLE}
        )
        assert compare_metadata(context, tables.metadata) == []


def test_opening_an_existing_store_again_keeps_its_data(db_url: str, data_dir: Path) -> None:
    with open_store(db_url, data_dir) as first:
        first.create_run("r1", "nightly", "h1", {}, T0)
    with open_store(db_url, data_dir) as second, open_store(db_url, data_dir) as third:
        assert second.get_run("r1") is not None
        assert third.list_runs() == second.list_runs()
        with second.engine.connect() as conn:
            current = MigrationContext.configure(
                conn, opts={"version_table": tables.VERSION_TABLE}
            ).get_current_revision()
    assert current == ScriptDirectory.from_config(alembic_config()).get_current_head()


def test_default_store_is_a_wal_sqlite_file_in_the_data_dir(tmp_path: Path) -> None:
    data_dir = tmp_path / "not" / "yet" / "there"
    with open_store(None, data_dir) as store:
        assert isinstance(store, SqlRunStore)
        store.create_run("r1", "nightly", "h1", {}, T0)
        with store.engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
            assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() >= 5000
    raw = sqlite3.connect(data_dir / "flowmill.db")
    try:
        assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert raw.execute("SELECT run_id FROM runs").fetchall() == [("r1",)]
    finally:
        raw.close()


def test_memory_url_gives_the_memory_store(data_dir: Path) -> None:
    store = open_store("memory", data_dir)
    assert isinstance(store, MemoryRunStore)
    assert isinstance(store, RunStore)
    assert list(data_dir.iterdir()) == []


# -- flow versions and runs ----------------------------------------------------------------


@every_store
def test_flow_versions_are_pinned_by_hash(store: RunStore) -> None:
    text = '{\n  "format": "flowmill/1",\n  "name": "Preise für Österreich"\n}\n' + "x" * 70_000
    store.save_flow_version("nightly", "h1", text)
    store.save_flow_version("nightly", "h1", text)  # a second run of the same version
    assert store.get_flow_version("h1") == text
    assert store.get_flow_version("unknown") is None


@every_store
def test_run_lifecycle_records_every_node_in_first_save_order(store: RunStore) -> None:
    store.create_run("r1", "nightly", "h1", {"markup": 1.19, "land": "Österreich"}, at(0))
    store.save_node_run("r1", NodeRunRecord("read-1", "sql.read", "running", started_at=at(1)))
    store.save_node_run("r1", NodeRunRecord("map-2", "transform.map", "pending"))
    sample = {"rows": [{"name": "Müller & Söhne", "preis": 9.99, "tags": ["ä", "ß"]}]}
    read_done = NodeRunRecord(
        "read-1",
        "sql.read",
        "succeeded",
        started_at=at(1),
        finished_at=at(3),
        seconds=2.0,
        records_in={},
        records_out={"rows": 1200},
        sample=sample,
        attempts=1,
        status="1,200 Zeilen gelesen",
    )
    store.save_node_run("r1", read_done)
    map_failed = NodeRunRecord(
        "map-2",
        "transform.map",
        "failed",
        started_at=at(3),
        finished_at=at(4),
        seconds=1.0,
        records_in={"in": 1200},
        records_out={"out": 17, "error": 0},
        error="unknown field 'prcie'\n" + "trace " * 20_000,
        attempts=2,
    )
    store.save_node_run("r1", map_failed)
    store.save_node_run("r1", NodeRunRecord("mail-3", "mail.send", "skipped"))
    store.finish_run("r1", "failed", at(5), error="node map-2 failed", error_node="map-2")

    assert store.get_run("r1") == RunRecord(
        run_id="r1",
        flow_id="nightly",
        flow_hash="h1",
        state="failed",
        params={"markup": 1.19, "land": "Österreich"},
        started_at=at(0),
        finished_at=at(5),
        error="node map-2 failed",
        error_node="map-2",
        nodes=[read_done, map_failed, NodeRunRecord("mail-3", "mail.send", "skipped")],
    )
    assert store.get_run("nope") is None


@every_store
def test_sample_values_json_cannot_hold_are_kept_as_text(store: RunStore) -> None:
    store.create_run("r1", "nightly", "h1", {}, at(0))
    sample = {"out": [{"price": Decimal("9.99"), "at": at(1), "n": 1, "ok": True, "x": None}]}
    store.save_node_run("r1", NodeRunRecord("map-2", "transform.map", "succeeded", sample=sample))
    node = store.get_run("r1").nodes[0]
    assert node.sample == {
        "out": [{"price": "9.99", "at": at(1).isoformat(), "n": 1, "ok": True, "x": None}]
    }


@every_store
def test_list_runs_is_newest_first_without_nodes(store: RunStore) -> None:
    for i, flow in enumerate(["nightly", "orders", "nightly", "nightly"]):
        store.create_run(f"r{i}", flow, "h", {"i": i}, at(i * 60))
        store.save_node_run(f"r{i}", NodeRunRecord("a", "t", "running"))
    store.finish_run("r0", "succeeded", at(10))

    assert [r.run_id for r in store.list_runs()] == ["r3", "r2", "r1", "r0"]
    assert [r.run_id for r in store.list_runs("nightly", limit=2)] == ["r3", "r2"]
    assert store.list_runs("unknown") == []
    listed = store.list_runs("nightly")[-1]
    assert (listed.state, listed.finished_at, listed.params, listed.nodes) == (
        "succeeded",
        at(10),
        {"i": 0},
        [],
    )


@every_store
def test_log_lines_are_numbered_per_run_and_filtered(store: RunStore) -> None:
    store.create_run("r1", "nightly", "h", {}, at(0))
    store.create_run("r2", "nightly", "h", {}, at(0))
    store.append_log("r1", [log("r1", "start"), log("r1", "read 1000", "read-1")])
    store.append_log("r2", [log("r2", "other run")])
    store.append_log("r1", [])
    store.append_log(
        "r1",
        [
            log("r1", "Fehler: Größe", "map-2", "ERROR"),
            log("r1", "read 2000", "read-1"),
            log("r1", "end"),
        ],
    )

    lines = store.get_log("r1")
    assert [(line.seq, line.message) for line in lines] == [
        (1, "start"),
        (2, "read 1000"),
        (3, "Fehler: Größe"),
        (4, "read 2000"),
        (5, "end"),
    ]
    assert lines[2] == LogLine("r1", "map-2", T0, "ERROR", "Fehler: Größe", seq=3)
    assert [line.seq for line in store.get_log("r1", node_id="read-1")] == [2, 4]
    assert [line.seq for line in store.get_log("r1", after_seq=2, limit=2)] == [3, 4]
    assert [line.seq for line in store.get_log("r1", "read-1", after_seq=2)] == [4]
    assert [line.seq for line in store.get_log("r2")] == [1]
    assert store.get_log("nope") == []


@every_store
def test_writes_to_an_unknown_run_raise_run_not_found(store: RunStore) -> None:
    with pytest.raises(RunNotFound, match="'ghost'"):
        store.finish_run("ghost", "succeeded", at(1))
    with pytest.raises(RunNotFound):
        store.save_node_run("ghost", NodeRunRecord("a", "t", "running"))
    with pytest.raises(RunNotFound):
        store.append_log("ghost", [log("ghost", "hello")])
    assert store.get_run("ghost") is None


@every_store
def test_bad_values_are_refused_the_same_way_everywhere(store: RunStore) -> None:
    store.create_run("r1", "nightly", "h", {}, at(0))
    with pytest.raises(ValueError, match="already exists"):
        store.create_run("r1", "nightly", "h", {}, at(0))
    with pytest.raises(ValueError, match="naive"):
        store.create_run("r2", "nightly", "h", {}, datetime(2025, 1, 1))
    with pytest.raises(ValueError, match="final state"):
        store.finish_run("r1", "running", at(1))
    with pytest.raises(ValueError, match="state 'done'"):
        store.save_node_run("r1", NodeRunRecord("a", "t", "done"))
    with pytest.raises(ValueError, match="longer than 200"):
        store.save_node_run("r1", NodeRunRecord("n" * 201, "t", "running"))
    with pytest.raises(ValueError, match=r"flow_hash .* longer than 64"):
        store.create_run("r4", "nightly", "h" * 65, {}, at(0))
    with pytest.raises(ValueError, match="log level"):
        store.append_log("r1", [log("r1", "x", level="L" * 21)])
    with pytest.raises(ValueError, match="appended to run 'r1'"):
        store.append_log("r1", [log("r2", "misfiled")])
    with pytest.raises(TypeError):
        store.create_run("r3", "nightly", "h", {"when": object()}, at(0))
    assert [r.run_id for r in store.list_runs()] == ["r1"]
    assert store.get_run("r1").nodes == [] and store.get_log("r1") == []


@every_store
def test_datetimes_come_back_as_aware_utc(store: RunStore) -> None:
    berlin_summer = timezone(timedelta(hours=2))
    started = datetime(2025, 7, 1, 14, 0, 0, 999999, tzinfo=berlin_summer)
    store.create_run("r1", "nightly", "h", {}, started)
    store.save_node_run(
        "r1",
        NodeRunRecord(
            "a",
            "t",
            "succeeded",
            started_at=started,
            finished_at=started + timedelta(microseconds=1),
        ),
    )
    store.append_log("r1", [LogLine("r1", "a", started, "INFO", "x")])
    store.finish_run("r1", "succeeded", started + timedelta(hours=1))

    run = store.get_run("r1")
    stamps = [
        run.started_at,
        run.finished_at,
        run.nodes[0].started_at,
        run.nodes[0].finished_at,
        store.get_log("r1")[0].ts,
        store.list_runs()[0].started_at,
    ]
    assert all(ts.tzinfo is not None and ts.utcoffset() == timedelta(0) for ts in stamps)
    assert run.started_at == datetime(2025, 7, 1, 12, 0, 0, 999999, tzinfo=UTC)
    assert run.nodes[0].finished_at == datetime(2025, 7, 1, 12, 0, 1, 0, tzinfo=UTC)


@every_store
def test_returned_records_are_copies(store: RunStore) -> None:
    store.create_run("r1", "nightly", "h", {"a": [1]}, at(0))
    node = NodeRunRecord("a", "t", "running", sample={"out": [{"x": 1}]})
    store.save_node_run("r1", node)
    node.sample["out"].append({"x": 2})  # the caller keeps using its record
    run = store.get_run("r1")
    run.params["a"].append(2)
    run.nodes[0].records_out["out"] = 5
    assert store.get_run("r1") == RunRecord(
        "r1",
        "nightly",
        "h",
        "running",
        {"a": [1]},
        at(0),
        nodes=[NodeRunRecord("a", "t", "running", sample={"out": [{"x": 1}]})],
    )


@every_store
def test_eight_threads_saving_nodes_and_logs_lose_nothing(store: RunStore) -> None:
    threads, rounds = 8, 6
    for run_id in ("r1", "r2"):
        store.create_run(run_id, "nightly", "h", {}, at(0))
    errors: list[BaseException] = []
    start = threading.Barrier(threads)

    def worker(t: int) -> None:
        try:
            start.wait()
            for i in range(rounds):
                run_id = ("r1", "r2")[(t + i) % 2]
                node_id = f"n{t}-{i}"
                store.save_node_run(run_id, NodeRunRecord(node_id, "t", "running"))
                store.append_log(
                    run_id, [log(run_id, f"{node_id} line {k}", node_id) for k in range(3)]
                )
                store.save_node_run(
                    run_id, NodeRunRecord(node_id, "t", "succeeded", records_out={"out": i})
                )
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)

    pool = [threading.Thread(target=worker, args=(t,)) for t in range(threads)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()

    assert errors == []
    saved = [n for run_id in ("r1", "r2") for n in store.get_run(run_id).nodes]
    assert len(saved) == threads * rounds
    assert {n.state for n in saved} == {"succeeded"}
    for run_id in ("r1", "r2"):
        lines = store.get_log(run_id, limit=10_000)
        assert [line.seq for line in lines] == list(range(1, len(lines) + 1))
        for node in store.get_run(run_id).nodes:
            mine = [line.message for line in lines if line.node_id == node.node_id]
            assert mine == [f"{node.node_id} line {k}" for k in range(3)]
    assert sum(len(store.get_log(r, limit=10_000)) for r in ("r1", "r2")) == threads * rounds * 3


# -- connections and secrets ---------------------------------------------------------------


@every_store
def test_connections_round_trip(store: RunStore) -> None:
    erp = {
        "url": "postgresql://erp.local/erp",
        "user": "fm",
        "password": "pässwörd",
        "port": 5432,
        "options": {"ssl": True},
    }
    store.set_connection("erp", erp)
    store.set_connection("Shop", {"token": "t1"})
    store.set_connection("Shop", {"token": "t2"})
    assert store.get_connection("erp") == erp
    assert store.get_connection("Shop") == {"token": "t2"}
    assert store.list_connections() == ["Shop", "erp"]
    assert store.delete_connection("erp") is True
    assert store.delete_connection("erp") is False
    with pytest.raises(ConnectionNotFound, match="'erp'"):
        store.get_connection("erp")
    with pytest.raises(ConnectionNotFound):
        store.get_connection("shop")  # names are case-sensitive on every backend


@every_store
def test_secrets_round_trip(store: RunStore) -> None:
    store.set_secret("smtp-password", "s3cr€t äöü")
    store.set_secret("api-token", "old")
    store.set_secret("api-token", "new")
    assert store.get_secret("smtp-password") == "s3cr€t äöü"
    assert store.get_secret("api-token") == "new"
    assert store.list_secrets() == ["api-token", "smtp-password"]
    assert store.delete_secret("api-token") is True
    assert store.delete_secret("api-token") is False
    with pytest.raises(SecretNotFound, match="'api-token'") as raised:
        store.get_secret("api-token")
    assert isinstance(raised.value, FlowmillError)
