"""Sample ``order-status-report``: open orders → one PDF per customer → mailed to them.

The sample runs as a job against the demo ERP and a real SMTP server (aiosmtpd); every
mail is read back as the customer sees it and its PDF through pdftotext.
"""

from __future__ import annotations

import email
import email.policy
import re
import socket
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword

ROOT = Path(__file__).resolve().parents[2]
SCREENSHOTS = ROOT / "build" / "screenshots"
PASSWORD = "Sehr-geheim-4711!"

pytestmark = pytest.mark.usefixtures("poppler")


@dataclass
class Inbox:
    """What the SMTP server accepted, and every login attempt."""

    mails: list[tuple[list[str], EmailMessage]] = field(default_factory=list)
    logins: list[str] = field(default_factory=list)

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        message = email.message_from_bytes(envelope.content, policy=email.policy.default)
        self.mails.append((list(envelope.rcpt_tos), message))  # type: ignore[arg-type]
        return "250 OK"

    def authenticate(self, server: Any, session: Any, envelope: Any, mechanism: str, data: Any):
        assert isinstance(data, LoginPassword)
        self.logins.append(data.login.decode())
        return AuthResult(success=data.password == b"the right one", handled=False)


def _free_port() -> int:
    # aiosmtpd's Controller cannot bind port 0
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def smtp(demo) -> Iterator[Inbox]:
    """A plain SMTP server; the demo's 'mail' connection points at it."""
    inbox = Inbox()
    port = _free_port()
    controller = Controller(inbox, hostname="127.0.0.1", port=port)
    controller.start()
    demo.app.set_connection("mail", {"host": "127.0.0.1", "port": port, "security": "none"})
    yield inbox
    controller.stop()


def _open_lines(demo) -> dict[int, dict[str, Any]]:
    """Per customer id: name, email and the open order lines, straight from the ERP."""
    engine = sa.create_engine(demo.summary.erp_url)
    query = sa.text(
        "SELECT c.id, c.name, c.email, o.id AS order_id, l.line_no, l.sku, l.qty, l.price "
        "FROM orders o JOIN customers c ON c.id = o.customer_id "
        "JOIN order_lines l ON l.order_id = o.id WHERE o.state = 'open'"
    )
    customers: dict[int, dict[str, Any]] = {}
    with engine.connect() as conn:
        for row in conn.execute(query):
            entry = customers.setdefault(
                row.id, {"name": row.name, "email": row.email, "lines": set(), "total": 0}
            )
            entry["lines"].add((row.order_id, row.line_no, row.sku, row.qty))
            amount = (Decimal(str(row.price)) * row.qty).quantize(Decimal("0.01"))
            entry["total"] += amount
        everyone = {r.email for r in conn.execute(sa.text("SELECT email FROM customers"))}
    engine.dispose()
    return customers | {"everyone": everyone}  # type: ignore[dict-item]


def _pdf_text(path: Path) -> str:
    return subprocess.run(
        ["pdftotext", "-layout", str(path), "-"], check=True, capture_output=True, text=True
    ).stdout


def _german(amount: Decimal) -> str:
    return f"{amount:,.2f}".translate(str.maketrans(".,", ",."))


# a table row: order, date, position, sku, article …, qty, price €, amount €
ROW = re.compile(
    r"^\s*(1\d{4})\s+\d\d\.\d\d\.\d{4}\s+(\d+)\s+(A\d{7})\s.*?\s(\d+)\s+[\d.,]+ €\s+[\d.,]+ €$"
)


