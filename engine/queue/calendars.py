"""Recurring schedules: cron or interval, time conditions, holiday calendars, DST, misfires.

Pure time logic: no database, no threads, no clock of its own. Every public function takes
and returns timezone-aware datetimes (naive ones are refused, never guessed); wall-clock
rules (cron fields, windows, holidays) are evaluated in the schedule's time zone with
zoneinfo, and fire times come back in UTC.

DST, in Europe/Berlin as in every other zone:

- a cron wall time that does not exist (spring forward) fires once, at the first valid
  instant after the gap: ``30 2 * * *`` on 2026-03-29 fires at 03:00 CEST (01:00 UTC);
- a cron wall time that exists twice (fall back) fires once, at its first occurrence:
  ``30 2 * * *`` on 2026-10-25 fires at 02:30 CEST (00:30 UTC) and not again at 02:30 CET;
- intervals (``every``) run on absolute time: neither skipped nor doubled.

Every search is bounded (``SEARCH_YEARS``): a schedule that cannot fire within that horizon
raises ScheduleError instead of looping. See docs/schedules.md for the user's view.

>>> nightly = Schedule(cron="0 2 * * 1-5", calendar=Calendar.parse("DE"))
>>> nightly.next_fire(datetime(2026, 4, 2, 12, 0, tzinfo=UTC)).isoformat()  # skips Good Friday
'2026-04-07T00:00:00+00:00'
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from datetime import UTC, date, datetime, time, timedelta, tzinfo
from functools import lru_cache
from types import MappingProxyType
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import holidays
from croniter import CroniterBadDateError, CroniterError, croniter

from engine.errors import FlowmillError

__all__ = [
    "DAY_KINDS",
    "DEFAULT_MISFIRE_GRACE",
    "DEFAULT_TZ",
    "MISFIRE_POLICIES",
    "SEARCH_YEARS",
    "Calendar",
    "Schedule",
    "ScheduleError",
    "TimeCondition",
    "day_kind",
    "parse_every",
    "SPEC_KEYS",
    "preview",
]

DAY_KINDS = ("workday", "saturday", "sunday")
MISFIRE_POLICIES = ("run_once", "skip")
DEFAULT_TZ = "Europe/Berlin"
# A fire time less than this old when the scheduler looks is on time, not missed: a
# scheduler that wakes a few ms (or a fail-over some seconds) late must not `skip` it.
DEFAULT_MISFIRE_GRACE = timedelta(minutes=1)
SEARCH_YEARS = 5
SEARCH_HORIZON = timedelta(days=366 * SEARCH_YEARS)
# Closed windows are jumped over, so a real search needs at most a few thousand
# candidates; this only guards against a bug turning into an endless loop.
_MAX_CANDIDATES = 100_000
_DAY_US = 86_400_000_000
_ALL_DAY: tuple[tuple[int, int], ...] = ((0, _DAY_US),)
_US = timedelta(microseconds=1)
_ONE_DAY = timedelta(days=1)
_END_OF_DAY = time(0)  # as the end of a window: 24:00
_END_OF_TIME = datetime.max.replace(tzinfo=UTC)
# Interval phase when no anchor is given: a fixed local midnight (a Monday), so the answer
# does not depend on the day it is asked and `every=7d` falls on Mondays.
_DEFAULT_ANCHOR_WALL = datetime(2000, 1, 3)
_CRON_MACROS = frozenset(
    {"@yearly", "@annually", "@monthly", "@weekly", "@daily", "@midnight", "@hourly"}
)
_EVERY_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d|w)")
_EVERY_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_CLOCK = re.compile(r"(\d{1,2}):(\d{2})(?::(\d{2}))?")

Spans = tuple[tuple[int, int], ...]  # (start, end) in microseconds of the day, end exclusive


# the keys of a schedule's JSON form (trigger.schedule config, `schedules add`, the table)
SPEC_KEYS = (
    "cron", "every", "tz", "calendar", "condition", "windows",
    "misfire", "anchor", "until", "misfire_grace",
)  # fmt: skip


class ScheduleError(FlowmillError):
    """A schedule, time condition or calendar is malformed, or can never fire.

    ``field`` names the setting at fault (``cron``, ``every``, ``tz``, ``calendar``,
    ``windows.workday``, ``misfire``, ``after`` …) so the CLI and the editor can point at it.
    """

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


# ---------------------------------------------------------------------------- intervals


def parse_every(text: str, field: str = "every") -> timedelta:
    """Read an interval as people write it: ``90s``, ``15m``, ``2h``, ``1d``, ``1h30m``.

    Also used for ``max_delay`` (pass ``field="max_delay"`` so errors point there).

    Raises:
        ScheduleError: naming ``field`` when ``text`` is not a positive duration.

    >>> parse_every("1h30m")
    datetime.timedelta(seconds=5400)
    """
    cleaned = text.strip().lower().replace(" ", "") if isinstance(text, str) else ""
    if not cleaned or _EVERY_PART.sub("", cleaned):
        raise ScheduleError(
            field,
            f"bad interval {text!r}: use a number and a unit (s, m, h, d, w), "
            "e.g. 90s, 15m, 2h, 1d, 1h30m",
        )
    seconds = sum(float(n) * _EVERY_UNITS[unit] for n, unit in _EVERY_PART.findall(cleaned))
    if seconds <= 0:
        raise ScheduleError(field, f"interval {text!r} must be longer than zero")
    try:
        return timedelta(seconds=seconds)
    except OverflowError:  # also "inf": a digit string too long for a float
        raise ScheduleError(field, f"interval {text!r} is too long") from None


def _format_every(delta: timedelta) -> str:
    seconds, parts = int(delta.total_seconds()), []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if seconds >= size:
            parts.append(f"{seconds // size}{unit}")
            seconds %= size
    return "".join(parts) or f"{delta.total_seconds()}s"


# ---------------------------------------------------------------------------- calendars


@lru_cache(maxsize=1)
def _supported_regions() -> Mapping[str, Sequence[str]]:
    return holidays.list_supported_countries()


@lru_cache(maxsize=256)
def _subdivision_lookup(country: str) -> Mapping[str, str]:
    """Upper-cased subdivision codes and aliases (``BAYERN``) → the package's code."""
    lookup = {code.upper(): code for code in _supported_regions()[country]}
    aliases = getattr(holidays.country_holidays(country).__class__, "subdivisions_aliases", {})
    for alias, code in (aliases or {}).items():
        lookup.setdefault(alias.upper(), code)
    return lookup


