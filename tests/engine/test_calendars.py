"""Recurring schedules: holidays, time windows, DST, misfires and bounded searches.

Real `holidays` data and real zoneinfo rules; times are written as Berlin wall clocks and
compared as UTC instants, which is what the scheduler stores.
"""

from __future__ import annotations

import pickle
import time as clock  # thread_time: CPU time of this thread, whatever else the machine does
from collections.abc import Callable
from datetime import UTC, date, datetime, time, timedelta
from itertools import pairwise
from zoneinfo import ZoneInfo

import pytest

from engine.errors import FlowmillError
from engine.queue.calendars import (
    Calendar,
    Schedule,
    ScheduleError,
    TimeCondition,
    day_kind,
    parse_every,
    preview,
)

BERLIN = ZoneInfo("Europe/Berlin")
US = timedelta(microseconds=1)


def berlin(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> datetime:
    """A Berlin wall time as the UTC instant the scheduler works with."""
    return datetime(year, month, day, hour, minute, tzinfo=BERLIN).astimezone(UTC)


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, tzinfo=UTC)


def local_day(schedule: Schedule, year: int, month: int, day: int) -> list[datetime]:
    """Every fire whose Berlin wall date is the given day (00:00 included, next 00:00 not)."""
    start = datetime(year, month, day, tzinfo=BERLIN)
    end = datetime.combine(start.date() + timedelta(days=1), time(0), tzinfo=BERLIN)
    return schedule.fires_between(start - US, end - US)


@pytest.fixture
def office_hours() -> TimeCondition:
    return TimeCondition.parse(
        "office-hours",
        {"workday": "06:00-20:00", "saturday": "08:00-12:00,14:00-16:00", "sunday": "none"},
    )


# ------------------------------------------------------------------------- calendars


def test_de_by_calendar_knows_the_bavarian_holidays_of_2026_and_2027() -> None:
    bavaria = Calendar.parse("DE-BY", language="en_US")
    for day in [
        date(2026, 1, 6),  # Epiphany: Bavarian, not national
        date(2026, 4, 3),  # Good Friday
        date(2026, 4, 6),  # Easter Monday
        date(2026, 11, 1),  # All Saints' Day
        date(2026, 12, 25),
        date(2026, 12, 26),
        date(2027, 1, 6),
        date(2027, 3, 26),  # Good Friday
        date(2027, 3, 29),  # Easter Monday
        date(2027, 11, 1),
        date(2027, 12, 25),
        date(2027, 12, 26),
    ]:
        assert bavaria.is_holiday(day), day
    for day in [date(2026, 4, 2), date(2026, 4, 7), date(2026, 12, 24), date(2027, 3, 25)]:
        assert not bavaria.is_holiday(day), day
    assert bavaria.holiday_name(date(2026, 4, 3)) == "Good Friday"
    assert bavaria.holiday_name(date(2026, 4, 7)) is None
    assert not Calendar.parse("DE").is_holiday(date(2026, 1, 6))  # Epiphany is not national
    assert (bavaria.name, bavaria.country, bavaria.subdiv) == ("DE-BY", "DE", "BY")
    assert Calendar.parse("de-Bayern") == Calendar.parse("DE-BY")
    assert Calendar.parse("AT-9").is_holiday(date(2026, 12, 8))  # Vienna: Immaculate Conception


def test_exclusion_dates_count_as_holidays_and_keep_their_names() -> None:
    plant = Calendar.parse(
        "DE-BY",
        {"2026-12-24": "Betriebsruhe", date(2026, 12, 31): "Inventur"},
        name="plant-munich",
    )
    assert plant.name == "plant-munich"
    assert plant.is_holiday(date(2026, 12, 24)) and plant.is_holiday(date(2026, 12, 31))
    assert plant.holiday_name(date(2026, 12, 31)) == "Inventur"
    assert Calendar.parse("none", ["2026-08-14"]).holiday_name(date(2026, 8, 14)) == "excluded"
    december = [d for d, _ in plant.days_off(2026) if d.month == 12]
    assert december == [date(2026, 12, d) for d in (24, 25, 26, 31)]
    assert day_kind(date(2026, 12, 24), plant) == "sunday"
    assert day_kind(date(2026, 12, 24)) == "workday"


