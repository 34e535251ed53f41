"""``trigger.tcp``: a flow that starts for each message a program sends over TCP.

It replaces the legacy "KV-Direkt-Ticker": the merchandise system sends sales messages to
TCP port 3700 and expects them to be taken over at once. The node declares the port, the
framing (how messages are cut out of the byte stream), the text encoding and how a
message becomes a record; ``flowmill serve`` listens (``listen``, in the server process)
and queues one job per message, or one per batch of messages.

Each message becomes one record: its parsed fields (``message`` for ``parse: text``, the
object's keys for ``json``, the named ``fields`` for ``fields``) plus ``_peer`` (the
sender, ``"ip:port"``) and ``_received_at`` (when its last byte arrived, ISO 8601 UTC).

How it behaves at its limits:

- a message that cannot be decoded or parsed is rejected (logged; ``NAK <reason>`` with
  ``ack: line``); the connection stays open;
- a message longer than ``max_message_bytes`` closes that connection (logged error, plus
  ``NAK too long``): memory per connection stays bounded;
- at most ``max_pending`` messages wait to be queued as jobs; when that many wait, the
  server stops reading (``when_full: wait``, TCP then slows the senders down) or answers
  ``NAK queue full`` (``when_full: nak``). A message is never dropped silently;
- replies go out in the order the messages came in on their connection;
- on stop, messages already taken are still queued (for up to a few seconds) and
  answered before the connections close; the port is free again at once. Bytes still
  unread in a connection (the queue was full) get no reply: the sender sees the close;
- a blank line (an empty message) starts no job and gets no reply; at the end of a
  connection, a last line or message without its delimiter still counts.
"""

from __future__ import annotations

import codecs
import contextlib
import errno
import json
import queue
import re
import selectors
import socket
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from engine.errors import FlowmillError
from engine.flows.format import find_unstorable_text
from engine.spec import ConfigProblem, NodeSpec
from nodes.triggers import event_records

__all__ = ["NODES", "TCP", "check_tcp", "listen_tcp", "unescape", "unescape_text"]

FRAMINGS = ("line", "length-prefixed", "delimiter")
PARSERS = ("text", "json", "fields")
MIB = 1 << 20

POLL = 0.1  # seconds: ctx.stopping is looked at least this often
RECV_SIZE = 64 * 1024
MAX_UNSENT = 64 * 1024  # replies a client does not read: stop reading its messages too
DRAIN_SECONDS = 3.0  # on stop: time to queue the messages already taken
LOGGED_REJECTS = 10  # per connection; then one summary when it closes