def _region(country: str | None, subdiv: str | None, text: str) -> tuple[str | None, str | None]:
    """Canonical (country, subdivision) as the `holidays` package spells them."""
    if country is None:
        if subdiv:
            raise ScheduleError("calendar", f"state {subdiv!r} given without a country")
        return None, None
    code = country.strip().upper()
    if code not in _supported_regions():
        raise ScheduleError(
            "calendar",
            f"unknown country {country.strip()!r} in {text!r}: use an ISO code the holidays "
            "package knows, optionally with a state (DE, DE-BY, AT-9, CH-ZH)",
        )
    if not subdiv:
        return code, None
    found = _subdivision_lookup(code).get(subdiv.strip().upper())
    if found is None:
        known = ", ".join(_supported_regions()[code]) or "none"
        raise ScheduleError(
            "calendar",
            f"country {code} has no state {subdiv.strip()!r} in {text!r} (known: {known})",
        )
    return code, found


@lru_cache(maxsize=1024)
def _public_holidays(
    country: str, subdiv: str | None, language: str | None, year: int
) -> Mapping[date, str]:
    """One year of public holidays; cached because the scheduler asks for every candidate."""
    found = holidays.country_holidays(country, subdiv=subdiv, years=year, language=language)
    return MappingProxyType(dict(found))


def _as_date(value: date | str, field: str) -> date:
    if isinstance(value, datetime):
        raise ScheduleError(field, f"{value.isoformat()} is a datetime; give a date (YYYY-MM-DD)")
    if isinstance(value, date):
        return value
    try:
        return date.fromisoformat(str(value).strip())
    except ValueError:
        raise ScheduleError(field, f"bad date {value!r}: use YYYY-MM-DD") from None