def test_nightly_price_job_skips_good_friday_easter_monday_and_company_days() -> None:
    nightly = Schedule(
        cron="0 2 * * 1-5", calendar=Calendar.parse("DE-BY", exclusions=["2026-04-07"])
    )
    fires = nightly.fires_between(berlin(2026, 3, 30), berlin(2026, 4, 11))
    # 02:00 CEST is 00:00 UTC; Fri 3 Apr, Mon 6 Apr (holidays) and Tue 7 Apr (excluded) stay quiet
    assert fires == [utc(2026, 3, d) for d in (30, 31)] + [
        utc(2026, 4, d) for d in (1, 2, 8, 9, 10)
    ]


def test_daily_job_skips_all_saints_and_christmas_but_not_ordinary_sundays() -> None:
    daily = Schedule(cron="0 2 * * *", calendar=Calendar.parse("DE-BY"))
    autumn = daily.fires_between(berlin(2027, 10, 30, 12), berlin(2027, 11, 3, 12))
    # Sunday 31 Oct (fall-back day, first 02:00) runs; Monday 1 Nov does not
    assert autumn == [berlin(2027, 10, 31, 2), berlin(2027, 11, 2, 2), berlin(2027, 11, 3, 2)]
    christmas = daily.fires_between(berlin(2026, 12, 23, 12), berlin(2026, 12, 28, 12))
    assert christmas == [berlin(2026, 12, d, 2) for d in (24, 27, 28)]


# ------------------------------------------------------------------------- time windows


def test_office_hours_fire_hourly_on_workdays_and_short_saturdays_over_easter(
    office_hours: TimeCondition,
) -> None:
    hourly = Schedule(cron="0 * * * *", calendar=Calendar.parse("DE-BY"), condition=office_hours)
    fires = hourly.fires_between(berlin(2026, 3, 30) - US, berlin(2026, 4, 8) - US)
    expected = (
        [berlin(2026, 3, d, h) for d in (30, 31) for h in range(6, 20)]
        + [berlin(2026, 4, d, h) for d in (1, 2) for h in range(6, 20)]
        # Fri 3 Apr Good Friday: sunday kind, never
        + [berlin(2026, 4, 4, h) for h in (8, 9, 10, 11, 14, 15)]
        # Sun 5 Apr never; Mon 6 Apr Easter Monday: sunday kind, never
        + [berlin(2026, 4, 7, h) for h in range(6, 20)]
    )
    assert fires == expected
    assert berlin(2026, 3, 30, 20) not in fires  # window ends are exclusive


def test_window_edges_all_day_and_24_00(office_hours: TimeCondition) -> None:
    evening = TimeCondition.parse("evening", {"workday": "18:00-24:00", "saturday": "all"})
    assert evening.windows["workday"] == ((time(18), time(0)),)
    assert evening.to_spec() == {"workday": "18:00-24:00", "saturday": "all"}
    friday_late = datetime(2026, 4, 10, 23, 59, 59, 999999, tzinfo=BERLIN)
    assert evening.allows(friday_late)
    assert evening.allows(datetime(2026, 4, 11, 0, 0, tzinfo=BERLIN))  # Saturday, all day
    assert not evening.allows(datetime(2026, 4, 10, 17, 59, tzinfo=BERLIN))
    assert evening.allows(datetime(2026, 4, 12, 3, 0, tzinfo=BERLIN))  # sunday missing: all day
    assert office_hours.allows(datetime(2026, 4, 2, 6, 0, tzinfo=BERLIN))
    assert not office_hours.allows(datetime(2026, 4, 2, 20, 0, tzinfo=BERLIN))
    # a UTC moment is read on the Berlin clock when asked to
    assert office_hours.allows(utc(2026, 4, 2, 17, 30), tz="Europe/Berlin")
    assert not office_hours.allows(utc(2026, 4, 2, 18, 30), tz="Europe/Berlin")
    bavaria = Calendar.parse("DE-BY")
    assert not office_hours.allows(datetime(2026, 4, 3, 10, 0, tzinfo=BERLIN), bavaria)


def test_next_allowed_tells_a_waiting_job_when_the_window_opens(
    office_hours: TimeCondition,
) -> None:
    thursday_night = datetime(2026, 4, 2, 21, 0, tzinfo=BERLIN)
    opening = office_hours.next_allowed(thursday_night, Calendar.parse("DE-BY"))
    assert opening == datetime(2026, 4, 4, 8, 0, tzinfo=BERLIN)  # Good Friday closed
    inside = datetime(2026, 4, 2, 9, 15, tzinfo=BERLIN)
    assert office_hours.next_allowed(inside) == inside


