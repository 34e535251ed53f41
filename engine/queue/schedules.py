"""Recurring schedules, named calendars and named time conditions, kept in the store.

The time logic itself (cron, intervals, DST, holidays, windows, misfire) is
``engine.queue.calendars``; this module stores the definitions and, on every scheduler turn,
turns due fire times into jobs — at most one per schedule per turn, never a burst.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from engine.clock import Clock
from engine.errors import FlowmillError
from engine.queue.calendars import (
    DEFAULT_TZ,
    Calendar,
    Schedule,
    ScheduleError,
    TimeCondition,
)
from engine.store.sql import SqlRunStore
from engine.store.tables import calendars, schedules, time_conditions

__all__ = ["ScheduleInfo", "ScheduleNotFound", "ScheduleStore"]

log = logging.getLogger(__name__)


class ScheduleNotFound(FlowmillError):
    """No schedule of that name (the API answers 404)."""

    def __init__(self, name: str) -> None:
        super().__init__(f"schedule {name!r} does not exist")
        self.name = name


@dataclass(frozen=True)
class ScheduleInfo:
    name: str
    flow_id: str
    spec: dict[str, Any]
    params: dict[str, Any]
    priority: int
    enabled: bool
    last_fire: datetime | None
    next_fire: datetime | None
    error: str | None
    created_at: datetime

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "flow": self.flow_id,
            "spec": self.spec,
            "params": self.params,
            "priority": self.priority,
            "enabled": self.enabled,
            "last_fire": self.last_fire.isoformat() if self.last_fire else None,
            "next_fire": self.next_fire.isoformat() if self.next_fire else None,
            "error": self.error,
            "created_at": self.created_at.isoformat(),
        }


def _info(row: Any) -> ScheduleInfo:
    return ScheduleInfo(
        row.name,
        row.flow_id,
        json.loads(row.spec),
        json.loads(row.params),
        row.priority,
        bool(row.enabled),
        row.last_fire,
        row.next_fire,
        row.error,
        row.created_at,
    )


class ScheduleStore:
    def __init__(self, store: SqlRunStore, clock: Clock) -> None:
        self.store = store
        self.clock = clock

    # -- calendars and conditions --------------------------------------------------------
    def set_calendar(
        self, name: str, holidays: str | None, exclusions: Iterable[date | str] = ()
    ) -> Calendar:
        """Define (or replace) a named calendar: a region's public holidays plus dates."""
        try:
            days = sorted(
                {d if isinstance(d, date) else date.fromisoformat(str(d)) for d in exclusions}
            )
        except ValueError as exc:
            raise ScheduleError("exclusions", f"{exc} (use YYYY-MM-DD)") from None
        calendar = Calendar.parse(holidays or "", days, name=name)  # validates the region
        values = {
            "holidays": holidays or None,
            "exclusions": json.dumps([d.isoformat() for d in days]),
            "updated_at": self.clock.now(),
        }
        self._upsert(calendars, name, values)
        return calendar

    def calendars(self) -> dict[str, Calendar]:
        rows = self._rows(calendars)
        return {
            r.name: Calendar.parse(r.holidays or "", json.loads(r.exclusions), name=r.name)
            for r in rows
        }

    def set_condition(
        self, name: str, windows: Mapping[str, str], calendar: str | None = None
    ) -> TimeCondition:
        """Define (or replace) a named time condition, e.g. workdays 06:00–20:00."""
        condition = TimeCondition.parse(name, windows)
        if calendar:
            self._calendar(calendar)
        self._upsert(
            time_conditions,
            name,
            {
                "windows": json.dumps(condition.to_spec()),
                "calendar": calendar or None,
                "updated_at": self.clock.now(),
            },
        )
        return condition

    def conditions(self) -> dict[str, tuple[TimeCondition, str | None]]:
        """Each condition with the name of the calendar whose holidays count as Sundays."""
        return {
            r.name: (TimeCondition.parse(r.name, json.loads(r.windows)), r.calendar)
            for r in self._rows(time_conditions)
        }

    def closed_conditions(self, now: datetime) -> list[str]:
        """Names of the time conditions whose windows are shut at ``now``."""
        cals = self.calendars()
        closed = []
        for name, (condition, calendar) in self.conditions().items():
            cal = self._calendar(calendar, cals) if calendar else None
            if not condition.allows(now, cal, tz=DEFAULT_TZ):
                closed.append(name)
        return closed

    def _calendar(self, name: str, known: Mapping[str, Calendar] | None = None) -> Calendar:
        known = self.calendars() if known is None else known
        return known.get(name) or Calendar.parse(name)

    # -- schedules ---------------------------------------------------------------------
    def build(self, spec: Mapping[str, Any]) -> Schedule:
        """A Schedule from its stored form, resolving named calendars and conditions.

        A named condition brings its own calendar unless the schedule names one.
        """
        conditions = self.conditions()
        spec = dict(spec)
        named = conditions.get(str(spec.get("condition") or ""))
        if named and named[1] and not spec.get("calendar"):
            spec["calendar"] = named[1]
        return Schedule.from_config(
            spec,
            conditions={n: c for n, (c, _) in conditions.items()},
            calendars=self.calendars(),
        )

    def add(
        self,
        name: str,
        flow_id: str,
        spec: Mapping[str, Any],
        params: Mapping[str, Any] | None = None,
        priority: int = 0,
    ) -> ScheduleInfo:
        """Create or replace a schedule; refuses one that can never fire."""
        now = self.clock.now()
        schedule = self.build(spec)
        upcoming = schedule.next_fire(now)  # raises ScheduleError for impossible ones
        self._upsert(
            schedules,
            name,
            {
                "flow_id": flow_id,
                "spec": json.dumps(dict(spec), ensure_ascii=False),
                "params": json.dumps(dict(params or {}), ensure_ascii=False, default=str),
                "priority": priority,
                "enabled": True,
                "last_fire": now,  # nothing before the creation counts as missed
                "next_fire": upcoming,
                "error": None,
                "created_at": now,
            },
        )
        return self.get(name)

    def get(self, name: str) -> ScheduleInfo:
        row = self.store.transaction(
            lambda conn: conn.execute(sa.select(schedules).where(schedules.c.name == name)).first(),
            write=False,
        )
        if row is None:
            raise ScheduleNotFound(name)
        return _info(row)

    def list(self) -> list[ScheduleInfo]:
        return [_info(r) for r in self._rows(schedules)]

    def remove(self, name: str) -> None:
        self.get(name)
        self.store.transaction(
            lambda conn: conn.execute(sa.delete(schedules).where(schedules.c.name == name))
        )

    def fire(self, submit: Callable[[ScheduleInfo, datetime], Any]) -> list[tuple[str, Any]]:
        """Start what is due now: ``submit(schedule, fire_time)`` for each due schedule.

        After downtime a schedule starts at most once (misfire ``run_once``) or not at
        all (``skip``). A schedule that fails (impossible, or its flow is gone) records the
        error and stops instead of retrying every turn.
        """
        now = self.clock.now()
        started: list[tuple[str, Any]] = []
        for info in self.list():
            if not info.enabled or info.error or (info.next_fire and info.next_fire > now):
                continue
            try:
                schedule = self.build(info.spec)
                fires, upcoming = schedule.due(info.last_fire, now)
                results = [submit(info, moment) for moment in fires]
                error = None
            except (ScheduleError, FlowmillError) as exc:
                fires, upcoming, results, error = [], None, [], str(exc)
                log.error("schedule %s stopped: %s", info.name, exc)
            self.store.transaction(
                lambda conn, info=info, upcoming=upcoming, error=error: conn.execute(
                    sa.update(schedules)
                    .where(schedules.c.name == info.name)
                    .values(last_fire=now, next_fire=upcoming, error=error)
                )
            )
            started.extend((info.name, r) for r in results)
        return started

    # -- helpers -----------------------------------------------------------------------
    def _rows(self, table: sa.Table) -> list[Any]:
        first = next(iter(table.primary_key.columns))
        return self.store.transaction(
            lambda conn: conn.execute(sa.select(table).order_by(first)).all(), write=False
        )

    def _upsert(self, table: sa.Table, name: str, values: dict[str, Any]) -> None:
        def work(conn: Connection) -> None:
            updated = conn.execute(sa.update(table).where(table.c.name == name).values(**values))
            if updated.rowcount == 0:
                conn.execute(sa.insert(table).values(name=name, **values))

        self.store.transaction(work)
