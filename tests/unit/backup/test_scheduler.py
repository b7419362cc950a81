"""The daily scheduler, driven through its real loop by a fake clock.

Nothing here waits in real time: ``FakeClock.sleep`` advances the clock and yields to
the event loop once, so a simulated month takes well under a second. The backups
themselves are real (a tiny source directory, a real backup directory), run in the
scheduler's worker thread as in production.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import os
import stat
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

import backup.create
import backup.scheduler
from backup import BackupConfig, create_backup
from backup.catalog import list_backups, parse_backup_id
from backup.config import BackupResult
from backup.errors import ConfigError
from backup.lock import backup_dir_lock
from backup.monitor import STATE_NAME, load_state
from backup.retention import RetentionPolicy
from backup.scheduler import BackupScheduler, RunOutcome, SchedulerConfig
from shared.time_helpers import UnknownTimeZoneError

SEOUL = ZoneInfo("Asia/Seoul")
NEW_YORK = ZoneInfo("America/New_York")

# Generous only for a failing test; a passing one never waits on it.
REAL_TIMEOUT = 15.0


# -- the fake clock and the driver -----------------------------------------------


class FakeClock:
    """A settable UTC clock whose ``sleep`` advances it instead of waiting.

    ``jumps`` are (when the clock first reads at or after ``at``, add ``delta``) pairs:
    a clock step (NTP, a suspended laptop) happening during a sleep. ``until`` is
    checked after every sleep (and after every run, by the harness); once it holds,
    ``reached`` is set.
    """

    def __init__(self, start: datetime, *, max_sleeps: int = 100_000) -> None:
        assert start.tzinfo is not None
        self.moment = start.astimezone(UTC)
        self.sleeps: list[float] = []
        self.jumps: list[tuple[datetime, timedelta]] = []
        self.until: Callable[[], bool] = lambda: False
        self.reached = asyncio.Event()
        self.max_sleeps = max_sleeps
        self.runaway = False

    def now(self) -> datetime:
        return self.moment

    def advance(self, delta: timedelta) -> None:
        self.moment += delta

    async def sleep(self, seconds: float) -> None:
        assert seconds > 0, f"the scheduler asked to sleep {seconds}s"
        self.sleeps.append(seconds)
        self.moment += timedelta(seconds=seconds)
        for jump in list(self.jumps):
            at, delta = jump
            if self.moment >= at:
                self.jumps.remove(jump)
                self.moment += delta
        if len(self.sleeps) > self.max_sleeps:
            self.runaway = True
        if self.runaway or self.until():
            self.reached.set()
        await asyncio.sleep(0)


@dataclass
class Run:
    """One completed run as the on_complete callback saw it."""

    instant: datetime
    result: BackupResult


@dataclass
class Harness:
    clock: FakeClock
    scheduler: BackupScheduler
    runs: list[Run] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def instants(self) -> list[datetime]:
        return [run.instant for run in self.runs]


def make_source(root: Path) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "data.txt").write_text("some data\n")
    (root / "sub").mkdir(exist_ok=True)
    (root / "sub" / "more.txt").write_text("more\n")
    return root


def harness(
    tmp_path: Path,
    start: datetime,
    *,
    on_complete: Callable[[BackupResult], None] | None = None,
    on_error: Callable[[str], None] | None = None,
    max_sleep: float = 3600.0,
    **overrides: Any,
) -> Harness:
    """Build a scheduler over a tiny real source, recording every run with its instant."""
    clock = FakeClock(start)
    settings: dict[str, Any] = {
        "source_dir": tmp_path / "source",
        "backup_dir": tmp_path / "backups",
        "catch_up": False,
    }
    settings.update(overrides)
    if "source_dir" not in overrides:
        make_source(settings["source_dir"])
    config = SchedulerConfig(**settings)
    runs: list[Run] = []
    errors: list[str] = []

    def complete(result: BackupResult) -> None:
        runs.append(Run(clock.now(), result))
        if clock.until():
            clock.reached.set()
        if on_complete is not None:
            on_complete(result)

    def error(message: str) -> None:
        errors.append(message)
        if on_error is not None:
            on_error(message)

    scheduler = BackupScheduler(
        config, on_complete=complete, on_error=error, now=clock.now, sleep=clock.sleep, max_sleep=max_sleep
    )
    return Harness(clock, scheduler, runs, errors)


async def drive(h: Harness, until: Callable[[], bool]) -> None:
    """start(); let the fake clock run until ``until()`` holds after a sleep or a run; stop()."""
    h.clock.until = until
    await h.scheduler.start()
    reached = asyncio.ensure_future(h.clock.reached.wait())
    ended = asyncio.ensure_future(h.scheduler.wait())
    done, _ = await asyncio.wait({reached, ended}, timeout=REAL_TIMEOUT, return_when=asyncio.FIRST_COMPLETED)
    reached.cancel()
    if ended in done:
        ended.result()  # re-raises whatever killed the loop
        pytest.fail("the scheduler loop ended on its own")
    assert done, "the scheduler did not reach the expected state in time"
    assert not h.clock.runaway, f"no progress after {h.clock.max_sleeps} sleeps; runs so far: {h.instants()}"
    await asyncio.wait_for(h.scheduler.stop(), REAL_TIMEOUT)
    ended.cancel()


def run_until_runs(h: Harness, count: int) -> None:
    asyncio.run(drive(h, lambda: len(h.runs) >= count))


def at(zone: ZoneInfo, year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, second, tzinfo=zone)


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, second, tzinfo=UTC)


def days(first: date, last: date) -> Iterator[date]:
    day = first
    while day <= last:
        yield day
        day += timedelta(days=1)


def id_instant(result: BackupResult) -> datetime:
    assert result.backup_id is not None
    parsed = parse_backup_id(result.backup_id)
    assert parsed is not None, result.backup_id
    return parsed[1]


def partials(directory: Path) -> list[str]:
    return sorted(name for name in os.listdir(directory) if name.endswith(".partial"))


def existing_backup(tmp_path: Path, moment: datetime, prefix: str = "scheduled_backup") -> BackupResult:
    """A real, complete backup created at ``moment`` (as a previous run would have left)."""
    source = make_source(tmp_path / "source")
    result = create_backup(BackupConfig(source, tmp_path / "backups", prefix=prefix), now=lambda: moment)
    assert result.success, result.error
    return result


# -- (a), (b), (c): a simulated month through the real loop ------------------------


def test_a_month_of_daily_runs_in_seoul_at_three(tmp_path: Path) -> None:
    """31 runs, one per local day, each at 03:00 +09:00 = 18:00 UTC the day before."""
    h = harness(tmp_path, at(SEOUL, 2026, 5, 1))

    run_until_runs(h, 31)

    expected = [at(SEOUL, 2026, 5, day, 3) for day in range(1, 32)]
    assert h.instants() == expected
    assert [moment.astimezone(UTC) for moment in h.instants()] == [utc(2026, 4, 30, 18)] + [
        utc(2026, 5, day, 18) for day in range(1, 31)
    ]
    assert [run.result.success for run in h.runs] == [True] * 31, [run.result.error for run in h.runs]
    # The id's UTC stamp and the manifest's time are the run's instant.
    for run in h.runs:
        assert id_instant(run.result) == run.instant
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
    h = harness(
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
    assert all(id_instant(run.result) == run.instant for run in h.runs)


def test_new_york_0130_runs_once_on_fall_back_day(tmp_path: Path) -> None:
    """01:30 happens twice on 2026-11-01: the run is at the first (EDT, 05:30 UTC), only."""
    h = harness(tmp_path, at(NEW_YORK, 2026, 10, 30), tz_name="America/New_York", schedule_time=time(1, 30))

    run_until_runs(h, 5)

    assert [m.astimezone(UTC) for m in h.instants()] == [
        utc(2026, 10, 30, 5, 30),
        utc(2026, 10, 31, 5, 30),
        utc(2026, 11, 1, 5, 30),  # 01:30 EDT; not again at 06:30 UTC (01:30 EST)
        utc(2026, 11, 2, 6, 30),
        utc(2026, 11, 3, 6, 30),
    ]


# -- (d): the schedule arithmetic ------------------------------------------------------


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


# -- (e): bounded sleeps, clock jumps ---------------------------------------------------


def test_every_sleep_is_bounded_by_max_sleep(tmp_path: Path) -> None:
    h = harness(tmp_path, at(SEOUL, 2026, 5, 1, 0, 0), max_sleep=60.0)

    run_until_runs(h, 2)

    assert h.instants() == [at(SEOUL, 2026, 5, 1, 3), at(SEOUL, 2026, 5, 2, 3)]
    assert h.clock.sleeps, "the scheduler never slept"
    assert max(h.clock.sleeps) <= 60.0
    # 27 hours of waiting in slices of at most a minute.
    assert len(h.clock.sleeps) >= 27 * 60


@pytest.mark.parametrize("jump", [timedelta(hours=2), timedelta(hours=20)], ids=["2h", "20h-suspend"])
def test_clock_jumping_forward_past_the_run_runs_once(tmp_path: Path, jump: timedelta) -> None:
    """At 02:00 the clock steps past 03:00: one run right away, then the normal schedule."""
    h = harness(tmp_path, at(SEOUL, 2026, 5, 1, 0, 0), max_sleep=600.0)
    h.clock.jumps.append((at(SEOUL, 2026, 5, 1, 2, 0), jump))

    run_until_runs(h, 2)

    landed = at(SEOUL, 2026, 5, 1, 2, 0) + jump
    assert h.instants() == [landed, at(SEOUL, 2026, 5, 2, 3)]


def test_clock_jumping_backward_does_not_run_early(tmp_path: Path) -> None:
    """At 02:30 the clock steps back to 01:30: the run still waits for 03:00 on the clock."""
    h = harness(tmp_path, at(SEOUL, 2026, 5, 1, 0, 0), max_sleep=600.0)
    h.clock.jumps.append((at(SEOUL, 2026, 5, 1, 2, 30), timedelta(hours=-1)))

    run_until_runs(h, 2)

    assert h.instants() == [at(SEOUL, 2026, 5, 1, 3), at(SEOUL, 2026, 5, 2, 3)]


@pytest.mark.parametrize(
    ("step", "second_run"),
    [
        # An hour back: 03:00 comes round again on the clock; it must not run twice.
        (timedelta(hours=-1), at(SEOUL, 2026, 5, 2, 3)),
        # Three days back (a clock that was far ahead, corrected): the schedule follows
        # the corrected clock instead of waiting for the old future date.
        (timedelta(days=-3), at(SEOUL, 2026, 4, 29, 3)),
    ],
    ids=["1h", "3d"],
)
def test_clock_stepping_back_during_a_backup(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, step: timedelta, second_run: datetime
) -> None:
    h = harness(tmp_path, at(SEOUL, 2026, 5, 1, 0, 0), max_sleep=600.0)
    real_create: Callable[..., BackupResult] = getattr(backup.scheduler, "create_backup")  # noqa: B009 (not re-exported)
    stepped: list[bool] = []

    def create_then_step_back(*args: Any, **kwargs: Any) -> BackupResult:
        result = real_create(*args, **kwargs)
        if not stepped:
            stepped.append(True)
            h.clock.advance(step)
        return result

    monkeypatch.setattr(backup.scheduler, "create_backup", create_then_step_back)

    run_until_runs(h, 2)

    assert [id_instant(run.result) for run in h.runs] == [at(SEOUL, 2026, 5, 1, 3), second_run]


# -- (f): catch-up -----------------------------------------------------------------------


def test_catch_up_runs_once_at_start_when_the_last_run_was_missed(tmp_path: Path) -> None:
    start = at(SEOUL, 2026, 5, 10, 12, 0)
    existing_backup(tmp_path, start - timedelta(days=2))
    h = harness(tmp_path, start, catch_up=True)

    run_until_runs(h, 3)

    assert h.instants() == [start, at(SEOUL, 2026, 5, 11, 3), at(SEOUL, 2026, 5, 12, 3)]
    assert all(run.result.success for run in h.runs)


def test_catch_up_runs_at_start_when_there_is_no_backup_yet(tmp_path: Path) -> None:
    start = at(SEOUL, 2026, 5, 10, 12, 0)
    h = harness(tmp_path, start, catch_up=True)

    run_until_runs(h, 2)

    assert h.instants() == [start, at(SEOUL, 2026, 5, 11, 3)]


def test_no_catch_up_when_the_last_backup_is_after_the_most_recent_scheduled_time(tmp_path: Path) -> None:
    start = at(SEOUL, 2026, 5, 10, 12, 0)
    existing_backup(tmp_path, at(SEOUL, 2026, 5, 10, 3, 0, 5))
    h = harness(tmp_path, start, catch_up=True)

    run_until_runs(h, 1)

    assert h.instants() == [at(SEOUL, 2026, 5, 11, 3)]


def test_another_prefix_does_not_count_as_the_last_backup(tmp_path: Path) -> None:
    start = at(SEOUL, 2026, 5, 10, 12, 0)
    existing_backup(tmp_path, at(SEOUL, 2026, 5, 10, 11, 0), prefix="manual")
    h = harness(tmp_path, start, catch_up=True)

    run_until_runs(h, 1)

    assert h.instants() == [start]


def test_a_backup_dated_in_the_future_does_not_suppress_the_catch_up(tmp_path: Path) -> None:
    """A backup made while the clock ran a year ahead is not "the last backup": the
    missed run is still caught up (it used to be suppressed until the clock got there)."""
    start = at(SEOUL, 2026, 5, 10, 12, 0)
    existing_backup(tmp_path, start - timedelta(days=2))
    existing_backup(tmp_path, start + timedelta(days=365))
    h = harness(tmp_path, start, catch_up=True)

    run_until_runs(h, 2)

    assert h.instants() == [start, at(SEOUL, 2026, 5, 11, 3)]


def test_catch_up_with_only_a_backup_dated_in_the_future(tmp_path: Path) -> None:
    start = at(SEOUL, 2026, 5, 10, 12, 0)
    existing_backup(tmp_path, start + timedelta(minutes=5))
    h = harness(tmp_path, start, catch_up=True)

    run_until_runs(h, 1)

    assert h.instants() == [start]


def test_catch_up_disabled(tmp_path: Path) -> None:
    start = at(SEOUL, 2026, 5, 10, 12, 0)
    existing_backup(tmp_path, start - timedelta(days=2))
    h = harness(tmp_path, start, catch_up=False)

    run_until_runs(h, 1)

    assert h.instants() == [at(SEOUL, 2026, 5, 11, 3)]


# -- (g), (h): failures and callbacks ---------------------------------------------------


def test_failed_backup_reports_and_the_schedule_carries_on(tmp_path: Path) -> None:
    source = tmp_path / "missing-source"

    def complete(result: BackupResult) -> None:
        if not result.success:
            make_source(source)  # the next day the source is back

    h = harness(tmp_path, at(SEOUL, 2026, 5, 1), source_dir=source, on_complete=complete)

    run_until_runs(h, 2)

    assert h.instants() == [at(SEOUL, 2026, 5, 1, 3), at(SEOUL, 2026, 5, 2, 3)]
    assert [run.result.success for run in h.runs] == [False, True]
    failed = h.runs[0].result
    assert failed.error is not None and str(source) in failed.error
    assert h.errors == [failed.error]
    assert "\n" not in failed.error
    assert [b.backup_id for b in list_backups(tmp_path / "backups")] == [h.runs[1].result.backup_id]


@pytest.mark.parametrize("which", ["on_complete", "on_error"])
def test_a_raising_callback_is_logged_and_the_scheduler_keeps_running(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, which: str
) -> None:
    calls: list[str] = []

    def explode(_: object) -> None:
        calls.append(which)
        raise RuntimeError(f"{which} blew up")

    source = tmp_path / "source" if which == "on_complete" else tmp_path / "missing"
    callbacks: dict[str, Callable[[Any], None]] = {which: explode}
    h = harness(tmp_path, at(SEOUL, 2026, 5, 1), source_dir=source, **callbacks)  # type: ignore[arg-type]
    if which == "on_complete":
        make_source(source)
    caplog.set_level(logging.ERROR, logger="backup.scheduler")

    run_until_runs(h, 3)

    assert len(h.runs) == 3
    assert calls == [which] * 3
    raised = [r for r in caplog.records if r.name == "backup.scheduler" and r.exc_info is not None]
    assert len(raised) == 3
    assert all(f"{which} blew up" in str(r.exc_info[1]) for r in raised if r.exc_info)
    assert all("callback" in r.getMessage() for r in raised)


# -- (i): stop() while a backup is running ------------------------------------------------


@pytest.mark.parametrize("blocked", ["before-writing", "mid-write"])
def test_stop_waits_for_the_backup_in_progress(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, blocked: str) -> None:
    started = threading.Event()
    release = threading.Event()
    threads: list[threading.Thread] = []

    def hold() -> None:
        threads.append(threading.current_thread())
        started.set()
        assert release.wait(REAL_TIMEOUT), "the test never released the backup"

    if blocked == "before-writing":
        real_create: Callable[..., BackupResult] = getattr(backup.scheduler, "create_backup")  # noqa: B009 (not re-exported)

        def slow_create(*args: Any, **kwargs: Any) -> BackupResult:
            hold()
            return real_create(*args, **kwargs)

        monkeypatch.setattr(backup.scheduler, "create_backup", slow_create)
    else:
        real_write = getattr(backup.create, "write_entries")  # noqa: B009 (not re-exported)

        def slow_write(*args: Any, **kwargs: Any) -> Any:
            hold()  # the archive's .partial exists now
            return real_write(*args, **kwargs)

        monkeypatch.setattr(backup.create, "write_entries", slow_write)

    h = harness(tmp_path, at(SEOUL, 2026, 5, 10, 12), catch_up=True)  # no backup yet: runs at once
    backup_dir = tmp_path / "backups"

    async def scenario() -> None:
        await h.scheduler.start()
        assert await asyncio.to_thread(started.wait, REAL_TIMEOUT)
        if blocked == "mid-write":
            assert partials(backup_dir), "expected the archive to be in progress"
        stopping = asyncio.create_task(h.scheduler.stop())
        for _ in range(20):
            await asyncio.sleep(0)  # the event loop is free while the backup runs
        assert not stopping.done(), "stop() returned while a backup was still running"
        release.set()
        await asyncio.wait_for(stopping, REAL_TIMEOUT)

    asyncio.run(scenario())

    assert threads and threads[0] is not threading.main_thread()  # run via asyncio.to_thread
    assert len(h.runs) == 1 and h.runs[0].result.success, h.runs[0].result.error
    listed = list_backups(backup_dir)
    assert [b.backup_id for b in listed] == [h.runs[0].result.backup_id]
    assert listed[0].manifest_path is not None and listed[0].problem is None
    assert partials(backup_dir) == []


# -- (j): retention after each run ---------------------------------------------------------


def test_run_once_applies_retention_only_to_its_prefix(tmp_path: Path) -> None:
    clock = FakeClock(at(SEOUL, 2026, 5, 1, 3))
    make_source(tmp_path / "source")
    others = [existing_backup(tmp_path, at(SEOUL, 2026, 4, day, 9), prefix="manual") for day in (1, 2)]
    config = SchedulerConfig(tmp_path / "source", tmp_path / "backups", retention_days=2)
    scheduler = BackupScheduler(config, now=clock.now)

    made: list[str] = []
    for day in range(6):
        if day:
            clock.advance(timedelta(days=1, hours=1))  # 25 h apart: no backup sits exactly on the limit
        outcome = scheduler.run_once()
        assert outcome.result.success, outcome.result.error
        assert outcome.result.backup_id is not None
        made.append(outcome.result.backup_id)
        listed = {b.backup_id for b in list_backups(config.backup_dir, prefix="scheduled_backup")}
        # Within 2 days of the newest: the newest and the one 25 h before it (50 h is out).
        assert listed == set(made[-2:])
        assert outcome.prune is not None
        assert outcome.prune.removed == made[-3:-2]
        assert made[-1] in listed

    manual = {b.backup_id for b in list_backups(config.backup_dir, prefix="manual")}
    assert manual == {r.backup_id for r in others}
    for result in others:
        assert result.backup_path is not None and result.backup_path.is_file()
        assert result.manifest_path is not None and result.manifest_path.is_file()


def test_a_retention_failure_does_not_fail_the_backup(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The backup already exists when retention runs: an error there is logged, not a failed run."""
    import backup.scheduler as scheduler_module

    def broken_plan(*args: object, **kwargs: object) -> None:
        raise PermissionError(13, "Permission denied", str(tmp_path / "backups"))

    monkeypatch.setattr(scheduler_module, "plan_prune", broken_plan)
    clock = FakeClock(at(SEOUL, 2026, 5, 1, 3))
    make_source(tmp_path / "source")
    scheduler = BackupScheduler(SchedulerConfig(tmp_path / "source", tmp_path / "backups"), now=clock.now)

    outcome = scheduler.run_once()

    assert outcome.result.success, outcome.result.error
    assert outcome.prune is None
    assert [b.backup_id for b in list_backups(tmp_path / "backups")] == [outcome.result.backup_id]
    state = json.loads((tmp_path / "backups" / ".obs-backup-state.json").read_text())
    assert state["scheduled_backup"]["last_success"]["backup_id"] == outcome.result.backup_id


