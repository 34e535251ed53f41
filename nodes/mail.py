"""Mail node: send one mail per record, or one per run, over SMTP.

Addresses, subject and body are Jinja2 templates rendered in a *sandboxed* environment:
record values are data handed to the template, never template code, and a template cannot
reach Python internals (``{{ ''.__class__ }}`` fails with a security error). HTML bodies
are autoescaped. One SMTP connection serves the whole node run and is closed in a
``finally``; nothing is retried inside the node, least of all a refused login.
"""

from __future__ import annotations

import mimetypes
import os
import smtplib
import ssl
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from email.headerregistry import Address
from email.message import EmailMessage
from email.utils import getaddresses, make_msgid
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from jinja2 import StrictUndefined, TemplateError, TemplateSyntaxError
from jinja2.sandbox import SandboxedEnvironment, SecurityError

from engine.errors import FlowmillError, NodeError, PermanentError
from engine.spec import (
    Batch,
    ConfigProblem,
    ConnectionType,
    Inputs,
    NodeSpec,
    Outputs,
    RunContext,
)

__all__ = ["MAIL_SEND", "NODES", "SEND_SCHEMA", "check_send", "send_mail"]

SECURITIES = ("starttls", "tls", "none")
_DEFAULT_PORTS = {"starttls": 587, "tls": 465, "none": 25}
_TEMPLATE_FIELDS = ("from", "to", "cc", "bcc", "subject", "body")

_TEMPLATE_NOTE = (
    " A Jinja2 template: per record, the record's fields by name and as `record`; per run, "
    "`records` (the list) and `count`; always `params`."
)

SEND_SCHEMA: dict[str, Any] = {
    "type": "object",
    "title": "Send mail",
    "additionalProperties": False,
    "required": ["connection", "to", "subject", "body"],
    "properties": {
        "connection": {
            "type": "string",
            "minLength": 1,
            "format": "connection",
            "title": "Connection",
            "description": "Name of a stored SMTP connection with the settings host, port "
            "(default 587/465/25 by security), user, password, security (starttls | tls | "
            "none; default starttls), optionally from (default sender) and ca_file (a PEM "
            "file of certificates to trust besides the system ones).",
        },
        "from": {
            "type": "string",
            "title": "From",
            "description": "Sender, e.g. 'Shop <shop@example.com>'; empty: the connection's "
            "'from', else its user." + _TEMPLATE_NOTE,
        },
        "to": {
            "type": "string",
            "minLength": 1,
            "title": "To",
            "description": "Recipients, separated by commas, e.g. '{{ name }} <{{ email }}>'."
            + _TEMPLATE_NOTE,
        },
        "cc": {
            "type": "string",
            "title": "Cc",
            "description": "Copy recipients, separated by commas." + _TEMPLATE_NOTE,
        },
        "bcc": {
            "type": "string",
            "title": "Bcc",
            "description": "Blind copy recipients: they get the mail but appear in no header."
            + _TEMPLATE_NOTE,
        },
        "subject": {
            "type": "string",
            "minLength": 1,
            "title": "Subject",
            "description": "Subject line." + _TEMPLATE_NOTE,
        },
        "body": {
            "type": "string",
            "format": "textarea",
            "title": "Body",
            "description": "Mail text; with format html, record values are HTML-escaped."
            + _TEMPLATE_NOTE,
        },
        "format": {
            "type": "string",
            "enum": ["text", "html"],
            "default": "text",
            "title": "Body format",
            "description": "text: a plain-text mail; html: an HTML mail (values autoescaped).",
        },
        "mode": {
            "type": "string",
            "enum": ["per_record", "per_run"],
            "default": "per_record",
            "title": "Mode",
            "description": "per_record: one mail per incoming record; per_run: one mail for "
            "all records of the run (templates get `records`), none when no record came in "
            "unless 'Send when empty' is set.",
        },
        "send_empty": {
            "type": "boolean",
            "default": False,
            "title": "Send when empty",
            "description": "per_run only: send the mail even when no record came in.",
        },
        "attachments": {
            "type": "array",
            "items": {"type": "string", "minLength": 1},
            "uniqueItems": True,
            "default": [],
            "title": "Attachment fields",
            "description": "Record fields holding a file path (or a list of paths), e.g. the "
            "PDF a previous node made; an empty field attaches nothing. For safety a path "
            "must lie inside the data directory, the run's work directory, the flow's folder "
            "or one of the allowed attachment folders (symlinks are resolved first), so a "
            "record's data cannot mail out arbitrary files.",
        },
        "attachment_folders": {
            "type": "array",
            "items": {"type": "string", "minLength": 1},
            "uniqueItems": True,
            "default": [],
            "title": "Allowed attachment folders",
            "description": "Further folders attachments may come from, e.g. ${data_dir}/../"
            "invoices or /srv/reports.",
        },
        "smtp_timeout": {
            "type": "number",
            "exclusiveMinimum": 0,
            "maximum": 3600,
            "default": 30,
            "title": "SMTP timeout (s)",
            "description": "Seconds to wait for the server on connect and on every reply.",
        },
    },
}

