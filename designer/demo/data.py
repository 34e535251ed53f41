"""The demo world behind the samples: a small ERP database, an ERP export folder and the
connections the sample flows name.

``create_demo(data_dir, articles_count=N)`` (``flowmill demo init``) builds, under
``DATA/demo/``:

- ``erp.db`` (or any SQLAlchemy URL: SQLite, PostgreSQL, MariaDB): ``articles``,
  ``customers``, ``orders`` with ``order_lines``, ``sales`` (empty: the sales samples
  import the export into it), ``bookings`` (accounting, empty) and ``accounts``;
- ``mirror.db``: an empty copy of ``customers`` for the db-sync sample;
- ``erp-export/``: the ERP's sales export as ``;``-separated cp1252 text
  (``umsatz.csv``) and as fixed-width ASCII (``umsatz.txt``), one day of sales each;
- ``invoices/``: an invoice CSV as the accounting partner would upload it;
- the connections ``erp`` and ``mirror`` (always pointed at the databases just built) and
  ``shop`` (the stand-in shop of ``flowmill demo shop``, WooCommerce API), ``shop-api``
  (its generic JSON API), ``mail`` (an SMTP server on localhost:8025) and ``mongo``
  (a MongoDB on localhost:27017), which are created only when missing.

The table, column, file and connection names are a contract the samples build on: add
nullable columns at most, never rename or remove.

Everything is made from a fixed random seed, one random stream per table, so two runs
give the same rows (only ``updated_at``, the time of the run, and the dates relative to
``today`` differ) and the article count does not change the customers or orders. Rows
are generated lazily and written in chunks of ``CHUNK`` in their own transactions, so
``--articles 1000000`` needs bounded memory (about the same peak as 10,000). On SQLite
the bulk load runs with ``synchronous=OFF``; the demo's own ``erp.db`` stays in WAL mode
afterwards (so a flow can stream ``articles`` while it writes prices back), a database
given by URL gets its previous journal mode back.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import sqlalchemy as sa

__all__ = [
    "DEMO_SHOP",
    "DEMO_TABLES",
    "EXPORT_COLUMNS",
    "FIXED_WIDTHS",
    "DemoSummary",
    "create_demo",
    "demo_dir",
    "existing_demo",
    "metadata",
]

metadata = sa.MetaData()

articles = sa.Table(
    "articles",
    metadata,
    sa.Column("sku", sa.String(20), primary_key=True),  # "A0000001"
    sa.Column("name", sa.String(100), nullable=False),
    sa.Column("group_name", sa.String(40), nullable=False),
    sa.Column("cost", sa.Numeric(12, 2), nullable=False),  # purchase price, net
    sa.Column("price", sa.Numeric(12, 2), nullable=False),  # sales price, net
    sa.Column("stock", sa.Integer, nullable=False),
    sa.Column("shop_id", sa.Integer, nullable=True),  # the article's id in the web shop
    sa.Column("updated_at", sa.DateTime, nullable=False),
)

customers = sa.Table(
    "customers",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("name", sa.String(100), nullable=False),
    sa.Column("email", sa.String(100), nullable=False),
    sa.Column("street", sa.String(100), nullable=False),
    sa.Column("zip", sa.String(10), nullable=False),
    sa.Column("city", sa.String(60), nullable=False),
    sa.Column("country", sa.String(2), nullable=False),
    sa.Column("phone", sa.String(40), nullable=False),
    sa.Column("credit_limit", sa.Numeric(12, 2), nullable=False),
    sa.Column("updated_at", sa.DateTime, nullable=False),
)

orders = sa.Table(
    "orders",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("customer_id", sa.Integer, sa.ForeignKey("customers.id"), nullable=False),
    sa.Column("ordered_on", sa.Date, nullable=False),
    sa.Column("state", sa.String(20), nullable=False),  # open | shipped | invoiced | cancelled
    sa.Column("updated_at", sa.DateTime, nullable=False),
)

order_lines = sa.Table(
    "order_lines",
    metadata,
    sa.Column("order_id", sa.Integer, sa.ForeignKey("orders.id"), primary_key=True),
    sa.Column("line_no", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("sku", sa.String(20), nullable=False),
    sa.Column("qty", sa.Integer, nullable=False),
    sa.Column("price", sa.Numeric(12, 2), nullable=False),
)

sales = sa.Table(
    "sales",
    metadata,
    sa.Column("receipt_no", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("line_no", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("sale_date", sa.Date, nullable=False),
    sa.Column("store", sa.String(40), nullable=False),
    sa.Column("customer", sa.String(100), nullable=False),
    sa.Column("sku", sa.String(20), nullable=False),
    sa.Column("article", sa.String(100), nullable=False),
    sa.Column("qty", sa.Integer, nullable=False),
    sa.Column("unit_price", sa.Numeric(12, 2), nullable=False),
    sa.Column("net", sa.Numeric(12, 2), nullable=False),
    sa.Column("gross", sa.Numeric(12, 2), nullable=False),
    sa.Column("status", sa.String(20), nullable=False),
    sa.Column("source", sa.String(20), nullable=False),  # export | ticker
)

accounts = sa.Table(
    "accounts",
    metadata,
    sa.Column("number", sa.String(10), primary_key=True),  # SKR03
    sa.Column("name", sa.String(100), nullable=False),
)

bookings = sa.Table(
    "bookings",
    metadata,
    sa.Column("document", sa.String(40), primary_key=True),  # invoice number
    sa.Column("line_no", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("booked_on", sa.Date, nullable=False),
    sa.Column("debit", sa.String(10), sa.ForeignKey("accounts.number"), nullable=False),
    sa.Column("credit", sa.String(10), sa.ForeignKey("accounts.number"), nullable=False),
    sa.Column("amount", sa.Numeric(12, 2), nullable=False),
    sa.Column("text", sa.String(200), nullable=False),
)

ACCOUNTS = [
    ("1200", "Bank"),
    ("1400", "Forderungen aus Lieferungen und Leistungen"),
    ("1576", "Abziehbare Vorsteuer 19 %"),
    ("1600", "Verbindlichkeiten aus Lieferungen und Leistungen"),
    ("1776", "Umsatzsteuer 19 %"),
    ("3400", "Wareneingang 19 % Vorsteuer"),
    ("4930", "Bürobedarf"),
    ("8400", "Erlöse 19 % USt"),
]

# The ERP's sales export (the legacy "ASCII-Dateien in ein Verzeichnis").
EXPORT_COLUMNS = (
    "Belegnr", "Pos", "Belegdatum", "Kunde", "Artikelnummer", "Bezeichnung", "Menge",
    "Einzelpreis", "Status",
)  # fmt: skip
# The same export as fixed-width ASCII: (column, width); dates DDMMYYYY, prices in cents.
FIXED_WIDTHS = (
    ("Belegnr", 8), ("Pos", 3), ("Belegdatum", 8), ("Kunde", 30), ("Artikelnummer", 10),
    ("Bezeichnung", 30), ("Menge", 6), ("EinzelpreisCent", 9), ("Status", 10),
)  # fmt: skip

DEMO_SHOP = {
    "host": "127.0.0.1",
    "port": 8900,
    "preset": "woocommerce",
    "user": "ck_demo_flowmill",
    "password": "cs_demo_flowmill",
    "api_token": "demo-token-flowmill",  # the stand-in's generic JSON API (/api/items)
}
DEMO_MONGO_URL = "mongodb://127.0.0.1:27017/flowmill"

STORES = ["Filiale München", "Filiale Nürnberg", "Filiale Augsburg", "Onlineshop"]
GROUPS = ["Schrauben", "Dübel", "Werkzeug", "Elektro", "Garten", "Farben"]
NOUNS = {
    "Schrauben": ["Schraube M{n} verzinkt", "Holzschraube {n}x40", "Senkkopfschraube M{n}"],
    "Dübel": ["Dübel {n}mm", "Universaldübel {n}mm", "Hohlraumdübel {n}mm"],
    "Werkzeug": ["Schraubendreher Gr. {n}", "Zange {n}0 mm", "Hammer {n}00 g"],
    "Elektro": ["Kabeltrommel {n}5m", "Verlängerung {n}m", "Steckdosenleiste {n}-fach"],
    "Garten": ["Gartenschlauch {n}0m", "Rasensamen {n} kg", "Blumenerde {n}0 l"],
    "Farben": ["Wandfarbe weiß {n} l", "Lack seidenmatt {n}50 ml", "Grundierung {n} l"],
}
FIRST = ["Müller", "Schmidt", "Schneider", "Fischer", "Weber", "Meyer", "Wagner", "Becker",
         "Schulz", "Hoffmann", "Koch", "Bauer", "Richter", "Klein", "Wolf", "Schröder"]  # fmt: skip
KINDS = ["GmbH", "KG", "Bau GmbH", "Haustechnik", "Büromöbel", "& Söhne", "e.K.", "AG"]
CITIES = [("80331", "München"), ("90402", "Nürnberg"), ("86150", "Augsburg"),
          ("93047", "Regensburg"), ("97070", "Würzburg"), ("85049", "Ingolstadt")]  # fmt: skip
STATES = ["open", "open", "shipped", "invoiced", "cancelled"]
CHUNK = 10_000
SEED = 4711


DEMO_TABLES = tuple(table.name for table in metadata.sorted_tables)


def demo_dir(data_dir: Path) -> Path:
    return Path(data_dir) / "demo"


@dataclass
class DemoSummary:
    """What ``create_demo`` made, for the CLI to print."""

    erp_url: str
    mirror_url: str
    articles: int
    customers: int
    orders: int
    export_files: list[Path]
    invoice_file: Path
    connections: list[str]  # written by this run (erp and mirror always, others if new)
    kept_connections: list[str] = field(default_factory=list)  # existed, left as they were
    order_lines: int = 0


def _rng(part: str) -> random.Random:
    """One random stream per table, so one table's size never changes another's rows."""
    return random.Random(f"{SEED}:{part}")


def _money(cents: int) -> Decimal:
    return Decimal(cents).scaleb(-2)


def _article_name(number: int) -> tuple[str, str]:
    """(group, name) of article ``number``: a function of the number alone, so the
    export files name articles exactly as the ERP does."""
    group = GROUPS[number % len(GROUPS)]
    pattern = NOUNS[group][number // len(GROUPS) % len(NOUNS[group])]
    return group, pattern.format(n=1 + number % 9)


def _articles(count: int, now: datetime) -> Iterator[dict[str, Any]]:
    randint = _rng("articles").randint
    for number in range(1, count + 1):
        group, name = _article_name(number)
        cost = randint(5, 20_000)  # cents
        yield {
            "sku": f"A{number:07d}",
            "name": name,
            "group_name": group,
            "cost": _money(cost),
            "price": _money((cost * 145 + 50) // 100),  # 45 % on cost, rounded half up
            "stock": randint(0, 500),
            "shop_id": 1000 + number,
            "updated_at": now,
        }


def _customer_name(number: int) -> str:
    family = FIRST[(number - 1) % len(FIRST)]
    kind = KINDS[(number - 1) // len(FIRST) % len(KINDS)]
    return f"{family} {kind}"


def _customers(count: int, now: datetime) -> Iterator[dict[str, Any]]:
    rng = _rng("customers")
    for number in range(1, count + 1):
        family = FIRST[(number - 1) % len(FIRST)]
        zip_code, city = CITIES[number % len(CITIES)]
        slug = family.lower().replace("ü", "ue").replace("ö", "oe").replace("ä", "ae")
        yield {
            "id": number,
            "name": _customer_name(number),
            "email": f"einkauf{number}@{slug}.example",
            "street": f"{rng.choice(['Haupt', 'Bahnhof', 'Garten', 'Schul'])}straße {number}",
            "zip": zip_code,
            "city": city,
            "country": "DE",
            "phone": f"+49 89 {rng.randint(100000, 999999)}",
            "credit_limit": Decimal(rng.choice([5000, 10000, 25000])),
            "updated_at": now,
        }


def _orders(
    count: int, customers_count: int, articles_count: int, today: date, now: datetime
) -> Iterator[tuple[dict[str, Any], list[dict[str, Any]]]]:
    """Each order with its lines."""
    rng = _rng("orders")
    for number in range(1, count + 1):
        order_id = 10_000 + number
        order = {
            "id": order_id,
            "customer_id": 1 + (number * 7) % customers_count,
            "ordered_on": today - timedelta(days=rng.randint(0, 30)),
            "state": STATES[number % len(STATES)],
            "updated_at": now,
        }
        lines = [
            {
                "order_id": order_id,
                "line_no": line,
                "sku": f"A{rng.randint(1, articles_count):07d}",
                "qty": rng.randint(1, 20),
                "price": _money(rng.randint(50, 9_999)),
            }
            for line in range(1, rng.randint(1, 4) + 1)
        ]
        yield order, lines


def _chunks(rows: Iterable[Any], size: int = CHUNK) -> Iterator[list[Any]]:
    chunk: list[Any] = []
    for row in rows:
        chunk.append(row)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _safe_url(url: str) -> str:
    return sa.make_url(url).render_as_string(hide_password=True)


def _sqlite_file(url: str) -> Path | None:
    """The file of a SQLite URL; None for other databases and in-memory SQLite."""
    parsed = sa.make_url(url)
    if parsed.get_backend_name() != "sqlite" or parsed.database in (None, "", ":memory:"):
        return None
    return Path(parsed.database)


def _demo_tables_in(url: str) -> list[str]:
    """The demo tables that exist in the database at ``url`` (without creating a file)."""
    path = _sqlite_file(url)
    if path is not None and not path.exists():
        return []
    engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
    try:
        with engine.connect() as conn:
            names = set(sa.inspect(conn).get_table_names())
    finally:
        engine.dispose()
    return [name for name in DEMO_TABLES if name in names]


def existing_demo(data_dir: Path, erp_url: str | None = None, service: Any = None) -> list[str]:
    """What ``create_demo`` would drop or repoint, one sentence each; empty if nothing.

    Looks without changing anything: the default ``DATA/demo/erp.db``, the demo tables in
    ``erp_url``, and (with ``service``) ``erp``/``mirror`` connections that point at
    other databases.
    """
    folder = demo_dir(data_dir).resolve()
    found = []
    if erp_url is None:
        db = folder / "erp.db"
        if db.exists():
            found.append(f"{db} exists")
    else:
        tables = _demo_tables_in(erp_url)
        if tables:
            found.append(f"{_safe_url(erp_url)} has the demo tables {', '.join(tables)}")
    if service is not None:
        target = erp_url or f"sqlite:///{folder / 'erp.db'}"
        names = set(service.list_connections())
        for name, url in (("erp", target), ("mirror", f"sqlite:///{folder / 'mirror.db'}")):
            current = service.store.get_connection(name).get("url") if name in names else None
            if current is not None and current != url:
                found.append(f"connection {name} points at {_safe_url(str(current))}")
    return found


def _remove_sqlite(path: Path) -> None:
    """Delete a SQLite file of our own with its journal files (faster than DROP TABLE)."""
    for suffix in ("", "-wal", "-shm", "-journal"):
        path.with_name(path.name + suffix).unlink(missing_ok=True)


def _insert(conn: sa.Connection, table: sa.Table, rows: Iterable[dict[str, Any]]) -> int:
    """Insert in chunks, one transaction each: memory and journal stay bounded."""
    total = 0
    for chunk in _chunks(rows):
        conn.execute(table.insert(), chunk)
        conn.commit()
        total += len(chunk)
    return total


def _fill_erp(conn: sa.Connection, counts: tuple[int, int, int], today: date, now: datetime) -> int:
    """Drop and create the demo tables, then fill them; the number of order lines."""
    articles_count, customers_count, orders_count = counts
    metadata.drop_all(conn)
    metadata.create_all(conn)
    conn.commit()
    _insert(conn, accounts, ({"number": n, "name": t} for n, t in ACCOUNTS))
    _insert(conn, articles, _articles(articles_count, now))
    _insert(conn, customers, _customers(customers_count, now))
    line_count = 0
    for chunk in _chunks(_orders(orders_count, customers_count, articles_count, today, now)):
        lines = [line for _, order_lines_ in chunk for line in order_lines_]
        conn.execute(orders.insert(), [order for order, _ in chunk])
        if lines:
            conn.execute(order_lines.insert(), lines)
        conn.commit()
        line_count += len(lines)
    return line_count


def _build_erp(
    url: str, counts: tuple[int, int, int], today: date, now: datetime, own_file: bool
) -> int:
    engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
    try:
        with engine.connect() as conn:
            if engine.dialect.name != "sqlite":
                return _fill_erp(conn, counts, today, now)
            previous = "wal" if own_file else conn.exec_driver_sql("PRAGMA journal_mode").scalar()
            # bulk load: no fsync per chunk; a crash mid-way leaves a demo to rebuild anyway
            conn.exec_driver_sql("PRAGMA journal_mode=WAL")
            conn.exec_driver_sql("PRAGMA synchronous=OFF")
            try:
                return _fill_erp(conn, counts, today, now)
            finally:
                conn.rollback()
                conn.exec_driver_sql("PRAGMA synchronous=FULL")
                conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
                conn.exec_driver_sql(f"PRAGMA journal_mode={previous}")
    finally:
        engine.dispose()


def create_demo(
    data_dir: Path,
    *,
    articles_count: int = 1000,
    customers_count: int = 40,
    orders_count: int = 120,
    erp_url: str | None = None,
    service: Any = None,
    today: date | None = None,
) -> DemoSummary:
    """Build (again) the demo ERP, its export files and the demo connections.

    Drops the demo tables (or, for the default ``DATA/demo/erp.db``, the file) first: ask
    ``existing_demo`` beforehand to refuse instead.

    Raises:
        ValueError: a count out of range.
    """
    if articles_count < 1:
        raise ValueError("--articles must be at least 1")
    if customers_count < 1:
        raise ValueError("--customers must be at least 1")
    if orders_count < 0:
        raise ValueError("--orders must not be negative")
    folder = demo_dir(data_dir).resolve()
    folder.mkdir(parents=True, exist_ok=True)
    own_file = erp_url is None
    erp_url = erp_url or f"sqlite:///{folder / 'erp.db'}"
    mirror_url = f"sqlite:///{folder / 'mirror.db'}"
    now = datetime.now(UTC).replace(tzinfo=None, microsecond=0)
    today = today or now.date()
    if own_file:
        _remove_sqlite(folder / "erp.db")
    counts = (articles_count, customers_count, orders_count)
    line_count = _build_erp(erp_url, counts, today, now, own_file)
    _remove_sqlite(folder / "mirror.db")
    mirror = sa.create_engine(mirror_url, poolclass=sa.pool.NullPool)
    try:
        mirror_meta = sa.MetaData()
        customers.to_metadata(mirror_meta)
        mirror_meta.create_all(mirror)
    finally:
        mirror.dispose()
    exports = _write_exports(folder / "erp-export", customers_count, articles_count, today)
    invoice = _write_invoice(folder / "invoices", today)
    made, kept = _connections(service, erp_url, mirror_url) if service is not None else ([], [])
    return DemoSummary(
        erp_url,
        mirror_url,
        articles_count,
        customers_count,
        orders_count,
        exports,
        invoice,
        made,
        kept,
        line_count,
    )


def _sales_lines(
    customers_count: int, articles_count: int, day: date, count: int
) -> list[dict[str, Any]]:
    rng = _rng("export")
    lines = []
    receipt = int(day.strftime("%y%m%d")) * 100
    for number in range(count):
        article = rng.randint(1, min(articles_count, 50))
        lines.append(
            {
                "Belegnr": receipt + number // 2,
                "Pos": 1 + number % 2,
                "Belegdatum": day,
                "Kunde": _customer_name(1 + number % customers_count),
                "Artikelnummer": f"A{article:07d}",
                "Bezeichnung": _article_name(article)[1],
                "Menge": rng.randint(1, 40),
                "Einzelpreis": _money(rng.randint(8, 4999)),
                "Status": rng.choice(["geliefert", "geliefert", "offen", "storniert"]),
            }
        )
    return lines


def _write_exports(
    folder: Path, customers_count: int, articles_count: int, day: date
) -> list[Path]:
    """One day's sales as ';' CSV (cp1252) and as fixed-width ASCII, plus two bad lines."""
    folder.mkdir(parents=True, exist_ok=True)
    lines = _sales_lines(customers_count, articles_count, day, 24)
    csv_path = folder / "umsatz.csv"
    rows = [";".join(EXPORT_COLUMNS)]
    for line in lines:
        rows.append(
            ";".join(
                [
                    str(line["Belegnr"]),
                    str(line["Pos"]),
                    line["Belegdatum"].strftime("%d.%m.%Y"),
                    line["Kunde"],
                    line["Artikelnummer"],
                    line["Bezeichnung"],
                    str(line["Menge"]),
                    f"{line['Einzelpreis']:.2f}".replace(".", ","),
                    line["Status"],
                ]
            )
        )
    rows.append("99999;1;31.02.2026;Kaputt GmbH;A0000001;Datum falsch;1;1,00;offen")
    rows.append("99998;1;01.01.2026;Kaputt GmbH;A0000001;Menge fehlt;;1,00;offen")
    csv_path.write_bytes(("\r\n".join(rows) + "\r\n").encode("cp1252"))
    fixed_path = folder / "umsatz.txt"
    out = []
    for line in lines:
        values = {
            "Belegnr": str(line["Belegnr"]),
            "Pos": str(line["Pos"]),
            "Belegdatum": line["Belegdatum"].strftime("%d%m%Y"),
            "Kunde": _ascii(line["Kunde"]),
            "Artikelnummer": line["Artikelnummer"],
            "Bezeichnung": _ascii(line["Bezeichnung"]),
            "Menge": str(line["Menge"]),
            "EinzelpreisCent": str(int(line["Einzelpreis"] * 100)),
            "Status": _ascii(line["Status"]),
        }
        out.append("".join(values[name][:width].ljust(width) for name, width in FIXED_WIDTHS))
    fixed_path.write_bytes(("\r\n".join(out) + "\r\n").encode("ascii"))
    return [csv_path, fixed_path]


