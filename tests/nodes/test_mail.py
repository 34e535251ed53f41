"""mail.send against a real SMTP server (aiosmtpd), read back as the recipient sees it."""

from __future__ import annotations

import email
import email.policy
import socket
import ssl
from collections.abc import Iterator
from dataclasses import dataclass, field
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword

from engine.errors import NodeError, PermanentError, RecordError
from engine.testing import run_node
from nodes.mail import MAIL_SEND, check_send
from servers.tls import certificate

PDF = b"%PDF-1.4\n% not really a pdf \x00\xff\x10\n%%EOF\n"


@dataclass
class Received:
    sender: str
    recipients: list[str]
    message: EmailMessage


@dataclass
class Inbox:
    """Collects what the server accepted; counts login attempts."""

    mails: list[Received] = field(default_factory=list)
    logins: list[str] = field(default_factory=list)

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        message = email.message_from_bytes(envelope.content, policy=email.policy.default)
        self.mails.append(Received(envelope.mail_from, list(envelope.rcpt_tos), message))
        return "250 OK"

    def authenticate(
        self, server: Any, session: Any, envelope: Any, mechanism: str, data: Any
    ) -> AuthResult:
        assert isinstance(data, LoginPassword)
        self.logins.append(data.login.decode())
        ok = data.login == b"shop" and data.password == b"s3cret"
        return AuthResult(success=ok, handled=False)


def free_port() -> int:
    # aiosmtpd's Controller cannot bind port 0
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve(inbox: Inbox, **kwargs: Any) -> Iterator[tuple[Controller, int]]:
    port = free_port()
    controller = Controller(inbox, hostname="127.0.0.1", port=port, **kwargs)
    controller.start()
    try:
        yield controller, port
    finally:
        controller.stop()


@pytest.fixture
def inbox() -> Inbox:
    return Inbox()


@pytest.fixture
def smtp(inbox: Inbox) -> Iterator[dict[str, Any]]:
    """A plain SMTP server without login, and the connection that points at it."""
    for _, port in serve(inbox):
        yield {"host": "127.0.0.1", "port": port, "security": "none", "from": "shop@example.com"}


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "data"
    folder.mkdir()
    return folder


def send(config: dict[str, Any], records: list[dict[str, Any]], conn: dict[str, Any], **kw: Any):
    return run_node(
        MAIL_SEND,
        {"connection": "mail", **config},
        {"in": records},
        connections={"mail": conn},
        **kw,
    )


def test_one_mail_per_record_with_umlauts_in_subject_and_recipient(inbox, smtp):
    records = [
        {"name": "Jürgen Müller", "email": "mueller@example.de", "total": "12,50", "note": "x"},
        {"name": "Ann Lee", "email": "ann@example.com", "total": "3,00", "note": "{{ 7*7 }}"},
    ]
    result = send(
        {
            "to": "{{ name }} <{{ email }}>",
            "bcc": "archive@example.com",
            "subject": "Rechnung für {{ name }}",
            "body": "Hallo {{ record.name }},\nSumme: {{ total }} €\nNotiz: {{ note }}\n",
        },
        records,
        smtp,
    )

    assert [m.message["Subject"] for m in inbox.mails] == [
        "Rechnung für Jürgen Müller",
        "Rechnung für Ann Lee",
    ]
    first = inbox.mails[0]
    assert first.message["To"].addresses[0].display_name == "Jürgen Müller"
    assert first.message["To"].addresses[0].addr_spec == "mueller@example.de"
    assert first.message["Bcc"] is None  # blind copies appear in no header…
    assert first.recipients == ["mueller@example.de", "archive@example.com"]  # …but get it
    assert first.sender == "shop@example.com"
    assert first.message.get_content_type() == "text/plain"
    assert "Summe: 12,50 €" in first.message.get_content()
    # a record value is data: it is sent as written, never evaluated
    assert "Notiz: {{ 7*7 }}" in inbox.mails[1].message.get_content()

    assert [r["subject"] for r in result["out"]] == [
        "Rechnung für Jürgen Müller",
        "Rechnung für Ann Lee",
    ]
    assert result["out"][0]["to"] == "Jürgen Müller <mueller@example.de>"
    assert result["out"][0]["message_id"] == first.message["Message-ID"]
    assert result["error"] == []


def test_html_body_escapes_values_and_attaches_the_pdf_from_the_record(inbox, smtp, data_dir):
    pdf = data_dir / "invoices" / "R-1001.pdf"
    pdf.parent.mkdir()
    pdf.write_bytes(PDF)
    send(
        {
            "to": "{{ email }}",
            "subject": "Rechnung {{ number }}",
            "body": "<p>Hallo {{ name }}</p>",
            "format": "html",
            "attachments": ["pdf"],
        },
        [
            {
                "email": "a@example.com",
                "name": "<b>Tom & Jerry</b>",
                "number": "R-1001",
                "pdf": str(pdf),
            }
        ],
        smtp,
        data_dir=data_dir,
    )

    (mail,) = inbox.mails
    body = mail.message.get_body(("html",))
    assert body.get_content_type() == "text/html"
    assert "<p>Hallo &lt;b&gt;Tom &amp; Jerry&lt;/b&gt;</p>" in body.get_content()
    (attachment,) = list(mail.message.iter_attachments())
    assert attachment.get_filename() == "R-1001.pdf"
    assert attachment.get_content_type() == "application/pdf"
    assert attachment.get_content() == PDF


