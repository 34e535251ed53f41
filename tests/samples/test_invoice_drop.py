"""Sample ``invoice-drop``: an invoice uploaded over WebDAV is booked, journalled, moved.

The uploads go through the real file servers of ``flowmill serve`` (WebDAV server, drop
queue, dispatcher); the jobs run like a worker runs them; bookings are read back from the
demo ERP, the journal through pdftotext.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date
from decimal import Decimal
from pathlib import Path

import pytest
import requests
import sqlalchemy as sa

from designer.demo.data import accounts, bookings
from servers.fileservers import FileServers

ROOT = Path(__file__).resolve().parents[2]
SCREENSHOTS = ROOT / "build" / "screenshots"
USER, PASSWORD = "buchhaltung", "Belege hochladen 2026"
HEADER = "Rechnungsnr;Datum;Lieferant;Konto;Text;Netto;Steuersatz"

pytestmark = pytest.mark.usefixtures("poppler")


@dataclass
class Dropzone:
    servers: FileServers
    url: str
    home: Path

    def upload(self, name: str, data: bytes) -> None:
        """PUT the file into /invoices/ and wait until the dispatcher queued its job."""
        before = self.servers.dispatcher.started
        reply = requests.put(f"{self.url}/invoices/{name}", data=data, auth=(USER, PASSWORD))
        assert reply.status_code in (200, 201, 204), reply.text
        _until(lambda: self.servers.dispatcher.started > before, f"no job for {name}")

    def settled(self, name: str) -> str:
        """Where the dispatcher moved the file: 'processed' or 'failed'."""
        _until(lambda: not (self.home / name).exists(), f"{name} was not moved")
        found = [d for d in ("processed", "failed") if (self.home / d / name).exists()]
        assert len(found) == 1, found
        return found[0]


def _until(check, message: str, seconds: float = 15) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < deadline, message
        time.sleep(0.05)


@pytest.fixture
def dropzone(demo, monkeypatch) -> Iterator[Dropzone]:
    """The demo with the sample enabled and the WebDAV server of ``flowmill serve``."""
    monkeypatch.setenv("FLOWMILL_WEBDAV_PORT", "0")
    monkeypatch.delenv("FLOWMILL_TLS_CERT", raising=False)
    demo.app.users.add(USER, PASSWORD, "operator", file_drop=True)
    demo.load("invoice-drop")
    servers = FileServers(demo.app, lambda line: None, ftps=False)
    servers.start()
    try:
        host, port = servers.servers["webdav"].address
        url = f"http://{host}:{port}"
        made = requests.request("MKCOL", f"{url}/invoices", auth=(USER, PASSWORD))
        assert made.status_code == 201
        yield Dropzone(servers, url, demo.data_dir / "drop" / USER / "invoices")
    finally:
        servers.stop()


def _bookings(demo, document: str) -> list[tuple]:
    engine = sa.create_engine(demo.summary.erp_url)
    with engine.connect() as conn:
        rows = conn.execute(
            sa.select(
                bookings.c.line_no,
                bookings.c.booked_on,
                bookings.c.debit,
                bookings.c.credit,
                bookings.c.amount,
                bookings.c.text,
            )
            .where(bookings.c.document == document)
            .order_by(bookings.c.line_no)
        ).all()
        known = set(conn.execute(sa.select(accounts.c.number)).scalars())
    engine.dispose()
    for row in rows:
        assert {row.debit, row.credit} <= known, f"line {row.line_no}: account not in accounts"
    return [tuple(row) for row in rows]


def _invoice(number: str, day: date, *lines: str) -> bytes:
    rows = [HEADER, *(f"{number};{day:%d.%m.%Y};Bürobedarf Schulz KG;{line}" for line in lines)]
    return ("\r\n".join(rows) + "\r\n").encode("cp1252")


def _pdf_text(path: Path) -> str:
    return subprocess.run(
        ["pdftotext", "-layout", str(path), "-"], check=True, capture_output=True, text=True
    ).stdout


def test_uploaded_invoice_is_booked_in_one_go_journalled_and_moved_to_processed(
    demo, dropzone: Dropzone
):
    invoice = demo.summary.invoice_file
    document = invoice.stem.removeprefix("rechnung-")  # RE-<year>-0815
    day = date.today()

    dropzone.upload(invoice.name, invoice.read_bytes())
    assert demo.run_queued() == ["succeeded"]

    supplier = "Bürobedarf Schulz KG"
    assert _bookings(demo, document) == [
        (1, day, "4930", "1600", Decimal("240.00"), f"{supplier}: Kopierpapier A4"),
        (2, day, "4930", "1600", Decimal("89.90"), f"{supplier}: Toner schwarz"),
        (3, day, "3400", "1600", Decimal("55.10"), f"{supplier}: Schrauben M8 (Lager)"),
        (9019, day, "1576", "1600", Decimal("73.15"), f"Vorsteuer 19 %: {supplier}"),
    ]
    rows = _bookings(demo, document)
    debit, credit = {}, {}
    for _, _, d, c, amount, _ in rows:
        debit[d] = debit.get(d, 0) + amount
        credit[c] = credit.get(c, 0) + amount
    # expense and input tax on the debit side, the supplier's gross claim on the credit side
    assert debit == {"4930": Decimal("329.90"), "3400": Decimal("55.10"), "1576": Decimal("73.15")}
    assert credit == {"1600": Decimal("458.15")}
    assert sum(debit.values()) == sum(credit.values()) == Decimal("385.00") * Decimal("1.19")

    journal = demo.data_dir / "demo" / "journal" / f"buchungsjournal-{document}.pdf"
    text = _pdf_text(journal)
    assert f"Buchungsjournal {document}" in text
    lines = [line.split() for line in text.splitlines() if line.startswith(document)]
    assert [(ln[1], ln[3], ln[4], ln[-2], ln[-1]) for ln in lines] == [
        ("1", "4930", "1600", "240,00", "240,00"),
        ("2", "4930", "1600", "89,90", "89,90"),
        ("3", "3400", "1600", "55,10", "55,10"),
        ("9019", "1576", "1600", "73,15", "73,15"),
    ]
    summe = next(line for line in text.splitlines() if line.startswith("Summe"))
    assert summe.split() == ["Summe", "458,15", "458,15"]

    assert dropzone.settled(invoice.name) == "processed"
    assert (dropzone.home / "processed" / invoice.name).read_bytes() == invoice.read_bytes()
    [job] = demo.app.jobs.list(flow_id="invoice-drop")
    assert job.params["_trigger"]["source"] == "webdav"
    assert job.params["_trigger"]["user"] == USER

    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    target = SCREENSHOTS / "invoice-drop-journal-page1"
    subprocess.run(
        ["pdftoppm", "-png", "-r", "70", "-singlefile", str(journal), str(target)], check=True
    )

    # the same invoice again: refused as a duplicate document, the bookings stay as they were
    journal_before = journal.read_bytes()
    dropzone.upload("nochmal-" + invoice.name, invoice.read_bytes())
    assert demo.run_queued() == ["failed"]
    assert _bookings(demo, document) == rows
    assert journal.read_bytes() == journal_before
    assert dropzone.settled("nochmal-" + invoice.name) == "failed"
    [again, _] = demo.app.jobs.list(flow_id="invoice-drop")
    assert again.error_node == "write-bookings" and "UNIQUE" in again.error


@pytest.mark.parametrize("good_lines", [2, 1500], ids=["short", "longer-than-a-batch"])
def test_an_invoice_with_an_unknown_account_books_nothing_and_goes_to_failed(
    demo, dropzone: Dropzone, good_lines: int
):
    # with 1500 good lines first, a write committed per batch would keep 1000 of them
    day = date(2026, 11, 20)
    data = _invoice(
        "RE-2026-0816",
        day,
        *(f"4930;Ordner {n};12,50;19" for n in range(good_lines)),
        "9999;Kaffeemaschine;250,00;19",  # no such account in the chart of accounts
    )

    dropzone.upload("rechnung-RE-2026-0816.csv", data)
    assert demo.run_queued() == ["failed"]

    assert _bookings(demo, "RE-2026-0816") == []  # not even the good lines
    [job] = demo.app.jobs.list(flow_id="invoice-drop")
    assert job.error_node == "write-bookings"
    assert "bookings.debit" in job.error and "nothing written" in job.error
    assert not (demo.data_dir / "demo" / "journal" / "buchungsjournal-RE-2026-0816.pdf").exists()
    assert dropzone.settled("rechnung-RE-2026-0816.csv") == "failed"
    assert (dropzone.home / "failed" / "rechnung-RE-2026-0816.csv").read_bytes() == data


def test_a_line_that_cannot_be_read_books_nothing(demo, dropzone: Dropzone):
    data = _invoice("RE-2026-0817", date(2026, 11, 20), "4930;Ordner;12,50;19", "4930;Stifte;x;19")

    dropzone.upload("rechnung-RE-2026-0817.csv", data)
    assert demo.run_queued() == ["failed"]

    assert _bookings(demo, "RE-2026-0817") == []
    [job] = demo.app.jobs.list(flow_id="invoice-drop")
    assert job.error_node == "read-invoice" and "line 3" in job.error
    assert dropzone.settled("rechnung-RE-2026-0817.csv") == "failed"


def test_run_by_hand_books_the_demo_invoice(demo):
    job = demo.run("invoice-drop")

    assert job.state == "succeeded", demo.log(job)
    document = demo.summary.invoice_file.stem.removeprefix("rechnung-")
    assert [row[0] for row in _bookings(demo, document)] == [1, 2, 3, 9019]
    assert (demo.data_dir / "demo" / "journal" / f"buchungsjournal-{document}.pdf").is_file()