@dataclass(frozen=True)
class Calendar:
    """Days on which nothing runs unless a time condition allows it: public holidays plus
    named exclusion dates (company holidays, inventory days).

    Public holidays come from the `holidays` package (``country``/``subdiv`` as it spells
    them, e.g. ``DE``/``BY``); ``country=None`` means exclusions only. ``exclusion_names``
    optionally labels exclusion dates; every labelled date is an exclusion.
    """

    name: str
    country: str | None = None
    subdiv: str | None = None
    exclusions: frozenset[date] = frozenset()
    exclusion_names: Mapping[date, str] = field(
        default_factory=lambda: MappingProxyType({}), compare=False, hash=False
    )
    language: str | None = None  # holiday names; None = the package's default

    def __post_init__(self) -> None:
        country, subdiv = _region(self.country, self.subdiv, self.name)
        names = {_as_date(d, "exclusions"): str(n) for d, n in dict(self.exclusion_names).items()}
        days = frozenset(_as_date(d, "exclusions") for d in self.exclusions) | names.keys()
        object.__setattr__(self, "country", country)
        object.__setattr__(self, "subdiv", subdiv)
        object.__setattr__(self, "exclusions", frozenset(days))
        object.__setattr__(self, "exclusion_names", MappingProxyType(names))

    def __reduce__(self) -> tuple[Any, ...]:
        region = (self.country, self.subdiv)
        days = (self.exclusions, dict(self.exclusion_names))
        return (type(self), (self.name, *region, *days, self.language))

    @classmethod
    def parse(
        cls,
        text: str | None,
        exclusions: Iterable[date | str] | Mapping[date | str, str] = (),
        *,
        name: str | None = None,
        language: str | None = None,
    ) -> Calendar:
        """Read ``"DE-BY"``, ``"DE"``, ``"AT-9"``, ``"DE-Bayern"``, or ``""``/``"none"``
        (exclusions only).

        ``exclusions`` are dates or ISO strings, or a mapping of them to names.

        Raises:
            ScheduleError: field ``calendar`` for an unknown country or state (naming it),
                ``exclusions`` for a bad date.

        >>> Calendar.parse("de-bayern").name
        'DE-BY'
        """
        raw = (text or "").strip()
        labels = dict(exclusions) if isinstance(exclusions, Mapping) else {}
        days = frozenset(_as_date(d, "exclusions") for d in exclusions)
        if raw.lower() in {"", "none"}:
            return cls(name=name or "none", exclusions=days, exclusion_names=labels)
        country, sep, subdiv = raw.partition("-")
        if not country.strip() or (sep and not subdiv.strip()):
            raise ScheduleError(
                "calendar", f"bad calendar {raw!r}: use COUNTRY or COUNTRY-STATE, e.g. DE-BY"
            )
        code, state = _region(country, subdiv or None, raw)
        return cls(
            name=name or (f"{code}-{state}" if state else str(code)),
            country=code,
            subdiv=state,
            exclusions=days,
            exclusion_names=labels,
            language=language,
        )

    def is_holiday(self, day: date) -> bool:
        """A public holiday of the region or an exclusion date."""
        if isinstance(day, datetime):
            raise ScheduleError("day", "pass a date: a datetime's day depends on its time zone")
        if day in self.exclusions:
            return True
        return self.country is not None and day in _public_holidays(
            self.country, self.subdiv, self.language, day.year
        )

    def holiday_name(self, day: date) -> str | None:
        """The holiday's name (public name first), ``"excluded"`` for an unnamed exclusion."""
        if self.country is not None:
            public = _public_holidays(self.country, self.subdiv, self.language, day.year)
            if day in public:
                return public[day]
        if day in self.exclusions:
            return self.exclusion_names.get(day, "excluded")
        return None

    def days_off(self, year: int) -> list[tuple[date, str]]:
        """Every holiday and exclusion of ``year``, in date order (for listings and previews)."""
        days = {d for d in self.exclusions if d.year == year}
        if self.country is not None:
            days |= _public_holidays(self.country, self.subdiv, self.language, year).keys()
        return [(d, self.holiday_name(d) or "") for d in sorted(days)]


def day_kind(day: date, calendar: Calendar | None = None) -> str:
    """``sunday`` for Sundays and the calendar's holidays, else ``saturday`` or ``workday``."""
    return _kind(day, calendar is not None and calendar.is_holiday(day))


def _kind(day: date, holiday: bool) -> str:
    weekday = day.weekday()
    if holiday or weekday == 6:
        return "sunday"
    return "saturday" if weekday == 5 else "workday"


# ---------------------------------------------------------------------------- conditions


def _us_of_day(value: time | datetime) -> int:
    return ((value.hour * 60 + value.minute) * 60 + value.second) * 1_000_000 + value.microsecond


def _at(day: date, us: int) -> datetime:
    return datetime(day.year, day.month, day.day) + timedelta(microseconds=us)


def _format_clock(value: time, *, end: bool = False) -> str:
    if end and value == _END_OF_DAY:
        return "24:00"
    return value.strftime("%H:%M:%S" if value.second or value.microsecond else "%H:%M")


def _parse_clock(text: str, field: str, window: str, *, end: bool) -> time:
    match = _CLOCK.fullmatch(text.strip())
    if match:
        hour, minute, second = int(match[1]), int(match[2]), int(match[3] or 0)
        if end and (hour, minute, second) == (24, 0, 0):
            return _END_OF_DAY
        if hour < 24 and minute < 60 and second < 60:
            return time(hour, minute, second)
    raise ScheduleError(
        field,
        f"bad time {text.strip()!r} in window {window!r}: use HH:MM-HH:MM between 00:00 and "
        "24:00 (24:00 only as an end)",
    )


