"""Events of other processes reach the web app over a local stream socket.

Worker processes, the batch server and CLI commands publish events on their own bus; the
web app of the data directory listens on one Unix socket and re-publishes what arrives
to its Socket.IO clients. Each process keeps one connection (its order is kept), no broker
is needed, and with no web app listening a process tries to connect once a second. The
socket lives in ``DATA/run`` (mode 0700), or under ``/tmp/flowmill-UID`` when that path is
too long for a socket name.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import selectors
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from engine.run.events import Event

__all__ = ["MAX_DATAGRAM", "EventReceiver", "EventSender", "encode_event", "socket_path"]

log = logging.getLogger(__name__)

MAX_DATAGRAM = 60_000  # bytes per event; larger ones lose their sample records, then text
MAX_SOCKET_PATH = 100  # sockaddr_un holds 108 bytes
SEND_TIMEOUT = 2.0  # seconds a publisher waits for a stuck web app before dropping an event
RETRY_AFTER = 1.0  # seconds between attempts while nobody listens


def socket_path(data_dir: Path) -> Path:
    """Where the web app of ``data_dir`` listens for events."""
    folder = Path(data_dir).resolve() / "run"
    path = folder / "events.sock"
    if len(os.fsencode(path)) <= MAX_SOCKET_PATH:
        return path
    digest = hashlib.sha256(os.fsencode(folder)).hexdigest()[:20]
    return Path(f"/tmp/flowmill-{os.getuid()}") / f"{digest}.sock"


def _private_folder(folder: Path) -> None:
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    info = folder.stat()
    if info.st_uid != os.getuid():
        raise PermissionError(f"{folder} belongs to another user; refusing to use it for events")
    os.chmod(folder, 0o700)


def encode_event(data: dict[str, Any]) -> bytes:
    """One event as a JSON line; oversized events keep their facts and drop bulk fields."""
    raw = json.dumps(data, default=str, separators=(",", ":")).encode()
    if len(raw) <= MAX_DATAGRAM:
        return raw
    slim = {**data, "truncated": True}
    if "sample" in slim:
        slim["sample"] = {}
    raw = json.dumps(slim, default=str, separators=(",", ":")).encode()
    if len(raw) <= MAX_DATAGRAM:
        return raw
    for key in ("message", "text", "error", "data", "params"):
        if isinstance(slim.get(key), str):
            slim[key] = slim[key][:2000] + " …"
        elif isinstance(slim.get(key), dict):
            slim[key] = {}
    return json.dumps(slim, default=str, separators=(",", ":")).encode()[:MAX_DATAGRAM]


class EventSender:
    """A bus subscriber that forwards every event to the web app's socket, if one listens.

    A stream connection, not datagrams: the kernel buffers a burst of thousands of events
    (a datagram socket queues only ten), and one connection keeps this process's order.
    """

    def __init__(self, path: Path) -> None:
        self.path = str(path)
        self.dropped = 0
        self._sock: socket.socket | None = None
        self._pid = os.getpid()
        self._retry_at = 0.0
        self._lock = threading.Lock()

    def __call__(self, event: Event) -> None:
        if self._sock is None and time.monotonic() < self._retry_at:
            return
        self.send(encode_event(event.to_dict()))

    def _connect(self) -> socket.socket | None:
        if time.monotonic() < self._retry_at:
            return None
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(SEND_TIMEOUT)
        try:
            sock.connect(self.path)
        except OSError:
            sock.close()
            self._retry_at = time.monotonic() + RETRY_AFTER  # no web app: try again later
            return None
        self._sock = sock
        return sock

    def send(self, message: bytes) -> None:
        """Send one encoded event (a JSON line); drop it if the web app is stuck."""
        with self._lock:
            if self._pid != os.getpid():  # a forked child must not share the parent's stream
                if self._sock is not None:
                    self._sock.close()
                self._sock, self._pid, self._retry_at = None, os.getpid(), 0.0
            for attempt in (1, 2):  # a web app that restarted: reconnect once
                sock = self._sock or self._connect()
                if sock is None:
                    return
                try:
                    sock.sendall(message + b"\n")
                    return
                except TimeoutError:
                    self.dropped += 1
                    log.warning("web app busy: event not forwarded (%d so far)", self.dropped)
                    self._close()  # a partly written line must not reach the web app
                    self._retry_at = time.monotonic() + RETRY_AFTER
                    return
                except OSError:
                    self._close()
                    if attempt == 2:
                        self._retry_at = time.monotonic() + RETRY_AFTER

    def _close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def close(self) -> None:
        with self._lock:
            self._close()


class EventReceiver:
    """Listens on the socket of a data directory; hands every event (a dict) to ``deliver``."""

    def __init__(self, path: Path, deliver: Callable[[dict[str, Any]], None]) -> None:
        self.path = Path(path)
        self.deliver = deliver
        self._sock: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._stopped = threading.Event()

    def start(self) -> bool:
        """Listen; False when another live web process of this data directory already does
        (it then forwards what it receives, e.g. through the Socket.IO message queue)."""
        _private_folder(self.path.parent)
        if self._someone_listens():
            log.info("events of %s are received by another web process", self.path)
            return False
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()  # left by a web app that died
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.bind(str(self.path))
        os.chmod(self.path, 0o600)
        sock.listen(128)
        sock.setblocking(False)
        self._sock = sock
        self._thread = threading.Thread(target=self._loop, name="flowmill-events-in", daemon=True)
        self._thread.start()
        return True

    def _someone_listens(self) -> bool:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
            try:
                probe.connect(str(self.path))
            except OSError:
                return False
            return True

    def _loop(self) -> None:
        listener = self._sock
        assert listener is not None
        selector = selectors.DefaultSelector()
        selector.register(listener, selectors.EVENT_READ, None)
        partial: dict[socket.socket, bytes] = {}
        while not self._stopped.is_set():
            for key, _ in selector.select(timeout=0.5):
                if key.data is None:
                    with contextlib.suppress(OSError):
                        conn, _ = listener.accept()
                        conn.setblocking(False)
                        selector.register(conn, selectors.EVENT_READ, "conn")
                        partial[conn] = b""
                    continue
                conn = key.fileobj  # type: ignore[assignment]
                try:
                    chunk = conn.recv(1 << 20)
                except BlockingIOError:
                    continue
                except OSError:
                    chunk = b""
                if not chunk:
                    selector.unregister(conn)
                    conn.close()
                    partial.pop(conn, None)
                    continue
                *lines, partial[conn] = (partial[conn] + chunk).split(b"\n")
                for line in lines:
                    self._handle(line)
        for key in list(selector.get_map().values()):
            if key.data == "conn":
                key.fileobj.close()  # type: ignore[union-attr]
        selector.close()

    def _handle(self, line: bytes) -> None:
        if not line:
            return
        try:
            data = json.loads(line)
        except ValueError:
            log.warning("ignored a malformed event (%d bytes)", len(line))
            return
        if isinstance(data, dict):
            self.deliver(data)

    def stop(self) -> None:
        self._stopped.set()
        if self._thread is not None:
            self._thread.join(2.0)
        if self._sock is not None:
            self._sock.close()
            self._sock = None
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()