def _ascii(text: str) -> str:
    for umlaut, plain in (("ä", "ae"), ("ö", "oe"), ("ü", "ue"), ("Ä", "Ae"), ("Ö", "Oe"),
                          ("Ü", "Ue"), ("ß", "ss")):  # fmt: skip
        text = text.replace(umlaut, plain)
    return text.encode("ascii", "replace").decode("ascii")


def _write_invoice(folder: Path, day: date) -> Path:
    """An incoming invoice as a supplier's accounting export: one line per position."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"rechnung-RE-{day:%Y}-0815.csv"
    rows = [
        "Rechnungsnr;Datum;Lieferant;Konto;Text;Netto;Steuersatz",
        f"RE-{day:%Y}-0815;{day:%d.%m.%Y};Bürobedarf Schulz KG;4930;Kopierpapier A4;240,00;19",
        f"RE-{day:%Y}-0815;{day:%d.%m.%Y};Bürobedarf Schulz KG;4930;Toner schwarz;89,90;19",
        f"RE-{day:%Y}-0815;{day:%d.%m.%Y};Bürobedarf Schulz KG;3400;Schrauben M8 (Lager);55,10;19",
    ]
    path.write_bytes(("\r\n".join(rows) + "\r\n").encode("cp1252"))
    return path


def _connections(service: Any, erp_url: str, mirror_url: str) -> tuple[list[str], list[str]]:
    """The connections the samples name: (written, kept).

    ``erp`` and ``mirror`` always point at the databases just built (a flow naming them
    must see the demo); ``shop`` and ``mail`` are made only when missing, since a user may
    have pointed them at a real shop or mail server.
    """
    wanted = {
        "erp": {"type": "sql", "url": erp_url},
        "mirror": {"type": "sql", "url": mirror_url},
        "shop": {
            "type": "shop",
            "preset": DEMO_SHOP["preset"],
            "base_url": f"http://{DEMO_SHOP['host']}:{DEMO_SHOP['port']}",
            "auth": "basic",
            "user": DEMO_SHOP["user"],
            "password": DEMO_SHOP["password"],
        },
        "shop-api": {
            "type": "shop",
            "preset": "generic",
            "base_url": f"http://{DEMO_SHOP['host']}:{DEMO_SHOP['port']}",
            "auth": "bearer",
            "token": DEMO_SHOP["api_token"],
        },
        "mail": {
            "type": "smtp",
            "host": "127.0.0.1",
            "port": 8025,
            "security": "none",
            "from": "Flowmill Demo <flowmill@demo.example>",
        },
        "mongo": {"type": "mongo", "url": DEMO_MONGO_URL},
    }
    existing = set(service.list_connections())
    made, kept = [], []
    for name, settings in wanted.items():
        if name in existing and name not in ("erp", "mirror"):
            kept.append(name)
        else:
            service.set_connection(name, settings)
            made.append(name)
    return made, kept
