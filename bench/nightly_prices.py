"""Benchmark of the ``nightly-prices`` sample over N demo articles on SQLite.

    .venv/bin/python bench/nightly_prices.py --articles 1000000

The sample's flow runs as a job through the engine (``run_job``, as a worker does),
pushing to a stand-in WooCommerce shop (``designer.demo.shop``) that serves from a child
process, so the engine's peak RSS is its own. The flow writes an ERP price only after the
shop accepted it, so the push cannot be skipped; the baseline does the same work in plain
Python (stdlib sqlite3, the same rule with Decimal, ``requests`` batches of 100 to the same
shop, ``executemany`` update) and a second baseline leaves the push out. Each measurement
runs in its own process on a fresh copy of the database; the ERP file is in WAL mode (with
the default rollback journal, a writer next to the streaming reader cannot spill its
cache and grows instead).
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import resource
import shutil
import sqlite3
import sys
import tempfile
import threading
import time
from decimal import ROUND_CEILING, ROUND_HALF_UP, Decimal
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SAMPLE = ROOT / "samples" / "nightly-prices.flow.json"
CENT = Decimal("0.01")


def _serve_shop(db: str, port_box: mp.Queue, stop: mp.Event) -> None:  # type: ignore[type-arg]
    import logging
    from collections import deque

    from designer.demo.data import DEMO_SHOP
    from designer.demo.shop import Credentials, DemoShop, start_shop

    class _Forgetful(dict):  # the bench sends each batch once: keep no replay store
        def __setitem__(self, key, value):  # type: ignore[no-untyped-def]
            pass

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    shop = DemoShop(
        credentials=Credentials(woo_key=DEMO_SHOP["user"], woo_secret=DEMO_SHOP["password"])
    )
    shop.requests = deque(maxlen=100)  # type: ignore[assignment]
    shop._idempotent = _Forgetful()
    conn = sqlite3.connect(db)
    for sku, price, shop_id in conn.execute("SELECT sku, price, shop_id FROM articles"):
        shop.products[shop_id] = {
            "id": shop_id, "uuid": "", "sku": sku, "name": sku, "price": float(price),
            "stock": 0, "status": "publish", "writes": 0,
        }  # fmt: skip
    conn.close()
    running = start_shop(shop=shop)
    port_box.put(running.url)
    stop.wait()
    running.stop()


def rule(
    cost: Decimal, markup: Decimal = Decimal("1.45"), margin: Decimal = Decimal(20)
) -> Decimal:
    nearest = (cost * markup + CENT).quantize(Decimal(1), ROUND_HALF_UP) - CENT
    lowest = (cost * (1 + margin / 100) + CENT).quantize(Decimal(1), ROUND_CEILING) - CENT
    return max(nearest, lowest)


def _flow(db: str, data_dir: str, shop_url: str, out: mp.Queue) -> None:  # type: ignore[type-arg]
    from designer.demo.data import DEMO_SHOP
    from engine.batch.workers import run_job
    from engine.service import Flowmill

    app = Flowmill.open(Path(data_dir))
    app.set_connection("erp", {"type": "sql", "url": f"sqlite:///{db}"})
    app.set_connection(
        "shop",
        {"type": "shop", "preset": "woocommerce", "base_url": shop_url, "auth": "basic",
         "user": DEMO_SHOP["user"], "password": DEMO_SHOP["password"]},
    )  # fmt: skip
    info, _ = app.import_flow(SAMPLE)
    job = app.submit(info.id, {}, source="bench")
    claimed = app.jobs.claim("bench")
    assert claimed is not None and claimed.id == job.id
    begun = time.perf_counter()
    state = run_job(app, job.id, "bench", 5.0, threading.Event())
    seconds = time.perf_counter() - begun
    tail = "\n".join(app.job_log(job.id)[-6:])
    app.close()
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    out.put((state, seconds, rss, tail))


def _baseline(db: str, shop_url: str, push: bool, out: mp.Queue) -> None:  # type: ignore[type-arg]
    import requests

    from designer.demo.data import DEMO_SHOP

    session = requests.Session()
    session.auth = (DEMO_SHOP["user"], DEMO_SHOP["password"])
    begun = time.perf_counter()
    read = sqlite3.connect(db, check_same_thread=False)
    write = sqlite3.connect(db)
    rows = read.execute("SELECT sku, cost, price, shop_id FROM articles ORDER BY sku")
    pending: list[tuple[str, str, int]] = []

    def flush() -> None:
        if push:
            body = {"update": [{"id": i, "regular_price": p} for _s, p, i in pending]}
            session.post(f"{shop_url}/wp-json/wc/v3/products/batch", json=body).raise_for_status()
        write.executemany(
            "UPDATE articles SET price = ? WHERE sku = ?", [(p, s) for s, p, _i in pending]
        )
        pending.clear()

    for sku, cost, price, shop_id in rows:
        new = rule(Decimal(str(cost)))
        if new != Decimal(str(price)).quantize(CENT):
            pending.append((sku, str(new), shop_id))
            if len(pending) == 100:
                flush()
    if pending:
        flush()
    write.commit()
    seconds = time.perf_counter() - begun
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    out.put(("succeeded", seconds, rss, ""))


def _measure(target, *args) -> tuple[str, float, float, str]:  # type: ignore[no-untyped-def]
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    proc = ctx.Process(target=target, args=(*args, out))
    proc.start()
    result = out.get()
    proc.join()
    return result


def _changed(db: str) -> int:
    conn = sqlite3.connect(db)
    n = 0
    for cost, price in conn.execute("SELECT cost, price FROM articles"):
        n += rule(Decimal(str(cost))) != Decimal(str(price)).quantize(CENT)
    conn.close()
    return n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--articles", type=int, default=1_000_000)
    args = parser.parse_args()
    from designer.demo.data import create_demo

    work = Path(tempfile.mkdtemp(prefix="bench-nightly-"))
    try:
        t0 = time.perf_counter()
        summary = create_demo(work, articles_count=args.articles)
        master = summary.erp_url.removeprefix("sqlite:///")
        with sqlite3.connect(master) as conn:
            conn.execute("PRAGMA journal_mode=WAL")
        changed = _changed(master)
        print(f"{args.articles:,} articles ({changed:,} prices change) made in "
              f"{time.perf_counter() - t0:.1f} s")  # fmt: skip
        results = {}
        for name in ("flowmill", "python+push", "python (no push)"):
            db = str(work / f"{name.split()[0].replace('+', '-')}.db")
            shutil.copy(master, db)
            ctx = mp.get_context("spawn")
            port_box, stop = ctx.Queue(), ctx.Event()
            shop = ctx.Process(target=_serve_shop, args=(db, port_box, stop))
            shop.start()
            url = port_box.get()
            if name == "flowmill":
                data_dir = work / "data"
                data_dir.mkdir()
                state, seconds, rss, tail = _measure(_flow, db, str(data_dir), url)
            else:
                state, seconds, rss, tail = _measure(_baseline, db, url, name == "python+push")
            stop.set()
            shop.join()
            assert state == "succeeded", tail
            with sqlite3.connect(db) as conn:
                left = sum(
                    rule(Decimal(str(c))) != Decimal(str(p)).quantize(CENT)
                    for c, p in conn.execute("SELECT cost, price FROM articles")
                )
            if left:
                with sqlite3.connect(db) as conn:
                    for row in conn.execute("SELECT sku, cost, price FROM articles"):
                        if rule(Decimal(str(row[1]))) != Decimal(str(row[2])).quantize(CENT):
                            print("  not updated:", row, rule(Decimal(str(row[1]))))
                            break
            assert left == 0, f"{name}: {left} prices not updated"
            results[name] = seconds
            print(f"{name:18} {seconds:8.1f} s  {args.articles / seconds:10,.0f} articles/s  "
                  f"peak RSS {rss:6.0f} MB")  # fmt: skip
            if tail:
                print("  " + tail.replace("\n", "\n  "))
        base = results["flowmill"]
        plain, bare = results["python+push"], results["python (no push)"]
        print(f"flowmill / python+push = {base / plain:.2f}, "
              f"flowmill / python (no push) = {base / bare:.2f}")  # fmt: skip
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