# ------------------------------------------------------------------------- DST


def test_spring_forward_02_30_fires_once_at_03_00() -> None:
    nightly = Schedule(cron="30 2 * * *")
    fires = nightly.fires_between(berlin(2026, 3, 27), berlin(2026, 3, 31))
    assert fires == [
        utc(2026, 3, 27, 1, 30),
        utc(2026, 3, 28, 1, 30),
        utc(2026, 3, 29, 1, 0),  # 02:30 does not exist: 03:00 CEST
        utc(2026, 3, 30, 0, 30),
    ]
    assert fires[2].astimezone(BERLIN).strftime("%H:%M%z") == "03:00+0200"


def test_fall_back_02_30_fires_once_at_its_first_occurrence() -> None:
    nightly = Schedule(cron="30 2 * * *")
    fires = nightly.fires_between(berlin(2026, 10, 24), berlin(2026, 10, 27))
    assert fires == [utc(2026, 10, 24, 0, 30), utc(2026, 10, 25, 0, 30), utc(2026, 10, 26, 1, 30)]
    # asked during the repeated hour (02:10 CET), the 02:30 CET repeat is not a new fire
    assert nightly.next_fire(utc(2026, 10, 25, 1, 10)) == utc(2026, 10, 26, 1, 30)
    assert nightly.next_fire(utc(2026, 10, 25, 0, 30)) == utc(2026, 10, 26, 1, 30)


def test_outage_ending_in_the_repeated_hour_still_catches_up_the_first_02_30() -> None:
    nightly = Schedule(cron="30 2 * * *", misfire="run_once")
    # down from 24 Oct until 02:10 CET (the second 02:10) on fall-back day
    run, upcoming = nightly.due(utc(2026, 10, 24, 0, 30), utc(2026, 10, 25, 1, 10))
    assert (run, upcoming) == ([utc(2026, 10, 25, 0, 30)], utc(2026, 10, 26, 1, 30))


def test_hourly_cron_on_spring_forward_day_fires_23_times() -> None:
    fires = local_day(Schedule(cron="0 * * * *"), 2026, 3, 29)
    assert len(fires) == 23
    assert [f.astimezone(BERLIN).hour for f in fires] == [0, 1, *range(3, 24)]
    assert all(b - a == timedelta(hours=1) for a, b in pairwise(fires))


def test_hourly_cron_on_fall_back_day_fires_once_per_wall_hour() -> None:
    fires = local_day(Schedule(cron="0 * * * *"), 2026, 10, 25)
    assert len(fires) == 24
    assert [f.astimezone(BERLIN).hour for f in fires] == list(range(24))
    # 02:00 CEST fires, 02:00 CET does not: two real hours until 03:00 CET
    assert fires[1:5] == [
        utc(2026, 10, 24, 23),  # 01:00 CEST
        utc(2026, 10, 25, 0),  # 02:00 CEST
        utc(2026, 10, 25, 2),  # 03:00 CET
        utc(2026, 10, 25, 3),
    ]


def test_every_hour_runs_on_absolute_time_across_both_dst_changes() -> None:
    hourly = Schedule(every=parse_every("1h"))
    spring = local_day(hourly, 2026, 3, 29)
    autumn = local_day(hourly, 2026, 10, 25)
    assert (len(spring), len(autumn)) == (23, 25)
    for fires in (spring, autumn):
        assert all(b - a == timedelta(hours=1) for a, b in pairwise(fires))
    walls = [f.astimezone(BERLIN).strftime("%H%z") for f in autumn[:5]]
    assert walls == ["00+0200", "01+0200", "02+0200", "02+0100", "03+0100"]


def test_interval_keeps_its_phase_from_the_anchor() -> None:
    anchor = berlin(2026, 4, 1, 6, 10)
    every_90 = Schedule(every=parse_every("90m"), anchor=anchor)
    assert every_90.next_fire(anchor - US) == anchor
    assert every_90.next_fire(berlin(2026, 4, 3, 0, 0)) == berlin(2026, 4, 3, 0, 10)
    quarter = Schedule(every=parse_every("15m"))
    assert quarter.next_fire(berlin(2026, 7, 1, 10, 7)) == berlin(2026, 7, 1, 10, 15)


