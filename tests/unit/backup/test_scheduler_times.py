"""When the scheduler runs: the next run after an instant, a wall time on a day that
skips it or repeats it (daylight saving), and a month of runs through the real loop.

The arithmetic is checked directly (``occurrence_on``, ``next_run_after``,
``previous_run_at_or_before``); the month-long runs go through the loop on a fake
clock (``support.clock``), with real backups of a tiny source.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from backup.scheduler import BackupScheduler, SchedulerConfig
from support.backups import backup_instant
from support.clock import at, run_until_runs, scheduler_on, utc

SEOUL = ZoneInfo("Asia/Seoul")
NEW_YORK = ZoneInfo("America/New_York")


def days(first: date, last: date) -> Iterator[date]:
    day = first
    while day <= last:
        yield day
        day += timedelta(days=1)


# -- a simulated month through the real loop -----------------------------------------------


def test_a_month_of_daily_runs_in_seoul_at_three(tmp_path: Path) -> None:
    """31 runs, one per local day, each at 03:00 +09:00 = 18:00 UTC the day before."""
    h = scheduler_on(tmp_path, at(SEOUL, 2026, 5, 1))

    run_until_runs(h, 31)

    expected = [at(SEOUL, 2026, 5, day, 3) for day in range(1, 32)]
    assert h.instants() == expected
    assert [moment.astimezone(UTC) for moment in h.instants()] == [utc(2026, 4, 30, 18)] + [
        utc(2026, 5, day, 18) for day in range(1, 31)
    ]
    assert [run.result.success for run in h.runs] == [True] * 31, [run.result.error for run in h.runs]
    # The id's UTC stamp and the manifest's time are the run's instant.
    for run in h.runs:
        assert backup_instant(run.result.backup_id) == run.instant
        assert run.result.manifest is not None
        assert datetime.fromisoformat(run.result.manifest.created_at) == run.instant
    local_days = [moment.astimezone(SEOUL).date() for moment in h.instants()]
    assert local_days == list(days(date(2026, 5, 1), date(2026, 5, 31)))
    assert len(h.scheduler.runs) == 31
    assert h.errors == []


@pytest.mark.parametrize(
    ("first", "last", "dst_day", "dst_instant"),
    [
        # Spring forward: 02:30 does not exist; the run is at the change, 03:00 EDT.
        (date(2026, 2, 20), date(2026, 3, 20), date(2026, 3, 8), utc(2026, 3, 8, 7, 0)),
        # Fall back: 02:30 happens once, after the change, 02:30 EST.
        (date(2026, 10, 20), date(2026, 11, 20), date(2026, 11, 1), utc(2026, 11, 1, 7, 30)),
    ],
    ids=["spring-forward", "fall-back"],
)
def test_new_york_0230_across_dst(
    tmp_path: Path, first: date, last: date, dst_day: date, dst_instant: datetime
) -> None:
    h = scheduler_on(
        tmp_path,
        at(NEW_YORK, first.year, first.month, first.day),
        tz_name="America/New_York",
        schedule_time=time(2, 30),
    )
    expected_days = list(days(first, last))

    run_until_runs(h, len(expected_days))

    expected = [
        dst_instant if day == dst_day else datetime.combine(day, time(2, 30), tzinfo=NEW_YORK) for day in expected_days
    ]
    assert [m.astimezone(UTC) for m in h.instants()] == [m.astimezone(UTC) for m in expected]
    for moment, day in zip(h.instants(), expected_days, strict=True):
        local = moment.astimezone(NEW_YORK)
        assert local.date() == day  # one run per local day, none twice
        if day != dst_day:
            assert (local.hour, local.minute) == (2, 30)
    assert all(run.result.success for run in h.runs)
    assert all(backup_instant(run.result.backup_id) == run.instant for run in h.runs)


def test_new_york_0130_runs_once_on_fall_back_day(tmp_path: Path) -> None:
    """01:30 happens twice on 2026-11-01: the run is at the first (EDT, 05:30 UTC), only."""
    h = scheduler_on(tmp_path, at(NEW_YORK, 2026, 10, 30), tz_name="America/New_York", schedule_time=time(1, 30))

    run_until_runs(h, 5)

    assert [m.astimezone(UTC) for m in h.instants()] == [
        utc(2026, 10, 30, 5, 30),
        utc(2026, 10, 31, 5, 30),
        utc(2026, 11, 1, 5, 30),  # 01:30 EDT; not again at 06:30 UTC (01:30 EST)
        utc(2026, 11, 2, 6, 30),
        utc(2026, 11, 3, 6, 30),
    ]


# -- the schedule arithmetic ---------------------------------------------------------------


def scheduler_for(tmp_path: Path, zone: str, wall: time) -> BackupScheduler:
    config = SchedulerConfig(tmp_path / "source", tmp_path / "backups", schedule_time=wall, tz_name=zone)
    return BackupScheduler(config)


@pytest.mark.parametrize(
    ("zone", "wall", "day", "expected"),
    [
        ("America/New_York", time(2, 30), date(2026, 3, 8), utc(2026, 3, 8, 7, 0)),  # in the gap: at the change
        ("America/New_York", time(2, 0), date(2026, 3, 8), utc(2026, 3, 8, 7, 0)),  # the gap's first minute
        ("America/New_York", time(3, 0), date(2026, 3, 8), utc(2026, 3, 8, 7, 0)),  # first wall time after it
        ("America/New_York", time(1, 59), date(2026, 3, 8), utc(2026, 3, 8, 6, 59)),  # just before it
        ("America/New_York", time(2, 30), date(2026, 3, 9), utc(2026, 3, 9, 6, 30)),
        ("America/New_York", time(1, 30), date(2026, 11, 1), utc(2026, 11, 1, 5, 30)),  # first of two
        ("America/New_York", time(2, 30), date(2026, 11, 1), utc(2026, 11, 1, 7, 30)),
        ("Asia/Seoul", time(3, 0), date(2026, 1, 1), utc(2025, 12, 31, 18, 0)),
        # A half-hour change: Lord Howe Island springs from 02:00 to 02:30.
        ("Australia/Lord_Howe", time(2, 15), date(2026, 10, 4), utc(2026, 10, 3, 15, 30)),
    ],
)
def test_occurrence_on(tmp_path: Path, zone: str, wall: time, day: date, expected: datetime) -> None:
    assert scheduler_for(tmp_path, zone, wall).occurrence_on(day).astimezone(UTC) == expected


@pytest.mark.parametrize(
    ("zone", "wall", "moment", "expected"),
    [
        ("America/New_York", time(2, 30), utc(2026, 3, 8, 6, 59, 59), utc(2026, 3, 8, 7, 0)),
        ("America/New_York", time(2, 30), utc(2026, 3, 8, 7, 0), utc(2026, 3, 9, 6, 30)),  # strictly after
        ("America/New_York", time(2, 30), utc(2026, 3, 7, 7, 30), utc(2026, 3, 8, 7, 0)),  # exactly the day before
        ("America/New_York", time(1, 30), utc(2026, 11, 1, 5, 29, 59), utc(2026, 11, 1, 5, 30)),
        ("America/New_York", time(1, 30), utc(2026, 11, 1, 5, 30), utc(2026, 11, 2, 6, 30)),  # not 06:30 that day
        ("America/New_York", time(1, 30), utc(2026, 11, 1, 6, 30), utc(2026, 11, 2, 6, 30)),
        ("Asia/Seoul", time(3, 0), utc(2026, 5, 9, 18, 0), utc(2026, 5, 10, 18, 0)),  # exactly at a run
        ("Asia/Seoul", time(3, 0), utc(2026, 5, 9, 17, 59, 59), utc(2026, 5, 9, 18, 0)),
        ("Asia/Seoul", time(3, 0), at(SEOUL, 2026, 5, 10, 3, 0, 1), utc(2026, 5, 10, 18, 0)),  # an aware local moment
        ("Asia/Seoul", time(3, 0), at(NEW_YORK, 2026, 5, 9, 13, 59), utc(2026, 5, 9, 18, 0)),  # another zone
    ],
)
def test_next_run_after(tmp_path: Path, zone: str, wall: time, moment: datetime, expected: datetime) -> None:
    scheduler = scheduler_for(tmp_path, zone, wall)
    found = scheduler.next_run_after(moment)
    assert found.astimezone(UTC) == expected
    assert found > moment


def test_previous_run_at_or_before(tmp_path: Path) -> None:
    scheduler = scheduler_for(tmp_path, "Asia/Seoul", time(3, 0))
    assert scheduler.previous_run_at_or_before(utc(2026, 5, 9, 18, 0)).astimezone(UTC) == utc(2026, 5, 9, 18, 0)
    assert scheduler.previous_run_at_or_before(utc(2026, 5, 9, 17, 59)).astimezone(UTC) == utc(2026, 5, 8, 18, 0)