def test_run_once_uses_the_policy_when_given(tmp_path: Path) -> None:
    clock = FakeClock(at(SEOUL, 2026, 5, 1, 3))
    make_source(tmp_path / "source")
    config = SchedulerConfig(
        tmp_path / "source", tmp_path / "backups", retention_days=30, policy=RetentionPolicy(keep_last=2)
    )
    scheduler = BackupScheduler(config, now=clock.now)
    made = []
    for _ in range(4):
        made.append(scheduler.run_once().result.backup_id)
        clock.advance(timedelta(hours=1))
    assert [b.backup_id for b in list_backups(config.backup_dir)] == made[-2:]


# -- (k): state and metrics ---------------------------------------------------------------


def metric_values(text: str) -> dict[str, float]:
    values = {}
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        name, value = line.rsplit(" ", 1)
        values[name] = float(value)
    return values


def test_run_once_records_state_and_metrics(tmp_path: Path) -> None:
    metrics_dir = tmp_path / "textfile"
    metrics_dir.mkdir()
    metrics = metrics_dir / "obs_backup.prom"
    source = make_source(tmp_path / "source")
    first = at(SEOUL, 2026, 5, 1, 3)
    clock = FakeClock(first)
    config = SchedulerConfig(source, tmp_path / "backups", metrics_file=metrics)
    scheduler = BackupScheduler(config, now=clock.now)

    ok = scheduler.run_once().result
    assert ok.success, ok.error

    label = '{prefix="scheduled_backup"}'
    values = metric_values(metrics.read_text())
    assert values == {
        f"obs_backup_last_success_timestamp_seconds{label}": first.timestamp(),
        f"obs_backup_last_run_timestamp_seconds{label}": first.timestamp(),
        f"obs_backup_last_run_duration_seconds{label}": 0.0,
        f"obs_backup_last_run_success{label}": 1.0,
        f"obs_backup_last_archive_size_bytes{label}": float(ok.archive_size),
        f"obs_backup_last_files{label}": 2.0,
        f"obs_backup_future_dated_backups{label}": 0.0,
    }
    assert ok.archive_size > 0
    assert stat.S_IMODE(metrics.stat().st_mode) == 0o644
    assert os.listdir(metrics_dir) == ["obs_backup.prom"]
    state = json.loads((config.backup_dir / STATE_NAME).read_text())
    entry = state["scheduled_backup"]
    assert entry["last_run"] == entry["last_success"]
    assert entry["last_run"]["backup_id"] == ok.backup_id
    assert entry["last_run"]["success"] is True
    assert entry["last_run"]["file_count"] == 2
    assert datetime.fromisoformat(entry["last_run"]["finished_at"]) == first
    inode = metrics.stat().st_ino

    # The next day the source is gone: the run fails; the last success is kept.
    clock.advance(timedelta(days=1))
    for path in sorted(source.rglob("*"), reverse=True):
        path.rmdir() if path.is_dir() else path.unlink()
    source.rmdir()
    failed = scheduler.run_once().result
    assert not failed.success

    values = metric_values(metrics.read_text())
    assert values[f"obs_backup_last_run_success{label}"] == 0.0
    assert values[f"obs_backup_last_run_timestamp_seconds{label}"] == (first + timedelta(days=1)).timestamp()
    assert values[f"obs_backup_last_success_timestamp_seconds{label}"] == first.timestamp()
    assert values[f"obs_backup_last_archive_size_bytes{label}"] == float(ok.archive_size)
    assert values[f"obs_backup_last_files{label}"] == 2.0
    assert metrics.stat().st_ino != inode  # replaced by a rename, not rewritten in place
    assert stat.S_IMODE(metrics.stat().st_mode) == 0o644
    assert os.listdir(metrics_dir) == ["obs_backup.prom"]
    assert partials(config.backup_dir) == []
    entry = load_state(config.backup_dir)["scheduled_backup"]
    assert entry["last_run"]["success"] is False
    assert entry["last_run"]["error"] == failed.error
    assert entry["last_success"]["backup_id"] == ok.backup_id


