"""Mail trigger: poll an IMAP mailbox, one job per new message.

The listener (``listen``) runs in the server process: it logs in over TLS (or STARTTLS),
searches the mailbox every ``poll_seconds``, saves each new message as a ``.eml`` file plus
its attachments under the trigger's work directory and fires one job per message. When the
job has ended, the message is marked seen, moved or deleted (``after``), on success only:
a message whose job failed stays as it was (unseen, in its folder) so a person notices it,
and is not fired again; the failed job can be retried from the dashboard.

"New" is decided by UID: the trigger state keeps the mailbox's UIDVALIDITY, the highest UID
already fired and the messages whose job has not ended yet. A restarted listener never
fires a message twice (at most once: the state is saved before the job is queued) and
re-attaches to the jobs still running. A new UIDVALIDITY (the mailbox was re-created)
starts over.

Attachment file names come from the sender and are never trusted: only a sanitised base
name is used, inside the message's own folder.
"""

from __future__ import annotations

import base64
import contextlib
import email
import email.policy
import hashlib
import html as html_lib
import imaplib
import queue
import re
import shutil
import ssl
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from email.message import EmailMessage, Message
from pathlib import Path
from typing import Any

from engine.errors import FlowmillError, PermanentError
from engine.spec import ConfigProblem, ConnectionType, NodeSpec
from nodes.triggers import event_records

__all__ = [
    "CONNECTION_TYPES",
    "MAIL_TRIGGER",
    "NODES",
    "TRIGGER_SCHEMA",
    "check_trigger",
    "listen",
    "parse_message",
    "safe_file_name",
    "try_connection",
]

SECURITIES = ("tls", "starttls", "plain")
_DEFAULT_PORTS = {"tls": 993, "starttls": 143, "plain": 143}
AFTER = ("seen", "move", "delete", "keep")
MB = 1024 * 1024

TRIGGER_SCHEMA: dict[str, Any] = {
    "type": "object",
    "title": "Mail received (IMAP)",
    "additionalProperties": False,
    "required": ["connection"],
    "properties": {
        "connection": {
            "type": "string",
            "minLength": 1,
            "format": "connection",
            "title": "Connection",
            "description": "Name of a stored IMAP connection with the settings host, port "
            "(default 993 for tls, 143 otherwise), user, password, security (tls | starttls "
            "| plain; default tls) and optionally ca_file (a PEM file of certificates to "
            "trust besides the system ones).",
        },
        "mailbox": {
            "type": "string",
            "minLength": 1,
            "default": "INBOX",
            "title": "Mailbox",
            "description": "The folder to watch, e.g. INBOX or INBOX.Orders (as the server "
            "names it: the level separator is '.' or '/' depending on the server).",
        },
        "poll_seconds": {
            "type": "number",
            "minimum": 1,
            "maximum": 86400,
            "default": 60,
            "title": "Poll every (s)",
            "description": "Seconds between two looks into the mailbox.",
        },
        "search": {
            "type": "string",
            "minLength": 1,
            "default": "UNSEEN",
            "title": "Search",
            "description": "IMAP search criteria (RFC 3501) a message must match, e.g. "
            'UNSEEN, or UNSEEN SUBJECT "Order". Only messages that arrived after the ones '
            "already fired count as new.",
        },
        "after": {
            "type": "string",
            "enum": list(AFTER),
            "default": "seen",
            "title": "After the job succeeded",
            "description": "seen: mark the message seen; move: move it to 'Move to'; delete: "
            "delete it; keep: leave it as it is. A message whose job failed is always left "
            "as it is (unseen) and not fired again.",
        },
        "move_to": {
            "type": "string",
            "minLength": 1,
            "title": "Move to",
            "description": "With after = move: the folder processed messages go to, e.g. "
            "Processed or INBOX.Done (made when missing).",
        },
        "only_from": {
            "type": "array",
            "items": {"type": "string", "minLength": 1},
            "uniqueItems": True,
            "default": [],
            "title": "Only from",
            "description": "Sender addresses (orders@example.com) or domains (@example.com) "
            "to accept; messages from others are left alone and start no job. Empty: every "
            "sender. The From header can be forged: this is a filter, not authentication.",
        },
        "max_attachment_mb": {
            "type": "number",
            "exclusiveMinimum": 0,
            "maximum": 2048,
            "default": 25,
            "title": "Largest attachment (MB)",
            "description": "Bigger attachments are not saved; the record lists them under "
            "skipped_attachments.",
        },
        "max_message_mb": {
            "type": "number",
            "exclusiveMinimum": 0,
            "maximum": 4096,
            "default": 100,
            "title": "Largest message (MB)",
            "description": "Bigger messages are not downloaded and start no job (the "
            "listener logs an error); they stay in the mailbox as they are.",
        },
        "imap_timeout": {
            "type": "number",
            "exclusiveMinimum": 0,
            "maximum": 3600,
            "default": 30,
            "title": "IMAP timeout (s)",
            "description": "Seconds to wait for the server on connect and on every reply.",
        },
    },
}

