"""Sample ``sales-import``: the ERP's sales export (';' CSV or fixed-width ASCII) → sales.

Run by hand with its defaults right after ``flowmill demo init`` (the CSV), and dropped
over real FTPS into a drop user's ``in/`` folder (the fixed-width file), through the real
drop dispatcher; the rows are compared with the export files parsed here independently.
"""

from __future__ import annotations

import csv
import ftplib
import io
import ssl
import time
from collections.abc import Iterator
from datetime import date, datetime
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from designer.demo.data import FIXED_WIDTHS, sales
from engine.run.events import CustomEvent
from servers.dispatch import DropDispatcher
from servers.drops import DropQueue, drop_home
from servers.ftps import FtpsServer
from tests.conftest import DEADLINE

from .conftest import Demo

USER, PASSWORD = "erp", "erp drop password 1"
CENT = Decimal("0.01")
STATUSES = {"geliefert", "offen", "storniert"}


def _round(value: Decimal) -> Decimal:
    return value.quantize(CENT, rounding=ROUND_HALF_UP)


def _line(receipt: str, pos: str, day: date, customer: str, sku: str, article: str,
          qty: str, price: Decimal, status: str) -> dict[str, Any]:  # fmt: skip
    """One sales row as the sample should store it (store: the param's default)."""
    net = _round(int(qty) * price)
    return {
        "receipt_no": int(receipt), "line_no": int(pos), "sale_date": day, "store": "Zentrale",
        "customer": customer.strip(), "sku": sku.strip().upper(), "article": article.strip(),
        "qty": int(qty), "unit_price": price, "net": net,
        "gross": _round(int(qty) * price * Decimal("1.19")), "status": status.strip().lower(),
        "source": "export",
    }  # fmt: skip


def csv_export(path: Path) -> tuple[list[dict[str, Any]], list[list[str]]]:
    """(good rows, bad lines) of the ';' cp1252 export, read with the csv module."""
    good, bad = [], []
    with path.open(encoding="cp1252", newline="") as fh:
        for row in list(csv.reader(fh, delimiter=";"))[1:]:
            receipt, pos, day, customer, sku, article, qty, price, status = row
            try:
                when = datetime.strptime(day, "%d.%m.%Y").date()
            except ValueError:
                bad.append(row)
                continue
            if not qty or status not in STATUSES:
                bad.append(row)
                continue
            price_value = Decimal(price.replace(".", "").replace(",", "."))
            good.append(_line(receipt, pos, when, customer, sku, article, qty, price_value, status))
    return good, bad


def fixed_export(path: Path) -> list[dict[str, Any]]:
    """The rows of the fixed-width export, cut by FIXED_WIDTHS."""
    rows = []
    for text in path.read_text(encoding="ascii").splitlines():
        values, pos = {}, 0
        for name, width in FIXED_WIDTHS:
            values[name] = text[pos : pos + width].strip()
            pos += width
        day = datetime.strptime(values["Belegdatum"], "%d%m%Y").date()
        price = Decimal(values["EinzelpreisCent"]) / 100
        rows.append(
            _line(values["Belegnr"], values["Pos"], day, values["Kunde"], values["Artikelnummer"],
                  values["Bezeichnung"], values["Menge"], price, values["Status"])
        )  # fmt: skip
    return rows


def table_rows(demo: Demo) -> list[dict[str, Any]]:
    engine = sa.create_engine(demo.summary.erp_url)
    try:
        with engine.connect() as conn:
            result = conn.execute(sa.select(sales).order_by(sales.c.receipt_no, sales.c.line_no))
            return [dict(row._mapping) for row in result]
    finally:
        engine.dispose()