TCP_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["port"],
    "properties": {
        "host": {
            "type": "string",
            "minLength": 1,
            "default": "127.0.0.1",
            "examples": ["127.0.0.1", "0.0.0.0", "::1"],
            "title": "Listen on address",
            "description": "127.0.0.1: only programs on this server may send; 0.0.0.0: "
            "every network interface (senders on other machines, like the legacy "
            "ticker's merchandise system).",
        },
        "port": {
            "type": "integer",
            "minimum": 1,
            "maximum": 65535,
            "examples": [3700],
            "title": "Port",
            "description": "TCP port to listen on, e.g. 3700 (the legacy sales-message "
            "port). The server runs unprivileged: use 1024 or above.",
        },
        "framing": {
            "type": "string",
            "enum": list(FRAMINGS),
            "default": "line",
            "title": "Framing",
            "description": "How messages are cut out of the stream. line: one message "
            "per line (LF or CR LF); length-prefixed: each message follows its length in "
            "bytes as a big-endian unsigned number; delimiter: messages end with the "
            "delimiter below.",
        },
        "length_bytes": {
            "type": "integer",
            "enum": [2, 4],
            "default": 4,
            "title": "Length prefix size",
            "description": "length-prefixed only: bytes of the length before each "
            "message (4 or 2); the length counts the message only, not the prefix.",
        },
        "delimiter": {
            "type": "string",
            "minLength": 1,
            "default": "\\x03",
            "examples": ["\\x03", "\\r\\n", "\\x1e", "|"],
            "title": "Delimiter",
            "description": "delimiter only: the bytes that end each message. Escapes: "
            "\\xHH (a byte, e.g. \\x03 = ETX), \\r, \\n, \\t, \\0, \\\\.",
        },
        "encoding": {
            "type": "string",
            "minLength": 1,
            "default": "utf-8",
            "examples": ["utf-8", "cp1252", "latin-1", "ascii", "cp850"],
            "title": "Encoding",
            "description": "Text encoding of the messages. A message that is not valid in "
            "it is rejected (logged, NAK) and the connection stays open.",
        },
        "max_message_bytes": {
            "type": "integer",
            "minimum": 1,
            "maximum": 64 * MIB,
            "default": MIB,
            "title": "Longest message (bytes)",
            "description": "A longer message closes its connection with a logged error, "
            "so a broken sender cannot fill the server's memory.",
        },
        "parse": {
            "type": "string",
            "enum": list(PARSERS),
            "default": "text",
            "title": "Message format",
            "description": "text: the record is {message}; json: the message is a JSON "
            "object and becomes the record; fields: the message is split by the "
            "separator into the named fields.",
        },
        "fields": {
            "type": "array",
            "items": {"type": "string", "minLength": 1},
            "uniqueItems": True,
            "default": [],
            "examples": [["store", "register", "amount", "time"]],
            "title": "Field names",
            "description": "fields only: names of the values in a message, in order. A "
            "message with another number of values is rejected (one trailing separator "
            "is allowed).",
        },
        "separator": {
            "type": "string",
            "minLength": 1,
            "default": ";",
            "examples": [";", ",", "|", "\\t"],
            "title": "Field separator",
            "description": "fields only: the text between two values (escapes as for the "
            "delimiter, e.g. \\t).",
        },
        "batch_size": {
            "type": "integer",
            "minimum": 0,
            "maximum": 100_000,
            "default": 0,
            "title": "Batch: messages per job",
            "description": "0: one job per message. N: one job for every N messages "
            "(the run gets them as N records).",
        },
        "batch_seconds": {
            "type": "number",
            "minimum": 0,
            "maximum": 3600,
            "default": 0,
            "title": "Batch: seconds per job",
            "description": "0: no time limit. T: a batch is queued at the latest T seconds "
            "after its first message, however few it holds. With a batch size too: "
            "whichever comes first. With ack, a sender that waits for each reply before "
            "sending on needs this.",
        },
        "ack": {
            "type": "string",
            "enum": ["none", "line"],
            "default": "none",
            "title": "Reply",
            "description": "none: send nothing back; line: reply to every message, in "
            "order, once it is queued as a job (ACK text) or when it was refused (NAK "
            "text).",
        },
        "ack_text": {
            "type": "string",
            "minLength": 1,
            "default": "ACK\\n",
            "title": "ACK text",
            "description": "Reply when the message is queued as a job (escapes as for the "
            "delimiter).",
        },
        "nak_text": {
            "type": "string",
            "minLength": 1,
            "default": "NAK {reason}\\n",
            "title": "NAK text",
            "description": "Reply when the message was refused; {reason} becomes a short "
            "reason such as 'queue full', 'too long' or 'not valid cp1252'.",
        },
        "max_pending": {
            "type": "integer",
            "minimum": 1,
            "maximum": 100_000,
            "default": 1000,
            "title": "Most messages waiting",
            "description": "Messages received but not yet queued as jobs (batches being "
            "filled count too). Keeps memory bounded when the database is slow.",
        },
        "when_full": {
            "type": "string",
            "enum": ["wait", "nak"],
            "default": "wait",
            "title": "When that many wait",
            "description": "wait: stop reading until there is room (TCP slows the "
            "senders down, nothing is lost); nak: refuse each further message with NAK "
            "'queue full' (needs reply: line).",
        },
        "max_connections": {
            "type": "integer",
            "minimum": 1,
            "maximum": 10_000,
            "default": 100,
            "title": "Most connections",
            "description": "Further connections are closed at once (with NAK 'too many "
            "connections' when replies are on) and logged.",
        },
    },
}

_ESCAPES = {"n": "\n", "r": "\r", "t": "\t", "0": "\x00", "\\": "\\"}
_HEX = re.compile(r"[0-9a-fA-F]{2}")


