"""Record streams between nodes: bounded inboxes, input spooling for retries, JSON-safe samples.

Each (node, input port) has one ``Inbox``: a bounded queue that every producer port wired
to it puts batches into. Bounded queues are what keep memory flat: a fast producer waits
for a slow consumer instead of piling batches up. Fan-out is the producer putting the same
batch into several inboxes, so nodes must treat records they receive as read-only.
"""

from __future__ import annotations

import pickle
import queue
import threading
import time
from collections.abc import Iterator
from datetime import date, datetime
from datetime import time as dtime
from decimal import Decimal
from pathlib import Path
from typing import Any

from engine.errors import UpstreamFailed

__all__ = ["Inbox", "NodeTimedOut", "Spool", "json_safe"]

_END = object()
_NOTHING = object()
_POLL = 0.05


class NodeTimedOut(Exception):
    """Raised inside a node's thread when its deadline passed while it waited for data."""


class Inbox:
    """Batches for one input port of one node, from one or more producer ports."""

    def __init__(self, producers: int, depth: int, abort: threading.Event, why: list[str]) -> None:
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=depth)
        self._open = producers
        self._abort = abort
        self._why = why  # one-item list set by the executor: why the run stopped
        self.consumer_gone = False
        self._peeked: Any = _NOTHING
        self.records = 0
        self.deadline: float | None = None

    def _stopped(self) -> UpstreamFailed:
        return UpstreamFailed(self._why[0] if self._why else "run stopped")

    def put(self, batch: Any) -> None:
        """Wait for room, but give up when the consumer left or the run stopped."""
        while not self.consumer_gone:
            if self._abort.is_set():
                raise self._stopped()
            try:
                self._queue.put(batch, timeout=_POLL)
                return
            except queue.Full:
                continue

    def close(self) -> None:
        """One producer is done; the consumer sees the end after the last producer closes."""
        while not self.consumer_gone and not self._abort.is_set():
            try:
                self._queue.put(_END, timeout=_POLL)
                return
            except queue.Full:
                continue

    def wait_ready(self) -> None:
        """Block until the first batch (or the end) is there, so ``pending`` means waiting."""
        while self._peeked is _NOTHING:
            if self._abort.is_set():
                raise self._stopped()
            try:
                self._peeked = self._queue.get(timeout=_POLL)
            except queue.Empty:
                continue

    def poll_ready(self, timeout: float) -> bool:
        """Like ``wait_ready`` for at most ``timeout`` seconds; True when ready."""
        if self._peeked is not _NOTHING:
            return True
        if self._abort.is_set():
            raise self._stopped()
        try:
            self._peeked = self._queue.get(timeout=timeout)
        except queue.Empty:
            return False
        return True

    def _get(self) -> Any:
        if self._peeked is not _NOTHING:
            item, self._peeked = self._peeked, _NOTHING
            return item
        return self._queue.get(timeout=_POLL)

    def __iter__(self) -> Iterator[list[dict[str, Any]]]:
        try:
            while True:
                if self._abort.is_set():
                    raise self._stopped()
                if self.deadline is not None and time.monotonic() > self.deadline:
                    raise NodeTimedOut()
                try:
                    item = self._get()
                except queue.Empty:
                    continue
                if item is _END:
                    self._open -= 1
                    if self._open <= 0:
                        return
                    continue
                self.records += len(item)
                yield item
        finally:
            if self._open > 0:
                self.consumer_gone = True


class Spool:
    """Keeps the batches a node consumed on disk so a retry can read its input again.

    Only nodes with ``retries`` and connected inputs spool; memory stays bounded because
    the copy lives in the run's work directory, not in RAM.
    """

    def __init__(self, source: Iterator[list[dict[str, Any]]], path: Path) -> None:
        self._source = source
        self._path = path
        self._spooled = 0
        self._exhausted = False

    def reader(self) -> Iterator[list[dict[str, Any]]]:
        """A fresh pass: replay what was spooled, then continue from the live stream."""
        replayed = 0
        if self._spooled:
            with self._path.open("rb") as fh:
                while replayed < self._spooled:
                    yield pickle.load(fh)
                    replayed += 1
        if self._exhausted:
            return
        with self._path.open("ab") as out:
            for batch in self._source:
                pickle.dump(batch, out, protocol=pickle.HIGHEST_PROTOCOL)
                out.flush()
                self._spooled += 1
                yield batch
        self._exhausted = True

    def discard(self) -> None:
        self._path.unlink(missing_ok=True)


def json_safe(value: Any) -> Any:
    """A JSON-able copy for samples shown in the inspector (never used for data flow)."""
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, datetime | date | dtime):
        return value.isoformat()
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set):
        return [json_safe(v) for v in value]
    if isinstance(value, bytes):
        return f"<{len(value)} bytes>"
    return str(value)
