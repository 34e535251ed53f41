"""From completed files to jobs: match ``trigger.file_drop`` nodes, queue, then tidy up.

One thread takes completed uploads (FTPS, WebDAV) and closed files of watched local
folders from the ``DropQueue``. Each file starts one job per enabled flow whose
``trigger.file_drop`` node matches it (the job's first record is the file's record). A
``*.json`` file uploaded into a drop user's ``requests/`` folder is a job request, handled
like one in ``DATA/requests`` (its outcome lands in ``requests/accepted`` or
``requests/rejected`` of that user, where the partner can see it). When every job a file
started has finished, ``after`` is applied: keep, move to ``processed/`` or ``failed/``
beside it, or delete it (only when all succeeded).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from engine.batch.filedrops import matches
from engine.batch.requestfiles import RequestFolder
from engine.errors import FlowmillError
from servers.drops import DropEvent, DropQueue

__all__ = ["DropDispatcher"]

log = logging.getLogger(__name__)

REFRESH_EVERY = 2.0  # seconds between re-reading the enabled flows' trigger nodes
CHECK_EVERY = 0.5  # seconds between looks at the jobs of dropped files
TERMINAL = {"succeeded", "failed", "cancelled", "killed", "expired", "dead_letter"}


@dataclass
class _Trigger:
    flow_id: str
    node_id: str
    config: dict[str, Any]


@dataclass
class _Pending:
    path: Path
    after: str
    jobs: list[int] = field(default_factory=list)


class DropDispatcher:
    def __init__(
        self,
        service: Any,
        drops: DropQueue,
        echo: Callable[[str], None],
        on_folders: Callable[[set[Path]], None] | None = None,
    ) -> None:
        self.service = service
        self.on_folders = on_folders  # told the local folders to watch after each refresh
        self.drops = drops
        self.echo = echo
        self.started = 0
        self.unmatched = 0
        self._triggers: list[_Trigger] = []
        self._refreshed = 0.0
        self._checked = 0.0
        self._pending: dict[str, _Pending] = {}
        self._seen: dict[str, set[str]] = {}  # flow id -> sha256 of files that started a job
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- the flows that wait for files ---------------------------------------------------
    def triggers(self) -> list[_Trigger]:
        found = []
        for info in self.service.flows.list():
            if not info.enabled:
                continue
            flow, _ = self.service.flows.get(info.id)
            for node in flow.get("nodes", []):
                if node.get("type") == "trigger.file_drop" and not node.get("disabled"):
                    found.append(_Trigger(info.id, node["id"], dict(node.get("config") or {})))
        return found

    def local_folders(self) -> set[Path]:
        """Folders of ``source: local`` nodes, for the watcher."""
        return {
            Path(t.config["folder"])
            for t in self._triggers
            if t.config.get("source") == "local" and t.config.get("folder")
        }

    # -- one file -------------------------------------------------------------------------
    def handle(self, event: DropEvent) -> list[int]:
        """Start the jobs for one completed file; their ids."""
        record = event.record()
        parts = PurePosixPath(event.name).parts
        if event.source != "local" and parts[0] == "requests" and event.name.endswith(".json"):
            if len(parts) == 2:  # not requests/accepted/… or requests/rejected/…
                self._request(event)
            return []
        started: list[int] = []
        after = "keep"
        for trigger in self._triggers:
            if not matches(trigger.config, record):
                continue
            if trigger.config.get("duplicates") == "skip":
                seen = self._seen.setdefault(trigger.flow_id, set())
                if event.sha256 in seen:
                    self.echo(f"{_who(event)}: seen before, flow {trigger.flow_id} skips it")
                    continue
                seen.add(event.sha256)
            try:
                job = self.service.submit(
                    trigger.flow_id,
                    trigger=record,
                    source=f"file drop ({_who(event)})",
                    allow_files=False,
                )
            except FlowmillError as exc:
                self.echo(f"{_who(event)}: flow {trigger.flow_id} not started: {exc}")
                continue
            started.append(job.id)
            if after == "keep":
                after = trigger.config.get("after", "keep")
        if started:
            self.started += len(started)
            if after != "keep":
                self._pending[event.path] = _Pending(Path(event.path), after, started)
        else:
            self.unmatched += 1
            log.info("%s: no enabled flow waits for this file", _who(event))
        return started

    def _request(self, event: DropEvent) -> None:
        """A job request uploaded by a drop user: only users who may run jobs may send one."""
        folder = RequestFolder(Path(event.path).parent, self.service)
        try:
            allowed = self.service.users.get(event.user).can("jobs.run")
        except FlowmillError:
            allowed = False
        if not allowed:
            reason = f"user {event.user} may not run jobs (role without jobs.run)"
            if Path(event.path).exists():
                folder.reject(Path(event.path), reason)
            self.echo(f"request {event.user}:{event.name}: {reason}")
            return
        for name, outcome in folder.scan():
            self.echo(f"request {event.user}:{name}: {outcome}")

    # -- afterwards ----------------------------------------------------------------------
    def tidy(self) -> None:
        """Apply ``after`` to files whose jobs have all finished."""
        for key, pending in list(self._pending.items()):
            states = []
            for job_id in pending.jobs:
                try:
                    states.append(self.service.jobs.get(job_id).state)
                except FlowmillError:
                    states.append("failed")
            if not all(state in TERMINAL for state in states):
                continue
            del self._pending[key]
            ok = all(state == "succeeded" for state in states)
            try:
                self._apply(pending, ok)
            except OSError as exc:
                self.echo(f"{pending.path}: could not {pending.after} it: {exc}")

    @staticmethod
    def _apply(pending: _Pending, ok: bool) -> None:
        path = pending.path
        if not path.exists():
            return
        if pending.after == "delete":
            if ok:
                path.unlink()
            return
        folder = path.parent / ("processed" if ok else "failed")
        folder.mkdir(exist_ok=True)
        target = folder / path.name
        counter = 1
        while target.exists():
            counter += 1
            target = folder / f"{path.stem}.{counter}{path.suffix}"
        path.rename(target)

    # -- the thread ----------------------------------------------------------------------
    def step(self, wait: float = 0.2) -> None:
        now = time.monotonic()
        if now - self._refreshed >= REFRESH_EVERY:
            self._refreshed = now
            try:
                self._triggers = self.triggers()
            except FlowmillError as exc:
                log.warning("file drops: cannot read the flows: %s", exc)
            if self.on_folders is not None:
                self.on_folders(self.local_folders())
        event = self.drops.wait(wait)
        while event is not None:
            try:
                self.handle(event)
            except Exception:  # one bad file must not stop the dispatcher
                log.exception("file drop %s failed", event.path)
            event = self.drops.wait(0)
        if now - self._checked >= CHECK_EVERY:
            self._checked = now
            self.tidy()

    def start(self) -> None:
        self._triggers = self.triggers()
        self._refreshed = time.monotonic()
        self._thread = threading.Thread(target=self._run, name="flowmill-drops", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.step()
            except Exception:  # e.g. the database is away for a moment: try again
                log.exception("file drops: dispatcher step failed")
                self._stop.wait(1.0)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)

    def describe(self) -> dict[str, Any]:
        return {
            "waiting": len(self.drops),
            "jobs_started": self.started,
            "unmatched_files": self.unmatched,
            "flows_waiting": sorted({t.flow_id for t in self._triggers}),
        }


def _who(event: DropEvent) -> str:
    return f"{event.source} {event.user + ':' if event.user else ''}{event.name}"