@dataclass(frozen=True)
class TimeCondition:
    """Named allowed windows per day kind: when a schedule may fire or a job may start.

    Day kinds: ``workday`` (Monday–Friday), ``saturday``, ``sunday`` (Sundays *and* the
    holidays of the calendar in use). A kind missing from ``windows`` is allowed all day;
    an empty tuple never. A window ``(start, end)`` includes ``start`` and excludes
    ``end``, so ``06:00-20:00`` lets an hourly job run at 19:00 but not at 20:00; an end of
    ``time(0)`` means 24:00. Windows do not cross midnight: which day's kind would apply
    after it is exactly the question users get wrong, so they write two windows.
    """

    name: str
    windows: Mapping[str, tuple[tuple[time, time], ...]]

    def __post_init__(self) -> None:
        normal: dict[str, tuple[tuple[time, time], ...]] = {}
        table: dict[str, Spans] = {}
        for kind, spans in dict(self.windows).items():
            where = f"windows.{kind}"
            if kind not in DAY_KINDS:
                raise ScheduleError(
                    where,
                    f"unknown day kind {kind!r} in condition {self.name!r} "
                    f"(use {', '.join(DAY_KINDS)}; holidays count as sunday)",
                )
            checked = []
            for span in spans:
                try:
                    start, end = span
                except (TypeError, ValueError):
                    raise ScheduleError(where, f"window {span!r} must be (start, end)") from None
                if not (isinstance(start, time) and isinstance(end, time)) or (
                    start.tzinfo or end.tzinfo
                ):
                    raise ScheduleError(where, f"window {span!r} must be two naive times")
                lo, hi = _us_of_day(start), _DAY_US if end == _END_OF_DAY else _us_of_day(end)
                if lo >= hi:
                    text = f"{_format_clock(start)}-{_format_clock(end, end=True)}"
                    raise ScheduleError(
                        where,
                        f"window {text} of condition {self.name!r} ends before it starts; "
                        "split a window across midnight into …-24:00 and 00:00-…",
                    )
                checked.append(((lo, hi), (start, end)))
            checked.sort()
            normal[kind] = tuple(c[1] for c in checked)
            table[kind] = tuple(c[0] for c in checked)
        for kind in DAY_KINDS:
            table.setdefault(kind, _ALL_DAY)
        if not any(table.values()):
            raise ScheduleError(
                "windows", f"condition {self.name!r} never opens: every day kind is 'none'"
            )
        object.__setattr__(self, "windows", MappingProxyType(normal))
        object.__setattr__(self, "_table", MappingProxyType(table))

    def __hash__(self) -> int:
        return hash((self.name, tuple(sorted(self.windows.items()))))

    def __reduce__(self) -> tuple[Any, ...]:
        # mappingproxy does not pickle; rebuilding also re-validates
        return (type(self), (self.name, dict(self.windows)))

    @classmethod
    def parse(cls, name: str, spec: Mapping[str, str | Sequence[str]]) -> TimeCondition:
        """Read ``{"workday": "06:00-20:00", "saturday": "08:00-12:00,14:00-16:00",
        "sunday": "none"}``; ``all`` is the whole day, ``24:00`` is allowed as an end.

        Raises:
            ScheduleError: field ``windows.<kind>`` for a bad kind, time or window.

        >>> TimeCondition.parse("office", {"workday": "06:00-20:00"}).to_spec()
        {'workday': '06:00-20:00'}
        """
        if not isinstance(spec, Mapping):
            raise ScheduleError("windows", f"condition {name!r}: expected {{day kind: windows}}")
        windows: dict[str, tuple[tuple[time, time], ...]] = {}
        for raw_kind, value in spec.items():
            kind = str(raw_kind).strip().lower()
            where = f"windows.{kind}"
            if kind not in DAY_KINDS:
                raise ScheduleError(
                    where,
                    f"unknown day kind {raw_kind!r} in condition {name!r} "
                    f"(use {', '.join(DAY_KINDS)}; holidays count as sunday)",
                )
            if kind in windows:
                raise ScheduleError(where, f"day kind {kind!r} given twice in condition {name!r}")
            text = value if isinstance(value, str) else ",".join(map(str, value))
            items = [item.strip() for item in text.split(",") if item.strip()]
            words = {item.lower() for item in items} & {"none", "never", "all"}
            if not items or (words and len(items) > 1):
                raise ScheduleError(
                    where,
                    f"bad windows {text!r} in condition {name!r}: use 'none', 'all' or "
                    "HH:MM-HH:MM[,HH:MM-HH:MM…]",
                )
            if words:
                windows[kind] = ((time(0), _END_OF_DAY),) if words == {"all"} else ()
                continue
            spans = []
            for item in items:
                start_text, sep, end_text = item.partition("-")
                if not sep:
                    raise ScheduleError(
                        where, f"bad window {item!r} in condition {name!r}: use HH:MM-HH:MM"
                    )
                spans.append(
                    (
                        _parse_clock(start_text, where, item, end=False),
                        _parse_clock(end_text, where, item, end=True),
                    )
                )
            windows[kind] = tuple(spans)
        return cls(name=name, windows=windows)

    def to_spec(self) -> dict[str, str]:
        """The text form ``parse`` reads back (for listings and storage)."""
        spec = {}
        for kind, spans in self.windows.items():
            if not spans:
                spec[kind] = "none"
            elif self._table[kind] == _ALL_DAY:
                spec[kind] = "all"
            else:
                spec[kind] = ",".join(
                    f"{_format_clock(s)}-{_format_clock(e, end=True)}" for s, e in spans
                )
        return spec

    def allows(
        self, moment: datetime, calendar: Calendar | None = None, tz: str | None = None
    ) -> bool:
        """Whether ``moment`` lies in an allowed window, read on its own wall clock or, with
        ``tz``, on that zone's (windows and holidays are local notions).
        """
        wall = _local(moment, "moment", tz).replace(tzinfo=None)
        return _Gate(self._table, calendar).is_open(wall)

    def next_allowed(
        self, moment: datetime, calendar: Calendar | None = None, tz: str | None = None
    ) -> datetime | None:
        """The earliest instant at or after ``moment`` that ``allows``, in ``tz`` (or
        ``moment``'s zone); None when nothing opens within ``SEARCH_YEARS``. Lets a queue
        sleep until a held-by-window job may start instead of polling.
        """
        local = _local(moment, "moment", tz)
        zone = local.tzinfo
        assert zone is not None
        wall = local.replace(tzinfo=None)
        opening = _Gate(self._table, calendar).next_open(wall, (wall + SEARCH_HORIZON).date())
        if opening is None:
            return None
        if opening == wall:
            return local
        return _instant(opening, zone).astimezone(zone)