_ADDRESS = re.compile(r"^[^@\s]*@[^@\s]+$")


def check_trigger(config: Mapping[str, Any]) -> list[ConfigProblem]:
    """Static problems: a move without a target, a search the server cannot take."""
    problems: list[ConfigProblem] = []
    after = config.get("after", "seen")
    move_to = config.get("move_to")
    if after == "move" and not move_to:
        problems.append(ConfigProblem("move_to", "after = move needs the folder to move to"))
    if move_to and after != "move":
        problems.append(ConfigProblem("move_to", "only used with after = move"))
    if move_to and move_to == config.get("mailbox", "INBOX"):
        problems.append(ConfigProblem("move_to", "is the watched mailbox itself"))
    search = config.get("search", "UNSEEN")
    if isinstance(search, str):
        if any(c in search for c in "\r\n\x00"):
            problems.append(ConfigProblem("search", "must be one line"))
        elif not search.isascii():
            problems.append(
                ConfigProblem("search", "only ASCII: non-ASCII search terms are not supported")
            )
        elif search.count('"') % 2:
            problems.append(ConfigProblem("search", 'unbalanced quote (")'))
    for entry in config.get("only_from") or ():
        if isinstance(entry, str) and not _ADDRESS.match(entry.strip()):
            problems.append(ConfigProblem("only_from", f"{entry!r} is no address or @domain"))
    return problems


# -- connection -------------------------------------------------------------------------


class ImapProblem(FlowmillError):
    """The IMAP server cannot be reached or used; the message names host and port."""


class LoginRefused(ImapProblem):
    """The server refused the login: trying again with the same settings cannot help."""


@dataclass(frozen=True)
class Account:
    host: str
    port: int
    security: str
    user: str
    password: str
    ca_file: str | None

    @property
    def where(self) -> str:
        return f"{self.host}:{self.port}"

    @classmethod
    def from_settings(cls, settings: Mapping[str, Any], name: str = "") -> Account:
        what = f"connection {name!r}" if name else "IMAP connection"
        security = str(settings.get("security") or "tls").lower()
        security = "plain" if security == "none" else security  # mail.send's spelling
        if security not in SECURITIES:
            raise ImapProblem(f"{what}: security must be one of {', '.join(SECURITIES)}")
        if not settings.get("host"):
            raise ImapProblem(f"{what} has no 'host'")
        if not settings.get("user"):
            raise ImapProblem(f"{what} has no 'user'")
        try:
            port = int(settings.get("port") or _DEFAULT_PORTS[security])
        except (TypeError, ValueError):
            raise ImapProblem(f"{what}: port must be a number") from None
        return cls(
            host=str(settings["host"]),
            port=port,
            security=security,
            user=str(settings["user"]),
            password=str(settings.get("password") or ""),
            ca_file=settings.get("ca_file") or None,
        )