def by_key(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return sorted(rows, key=lambda r: (r["receipt_no"], r["line_no"]))


def rejected_files(demo: Demo) -> list[Path]:
    folder = demo.data_dir / "demo" / "rejected"
    return sorted(folder.glob("sales-import-*.csv"), key=lambda p: p.stat().st_mtime_ns)


def rejected_lines(path: Path) -> list[dict[str, str]]:
    """The rejected lines by file and line number: the reader's rejects and the check's
    meet in one writer, in whichever order their branches deliver them."""
    with path.open(encoding="utf-8-sig", newline="") as fh:
        lines = list(csv.DictReader(fh, delimiter=";"))
    return sorted(lines, key=lambda r: (r["file"], int(r["line"] or 0)))


@pytest.fixture
def broadcasts(demo: Demo) -> Iterator[list[str]]:
    """The messages notify.broadcast published on the service's bus."""
    messages: list[str] = []

    def seen(event: CustomEvent) -> None:
        if event.name == "broadcast":
            messages.append(event.data["message"])

    unsubscribe = demo.app.bus.subscribe(CustomEvent, seen)
    yield messages
    unsubscribe()


def test_run_now_with_the_defaults_imports_the_csv_export_and_rejects_two_bad_lines(
    demo: Demo, broadcasts: list[str]
) -> None:
    export = demo.data_dir / "demo" / "erp-export" / "umsatz.csv"
    expected, bad = csv_export(export)
    assert len(expected) == 24 and [row[0] for row in bad] == ["99999", "99998"]

    job = demo.run("sales-import")

    assert job.state == "succeeded", demo.log(job)
    assert table_rows(demo) == by_key(expected)
    assert broadcasts == ["sales updated (24 lines: 24 new, 0 changed)"]
    (rejected,) = rejected_files(demo)
    lines = rejected_lines(rejected)
    assert [(r["file"], r["line"]) for r in lines] == [(str(export), "26"), (str(export), "27")]
    assert "'31.02.2026' is not a date" in lines[0]["reason"]
    assert lines[0]["data"] == ";".join(bad[0])  # the line as it stood in the file
    assert lines[1]["reason"] == "missing qty (Menge)"
    assert lines[1]["data"].startswith("99998;1;2026-01-01;A0000001;;")
    assert not {99999, 99998} & {r["receipt_no"] for r in table_rows(demo)}

    # the same file again: the upsert changes nothing, every line is matched by its key
    again = demo.run("sales-import")
    assert again.state == "succeeded", demo.log(again)
    assert table_rows(demo) == by_key(expected)
    assert broadcasts[-1] == "sales updated (24 lines: 0 new, 24 changed)"
    assert len(rejected_files(demo)) == 2  # one file per run, the same two lines
    assert rejected_lines(rejected_files(demo)[-1]) == lines


def _ftps_upload(server: FtpsServer, data_dir: Path, name: str, payload: bytes) -> None:
    context = ssl.create_default_context(cafile=str(data_dir / "tls" / "cert.pem"))
    ftp = ftplib.FTP_TLS(context=context, timeout=10)
    ftp.connect(*server.address)
    ftp.login(USER, PASSWORD)
    ftp.prot_p()
    if "in" not in ftp.nlst():
        ftp.mkd("in")
    ftp.storbinary(f"STOR in/{name}", io.BytesIO(payload))
    ftp.quit()


def _wait(condition: Any, seconds: float = DEADLINE) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_fixed_width_export_uploaded_over_ftps_updates_the_same_lines(
    demo: Demo, broadcasts: list[str]
) -> None:
    export = demo.data_dir / "demo" / "erp-export" / "umsatz.txt"
    expected = fixed_export(export)
    from_csv, _ = csv_export(demo.data_dir / "demo" / "erp-export" / "umsatz.csv")
    assert demo.run("sales-import").state == "succeeded"  # the CSV of the same day first
    assert table_rows(demo) == by_key(from_csv)

    demo.app.users.add(USER, PASSWORD, "operator", file_drop=True)

    def authenticate(user: str, password: str) -> bool:
        try:
            demo.app.users.authenticate_drop(user, password)
        except Exception:
            return False
        return True

    demo.load("sales-import")
    drops = DropQueue()
    server = FtpsServer(
        data_dir=demo.data_dir, authenticate=authenticate, drops=drops, port=0,
        login_failure_delay=0.1,
    )  # fmt: skip
    dispatcher = DropDispatcher(demo.app, drops, print)
    server.start()
    dispatcher.start()
    try:
        _ftps_upload(server, demo.data_dir, "umsatz.txt", export.read_bytes())
        _wait(lambda: dispatcher.started == 1)
        assert demo.run_queued() == ["succeeded"]
        inbox = drop_home(demo.data_dir, USER) / "in"
        _wait(lambda: (inbox / "processed" / "umsatz.txt").exists())  # after: move
    finally:
        dispatcher.stop()
        server.stop()

    (job,) = [j for j in demo.app.jobs.list() if j.params.get("_trigger")]
    assert job.params["_trigger"]["source"] == "ftps"
    assert job.params["_trigger"]["name"] == "in/umsatz.txt"
    rows = table_rows(demo)
    assert rows == by_key(expected)  # the same 24 keys, now with the ASCII spellings
    assert len(rows) == len(from_csv)
    keep = ("receipt_no", "line_no", "sale_date", "sku", "qty", "unit_price", "net", "gross")
    assert [{k: r[k] for k in keep} for r in rows] == [
        {k: r[k] for k in keep} for r in by_key(from_csv)
    ]
    assert any(r["customer"] == "Mueller GmbH" for r in rows)  # cp1252 'Müller' vs ASCII
    assert broadcasts[-1] == "sales updated (24 lines: 0 new, 24 changed)"
    assert rejected_lines(rejected_files(demo)[-1]) == []  # a clean file: header only


def test_unknown_status_and_unknown_file_types_are_rejected_with_their_reason(
    demo: Demo, tmp_path: Path
) -> None:
    export = tmp_path / "umsatz-kaputt.csv"
    header = "Belegnr;Pos;Belegdatum;Kunde;Artikelnummer;Bezeichnung;Menge;Einzelpreis;Status"
    export.write_bytes(
        "\r\n".join(
            [
                header,
                "500;1;02.01.2026;Bäckerei Süß;a0000002;Dübel 6mm;3;1.234,50;Geliefert",
                "500;2;02.01.2026;Bäckerei Süß;A0000003;Dübel 8mm;2;0,99;verloren",
                "501;1;02.01.2026;Bäckerei Süß;A0000004;Hammer;1;;offen",
            ]
        ).encode("cp1252")
    )
    job = demo.run("sales-import", {"path": str(export)})
    assert job.state == "succeeded", demo.log(job)
    (row,) = table_rows(demo)
    assert (row["receipt_no"], row["sku"], row["customer"]) == (500, "A0000002", "Bäckerei Süß")
    assert (row["unit_price"], row["net"], row["gross"]) == (
        Decimal("1234.50"), Decimal("3703.50"), Decimal("4407.17")
    )  # fmt: skip
    assert row["status"] == "geliefert"
    reasons = [(r["line"], r["reason"]) for r in rejected_lines(rejected_files(demo)[-1])]
    assert reasons == [
        ("3", "unknown status 'verloren' (allowed: geliefert, offen, storniert)"),
        ("4", "missing unit price"),
    ]

    other = tmp_path / "umsatz.xls"
    other.write_bytes(b"\xd0\xcf\x11\xe0 not a text export")
    job = demo.run("sales-import", {"path": str(other)})
    assert job.state == "succeeded", demo.log(job)
    (line,) = rejected_lines(rejected_files(demo)[-1])
    assert line["file"] == "umsatz.xls"
    assert line["reason"] == "not a sales export: expected a .csv or .txt file"
    assert len(table_rows(demo)) == 1


def test_an_import_the_database_refuses_writes_no_line_and_tells_nobody(
    demo: Demo, broadcasts: list[str]
) -> None:
    engine = sa.create_engine(demo.summary.erp_url)
    with engine.begin() as conn:  # the database refuses one line in the middle of the file
        conn.execute(
            sa.text(
                "CREATE TRIGGER refuse BEFORE INSERT ON sales WHEN NEW.line_no = 2 "
                "AND NEW.receipt_no % 100 = 5 BEGIN SELECT RAISE(ABORT, 'refused by test'); END"
            )
        )
    engine.dispose()
    job = demo.run("sales-import")
    assert job.state == "failed"
    assert job.error_node == "write-sales" and "refused by test" in (job.error or "")
    assert table_rows(demo) == []  # one transaction: the lines before it are gone too
    assert broadcasts == []