def test_attachment_outside_the_allowed_folders_goes_to_the_error_port(
    inbox, smtp, data_dir, tmp_path
):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    secret = elsewhere / "passwords.txt"
    secret.write_text("root:hunter2")
    config = {
        "to": "a@example.com",
        "subject": "s",
        "body": "b",
        "attachments": ["file"],
        "on_error": "route",
    }
    records = [{"file": str(secret)}, {"file": str(data_dir / ".." / "elsewhere" / "x")}]

    result = send(config, records, smtp, data_dir=data_dir)
    assert inbox.mails == [] and result["out"] == []
    assert "outside the allowed folders" in result["error"][0]["_error"]
    assert "outside the allowed folders" in result["error"][1]["_error"]

    # an author who names the folder lets it through
    result = send(
        {**config, "attachment_folders": [str(elsewhere)]}, records[:1], smtp, data_dir=data_dir
    )
    (attachment,) = list(inbox.mails[0].message.iter_attachments())
    assert attachment.get_content() == "root:hunter2"


def test_per_run_sends_one_mail_listing_every_record(inbox, smtp):
    records = [{"sku": f"a-{i}", "qty": i} for i in range(1, 4)]
    result = send(
        {
            "mode": "per_run",
            "to": "lager@example.com",
            "subject": "Bestand: {{ count }} Artikel",
            "body": "{% for r in records %}{{ r.sku }}={{ r.qty }}\n{% endfor %}",
        },
        records,
        smtp,
        batch_size=2,
    )
    (mail,) = inbox.mails
    assert mail.message["Subject"] == "Bestand: 3 Artikel"
    assert mail.message.get_content().splitlines() == ["a-1=1", "a-2=2", "a-3=3"]
    assert result["out"] == [
        {
            "to": "lager@example.com",
            "subject": "Bestand: 3 Artikel",
            "message_id": mail.message["Message-ID"],
        }
    ]


def test_per_run_without_records_sends_nothing_unless_asked(inbox, smtp):
    config = {"mode": "per_run", "to": "x@example.com", "subject": "leer", "body": "{{ count }}"}
    assert send(config, [], smtp)["out"] == [] and inbox.mails == []
    send({**config, "send_empty": True}, [], smtp)
    assert inbox.mails[0].message.get_content().strip() == "0"


@pytest.mark.parametrize(
    ("field", "template"),
    [("subject", "{{ ''.__class__.__mro__ }}"), ("body", "{{ record.__class__ }}")],
)
def test_template_reaching_into_python_fails_with_a_sandbox_error(inbox, smtp, field, template):
    config = {
        "to": "a@example.com",
        "subject": "s",
        "body": "b",
        field: template,
        "on_error": "route",
    }
    with pytest.raises(NodeError, match=rf"{field}: template not allowed \(sandbox\).*__class__"):
        send(config, [{"a": 1}], smtp)
    assert inbox.mails == []


def test_missing_field_or_bad_address_rejects_only_that_record(inbox, smtp):
    records = [{"email": "ok@example.com"}, {"email": "not-an-address"}, {"mail": "x@y.z"}]
    config = {"to": "{{ email }}", "subject": "s", "body": "b", "on_error": "route"}
    result = send(config, records, smtp)
    assert [m.recipients for m in inbox.mails] == [["ok@example.com"]]
    errors = [r["_error"] for r in result["error"]]
    assert "to: 'not-an-address' is not a mail address" in errors[0]
    assert "to:" in errors[1] and "'email' is undefined" in errors[1]
    with pytest.raises(RecordError, match="not a mail address"):
        send({**config, "on_error": "fail"}, records[1:], smtp)


def test_unreachable_server_error_names_host_and_port():
    port = free_port()  # nothing listens there
    conn = {"host": "127.0.0.1", "port": port, "security": "none", "from": "a@example.com"}
    with pytest.raises(NodeError, match=rf"cannot reach SMTP server 127\.0\.0\.1:{port}"):
        send({"to": "b@example.com", "subject": "s", "body": "b", "smtp_timeout": 5}, [{}], conn)


def test_wrong_password_fails_once_and_is_not_retried(inbox):
    for _, port in serve(inbox, authenticator=inbox.authenticate, auth_require_tls=False):
        conn = {
            "host": "127.0.0.1",
            "port": port,
            "security": "none",
            "user": "shop",
            "password": "wrong",
            "from": "shop@example.com",
        }
        config = {"to": "b@example.com", "subject": "s", "body": "b", "on_error": "route"}
        with pytest.raises(PermanentError, match=r"refused the login of 'shop' \(535.*password"):
            send(config, [{}, {}, {}], conn)
        assert inbox.logins == ["shop"] and inbox.mails == []

        send(config, [{}], {**conn, "password": "s3cret"})
        assert len(inbox.mails) == 1


def test_starttls_with_a_self_signed_certificate(inbox, tmp_path):
    cert, key = certificate(tmp_path)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    for _, port in serve(
        inbox, tls_context=context, require_starttls=True, authenticator=inbox.authenticate
    ):
        conn = {
            "host": "127.0.0.1",
            "port": port,
            "security": "starttls",
            "user": "shop",
            "password": "s3cret",
            "from": "shop@example.com",
        }
        config = {"to": "b@example.com", "subject": "geheim", "body": "b"}
        # the system store does not know the self-signed certificate
        with pytest.raises(NodeError, match="certificate verify failed"):
            send(config, [{}], conn)
        send(config, [{}], {**conn, "ca_file": str(cert)})
        assert [m.message["Subject"] for m in inbox.mails] == ["geheim"]
        assert inbox.logins == ["shop"]


def test_check_names_the_field_with_a_template_syntax_error():
    problems = check_send({"to": "{{ email", "subject": "ok", "body": "{% for %}"})
    assert [p.field for p in problems] == ["to", "body"]
    assert "line 1" in problems[0].message