def _text(value: Any) -> str:
    """An imaplib reply (bytes, list of bytes, exception) as text."""
    if isinstance(value, list | tuple):
        return " ".join(_text(v) for v in value if v is not None)
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)


def _quote(mailbox: str) -> str:
    """A mailbox name as an IMAP quoted string (imaplib sends arguments as they are)."""
    name = _utf7(mailbox)
    return '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _utf7(name: str) -> str:
    """IMAP's modified UTF-7 for mailbox names (RFC 3501 5.1.3): 'Geschäft' → 'Gesch&AOQ-ft'."""
    out, chunk = [], []

    def flush() -> None:
        if chunk:
            raw = "".join(chunk).encode("utf-16-be")
            out.append("&" + base64.b64encode(raw).decode().rstrip("=").replace("/", ",") + "-")
            chunk.clear()

    for ch in name:
        if 0x20 <= ord(ch) <= 0x7E:
            flush()
            out.append("&-" if ch == "&" else ch)
        else:
            chunk.append(ch)
    flush()
    return "".join(out)


def connect(account: Account, timeout: float) -> imaplib.IMAP4:
    """A logged-in IMAP connection.

    Raises:
        LoginRefused: the server refused user or password (the message has no password).
        ImapProblem: the server cannot be reached, TLS failed, or it did not answer.
    """
    context = ssl.create_default_context()
    if account.ca_file:
        try:
            context.load_verify_locations(cafile=account.ca_file)
        except (OSError, ssl.SSLError) as exc:
            raise ImapProblem(f"cannot read ca_file {account.ca_file}: {exc}") from exc
    where = account.where
    try:
        if account.security == "tls":
            imap: imaplib.IMAP4 = imaplib.IMAP4_SSL(
                account.host, account.port, ssl_context=context, timeout=timeout
            )
        else:
            imap = imaplib.IMAP4(account.host, account.port, timeout=timeout)
    except TimeoutError:
        raise ImapProblem(f"IMAP server {where} did not answer within {timeout:g} s") from None
    except ssl.SSLError as exc:
        raise ImapProblem(f"IMAP server {where}: {_tls_failed(exc)}") from exc
    except (OSError, imaplib.IMAP4.error) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else _text(exc)
        raise ImapProblem(f"cannot reach IMAP server {where}: {reason}") from exc
    try:
        if account.security == "starttls":
            if "STARTTLS" not in imap.capabilities:
                raise ImapProblem(
                    f"IMAP server {where} does not offer STARTTLS (check the connection's "
                    "security and port)"
                )
            imap.starttls(context)
        _login(imap, account)
    except ssl.SSLError as exc:
        _close(imap)
        raise ImapProblem(f"IMAP server {where}: {_tls_failed(exc)}") from exc
    except (TimeoutError, OSError, imaplib.IMAP4.error) as exc:
        _close(imap)
        raise ImapProblem(f"IMAP server {where}: STARTTLS failed: {_text(exc)}") from exc
    except BaseException:
        _close(imap)
        raise
    return imap


def _tls_failed(exc: ssl.SSLError) -> str:
    if isinstance(exc, ssl.SSLCertVerificationError):
        return (
            f"TLS failed: certificate verify failed: {exc.verify_message}; to trust a private "
            "or self-signed certificate, set the connection's ca_file"
        )
    return f"TLS failed: {exc.reason or exc}"


def _login(imap: imaplib.IMAP4, account: Account) -> None:
    where = account.where
    try:
        if account.password.isascii() and account.user.isascii():
            imap.login(account.user, account.password)
        else:  # LOGIN takes ASCII only; SASL PLAIN carries UTF-8
            secret = f"\0{account.user}\0{account.password}".encode()
            imap.authenticate("PLAIN", lambda _challenge: secret)
    except imaplib.IMAP4.abort as exc:
        raise ImapProblem(f"IMAP server {where} closed the connection: {_text(exc)}") from exc
    except imaplib.IMAP4.error as exc:
        hint = (
            "; the server takes no login without TLS: use security tls or starttls"
            if account.security == "plain"
            else "; check the connection's user and password"
        )
        raise LoginRefused(
            f"IMAP server {where} refused the login of {account.user!r} ({_text(exc)}){hint}"
        ) from None  # imaplib's traceback locals would hold the password
    except TimeoutError:
        raise ImapProblem(f"IMAP server {where} did not answer the login in time") from None
    except (OSError, ssl.SSLError) as exc:
        raise ImapProblem(f"IMAP server {where}: {exc}") from exc