# ------------------------------------------------------------------------- misfires


def test_three_hour_outage_runs_once_with_run_once_and_not_at_all_with_skip() -> None:
    last_fire, now = berlin(2026, 6, 10, 9), berlin(2026, 6, 10, 12, 30)  # missed 10, 11, 12
    catch_up = Schedule(cron="0 * * * *", misfire="run_once")
    assert catch_up.due(last_fire, now) == ([berlin(2026, 6, 10, 12)], berlin(2026, 6, 10, 13))
    skip = Schedule(cron="0 * * * *", misfire="skip")
    assert skip.due(last_fire, now) == ([], berlin(2026, 6, 10, 13))


def test_skip_still_runs_a_fire_that_is_merely_a_few_milliseconds_late() -> None:
    skip = Schedule(cron="0 * * * *", misfire="skip")
    just_after = berlin(2026, 6, 10, 12) + timedelta(milliseconds=20)
    assert skip.due(berlin(2026, 6, 10, 11), just_after) == (
        [berlin(2026, 6, 10, 12)],
        berlin(2026, 6, 10, 13),
    )
    assert skip.due(berlin(2026, 6, 10, 12), just_after) == ([], berlin(2026, 6, 10, 13))


def test_outage_over_easter_catches_up_the_last_allowed_fire(
    office_hours: TimeCondition,
) -> None:
    hourly = Schedule(cron="0 * * * *", calendar=Calendar.parse("DE-BY"), condition=office_hours)
    run, upcoming = hourly.due(berlin(2026, 4, 2, 19), berlin(2026, 4, 7, 7, 30))
    assert (run, upcoming) == ([berlin(2026, 4, 7, 7)], berlin(2026, 4, 7, 8))
    run, upcoming = hourly.due(berlin(2026, 4, 2, 19), berlin(2026, 4, 7, 5, 30))
    assert (run, upcoming) == ([berlin(2026, 4, 4, 15)], berlin(2026, 4, 7, 6))


def test_a_year_long_outage_of_a_minutely_schedule_is_one_run_and_quick() -> None:
    minutely = Schedule(cron="* * * * *", misfire="run_once")
    started = clock.thread_time()
    run, upcoming = minutely.due(
        berlin(2025, 6, 1), berlin(2026, 6, 1, 8, 0) + timedelta(seconds=30)
    )
    assert clock.thread_time() - started < 0.1
    assert (run, upcoming) == ([berlin(2026, 6, 1, 8, 0)], berlin(2026, 6, 1, 8, 1))


# ------------------------------------------------------------------------- impossible


def test_christmas_only_schedule_that_never_runs_on_holidays_stops_with_an_error(
    office_hours: TimeCondition,
) -> None:
    christmas = Schedule(
        cron="0 12 25 12 *", calendar=Calendar.parse("DE-BY"), condition=office_hours
    )
    started = clock.thread_time()
    with pytest.raises(ScheduleError, match="never fires within 5 years") as caught:
        christmas.next_fire(utc(2026, 1, 1))
    assert clock.thread_time() - started < 0.5
    assert caught.value.field == "schedule"
    assert "0 12 25 12 *" in str(caught.value) and "DE-BY" in str(caught.value)


def test_interval_that_never_meets_its_window_stops_with_an_error() -> None:
    mornings = TimeCondition.parse(
        "mornings", {"workday": "06:00-07:00", "saturday": "none", "sunday": "none"}
    )
    midnight = Schedule(every=parse_every("1d"), anchor=berlin(2026, 1, 1, 3), condition=mornings)
    started = clock.thread_time()
    with pytest.raises(ScheduleError, match="never fires within 5 years"):
        midnight.next_fire(utc(2026, 1, 1))
    assert clock.thread_time() - started < 0.5


