"""The scheduler's asyncio loop, driven by a fake clock: bounded sleeps, clock steps
forward and back, catch-up at start, failures and crashes that leave the schedule
running, callbacks that raise, and ``stop()`` during a backup.

Nothing here waits in real time: ``support.clock.FakeClock.sleep`` advances the clock
and yields to the event loop once. The backups are real (a tiny source directory, a
real backup directory), run in the scheduler's worker thread as in production.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

import backup.create
import backup.scheduler
from backup.config import BackupResult
from backup.listing import list_backups
from backup.scheduler import RunOutcome
from support.backups import backup_instant, make_backups, make_source, partials
from support.clock import REAL_TIMEOUT, at, run_until_runs, scheduler_on

SEOUL = ZoneInfo("Asia/Seoul")
SCHEDULED = "scheduled_backup"  # the scheduler's default prefix


# -- bounded sleeps, clock steps -----------------------------------------------------------


def test_every_sleep_is_bounded_by_max_sleep(tmp_path: Path) -> None:
    h = scheduler_on(tmp_path, at(SEOUL, 2026, 5, 1, 0, 0), max_sleep=60.0)

    run_until_runs(h, 2)

    assert h.instants() == [at(SEOUL, 2026, 5, 1, 3), at(SEOUL, 2026, 5, 2, 3)]
    assert h.clock.sleeps, "the scheduler never slept"
    assert max(h.clock.sleeps) <= 60.0
    # 27 hours of waiting in slices of at most a minute.
    assert len(h.clock.sleeps) >= 27 * 60


@pytest.mark.parametrize("jump", [timedelta(hours=2), timedelta(hours=20)], ids=["2h", "20h-suspend"])
def test_clock_jumping_forward_past_the_run_runs_once(tmp_path: Path, jump: timedelta) -> None:
    """At 02:00 the clock steps past 03:00: one run right away, then the normal schedule."""
    h = scheduler_on(tmp_path, at(SEOUL, 2026, 5, 1, 0, 0), max_sleep=600.0)
    h.clock.jumps.append((at(SEOUL, 2026, 5, 1, 2, 0), jump))

    run_until_runs(h, 2)

    landed = at(SEOUL, 2026, 5, 1, 2, 0) + jump
    assert h.instants() == [landed, at(SEOUL, 2026, 5, 2, 3)]


def test_clock_jumping_backward_does_not_run_early(tmp_path: Path) -> None:
    """At 02:30 the clock steps back to 01:30: the run still waits for 03:00 on the clock."""
    h = scheduler_on(tmp_path, at(SEOUL, 2026, 5, 1, 0, 0), max_sleep=600.0)
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
    h = scheduler_on(tmp_path, at(SEOUL, 2026, 5, 1, 0, 0), max_sleep=600.0)
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

    assert [backup_instant(run.result.backup_id) for run in h.runs] == [at(SEOUL, 2026, 5, 1, 3), second_run]


# -- catch-up ------------------------------------------------------------------------------


def test_catch_up_runs_once_at_start_when_the_last_run_was_missed(tmp_path: Path) -> None:
    start = at(SEOUL, 2026, 5, 10, 12, 0)
    make_backups(tmp_path, SCHEDULED, 1, start - timedelta(days=2))
    h = scheduler_on(tmp_path, start, catch_up=True)

    run_until_runs(h, 3)

    assert h.instants() == [start, at(SEOUL, 2026, 5, 11, 3), at(SEOUL, 2026, 5, 12, 3)]
    assert all(run.result.success for run in h.runs)


def test_catch_up_runs_at_start_when_there_is_no_backup_yet(tmp_path: Path) -> None:
    start = at(SEOUL, 2026, 5, 10, 12, 0)
    h = scheduler_on(tmp_path, start, catch_up=True)

    run_until_runs(h, 2)

    assert h.instants() == [start, at(SEOUL, 2026, 5, 11, 3)]


def test_no_catch_up_when_the_last_backup_is_after_the_most_recent_scheduled_time(tmp_path: Path) -> None:
    start = at(SEOUL, 2026, 5, 10, 12, 0)
    make_backups(tmp_path, SCHEDULED, 1, at(SEOUL, 2026, 5, 10, 3, 0, 5))
    h = scheduler_on(tmp_path, start, catch_up=True)

    run_until_runs(h, 1)

    assert h.instants() == [at(SEOUL, 2026, 5, 11, 3)]


def test_another_prefix_does_not_count_as_the_last_backup(tmp_path: Path) -> None:
    start = at(SEOUL, 2026, 5, 10, 12, 0)
    make_backups(tmp_path, "manual", 1, at(SEOUL, 2026, 5, 10, 11, 0))
    h = scheduler_on(tmp_path, start, catch_up=True)

    run_until_runs(h, 1)

    assert h.instants() == [start]


def test_a_backup_dated_in_the_future_does_not_suppress_the_catch_up(tmp_path: Path) -> None:
    """A backup made while the clock ran a year ahead is not "the last backup": the
    missed run is still caught up (it used to be suppressed until the clock got there)."""
    start = at(SEOUL, 2026, 5, 10, 12, 0)
    make_backups(tmp_path, SCHEDULED, 1, start - timedelta(days=2))
    make_backups(tmp_path, SCHEDULED, 1, start + timedelta(days=365))
    h = scheduler_on(tmp_path, start, catch_up=True)

    run_until_runs(h, 2)

    assert h.instants() == [start, at(SEOUL, 2026, 5, 11, 3)]


def test_catch_up_with_only_a_backup_dated_in_the_future(tmp_path: Path) -> None:
    start = at(SEOUL, 2026, 5, 10, 12, 0)
    make_backups(tmp_path, SCHEDULED, 1, start + timedelta(minutes=5))
    h = scheduler_on(tmp_path, start, catch_up=True)

    run_until_runs(h, 1)

    assert h.instants() == [start]


def test_catch_up_disabled(tmp_path: Path) -> None:
    start = at(SEOUL, 2026, 5, 10, 12, 0)
    make_backups(tmp_path, SCHEDULED, 1, start - timedelta(days=2))
    h = scheduler_on(tmp_path, start, catch_up=False)

    run_until_runs(h, 1)

    assert h.instants() == [at(SEOUL, 2026, 5, 11, 3)]


# -- failures, crashes and callbacks -------------------------------------------------------


def test_failed_backup_reports_and_the_schedule_carries_on(tmp_path: Path) -> None:
    source = tmp_path / "missing-source"

    def complete(result: BackupResult) -> None:
        if not result.success:
            make_source(source)  # the next day the source is back

    h = scheduler_on(tmp_path, at(SEOUL, 2026, 5, 1), source_dir=source, on_complete=complete)

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
    h = scheduler_on(tmp_path, at(SEOUL, 2026, 5, 1), source_dir=source, **callbacks)  # type: ignore[arg-type]
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


def test_a_crashing_run_is_reported_and_the_schedule_goes_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A bug inside run_once (simulated) reaches on_error and the log; the next day runs."""
    h = scheduler_on(tmp_path, at(SEOUL, 2026, 5, 1, 12))
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