def _close(imap: imaplib.IMAP4) -> None:
    try:
        imap.logout()
    except (OSError, imaplib.IMAP4.error, ValueError):
        with contextlib.suppress(OSError):
            imap.shutdown()


def _ok(account: Account, what: str, reply: tuple[str, list[Any]]) -> list[Any]:
    typ, data = reply
    if typ != "OK":
        raise ImapProblem(f"IMAP server {account.where}: {what} failed: {_text(data)}")
    return data


def try_connection(settings: dict[str, Any], timeout: float) -> str:
    """``flowmill connection test`` for IMAP: log in, open INBOX read-only, count."""
    account = Account.from_settings(settings)
    imap = connect(account, timeout)
    try:
        data = _ok(account, "EXAMINE INBOX", imap.select("INBOX", readonly=True))
        count = int(_text(data[0]) or 0)
        unseen = _ok(account, "SEARCH UNSEEN", imap.search(None, "UNSEEN"))
        n_unseen = len(_text(unseen[0]).split())
    finally:
        _close(imap)
    return (
        f"logged in to IMAP server {account.where} ({account.security}) as {account.user!r}; "
        f"INBOX holds {count} message{'s' if count != 1 else ''} ({n_unseen} unseen)"
    )


def _looks_like_imap(settings: dict[str, Any]) -> bool:
    host = str(settings.get("host") or "").lower()
    return host.startswith("imap.") or str(settings.get("port")) in {"143", "993"}


# -- reading a message --------------------------------------------------------------------

_UNSAFE = re.compile(r"[^\w.\- ()+,@=]")
_MAX_NAME = 120


def safe_file_name(name: str | None, fallback: str) -> str:
    """A file name that stays where it is put: no folders, no dot names, no control chars.

    >>> safe_file_name("../../etc/passwd", "attachment-1")
    'passwd'
    """
    base = (name or "").replace("\\", "/").split("/")[-1]
    base = _UNSAFE.sub("_", base).strip(" .")
    if not base:
        base = fallback
    if len(base) > _MAX_NAME:
        stem, dot, ext = base.rpartition(".")
        ext = ext[:16] if dot and stem else ""
        base = base[: _MAX_NAME - len(ext) - 1].rstrip(" .") + ("." + ext if ext else "")
    return base


def _unique(folder: Path, name: str) -> Path:
    path = folder / name
    stem, dot, ext = name.rpartition(".")
    if not dot or not stem:
        stem, ext = name, ""
    n = 2
    while path.exists():
        path = folder / (f"{stem} ({n}).{ext}" if ext else f"{stem} ({n})")
        n += 1
    return path


def _file_record(path: Path, name: str, content_type: str, data: bytes) -> dict[str, Any]:
    return {
        "path": str(path),
        "name": name,
        "size": len(data),
        "content_type": content_type,
        "sha256": hashlib.sha256(data).hexdigest(),
    }


def _content(part: Message) -> str:
    try:
        content = part.get_content()  # type: ignore[attr-defined]
    except (LookupError, UnicodeError, ValueError):  # unknown or lying charset
        payload = part.get_payload(decode=True) or b""
        content = payload.decode("utf-8", "replace") if isinstance(payload, bytes) else ""
    # mail travels with CRLF line ends; records carry the text as Python writes it
    return content.replace("\r\n", "\n") if isinstance(content, str) else ""


