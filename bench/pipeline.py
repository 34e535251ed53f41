"""Benchmark: 1,000,000 rows through Flowmill against plain Python doing the same work.

Run from the repository root:  python bench/pipeline.py [--rows N] [--keep]

Two scenarios, each measured side by side in this run, each side in its own process so
peak RSS is that process's own (``ru_maxrss`` of the child):

1. CSV → transform.map (3 expressions) → CSV, via ``flowmill run``, against a plain
   streaming script with the ``csv`` module.
2. SQLite table → transform.map → sql.write upsert into another table, via
   ``flowmill run``, against hand-written SQLAlchemy Core with batched executemany
   (10,000 rows per batch).

Prints rows/s, wall seconds, peak RSS and the ratios. Goals (issue 2): scenario 1 at
least 0.5x the plain script's rows/s; scenario 2 at most 1.5x its wall time; peak RSS
under 150 MB for Flowmill.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent

MEASURE = textwrap.dedent(
    """
    import resource, subprocess, sys, time
    began = time.perf_counter()
    code = subprocess.run(sys.argv[1:]).returncode
    wall = time.perf_counter() - began
    rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    print(f"@@ {code} {wall:.3f} {rss:.1f}")
    """
)

PLAIN_CSV = textwrap.dedent(
    """
    import csv, sys
    src, dst = sys.argv[1], sys.argv[2]
    fi = open(src, newline="", encoding="utf-8")
    fo = open(dst, "w", newline="", encoding="utf-8")
    with fi, fo:
        reader = csv.reader(fi)
        writer = csv.writer(fo)
        header = next(reader)
        writer.writerow(header + ["gross", "label", "big"])
        for row in reader:
            price = float(row[2]); qty = int(row[3])
            writer.writerow(row + [round(price * 1.19, 2), row[1].upper(), qty > 10])
    """
)

PLAIN_SQL = textwrap.dedent(
    """
    import sys
    import sqlalchemy as sa
    from sqlalchemy.dialects.sqlite import insert
    engine = sa.create_engine(f"sqlite:///{sys.argv[1]}")
    meta = sa.MetaData()
    target = sa.Table("prices_plain", meta, autoload_with=engine)
    stmt = insert(target)
    stmt = stmt.on_conflict_do_update(
        index_elements=["sku"],
        set_={c: stmt.excluded[c] for c in ("name", "price", "gross", "label")},
    )
    with engine.connect() as src, engine.begin() as dst:
        result = src.execution_options(stream_results=True, yield_per=10000).execute(
            sa.text("SELECT sku, name, price FROM articles"))
        for part in result.mappings().partitions(10000):
            rows = [{"sku": r["sku"], "name": r["name"], "price": r["price"],
                     "gross": round(r["price"] * 1.19, 2), "label": r["name"].upper()}
                    for r in part]
            dst.execute(stmt, rows)
    """
)


def measure(cmd: list[str], env: dict[str, str] | None = None) -> tuple[float, float]:
    """Run ``cmd`` in a child; return (wall seconds, peak RSS MB) of that child."""
    out = subprocess.run(
        [sys.executable, "-c", MEASURE, *cmd],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        check=False,
    )
    line = next((x for x in out.stdout.splitlines() if x.startswith("@@ ")), None)
    if line is None or line.split()[1] != "0":
        sys.stderr.write(out.stdout[-3000:] + out.stderr[-3000:])
        raise SystemExit(f"benchmark command failed: {' '.join(cmd)}")
    _, _, wall, rss = line.split()
    return float(wall), float(rss)


def make_csv(path: Path, rows: int) -> None:
    rnd = random.Random(1)
    with path.open("w", encoding="utf-8", newline="") as fh:
        fh.write("sku,name,price,qty\n")
        for i in range(rows):
            fh.write(
                f"A{i:07d},article {i % 977},{rnd.randint(100, 99999) / 100},{rnd.randint(0, 50)}\n"
            )


def make_db(path: Path, rows: int) -> None:
    rnd = random.Random(2)
    con = sqlite3.connect(path)
    # WAL lets one connection stream rows while another writes (both sides do that)
    con.execute("PRAGMA journal_mode=WAL")
    con.execute("CREATE TABLE articles (sku TEXT PRIMARY KEY, name TEXT, price REAL)")
    for table in ("prices_flowmill", "prices_plain"):
        con.execute(
            f"CREATE TABLE {table} (sku TEXT PRIMARY KEY, name TEXT, price REAL, "
            "gross REAL, label TEXT)"
        )
    con.executemany(
        "INSERT INTO articles VALUES (?, ?, ?)",
        ((f"A{i:07d}", f"article {i % 977}", rnd.randint(100, 99999) / 100) for i in range(rows)),
    )
    con.commit()
    con.close()


def csv_flow(src: Path, dst: Path) -> dict:
    return {
        "format": "flowmill/1",
        "id": "bench-csv",
        "nodes": [
            {
                "id": "read",
                "type": "file.read",
                "config": {"path": str(src), "types": {"price": "float", "qty": "int"}},
            },
            {
                "id": "map",
                "type": "transform.map",
                "config": {
                    "fields": {
                        "gross": "round(price * 1.19, 2)",
                        "label": "upper(name)",
                        "big": "qty > 10",
                    }
                },
            },
            {"id": "write", "type": "file.write", "config": {"path": str(dst)}},
        ],
        "edges": [
            {"source": "read", "source_port": "out", "target": "map", "target_port": "in"},
            {"source": "map", "source_port": "out", "target": "write", "target_port": "in"},
        ],
    }


def sql_flow(db: Path) -> dict:
    """Default batch sizes (1,000), as a user would leave them."""
    url = f"sqlite:///{db}"
    return {
        "format": "flowmill/1",
        "id": "bench-sql",
        "nodes": [
            {
                "id": "read",
                "type": "sql.read",
                "config": {
                    "url": url,
                    "query": "SELECT sku, name, price FROM articles",
                },
            },
            {
                "id": "map",
                "type": "transform.map",
                "config": {"fields": {"gross": "round(price * 1.19, 2)", "label": "upper(name)"}},
            },
            {
                "id": "write",
                "type": "sql.write",
                "config": {
                    "url": url,
                    "table": "prices_flowmill",
                    "mode": "upsert",
                    "key": ["sku"],
                },
            },
        ],
        "edges": [
            {"source": "read", "source_port": "out", "target": "map", "target_port": "in"},
            {"source": "map", "source_port": "out", "target": "write", "target_port": "in"},
        ],
    }


def report(title: str, rows: int, plain: tuple[float, float], mill: tuple[float, float]) -> dict:
    (pw, pr), (fw, fr) = plain, mill
    print(f"\n{title}")
    print(f"  {'':<10} {'wall s':>8} {'rows/s':>10} {'peak RSS MB':>12}")
    print(f"  {'plain':<10} {pw:>8.2f} {rows / pw:>10,.0f} {pr:>12.1f}")
    print(f"  {'flowmill':<10} {fw:>8.2f} {rows / fw:>10,.0f} {fr:>12.1f}")
    print(f"  ratio: flowmill rows/s = {pw / fw:.2f}x plain; wall = {fw / pw:.2f}x plain")
    return {
        "plain_wall": pw,
        "plain_rss_mb": pr,
        "flowmill_wall": fw,
        "flowmill_rss_mb": fr,
        "rows_per_s_ratio": pw / fw,
        "wall_ratio": fw / pw,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    args = parser.parse_args()
    flowmill = shutil.which("flowmill", path=str(VENV_BIN)) or shutil.which("flowmill")
    if not flowmill:
        raise SystemExit("flowmill is not installed (run scripts/quickstart first)")
    work = Path(tempfile.mkdtemp(prefix="flowmill-bench-"))
    env = {"FLOWMILL_DATA_DIR": str(work / "data")}
    results = {}
    try:
        print(f"generating {args.rows:,} rows in {work} ...")
        src = work / "in.csv"
        make_csv(src, args.rows)
        db = work / "bench.db"
        make_db(db, args.rows)
        (work / "plain.py").write_text(PLAIN_CSV)
        (work / "plain_sql.py").write_text(PLAIN_SQL)
        (work / "csv.flow.json").write_text(json.dumps(csv_flow(src, work / "out-flowmill.csv")))
        (work / "sql.flow.json").write_text(json.dumps(sql_flow(db)))

        plain = measure(
            [sys.executable, str(work / "plain.py"), str(src), str(work / "out-plain.csv")]
        )
        mill = measure([flowmill, "run", str(work / "csv.flow.json")], env)
        results["csv"] = report("CSV -> map (3 expressions) -> CSV", args.rows, plain, mill)
        # flat memory: the same flow on a tenth of the rows must peak at about the same RSS
        small = work / "small.csv"
        make_csv(small, max(1, args.rows // 10))
        (work / "small.flow.json").write_text(json.dumps(csv_flow(small, work / "out-small.csv")))
        _, small_rss = measure([flowmill, "run", str(work / "small.flow.json")], env)
        print(
            f"  peak RSS with {args.rows // 10:,} rows: {small_rss:.1f} MB; with {args.rows:,}: "
            f"{mill[1]:.1f} MB (growth {mill[1] - small_rss:+.1f} MB for 10x the data)"
        )
        results["csv"]["flowmill_rss_mb_tenth"] = small_rss

        plain = measure([sys.executable, str(work / "plain_sql.py"), str(db)])
        mill = measure([flowmill, "run", str(work / "sql.flow.json")], env)
        results["sqlite"] = report("SQLite -> map -> upsert SQLite", args.rows, plain, mill)
        con = sqlite3.connect(db)
        counts = [
            con.execute(f"SELECT count(*) FROM {t}").fetchone()[0]
            for t in ("prices_plain", "prices_flowmill")
        ]
        con.close()
        if counts != [args.rows, args.rows]:
            raise SystemExit(f"row counts differ: plain/flowmill = {counts}")
        print(f"\nrows written: plain {counts[0]:,}, flowmill {counts[1]:,}")
        print("JSON " + json.dumps(results))
    finally:
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