class _Gate:
    """Which wall-clock times a condition and a calendar leave open."""

    __slots__ = ("_calendar", "_table")

    def __init__(self, table: Mapping[str, Spans] | None, calendar: Calendar | None) -> None:
        self._table = table
        self._calendar = calendar

    def spans(self, day: date) -> Spans:
        holiday = self._calendar is not None and self._calendar.is_holiday(day)
        if self._table is None:  # a calendar without a condition: holidays are closed
            return () if holiday else _ALL_DAY
        return self._table[_kind(day, holiday)]

    def is_open(self, wall: datetime) -> bool:
        t = _us_of_day(wall)
        return any(lo <= t < hi for lo, hi in self.spans(wall.date()))

    def next_open(self, wall: datetime, last_day: date) -> datetime | None:
        """Earliest open wall time >= ``wall``, looking no further than ``last_day``."""
        day, t = wall.date(), _us_of_day(wall)
        while day <= last_day:
            for lo, hi in self.spans(day):  # sorted by start
                if t < hi:
                    return _at(day, max(lo, t))
            day, t = day + _ONE_DAY, 0
        return None

    def last_open(self, wall: datetime, first_day: date) -> datetime | None:
        """Latest open wall time <= ``wall``, looking no further back than ``first_day``."""
        day, t = wall.date(), _us_of_day(wall)
        while day >= first_day:
            best = max((min(t, hi - 1) for lo, hi in self.spans(day) if lo <= t), default=-1)
            if best >= 0:
                return _at(day, best)
            day, t = day - _ONE_DAY, _DAY_US - 1
        return None


# ---------------------------------------------------------------------------- time zones


def _aware(value: datetime, field: str) -> datetime:
    """``value`` in UTC; a naive datetime is an error because any zone would be a guess."""
    if not isinstance(value, datetime):
        raise ScheduleError(field, f"expected a datetime, got {type(value).__name__}")
    if value.tzinfo is None or value.utcoffset() is None:
        raise ScheduleError(
            field,
            f"naive datetime {value.isoformat()} has no time zone; pass an aware one "
            "(e.g. tzinfo=UTC)",
        )
    try:
        return value.astimezone(UTC)
    except OverflowError:  # 0001-01-01T00:00+14:00 is in year 0 in UTC
        raise ScheduleError(field, f"{value.isoformat()} is out of range in UTC") from None


def _zone(name: str, field: str = "tz") -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, TypeError):
        raise ScheduleError(
            field, f"unknown time zone {name!r} (use an IANA name such as Europe/Berlin)"
        ) from None


def _local(moment: datetime, field: str, tz: str | None) -> datetime:
    _aware(moment, field)
    return moment.astimezone(_zone(tz)) if tz else moment


def _wall(instant: datetime, zone: tzinfo) -> datetime:
    return instant.astimezone(zone).replace(tzinfo=None)


def _instant(wall: datetime, zone: tzinfo) -> datetime:
    """The UTC instant of a wall time: its first occurrence when it is ambiguous (fall
    back), the first instant after the gap when it does not exist (spring forward).
    """
    first = wall.replace(tzinfo=zone, fold=0).astimezone(UTC)
    if _wall(first, zone) == wall:
        return first
    # In a gap fold=0 and fold=1 read the wall time with the offsets on either side of the
    # transition; the transition itself lies between them. Rare path: bisect to the µs.
    lo, hi = sorted((first, wall.replace(tzinfo=zone, fold=1).astimezone(UTC)))
    after = hi.astimezone(zone).utcoffset()
    while hi - lo > _US:
        mid = lo + (hi - lo) // 2
        if mid.astimezone(zone).utcoffset() == after:
            hi = mid
        else:
            lo = mid
    return hi


# ---------------------------------------------------------------------------- sources

_THREAD = threading.local()


def _cron_at(expr: str, start: datetime) -> croniter:
    """A croniter positioned at ``start``, reused per thread: building one costs ~40 µs."""
    cache: dict[str, croniter] | None = getattr(_THREAD, "crons", None)
    if cache is None:
        cache = _THREAD.crons = {}
    it = cache.get(expr)
    if it is None:
        if len(cache) >= 256:
            cache.clear()
        it = cache[expr] = croniter(expr, start)
    else:
        it.set_current(start, force=True)
    return it


