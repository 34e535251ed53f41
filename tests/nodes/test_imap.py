"""``trigger.mail`` against a real IMAP server: Debian's dovecot, started by the test.

Each test gets its own mailbox user on one dovecot per module (imaps plus a STARTTLS
port, self-signed certificate, passwd-file users, Maildir in a temporary folder), runs a
real ``ListenerHost`` over a real service and runs the queued jobs with ``run_job``.
"""

from __future__ import annotations

import contextlib
import hashlib
import imaplib
import itertools
import os
import pwd
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from email.message import EmailMessage
from email.utils import format_datetime
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword

from engine.batch.listeners import ListenerHost
from engine.batch.workers import run_job
from engine.errors import FlowmillError
from engine.service import Flowmill
from nodes.imap import check_trigger, parse_message, safe_file_name, try_connection
from nodes.mail import try_smtp_connection
from servers.tls import certificate
from tests.conftest import DEADLINE

PDF = b"%PDF-1.4\n% invoice \x00\xff\x10\n" + os.urandom(2048) + b"\n%%EOF\n"
DOVECOT = "/usr/sbin/dovecot"
PASSWORD = "Pässwort-42"  # non-ASCII: LOGIN cannot carry it, SASL PLAIN must
IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}


def service_missing(what: str, error: Exception) -> None:
    """Skip locally, fail in CI (as tests/conftest.py does; conftest is not importable)."""
    message = f"{what} is not usable: {error}"
    if IN_CI:
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(check: Callable[[], Any], seconds: float = DEADLINE, what: str = "condition") -> Any:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


@dataclass
class Dovecot:
    users_file: Path
    imaps_port: int
    imap_port: int
    cert: Path
    _names: Iterator[int] = field(default_factory=lambda: itertools.count(1))

    def new_user(self) -> tuple[str, str]:
        """A mailbox user no other test used (all written before the server started:
        dovecot notices a changed passwd-file only by its mtime, to the second)."""
        return f"user{next(self._names)}", PASSWORD

    def settings(self, user: str, password: str, **over: Any) -> dict[str, Any]:
        base = {"host": "127.0.0.1", "port": self.imaps_port, "security": "tls", "user": user,
                "password": password, "ca_file": str(self.cert)}  # fmt: skip
        return {**base, **over}

    def client(self, user: str, password: str) -> imaplib.IMAP4_SSL:
        context = ssl.create_default_context(cafile=str(self.cert))
        imap = imaplib.IMAP4_SSL("127.0.0.1", self.imaps_port, ssl_context=context, timeout=10)
        imap.authenticate("PLAIN", lambda _: f"\0{user}\0{password}".encode())
        return imap


def _dovecot_config(
    tmp: Path, mail_root: Path, imaps: int, imap: int, cert: Path, key: Path
) -> str:
    me = pwd.getpwuid(os.getuid())
    if os.getuid() == 0:
        # imap-login refuses to run as root and imap refuses uid 0 for mail: use nobody
        nobody = pwd.getpwnam("nobody")
        login_user, uid, gid = "nobody", nobody.pw_uid, nobody.pw_gid
    else:
        login_user, uid, gid = me.pw_name, me.pw_uid, me.pw_gid
    internal_group = "root" if os.getuid() == 0 else me.pw_name
    return f"""
protocols = imap
listen = 127.0.0.1
base_dir = {tmp}/run
state_dir = {tmp}/state
instance_name = flowmill-test-{imaps}
log_path = {tmp}/dovecot.log
ssl = required
ssl_cert = <{cert}
ssl_key = <{key}
default_internal_user = {me.pw_name}
default_internal_group = {internal_group}
default_login_user = {login_user}
first_valid_uid = 1
mail_uid = {uid}
mail_gid = {gid}
mail_location = maildir:{mail_root}/%u
auth_mechanisms = plain login
auth_failure_delay = 0
auth_verbose = yes
passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%u {tmp}/users
}}
userdb {{
  driver = static
  args = uid={uid} gid={gid} home={mail_root}/%u
}}
service imap-login {{
  inet_listener imap {{
    port = {imap}
  }}
  inet_listener imaps {{
    port = {imaps}
    ssl = yes
  }}
}}
"""


