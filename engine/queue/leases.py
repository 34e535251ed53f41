"""One active scheduler: a lease row with a heartbeat, and the list of servers.

The active server renews the lease well within its timeout; every other server waits
as a hot standby and takes the lease when it has expired (its holder died or hangs).
Taking and renewing are one conditional UPDATE each, so two servers can never both
believe they are active.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from datetime import datetime, timedelta

import sqlalchemy as sa
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError

from engine.clock import Clock
from engine.store.sql import SqlRunStore
from engine.store.tables import leases, servers

__all__ = ["Lease", "LeaseInfo", "ServerInfo", "SCHEDULER_LEASE"]

SCHEDULER_LEASE = "scheduler"


@dataclass(frozen=True)
class LeaseInfo:
    name: str
    holder: str
    acquired_at: datetime
    heartbeat_at: datetime
    expires_at: datetime


@dataclass(frozen=True)
class ServerInfo:
    id: str
    host: str
    pid: int
    role: str
    started_at: datetime
    heartbeat_at: datetime


class Lease:
    """The scheduler lease as seen by one server (``holder``)."""

    def __init__(
        self,
        store: SqlRunStore,
        clock: Clock,
        holder: str,
        timeout: float,
        name: str = SCHEDULER_LEASE,
    ) -> None:
        self.store = store
        self.clock = clock
        self.holder = holder
        self.timeout = timedelta(seconds=timeout)
        self.name = name

    def acquire(self) -> bool:
        """Take or renew the lease; True while this server holds it."""
        now = self.clock.now()
        expires = now + self.timeout

        def work(conn: Connection) -> bool:
            taken = conn.execute(
                sa.update(leases)
                .where(leases.c.name == self.name)
                .where(sa.or_(leases.c.holder == self.holder, leases.c.expires_at < now))
                .values(
                    holder=self.holder,
                    heartbeat_at=now,
                    expires_at=expires,
                    acquired_at=sa.case(
                        (leases.c.holder == self.holder, leases.c.acquired_at), else_=now
                    ),
                )
            )
            if taken.rowcount == 1:
                return True
            exists = conn.execute(
                sa.select(leases.c.name).where(leases.c.name == self.name)
            ).first()
            if exists is not None:
                return False
            conn.execute(
                sa.insert(leases).values(
                    name=self.name,
                    holder=self.holder,
                    acquired_at=now,
                    heartbeat_at=now,
                    expires_at=expires,
                )
            )
            return True

        try:
            return self.store.transaction(work)
        except IntegrityError:
            return False  # another server inserted the row first

    def release(self) -> None:
        """Give the lease up at once (graceful stop), so a standby need not wait."""
        self.store.transaction(
            lambda conn: conn.execute(
                sa.delete(leases).where(leases.c.name == self.name, leases.c.holder == self.holder)
            )
        )

    def info(self) -> LeaseInfo | None:
        row = self.store.transaction(
            lambda conn: conn.execute(sa.select(leases).where(leases.c.name == self.name)).first(),
            write=False,
        )
        if row is None:
            return None
        return LeaseInfo(row.name, row.holder, row.acquired_at, row.heartbeat_at, row.expires_at)

    # -- the servers list --------------------------------------------------------------
    def register(self, role: str) -> None:
        """Record this server (and its heartbeat) for ``flowmill status``."""
        now = self.clock.now()

        def work(conn: Connection) -> None:
            updated = conn.execute(
                sa.update(servers)
                .where(servers.c.id == self.holder)
                .values(role=role, heartbeat_at=now)
            )
            if updated.rowcount == 0:
                conn.execute(
                    sa.insert(servers).values(
                        id=self.holder,
                        host=socket.gethostname(),
                        pid=os.getpid(),
                        role=role,
                        started_at=now,
                        heartbeat_at=now,
                    )
                )

        self.store.transaction(work)

    def servers(self) -> list[ServerInfo]:
        rows = self.store.transaction(
            lambda conn: conn.execute(sa.select(servers).order_by(servers.c.started_at)).all(),
            write=False,
        )
        return [ServerInfo(r.id, r.host, r.pid, r.role, r.started_at, r.heartbeat_at) for r in rows]
