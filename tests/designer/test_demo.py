"""``flowmill demo init`` and ``flowmill demo shop`` as a user runs them: real processes,
real files, real databases (SQLite, PostgreSQL, MariaDB)."""

from __future__ import annotations

import hashlib
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import requests
import sqlalchemy as sa

from designer.demo.data import DEMO_SHOP, DEMO_TABLES, EXPORT_COLUMNS, FIXED_WIDTHS
from tests.conftest import DEADLINE

ROOT = Path(__file__).parents[2]
FLOWMILL = Path(sys.executable).parent / "flowmill"
WOO_PRODUCTS = "/wp-json/wc/v3/products"
DEMO_AUTH = (DEMO_SHOP["user"], DEMO_SHOP["password"])


def flowmill(*args: str, data_dir: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "FLOWMILL_DATA_DIR": str(data_dir)}
    return subprocess.run(
        [str(FLOWMILL), *args], capture_output=True, text=True, env=env, cwd=ROOT, timeout=300
    )


def counts(url: str) -> dict[str, int]:
    engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
    try:
        with engine.connect() as conn:
            return {
                t: conn.execute(sa.text(f"SELECT count(*) FROM {t}")).scalar_one()
                for t in DEMO_TABLES
            }
    finally:
        engine.dispose()


def demo_files(data_dir: Path) -> dict[str, str]:
    """Every file under DATA/demo and a digest of its bytes."""
    return {
        str(p.relative_to(data_dir)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted((data_dir / "demo").rglob("*"))
        if p.is_file()
    }


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_demo_init_builds_erp_exports_invoice_and_connections(data_dir: Path):
    result = flowmill(
        "demo", "init", "--articles", "1500", "--customers", "25", "--orders", "60",
        data_dir=data_dir,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    demo = data_dir / "demo"
    erp = f"sqlite:///{(demo / 'erp.db').resolve()}"
    found = counts(erp)
    assert (found["articles"], found["customers"], found["orders"]) == (1500, 25, 60)
    assert found["order_lines"] >= 60 and found["accounts"] > 0
    assert "1,500 articles, 25 customers, 60 orders" in result.stdout
    for name in ("erp", "mirror", "shop", "mail"):
        assert name in result.stdout.split("connections written:")[1]

    engine = sa.create_engine(erp)
    with engine.connect() as conn:
        states = {r[0] for r in conn.execute(sa.text("SELECT DISTINCT state FROM orders"))}
        bad_lines = conn.execute(
            sa.text(
                "SELECT count(*) FROM order_lines l LEFT JOIN articles a ON a.sku = l.sku "
                "WHERE a.sku IS NULL"
            )
        ).scalar_one()
        price, cost, stock = conn.execute(
            sa.text("SELECT price, cost, stock FROM articles WHERE sku = 'A0000001'")
        ).one()
    engine.dispose()
    assert states == {"open", "shipped", "invoiced", "cancelled"}
    assert bad_lines == 0  # every order line names a real article
    assert float(price) > float(cost) > 0 and stock >= 0

    # the sales export: ';'-separated cp1252 with German numbers
    raw = (demo / "erp-export" / "umsatz.csv").read_bytes()
    text = raw.decode("cp1252")
    lines = text.split("\r\n")[:-1]
    assert lines[0].split(";") == list(EXPORT_COLUMNS)
    assert "ü".encode("cp1252") in raw or "ö".encode("cp1252") in raw  # umlauts as cp1252
    with pytest.raises(UnicodeDecodeError):
        raw.decode("utf-8")
    good = [line.split(";") for line in lines[1:] if not line.startswith("9999")]
    assert len(good) >= 20 and all(len(cells) == len(EXPORT_COLUMNS) for cells in good)
    assert all(re.fullmatch(r"\d+,\d\d", cells[7]) for cells in good)
    assert all(re.fullmatch(r"\d\d\.\d\d\.\d{4}", cells[2]) for cells in good)

    # the same export as fixed-width ASCII: every line exactly the declared widths
    fixed = (demo / "erp-export" / "umsatz.txt").read_bytes()
    assert fixed.isascii()
    rows = fixed.decode("ascii").split("\r\n")[:-1]
    assert len(rows) == len(good)
    width = sum(w for _, w in FIXED_WIDTHS)
    assert all(len(row) == width for row in rows)
    for row, cells in zip(rows, good, strict=True):
        fields, at = {}, 0
        for name, w in FIXED_WIDTHS:
            fields[name], at = row[at : at + w].strip(), at + w
        assert fields["Belegnr"] == cells[0] and fields["Artikelnummer"] == cells[4]
        assert int(fields["EinzelpreisCent"]) == int(cells[7].replace(",", ""))
        assert fields["Belegdatum"] == cells[2].replace(".", "")

    invoices = list((demo / "invoices").glob("rechnung-RE-*-0815.csv"))
    assert len(invoices) == 1
    assert "Bürobedarf" in invoices[0].read_bytes().decode("cp1252")

    listing = flowmill("connection", "list", data_dir=data_dir)
    assert [line.split()[0] for line in listing.stdout.splitlines()] == sorted(
        ["erp", "mirror", "shop", "shop-api", "mail", "mongo"]
    )
    for name in ("erp", "mirror"):
        test = flowmill("connection", "test", name, data_dir=data_dir)
        assert test.returncode == 0, test.stderr
        assert test.stdout.startswith(f"ok: connection {name} (sql)")


def test_second_init_is_refused_and_changes_nothing_until_forced(data_dir: Path):
    assert flowmill("demo", "init", "--articles", "300", data_dir=data_dir).returncode == 0
    before = demo_files(data_dir)
    erp = f"sqlite:///{(data_dir / 'demo' / 'erp.db').resolve()}"

    again = flowmill("demo", "init", "--articles", "50", data_dir=data_dir)
    assert again.returncode == 1
    assert "exists already" in again.stderr and "--force" in again.stderr
    assert "drops the demo tables" in again.stderr
    assert demo_files(data_dir) == before
    assert counts(erp)["articles"] == 300

    forced = flowmill("demo", "init", "--articles", "50", "--force", data_dir=data_dir)
    assert forced.returncode == 0, forced.stderr
    assert counts(erp)["articles"] == 50
    assert "connections kept as they were: shop, shop-api, mail, mongo" in forced.stdout


def test_the_demo_data_is_the_same_on_every_run(tmp_path: Path):
    rows = []
    for name in ("one", "two"):
        data_dir = tmp_path / name
        assert flowmill("demo", "init", "--articles", "200", data_dir=data_dir).returncode == 0
        engine = sa.create_engine(f"sqlite:///{data_dir / 'demo' / 'erp.db'}")
        with engine.connect() as conn:
            rows.append(
                (
                    conn.execute(
                        sa.text("SELECT sku, name, cost, price, stock, shop_id FROM articles")
                    ).all(),
                    conn.execute(sa.text("SELECT * FROM order_lines")).all(),
                    (data_dir / "demo" / "erp-export" / "umsatz.csv").read_bytes(),
                )
            )
        engine.dispose()
    assert rows[0] == rows[1] and len(rows[0][0]) == 200


def test_init_into_a_database_url_points_the_erp_connection_at_it(data_dir: Path, db_url: str):
    result = flowmill(
        "demo", "init", "--url", db_url, "--articles", "700", "--customers", "12",
        "--orders", "30", data_dir=data_dir,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    found = counts(db_url)
    assert (found["articles"], found["customers"], found["orders"]) == (700, 12, 30)
    assert not (data_dir / "demo" / "erp.db").exists()
    password = sa.make_url(db_url).password
    assert not password or password not in result.stdout
    test = flowmill("connection", "test", "erp", data_dir=data_dir)
    assert test.returncode == 0, test.stderr
    backend = sa.make_url(db_url).get_backend_name()
    assert "(sql): " in test.stdout and backend in test.stdout

    refused = flowmill("demo", "init", "--url", db_url, "--articles", "5", data_dir=data_dir)
    assert refused.returncode == 1 and "--force" in refused.stderr
    assert counts(db_url)["articles"] == 700
    forced = flowmill(
        "demo", "init", "--url", db_url, "--articles", "5", "--force", data_dir=data_dir
    )
    assert forced.returncode == 0, forced.stderr
    assert counts(db_url)["articles"] == 5


def test_init_into_a_url_is_refused_while_erp_points_elsewhere(data_dir: Path, tmp_path: Path):
    assert flowmill("demo", "init", "--articles", "10", data_dir=data_dir).returncode == 0
    other = f"sqlite:///{tmp_path / 'other.db'}"
    refused = flowmill("demo", "init", "--url", other, data_dir=data_dir)
    assert refused.returncode == 1
    assert "connection erp points at" in refused.stderr
    assert not (tmp_path / "other.db").exists()


def start_shop(data_dir: Path, *extra: str) -> tuple[subprocess.Popen[str], str]:
    port = free_port()
    env = {**os.environ, "FLOWMILL_DATA_DIR": str(data_dir)}
    proc = subprocess.Popen(
        [str(FLOWMILL), "demo", "shop", "--port", str(port), *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=ROOT,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + DEADLINE
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"demo shop ended early: {proc.communicate()}")
        try:
            requests.get(url, timeout=1)
            return proc, url
        except requests.ConnectionError:
            time.sleep(0.1)
    proc.kill()
    pytest.fail("demo shop did not answer within 30 s")


@pytest.mark.parametrize("how", [signal.SIGINT, signal.SIGTERM])
def test_demo_shop_serves_the_erp_articles_to_the_demo_credentials(data_dir: Path, how: int):
    assert flowmill("demo", "init", "--articles", "120", data_dir=data_dir).returncode == 0
    engine = sa.create_engine(f"sqlite:///{data_dir / 'demo' / 'erp.db'}")
    with engine.connect() as conn:
        article = conn.execute(
            sa.text("SELECT sku, name, price, stock, shop_id FROM articles WHERE sku = 'A0000042'")
        ).one()
    engine.dispose()
    proc, url = start_shop(data_dir)
    try:
        answer = requests.get(
            f"{url}{WOO_PRODUCTS}", params={"sku": article.sku}, auth=DEMO_AUTH, timeout=5
        )
        assert answer.status_code == 200
        (product,) = answer.json()
        assert product["id"] == article.shop_id
        assert (product["sku"], product["name"]) == (article.sku, article.name)
        assert product["price"] == f"{float(article.price):.2f}"
        assert product["stock_quantity"] == article.stock

        wrong = requests.get(
            f"{url}{WOO_PRODUCTS}", auth=(DEMO_SHOP["user"], "cs_wrong"), timeout=5
        )
        assert wrong.status_code == 401
        assert requests.get(f"{url}{WOO_PRODUCTS}", timeout=5).status_code == 401

        # a new product is numbered after the ERP's ids
        created = requests.post(
            f"{url}{WOO_PRODUCTS}/batch",
            json={"create": [{"sku": "NEW-1", "name": "Neu", "regular_price": "1.00"}]},
            auth=DEMO_AUTH,
            timeout=5,
        )
        assert created.json()["create"][0]["id"] > 1000 + 120
    finally:
        proc.send_signal(how)
        out, err = proc.communicate(timeout=15)
    assert proc.returncode == 0, err
    assert "120 products" in out and "demo shop stopped" in out
    assert "Traceback" not in err


def test_demo_shop_caps_a_large_catalog_and_says_so(data_dir: Path):
    assert flowmill("demo", "init", "--articles", "300", data_dir=data_dir).returncode == 0
    proc, url = start_shop(data_dir, "--max-products", "100")
    try:
        loaded = requests.get(
            f"{url}{WOO_PRODUCTS}", params={"sku": "A0000100"}, auth=DEMO_AUTH, timeout=5
        ).json()
        left_out = requests.get(
            f"{url}{WOO_PRODUCTS}", params={"sku": "A0000101"}, auth=DEMO_AUTH, timeout=5
        ).json()
    finally:
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=15)
    assert [p["sku"] for p in loaded] == ["A0000100"] and left_out == []
    assert "loaded the first 100 of 300 ERP articles" in err and proc.returncode == 0


def peak_rss_mb(*args: str, data_dir: Path) -> float:
    """Run ``flowmill`` and sample its RSS every 20 ms; the peak in MB."""
    env = {**os.environ, "FLOWMILL_DATA_DIR": str(data_dir)}
    proc = psutil.Popen(
        [str(FLOWMILL), *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env
    )
    peak = 0
    while proc.poll() is None:
        try:
            peak = max(peak, proc.memory_info().rss)
        except psutil.NoSuchProcess:
            break
        time.sleep(0.02)
    _, err = proc.communicate()
    assert proc.returncode == 0, err
    return peak / 2**20


def test_init_with_100000_articles_keeps_memory_flat(tmp_path: Path):
    small = peak_rss_mb("demo", "init", "--articles", "1000", data_dir=tmp_path / "small")
    large = peak_rss_mb("demo", "init", "--articles", "100000", data_dir=tmp_path / "large")
    assert counts(f"sqlite:///{tmp_path / 'large' / 'demo' / 'erp.db'}")["articles"] == 100_000
    # rows are made lazily and written in chunks: 100x the articles, about the same peak
    assert large - small < 40, (small, large)
    assert large < 300, large


def test_if_missing_builds_once_and_then_leaves_the_demo_alone(data_dir: Path) -> None:
    first = flowmill("demo", "init", "--articles", "20", "--if-missing", data_dir=data_dir)
    assert first.returncode == 0 and "demo built in" in first.stdout
    erp = data_dir / "demo" / "erp.db"
    before = erp.stat().st_mtime_ns
    again = flowmill("demo", "init", "--articles", "20", "--if-missing", data_dir=data_dir)
    assert again.returncode == 0 and "demo data: already there" in again.stdout
    assert erp.stat().st_mtime_ns == before


def test_demo_mail_keeps_every_mail_in_the_outbox(data_dir: Path) -> None:
    import smtplib
    from email.message import EmailMessage

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {**os.environ, "FLOWMILL_DATA_DIR": str(data_dir)}
    process = subprocess.Popen(
        [str(FLOWMILL), "demo", "mail", "--port", str(port)],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + DEADLINE
        while True:
            try:
                smtp = smtplib.SMTP("127.0.0.1", port, timeout=5)
                break
            except OSError:
                assert process.poll() is None and time.monotonic() < deadline
                time.sleep(0.1)
        mail = EmailMessage()
        mail["From"], mail["To"] = "flowmill@demo.example", "Müller GmbH <einkauf@mueller.example>"
        mail["Subject"] = "Offene Aufträge"
        mail.set_content("Guten Morgen")
        with smtp:
            smtp.send_message(mail)
        outbox = data_dir / "demo" / "outbox"
        (kept,) = list(outbox.glob("*.eml"))
        assert b"Guten Morgen" in kept.read_bytes()
        assert not list(outbox.glob(".*"))  # no half-written file left
    finally:
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=20)
    assert process.returncode == 0, output
    assert "einkauf@mueller.example: Offene Aufträge" in output


def test_the_demo_partner_serves_a_forecast_and_a_webcam_still() -> None:
    from designer.demo.shop import DemoShop, create_shop_app

    http = create_shop_app(DemoShop()).test_client()
    forecast = http.get("/demo/forecast.json")
    assert forecast.status_code == 200 and forecast.mimetype == "application/json"
    assert [day["summary"] for day in forecast.json["days"]] == ["sonnig", "wolkig", "Regen"]
    still = http.get("/demo/webcam.jpg")
    assert still.status_code == 200 and still.mimetype == "image/jpeg"
    assert still.data[:3] == b"\xff\xd8\xff" and still.data[-2:] == b"\xff\xd9"