def _escape_parts(text: str) -> list[str | int]:
    """Runs of characters, and the bytes given as ``\\xHH``."""
    parts: list[str | int] = []
    literal: list[str] = []
    i = 0
    while i < len(text):
        char = text[i]
        nxt = text[i + 1 : i + 2]
        if char != "\\":
            literal.append(char)
            i += 1
        elif nxt in _ESCAPES:
            literal.append(_ESCAPES[nxt])
            i += 2
        elif nxt == "x" and _HEX.fullmatch(text[i + 2 : i + 4]):
            parts += ["".join(literal), int(text[i + 2 : i + 4], 16)]
            literal = []
            i += 4
        else:
            raise ValueError(
                f"unknown escape {text[i : i + 4]!r} at character {i + 1} "
                "(use \\xHH, \\r, \\n, \\t, \\0 or \\\\)"
            )
    parts.append("".join(literal))
    return parts


def unescape(text: str, encoding: str = "utf-8") -> bytes:
    """The bytes a config text stands for: ``\\xHH`` is one byte, ``\\r \\n \\t \\0 \\\\``
    as in Python, every other character in ``encoding``.

    Raises:
        ValueError: an unknown escape (the message names it and where).
        UnicodeEncodeError: a character the encoding cannot hold.

    >>> unescape("\\\\x03"), unescape("ACK\\\\r\\\\n"), unescape("ü;", "cp1252")
    (b'\\x03', b'ACK\\r\\n', b'\\xfc;')
    """
    return b"".join(
        bytes([p]) if isinstance(p, int) else p.encode(encoding) for p in _escape_parts(text)
    )


def unescape_text(text: str) -> str:
    """Like ``unescape`` for text compared after decoding: ``\\xHH`` is the character U+00HH."""
    return "".join(chr(p) if isinstance(p, int) else p for p in _escape_parts(text))


class _BadConfig(FlowmillError):
    def __init__(self, field_name: str, message: str) -> None:
        super().__init__(f"{field_name}: {message}")
        self.field = field_name
        self.message = message


@dataclass(frozen=True)
class _Settings:
    """The config, checked and turned into what the server needs (bytes, numbers)."""

    host: str
    port: int
    framing: str
    length_bytes: int
    delimiter: bytes
    encoding: str
    max_bytes: int
    parse: str
    fields: tuple[str, ...]
    separator: str
    batch_size: int
    batch_seconds: float
    ack: bool
    ack_text: bytes
    nak_before: bytes  # the NAK text around its {reason}
    nak_after: bytes
    max_pending: int
    nak_when_full: bool
    max_connections: int

    @property
    def batching(self) -> bool:
        return self.batch_size > 0 or self.batch_seconds > 0

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> _Settings:
        """Raises ``_BadConfig`` naming the field."""
        encoding = str(config.get("encoding") or "utf-8")
        try:
            codecs.lookup(encoding)
        except LookupError:
            raise _BadConfig("encoding", f"unknown encoding {encoding!r}") from None

        def escaped(name: str, default: str) -> bytes:
            try:
                return unescape(str(config.get(name, default)), encoding)
            except ValueError as exc:
                raise _BadConfig(name, str(exc)) from None
            except UnicodeEncodeError as exc:
                raise _BadConfig(name, f"cannot be written in {encoding}: {exc.reason}") from None

        framing = config.get("framing", "line")
        delimiter = escaped("delimiter", "\\x03") if framing == "delimiter" else b"\n"
        if not delimiter:
            raise _BadConfig("delimiter", "give at least one byte")
        parse = config.get("parse", "text")
        fields = tuple(str(f) for f in config.get("fields") or ())
        if parse == "fields" and not fields:
            raise _BadConfig("fields", "name the fields of a message (e.g. store, amount)")
        try:
            separator = unescape_text(str(config.get("separator", ";")))
        except ValueError as exc:
            raise _BadConfig("separator", str(exc)) from None
        nak = str(config.get("nak_text", "NAK {reason}\\n"))
        before, _, after = nak.partition("{reason}")
        for name, text in (("nak_text", before), ("nak_text", after)):
            try:
                unescape(text, encoding)
            except (ValueError, UnicodeEncodeError) as exc:
                raise _BadConfig(name, str(exc)) from None
        ack = config.get("ack", "none") == "line"
        nak_when_full = config.get("when_full", "wait") == "nak"
        if nak_when_full and not ack:
            raise _BadConfig(
                "when_full",
                "nak needs reply 'line' (without replies a full queue could "
                "only drop messages silently); use wait",
            )
        max_pending = int(config.get("max_pending", 1000))
        batch_size = int(config.get("batch_size", 0))
        if batch_size > max_pending:
            raise _BadConfig(
                "batch_size",
                f"{batch_size} is more than 'most messages waiting' "
                f"({max_pending}): a batch could never fill",
            )
        return cls(
            host=str(config.get("host") or "127.0.0.1"),
            port=int(config["port"]),
            framing=framing,
            length_bytes=int(config.get("length_bytes", 4)),
            delimiter=delimiter,
            encoding=encoding,
            max_bytes=int(config.get("max_message_bytes", MIB)),
            parse=parse,
            fields=fields,
            separator=separator,
            batch_size=batch_size,
            batch_seconds=float(config.get("batch_seconds", 0)),
            ack=ack,
            ack_text=escaped("ack_text", "ACK\\n"),
            nak_before=unescape(before, encoding),
            nak_after=unescape(after, encoding),
            max_pending=max_pending,
            nak_when_full=nak_when_full,
            max_connections=int(config.get("max_connections", 100)),
        )

    def nak(self, reason: str) -> bytes:
        reason = " ".join(reason.split())  # one line, whatever the reason held
        return self.nak_before + reason.encode(self.encoding, "replace") + self.nak_after


