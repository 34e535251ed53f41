"""Benchmark: building the demo ERP (``create_demo``) against plain Python doing the same.

Run from the repository root:  python bench/demo_init.py [--articles N] [--keep]

Both sides run in their own process, so peak RSS is that process's own (``ru_maxrss`` of
the child), on SQLite in a temporary folder:

- flowmill: ``designer.demo.data.create_demo(DATA, articles_count=N)`` — the whole demo
  (tables, N articles, customers, orders, export files, invoice), as ``flowmill demo
  init`` runs it minus the connection store;
- plain: the stdlib ``sqlite3`` module creating the same ``articles`` table and inserting
  N equivalent rows (same columns and value formats, made by the same kind of seeded
  ``random`` calls) with one ``executemany`` over a generator, one commit, and the same
  bulk-load pragmas (WAL, ``synchronous=OFF``).

Prints wall seconds, articles/s, peak RSS and the ratios. Goal (issue 7): 1,000,000
articles within a few minutes and bounded memory; a tenth of the articles is measured too,
to show the peak does not grow with N.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

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

FLOWMILL = textwrap.dedent(
    """
    import sys
    from designer.demo.data import create_demo
    create_demo(sys.argv[1], articles_count=int(sys.argv[2]))
    """
)

PLAIN = textwrap.dedent(
    """
    import random, sqlite3, sys
    from datetime import datetime
    path, count = sys.argv[1], int(sys.argv[2])
    con = sqlite3.connect(path)
    con.execute("PRAGMA journal_mode=WAL")
    con.execute("PRAGMA synchronous=OFF")
    con.execute(
        "CREATE TABLE articles (sku VARCHAR(20) PRIMARY KEY, name VARCHAR(100) NOT NULL, "
        "group_name VARCHAR(40) NOT NULL, cost NUMERIC(12, 2) NOT NULL, "
        "price NUMERIC(12, 2) NOT NULL, stock INTEGER NOT NULL, shop_id INTEGER, "
        "updated_at DATETIME NOT NULL)"
    )
    groups = ["Schrauben", "Dübel", "Werkzeug", "Elektro", "Garten", "Farben"]
    now = datetime.now().strftime("%Y-%m-%d %H:%M:%S.000000")
    randint = random.Random(4711).randint

    def rows():
        for n in range(1, count + 1):
            cost = randint(5, 20_000)
            price = (cost * 145 + 50) // 100
            yield (f"A{n:07d}", f"Artikel {n % 9 + 1}", groups[n % 6], cost / 100,
                   price / 100, randint(0, 500), 1000 + n, now)

    con.executemany("INSERT INTO articles VALUES (?, ?, ?, ?, ?, ?, ?, ?)", rows())
    con.commit()
    con.close()
    """
)


def measure(cmd: list[str]) -> tuple[float, float]:
    """Run ``cmd`` in a child; return (wall seconds, peak RSS MB) of that child."""
    out = subprocess.run(
        [sys.executable, "-c", MEASURE, *cmd],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        check=False,
    )
    line = next((x for x in out.stdout.splitlines() if x.startswith("@@ ")), None)
    if line is None or line.split()[1] != "0":
        sys.stderr.write(out.stdout[-3000:] + out.stderr[-3000:])
        raise SystemExit(f"benchmark command failed: {' '.join(cmd)}")
    _, _, wall, rss = line.split()
    return float(wall), float(rss)


def count_articles(db: Path) -> int:
    import sqlite3

    con = sqlite3.connect(db)
    try:
        return con.execute("SELECT count(*) FROM articles").fetchone()[0]
    finally:
        con.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--articles", type=int, default=1_000_000)
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    args = parser.parse_args()
    n = args.articles
    work = Path(tempfile.mkdtemp(prefix="flowmill-bench-demo-"))
    try:
        (work / "flowmill.py").write_text(FLOWMILL)
        (work / "plain.py").write_text(PLAIN)
        plain = measure([sys.executable, str(work / "plain.py"), str(work / "plain.db"), str(n)])
        mill = measure([sys.executable, str(work / "flowmill.py"), str(work / "data"), str(n)])
        tenth = max(1, n // 10)
        _, mill_tenth_rss = measure(
            [sys.executable, str(work / "flowmill.py"), str(work / "data-tenth"), str(tenth)]
        )
        counts = [count_articles(work / "plain.db"), count_articles(work / "data/demo/erp.db")]
        if counts != [n, n]:
            raise SystemExit(f"article counts differ: plain/flowmill = {counts}")
        (pw, pr), (fw, fr) = plain, mill
        print(f"\n{n:,} articles into SQLite")
        print(f"  {'':<22} {'wall s':>8} {'articles/s':>11} {'peak RSS MB':>12}")
        print(f"  {'plain sqlite3':<22} {pw:>8.2f} {n / pw:>11,.0f} {pr:>12.1f}")
        print(f"  {'create_demo (whole)':<22} {fw:>8.2f} {n / fw:>11,.0f} {fr:>12.1f}")
        print(f"  ratio: create_demo wall = {fw / pw:.2f}x plain; peak RSS = {fr / pr:.2f}x plain")
        print(
            f"  create_demo peak RSS with {tenth:,} articles: {mill_tenth_rss:.1f} MB "
            f"(growth {fr - mill_tenth_rss:+.1f} MB for 10x the articles)"
        )
        print(
            "JSON "
            + json.dumps(
                {
                    "articles": n,
                    "plain_wall": pw,
                    "plain_rss_mb": pr,
                    "flowmill_wall": fw,
                    "flowmill_rss_mb": fr,
                    "flowmill_rss_mb_tenth": mill_tenth_rss,
                    "wall_ratio": fw / pw,
                    "rss_ratio": fr / pr,
                }
            )
        )
    finally:
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