def test_impossible_schedules_are_refused_when_defined() -> None:
    with pytest.raises(ScheduleError, match="never opens") as caught:
        TimeCondition.parse("closed", {"workday": "none", "saturday": "none", "sunday": "none"})
    assert caught.value.field == "windows"
    office = TimeCondition.parse("office", {"workday": "06:00-20:00", "saturday": "none"})
    with pytest.raises(ScheduleError, match="never fires") as caught:
        Schedule(cron="30 2 * * 1-5", condition=office)
    assert caught.value.field == "condition"
    # with a calendar Sundays/holidays are possible for any weekday: still never, all day
    with pytest.raises(ScheduleError, match="never fires"):
        Schedule(
            cron="0 12 * * 6",
            calendar=Calendar.parse("DE"),
            condition=TimeCondition("no-weekends", {"saturday": (), "sunday": ()}),
        )
    # the same cron with a Saturday window that covers it is fine
    saturdays = TimeCondition.parse("saturdays", {"saturday": "10:00-14:00"})
    assert Schedule(cron="0 12 * * 6", condition=saturdays).next_fire(utc(2026, 1, 1)) == berlin(
        2026, 1, 3, 12
    )


def test_until_ends_the_schedule_instead_of_raising() -> None:
    ending = Schedule(cron="0 2 * * *", until=berlin(2026, 5, 2))
    assert ending.next_fire(berlin(2026, 4, 30, 12)) == berlin(2026, 5, 1, 2)
    assert ending.next_fire(berlin(2026, 5, 1, 12)) is None


# ------------------------------------------------------------------------- parsing


@pytest.mark.parametrize(
    ("build", "field", "words"),
    [
        (lambda: Schedule(cron="61 * * * *"), "cron", "61 * * * *"),
        (lambda: Schedule(cron="0 0 2 * * *"), "cron", "6 fields"),
        (lambda: Schedule(cron="0 0 31 2 *"), "cron", "never matches"),
        (lambda: TimeCondition.parse("c", {"workday": "25:00-26:00"}), "windows.workday", "25:00"),
        (
            lambda: TimeCondition.parse("c", {"saturday": "12:00-08:00"}),
            "windows.saturday",
            "12:00-08:00",
        ),
        (lambda: TimeCondition.parse("c", {"holiday": "none"}), "windows.holiday", "sunday"),
        (lambda: Calendar.parse("XX-YY"), "calendar", "'XX'"),
        (lambda: Calendar.parse("DE-YY"), "calendar", "'YY'"),
        (lambda: Calendar.parse("DE", ["2026-13-01"]), "exclusions", "2026-13-01"),
        (lambda: parse_every("5 parsecs"), "every", "5 parsecs"),
        (lambda: parse_every("2 fortnights", "max_delay"), "max_delay", "2 fortnights"),
        (lambda: Schedule(every=timedelta(0)), "every", "shorter than 1s"),
        (lambda: Schedule(cron="0 2 * * *", tz="Europe/Berln"), "tz", "Europe/Berln"),
        (lambda: Schedule(cron="0 2 * * *", misfire="burst"), "misfire", "burst"),
        (lambda: Schedule(), "cron", "exactly one"),
    ],
)
def test_parse_errors_name_the_field(build: Callable[[], object], field: str, words: str) -> None:
    with pytest.raises(ScheduleError) as caught:
        build()
    assert caught.value.field == field
    assert str(caught.value).startswith(f"{field}: ")
    assert words in str(caught.value)
    assert isinstance(caught.value, FlowmillError)


def test_intervals_read_as_people_write_them() -> None:
    assert parse_every("15m") == timedelta(minutes=15)
    assert parse_every("2h") == timedelta(hours=2)
    assert parse_every("1d") == timedelta(days=1)
    assert parse_every("90s") == timedelta(seconds=90)
    assert parse_every("1h30m") == parse_every("1h 30m") == timedelta(minutes=90)


def test_schedule_from_trigger_config_uses_named_conditions_and_calendars(
    office_hours: TimeCondition,
) -> None:
    plant = Calendar.parse("DE-BY", ["2026-04-07"], name="plant")
    schedule = Schedule.from_config(
        {"cron": "0 * * * *", "calendar": "plant", "condition": "office-hours", "misfire": "skip"},
        conditions={"office-hours": office_hours},
        calendars={"plant": plant},
    )
    assert (schedule.calendar, schedule.condition, schedule.misfire) == (
        plant,
        office_hours,
        "skip",
    )
    assert schedule.next_fire(berlin(2026, 4, 2, 20)) == berlin(2026, 4, 4, 8)
    inline = Schedule.from_config({"every": "15m", "windows": {"sunday": "none"}, "tz": "UTC"})
    assert inline.every == timedelta(minutes=15) and inline.condition is not None
    with pytest.raises(ScheduleError) as caught:
        Schedule.from_config({"crom": "0 * * * *"})
    assert caught.value.field == "crom"
    with pytest.raises(ScheduleError, match="office") as caught:
        Schedule.from_config({"cron": "0 * * * *", "condition": "office"})
    assert caught.value.field == "condition"


