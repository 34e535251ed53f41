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
        FlowmillError: naming ``field`` when ``text`` is not an ISO date-time, or is one
            that does not lie within the years 1 to 9999 also in UTC (the store keeps UTC).

    >>> parse_moment("2026-11-23T08:00+01:00", "--at").isoformat()
    '2026-11-23T08:00:00+01:00'
    """
    if not text:
        return None
    raw = str(text)
    shown = repr(raw[:40]) + ("…" if len(raw) > 40 else "")
    try:
        moment = datetime.fromisoformat(raw)
    except ValueError:
        raise FlowmillError(f"{field}: {shown} is not an ISO date-time") from None
    try:
        if moment.tzinfo is None:
            moment = moment.astimezone()
        moment.astimezone(UTC)
    except (OverflowError, ValueError):  # 0001-01-01T00:00 local or +14:00 is year 0 in UTC
        raise FlowmillError(
            f"{field}: {shown} is out of range: it must lie within the years 1 to 9999, also in UTC"
        ) from None
    return moment