# -- templates ------------------------------------------------------------------------

_TEXT_ENV = SandboxedEnvironment(undefined=StrictUndefined, autoescape=False)
_HTML_ENV = SandboxedEnvironment(undefined=StrictUndefined, autoescape=True)


def _env(field: str, config: Mapping[str, Any]) -> SandboxedEnvironment:
    return _HTML_ENV if field == "body" and config.get("format") == "html" else _TEXT_ENV


def check_send(config: Mapping[str, Any]) -> list[ConfigProblem]:
    """Template syntax errors by field, so the editor can name them before a run."""
    problems: list[ConfigProblem] = []
    for name in _TEMPLATE_FIELDS:
        source = config.get(name)
        if not isinstance(source, str):
            continue
        try:
            _env(name, config).parse(source)
        except TemplateSyntaxError as exc:
            problems.append(ConfigProblem(name, f"template error on line {exc.lineno}: {exc}"))
    if config.get("send_empty") and config.get("mode", "per_record") != "per_run":
        problems.append(ConfigProblem("send_empty", "only used with mode per_run"))
    return problems


class _RecordProblem(Exception):
    """A problem with one mail (bad address, missing field): reject the record(s)."""


@dataclass(frozen=True)
class _Server:
    host: str
    port: int
    security: str
    user: str | None
    password: str | None
    sender: str | None
    ca_file: str | None

    @property
    def where(self) -> str:
        return f"{self.host}:{self.port}"


def _server(ctx: RunContext, name: str) -> _Server:
    settings = ctx.connection(name)
    security = str(settings.get("security") or "starttls").lower()
    if security not in SECURITIES:
        raise _fail(ctx, f"connection {name!r}: security must be one of {', '.join(SECURITIES)}")
    host = settings.get("host")
    if not host:
        raise _fail(ctx, f"connection {name!r} has no 'host'")
    try:
        port = int(settings.get("port") or _DEFAULT_PORTS[security])
    except (TypeError, ValueError):
        raise _fail(ctx, f"connection {name!r}: port must be a number") from None
    return _Server(
        host=str(host),
        port=port,
        security=security,
        user=settings.get("user") or None,
        password=settings.get("password"),
        sender=settings.get("from") or None,
        ca_file=settings.get("ca_file") or None,
    )


def _fail(ctx: RunContext, message: str) -> NodeError:
    return NodeError(ctx.node_id, message, ctx.node_type)


# -- SMTP session ---------------------------------------------------------------------


