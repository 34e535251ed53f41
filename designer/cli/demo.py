"""Demo commands of ``flowmill``: ``demo init``, ``demo shop`` and ``demo mail``.

``demo init`` builds the demo world of ``designer.demo.data`` (ERP database, export files,
invoice, connections) in the data directory, or the ERP in any database given by
``--url``. An existing demo is refused unless ``--force`` is given, which drops the demo
tables and builds them again.

``demo shop`` serves the stand-in web shop of ``designer.demo.shop`` in the foreground,
with the demo credentials (``DEMO_SHOP``: WooCommerce consumer key and secret) and the
ERP's articles as its catalog (sku, name, price, stock; id = ``articles.shop_id``), read
through the ``erp`` connection of the data directory. The stand-in keeps its catalog as
Python dicts and finds a SKU by scanning them (about 1 KB and a linear search per
product), which suits thousands of products, not the million of the nightly price job:
so it loads the first ``--max-products`` articles by SKU (default 10,000; 0 loads all)
and says on stderr how many it left out. Articles without ``shop_id`` are not in the
shop. It also plays the weather service and webcam of the downloads sample
(``/demo/forecast.json``, ``/demo/webcam.jpg``). Ctrl-C or SIGTERM stop it cleanly (exit 0).

``demo mail`` is the SMTP server of the ``mail`` connection (127.0.0.1:8025): it keeps
every mail as a file in ``DATA/demo/outbox`` (designer/demo/mail.py).
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import sqlalchemy as sa

from designer.demo.data import DEMO_SHOP, create_demo, demo_dir, existing_demo
from engine.errors import ConnectionNotFound, FlowmillError
from engine.service import Flowmill

__all__ = ["add_parsers", "COMMANDS"]

EXIT_OK, EXIT_FAILED, EXIT_INVALID = 0, 1, 2
MAX_PRODUCTS = 10_000


def _count(text: str) -> int:
    try:
        value = int(text.replace("_", ""))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text} must not be negative")
    return value


def add_parsers(sub: Any) -> None:
    demo = sub.add_parser("demo", help="the demo world: ERP database, export files, web shop")
    demo_sub = demo.add_subparsers(dest="action", required=True)
    init = demo_sub.add_parser(
        "init", help="build the demo ERP, export files, invoice and connections"
    )
    init.add_argument("--articles", type=_count, default=1000, help="articles (default 1000)")
    init.add_argument("--customers", type=_count, default=40, help="customers (default 40)")
    init.add_argument("--orders", type=_count, default=120, help="orders (default 120)")
    init.add_argument(
        "--url",
        help="build the ERP in this database (a SQLAlchemy URL) instead of DATA/demo/erp.db; "
        "the erp connection then points at it",
    )
    again = init.add_mutually_exclusive_group()
    again.add_argument(
        "--force", action="store_true", help="rebuild an existing demo (drops the demo tables)"
    )
    again.add_argument(
        "--if-missing",
        action="store_true",
        help="do nothing (exit 0) when a demo exists already: for start scripts",
    )
    shop = demo_sub.add_parser("shop", help="run the stand-in web shop in the foreground")
    shop.add_argument("--host", default=DEMO_SHOP["host"], help="default %(default)s")
    shop.add_argument("--port", type=int, default=DEMO_SHOP["port"], help="default %(default)s")
    shop.add_argument(
        "--max-products",
        type=_count,
        default=MAX_PRODUCTS,
        help=f"load at most this many ERP articles into the shop (default {MAX_PRODUCTS:,}; "
        "0: all, about 1 KB of memory each)",
    )
    mail = demo_sub.add_parser(
        "mail", help="run a local SMTP server that keeps every mail in DATA/demo/outbox"
    )
    mail.add_argument("--host", default="127.0.0.1", help="default %(default)s")
    mail.add_argument("--port", type=int, default=8025, help="default %(default)s")
    for leaf in demo_sub.choices.values():
        leaf.add_argument("--data-dir", help="data directory (default: $FLOWMILL_DATA_DIR)")


def _safe(url: str) -> str:
    return sa.make_url(url).render_as_string(hide_password=True)


def cmd_init(args: argparse.Namespace) -> int:
    with Flowmill.open(args.data_dir) as app:
        data_dir = app.settings.data_dir
        found = existing_demo(data_dir, args.url, service=app)
        if found and args.if_missing:
            print("demo data: already there (`flowmill demo init --force` rebuilds it)")
            return EXIT_OK
        if found and not args.force:
            print("error: a demo exists already: " + "; ".join(found), file=sys.stderr)
            print(
                "`flowmill demo init --force` rebuilds it: it drops the demo tables and "
                "rewrites DATA/demo (and repoints the erp and mirror connections)",
                file=sys.stderr,
            )
            return EXIT_FAILED
        began = time.perf_counter()
        summary = create_demo(
            data_dir,
            articles_count=args.articles,
            customers_count=args.customers,
            orders_count=args.orders,
            erp_url=args.url,
            service=app,
        )
        seconds = time.perf_counter() - began
    print(f"demo built in {demo_dir(data_dir)} ({seconds:.1f} s)")
    print(f"  ERP      {_safe(summary.erp_url)}")
    print(
        f"           {summary.articles:,} articles, {summary.customers:,} customers, "
        f"{summary.orders:,} orders with {summary.order_lines:,} lines"
    )
    print(f"  mirror   {summary.mirror_url}")
    for path in [*summary.export_files, summary.invoice_file]:
        print(f"  file     {path}")
    print(f"  connections written: {', '.join(summary.connections) or '-'}")
    if summary.kept_connections:
        print(f"  connections kept as they were: {', '.join(summary.kept_connections)}")
    print("  the stand-in shop: flowmill demo shop")
    return EXIT_OK


def _erp_url(app: Flowmill) -> sa.URL | None:
    """The ``erp`` connection's URL with its user and password filled in; None if unset."""
    try:
        settings = app.store.get_connection("erp")
    except ConnectionNotFound:
        return None
    if not settings.get("url"):
        return None
    url = sa.make_url(str(settings["url"]))
    # a SQL connection may keep user and password apart from its URL
    if settings.get("user") and not url.username:
        url = url.set(username=str(settings["user"]))
    if settings.get("password") and url.password is None:
        url = url.set(password=str(settings["password"]))
    return url