@pytest.fixture(scope="module")
def dovecot(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Dovecot]:
    if not os.access(DOVECOT, os.X_OK):
        service_missing(
            "dovecot", FileNotFoundError(f"{DOVECOT} (bash scripts/services.sh dovecot)")
        )
    tmp = tmp_path_factory.mktemp("dovecot")
    cert, key = certificate(tmp)
    # the mail processes run as nobody when we are root: their folder must be theirs
    mail_root = Path(tempfile.mkdtemp(prefix="flowmill-maildir-"))
    if os.getuid() == 0:
        nobody = pwd.getpwnam("nobody")
        os.chown(mail_root, nobody.pw_uid, nobody.pw_gid)
    users = "".join(f"user{n}:{{PLAIN}}{PASSWORD}::::::\n" for n in range(1, 40))
    (tmp / "users").write_text(users, encoding="utf-8")
    imaps, imap = free_port(), free_port()
    (tmp / "dovecot.conf").write_text(_dovecot_config(tmp, mail_root, imaps, imap, cert, key))
    proc = subprocess.Popen(
        [DOVECOT, "-F", "-c", str(tmp / "dovecot.conf")],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    server = Dovecot(tmp / "users", imaps, imap, cert)
    try:
        user, password = server.new_user()
        deadline = time.monotonic() + 20
        while True:
            try:
                server.client(user, password).logout()
                break
            except (OSError, imaplib.IMAP4.error) as exc:
                if proc.poll() is not None or time.monotonic() > deadline:
                    log = (
                        (tmp / "dovecot.log").read_text() if (tmp / "dovecot.log").exists() else ""
                    )
                    out = proc.stdout.read().decode() if proc.poll() is not None else ""
                    service_missing("dovecot", RuntimeError(f"{exc}\n{out}\n{log[-2000:]}"))
                time.sleep(0.1)
        yield server
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        shutil.rmtree(mail_root, ignore_errors=True)


def make_mail(**over: Any) -> EmailMessage:
    msg = EmailMessage()
    msg["From"] = over.get("sender", "Jürgen Müller <mueller@example.de>")
    msg["To"] = "Auftragseingang <orders@example.com>"
    msg["Subject"] = over.get("subject", "Bestellung für Grüße & Söhne")
    msg["Date"] = format_datetime(time_of_mail())
    msg["Message-ID"] = over.get("message_id", "<order-1@example.de>")
    msg.set_content(over.get("text", "Sehr geehrte Damen und Herren,\nanbei die Bestellung.\n"))
    for name, data, kind in over.get(
        "attachments", [("Bestellung Nr. 7.pdf", PDF, "application/pdf")]
    ):
        maintype, subtype = kind.split("/")
        msg.add_attachment(data, maintype=maintype, subtype=subtype, filename=name)
    return msg


def time_of_mail():
    import datetime as dt

    return dt.datetime(2026, 11, 20, 9, 30, tzinfo=dt.timezone(dt.timedelta(hours=1)))


def deliver(imap: imaplib.IMAP4, msg: EmailMessage, mailbox: str = "INBOX") -> None:
    typ, data = imap.append(mailbox, None, None, msg.as_bytes())
    assert typ == "OK", data


def flags(imap: imaplib.IMAP4, mailbox: str = "INBOX") -> list[str]:
    """The flags of every message in ``mailbox``, oldest first."""
    typ, data = imap.select(mailbox)
    assert typ == "OK", data
    if int(data[0]) == 0:
        return []
    _, found = imap.fetch("1:*", "(FLAGS)")
    return [item.decode() for item in found if isinstance(item, bytes)]


# -- the flow around the trigger --------------------------------------------------------


def mail_flow(flow_id: str, blocker: Path | None = None, **config: Any) -> dict[str, Any]:
    """trigger.mail → (with ``blocker``: a file.write that cannot write: the job fails)."""
    nodes = [{"id": "mail", "type": "trigger.mail", "config": {"connection": "box", **config}}]
    edges = []
    if blocker is not None:
        nodes.append({"id": "write", "type": "file.write",
                      "config": {"path": str(blocker / "cannot" / "out.csv")}})  # fmt: skip
        edges.append({"source": "mail", "source_port": "out", "target": "write",
                      "target_port": "in"})  # fmt: skip
    return {"format": "flowmill/1", "id": flow_id, "nodes": nodes, "edges": edges}


@pytest.fixture
def app(data_dir: Path) -> Iterator[Flowmill]:
    service = Flowmill.open(data_dir)
    yield service
    service.close()


@pytest.fixture
def mailbox(dovecot: Dovecot, app: Flowmill) -> Iterator[tuple[str, str, imaplib.IMAP4]]:
    """A fresh user, stored as connection 'box', and a client logged in as that user."""
    user, password = dovecot.new_user()
    app.set_connection("box", dovecot.settings(user, password))
    client = dovecot.client(user, password)
    yield user, password, client
    with contextlib.suppress(OSError, imaplib.IMAP4.error):
        client.logout()


class Listening:
    """A ListenerHost driven by hand: start, wait for jobs, run them, report outcomes."""

    def __init__(self, app: Flowmill) -> None:
        self.app = app
        self.host = ListenerHost(app)

    def __enter__(self) -> Listening:
        self.host.refresh()
        return self

    def __exit__(self, *exc: object) -> None:
        self.host.stop()

    def ctx(self, flow_id: str, node_id: str = "mail") -> Any:
        ctx = self.host.context(flow_id, node_id)
        assert ctx is not None
        return ctx

    def wait_ready(self, flow_id: str) -> None:
        ctx = self.ctx(flow_id)
        assert ctx.ready.wait(DEADLINE), f"listener not ready: {ctx.last_error}"

    def run_jobs(self, count: int) -> list[str]:
        wait_until(lambda: len(self.app.jobs.list()) >= count, what=f"{count} job(s)")
        outcomes = []
        while (job := self.app.jobs.claim("test-worker")) is not None:
            outcomes.append(run_job(self.app, job.id, "test-worker", 5.0, threading.Event()))
        self.host.check_jobs()
        return outcomes


POLL = {"poll_seconds": 1}


# -- the user's stories -----------------------------------------------------------------


def test_mail_with_umlauts_and_a_pdf_starts_one_job_and_is_marked_seen(app, mailbox):
    _, _, client = mailbox
    deliver(client, make_mail())
    app.save_flow(mail_flow("orders", **POLL))

    with Listening(app) as listening:
        listening.wait_ready("orders")
        assert listening.run_jobs(1) == ["succeeded"]
        wait_until(lambda: flags(client) == ["1 (FLAGS (\\Seen))"], what="\\Seen")
        time.sleep(1.5)  # another poll finds nothing new
        assert len(app.jobs.list()) == 1

    (job,) = app.jobs.list()
    record = job.params["_trigger"]
    assert record["from"] == "Jürgen Müller <mueller@example.de>"
    assert record["from_address"] == "mueller@example.de"
    assert record["to"] == "Auftragseingang <orders@example.com>"
    assert record["subject"] == "Bestellung für Grüße & Söhne"
    assert record["date"] == "2026-11-20T09:30:00+01:00"
    assert record["message_id"] == "<order-1@example.de>"
    assert record["text"] == "Sehr geehrte Damen und Herren,\nanbei die Bestellung.\n"
    assert record["html"] is None
    assert record["mailbox"] == "INBOX" and record["uid"] == 1
    (pdf,) = record["attachments"]
    assert pdf["name"] == "Bestellung Nr. 7.pdf" and pdf["content_type"] == "application/pdf"
    assert pdf["size"] == len(PDF)
    assert (
        hashlib.sha256(Path(pdf["path"]).read_bytes()).hexdigest()
        == hashlib.sha256(PDF).hexdigest()
    )
    assert pdf["sha256"] == hashlib.sha256(PDF).hexdigest()
    eml = Path(record["eml"]["path"])
    assert (
        eml.read_bytes().startswith(b"From: ") and record["eml"]["content_type"] == "message/rfc822"
    )
    work = app.settings.data_dir / "triggers" / "orders" / "mail"
    assert Path(pdf["path"]).resolve().is_relative_to(work.resolve())


def test_after_move_puts_the_mail_into_a_new_folder(app, mailbox):
    _, _, client = mailbox
    deliver(client, make_mail(subject="Umzug"))
    app.save_flow(mail_flow("mover", after="move", move_to="Erledigt", **POLL))

    with Listening(app) as listening:
        listening.wait_ready("mover")
        assert listening.run_jobs(1) == ["succeeded"]
        wait_until(lambda: flags(client) == [], what="the mail to leave INBOX")

    assert len(flags(client, "Erledigt")) == 1
    client.select("Erledigt")
    _, found = client.fetch("1", "(BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
    assert b"Subject: Umzug" in found[0][1]


def test_failed_job_leaves_the_mail_unseen_and_a_restart_fires_nothing_again(
    app, mailbox, tmp_path
):
    _, _, client = mailbox
    blocker = tmp_path / "blocker"
    blocker.write_text("a file where a folder should be")
    deliver(client, make_mail(message_id="<fails@example.de>"))
    app.save_flow(mail_flow("fails", blocker=blocker, **POLL))

    with Listening(app) as listening:
        listening.wait_ready("fails")
        assert listening.run_jobs(1) == ["failed"]
        wait_until(lambda: listening.ctx("fails").load_state().get("pending") == {},
                   what="the job's end to be noted")  # fmt: skip
        time.sleep(1.5)  # the next poll still sees the unseen mail: no second job
    assert flags(client) == ["1 (FLAGS ())"]
    assert len(app.jobs.list()) == 1

    # a new server process: new host, same database; the old mail is not new, a new one is
    deliver(client, make_mail(message_id="<second@example.de>"))
    with Listening(app) as listening:
        listening.wait_ready("fails")
        assert listening.run_jobs(2) == ["failed"]
        time.sleep(1.5)
    ids = sorted(j.params["_trigger"]["message_id"] for j in app.jobs.list())
    assert ids == ["<fails@example.de>", "<second@example.de>"]


def test_restart_while_the_job_waits_fires_nothing_twice_and_still_marks_seen(app, mailbox):
    _, _, client = mailbox
    deliver(client, make_mail())
    app.save_flow(mail_flow("restart", **POLL))
    with Listening(app) as listening:
        listening.wait_ready("restart")
        wait_until(lambda: app.jobs.list(), what="the job")
    # the server stopped before the job ran; the next one picks the job up
    with Listening(app) as listening:
        listening.wait_ready("restart")
        time.sleep(1.5)  # a poll of the new listener
        assert len(app.jobs.list()) == 1
        assert listening.run_jobs(1) == ["succeeded"]
        wait_until(lambda: flags(client) == ["1 (FLAGS (\\Seen))"], what="\\Seen")
    assert len(app.jobs.list()) == 1


def test_attachment_names_cannot_leave_the_message_folder(app, mailbox):
    _, _, client = mailbox
    evil = [
        ("../../etc/passwd", b"root:x:0:0\n", "text/plain"),
        ("..\\..\\boot.ini", b"[boot]\n", "application/octet-stream"),
        ("/tmp/abs.sh", b"#!/bin/sh\n", "application/x-sh"),
        ("..", b"dots\n", "application/octet-stream"),
    ]
    deliver(client, make_mail(attachments=evil))
    app.save_flow(mail_flow("evil", **POLL))
    with Listening(app) as listening:
        listening.wait_ready("evil")
        assert listening.run_jobs(1) == ["succeeded"]
    record = app.jobs.list()[0].params["_trigger"]
    folder = (app.settings.data_dir / "triggers" / "evil" / "mail").resolve()
    names = [a["name"] for a in record["attachments"]]
    assert names == ["passwd", "boot.ini", "abs.sh", "attachment-5"]
    assert [a["original_name"] for a in record["attachments"]][:3] == [
        "../../etc/passwd", "..\\..\\boot.ini", "/tmp/abs.sh",
    ]  # fmt: skip
    for attachment in record["attachments"]:
        path = Path(attachment["path"]).resolve()
        assert path.is_relative_to(folder) and path.is_file()
    assert Path(record["attachments"][0]["path"]).read_bytes() == b"root:x:0:0\n"


def test_only_from_and_oversized_attachments(app, mailbox):
    _, _, client = mailbox
    deliver(client, make_mail(sender="Spam <spam@elsewhere.example>", message_id="<spam@x>"))
    big = os.urandom(1_200_000)
    deliver(client, make_mail(attachments=[("big.bin", big, "application/octet-stream")]))
    app.save_flow(mail_flow("filtered", only_from=["@example.de"], max_attachment_mb=1, **POLL))
    with Listening(app) as listening:
        listening.wait_ready("filtered")
        assert listening.run_jobs(1) == ["succeeded"]
        wait_until(lambda: flags(client) == ["1 (FLAGS ())", "2 (FLAGS (\\Seen))"], what="flags")
    (job,) = app.jobs.list()
    record = job.params["_trigger"]
    assert record["attachments"] == []
    assert record["skipped_attachments"][0]["name"] == "big.bin"
    assert record["skipped_attachments"][0]["size"] == len(big)


def test_wrong_password_is_a_clear_permanent_error_without_the_password(app, mailbox, dovecot):
    user, _, _ = mailbox
    app.set_connection("box", dovecot.settings(user, "Falsch-Geheim-99"))
    app.save_flow(mail_flow("denied", **POLL))
    with Listening(app) as listening:
        ctx = listening.ctx("denied")
        error = wait_until(lambda: ctx.last_error, what="the listener's error")
        assert not ctx.ready.is_set()
        (status,) = listening.host.status()
    assert f"refused the login of '{user}'" in error
    assert "check the connection's user and password" in error
    assert f"127.0.0.1:{dovecot.imaps_port}" in error
    assert "Falsch-Geheim-99" not in error and "Falsch-Geheim-99" not in str(status)
    assert status["error"] == error and status["failures"] >= 1

    from engine.errors import PermanentError
    from nodes.imap import listen as imap_listen

    ctx.config = {**ctx.config}
    ctx.stopping.clear()
    with pytest.raises(PermanentError) as info:
        imap_listen(ctx)
    assert "Falsch-Geheim-99" not in str(info.value) and "refused the login" in str(info.value)


# -- connection types -------------------------------------------------------------------


def test_imap_connection_test_logs_in_and_counts(dovecot, mailbox):
    user, password, client = mailbox
    deliver(client, make_mail())
    deliver(client, make_mail())
    client.select("INBOX")
    client.store("1", "+FLAGS", "(\\Seen)")
    line = try_connection(dovecot.settings(user, password), 10)
    assert "INBOX holds 2 messages (1 unseen)" in line and f"as '{user}'" in line

    starttls = dovecot.settings(user, password, port=dovecot.imap_port, security="starttls")
    assert "INBOX holds 2 messages" in try_connection(starttls, 10)
    # dovecot counts loopback as secure, so even a plain login is taken here
    assert "(plain)" in try_connection({**starttls, "security": "plain"}, 10)
    with pytest.raises(FlowmillError, match="certificate verify failed"):
        try_connection({**dovecot.settings(user, password), "ca_file": None}, 10)
    with pytest.raises(FlowmillError, match=rf"refused the login of '{user}'") as info:
        try_connection(dovecot.settings(user, "nope-nope"), 10)
    assert "nope-nope" not in str(info.value)
    with pytest.raises(FlowmillError, match=r"cannot reach IMAP server 127\.0\.0\.1"):
        try_connection(dovecot.settings(user, password, port=free_port()), 5)


class _Auth:
    def __init__(self) -> None:
        self.logins: list[str] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        return "250 OK"

    def authenticate(self, server, session, envelope, mechanism, data) -> AuthResult:
        assert isinstance(data, LoginPassword)
        self.logins.append(data.login.decode())
        return AuthResult(
            success=data.login == b"shop" and data.password == b"s3cret", handled=False
        )


def test_smtp_connection_test_does_starttls_and_logs_in(tmp_path):
    cert, key = certificate(tmp_path)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    handler = _Auth()
    port = free_port()  # aiosmtpd's Controller cannot bind port 0
    controller = Controller(handler, hostname="127.0.0.1", port=port, tls_context=context,
                            require_starttls=True, authenticator=handler.authenticate)  # fmt: skip
    controller.start()
    try:
        conn = {"host": "127.0.0.1", "port": port, "security": "starttls", "user": "shop",
                "password": "s3cret", "ca_file": str(cert)}  # fmt: skip
        line = try_smtp_connection(conn, 10)
        assert line == f"connected to SMTP server 127.0.0.1:{port} (starttls); logged in as 'shop'"
        with pytest.raises(FlowmillError, match=r"refused the login of 'shop' \(535") as info:
            try_smtp_connection({**conn, "password": "wrong-pw-1"}, 10)
        assert "wrong-pw-1" not in str(info.value) and not str(info.value).startswith("node")
        assert handler.logins == ["shop", "shop"]
        with pytest.raises(FlowmillError, match="certificate verify failed"):
            try_smtp_connection({**conn, "ca_file": None}, 10)
    finally:
        controller.stop()


def test_registry_knows_both_connection_types():
    from engine.flows.registry import Registry

    registry = Registry.from_modules(["nodes.mail", "nodes.imap"])
    assert [k.kind for k in registry.connection_types()] == ["imap", "smtp"]
    assert registry.connection_type_of({"host": "imap.example.com"}).kind == "imap"
    assert registry.connection_type_of({"host": "x", "port": 587}).kind == "smtp"
    assert registry.get("trigger.mail").to_catalog()["listens"] is True


# -- without a server ---------------------------------------------------------------------


def test_check_names_the_fields():
    fields = [p.field for p in check_trigger({"connection": "c", "after": "move"})]
    assert fields == ["move_to"]
    problems = check_trigger(
        {"connection": "c", "move_to": "X", "search": 'SUBJECT "Grüße"', "only_from": ["bob"]}
    )
    assert [p.field for p in problems] == ["move_to", "search", "only_from"]
    assert check_trigger({"connection": "c", "after": "move", "move_to": "Done"}) == []


def test_html_only_mail_gets_a_text_and_a_nested_mail_is_one_attachment(tmp_path):
    msg = EmailMessage()
    msg["From"] = "=?utf-8?q?J=C3=BCrgen_M=C3=BCller?= <j@example.de>"
    msg["Subject"] = "=?iso-8859-1?q?Gr=FC=DFe?="
    msg.set_content("<p>Hallo&nbsp;<b>Welt</b></p><script>x()</script>", subtype="html")
    inner = make_mail(attachments=[])
    msg.add_attachment(inner)
    record = parse_message(msg.as_bytes(), tmp_path / "m")
    assert record["from"] == "Jürgen Müller <j@example.de>" and record["subject"] == "Grüße"
    assert record["text"] == "Hallo\xa0Welt" and "<b>Welt</b>" in record["html"]
    (nested,) = record["attachments"]
    assert nested["content_type"] == "message/rfc822" and nested["name"] == "attachment-2.eml"
    assert b"Bestellung" in Path(nested["path"]).read_bytes()
    assert safe_file_name("a" * 300 + ".pdf", "x").endswith(".pdf")
    assert len(safe_file_name("a" * 300 + ".pdf", "x")) <= 120