def check_tcp(config: dict[str, Any]) -> list[ConfigProblem]:
    """Problems a saved ``trigger.tcp`` config would have when the server listens."""
    problems = []
    # a "${param}" value is only known at listen time (the param's value is checked then)
    config = {k: v for k, v in config.items() if not (isinstance(v, str) and "${" in v)}
    config.setdefault("port", 1024)
    port = config.get("port")
    if isinstance(port, int) and port < 1024:
        problems.append(
            ConfigProblem(
                "port",
                f"{port} is a privileged port and Flowmill runs unprivileged: use "
                "1024 or above (e.g. 3700)",
            )
        )
    try:
        _Settings.from_config(config)
    except _BadConfig as exc:
        problems.append(ConfigProblem(exc.field, exc.message))
    return problems


# -- the server -------------------------------------------------------------------------


class _TooLong(Exception):
    def __init__(self, size: int) -> None:
        super().__init__(size)
        self.size = size


class _Rejected(Exception):
    """A message that cannot become a record; ``str`` is the NAK reason."""


@dataclass(eq=False)
class _Conn:
    sock: socket.socket
    peer: str
    inbuf: bytearray = field(default_factory=bytearray)
    out: bytearray = field(default_factory=bytearray)
    next_seq: int = 0  # of the next message read
    next_reply: int = 0  # of the next reply to send
    replies: dict[int, bytes] = field(default_factory=dict)
    eof: bool = False  # the client sent everything (or vanished)
    closing: bool = False  # close once the replies are out
    closed: bool = False
    mask: int = 0
    rejected: int = 0

    @property
    def settled(self) -> bool:
        """Every message answered and every reply sent."""
        return self.next_reply >= self.next_seq and not self.out


@dataclass(frozen=True)
class _Item:
    conn: _Conn
    seq: int
    record: dict[str, Any]


_ACCEPT, _WAKE = "accept", "wake"
_STOP = object()