def _load_from_erp(shop: Any, url: sa.URL, limit: int) -> tuple[int, int]:
    """Put the first ``limit`` shop articles by SKU (0: all) into ``shop``, streamed;
    (loaded, articles with a shop id)."""
    engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
    try:
        with engine.connect() as conn:
            total = conn.execute(
                sa.text("SELECT count(*) FROM articles WHERE shop_id IS NOT NULL")
            ).scalar_one()
            query = "SELECT sku, name, price, stock, shop_id FROM articles "
            query += "WHERE shop_id IS NOT NULL ORDER BY sku"
            if limit:
                query += f" LIMIT {int(limit)}"
            rows = conn.execution_options(yield_per=10_000).execute(sa.text(query))
            return _load(shop, (row._mapping for row in rows)), total
    finally:
        engine.dispose()


def _load(shop: Any, rows: Iterable[Mapping[str, Any]]) -> int:
    """Put ERP articles into the shop under their ``shop_id``: ``add_product`` numbers
    products itself, so each is re-keyed, and the shop numbers new ones after the highest."""
    highest, loaded = 0, 0
    with shop.lock:
        for row in rows:
            product = shop.add_product(row["sku"], row["name"], float(row["price"]), row["stock"])
            del shop.products[product["id"]]
            product["id"] = int(row["shop_id"])
            shop.products[product["id"]] = product
            highest = max(highest, product["id"])
            loaded += 1
        shop._next_id = max(shop._next_id, highest + 1)
    return loaded


def _stop(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt  # serve_shop closes the server on it


def cmd_shop(args: argparse.Namespace) -> int:
    from designer.demo.shop import Credentials, DemoShop, serve_shop

    with Flowmill.open(args.data_dir) as app:
        url = _erp_url(app)
    shop = DemoShop(
        credentials=Credentials(
            woo_key=DEMO_SHOP["user"],
            woo_secret=DEMO_SHOP["password"],
            api_token=DEMO_SHOP["api_token"],
        )
    )
    if url is None:
        print(
            "demo shop: no erp connection (run `flowmill demo init`): empty catalog",
            file=sys.stderr,
        )
    else:
        try:
            loaded, total = _load_from_erp(shop, url, args.max_products)
        except sa.exc.SQLAlchemyError as exc:
            raise FlowmillError(
                f"demo shop: cannot read the articles of {url.render_as_string(hide_password=True)}"
                f" (run `flowmill demo init`): {type(exc).__name__}"
            ) from None
        if loaded < total:
            print(
                f"demo shop: loaded the first {loaded:,} of {total:,} ERP articles by sku "
                "(--max-products; 0 loads all)",
                file=sys.stderr,
            )
    previous = signal.signal(signal.SIGTERM, _stop)
    print(
        f"demo shop on http://{args.host}:{args.port} with {len(shop.products):,} products; "
        f"WooCommerce key {DEMO_SHOP['user']}, secret {DEMO_SHOP['password']}; Ctrl-C stops it",
        flush=True,
    )
    try:
        serve_shop(args.host, args.port, shop=shop)
    except OSError as exc:
        print(
            f"error: demo shop: cannot listen on {args.host}:{args.port}: {exc.strerror or exc}"
            " (choose another --port)",
            file=sys.stderr,
        )
        return EXIT_INVALID
    finally:
        signal.signal(signal.SIGTERM, previous)
    print("demo shop stopped", flush=True)
    return EXIT_OK


def cmd_mail(args: argparse.Namespace) -> int:
    from designer.demo.mail import start_mail

    with Flowmill.open(args.data_dir) as app:
        outbox = demo_dir(app.settings.data_dir) / "outbox"
    try:
        server = start_mail(args.host, args.port, outbox, lambda text: print(text, flush=True))
    except (OSError, RuntimeError) as exc:
        print(
            f"error: demo mail: cannot listen on {args.host}:{args.port}: {exc} "
            "(choose another --port)",
            file=sys.stderr,
        )
        return EXIT_INVALID
    stop = threading.Event()
    previous = signal.signal(signal.SIGTERM, lambda *_: stop.set())
    print(
        f"demo mail on smtp://{args.host}:{args.port}: every mail is kept in {outbox}; "
        "Ctrl-C stops it",
        flush=True,
    )
    try:
        while not stop.wait(0.5):
            pass
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGTERM, previous)
        server.stop()
    print("demo mail stopped", flush=True)
    return EXIT_OK


def cmd_demo(args: argparse.Namespace) -> int:
    commands = {"init": cmd_init, "shop": cmd_shop, "mail": cmd_mail}
    return commands[args.action](args)


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {"demo": cmd_demo}