# ------------------------------------------------------------------------- preview, inputs


def test_a_schedule_survives_the_trip_to_a_worker_process(office_hours: TimeCondition) -> None:
    plant = Calendar.parse("DE-BY", {"2026-04-07": "Inventur"}, name="plant")
    hourly = Schedule(cron="0 * * * *", calendar=plant, condition=office_hours, misfire="skip")
    copy = pickle.loads(pickle.dumps(hourly))
    assert copy == hourly and hash(copy) == hash(hourly)
    assert copy.calendar is not None and copy.calendar.holiday_name(date(2026, 4, 7)) == "Inventur"
    assert copy.next_fire(berlin(2026, 4, 2, 20)) == berlin(2026, 4, 4, 8)


def test_preview_lists_the_next_fire_times_as_aware_utc_datetimes() -> None:
    nightly = Schedule(cron="0 2 * * 1-5", calendar=Calendar.parse("DE"))
    fires = preview(nightly, berlin(2026, 4, 2, 2), 4)
    assert fires == [berlin(2026, 4, d, 2) for d in (2, 7, 8, 9)]  # Good Friday, Easter Monday
    for fire in fires:
        assert fire.utcoffset() == timedelta(0)
        assert datetime.fromisoformat(fire.isoformat()) == fire
    assert fires[0].isoformat() == "2026-04-02T00:00:00+00:00"


def test_naive_datetimes_are_rejected_not_guessed(office_hours: TimeCondition) -> None:
    hourly = Schedule(cron="0 * * * *")
    naive = datetime(2026, 4, 2, 12, 0)
    for call, field in [
        (lambda: hourly.next_fire(naive), "after"),
        (lambda: hourly.fires_between(naive, berlin(2026, 4, 3)), "start"),
        (lambda: hourly.due(berlin(2026, 4, 2), naive), "now"),
        (lambda: hourly.due(naive, berlin(2026, 4, 3)), "last_fire"),
        (lambda: preview(hourly, naive, 3), "start"),
        (lambda: Schedule(every=timedelta(hours=1), anchor=naive), "anchor"),
        (lambda: office_hours.allows(naive), "moment"),
    ]:
        with pytest.raises(ScheduleError, match="naive") as caught:
            call()
        assert caught.value.field == field


def test_next_fire_with_calendar_and_condition_costs_well_under_a_millisecond(
    office_hours: TimeCondition,
) -> None:
    hourly = Schedule(cron="0 * * * *", calendar=Calendar.parse("DE-BY"), condition=office_hours)
    moment = berlin(2026, 1, 5, 8)
    hourly.next_fire(moment)  # warm the holiday cache
    started = clock.thread_time()
    for _ in range(2000):
        moment = hourly.next_fire(moment)
    per_call = (clock.thread_time() - started) / 2000
    assert per_call < 0.0005, f"{per_call * 1e6:.0f} µs per next_fire"
    assert moment.year == 2026  # 2000 office hours ≈ seven months


def test_closed_stretches_are_jumped_over_not_walked_minute_by_minute(
    office_hours: TimeCondition,
) -> None:
    minutely = Schedule(cron="* * * * *", calendar=Calendar.parse("DE-BY"), condition=office_hours)
    minutely.next_fire(berlin(2026, 4, 1, 12))  # warm the holiday cache
    started = clock.thread_time()
    # Thursday 20:00 before Easter: 36 closed hours (2,160 minutes) until Saturday 08:00
    assert minutely.next_fire(berlin(2026, 4, 2, 19, 59)) == berlin(2026, 4, 4, 8)
    # back after the Easter weekend: the last allowed minute was Saturday 15:59
    run, upcoming = minutely.due(berlin(2026, 4, 4, 10), berlin(2026, 4, 7, 5, 30))
    assert (run, upcoming) == ([berlin(2026, 4, 4, 15, 59)], berlin(2026, 4, 7, 6))
    assert clock.thread_time() - started < 0.02