class _Session:
    """One lazily opened SMTP connection; errors that concern every mail fail the node."""

    def __init__(self, ctx: RunContext, server: _Server, timeout: float) -> None:
        self.ctx = ctx
        self.server = server
        self.timeout = timeout
        self.smtp: smtplib.SMTP | None = None

    def _tls_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context()
        if self.server.ca_file:
            context.load_verify_locations(cafile=self.server.ca_file)
        return context

    def open(self) -> smtplib.SMTP:
        if self.smtp is not None:
            return self.smtp
        s, where = self.server, self.server.where
        try:
            if s.security == "tls":
                smtp: smtplib.SMTP = smtplib.SMTP_SSL(
                    s.host, s.port, timeout=self.timeout, context=self._tls_context()
                )
            else:
                smtp = smtplib.SMTP(s.host, s.port, timeout=self.timeout)
        except TimeoutError:
            raise _fail(
                self.ctx, f"SMTP server {where} did not answer within {self.timeout:g} s"
            ) from None
        except (OSError, smtplib.SMTPException) as exc:
            raise _fail(self.ctx, f"cannot reach SMTP server {where}: {_reason(exc)}") from exc
        self.smtp = smtp
        try:
            if s.security == "starttls":
                smtp.ehlo()
                smtp.starttls(context=self._tls_context())
                smtp.ehlo()
            if s.user:
                self._login(smtp)
        except smtplib.SMTPAuthenticationError as exc:
            self.close()
            # a refused login fails the same way every time: never retried
            raise PermanentError(
                self.ctx.node_id,
                f"SMTP server {where} refused the login of {s.user!r} ({_reason(exc)}); "
                "check the connection's user and password",
                self.ctx.node_type,
            ) from exc
        except smtplib.SMTPNotSupportedError as exc:
            self.close()
            raise _fail(
                self.ctx, f"SMTP server {where}: {_reason(exc)} (check the connection's security)"
            ) from exc
        except (OSError, smtplib.SMTPException) as exc:
            self.close()
            raise _fail(self.ctx, f"SMTP server {where}: {_reason(exc)}") from exc
        return smtp

    def _login(self, smtp: smtplib.SMTP) -> None:
        """Log in with ONE mechanism: ``SMTP.login`` would try the same wrong password
        again with every mechanism the server offers."""
        smtp.ehlo_or_helo_if_needed()
        offered = smtp.esmtp_features.get("auth", "").upper().split()
        mechanism = next((m for m in ("CRAM-MD5", "PLAIN", "LOGIN") if m in offered), None)
        if mechanism is None:
            raise _fail(
                self.ctx,
                f"SMTP server {self.server.where} offers no login (AUTH) method we know "
                f"({' '.join(offered) or 'none'}); with security 'none' many servers only "
                "offer it after STARTTLS",
            )
        smtp.user, smtp.password = self.server.user or "", self.server.password or ""
        method = getattr(smtp, "auth_" + mechanism.lower().replace("-", "_"))
        smtp.auth(mechanism, method, initial_response_ok=True)

    def send(self, msg: EmailMessage, sender: str, recipients: list[str]) -> None:
        where = self.server.where
        for attempt in (1, 2):
            smtp = self.open()
            try:
                smtp.send_message(msg, from_addr=sender, to_addrs=recipients)
                return
            except smtplib.SMTPServerDisconnected:
                # servers cap mails per connection: reconnect once, this is no retry
                self.close()
                if attempt == 2:
                    raise _fail(self.ctx, f"SMTP server {where} closed the connection") from None
            except smtplib.SMTPRecipientsRefused as exc:
                refused = ", ".join(f"{a} ({_reason(e)})" for a, e in exc.recipients.items())
                raise _RecordProblem(f"recipients refused: {refused}") from exc
            except smtplib.SMTPSenderRefused as exc:
                if 400 <= exc.smtp_code < 500 or exc.smtp_code == 530:
                    raise _fail(self.ctx, f"SMTP server {where}: {_reason(exc)}") from exc
                raise _RecordProblem(f"sender {sender!r} refused: {_reason(exc)}") from exc
            except smtplib.SMTPDataError as exc:
                raise _RecordProblem(f"message refused: {_reason(exc)}") from exc
            except TimeoutError:
                self.close()
                raise _fail(
                    self.ctx, f"SMTP server {where} did not answer within {self.timeout:g} s"
                ) from None
            except (OSError, smtplib.SMTPException) as exc:
                self.close()
                raise _fail(self.ctx, f"SMTP server {where}: {_reason(exc)}") from exc

    def close(self) -> None:
        smtp, self.smtp = self.smtp, None
        if smtp is None:
            return
        try:
            smtp.quit()
        except (OSError, smtplib.SMTPException):
            smtp.close()


def _reason(exc: BaseException | tuple[int, bytes]) -> str:
    """An SMTP reply as 'code text', anything else by its message."""
    code, text = getattr(exc, "smtp_code", None), getattr(exc, "smtp_error", None)
    if isinstance(exc, tuple):
        code, text = exc
    if code is not None and text is not None:
        if isinstance(text, bytes):
            text = text.decode("utf-8", "replace")
        return f"{code} {text}"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__


# -- building a mail ------------------------------------------------------------------


