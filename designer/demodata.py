"""The demo world behind the samples: a small ERP database, an ERP export folder and the
connections the sample flows name.

``create_demo(data_dir, articles=N)`` (``flowmill demo init``) builds, under
``DATA/demo/``:

- ``erp.db`` (or any SQLAlchemy URL): ``articles``, ``customers``, ``orders`` with
  ``order_lines``, ``sales``, ``bookings`` (accounting) and ``accounts``;
- ``mirror.db``: an empty copy of ``customers`` for the db-sync sample;
- ``erp-export/``: the ERP's sales export as ``;``-separated cp1252 text
  (``umsatz.csv``) and as fixed-width ASCII (``umsatz.txt``), one day of sales each;
- ``invoices/``: an invoice CSV as the accounting partner would upload it;
- the connections ``erp``, ``mirror``, ``shop`` (the stand-in shop of ``flowmill demo
  shop``) and ``mail`` (an SMTP server on localhost:8025), unless they exist.

Everything is made from a fixed random seed, so two runs give the same data. Articles
are written in chunks, so ``--articles 1000000`` needs bounded memory.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import sqlalchemy as sa

__all__ = [
    "DEMO_SHOP",
    "EXPORT_COLUMNS",
    "FIXED_WIDTHS",
    "DemoSummary",
    "create_demo",
    "demo_dir",
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
}

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
    connections: list[str]


def _article(rng: random.Random, number: int, now: datetime) -> dict[str, Any]:
    group = GROUPS[number % len(GROUPS)]
    name = rng.choice(NOUNS[group]).format(n=1 + number % 9)
    cost = Decimal(rng.randint(5, 20_000)) / 100
    return {
        "sku": f"A{number:07d}",
        "name": name,
        "group_name": group,
        "cost": cost,
        "price": (cost * Decimal("1.45")).quantize(Decimal("0.01")),
        "stock": rng.randint(0, 500),
        "shop_id": 1000 + number,
        "updated_at": now,
    }


def _customers(rng: random.Random, count: int, now: datetime) -> list[dict[str, Any]]:
    out = []
    for number in range(1, count + 1):
        family = FIRST[(number - 1) % len(FIRST)]
        kind = KINDS[(number - 1) // len(FIRST) % len(KINDS)]
        zip_code, city = CITIES[number % len(CITIES)]
        slug = family.lower().replace("ü", "ue").replace("ö", "oe").replace("ä", "ae")
        out.append(
            {
                "id": number,
                "name": f"{family} {kind}",
                "email": f"einkauf{number}@{slug}.example",
                "street": f"{rng.choice(['Haupt', 'Bahnhof', 'Garten', 'Schul'])}straße {number}",
                "zip": zip_code,
                "city": city,
                "country": "DE",
                "phone": f"+49 89 {rng.randint(100000, 999999)}",
                "credit_limit": Decimal(rng.choice([5000, 10000, 25000])),
                "updated_at": now,
            }
        )
    return out


def _chunks(rows: Iterator[dict[str, Any]], size: int = CHUNK) -> Iterator[list[dict[str, Any]]]:
    chunk: list[dict[str, Any]] = []
    for row in rows:
        chunk.append(row)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _fresh(engine: sa.Engine) -> None:
    """Drop the demo tables (children first) and create them again."""
    metadata.drop_all(engine)
    metadata.create_all(engine)


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
    """Build (again) the demo ERP, its export files and the demo connections."""
    if articles_count < 1:
        raise ValueError("--articles must be at least 1")
    folder = demo_dir(data_dir)
    folder.mkdir(parents=True, exist_ok=True)
    erp_url = erp_url or f"sqlite:///{folder / 'erp.db'}"
    mirror_url = f"sqlite:///{folder / 'mirror.db'}"
    rng = random.Random(SEED)
    now = datetime.now(UTC).replace(tzinfo=None, microsecond=0)
    today = today or now.date()
    engine = sa.create_engine(erp_url)
    try:
        _fresh(engine)
        with engine.begin() as conn:
            conn.execute(accounts.insert(), [{"number": n, "name": t} for n, t in ACCOUNTS])
        for chunk in _chunks(_article(rng, n, now) for n in range(1, articles_count + 1)):
            with engine.begin() as conn:
                conn.execute(articles.insert(), chunk)
        people = _customers(rng, customers_count, now)
        with engine.begin() as conn:
            conn.execute(customers.insert(), people)
        order_rows, line_rows = _orders(rng, orders_count, people, articles_count, today, now)
        with engine.begin() as conn:
            conn.execute(orders.insert(), order_rows)
            conn.execute(order_lines.insert(), line_rows)
    finally:
        engine.dispose()
    mirror = sa.create_engine(mirror_url)
    try:
        mirror_meta = sa.MetaData()
        customers.to_metadata(mirror_meta)
        mirror_meta.drop_all(mirror)
        mirror_meta.create_all(mirror)
    finally:
        mirror.dispose()
    exports = _write_exports(folder / "erp-export", rng, people, articles_count, today)
    invoice = _write_invoice(folder / "invoices", today)
    made = _connections(service, erp_url, mirror_url) if service is not None else []
    return DemoSummary(
        erp_url, mirror_url, articles_count, customers_count, orders_count, exports, invoice, made
    )


def _orders(
    rng: random.Random,
    count: int,
    people: list[dict[str, Any]],
    articles_count: int,
    today: date,
    now: datetime,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    order_rows, line_rows = [], []
    for number in range(1, count + 1):
        order_id = 10_000 + number
        order_rows.append(
            {
                "id": order_id,
                "customer_id": people[(number * 7) % len(people)]["id"],
                "ordered_on": today - timedelta(days=rng.randint(0, 30)),
                "state": STATES[number % len(STATES)],
                "updated_at": now,
            }
        )
        for line in range(1, rng.randint(1, 4) + 1):
            sku = f"A{rng.randint(1, articles_count):07d}"
            line_rows.append(
                {
                    "order_id": order_id,
                    "line_no": line,
                    "sku": sku,
                    "qty": rng.randint(1, 20),
                    "price": Decimal(rng.randint(50, 9_999)) / 100,
                }
            )
    return order_rows, line_rows


def _sales_lines(
    rng: random.Random, people: list[dict[str, Any]], articles_count: int, day: date, count: int
) -> list[dict[str, Any]]:
    lines = []
    receipt = int(day.strftime("%y%m%d")) * 100
    for number in range(count):
        article = rng.randint(1, min(articles_count, 50))
        group = GROUPS[article % len(GROUPS)]
        lines.append(
            {
                "Belegnr": receipt + number // 2,
                "Pos": 1 + number % 2,
                "Belegdatum": day,
                "Kunde": people[number % len(people)]["name"],
                "Artikelnummer": f"A{article:07d}",
                "Bezeichnung": NOUNS[group][0].format(n=1 + article % 9),
                "Menge": rng.randint(1, 40),
                "Einzelpreis": Decimal(rng.randint(8, 4999)) / 100,
                "Status": rng.choice(["geliefert", "geliefert", "offen", "storniert"]),
            }
        )
    return lines


def _write_exports(
    folder: Path, rng: random.Random, people: list[dict[str, Any]], articles_count: int, day: date
) -> list[Path]:
    """One day's sales as ';' CSV (cp1252) and as fixed-width ASCII, plus two bad lines."""
    folder.mkdir(parents=True, exist_ok=True)
    lines = _sales_lines(rng, people, articles_count, day, 24)
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


def _connections(service: Any, erp_url: str, mirror_url: str) -> list[str]:
    """The connections the samples name; existing ones are left as they are."""
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
        "mail": {
            "type": "smtp",
            "host": "127.0.0.1",
            "port": 8025,
            "security": "none",
            "from": "Flowmill Demo <flowmill@demo.example>",
        },
    }
    existing = set(service.list_connections())
    made = []
    for name, settings in wanted.items():
        if name not in existing:
            service.set_connection(name, settings)
            made.append(name)
    return made