def _html_to_text(markup: str) -> str:
    markup = re.sub(r"(?is)<(script|style)\b.*?</\1\s*>", " ", markup)
    markup = re.sub(r"(?i)<br\s*/?>|</p\s*>|</div\s*>|</tr\s*>|</h\d\s*>", "\n", markup)
    text = html_lib.unescape(re.sub(r"<[^>]*>", "", markup))
    return "\n".join(line.strip() for line in text.splitlines()).strip()


def _header(msg: EmailMessage, name: str) -> str:
    """A header decoded ('=?utf-8?q?M=C3=BCller?=' → 'Müller'), on one line; '' if absent."""
    try:
        value = msg.get(name)
    except Exception:  # so broken that the parser gives up on it: keep the raw text
        value = next((v for k, v in msg.raw_items() if k.lower() == name.lower()), None)
    return " ".join(str(value).split()) if value is not None else ""


def _addresses(msg: EmailMessage, name: str) -> list[str]:
    try:
        header = msg.get(name)
        return [a.addr_spec.lower() for a in getattr(header, "addresses", ()) if a.addr_spec]
    except Exception:
        return []


def _leaves(msg: Message) -> Iterator[Message]:
    """Every non-multipart part; an attached message (message/rfc822) counts as one."""
    if msg.is_multipart() and msg.get_content_maintype() == "multipart":
        for part in msg.get_payload():  # type: ignore[union-attr]
            yield from _leaves(part)
    else:
        yield msg


def parse_message(raw: bytes, folder: Path, *, max_attachment: int = 25 * MB) -> dict[str, Any]:
    """The record of one mail; writes ``message.eml`` and the attachments into ``folder``."""
    if folder.exists():  # left by an attempt that never fired: start clean
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    eml = folder / "message.eml"
    eml.write_bytes(raw)
    msg = email.message_from_bytes(raw, policy=email.policy.default)
    assert isinstance(msg, EmailMessage)
    plain = msg.get_body(("plain",))
    rich = msg.get_body(("html",))
    text = _content(plain) if plain is not None else ""
    html = _content(rich) if rich is not None else None
    if plain is None and html:
        text = _html_to_text(html)

    files = folder / "attachments"
    attachments: list[dict[str, Any]] = []
    skipped: list[dict[str, Any]] = []
    for n, part in enumerate(_leaves(msg), 1):
        if part is plain or part is rich:
            continue
        disposition = part.get_content_disposition()
        filename = part.get_filename()
        if disposition != "attachment" and not filename and part.get_content_maintype() == "text":
            continue  # an alternative text part, not a file
        content_type = part.get_content_type()
        if content_type == "message/rfc822":
            inner = part.get_payload()
            inner = inner[0] if isinstance(inner, list) else inner
            data = inner.as_bytes() if isinstance(inner, Message) else b""
        else:
            data = part.get_payload(decode=True) or b""
        original = str(filename) if filename else ""
        ext = ".eml" if content_type == "message/rfc822" else ""
        name = safe_file_name(original, f"attachment-{n}{ext}")
        if len(data) > max_attachment:
            skipped.append(
                {"name": name, "original_name": original, "size": len(data),
                 "content_type": content_type, "reason": "larger than max_attachment_mb"}
            )  # fmt: skip
            continue
        files.mkdir(exist_ok=True)
        path = _unique(files, name)
        # belt and braces: the name has no separators, yet check containment anyway
        if path.resolve().parent != files.resolve():
            raise ImapProblem(f"attachment name {original!r} leaves the message folder")
        path.write_bytes(data)
        record = _file_record(path, path.name, content_type, data)
        record["original_name"] = original
        attachments.append(record)

    date = None
    try:
        moment = msg["Date"].datetime if msg["Date"] is not None else None
        date = moment.isoformat() if moment is not None else None
    except Exception:  # an unreadable Date header: None rather than no job
        date = None
    senders = _addresses(msg, "From")
    return {
        "from": _header(msg, "From"),
        "from_address": senders[0] if senders else "",
        "to": _header(msg, "To"),
        "cc": _header(msg, "Cc"),
        "subject": _header(msg, "Subject"),
        "date": date,
        "message_id": _header(msg, "Message-ID"),
        "text": text,
        "html": html,
        "eml": _file_record(eml, "message.eml", "message/rfc822", raw),
        "attachments": attachments,
        "skipped_attachments": skipped,
    }


