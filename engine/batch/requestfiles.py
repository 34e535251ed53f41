"""Request files: a ``*.json`` file dropped into ``DATA/requests/`` becomes a job.

``{"flow": "...", "params": {...}, "priority": 0, "not_before": "...", "max_delay": "2h",
"group": "..."}`` (also ``pool``, ``condition``, ``max_attempts``). An accepted file moves
to ``requests/accepted/`` (its name gets the job id), a rejected one to
``requests/rejected/`` with ``NAME.reason.txt`` beside it saying why. A file that is still
being written (not valid JSON yet and changed in the last seconds) is left for the next
look.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import jsonschema

from engine.clock import parse_moment
from engine.errors import FlowmillError
from engine.queue.calendars import parse_every

__all__ = ["REQUEST_SCHEMA", "RequestFolder"]

log = logging.getLogger(__name__)

SETTLE_SECONDS = 2.0
MAX_REQUEST_BYTES = 1024 * 1024

REQUEST_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["flow"],
    "properties": {
        "flow": {"type": "string", "minLength": 1},
        "params": {"type": "object"},
        "priority": {"type": "integer"},
        "not_before": {"type": "string"},
        "max_delay": {"type": "string"},
        "group": {"type": "string", "minLength": 1},
        "pool": {"type": "string", "minLength": 1},
        "condition": {"type": "string", "minLength": 1},
        "max_attempts": {"type": "integer", "minimum": 1, "maximum": 100},
    },
}
_VALIDATOR = jsonschema.Draft202012Validator(REQUEST_SCHEMA)


class RequestFolder:
    """Turns request files into jobs through the service layer (``app.submit``)."""

    def __init__(self, root: Path, app: Any) -> None:
        self.root = Path(root)
        self.accepted = self.root / "accepted"
        self.rejected = self.root / "rejected"
        self.app = app

    def scan(self) -> list[tuple[str, int | str]]:
        """Handle every complete request file; returns (file name, job id or reason)."""
        if not self.root.is_dir():
            return []
        done: list[tuple[str, int | str]] = []
        for path in sorted(self.root.glob("*.json")):
            if not path.is_file():
                continue
            outcome = self._handle(path)
            if outcome is not None:
                done.append((path.name, outcome))
        return done

    def _handle(self, path: Path) -> int | str | None:
        try:
            stat = path.stat()
            if stat.st_size > MAX_REQUEST_BYTES:
                return self.reject(path, f"file is larger than {MAX_REQUEST_BYTES} bytes")
            raw = path.read_bytes()
        except FileNotFoundError:
            return None  # taken by someone else meanwhile
        try:
            request = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            if time.time() - stat.st_mtime < SETTLE_SECONDS:
                return None  # probably still being written: look again later
            return self.reject(path, f"not valid JSON: {exc}")
        problems = sorted(_VALIDATOR.iter_errors(request), key=lambda e: list(e.path))
        if problems:
            first = problems[0]
            where = ".".join(str(p) for p in first.absolute_path)
            return self.reject(path, f"{where + ': ' if where else ''}{first.message}")
        try:
            job = self.app.submit(
                request["flow"],
                request.get("params") or {},
                priority=request.get("priority", 0),
                not_before=parse_moment(request.get("not_before"), "not_before"),
                max_delay=parse_every(request["max_delay"], "max_delay")
                if request.get("max_delay")
                else None,
                group=request.get("group"),
                pool=request.get("pool"),
                time_condition=request.get("condition"),
                max_attempts=request.get("max_attempts", 1),
                source=f"request file {path.name}",
            )
        except FlowmillError as exc:
            return self.reject(path, str(exc))
        self.accepted.mkdir(parents=True, exist_ok=True)
        path.replace(_free_name(self.accepted / f"{path.stem}.job-{job.id}{path.suffix}"))
        log.info("request file %s accepted as job %s", path.name, job.id)
        return job.id

    def reject(self, path: Path, reason: str) -> str:
        """Move a request file to ``rejected/`` with ``NAME.reason.txt`` beside it."""
        self.rejected.mkdir(parents=True, exist_ok=True)
        target = _free_name(self.rejected / path.name)
        path.replace(target)
        target.with_name(target.name + ".reason.txt").write_text(reason + "\n", "utf-8")
        log.warning("request file %s rejected: %s", path.name, reason)
        return reason


def _free_name(path: Path) -> Path:
    """``path`` itself, or with a counter when a file of that name is already there."""
    candidate, n = path, 1
    while candidate.exists():
        candidate = path.with_name(f"{path.stem}.{n}{path.suffix}")
        n += 1
    return candidate
