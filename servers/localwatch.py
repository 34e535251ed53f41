"""Local folders of ``trigger.file_drop`` nodes (``source: local``), watched with watchdog.

A file counts as complete when the writer closed it (inotify's close-after-write) and its
size is the same a moment later; a file moved into the folder counts at once (a rename is
how careful writers finish). Hidden files (``.name``) are temporary by convention and
ignored. Only files that arrive while the folder is watched start jobs.
"""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from watchdog.events import FileClosedEvent, FileMovedEvent, FileSystemEventHandler
from watchdog.observers import Observer

from servers.drops import DropEvent, DropQueue, sha256_of

__all__ = ["LocalWatcher"]

log = logging.getLogger(__name__)

STABLE_AFTER = 0.05  # seconds: the size must not change in this time


class _Handler(FileSystemEventHandler):
    def __init__(self, watcher: LocalWatcher) -> None:
        self.watcher = watcher

    def on_closed(self, event: FileClosedEvent) -> None:
        if not event.is_directory:  # the size must settle: checked off the observer thread
            self.watcher.pool.submit(self.watcher.complete, Path(str(event.src_path)), True)

    def on_moved(self, event: FileMovedEvent) -> None:
        if not event.is_directory:  # a rename finishes a file at once
            self.watcher.complete(Path(str(event.dest_path)), False)


class LocalWatcher:
    def __init__(self, drops: DropQueue) -> None:
        self.drops = drops
        self.refused = 0
        self._observer: Any = Observer()
        self._watches: dict[Path, Any] = {}
        self._lock = threading.Lock()
        self._handler = _Handler(self)
        self.pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="flowmill-local-drop")

    def start(self) -> None:
        self._observer.start()

    def watch(self, folders: set[Path]) -> None:
        """Watch exactly these folders (called whenever the flows change)."""
        folders = {folder.resolve() for folder in folders}
        with self._lock:
            for folder in set(self._watches) - folders:
                self._observer.unschedule(self._watches.pop(folder))
            for folder in folders - set(self._watches):
                if not folder.is_dir():
                    log.warning("file drop folder %s does not exist (yet)", folder)
                    continue
                self._watches[folder] = self._observer.schedule(
                    self._handler, str(folder), recursive=False
                )

    def complete(self, path: Path, settle: bool) -> None:
        if path.name.startswith(".") or path.parent not in self._watches:
            return
        try:
            size = path.stat().st_size
            if settle:
                time.sleep(STABLE_AFTER)
                if not path.is_file() or path.stat().st_size != size:
                    return  # still being written: its next close counts
            event = DropEvent(
                path=str(path),
                name=path.name,
                size=size,
                user=None,
                source="local",
                sha256=sha256_of(path),
            )
        except FileNotFoundError:
            return  # moved on already
        if not self.drops.offer(event):
            self.refused += 1
            log.error("file drop queue full: %s left in place, not started", path)

    def stop(self) -> None:
        self._observer.stop()
        self._observer.join(5)
        self.pool.shutdown(wait=True, cancel_futures=True)
