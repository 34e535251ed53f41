"""The file-drop side of ``flowmill serve``: FTPS, WebDAV, watched local folders, dispatch.

Drop users log in with their Flowmill password (``flowmill user add NAME --drop``). A
password that was right is remembered (as a salted digest, in memory) for a minute, so a
WebDAV client that sends credentials with every request does not pay for scrypt every
time. The state of the servers is written to ``DATA/run/fileservers.json`` every few
seconds for ``flowmill status``.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from engine.batch.statusfile import read_status as read_status_file
from engine.batch.statusfile import status_path, write_status
from servers.dispatch import DropDispatcher
from servers.drops import DropQueue
from servers.localwatch import LocalWatcher

__all__ = ["FileServers", "read_status"]

log = logging.getLogger(__name__)

REMEMBER = 60.0  # seconds a right password is remembered
STATUS_EVERY = 2.0


def _status_path(data_dir: Path) -> Path:
    return status_path(data_dir, "fileservers")


def read_status(data_dir: Path) -> dict[str, Any] | None:
    """What the running server last wrote; None when none runs."""
    return read_status_file(_status_path(data_dir), 5 * STATUS_EVERY)


TITLES = {"ftps": "FTPS", "webdav": "WebDAV"}


class FileServers:
    def __init__(
        self,
        service: Any,
        echo: Callable[[str], None],
        *,
        ftps: bool = True,
        webdav: bool = True,
    ) -> None:
        self.service = service
        self.echo = echo
        self.data_dir = Path(service.settings.data_dir)
        self.drops = DropQueue()
        self.watcher = LocalWatcher(self.drops)
        self.dispatcher = DropDispatcher(service, self.drops, echo, on_folders=self.watcher.watch)
        self.servers: dict[str, Any] = {}
        self._want = {"ftps": ftps, "webdav": webdav}
        self._known: dict[tuple[str, str], float] = {}
        self._salt = os.urandom(16)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._status_thread: threading.Thread | None = None

    def authenticate(self, user: str, password: str) -> bool:
        """True for a drop user with the right password (never raises)."""
        key = (user, hashlib.sha256(self._salt + password.encode("utf-8", "replace")).hexdigest())
        now = time.monotonic()
        with self._lock:
            if self._known.get(key, 0.0) > now:
                return True
        try:
            self.service.users.authenticate_drop(user, password)
        except Exception as exc:
            log.info("file servers: login of %r refused: %s", user, exc)
            return False
        with self._lock:
            self._known = {k: t for k, t in self._known.items() if t > now}
            self._known[key] = now + REMEMBER
        return True

    def start(self) -> None:
        self.watcher.start()
        self.dispatcher.start()
        if self._want["ftps"]:
            from servers.ftps import FtpsServer

            server = FtpsServer(
                data_dir=self.data_dir, authenticate=self.authenticate, drops=self.drops
            )
            server.start()
            self.servers["ftps"] = server
            host, port = server.address
            self.echo(f"FTPS: ftp://{host}:{port}/ (explicit TLS required)")
        else:
            self.echo("FTPS: off (--no-ftps)")
        if self._want["webdav"]:
            from servers.webdav import WebDavServer

            dav = WebDavServer(
                data_dir=self.data_dir, authenticate=self.authenticate, drops=self.drops
            )
            dav.start()
            self.servers["webdav"] = dav
            host, port = dav.address
            scheme = "https" if dav.describe().get("tls") else "http"
            self.echo(f"WebDAV: {scheme}://{host}:{port}/")
        else:
            self.echo("WebDAV: off (--no-webdav)")
        self._status_thread = threading.Thread(
            target=self._write_status, name="flowmill-fileservers-status", daemon=True
        )
        self._status_thread.start()

    def describe(self) -> dict[str, Any]:
        return {
            "pid": os.getpid(),
            "at": time.time(),
            "servers": {name: server.describe() for name, server in self.servers.items()},
            "drops": self.dispatcher.describe(),
            "local_folders": sorted(str(p) for p in self.dispatcher.local_folders()),
        }

    def _write_status(self) -> None:
        path = _status_path(self.data_dir)
        path.parent.mkdir(parents=True, exist_ok=True)
        while not self._stop.wait(STATUS_EVERY):
            try:
                write_status(path, self.describe())
            except Exception:
                log.exception("file servers: could not write %s", path)

    def stop(self) -> None:
        self._stop.set()
        for name, server in self.servers.items():
            server.stop()
            self.echo(f"{TITLES.get(name, name)}: stopped")
        self.dispatcher.stop()
        self.watcher.stop()
        _status_path(self.data_dir).unlink(missing_ok=True)
