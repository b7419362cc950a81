"""Clocks for tests: a fixed ``now=``, and a fake clock that drives the scheduler.

The library takes its clock as ``now=`` (and the scheduler its ``sleep=``), so no test
waits in real time or freezes time globally. :func:`fixed_now` answers one instant
(:func:`at` and :func:`utc` spell instants briefly).
:class:`FakeClock` is a settable UTC clock whose ``sleep`` advances it instead of
waiting; :func:`scheduler_on` builds a ``BackupScheduler`` on one (recording every run
with the instant it finished) and :func:`run_until_runs` drives the scheduler's real
loop until enough runs have happened, so a simulated month takes well under a second.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, tzinfo
from pathlib import Path
from typing import Any

import pytest

from backup.config import BackupResult, SchedulerConfig
from backup.scheduler import BackupScheduler

__all__ = [
    "DEFAULT_NOW",
    "REAL_TIMEOUT",
    "FakeClock",
    "Run",
    "ScheduledRuns",
    "at",
    "drive",
    "fixed_now",
    "run_until_runs",
    "scheduler_on",
    "utc",
]

# A whole-second instant, so times in names and manifests compare exactly.
DEFAULT_NOW = datetime(2024, 5, 6, 7, 8, 9, tzinfo=UTC)

# Generous only for a failing test; a passing one never waits on it.
REAL_TIMEOUT = 15.0


def at(zone: tzinfo, year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0) -> datetime:
    """Return the instant a wall clock in ``zone`` shows that date and time."""
    return datetime(year, month, day, hour, minute, second, tzinfo=zone)


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0) -> datetime:
    """Return that UTC instant."""
    return datetime(year, month, day, hour, minute, second, tzinfo=UTC)


def fixed_now(moment: datetime | None = None) -> Callable[[], datetime]:
    """Given an aware instant (default :data:`DEFAULT_NOW`), return a ``now=`` that always answers it."""
    answer = DEFAULT_NOW if moment is None else moment
    return lambda: answer


class FakeClock:
    """A settable UTC clock whose ``sleep`` advances it instead of waiting.

    ``jumps`` are (when the clock first reads at or after ``at``, add ``delta``) pairs:
    a clock step (NTP, a suspended laptop) happening during a sleep. ``until`` is
    checked after every sleep (and after every run, by :func:`scheduler_on`'s
    callback); once it holds, ``reached`` is set. More than ``max_sleeps`` sleeps is a
    runaway loop: ``reached`` is set so the driver stops and reports it.
    """

    def __init__(self, start: datetime, *, max_sleeps: int = 100_000) -> None:
        assert start.tzinfo is not None, "the fake clock needs an aware start"
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
class ScheduledRuns:
    """A scheduler on a fake clock, and what its callbacks have seen so far."""

    clock: FakeClock
    scheduler: BackupScheduler
    runs: list[Run] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def instants(self) -> list[datetime]:
        return [run.instant for run in self.runs]


def scheduler_on(
    tmp_path: Path,
    start: datetime,
    *,
    on_complete: Callable[[BackupResult], None] | None = None,
    on_error: Callable[[str], None] | None = None,
    max_sleep: float = 3600.0,
    **overrides: Any,
) -> ScheduledRuns:
    """Given a directory and a start instant, return a scheduler on a fake clock starting
    then, over a tiny real source (``tmp_path/source``, made unless ``source_dir`` is
    given) backing up into ``tmp_path/backups``, with catch-up off unless ``overrides``
    say otherwise. Every run is recorded with its instant; ``on_complete`` and
    ``on_error`` are called after the recording callbacks."""
    clock = FakeClock(start)
    settings: dict[str, Any] = {
        "source_dir": tmp_path / "source",
        "backup_dir": tmp_path / "backups",
        "catch_up": False,
    }
    settings.update(overrides)
    if "source_dir" not in overrides:
        # Imported here: support.backups imports this module (for fixed_now).
        from support.backups import make_source

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
    return ScheduledRuns(clock, scheduler, runs, errors)


async def drive(scheduled: ScheduledRuns, until: Callable[[], bool]) -> None:
    """start(); let the fake clock run until ``until()`` holds after a sleep or a run; stop().

    Fail the test if the loop ends on its own (re-raising what ended it), if the state
    is not reached within :data:`REAL_TIMEOUT` real seconds, or if the clock ran away.
    """
    clock, scheduler = scheduled.clock, scheduled.scheduler
    clock.until = until
    await scheduler.start()
    reached = asyncio.ensure_future(clock.reached.wait())
    ended = asyncio.ensure_future(scheduler.wait())
    done, _ = await asyncio.wait({reached, ended}, timeout=REAL_TIMEOUT, return_when=asyncio.FIRST_COMPLETED)
    reached.cancel()
    if ended in done:
        ended.result()  # re-raises whatever killed the loop
        pytest.fail("the scheduler loop ended on its own")
    assert done, "the scheduler did not reach the expected state in time"
    assert not clock.runaway, f"no progress after {clock.max_sleeps} sleeps; runs so far: {scheduled.instants()}"
    await asyncio.wait_for(scheduler.stop(), REAL_TIMEOUT)
    ended.cancel()


def run_until_runs(scheduled: ScheduledRuns, count: int) -> None:
    """Drive the scheduler's loop until ``count`` runs have completed."""
    asyncio.run(drive(scheduled, lambda: len(scheduled.runs) >= count))
