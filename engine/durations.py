"""Durations as people write them: ``90s``, ``15m``, ``2h``, ``1d``, ``1h30m``."""

from __future__ import annotations

import re
from datetime import timedelta

from engine.errors import FlowmillError

__all__ = ["parse_duration", "format_duration"]

_PART = re.compile(r"(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)")
_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_duration(text: str, field: str = "duration") -> timedelta:
    """Parse ``text``; raises FlowmillError naming ``field`` when it is not a duration.

    >>> parse_duration("1h30m")
    datetime.timedelta(seconds=5400)
    """
    cleaned = str(text).strip().lower().replace(" ", "")
    if not cleaned or _PART.sub("", cleaned):
        raise FlowmillError(
            f"{field}: {text!r} is not a duration (examples: 90s, 15m, 2h, 1d, 1h30m)"
        )
    seconds = sum(float(n) * _UNITS[unit] for n, unit in _PART.findall(cleaned))
    if seconds <= 0:
        raise FlowmillError(f"{field}: {text!r} must be longer than zero")
    return timedelta(seconds=seconds)


def format_duration(delta: timedelta) -> str:
    """The shortest text ``parse_duration`` reads back (``5400 s`` → ``1h30m``)."""
    seconds = int(delta.total_seconds())
    parts = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if seconds >= size:
            parts.append(f"{seconds // size}{unit}")
            seconds %= size
    return "".join(parts) or "0s"
