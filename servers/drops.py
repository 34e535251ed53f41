"""Completed uploads, from any file server, on their way to the batch server.

A file server calls ``DropQueue.offer(event)`` once an upload is complete and renamed to
its final name. The queue is bounded: when it is full ``offer`` returns False and the
server answers "busy" (FTP 421, HTTP 503), so nothing is dropped silently.
"""

from __future__ import annotations

import hashlib
import queue
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

__all__ = ["DropEvent", "DropQueue", "drop_home", "sha256_of"]

DEFAULT_CAPACITY = 10_000


@dataclass(frozen=True)
class DropEvent:
    """One completed upload: the first record of the job it starts."""

    path: str  # absolute path of the file on the server
    name: str  # path relative to the user's home ("in/orders.csv")
    size: int
    user: str | None
    source: str  # ftps | webdav | local
    sha256: str
    received_at: datetime = field(default_factory=lambda: datetime.now(UTC))

    def record(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "name": self.name,
            "size": self.size,
            "user": self.user,
            "source": self.source,
            "received_at": self.received_at.isoformat(),
            "sha256": self.sha256,
        }


class DropQueue:
    """Bounded hand-over from file-server threads to the batch server loop."""

    def __init__(self, capacity: int = DEFAULT_CAPACITY) -> None:
        self._queue: queue.Queue[DropEvent] = queue.Queue(maxsize=capacity)

    def offer(self, event: DropEvent) -> bool:
        """Queue ``event``; False when full (the server must tell the client it is busy)."""
        try:
            self._queue.put_nowait(event)
        except queue.Full:
            return False
        return True

    def take(self, limit: int = 1000) -> list[DropEvent]:
        """What has arrived, oldest first, without waiting."""
        out: list[DropEvent] = []
        while len(out) < limit:
            try:
                out.append(self._queue.get_nowait())
            except queue.Empty:
                break
        return out

    def wait(self, timeout: float) -> DropEvent | None:
        try:
            return self._queue.get(timeout=timeout)
        except queue.Empty:
            return None

    def __len__(self) -> int:
        return self._queue.qsize()


def drop_home(data_dir: Path, user: str) -> Path:
    """The folder a drop user sees as ``/`` on FTPS and WebDAV: ``DATA/drop/<user>``."""
    if not user or user.startswith(".") or "/" in user or "\x00" in user:
        raise ValueError(f"{user[:40]!r} cannot be the name of a home folder")
    home = Path(data_dir).resolve() / "drop" / user
    home.mkdir(parents=True, exist_ok=True)
    return home


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