class _Mailer:
    """Compiled templates plus what a mail needs besides them (sender, allowed folders)."""

    def __init__(self, ctx: RunContext, config: Mapping[str, Any], server: _Server) -> None:
        self.ctx = ctx
        self.html = config.get("format") == "html"
        self.templates = {}
        for name in _TEMPLATE_FIELDS:
            source = config.get(name) or ""
            try:
                self.templates[name] = _env(name, config).from_string(source)
            except TemplateSyntaxError as exc:
                raise _fail(ctx, f"{name}: template error on line {exc.lineno}: {exc}") from exc
        self.default_sender = server.sender or server.user
        self.fields: Sequence[str] = config.get("attachments") or ()
        folders = [ctx.data_dir, ctx.work_dir, ctx.flow_dir]
        folders += [ctx.resolve_path(f) for f in config.get("attachment_folders") or ()]
        self.folders = [Path(os.path.realpath(f)) for f in folders if f is not None]

    def render(self, name: str, context: Mapping[str, Any]) -> str:
        try:
            return self.templates[name].render(context)
        except SecurityError as exc:
            # the template itself is at fault, so every record would fail the same way
            raise _fail(self.ctx, f"{name}: template not allowed (sandbox): {exc}") from exc
        except TemplateError as exc:
            raise _RecordProblem(f"{name}: {exc}") from exc
        except Exception as exc:
            raise _RecordProblem(f"{name}: {type(exc).__name__}: {exc}") from exc

    def build(
        self, context: Mapping[str, Any], records: Sequence[Mapping[str, Any]]
    ) -> tuple[EmailMessage, str, list[str], dict[str, Any]]:
        """(message, envelope sender, envelope recipients, output record)."""
        sender = self.render("from", context).strip() or self.default_sender or ""
        from_addrs = _addresses("from", sender)
        if len(from_addrs) != 1:
            raise _RecordProblem(
                "from: no sender (set 'from' or the connection's 'from' or 'user')"
                if not from_addrs
                else "from: give exactly one sender"
            )
        to = _addresses("to", self.render("to", context))
        cc = _addresses("cc", self.render("cc", context))
        bcc = _addresses("bcc", self.render("bcc", context))
        if not to and not cc and not bcc:
            raise _RecordProblem("to: no recipient")
        subject = " ".join(self.render("subject", context).split())
        body = self.render("body", context)

        msg = EmailMessage()
        msg["From"] = from_addrs[0]
        if to:
            msg["To"] = to
        if cc:
            msg["Cc"] = cc
        msg["Subject"] = subject
        domain = from_addrs[0].domain or None
        message_id = make_msgid(domain=domain)
        msg["Message-ID"] = message_id
        msg.set_content(body, subtype="html" if self.html else "plain")
        for record in records:
            for path in self._attachment_paths(record):
                self._attach(msg, path)
        recipients = [a.addr_spec for a in (*to, *cc, *bcc)]
        shown = ", ".join(str(a) for a in to)
        return (
            msg,
            from_addrs[0].addr_spec,
            recipients,
            {
                "to": shown,
                "subject": subject,
                "message_id": message_id,
            },
        )

    def _attachment_paths(self, record: Mapping[str, Any]) -> Iterator[Path]:
        for name in self.fields:
            if name not in record:
                raise _RecordProblem(f"attachments: record has no field {name!r}")
            value = record[name]
            values = value if isinstance(value, list | tuple) else [value]
            for item in values:
                if item is None or item == "":
                    continue
                if not isinstance(item, str | os.PathLike):
                    raise _RecordProblem(f"attachments: field {name!r} holds no path")
                yield self._allowed(name, Path(os.path.realpath(self.ctx.resolve_path(item))))

    def _allowed(self, name: str, path: Path) -> Path:
        if not any(path.is_relative_to(folder) for folder in self.folders):
            raise _RecordProblem(
                f"attachments: {path} (field {name!r}) is outside the allowed folders "
                "(data dir, work dir, flow folder, 'Allowed attachment folders')"
            )
        if not path.is_file():
            raise _RecordProblem(f"attachments: file not found: {path} (field {name!r})")
        return path

    @staticmethod
    def _attach(msg: EmailMessage, path: Path) -> None:
        kind, encoding = mimetypes.guess_type(path.name)
        if kind is None or encoding is not None:
            kind = "application/octet-stream"
        maintype, subtype = kind.split("/", 1)
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise _RecordProblem(f"attachments: cannot read {path}: {_reason(exc)}") from exc
        msg.add_attachment(data, maintype=maintype, subtype=subtype, filename=path.name)


def _addresses(field: str, text: str) -> list[Address]:
    """Parse 'Name <a@b>, c@d' into addresses; anything without an @ is a record problem."""
    text = text.strip()
    if not text:
        return []
    found: list[Address] = []
    for display, addr in getaddresses([text.replace(";", ",")]):
        if not addr and not display:
            continue
        local, at, domain = addr.rpartition("@")
        if not at or not local or not domain or any(c.isspace() for c in addr):
            raise _RecordProblem(f"{field}: {addr or display!r} is not a mail address")
        try:
            found.append(Address(display_name=display, username=local, domain=domain))
        except (ValueError, IndexError) as exc:
            raise _RecordProblem(f"{field}: {addr!r} is not a mail address ({exc})") from exc
    return found


