"""Status files of a running server in ``DATA/run/``, for ``flowmill status``.

A long-running part of ``flowmill serve`` (file servers, trigger listeners) writes what it
is doing every few seconds; ``flowmill status``, another process, reads it. A file older
than a few writes was left by a server that died, and reads as "not running".
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

__all__ = ["read_status", "status_path", "write_status"]


def status_path(data_dir: Path, name: str) -> Path:
    return Path(data_dir) / "run" / f"{name}.json"


def write_status(path: Path, status: Mapping[str, Any]) -> None:
    """Replace the file at once (never half-written), stamped with the time."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_suffix(".tmp")
    temp.write_text(json.dumps({**status, "at": time.time()}, default=str))
    temp.replace(path)


def read_status(path: Path, max_age: float) -> dict[str, Any] | None:
    """The last status written, or None: no file, unreadable, or older than ``max_age``."""
    try:
        status = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(status, dict) or time.time() - float(status.get("at", 0)) > max_age:
        return None
    return status