def test_each_customer_with_open_orders_gets_one_mail_with_exactly_their_pdf(
    demo, smtp: Inbox, tmp_path: Path
):
    expected = _open_lines(demo)
    everyone = expected.pop("everyone")
    assert len(expected) >= 5, "the demo data should have several customers with open orders"

    job = demo.run("order-status-report")

    assert job.state == "succeeded", demo.log(job)
    by_address = {}
    for recipients, message in smtp.mails:
        assert len(recipients) == 1
        by_address.setdefault(recipients[0], []).append(message)
    assert set(by_address) == {c["email"] for c in expected.values()}
    assert all(len(messages) == 1 for messages in by_address.values())
    # customers without open orders get nothing
    assert len(everyone - by_address.keys()) == len(everyone) - len(expected) > 0

    screenshot = None
    for customer_id, customer in expected.items():
        [message] = by_address[customer["email"]]
        to = message["To"].addresses[0]
        assert (to.display_name, to.addr_spec) == (customer["name"], customer["email"])
        assert message["Subject"] == f"Ihre offenen Aufträge – {customer['name']}"
        assert str(message["From"]) == "Auftragsservice Flowmill Demo <auftraege@demo.example>"
        body = message.get_body(("plain",)).get_content()
        assert f"der {customer['name']}," in body
        assert f"({len(customer['lines'])} Positionen)" in body
        [attachment] = list(message.iter_attachments())
        assert attachment.get_content_type() == "application/pdf"
        assert attachment.get_filename() == f"offene-auftraege-{customer_id}.pdf"
        pdf = tmp_path / attachment.get_filename()
        pdf.write_bytes(attachment.get_content())
        text = _pdf_text(pdf)
        assert "Offene Aufträge" in text
        assert f"{customer['name']} (Nr. {customer_id})" in text
        assert "Seite 1 von 1" in text
        listed = {
            (int(m[1]), int(m[2]), m[3], int(m[4]))
            for m in (ROW.match(line) for line in text.splitlines())
            if m
        }
        assert listed == customer["lines"]
        summe = next(line for line in text.splitlines() if line.startswith("Summe"))
        assert summe.split()[-2:] == [_german(customer["total"]), "€"]
        if "ü" in customer["name"] and screenshot is None:
            screenshot = pdf
    assert any("ü" in c["name"] or "ö" in c["name"] for c in expected.values())

    # the same PDFs stay in the report folder, one subfolder per day
    today = datetime.now().date().isoformat()
    folder = demo.data_dir / "demo" / "reports" / today
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        f"offene-auftraege-{cid}.pdf" for cid in expected
    )

    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    target = SCREENSHOTS / "order-status-report-page1"
    subprocess.run(
        ["pdftoppm", "-png", "-r", "80", "-f", "1", "-l", "1", "-singlefile",
         str(screenshot or pdf), str(target)],
        check=True,
    )  # fmt: skip
    assert target.with_suffix(".png").stat().st_size > 10_000


def test_a_refused_smtp_login_fails_the_run_once_without_the_password_in_the_log(demo):
    inbox = Inbox()
    port = _free_port()
    controller = Controller(
        inbox,
        hostname="127.0.0.1",
        port=port,
        authenticator=inbox.authenticate,
        auth_require_tls=False,
    )
    controller.start()
    try:
        demo.app.set_connection(
            "mail",
            {"host": "127.0.0.1", "port": port, "security": "none", "user": "reports",
             "password": PASSWORD},
        )  # fmt: skip
        job = demo.run("order-status-report")
    finally:
        controller.stop()

    assert job.state == "failed"
    assert job.error_node == "mail-customer"
    assert "refused the login of 'reports'" in job.error
    assert inbox.logins == ["reports"]  # one login, never repeated
    assert inbox.mails == []
    assert job.attempts == 1
    log = demo.log(job)
    assert "refused the login" in log and "retrying" not in log.lower()
    assert PASSWORD not in log and PASSWORD not in (job.error or "")


def test_the_schedule_fires_at_0630_berlin_on_workdays_but_not_on_holidays(demo):
    demo.load("order-status-report")
    demo.app.arm_triggers()
    [info] = [s for s in demo.app.schedules.list() if s.flow_id == "order-status-report"]
    start = datetime(2026, 12, 23, tzinfo=UTC)
    fires = demo.app.preview_schedule(info.spec, start, count=4)
    # Christmas (Fri 25th, Sat 26th) and the weekend are skipped
    assert [f.isoformat() for f in fires] == [
        "2026-12-23T06:30:00+01:00",
        "2026-12-24T06:30:00+01:00",
        "2026-12-28T06:30:00+01:00",
        "2026-12-29T06:30:00+01:00",
    ]