def test_run_once_keeps_the_real_history_when_a_backup_is_dated_in_the_future(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """One backup made while the clock was a year ahead: retention (within 3 days) is
    measured from the newest real backup, so the real history and each new backup stay;
    the future one is kept, logged and counted in the state and the metrics."""
    metrics = tmp_path / "obs.prom"
    first = at(SEOUL, 2026, 5, 1, 3)
    real = [existing_backup(tmp_path, first + timedelta(days=day)).backup_id for day in range(5)]
    ahead = existing_backup(tmp_path, first + timedelta(days=365)).backup_id
    clock = FakeClock(first + timedelta(days=5))
    config = SchedulerConfig(tmp_path / "source", tmp_path / "backups", retention_days=3, metrics_file=metrics)
    scheduler = BackupScheduler(config, now=clock.now)
    caplog.set_level(logging.INFO, logger="backup.scheduler")

    outcome = scheduler.run_once()

    made = outcome.result.backup_id
    assert outcome.result.success and made is not None
    assert outcome.prune is not None
    # Within 3 days of May 6, 03:00, strictly: May 4, 5 and 6; and the future one.
    assert [b.backup_id for b in list_backups(config.backup_dir)] == [real[3], real[4], made, ahead]
    assert outcome.prune.removed == [real[2], real[1], real[0]]
    assert [d.backup.backup_id for d in outcome.prune.plan.future] == [ahead]
    warnings = [r for r in caplog.records if "dated in the future" in r.getMessage()]
    assert len(warnings) == 1 and warnings[0].levelno == logging.WARNING
    assert ahead in warnings[0].getMessage() and "check the clock" in warnings[0].getMessage()
    assert getattr(warnings[0], "backup_id", None) == made
    label = '{prefix="scheduled_backup"}'
    assert metric_values(metrics.read_text())[f"obs_backup_future_dated_backups{label}"] == 1.0
    assert load_state(config.backup_dir)["scheduled_backup"]["last_run"]["future_dated_backups"] == 1

    # A week of daily runs later, every new backup has survived the runs after it.
    for _ in range(7):
        clock.advance(timedelta(days=1))
        assert scheduler.run_once().result.success
    listed = [b.backup_id for b in list_backups(config.backup_dir)]
    assert len(listed) == 4 and listed[-1] == ahead
    assert [parse_backup_id(i)[1] for i in listed[:-1]] == [  # type: ignore[index]
        (first + timedelta(days=day)).astimezone(UTC) for day in (10, 11, 12)
    ]


def test_run_once_when_the_directory_is_locked(tmp_path: Path) -> None:
    source = make_source(tmp_path / "source")
    backup_dir = tmp_path / "backups"
    clock = FakeClock(at(SEOUL, 2026, 5, 1, 3))
    scheduler = BackupScheduler(SchedulerConfig(source, backup_dir, lock_timeout=0), now=clock.now)

    with backup_dir_lock(backup_dir):
        outcome = scheduler.run_once()

    assert not outcome.result.success
    assert outcome.result.error is not None and f"pid {os.getpid()}" in outcome.result.error
    assert outcome.prune is None
    assert list_backups(backup_dir) == []
    assert load_state(backup_dir)["scheduled_backup"]["last_run"]["error"] == outcome.result.error


# -- (l): logging carries the backup id ---------------------------------------------------


def test_log_records_carry_the_backup_id(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    make_source(tmp_path / "source")
    old = existing_backup(tmp_path, at(SEOUL, 2026, 4, 1, 3))
    clock = FakeClock(at(SEOUL, 2026, 5, 1, 3))
    scheduler = BackupScheduler(SchedulerConfig(tmp_path / "source", tmp_path / "backups"), now=clock.now)
    caplog.set_level(logging.INFO, logger="backup.scheduler")

    outcome = scheduler.run_once()

    backup_id = outcome.result.backup_id
    assert backup_id is not None and outcome.result.success
    records = [r for r in caplog.records if r.name == "backup.scheduler"]
    complete = [r for r in records if "backup complete" in r.getMessage()]
    removed = [r for r in records if "retention removed" in r.getMessage()]
    assert len(complete) == 1 and len(removed) == 1
    assert old.backup_id is not None and old.backup_id in removed[0].getMessage()
    for record in complete + removed:
        assert getattr(record, "backup_id", None) == backup_id
        assert backup_id in record.getMessage()


# -- (m): configuration ---------------------------------------------------------------------


def test_unknown_time_zone_is_refused_naming_it(tmp_path: Path) -> None:
    with pytest.raises(UnknownTimeZoneError, match="Mars/Olympus"):
        BackupScheduler(SchedulerConfig(tmp_path, tmp_path / "b", tz_name="Mars/Olympus"))


def test_bad_retention_is_refused_at_construction(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="retention_days"):
        BackupScheduler(SchedulerConfig(tmp_path, tmp_path / "b", retention_days=0))


def test_scheduler_config_defaults_are_the_seeds() -> None:
    fields = dataclasses.fields(SchedulerConfig)
    assert [f.name for f in fields[:6]] == [
        "source_dir",
        "backup_dir",
        "schedule_time",
        "retention_days",
        "tz_name",
        "prefix",
    ]
    config = SchedulerConfig(Path("/src"), Path("/dst"))
    assert (config.schedule_time, config.retention_days, config.tz_name, config.prefix) == (
        time(3, 0),
        7,
        "Asia/Seoul",
        "scheduled_backup",
    )
    positional = SchedulerConfig(Path("/s"), Path("/d"), time(4, 15), 3, "UTC", "nightly")
    assert (positional.schedule_time, positional.retention_days, positional.tz_name, positional.prefix) == (
        time(4, 15),
        3,
        "UTC",
        "nightly",
    )


def test_naive_clock_is_refused(tmp_path: Path) -> None:
    scheduler = BackupScheduler(SchedulerConfig(tmp_path, tmp_path / "b"), now=lambda: datetime(2026, 5, 1, 3))
    with pytest.raises(ValueError, match="aware"):
        scheduler.run_once()


def test_monitoring_that_cannot_be_written_is_logged_not_fatal(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A metrics path that cannot be written (its directory is a file) costs the metrics,
    not the backup: the run succeeds and the problem is logged."""
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("x")
    clock = FakeClock(at(SEOUL, 2026, 5, 1, 3))
    make_source(tmp_path / "source")
    config = SchedulerConfig(tmp_path / "source", tmp_path / "backups", metrics_file=blocker / "obs.prom")
    scheduler = BackupScheduler(config, now=clock.now)

    with caplog.at_level(logging.ERROR, logger="backup.scheduler"):
        outcome = scheduler.run_once()

    assert outcome.result.success, outcome.result.error
    assert [b.backup_id for b in list_backups(tmp_path / "backups")] == [outcome.result.backup_id]
    assert any("cannot record the run's outcome" in r.getMessage() for r in caplog.records)


def test_a_crashing_run_is_reported_and_the_schedule_goes_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A bug inside run_once (simulated) reaches on_error and the log; the next day runs."""
    h = harness(tmp_path, at(SEOUL, 2026, 5, 1, 12))
    real_run_once = h.scheduler.run_once
    calls: list[int] = []

    def flaky() -> RunOutcome:
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("simulated bug")
        return real_run_once()

    monkeypatch.setattr(h.scheduler, "run_once", flaky)
    with caplog.at_level(logging.ERROR, logger="backup.scheduler"):
        run_until_runs(h, 2)

    assert h.errors[0] == "scheduled backup crashed; see the log"
    assert h.runs[0].result.success is False
    assert h.runs[1].result.success, h.runs[1].result.error
    assert any(r.getMessage() == "scheduled backup crashed" and r.exc_info for r in caplog.records)


def test_an_unexpected_error_inside_a_run_reaches_on_error_the_state_file_and_the_metrics(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bug below run_once (simulated: the backup itself raises) is not a crash of the
    schedule: the run is recorded as failed, with its error, where monitoring looks."""
    import backup.scheduler as scheduler_module

    metrics = tmp_path / "obs_backup.prom"
    h = harness(tmp_path, at(SEOUL, 2026, 5, 1, 12), metrics_file=metrics)

    def broken(*args: Any, **kwargs: Any) -> BackupResult:
        raise TypeError("simulated bug")

    monkeypatch.setattr(scheduler_module, "create_backup", broken)
    run_until_runs(h, 1)
    monkeypatch.undo()

    assert h.errors == ["backup failed: internal error: TypeError: simulated bug"]
    last = json.loads((tmp_path / "backups" / STATE_NAME).read_text())["scheduled_backup"]["last_run"]
    assert last["success"] is False and last["error"] == h.errors[0]
    assert metric_values(metrics.read_text())['obs_backup_last_run_success{prefix="scheduled_backup"}'] == 0.0