def _sender_allowed(sender: str, only_from: list[str]) -> bool:
    if not only_from:
        return True
    sender = sender.lower()
    for entry in only_from:
        entry = entry.strip().lower()
        if entry.startswith("@"):
            if sender.endswith(entry):
                return True
        elif sender == entry:
            return True
    return False


# -- the listener -------------------------------------------------------------------------

_FETCH_UID = re.compile(rb"UID (\d+)")
_FETCH_SIZE = re.compile(rb"RFC822\.SIZE (\d+)")


class _Poller:
    """One IMAP session of the listener; everything IMAP happens in the listener's thread
    (imaplib is not thread-safe), so job outcomes arrive through a queue."""

    def __init__(self, ctx: Any) -> None:
        self.ctx = ctx
        self.config = ctx.config
        self.account = Account.from_settings(
            ctx.connection(self.config["connection"]), self.config["connection"]
        )
        self.mailbox = self.config.get("mailbox") or "INBOX"
        self.after = self.config.get("after") or "seen"
        self.timeout = float(self.config.get("imap_timeout") or 30)
        self.outcomes: queue.SimpleQueue[tuple[int, Any]] = queue.SimpleQueue()
        self.imap: imaplib.IMAP4 | None = None
        self.caps: set[str] = set()
        self.state: dict[str, Any] = {}
        self.uidvalidity = 0

    # -- session --
    def open(self) -> None:
        try:
            self.imap = connect(self.account, self.timeout)
        except LoginRefused as exc:
            raise PermanentError(self.ctx.node_id, str(exc), self.ctx.node_type) from None
        imap, where = self.imap, self.account.where
        caps = self._call("CAPABILITY", imap.capability)
        self.caps = set(_text(caps).upper().split())
        if self.after == "move":
            self._ensure_folder(self.config["move_to"])
        typ, data = self._raw("SELECT", imap.select, _quote(self.mailbox))
        if typ != "OK":
            raise ImapProblem(
                f"IMAP server {where}: cannot open mailbox {self.mailbox!r}: {_text(data)}"
            )
        validity = imap.response("UIDVALIDITY")[1]
        self.uidvalidity = int(_text(validity[0])) if validity and validity[0] else 0
        self._load_state()

    def _ensure_folder(self, name: str) -> None:
        imap = self.imap
        assert imap is not None
        found = self._call("LIST", imap.list, '""', _quote(name))
        if any(item is not None for item in found):
            return
        self.ctx.log.info("creating folder %r for processed mail", name)
        self._call(f"CREATE {name!r}", imap.create, _quote(name))

    def _raw(self, what: str, method: Any, *args: Any) -> tuple[str, list[Any]]:
        where = self.account.where
        try:
            return method(*args)
        except TimeoutError:
            raise ImapProblem(f"IMAP server {where} did not answer {what} in time") from None
        except imaplib.IMAP4.abort as exc:
            raise ImapProblem(f"IMAP server {where} dropped the connection: {_text(exc)}") from exc
        except (OSError, ssl.SSLError) as exc:
            raise ImapProblem(f"IMAP server {where}: {what}: {exc}") from exc
        except imaplib.IMAP4.error as exc:
            return "NO", [str(exc).encode()]

    def _call(self, what: str, method: Any, *args: Any) -> list[Any]:
        return _ok(self.account, what, self._raw(what, method, *args))

    def close(self) -> None:
        if self.imap is not None:
            _close(self.imap)
            self.imap = None

    # -- state --
    def _load_state(self) -> None:
        state = dict(self.ctx.load_state())
        if state and (
            state.get("uidvalidity") != self.uidvalidity or state.get("mailbox") != self.mailbox
        ):
            self.ctx.log.warning(
                "mailbox %r has a new UIDVALIDITY (or the trigger watches another mailbox): "
                "every matching message counts as new again",
                self.mailbox,
            )
            state = {}
        self.state = {
            "mailbox": self.mailbox,
            "uidvalidity": self.uidvalidity,
            "last_uid": int(state.get("last_uid", 0)),
            "pending": dict(state.get("pending") or {}),
        }
        self.ctx.save_state(self.state)
        for key, job_id in self.state["pending"].items():
            if job_id is None:
                # crashed between saving the state and queueing the job: maybe never queued
                self.ctx.log.warning(
                    "message uid %s may not have started a job (the server stopped while "
                    "queueing it); it is left as it is",
                    key,
                )
                self.outcomes.put((int(key), None))
            else:
                self._watch(int(key), int(job_id))

    def _save(self) -> None:
        self.ctx.save_state(self.state)

    def _watch(self, uid: int, job_id: int) -> None:
        self.ctx.host.watch_job(job_id, lambda job, uid=uid: self.outcomes.put((uid, job)))

    # -- polling --
    def poll(self) -> None:
        imap = self.imap
        assert imap is not None
        self._call("NOOP", imap.noop)
        data = self._call("SEARCH", imap.uid, "SEARCH", self.config.get("search") or "UNSEEN")
        uids = sorted(int(u) for u in _text(data[0] if data else b"").split())
        pending = self.state["pending"]
        new = [u for u in uids if u > self.state["last_uid"] and str(u) not in pending]
        for start in range(0, len(new), 100):
            chunk = new[start : start + 100]
            sizes = self._sizes(chunk)
            for uid in chunk:
                if self.ctx.stopping.is_set():
                    return
                self._take(uid, sizes.get(uid, 0))

    def _sizes(self, uids: list[int]) -> dict[int, int]:
        imap = self.imap
        assert imap is not None
        found: dict[int, int] = {}
        data = self._call("FETCH", imap.uid, "FETCH", ",".join(map(str, uids)), "(RFC822.SIZE)")
        for item in data:
            line = item[0] if isinstance(item, tuple) else item
            if not isinstance(line, bytes):
                continue
            uid, size = _FETCH_UID.search(line), _FETCH_SIZE.search(line)
            if uid and size:
                found[int(uid.group(1))] = int(size.group(1))
        return found

    def _take(self, uid: int, size: int) -> None:
        ctx, config = self.ctx, self.config
        limit = float(config.get("max_message_mb") or 100) * MB
        if size > limit:
            ctx.log.error(
                "message uid %s is %.1f MB, more than max_message_mb: no job, left as it is",
                uid, size / MB,
            )  # fmt: skip
            self._advance(uid)
            return
        imap = self.imap
        assert imap is not None
        data = self._call("FETCH", imap.uid, "FETCH", str(uid), "(BODY.PEEK[])")
        raw = next((item[1] for item in data if isinstance(item, tuple)), None)
        if raw is None:  # expunged meanwhile
            self._advance(uid)
            return
        folder = ctx.work_dir / f"{self.uidvalidity}-{uid}"
        try:
            record = parse_message(
                raw, folder, max_attachment=int(float(config.get("max_attachment_mb") or 25) * MB)
            )
        except OSError as exc:
            raise ImapProblem(f"cannot save message uid {uid} under {folder}: {exc}") from exc
        except Exception as exc:  # one unreadable mail must not stop the mailbox
            ctx.log.error("message uid %s cannot be read (%s): no job, left as it is", uid, exc)
            self._advance(uid)
            return
        if not _sender_allowed(record["from_address"], list(config.get("only_from") or ())):
            ctx.log.info("message uid %s from %r is not in only_from: ignored", uid, record["from"])
            self._advance(uid)
            return
        record.update(uid=uid, uidvalidity=self.uidvalidity, mailbox=self.mailbox)
        # at most once: the state says "taken" before the job exists
        self.state["pending"][str(uid)] = None
        self._advance(uid)
        job_id = ctx.fire(record, on_done=lambda job, uid=uid: self.outcomes.put((uid, job)))
        self.state["pending"][str(uid)] = job_id
        self._save()
        ctx.log.info("message uid %s (%r) started job %s", uid, record["subject"], job_id)

    def _advance(self, uid: int) -> None:
        self.state["last_uid"] = max(self.state["last_uid"], uid)
        self._save()

    # -- after the job --
    def settle(self) -> None:
        """Apply ``after`` for every job that has ended since the last look."""
        while True:
            try:
                uid, job = self.outcomes.get_nowait()
            except queue.Empty:
                return
            if str(uid) not in self.state["pending"]:
                continue  # told twice (re-attached after a restart)
            state = getattr(job, "state", None)
            if state == "succeeded":
                self._after_success(uid)
            elif job is not None:
                self.ctx.log.warning(
                    "job %s of message uid %s ended %s: the message is left unseen in %r "
                    "and not fired again (retry the job from the dashboard)",
                    job.id, uid, state, self.mailbox,
                )  # fmt: skip
            del self.state["pending"][str(uid)]
            self._save()

    def _after_success(self, uid: int) -> None:
        imap = self.imap
        assert imap is not None
        key = str(uid)
        if self.after == "seen":
            self._call("STORE", imap.uid, "STORE", key, "+FLAGS.SILENT", r"(\Seen)")
        elif self.after == "move":
            target = _quote(self.config["move_to"])
            if "MOVE" in self.caps:
                self._call("MOVE", imap.uid, "MOVE", key, target)
            else:
                self._call("COPY", imap.uid, "COPY", key, target)
                self._delete(key)
        elif self.after == "delete":
            self._delete(key)

    def _delete(self, key: str) -> None:
        imap = self.imap
        assert imap is not None
        self._call("STORE", imap.uid, "STORE", key, "+FLAGS.SILENT", r"(\Deleted)")
        if "UIDPLUS" in self.caps:
            self._call("EXPUNGE", imap.uid, "EXPUNGE", key)
        else:  # without UIDPLUS, EXPUNGE also removes what others marked deleted
            self._call("EXPUNGE", imap.expunge)


