"""Flows kept by the server: the current version of each flow id, enabled or not.

The text of every version lives in ``flow_versions`` (by hash, shared with runs); this
table only says which hash is current, where it came from and whether its triggers are
armed.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from engine.clock import Clock, SystemClock
from engine.errors import FlowmillError
from engine.flows.format import dump_flow, flow_hash, parse_flow_text
from engine.store.sql import SqlRunStore
from engine.store.tables import flows

__all__ = ["FlowConflict", "FlowInfo", "FlowNotFound", "FlowStore"]

ANY = object()  # ``expect``: no optimistic check


class FlowNotFound(FlowmillError):
    def __init__(self, flow_id: str) -> None:
        super().__init__(f"flow {flow_id!r} is not on the server (import it first)")
        self.flow_id = flow_id


class FlowConflict(FlowmillError):
    """The flow changed since the caller read it (optimistic locking), or exists already."""

    def __init__(self, message: str, current_hash: str | None, base_hash: str | None) -> None:
        super().__init__(message)
        self.current_hash = current_hash
        self.base_hash = base_hash


@dataclass(frozen=True)
class FlowInfo:
    id: str
    name: str | None
    flow_hash: str
    enabled: bool
    source: str | None
    updated_at: datetime

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "hash": self.flow_hash,
            "enabled": self.enabled,
            "source": self.source,
            "updated_at": self.updated_at.isoformat(),
        }


def _info(row: Any) -> FlowInfo:
    return FlowInfo(row.id, row.name, row.flow_hash, bool(row.enabled), row.source, row.updated_at)


class FlowStore:
    def __init__(self, store: SqlRunStore, clock: Clock | None = None) -> None:
        self.store = store
        self.clock = clock or SystemClock()

    def put(
        self, flow: dict[str, Any], source: str | None = None, expect: Any = ANY
    ) -> tuple[FlowInfo, bool]:
        """Store ``flow`` as the current version of its id; True when that changed anything.

        A flow new to the server is enabled; a new version keeps the enabled switch.
        ``expect`` is the hash the caller's edit started from (None: the flow must be new);
        checked in the same transaction as the write, so two editors cannot both win.
        """
        digest = flow_hash(flow)
        self.store.save_flow_version(flow["id"], digest, dump_flow(flow))
        now = self.clock.now()

        def work(conn: Connection) -> tuple[FlowInfo, bool]:
            query = sa.select(flows).where(flows.c.id == flow["id"])
            row = conn.execute(query.with_for_update()).first()
            current_hash = None if row is None else row.flow_hash
            if expect is not ANY and expect != current_hash:
                if expect is None:
                    message = f"flow {flow['id']!r} exists already; save it with its hash"
                else:
                    message = (
                        f"flow {flow['id']!r} was saved by someone else since you opened it;"
                        " reload it"
                    )
                raise FlowConflict(message, current_hash, expect)
            if row is None:
                conn.execute(
                    sa.insert(flows).values(
                        id=flow["id"],
                        name=flow.get("name"),
                        flow_hash=digest,
                        enabled=True,
                        source=source,
                        updated_at=now,
                    )
                )
                changed = True
            else:
                changed = row.flow_hash != digest
                if changed or (source and row.source != source):
                    conn.execute(
                        sa.update(flows)
                        .where(flows.c.id == flow["id"])
                        .values(
                            name=flow.get("name"),
                            flow_hash=digest,
                            source=source or row.source,
                            updated_at=now,
                        )
                    )
            current = conn.execute(sa.select(flows).where(flows.c.id == flow["id"])).one()
            return _info(current), changed

        return self.store.transaction(work)

    def info(self, flow_id: str) -> FlowInfo:
        row = self.store.transaction(
            lambda conn: conn.execute(sa.select(flows).where(flows.c.id == flow_id)).first(),
            write=False,
        )
        if row is None:
            raise FlowNotFound(flow_id)
        return _info(row)

    def get(self, flow_id: str) -> tuple[dict[str, Any], FlowInfo]:
        """The current flow document and its info."""
        info = self.info(flow_id)
        text = self.store.get_flow_version(info.flow_hash)
        if text is None:  # pragma: no cover - the version is written before the pointer
            raise FlowNotFound(flow_id)
        return parse_flow_text(text, f"flow {flow_id}"), info

    def list(self) -> list[FlowInfo]:
        rows = self.store.transaction(
            lambda conn: conn.execute(sa.select(flows).order_by(flows.c.id)).all(), write=False
        )
        return [_info(r) for r in rows]

    def set_enabled(self, flow_id: str, enabled: bool) -> FlowInfo:
        self.info(flow_id)
        self.store.transaction(
            lambda conn: conn.execute(
                sa.update(flows)
                .where(flows.c.id == flow_id)
                .values(enabled=enabled, updated_at=self.clock.now())
            )
        )
        return self.info(flow_id)

    def remove(self, flow_id: str) -> None:
        """Forget the flow (its versions stay: runs and jobs still point at them)."""
        self.info(flow_id)
        self.store.transaction(
            lambda conn: conn.execute(sa.delete(flows).where(flows.c.id == flow_id))
        )
