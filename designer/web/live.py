"""Live updates: the Socket.IO namespace ``/live`` and the pump that feeds it.

Every event of the installation (job and node state changes, log lines, flow saves,
server heartbeats) reaches all authenticated clients as ``events``: a list of event dicts
in the order they happened (``{"event": "JobChanged", ...}``; see engine/run/events.py), each
with ``seq``, a counter of the web process that sent it (clients that handle messages in
threads, like python-socketio's, restore the order with it; browsers need not).
Events come from this process's bus and, through engine/run/eventlink.py, from the batch
server, its workers and CLI commands. One pump thread sends them in batches, so a burst of
events costs one message per client rather than one per event, and a slow client never
slows down a run. With ``FLOWMILL_SOCKETIO_QUEUE=redis://…`` every web process publishes
through Redis, so a client sees every event whichever process it is connected to.

Connections are authenticated (session cookie of the same origin, or ``auth={"token":
…}``); cross-origin connections are refused (Socket.IO's default same-origin check).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from typing import Any

from flask import Flask, request, session
from flask_socketio import SocketIO

from engine.access.users import AuthError
from engine.run.events import Event

__all__ = ["NAMESPACE", "LiveHub"]

log = logging.getLogger(__name__)

NAMESPACE = "/live"
BATCH = 500  # events per message at most
LINGER = 0.05  # seconds a batch waits for more events: 200 clients × many events stay cheap


class LiveHub:
    """The Socket.IO server of one web process and the thread that broadcasts events."""

    def __init__(self, app: Flask, service: Any, queue_url: str | None = None) -> None:
        self.service = service
        self.socketio = SocketIO(
            app,
            async_mode="threading",
            message_queue=queue_url or None,
            channel="flowmill-live",
            cors_allowed_origins=None,  # same origin only
            logger=False,
            engineio_logger=False,
        )
        self.clients = 0
        self._pending: queue.SimpleQueue[dict[str, Any] | None] = queue.SimpleQueue()
        self._seq = 0
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._unsubscribe = service.bus.subscribe(Event, self._on_event)
        self.start()
        self.socketio.on("connect", namespace=NAMESPACE)(self._connect)
        self.socketio.on("disconnect", namespace=NAMESPACE)(self._disconnect)

    # -- connections ----------------------------------------------------------------------
    def _connect(self, auth: Any = None) -> bool:
        """Accept a logged-in browser or a script with an API token; refuse anyone else."""
        try:
            if isinstance(auth, dict) and auth.get("token"):
                user = self.service.users.user_for_token(str(auth["token"]))
            elif session.get("user"):
                user = self.service.users.get(session["user"])
                if user.disabled:
                    raise AuthError("user disabled")
            else:
                raise AuthError("not logged in")
        except Exception as exc:
            log.info("live: refused a connection from %s: %s", request.remote_addr, exc)
            raise ConnectionRefusedError("log in first (session cookie or auth token)") from None
        with self._lock:
            self.clients += 1
        return True

    def _disconnect(self, *args: Any) -> None:
        with self._lock:
            self.clients -= 1

    # -- events ---------------------------------------------------------------------------
    def _on_event(self, event: Event) -> None:
        self.publish(event.to_dict())

    def publish(self, data: dict[str, Any]) -> None:
        """Queue one event (a dict with ``event``) for every client; never blocks."""
        self._pending.put(data)

    def start(self) -> None:
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._pump, name="flowmill-live", daemon=True
                )
                self._thread.start()

    def _pump(self) -> None:
        """Send events in batches: what arrives within LINGER of the first goes along."""
        while True:
            first = self._pending.get()
            if first is None:
                return
            batch = [first]
            deadline = time.monotonic() + LINGER
            while len(batch) < BATCH:
                try:
                    item = self._pending.get(timeout=max(0.0, deadline - time.monotonic()))
                except queue.Empty:
                    break
                if item is None:
                    self._emit(batch)
                    return
                batch.append(item)
            self._emit(batch)

    def _emit(self, batch: list[dict[str, Any]]) -> None:
        for item in batch:
            self._seq += 1
            item["seq"] = self._seq
        try:
            self.socketio.emit("events", batch, namespace=NAMESPACE)
        except Exception:
            log.exception("live: could not broadcast %d events", len(batch))

    def stop(self) -> None:
        self._unsubscribe()
        if self._thread is not None:
            self._pending.put(None)
            self._thread.join(2.0)