def listen(ctx: Any) -> None:
    """Poll the mailbox until ``ctx.stopping``; one job per new message."""
    try:
        poller = _Poller(ctx)
    except ImapProblem as exc:
        raise PermanentError(ctx.node_id, str(exc), ctx.node_type) from None
    try:
        poller.open()
        ctx.ready.set()
        ctx.log.info(
            "watching %s on %s as %r", poller.mailbox, poller.account.where, poller.account.user
        )
        interval = float(ctx.config.get("poll_seconds") or 60)
        while not ctx.stopping.is_set():
            poller.settle()
            poller.poll()
            deadline = time.monotonic() + interval
            while not ctx.stopping.is_set():
                poller.settle()
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                ctx.wait(min(left, 0.2))
    finally:
        poller.close()


MAIL_TRIGGER = NodeSpec(
    type="trigger.mail",
    title="Mail received (IMAP)",
    category="trigger",
    description="Starts one job per new mail in an IMAP mailbox (TLS, STARTTLS or plain), "
    "polled every few seconds. Outputs one record: from, from_address, to, cc, subject, date, "
    "text, html, message_id, uid, mailbox, eml (the raw mail as a file record) and "
    "attachments (file records: path, name, size, content_type, sha256). After the job "
    "succeeded the mail is marked seen, moved or deleted; after a failure it is left unseen.",
    outputs=("out",),
    config_schema=TRIGGER_SCHEMA,
    trigger=True,
    run=event_records,
    check=check_trigger,
    listen=listen,
)

NODES = (MAIL_TRIGGER,)

CONNECTION_TYPES = (
    ConnectionType(
        kind="imap",
        title="IMAP mailbox",
        test=try_connection,
        description="Settings: host, port (default 993 for tls, 143 otherwise), user, "
        "password, security (tls | starttls | plain; default tls), ca_file (optional PEM).",
        detect=_looks_like_imap,
    ),
)
