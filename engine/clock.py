"""Time as the batch server sees it: one ``now()`` that tests can control.

Everything that decides with time (due, expired, lease lost, heartbeat stale, schedule
fired) asks a ``Clock``; only waiting for wake-ups uses real seconds.
"""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from engine.errors import FlowmillError

__all__ = ["Clock", "SystemClock", "FakeClock", "parse_moment"]


class Clock(Protocol):
    def now(self) -> datetime:
        """The current time, timezone-aware UTC."""
        ...


class SystemClock:
    """The real time."""

    def now(self) -> datetime:
        return datetime.now(UTC)


class FakeClock:
    """A clock that moves only when told to (``advance``/``set``); thread-safe."""

    def __init__(self, start: datetime | None = None) -> None:
        self._now = start or datetime(2026, 11, 23, 8, 0, tzinfo=UTC)
        self._lock = threading.Lock()

    def now(self) -> datetime:
        with self._lock:
            return self._now

    def advance(self, delta: timedelta | float) -> datetime:
        step = delta if isinstance(delta, timedelta) else timedelta(seconds=delta)
        with self._lock:
            self._now += step
            return self._now

    def set(self, moment: datetime) -> None:
        if moment.tzinfo is None:
            raise ValueError("FakeClock.set needs an aware datetime")
        with self._lock:
            self._now = moment.astimezone(UTC)


def parse_moment(text: Any, field: str = "not_before") -> datetime | None:
    """An ISO date-time given by a user (CLI, API, request file); None when empty.

    A time without a zone means the server's local wall clock.

    Raises:
        FlowmillError: naming ``field`` when ``text`` is not an ISO date-time.
    """
    if not text:
        return None
    try:
        moment = datetime.fromisoformat(str(text))
    except ValueError:
        raise FlowmillError(f"{field}: {text!r} is not an ISO date-time") from None
    return moment if moment.tzinfo else moment.astimezone()