def _peer_name(address: Any) -> str:
    host, port = address[0], address[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _now() -> str:
    return datetime.now(UTC).isoformat()


class _TcpServer:
    """One listener: an I/O thread (the caller's) with a selector for every socket, and a
    submitter thread that queues the jobs, so a slow database never stalls the reading
    and a full queue is seen at once."""

    def __init__(self, ctx: Any, settings: _Settings) -> None:
        self.ctx = ctx
        self.s = settings
        self.sel = selectors.DefaultSelector()
        self.conns: set[_Conn] = set()
        self.inbox: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self.done: deque[tuple[_Conn, int, bytes]] = deque()  # replies from the submitter
        self.lock = threading.Lock()
        self.pending = 0  # messages taken, not yet queued as jobs (or refused)
        self.paused = False  # reading stopped because max_pending messages wait
        self.blocked: dict[_Conn, None] = {}  # complete messages wait in their buffers
        self.pause_logged = -1e9
        self.abandon = threading.Event()  # stopping took too long: refuse the rest
        self.wake_r, self.wake_w = socket.socketpair()
        self.wake_r.setblocking(False)
        self.wake_w.setblocking(False)
        self.submitter = threading.Thread(
            target=self._submit_loop, name=f"{threading.current_thread().name}-submit", daemon=True
        )

    # -- listening ----------------------------------------------------------------------
    def _bind(self) -> socket.socket:
        where = f"{self.s.host}:{self.s.port}"
        try:
            family, kind, proto, _, address = socket.getaddrinfo(
                self.s.host, self.s.port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
            )[0]
        except OSError as exc:
            raise FlowmillError(f"trigger.tcp: cannot listen on {where}: {exc}") from exc
        sock = socket.socket(family, kind, proto)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(address)
            sock.listen(128)
            sock.setblocking(False)
        except OSError as exc:
            sock.close()
            in_use = exc.errno == errno.EADDRINUSE
            hint = " (another program or flow uses this port?)" if in_use else ""
            raise FlowmillError(
                f"trigger.tcp: cannot listen on {where}: {exc.strerror or exc}{hint}"
            ) from exc
        return sock

    def serve(self) -> None:
        listener = self._bind()
        try:
            self.sel.register(listener, selectors.EVENT_READ, _ACCEPT)
            self.sel.register(self.wake_r, selectors.EVENT_READ, _WAKE)
            self.submitter.start()
            self.ctx.log.info(
                "listening on %s:%d (%s framing, %s)",
                self.s.host, self.s.port, self.s.framing, self.s.encoding,
            )  # fmt: skip
            self.ctx.ready.set()
            while not self.ctx.stopping.is_set():
                for key, events in self.sel.select(POLL):
                    self._handle(key, events)
                self._deliver()
                self._update_pause()
        finally:
            self._shutdown(listener)

    def _handle(self, key: selectors.SelectorKey, events: int) -> None:
        if key.data == _ACCEPT:
            self._accept(key.fileobj)  # type: ignore[arg-type]
        elif key.data == _WAKE:
            try:
                while self.wake_r.recv(4096):
                    pass
            except BlockingIOError:
                pass
        else:
            conn: _Conn = key.data
            if events & selectors.EVENT_WRITE:
                self._flush(conn)
            if events & selectors.EVENT_READ and not conn.closed:
                self._read(conn)

    def _accept(self, listener: socket.socket) -> None:
        try:
            sock, address = listener.accept()
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:  # e.g. out of file descriptors: say so, keep listening
            self.ctx.log.error("cannot accept a connection: %s", exc)
            return
        peer = _peer_name(address)
        if len(self.conns) >= self.s.max_connections:
            self.ctx.log.warning(
                "refused %s: already %d connections (most connections)", peer, len(self.conns)
            )
            if self.s.ack:
                with contextlib.suppress(OSError):
                    sock.send(self.s.nak("too many connections"))
            sock.close()
            return
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # replies are tiny
        conn = _Conn(sock, peer)
        self.conns.add(conn)
        self._set_mask(conn)
        self.ctx.log.debug("%s connected", peer)

    # -- reading ------------------------------------------------------------------------
    def _read(self, conn: _Conn) -> None:
        try:
            data = conn.sock.recv(RECV_SIZE)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self.ctx.log.debug("%s: %s", conn.peer, exc)
            data = b""
        if data:
            conn.inbuf += data
            self._take(conn)
        else:
            conn.eof = True
            if not self._take(conn):
                self._at_eof(conn)
        self._set_mask(conn)

    def _room(self) -> bool:
        return self.pending < self.s.max_pending

    def _take(self, conn: _Conn) -> bool:
        """Cut the complete messages out of what the connection sent, while there is room;
        True when the queue was full before all were taken."""
        buf, pos, blocked = conn.inbuf, 0, False
        try:
            while not conn.closing:
                if not self.s.nak_when_full and not self._room():
                    blocked = True  # the rest waits in the buffer until there is room
                    self.blocked[conn] = None
                    break
                got = self._frame(buf, pos)
                if got is None:
                    break
                frame, pos = got
                if frame:  # an empty message (e.g. a blank line) is no message
                    self._message(conn, frame)
        except _TooLong as exc:
            self._too_long(conn, exc.size)
            return False
        if pos:
            del buf[:pos]
        return blocked

    def _frame(self, buf: bytearray, pos: int) -> tuple[bytes, int] | None:
        """The next message at ``pos`` and where the one after it starts, or None."""
        s = self.s
        if s.framing == "length-prefixed":
            if len(buf) - pos < s.length_bytes:
                return None
            size = int.from_bytes(buf[pos : pos + s.length_bytes], "big")
            if size > s.max_bytes:
                raise _TooLong(size)
            start = pos + s.length_bytes
            if len(buf) - start < size:
                return None
            return bytes(buf[start : start + size]), start + size
        end = buf.find(s.delimiter, pos)
        if end < 0:
            if len(buf) - pos > s.max_bytes + 1:  # +1: the CR of a CR LF line
                raise _TooLong(len(buf) - pos)
            return None
        frame = bytes(buf[pos:end])
        if s.framing == "line" and frame.endswith(b"\r"):
            frame = frame[:-1]
        if len(frame) > s.max_bytes:
            raise _TooLong(len(frame))
        return frame, end + len(s.delimiter)

    def _at_eof(self, conn: _Conn) -> None:
        rest = bytes(conn.inbuf)
        conn.inbuf.clear()
        if rest and not conn.closing:
            if self.s.framing == "length-prefixed":
                self.ctx.log.warning(
                    "%s closed the connection in the middle of a message (%d bytes lost)",
                    conn.peer, len(rest),
                )  # fmt: skip
            elif self.s.nak_when_full or self._room():
                self._message(conn, rest)  # a last line without its line end still counts
            else:  # full, and the sender has gone: it cannot be slowed down any more
                self.ctx.log.error(
                    "%s closed the connection while the queue was full: its last "
                    "message (%d bytes, no line end) is lost", conn.peer, len(rest),
                )  # fmt: skip
        conn.closing = True
        self._close_if_settled(conn)

    def _message(self, conn: _Conn, frame: bytes) -> None:
        seq = conn.next_seq
        conn.next_seq += 1
        try:
            record = self._parse(frame)
        except _Rejected as exc:
            self._reject(conn, seq, str(exc), frame)
            return
        if not self._room():  # only with when_full: nak
            self._reject(conn, seq, "queue full", frame)
            return
        record["_peer"] = conn.peer
        record["_received_at"] = _now()
        with self.lock:
            self.pending += 1
        self.inbox.put(_Item(conn, seq, record))

    def _parse(self, frame: bytes) -> dict[str, Any]:
        s = self.s
        try:
            text = frame.decode(s.encoding)
        except UnicodeDecodeError as exc:
            raise _Rejected(f"not valid {s.encoding} (byte {exc.start + 1})") from None
        record: dict[str, Any]
        if s.parse == "json":
            try:
                value = json.loads(text)
            except (ValueError, RecursionError) as exc:
                raise _Rejected(f"not JSON ({getattr(exc, 'msg', 'too deeply nested')})") from None
            if not isinstance(value, dict):
                raise _Rejected(f"not a JSON object (a {type(value).__name__})")
            record = value
        elif s.parse == "fields":
            values = text.split(s.separator)
            if len(values) == len(s.fields) + 1 and values[-1] == "":
                values.pop()  # a trailing separator
            if len(values) != len(s.fields):
                raise _Rejected(f"{len(values)} fields, expected {len(s.fields)}")
            record = dict(zip(s.fields, values, strict=True))
        else:
            record = {"message": text}
        problem = find_unstorable_text(record)
        if problem:
            raise _Rejected(problem)
        return record

    def _reject(self, conn: _Conn, seq: int, reason: str, frame: bytes) -> None:
        conn.rejected += 1
        if conn.rejected <= LOGGED_REJECTS:
            self.ctx.log.warning("message from %s rejected: %s: %r", conn.peer, reason, frame[:80])
        self._reply(conn, seq, self.s.nak(reason))

    def _too_long(self, conn: _Conn, size: int) -> None:
        self.ctx.log.error(
            "message from %s is longer than %d bytes (%d so far): connection closed",
            conn.peer, self.s.max_bytes, size,
        )  # fmt: skip
        seq = conn.next_seq
        conn.next_seq += 1
        self._reply(conn, seq, self.s.nak("too long"))
        conn.inbuf.clear()
        conn.closing = True
        self._close_if_settled(conn)

    # -- replying -----------------------------------------------------------------------
    def _reply(self, conn: _Conn, seq: int, data: bytes) -> None:
        """Send the reply to message ``seq`` once those before it are answered."""
        if conn.closed or not self.s.ack:
            return
        conn.replies[seq] = data
        while conn.next_reply in conn.replies:
            conn.out += conn.replies.pop(conn.next_reply)
            conn.next_reply += 1
        self._flush(conn)

    def _deliver(self) -> None:
        while self.done:
            conn, seq, data = self.done.popleft()
            self._reply(conn, seq, data)

    def _flush(self, conn: _Conn) -> None:
        if conn.closed:
            return
        if conn.out:
            try:
                sent = conn.sock.send(conn.out)
                del conn.out[:sent]
            except (BlockingIOError, InterruptedError):
                pass
            except OSError as exc:  # the client went away: nobody left to answer
                self.ctx.log.debug("%s: %s", conn.peer, exc)
                conn.out.clear()
                conn.eof = conn.closing = True
                conn.next_reply = conn.next_seq
        self._close_if_settled(conn)
        self._set_mask(conn)

    # -- connection state ---------------------------------------------------------------
    def _set_mask(self, conn: _Conn) -> None:
        if conn.closed:
            return
        mask = 0
        reading = not (conn.eof or conn.closing or self.paused or len(conn.out) > MAX_UNSENT)
        if reading:
            mask |= selectors.EVENT_READ
        if conn.out:
            mask |= selectors.EVENT_WRITE
        if mask == conn.mask:
            return
        if conn.mask == 0:
            self.sel.register(conn.sock, mask, conn)
        elif mask == 0:
            self.sel.unregister(conn.sock)
        else:
            self.sel.modify(conn.sock, mask, conn)
        conn.mask = mask

    def _close_if_settled(self, conn: _Conn) -> None:
        # without replies there is nothing to wait for: queueing goes on after the close
        if conn.closing and not conn.closed and (conn.settled or not self.s.ack):
            self._close(conn)

    def _close(self, conn: _Conn) -> None:
        if conn.closed:
            return
        if conn.mask:
            self.sel.unregister(conn.sock)
            conn.mask = 0
        conn.closed = True
        conn.sock.close()
        self.conns.discard(conn)
        if conn.rejected > LOGGED_REJECTS:
            self.ctx.log.warning(
                "%s: %d further messages rejected", conn.peer, conn.rejected - LOGGED_REJECTS
            )
        self.ctx.log.debug("%s disconnected", conn.peer)

    def _update_pause(self) -> None:
        """Stop reading while max_pending messages wait; read on once there is room."""
        while self.blocked and self._room():
            conn = next(iter(self.blocked))
            del self.blocked[conn]
            if conn.closed or conn.closing:
                continue
            if not self._take(conn) and conn.eof:
                self._at_eof(conn)
            self._set_mask(conn)
        if self.s.nak_when_full or self.paused == (not self._room()):
            return
        self.paused = not self.paused
        if self.paused and time.monotonic() - self.pause_logged > 30:
            self.pause_logged = time.monotonic()
            self.ctx.log.warning(
                "%d messages wait to be queued as jobs (most messages waiting): not "
                "reading until there is room", self.pending,
            )  # fmt: skip
        for conn in list(self.conns):
            self._set_mask(conn)

    # -- queueing jobs (the submitter thread) --------------------------------------------
    def _submit_loop(self) -> None:
        s = self.s
        batch: list[_Item] = []
        started = 0.0
        while True:
            timeout = POLL
            if batch and s.batch_seconds:
                timeout = max(0.0, min(POLL, started + s.batch_seconds - time.monotonic()))
            try:
                item = self.inbox.get(timeout=timeout)
            except queue.Empty:
                item = None
            if item is _STOP:
                break
            if item is not None:
                if not s.batching:
                    self._fire([item])
                    continue
                if not batch:
                    started = time.monotonic()
                batch.append(item)
            if batch and (
                (s.batch_size and len(batch) >= s.batch_size)
                or (s.batch_seconds and time.monotonic() - started >= s.batch_seconds)
                or len(batch) >= s.max_pending
            ):
                self._fire(batch)
                batch = []
        if batch:  # stopping: a part batch is still a batch, not a loss
            self._fire(batch)

    def _fire(self, items: list[_Item]) -> None:
        reply = self.s.ack_text
        try:
            if self.abandon.is_set():
                raise FlowmillError("the listener is stopping")
            records = [item.record for item in items]
            self.ctx.fire(records if self.s.batching else records[0])
        except Exception as exc:
            reason = "stopping" if self.abandon.is_set() else "not queued"
            peers = ", ".join(sorted({item.conn.peer for item in items}))
            self.ctx.log.error(
                "%d message(s) from %s could not be queued as a job: %s", len(items), peers, exc
            )
            reply = self.s.nak(reason)
        with self.lock:
            self.pending -= len(items)
        for item in items:
            self.done.append((item.conn, item.seq, reply))
        # OSError: the I/O thread is awake already (the pipe is full) or gone
        with contextlib.suppress(OSError):
            self.wake_w.send(b"!")

    # -- stopping -----------------------------------------------------------------------
    def _shutdown(self, listener: socket.socket) -> None:
        with contextlib.suppress(KeyError, ValueError):
            self.sel.unregister(listener)
        listener.close()  # the port is free again at once
        self.paused = True  # read nothing more
        for conn in list(self.conns):
            self._set_mask(conn)
        if self.submitter.is_alive():
            self.inbox.put(_STOP)
            deadline = time.monotonic() + DRAIN_SECONDS
            while self.submitter.is_alive():
                if time.monotonic() > deadline:
                    self.abandon.set()
                if time.monotonic() > deadline + 1:  # a job submission hangs: go anyway
                    self.ctx.log.error("queueing a job hangs: stopped without waiting for it")
                    break
                for key, events in self.sel.select(0.05):
                    if key.data != _ACCEPT:
                        self._handle(key, events)
                self._deliver()
                self.submitter.join(0)
            self._deliver()
            if self.abandon.is_set():
                self.ctx.log.error(
                    "stopped before every message taken was queued: the rest got NAK 'stopping'"
                )
        end = time.monotonic() + 0.5  # a moment for the last replies to go out
        while any(c.out for c in self.conns) and time.monotonic() < end:
            for key, events in self.sel.select(0.05):
                if isinstance(key.data, _Conn) and events & selectors.EVENT_WRITE:
                    self._flush(key.data)
        for conn in list(self.conns):
            self._close(conn)
        self.sel.close()
        self.wake_r.close()
        self.wake_w.close()


def listen_tcp(ctx: Any) -> None:
    """Listen on the configured port until ``ctx.stopping``; one job per message or batch.

    Raises:
        FlowmillError: the config is unusable, or host:port cannot be bound (the listener
            host then tries again with back-off).
    """
    try:
        settings = _Settings.from_config(ctx.config)
    except _BadConfig as exc:
        raise FlowmillError(f"trigger.tcp config: {exc}") from None
    _TcpServer(ctx, settings).serve()


TCP = NodeSpec(
    type="trigger.tcp",
    title="TCP messages",
    category="trigger",
    description="Starts a run for each message a program sends to a TCP port (e.g. the "
    "sales messages of the legacy ticker on port 3700), or one run per batch of messages. "
    "Messages are cut by line, length prefix or delimiter and become records (text, JSON "
    "or named fields) with _peer (ip:port of the sender) and _received_at (ISO UTC). "
    "Optionally replies ACK once the job is queued, NAK with a reason otherwise.",
    outputs=("out",),
    config_schema=TCP_SCHEMA,
    trigger=True,
    check=check_tcp,
    listen=listen_tcp,
    run=event_records,
)

NODES = (TCP,)