# -- hooks ---------------------------------------------------------------------------------


def test_every_scheduled_run_goes_through_the_hooks(tmp_path: Path) -> None:
    """Three days: the dump fails on the second, so that run fails (the on_error
    callback is told why) and the schedule carries on. (The on_error hook is covered
    by the run_once tests: here ``on_error=`` is the callback.)"""
    log = tmp_path / "hooks.log"
    flag = tmp_path / "database-down"

    def complete(result: BackupResult) -> None:
        if len(h.runs) == 1:
            flag.touch()  # the database is down for the next run
        else:
            flag.unlink(missing_ok=True)

    h = scheduler_on(
        tmp_path,
        at(SEOUL, 2026, 5, 1),
        on_complete=complete,
        before_backup=[f"test ! -e '{flag}' || {{ echo 'pg_dump: error: connection refused' >&2; exit 1; }}"],
        after_backup=[f"echo \"after $OBS_BACKUP_ID\" >> '{log}'"],
    )

    run_until_runs(h, 3)

    assert h.instants() == [at(SEOUL, 2026, 5, day, 3) for day in (1, 2, 3)]
    assert [run.result.success for run in h.runs] == [True, False, True]
    failed = h.runs[1].result
    assert failed.error is not None and failed.error.endswith(
        "exited with status 1: pg_dump: error: connection refused"
    )
    assert h.errors == [failed.error]
    assert log.read_text().splitlines() == [
        f"after {h.runs[0].result.backup_id}",
        f"after {h.runs[2].result.backup_id}",
    ]
    made = [h.runs[0].result.backup_id, h.runs[2].result.backup_id]
    assert [b.backup_id for b in list_backups(tmp_path / "backups")] == made


# -- stop() while a backup is running ------------------------------------------------------


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

    h = scheduler_on(tmp_path, at(SEOUL, 2026, 5, 10, 12), catch_up=True)  # no backup yet: runs at once
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