# -- the node -------------------------------------------------------------------------


def send_mail(ctx: RunContext, config: dict[str, Any], inputs: Inputs) -> Outputs:
    """Send mails while the output is drained; one SMTP connection for the whole run."""

    def stream() -> Iterator[Batch]:
        server = _server(ctx, config["connection"])
        mailer = _Mailer(ctx, config, server)
        session = _Session(ctx, server, float(config.get("smtp_timeout", 30)))
        try:
            if config.get("mode") == "per_run":
                yield from _per_run(ctx, config, mailer, session, inputs["in"])
            else:
                yield from _per_record(ctx, mailer, session, inputs["in"])
        finally:
            session.close()

    return {"out": stream()}


def _per_record(
    ctx: RunContext, mailer: _Mailer, session: _Session, batches: Iterable[Batch]
) -> Iterator[Batch]:
    params = ctx.params
    sent = 0
    for batch in batches:
        ctx.check_cancelled()
        out: Batch = []
        for record in batch:
            try:
                msg, sender, recipients, result = mailer.build(
                    {**record, "record": record, "params": params}, (record,)
                )
                session.send(msg, sender, recipients)
            except _RecordProblem as exc:
                ctx.reject(record, exc)
                continue
            out.append(result)
        sent += len(out)
        ctx.progress(len(batch))
        ctx.status(f"{sent} sent")
        if out:
            yield out


def _per_run(
    ctx: RunContext,
    config: Mapping[str, Any],
    mailer: _Mailer,
    session: _Session,
    batches: Iterable[Batch],
) -> Iterator[Batch]:
    records: Batch = []
    for batch in batches:
        ctx.check_cancelled()
        records.extend(batch)
        ctx.progress(len(batch))
    if not records and not config.get("send_empty"):
        ctx.logger.info("no records came in: no mail sent")
        return
    context = {"records": records, "count": len(records), "params": ctx.params}
    try:
        msg, sender, recipients, result = mailer.build(context, records)
        session.send(msg, sender, recipients)
    except _RecordProblem as exc:
        # the one mail stands for every record: they all failed with it
        for record in records:
            ctx.reject(record, exc)
        if not records:
            raise _fail(ctx, str(exc)) from exc
        return
    ctx.status("1 sent")
    yield [result]


MAIL_SEND = NodeSpec(
    type="mail.send",
    title="Send mail",
    category="mail",
    description="Sends mail over SMTP (STARTTLS, TLS or plain) through a stored connection: "
    "one per record or one per run, with Jinja2 templates for addresses, subject and a text "
    "or HTML body, and files from the records as attachments. Outputs one record per mail "
    "sent: to, subject, message_id.",
    inputs=("in",),
    outputs=("out",),
    config_schema=SEND_SCHEMA,
    run=send_mail,
    check=check_send,
)

NODES = (MAIL_SEND,)


# -- connection type ------------------------------------------------------------------


def try_smtp_connection(settings: dict[str, Any], timeout: float) -> str:
    """``flowmill connection test`` for SMTP: connect, STARTTLS/TLS as configured, log in.

    Raises:
        FlowmillError: with what went wrong and where (never the password).
    """
    # the node's own helpers want a run context only to name the node in their errors
    shim: Any = SimpleNamespace(
        node_id="connection test", node_type=None, connection=lambda _name: settings
    )
    try:
        server = _server(shim, "under test")
        session = _Session(shim, server, timeout)
        try:
            session.open()
        finally:
            session.close()
    except NodeError as exc:
        raise FlowmillError(exc.message) from None
    login = f"logged in as {server.user!r}" if server.user else "no login configured"
    return f"connected to SMTP server {server.where} ({server.security}); {login}"


def _looks_like_smtp(settings: dict[str, Any]) -> bool:
    host = str(settings.get("host") or "").lower()
    return host.startswith("smtp.") or str(settings.get("port")) in {"25", "465", "587"}


CONNECTION_TYPES = (
    ConnectionType(
        kind="smtp",
        title="SMTP server (sending mail)",
        test=try_smtp_connection,
        description="Settings: host, port (default 587/465/25 by security), user, password, "
        "security (starttls | tls | none; default starttls), from (default sender), ca_file "
        "(optional PEM).",
        detect=_looks_like_smtp,
    ),
)
