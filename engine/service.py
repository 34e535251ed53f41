"""The service layer: every operation a user can do, as one function, for every front end.

The CLI (and later the REST API, request files and the dashboard) call these methods, so
behaviour cannot drift apart between them. No Flask here.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from engine.config import Settings
from engine.events import EventBus
from engine.executor import Executor, RunResult
from engine.recorder import RunRecorder
from engine.registry import Registry
from engine.store import RunStore, open_store
from engine.validate import ValidationIssue, validate_flow

__all__ = ["Flowmill"]


class Flowmill:
    """One Flowmill installation: settings, node registry, run store, bus and executor.

    Collaborators come in through the constructor; ``Flowmill.open`` wires the defaults.
    """

    def __init__(
        self,
        settings: Settings,
        registry: Registry,
        store: RunStore,
        bus: EventBus | None = None,
    ) -> None:
        self.settings = settings
        self.registry = registry
        self.store = store
        self.bus = bus or EventBus()
        self.recorder = RunRecorder(store, self.bus)
        self.executor = Executor(
            registry,
            self.bus,
            data_dir=settings.data_dir,
            store=store,
            batch_size=settings.batch_size,
            queue_depth=settings.queue_depth,
            connection_lookup=store.get_connection,
            secret_lookup=store.get_secret,
        )

    @classmethod
    def open(cls, data_dir: str | Path | None = None, registry: Registry | None = None) -> Flowmill:
        """Settings from the data directory, node types from entry points, the store."""
        settings = Settings.load(data_dir)
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        store = open_store(settings.store_url, settings.data_dir)
        return cls(settings, registry or Registry.discover(), store)

    def close(self) -> None:
        self.recorder.close()
        self.store.close()

    def __enter__(self) -> Flowmill:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- flows -----------------------------------------------------------------------
    def validate(self, flow: Any) -> list[ValidationIssue]:
        return validate_flow(flow, self.registry)

    def run_flow(
        self,
        flow: dict[str, Any],
        params: Mapping[str, Any] | None = None,
        *,
        flow_dir: Path | None = None,
        cancel_event: threading.Event | None = None,
    ) -> RunResult:
        """Run a flow now, in this process, recording it in the store."""
        return self.executor.run(flow, params, flow_dir=flow_dir, cancel_event=cancel_event)

    # -- connections and secrets -------------------------------------------------------
    def set_connection(self, name: str, settings: dict[str, Any]) -> None:
        self.store.set_connection(name, settings)

    def list_connections(self) -> list[str]:
        return self.store.list_connections()

    def remove_connection(self, name: str) -> bool:
        return self.store.delete_connection(name)

    def set_secret(self, name: str, value: str) -> None:
        self.store.set_secret(name, value)

    def list_secrets(self) -> list[str]:
        return self.store.list_secrets()

    def remove_secret(self, name: str) -> bool:
        return self.store.delete_secret(name)
