"""The ``flowmill`` command as a user runs it: real processes, real files, real SQLite."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import DEADLINE, wait_until

ROOT = Path(__file__).parents[2]
SAMPLE = ROOT / "samples" / "csv-to-sql.flow.json"
FLOWMILL = Path(sys.executable).parent / "flowmill"


def flowmill(*args: str, data_dir: Path, stdin: str | None = None, cwd: Path = ROOT):
    env = {**os.environ, "FLOWMILL_DATA_DIR": str(data_dir)}
    return subprocess.run(
        [str(FLOWMILL), *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        input=stdin,
        timeout=120,
    )


def store_bytes(data_dir: Path) -> bytes:
    """The SQLite store as it lies on disk, write-ahead log included."""
    return b"".join(p.read_bytes() for p in sorted(data_dir.glob("flowmill.db*")))


def write(path: Path, flow: dict) -> Path:
    path.write_text(json.dumps(flow), encoding="utf-8")
    return path


def test_console_script_is_installed():
    assert FLOWMILL.exists(), "pip install -e . must install the flowmill command"


def test_sample_runs_from_the_repository_root_and_upserts_without_duplicates(data_dir: Path):
    first = flowmill("run", str(SAMPLE.relative_to(ROOT)), data_dir=data_dir)
    assert first.returncode == 0, first.stderr
    assert "csv-to-sql" in first.stdout and "succeeded" in first.stdout
    for node_id in ("read-export", "map-amounts", "filter-valid", "write-sales"):
        assert node_id in first.stdout
    con = sqlite3.connect(data_dir / "demo-erp.db")
    rows = con.execute("SELECT count(*), count(DISTINCT receipt_no || '/' || line_no) FROM sales")
    total, distinct = rows.fetchone()
    assert total == distinct > 50
    # nothing cancelled or empty got in, and amounts were computed with the VAT param
    assert con.execute(
        "SELECT count(*) FROM sales WHERE status = 'storniert' OR qty <= 0"
    ).fetchone() == (0,)
    net, gross = con.execute("SELECT net, gross FROM sales LIMIT 1").fetchone()
    assert float(gross) == pytest.approx(round(float(net) * 1.19, 2), abs=0.011)
    customers = {r[0] for r in con.execute("SELECT customer FROM sales")}
    assert "Müller GmbH" in customers or "Café Süß" in customers  # cp1252 decoded
    con.close()
    # the two broken lines of the export went to the error file, named by line
    rejected = (data_dir / "rejected-sales.csv").read_text("utf-8")
    assert rejected.count("\n") == 3  # header + 2 lines
    assert "zwölf" in rejected and "31.02.2026" in rejected

    again = flowmill("run", str(SAMPLE), "--json", data_dir=data_dir)
    assert again.returncode == 0, again.stderr
    summary = json.loads(again.stdout)
    write_node = next(n for n in summary["nodes"] if n["node"] == "write-sales")
    assert write_node["state"] == "succeeded"
    con = sqlite3.connect(data_dir / "demo-erp.db")
    assert con.execute("SELECT count(*) FROM sales").fetchone()[0] == total
    con.close()


def test_json_summary_has_per_node_counts_and_the_flow_hash(data_dir: Path):
    result = flowmill("run", str(SAMPLE), "--json", "--param", "vat=1.07", data_dir=data_dir)
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["state"] == "succeeded" and len(summary["flow_hash"]) == 64
    nodes = {n["node"]: n for n in summary["nodes"]}
    read = nodes["read-export"]
    assert read["records_out"]["error"] == 2
    assert read["records_out"]["out"] == nodes["map-amounts"]["records_in"]["in"]
    assert nodes["filter-valid"]["records_out"]["out"] < nodes["filter-valid"]["records_in"]["in"]


def test_a_broken_expression_is_refused_naming_node_field_and_position(
    data_dir: Path, tmp_path: Path
):
    flow = json.loads(SAMPLE.read_text("utf-8"))
    node = next(n for n in flow["nodes"] if n["id"] == "map-amounts")
    node["config"]["fields"]["sku"] = "Artikelnummer.__class__"
    broken = write(tmp_path / "broken.flow.json", flow)
    for command in ("validate", "run"):
        result = flowmill(command, str(broken), data_dir=data_dir)
        assert result.returncode == 2
        line = result.stderr.strip().splitlines()[0]
        assert line.startswith(f"{broken}: node map-amounts: fields.sku: ")
        assert "position" in line


def test_validate_reports_every_problem_one_line_each(data_dir: Path, tmp_path: Path):
    flow = {
        "format": "flowmill/1",
        "id": "bad",
        "nodes": [
            {"id": "a", "type": "transform.filter", "config": {"condition": "x > 1"}},
            {"id": "b", "type": "transform.filter", "config": {"condition": "x > 1"}},
            {"id": "c", "type": "no.such"},
        ],
        "edges": [
            {"source": "a", "source_port": "out", "target": "b", "target_port": "in"},
            {"source": "b", "source_port": "out", "target": "a", "target_port": "in"},
        ],
    }
    path = write(tmp_path / "bad.flow.json", flow)
    good = SAMPLE
    result = flowmill("validate", str(good), str(path), data_dir=data_dir)
    assert result.returncode == 2
    assert f"{good}: ok" in result.stdout
    lines = result.stderr.strip().splitlines()
    assert any(line.startswith(f"{path}: node c: type: unknown node type") for line in lines)
    cycle = [line for line in lines if "cycle" in line]
    assert len(cycle) == 2 and all("a → b → a" in line or "b → a → b" in line for line in cycle)


def test_validate_ok_exits_zero(data_dir: Path):
    result = flowmill("validate", str(SAMPLE), data_dir=data_dir)
    assert (result.returncode, result.stdout.strip()) == (0, f"{SAMPLE}: ok")


def test_unreadable_flow_exits_two_naming_the_file(data_dir: Path, tmp_path: Path):
    path = tmp_path / "x.flow.json"
    path.write_text('{"format": "flowmill/1", "__proto__": {}}')
    result = flowmill("run", str(path), data_dir=data_dir)
    assert result.returncode == 2
    assert str(path) in result.stderr and "__proto__" in result.stderr


def test_fmt_check_and_rewrite(data_dir: Path, tmp_path: Path):
    flow = json.loads(SAMPLE.read_text("utf-8"))
    messy = tmp_path / "messy.flow.json"
    messy.write_text(json.dumps(flow, indent=4))
    check = flowmill("fmt", "--check", str(messy), data_dir=data_dir)
    assert check.returncode == 1 and "not canonical" in check.stderr
    assert flowmill("fmt", str(messy), data_dir=data_dir).returncode == 0
    assert messy.read_bytes() == SAMPLE.read_bytes()
    assert flowmill("fmt", "--check", str(messy), str(SAMPLE), data_dir=data_dir).returncode == 0


def test_run_failure_exits_one_naming_the_node(data_dir: Path, tmp_path: Path):
    flow = {
        "format": "flowmill/1",
        "id": "fails",
        "nodes": [
            {"id": "read", "type": "file.read", "config": {"path": str(tmp_path / "none.csv")}},
        ],
        "edges": [],
    }
    result = flowmill("run", str(write(tmp_path / "f.flow.json", flow)), data_dir=data_dir)
    assert result.returncode == 1
    assert "error: node read:" in result.stderr and "none.csv" in result.stderr


def test_wrong_param_exits_two(data_dir: Path):
    result = flowmill("run", str(SAMPLE), "--param", "vat=viel", data_dir=data_dir)
    assert result.returncode == 2 and "param 'vat'" in result.stderr
    result = flowmill("run", str(SAMPLE), "--param", "nope", data_dir=data_dir)
    assert result.returncode == 2 and "NAME=VALUE" in result.stderr


def test_record_values_are_data_never_code(data_dir: Path, tmp_path: Path):
    src = tmp_path / "in.csv"
    src.write_text("name\n__import__('os').system('touch pwned')\n{0.__class__}\n", "utf-8")
    out = tmp_path / "out.csv"
    flow = {
        "format": "flowmill/1",
        "id": "data",
        "nodes": [
            {"id": "read", "type": "file.read", "config": {"path": str(src)}},
            {"id": "map", "type": "transform.map", "config": {"fields": {"shout": "upper(name)"}}},
            {"id": "write", "type": "file.write", "config": {"path": str(out)}},
        ],
        "edges": [
            {"source": "read", "source_port": "out", "target": "map", "target_port": "in"},
            {"source": "map", "source_port": "out", "target": "write", "target_port": "in"},
        ],
    }
    result = flowmill(
        "run", str(write(tmp_path / "d.flow.json", flow)), data_dir=data_dir, cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr
    text = out.read_text("utf-8")
    assert "__IMPORT__('OS').SYSTEM('TOUCH PWNED')" in text and "{0.__CLASS__}" in text
    assert not (tmp_path / "pwned").exists()


def test_nodes_lists_the_builtin_types_and_the_json_catalog_has_schemas(data_dir: Path):
    result = flowmill("nodes", data_dir=data_dir)
    assert result.returncode == 0
    for node_type in (
        "trigger.manual",
        "file.read",
        "file.write",
        "transform.map",
        "transform.filter",
        "transform.select",
        "sql.read",
        "sql.write",
        "sql.execute",
        "util.delay",
    ):
        assert node_type in result.stdout
    catalog = json.loads(flowmill("nodes", "--json", data_dir=data_dir).stdout)
    write_spec = next(c for c in catalog if c["type"] == "sql.write")
    assert write_spec["module"] == "nodes.sql"
    assert "on_error" in write_spec["config_schema"]["properties"]
    assert write_spec["outputs"] == ["out", "error"]


def test_node_reference_in_docs_is_current(data_dir: Path):
    result = flowmill("nodes", "--markdown", data_dir=data_dir)
    assert result.returncode == 0
    assert (ROOT / "docs" / "nodes.md").read_text("utf-8") == result.stdout, (
        "docs/nodes.md is stale: run `flowmill nodes --markdown > docs/nodes.md`"
    )


def test_connection_is_stored_encrypted_and_used_by_name(data_dir: Path, tmp_path: Path):
    db = tmp_path / "erp.db"
    con = sqlite3.connect(db)
    con.execute("CREATE TABLE articles (sku TEXT PRIMARY KEY, price REAL)")
    con.executemany("INSERT INTO articles VALUES (?, ?)", [("A1", 1.5), ("A2", 2.5)])
    con.commit()
    con.close()
    url = f"sqlite:///{db}"
    assert flowmill("connection", "add", "erp", "--url", url, data_dir=data_dir).returncode == 0
    assert flowmill("connection", "list", data_dir=data_dir).stdout.split() == ["erp", "sql", "url"]
    assert str(db).encode() not in store_bytes(data_dir)  # encrypted at rest

    out = tmp_path / "prices.jsonl"
    flow = {
        "format": "flowmill/1",
        "id": "by-name",
        "nodes": [
            {
                "id": "read",
                "type": "sql.read",
                "config": {"connection": "erp", "query": "SELECT sku, price FROM articles"},
            },
            {"id": "write", "type": "file.write", "config": {"path": str(out), "format": "jsonl"}},
        ],
        "edges": [{"source": "read", "source_port": "out", "target": "write", "target_port": "in"}],
    }
    path = write(tmp_path / "c.flow.json", flow)
    result = flowmill("run", str(path), data_dir=data_dir)
    assert result.returncode == 0, result.stderr
    assert [json.loads(x)["sku"] for x in out.read_text().splitlines()] == ["A1", "A2"]
    assert flowmill("connection", "remove", "erp", data_dir=data_dir).returncode == 0
    missing = flowmill("run", str(path), data_dir=data_dir)
    assert missing.returncode == 1 and "connection 'erp' is not defined" in missing.stderr


def test_secret_set_from_stdin_and_listed_without_its_value(data_dir: Path):
    result = flowmill("secret", "set", "shop_token", data_dir=data_dir, stdin="s3cr3t-Wert\n")
    assert result.returncode == 0 and "s3cr3t" not in result.stdout
    listed = flowmill("secret", "list", data_dir=data_dir)
    assert listed.stdout.split() == ["shop_token"]
    assert b"s3cr3t-Wert" not in store_bytes(data_dir)


def test_secret_and_connection_names_with_control_characters_are_refused(data_dir: Path):
    """A name with a newline, an escape sequence or a byte that is not UTF-8 (read as an
    unpaired surrogate) could not be listed safely, or stored at all on PostgreSQL."""
    for name in ("smtp\npassword", "\x1b[31mred", b"caf\xe9"):
        secret = flowmill("secret", "set", name, data_dir=data_dir, stdin="s3cr3t\n")
        assert secret.returncode == 2, (name, secret.stderr)
        assert "secret name" in secret.stderr and "not allowed" in secret.stderr
        conn = flowmill("connection", "add", name, "--url", "sqlite://", data_dir=data_dir)
        assert conn.returncode == 2, (name, conn.stderr)
        assert "connection name" in conn.stderr and "not allowed" in conn.stderr
    assert flowmill("secret", "list", data_dir=data_dir).stdout == ""
    assert flowmill("connection", "list", data_dir=data_dir).stdout == ""


def test_runs_are_recorded_in_the_store_with_the_flow_version(data_dir: Path):
    result = flowmill("run", str(SAMPLE), "--json", data_dir=data_dir)
    summary = json.loads(result.stdout)
    from engine.store.factory import open_store

    store = open_store(None, data_dir)
    try:
        run = store.get_run(summary["run_id"])
        assert run is not None and run.state == "succeeded"
        assert run.flow_hash == summary["flow_hash"]
        assert store.get_flow_version(run.flow_hash) == SAMPLE.read_text("utf-8")
        nodes = {n.node_id: n for n in run.nodes}
        assert nodes["write-sales"].state == "succeeded"
        assert len(nodes["map-amounts"].sample["out"]) == 20
        assert nodes["read-export"].records_out["error"] == 2
    finally:
        store.close()


def test_unreachable_database_is_retried_then_fails_naming_the_node(data_dir: Path, tmp_path: Path):
    flow = {
        "format": "flowmill/1",
        "id": "erp-down",
        "nodes": [
            {
                "id": "read-erp",
                "type": "sql.read",
                "config": {
                    # nothing listens on port 1: the database is "down"
                    "url": "postgresql+psycopg://postgres@127.0.0.1:1/test",
                    "query": "SELECT 1",
                    "retries": 2,
                    "retry_delay": 0.1,
                },
            }
        ],
        "edges": [],
    }
    result = flowmill(
        "run", str(write(tmp_path / "f.flow.json", flow)), "--json", data_dir=data_dir
    )
    assert result.returncode == 1
    summary = json.loads(result.stdout)
    node = summary["nodes"][0]
    assert (node["state"], node["attempts"]) == ("failed", 3)
    assert summary["error_node"] == "read-erp"
    assert "refused" in summary["error"].lower() or "connect" in summary["error"].lower()
    assert "error: node read-erp:" in result.stderr


def _node_running(data_dir: Path, node_id: str) -> bool:
    """Has ``flowmill run`` started the node (its run is recorded in the data directory)?"""
    database = data_dir / "flowmill.db"
    if not database.exists():
        return False
    try:
        with sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=5) as conn:
            row = conn.execute(
                "SELECT state FROM node_runs WHERE node_id = ?", (node_id,)
            ).fetchone()
    except sqlite3.OperationalError:  # the schema is still being made
        return False
    return row is not None and row[0] == "running"


def test_ctrl_c_cancels_the_run_between_batches(data_dir: Path, tmp_path: Path):
    flow = {
        "format": "flowmill/1",
        "id": "slow",
        "nodes": [
            {"id": "start", "type": "trigger.manual"},
            {"id": "wait", "type": "util.delay", "config": {"seconds": 60}},
        ],
        "edges": [{"source": "start", "source_port": "out", "target": "wait", "target_port": "in"}],
    }
    path = write(tmp_path / "slow.flow.json", flow)
    env = {**os.environ, "FLOWMILL_DATA_DIR": str(data_dir)}
    proc = subprocess.Popen(
        [str(FLOWMILL), "run", str(path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    wait_until(lambda: _node_running(data_dir, "wait") or proc.poll() is not None)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=DEADLINE)
    assert proc.returncode == 1
    assert "cancelled" in out and "run cancelled" in err


def test_connection_test_reaches_the_server_and_never_shows_the_password(
    data_dir: Path, tmp_path: Path
) -> None:
    db = tmp_path / "erp.db"
    sqlite3.connect(db).close()
    added = flowmill("connection", "add", "erp", "--url", f"sqlite:///{db}", data_dir=data_dir)
    assert added.returncode == 0 and "connection erp added (sql" in added.stdout
    ok = flowmill("connection", "test", "erp", data_dir=data_dir)
    assert ok.returncode == 0 and ok.stdout.startswith("ok: connection erp (sql): sqlite:///")
    # MariaDB's root has no password here: a wrong one is refused
    wrong = flowmill(
        "connection",
        "add",
        "mariadb",
        "--option",
        "url=mysql+pymysql://root@127.0.0.1:3306/test",
        "--secret",
        "password",
        data_dir=data_dir,
        stdin="Geheim-42\n",
    )
    assert wrong.returncode == 0, wrong.stderr
    listed = flowmill("connection", "list", data_dir=data_dir)
    assert "mariadb" in listed.stdout and "password" in listed.stdout
    assert "Geheim-42" not in listed.stdout
    refused = flowmill("connection", "test", "mariadb", "--timeout", "5", data_dir=data_dir)
    assert refused.returncode == 1
    assert "failed: connection mariadb (sql): cannot connect to" in refused.stderr
    assert "Access denied" in refused.stderr and "Geheim-42" not in refused.stderr
    flowmill("connection", "add", "odd", "--option", "host=example", data_dir=data_dir)
    unknown = flowmill("connection", "test", "odd", data_dir=data_dir)
    assert unknown.returncode == 1 and "cannot tell its type" in unknown.stderr
    assert "sql" in flowmill("connection", "types", data_dir=data_dir).stdout
    bad_type = flowmill("connection", "add", "x", "--type", "ftp", "--url", "a", data_dir=data_dir)
    assert bad_type.returncode == 2 and "--type ftp: not one of" in bad_type.stderr
    assert flowmill("connection", "remove", "odd", data_dir=data_dir).returncode == 0
    assert flowmill("connection", "remove", "odd", data_dir=data_dir).returncode == 1
