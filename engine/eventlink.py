"""Events of other processes reach the web app over a local datagram socket.

Worker processes, the batch server and CLI commands publish events on their own bus; the
web app of the data directory binds one Unix datagram socket and re-publishes what arrives
to its Socket.IO clients. Datagrams keep each sender's order, need no broker and cost one
failed ``sendto`` per second when no web app listens. The socket lives in ``DATA/run``
(mode 0700), or under ``/tmp/flowmill-UID`` when that path is too long for a socket name.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from engine.events import Event

__all__ = ["MAX_DATAGRAM", "EventReceiver", "EventSender", "encode_event", "socket_path"]

log = logging.getLogger(__name__)

MAX_DATAGRAM = 60_000  # bytes; larger events lose their sample records, then their text
MAX_SOCKET_PATH = 100  # sockaddr_un holds 108 bytes
SEND_TIMEOUT = 0.25  # seconds a publisher waits for a busy web app before dropping one event
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
    """One event as a datagram; oversized events keep their facts and drop bulk fields."""
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
    """A bus subscriber that forwards every event to the web app's socket, if one listens."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)
        self.dropped = 0
        self._sock: socket.socket | None = None
        self._retry_at = 0.0
        self._lock = threading.Lock()

    def __call__(self, event: Event) -> None:
        if time.monotonic() < self._retry_at:
            return
        self.send(encode_event(event.to_dict()))

    def send(self, datagram: bytes) -> None:
        with self._lock:
            if time.monotonic() < self._retry_at:
                return
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
                self._sock.settimeout(SEND_TIMEOUT)
            try:
                self._sock.sendto(datagram, self.path)
            except (FileNotFoundError, ConnectionRefusedError):
                self._retry_at = time.monotonic() + RETRY_AFTER  # no web app: try again later
            except (TimeoutError, BlockingIOError):
                self.dropped += 1
                log.warning("web app busy: one event not forwarded (%d so far)", self.dropped)
            except OSError as exc:
                self.dropped += 1
                if exc.errno != errno.EMSGSIZE:
                    self._retry_at = time.monotonic() + RETRY_AFTER
                log.warning("event not forwarded to %s: %s", self.path, exc)

    def close(self) -> None:
        with self._lock:
            if self._sock is not None:
                self._sock.close()
                self._sock = None


class EventReceiver:
    """Binds the socket of a data directory and hands every event (a dict) to ``deliver``."""

    def __init__(self, path: Path, deliver: Callable[[dict[str, Any]], None]) -> None:
        self.path = Path(path)
        self.deliver = deliver
        self._sock: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._stopped = threading.Event()

    def start(self) -> None:
        _private_folder(self.path.parent)
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()  # left by a web app that died; a live one would still hold it
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 * 1024 * 1024)
        sock.bind(str(self.path))
        os.chmod(self.path, 0o600)
        sock.settimeout(0.5)  # so stop() is noticed
        self._sock = sock
        self._thread = threading.Thread(target=self._loop, name="flowmill-events-in", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        sock = self._sock
        assert sock is not None
        while not self._stopped.is_set():
            try:
                datagram = sock.recv(MAX_DATAGRAM + 1024)
            except TimeoutError:
                continue
            except OSError:
                return  # closed by stop()
            if not datagram:
                continue
            try:
                data = json.loads(datagram)
            except ValueError:
                log.warning("ignored a malformed event datagram (%d bytes)", len(datagram))
                continue
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