class _CronSource:
    """Candidate instants of a cron expression read on local wall-clock time.

    croniter walks naive wall times, so every wall time comes once (the fall-back
    duplicate never appears) and nonexistent ones map forward to the end of the gap,
    where they collapse with each other and with the first valid time after the gap.
    """

    def __init__(self, expr: str, zone: ZoneInfo) -> None:
        self.expr = expr
        self.zone = zone

    def after(self, x: datetime) -> datetime:
        it = _cron_at(self.expr, _wall(x, self.zone))
        while True:  # only a fold can yield candidates <= x, at most one hour's worth
            candidate = _instant(it.get_next(datetime), self.zone)
            if candidate > x:
                return candidate

    def at_or_before(self, x: datetime) -> datetime | None:
        local = x.astimezone(self.zone)
        wall = local.replace(tzinfo=None)
        if local.fold:  # in the repeated hour: first occurrences up to one offset later are <= x
            wall += local.replace(fold=0).utcoffset() - local.utcoffset()
        it = _cron_at(self.expr, wall + _US)
        while True:
            try:
                candidate = _instant(it.get_prev(datetime), self.zone)
            except CroniterBadDateError:
                return None
            if candidate <= x:
                return candidate


class _EverySource:
    """Candidate instants anchor + k·every on absolute time (k >= 0)."""

    def __init__(self, every: timedelta, anchor: datetime) -> None:
        self.every = every
        self.anchor = anchor

    def after(self, x: datetime) -> datetime:
        if x < self.anchor:
            return self.anchor
        try:
            return self.anchor + ((x - self.anchor) // self.every + 1) * self.every
        except OverflowError:  # the next one lies after year 9999: past every limit
            return _END_OF_TIME

    def at_or_before(self, x: datetime) -> datetime | None:
        if x < self.anchor:
            return None
        return self.anchor + ((x - self.anchor) // self.every) * self.every


def _check_cron(expr: str) -> str:
    text = " ".join(expr.split()) if isinstance(expr, str) else ""
    if text.lower() in _CRON_MACROS:
        text = text.lower()
    elif len(text.split()) != 5:
        raise ScheduleError(
            "cron",
            f"{expr!r} has {len(text.split())} fields; use 5: minute hour day-of-month month "
            "day-of-week (e.g. '0 2 * * 1-5')",
        )
    try:
        croniter(text, datetime(2000, 1, 1)).get_next(datetime)
    except CroniterBadDateError:
        raise ScheduleError("cron", f"{expr!r} never matches a real date") from None
    except (CroniterError, ValueError, KeyError, TypeError, IndexError) as exc:
        raise ScheduleError("cron", f"{expr!r} is not a valid cron expression: {exc}") from None
    return text


def _cron_misses_every_window(
    expr: str, table: Mapping[str, Spans], calendar: Calendar | None
) -> list[str] | None:
    """The day kinds a cron can hit when none of its times of day lies in their windows,
    else None. Catches the common impossible schedule before any search.
    """
    minutes, hours, days, _, weekdays = croniter(expr).expanded[:5]
    minutes = range(60) if minutes == ["*"] else [m for m in minutes if isinstance(m, int)]
    hours = range(24) if hours == ["*"] else [h for h in hours if isinstance(h, int)]
    if weekdays == ["*"] or days != ["*"] or not all(isinstance(w, int) for w in weekdays):
        weekdays = range(7)  # a day-of-month rule can land on any weekday
    kinds = {"sunday" if w % 7 == 0 else "saturday" if w == 6 else "workday" for w in weekdays}
    if calendar is not None:
        kinds.add("sunday")  # any of those days may be a holiday
    times = [(h * 60 + m) * 60_000_000 for h in hours for m in minutes]
    for kind in kinds:
        if any(lo <= t < hi for lo, hi in table[kind] for t in times):
            return None
    return sorted(kinds)


# ---------------------------------------------------------------------------- schedules


@dataclass(frozen=True)
class Schedule:
    """When a recurring job fires: a cron expression *or* an interval, read in ``tz``,
    restricted by a time condition and a holiday calendar, with a misfire policy.

    With a calendar and no condition, holidays are skipped; with a condition, holidays
    are its ``sunday`` kind. ``anchor`` is the first fire of an interval schedule (default:
    a fixed local midnight, so intervals keep their phase; pass the schedule's creation
    time for intervals that do not divide a day). ``until`` ends the schedule: after it
    ``next_fire`` returns None. ``misfire_grace``: a fire time younger than this counts as
    on time in ``due`` even with ``misfire="skip"``.
    """

    cron: str | None = None
    every: timedelta | None = None
    tz: str = DEFAULT_TZ
    calendar: Calendar | None = None
    condition: TimeCondition | None = None
    misfire: str = "run_once"
    anchor: datetime | None = None
    until: datetime | None = None
    misfire_grace: timedelta = DEFAULT_MISFIRE_GRACE

    def __post_init__(self) -> None:
        if (self.cron is None) == (self.every is None):
            raise ScheduleError("cron", "give exactly one of cron or every")
        zone = _zone(self.tz)
        if self.calendar is not None and not isinstance(self.calendar, Calendar):
            raise ScheduleError("calendar", "expected a Calendar (use Calendar.parse('DE-BY'))")
        if self.condition is not None and not isinstance(self.condition, TimeCondition):
            raise ScheduleError("condition", "expected a TimeCondition (use TimeCondition.parse)")
        if self.misfire not in MISFIRE_POLICIES:
            raise ScheduleError(
                "misfire", f"unknown policy {self.misfire!r} (use {' or '.join(MISFIRE_POLICIES)})"
            )
        if not isinstance(self.misfire_grace, timedelta) or self.misfire_grace < timedelta(0):
            raise ScheduleError("misfire_grace", "must be a duration of zero or more")
        until = None if self.until is None else _aware(self.until, "until")
        table = None if self.condition is None else self.condition._table
        source: _CronSource | _EverySource
        if self.cron is not None:
            expr = _check_cron(self.cron)
            object.__setattr__(self, "cron", expr)
            if table is not None:
                kinds = _cron_misses_every_window(expr, table, self.calendar)
                if kinds is not None:
                    raise ScheduleError(
                        "condition",
                        f"schedule never fires: no time of cron {expr!r} lies in a window of "
                        f"condition {self.condition.name!r} (day kinds it can hit: "
                        f"{', '.join(kinds)})",
                    )
            source = _CronSource(expr, zone)
        else:
            if not isinstance(self.every, timedelta):
                raise ScheduleError("every", "expected a timedelta (use parse_every('15m'))")
            if self.every < timedelta(seconds=1):
                raise ScheduleError("every", f"interval {self.every} is shorter than 1s")
            if self.anchor is None:
                anchor = _instant(_DEFAULT_ANCHOR_WALL, zone)
            else:
                anchor = _aware(self.anchor, "anchor")
            source = _EverySource(self.every, anchor)
        gate = None if table is None and self.calendar is None else _Gate(table, self.calendar)
        object.__setattr__(self, "_zone", zone)
        object.__setattr__(self, "_until", until)
        object.__setattr__(self, "_source", source)
        object.__setattr__(self, "_gate", gate)

    @classmethod
    def from_config(
        cls,
        config: Mapping[str, Any],
        *,
        conditions: Mapping[str, TimeCondition] | None = None,
        calendars: Mapping[str, Calendar] | None = None,
    ) -> Schedule:
        """Build from the JSON form used by ``trigger.schedule``, ``schedules add`` and the
        schedules table: ``{"cron" | "every": "15m", "tz", "calendar", "condition" |
        "windows", "misfire", "anchor", "until", "misfire_grace"}``.

        ``calendar`` and ``condition`` are names looked up in ``calendars``/``conditions``;
        a calendar name not found there is read as a region code (``DE-BY``).

        Raises:
            ScheduleError: naming the key at fault, including unknown keys.
        """
        known = set(SPEC_KEYS)
        unknown = sorted(set(config) - known)
        if unknown:
            raise ScheduleError(
                unknown[0], f"unknown schedule setting (known: {', '.join(sorted(known))})"
            )
        calendar = None
        if config.get("calendar"):
            text = str(config["calendar"])
            calendar = (calendars or {}).get(text) or Calendar.parse(text)
        condition = None
        if config.get("condition") and config.get("windows"):
            raise ScheduleError("condition", "give condition (a name) or windows, not both")
        if config.get("condition"):
            name = str(config["condition"])
            condition = (conditions or {}).get(name)
            if condition is None:
                defined = ", ".join(sorted(conditions or {})) or "none"
                raise ScheduleError(
                    "condition", f"unknown time condition {name!r} (defined: {defined})"
                )
        elif config.get("windows"):
            condition = TimeCondition.parse("windows", config["windows"])

        def moment(key: str) -> datetime | None:
            if config.get(key) in (None, ""):
                return None
            try:
                value = datetime.fromisoformat(str(config[key]))
            except ValueError:
                raise ScheduleError(key, f"bad timestamp {config[key]!r}: use ISO 8601") from None
            _aware(value, key)
            return value

        every = config.get("every")
        grace = config.get("misfire_grace")
        return cls(
            cron=config.get("cron") or None,
            every=parse_every(str(every)) if every else None,
            tz=str(config.get("tz") or DEFAULT_TZ),
            calendar=calendar,
            condition=condition,
            misfire=str(config.get("misfire") or "run_once"),
            anchor=moment("anchor"),
            until=moment("until"),
            misfire_grace=(
                parse_every(str(grace), "misfire_grace") if grace else DEFAULT_MISFIRE_GRACE
            ),
        )

    def __reduce__(self) -> tuple[Any, ...]:
        # only the declared fields travel (to worker processes); the search state is rebuilt
        return (type(self), tuple(getattr(self, f.name) for f in fields(self)))

    @property
    def zone(self) -> ZoneInfo:
        """The schedule's time zone, for showing fire times on local clocks."""
        return self._zone

    def describe(self) -> str:
        """One line for messages and listings."""
        what = f"cron {self.cron!r}" if self.cron else f"every {_format_every(self.every)}"
        parts = [f"{what} in {self.tz}"]
        if self.condition is not None:
            parts.append(f"condition {self.condition.name!r}")
        if self.calendar is not None:
            parts.append(f"calendar {self.calendar.name!r}")
        return ", ".join(parts)

    def next_fire(self, after: datetime) -> datetime | None:
        """The first fire time strictly after ``after`` (aware, returned in UTC); None
        when the schedule ended (``until``).

        Raises:
            ScheduleError: ``after`` is naive, or (field ``schedule``) nothing fires within
                ``SEARCH_YEARS`` years.
        """
        x = _aware(after, "after")
        horizon = x + SEARCH_HORIZON
        limit = horizon if self._until is None else min(horizon, self._until)
        found = self._forward(x, limit)
        if found is None and limit == horizon:
            raise ScheduleError(
                "schedule",
                f"never fires within {SEARCH_YEARS} years: {self.describe()} "
                f"(searched from {x.isoformat()})",
            )
        return found

    def fires_between(self, start: datetime, end: datetime, limit: int = 1000) -> list[datetime]:
        """Fire times ``t`` with ``start < t <= end`` (UTC), at most ``limit`` of them.

        Half-open like ``next_fire`` (chaining it gives the same list) and like ``due``,
        which runs what fell in ``(last_fire, now]``. Never raises for "never fires":
        the range itself bounds the search.
        """
        x, end_utc = _aware(start, "start"), _aware(end, "end")
        if self._until is not None:
            end_utc = min(end_utc, self._until)
        fires: list[datetime] = []
        while len(fires) < limit:
            found = self._forward(x, end_utc)
            if found is None:
                break
            fires.append(found)
            x = found
        return fires

    def due(
        self, last_fire: datetime | None, now: datetime
    ) -> tuple[list[datetime], datetime | None]:
        """What to start now, and the next fire time strictly after ``now``.

        Looks at the fire times in ``(last_fire, now]``. With ``run_once`` the latest of
        them starts (one run however long the outage was, never a burst); with ``skip``
        it starts only if it is younger than ``misfire_grace`` (on time, not missed). A
        schedule that never fired (``last_fire`` None) has missed nothing; pass its
        creation time to catch up a first fire missed since then.
        """
        now_utc = _aware(now, "now")
        upcoming = self.next_fire(now_utc)
        if last_fire is None:
            return [], upcoming
        floor = max(_aware(last_fire, "last_fire"), now_utc - SEARCH_HORIZON)
        newest = now_utc if self._until is None else min(now_utc, self._until)
        latest = self._backward(newest, floor) if newest > floor else None
        if latest is None:
            return [], upcoming
        if self.misfire == "skip" and now_utc - latest > self.misfire_grace:
            return [], upcoming
        return [latest], upcoming

    def _forward(self, x: datetime, limit: datetime) -> datetime | None:
        """First fire in ``(x, limit]``: candidates from the source, closed windows and
        holidays jumped over in one step each, so the search stays short and finite.
        """
        source, gate, zone = self._source, self._gate, self._zone
        last_day = _wall(limit, zone).date()
        for _ in range(_MAX_CANDIDATES):
            candidate = source.after(x)
            if candidate > limit:
                return None
            if gate is None:
                return candidate
            wall = _wall(candidate, zone)
            if gate.is_open(wall):
                return candidate
            opening = gate.next_open(wall, last_day)
            if opening is None:
                return None
            x = max(candidate, _instant(opening, zone) - _US)
        raise ScheduleError(
            "schedule", f"gave up after {_MAX_CANDIDATES} candidates: {self.describe()}"
        )

    def _backward(self, x: datetime, floor: datetime) -> datetime | None:
        """Latest fire in ``(floor, x]``, mirroring ``_forward``: a long outage costs a
        few steps, not one per missed fire.
        """
        source, gate, zone = self._source, self._gate, self._zone
        first_day = _wall(floor, zone).date()
        for _ in range(_MAX_CANDIDATES):
            candidate = source.at_or_before(x)
            if candidate is None or candidate <= floor:
                return None
            if gate is None:
                return candidate
            wall = _wall(candidate, zone)
            if gate.is_open(wall):
                return candidate
            closing = gate.last_open(wall, first_day)
            if closing is None:
                return None
            x = min(candidate - _US, _instant(closing, zone))
        raise ScheduleError(
            "schedule", f"gave up after {_MAX_CANDIDATES} candidates: {self.describe()}"
        )


def preview(schedule: Schedule, start: datetime, count: int) -> list[datetime]:
    """The next ``count`` fire times from ``start`` on (``start`` itself included when it is
    a fire time), in UTC; fewer when the schedule ends or the next fire is more than
    ``SEARCH_YEARS`` years after the previous one.

    Raises:
        ScheduleError: naive ``start``, negative ``count``, or no fire within the horizon.
    """
    if count < 0:
        raise ScheduleError("count", f"must be zero or more, not {count}")
    x = _aware(start, "start") - _US
    fires: list[datetime] = []
    while len(fires) < count:
        try:
            found = schedule.next_fire(x)
        except ScheduleError:
            if fires:
                break
            raise
        if found is None:
            break
        fires.append(found)
        x = found
    return fires
