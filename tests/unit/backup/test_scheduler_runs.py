"""One scheduled run (``run_once``): the backup, retention after it, the lock, the
state record and metrics it leaves, the backup id in its log records, and the
configuration a scheduler refuses at construction.

The clock is a ``support.clock.FakeClock``, advanced by hand between runs.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import stat
from datetime import UTC, datetime, time, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from backup.catalog import parse_backup_id
from backup.config import BackupResult
from backup.errors import ConfigError
from backup.listing import list_backups
from backup.monitor import STATE_NAME, load_state
from backup.retention import RetentionPolicy
from backup.scheduler import BackupScheduler, SchedulerConfig
from backup.storage.lock import LOCK_NAME, backup_dir_lock
from shared.time_helpers import UnknownTimeZoneError
from support.backups import make_backups, make_source, partials
from support.clock import FakeClock, at, run_until_runs, scheduler_on

SEOUL = ZoneInfo("Asia/Seoul")
SCHEDULED = "scheduled_backup"  # the scheduler's default prefix


def metric_values(text: str) -> dict[str, float]:
    values = {}
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        name, value = line.rsplit(" ", 1)
        values[name] = float(value)
    return values


# -- retention after each run --------------------------------------------------------------


def test_run_once_applies_retention_only_to_its_prefix(tmp_path: Path) -> None:
    clock = FakeClock(at(SEOUL, 2026, 5, 1, 3))
    make_source(tmp_path / "source")
    others = make_backups(tmp_path, "manual", 2, at(SEOUL, 2026, 4, 1, 9))  # April 1 and 2
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
    assert manual == set(others)
    for backup_id in others:
        assert (config.backup_dir / f"{backup_id}.tar.gz").is_file()
        assert (config.backup_dir / f"{backup_id}.manifest.json").is_file()


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


# -- state and metrics ---------------------------------------------------------------------


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
        f"obs_backup_last_run_warnings{label}": 0.0,
        f"obs_backup_last_changed_files{label}": 0.0,
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
    real = make_backups(tmp_path, SCHEDULED, 5, first)  # one a day
    [ahead] = make_backups(tmp_path, SCHEDULED, 1, first + timedelta(days=365))
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


def test_an_unexpected_error_inside_a_run_reaches_on_error_the_state_file_and_the_metrics(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bug below run_once (simulated: the backup itself raises) is not a crash of the
    schedule: the run is recorded as failed, with its error, where monitoring looks."""
    import backup.scheduler as scheduler_module

    metrics = tmp_path / "obs_backup.prom"
    h = scheduler_on(tmp_path, at(SEOUL, 2026, 5, 1, 12), metrics_file=metrics)

    def broken(*args: Any, **kwargs: Any) -> BackupResult:
        raise TypeError("simulated bug")

    monkeypatch.setattr(scheduler_module, "create_backup", broken)
    run_until_runs(h, 1)
    monkeypatch.undo()

    assert h.errors == ["backup failed: internal error: TypeError: simulated bug"]
    last = json.loads((tmp_path / "backups" / STATE_NAME).read_text())["scheduled_backup"]["last_run"]
    assert last["success"] is False and last["error"] == h.errors[0]
    assert metric_values(metrics.read_text())['obs_backup_last_run_success{prefix="scheduled_backup"}'] == 0.0


# -- hooks ---------------------------------------------------------------------------------


@pytest.mark.skipif(shutil.which("flock") is None, reason="needs flock(1) to probe the lock from a hook")
def test_run_once_runs_the_hooks_around_the_backup_and_retention(tmp_path: Path) -> None:
    """before_backup's dump is in the backup; after_backup runs once retention is done,
    still holding the lock (no other run may clean up between), and is told the
    backup's id and archive."""
    source = make_source(tmp_path / "source")
    [old] = make_backups(tmp_path, SCHEDULED, 1, at(SEOUL, 2026, 4, 1, 3))
    seen = tmp_path / "after.txt"
    clock = FakeClock(at(SEOUL, 2026, 5, 1, 3))
    config = SchedulerConfig(
        source,
        tmp_path / "backups",
        before_backup=["printf 'dump\\n' > db.sql"],
        after_backup=[
            f'printf \'%s\\n\' "$OBS_BACKUP_ID" "$OBS_BACKUP_ARCHIVE" "$OBS_BACKUP_STATUS" > \'{seen}\'',
            f"test -e \"$OBS_BACKUP_DIR/{old}.tar.gz\" && echo kept >> '{seen}' || echo removed >> '{seen}'",
            f"flock --nonblock \"$OBS_BACKUP_DIR/{LOCK_NAME}\" true && echo unlocked >> '{seen}' || echo locked >> '{seen}'",
        ],
    )
    scheduler = BackupScheduler(config, now=clock.now)

    outcome = scheduler.run_once()

    result = outcome.result
    assert result.success, result.error
    assert result.warnings == []
    assert result.manifest is not None
    assert "db.sql" in {entry.path for entry in result.manifest.files}
    assert outcome.prune is not None and outcome.prune.removed == [old]
    assert seen.read_text().splitlines() == [result.backup_id, result.archive, "success", "removed", "locked"]


def test_a_failing_before_backup_fails_the_run_where_monitoring_looks(tmp_path: Path) -> None:
    metrics = tmp_path / "obs_backup.prom"
    seen = tmp_path / "on_error.txt"
    clock = FakeClock(at(SEOUL, 2026, 5, 1, 3))
    make_source(tmp_path / "source")
    config = SchedulerConfig(
        tmp_path / "source",
        tmp_path / "backups",
        metrics_file=metrics,
        before_backup=["echo 'pg_dump: error: connection refused' >&2; exit 1"],
        on_error=[f"printf '%s' \"$OBS_BACKUP_ERROR\" > '{seen}'"],
    )
    scheduler = BackupScheduler(config, now=clock.now)

    outcome = scheduler.run_once()

    error = (
        "before_backup hook `echo 'pg_dump: error: connection refused' >&2; exit 1` "
        "exited with status 1: pg_dump: error: connection refused"
    )
    assert outcome.result.success is False
    assert outcome.result.error == error
    assert outcome.prune is None
    assert seen.read_text() == error
    assert list_backups(tmp_path / "backups") == []
    last = load_state(tmp_path / "backups")[SCHEDULED]["last_run"]
    assert last["success"] is False and last["error"] == error
    assert metric_values(metrics.read_text())['obs_backup_last_run_success{prefix="scheduled_backup"}'] == 0.0


def test_a_failing_after_backup_leaves_a_successful_run_with_a_warning(tmp_path: Path) -> None:
    clock = FakeClock(at(SEOUL, 2026, 5, 1, 3))
    make_source(tmp_path / "source")
    config = SchedulerConfig(
        tmp_path / "source", tmp_path / "backups", after_backup=["exit 7"], on_error=["touch on-error-ran"]
    )
    scheduler = BackupScheduler(config, now=clock.now)

    outcome = scheduler.run_once()

    assert outcome.result.success, outcome.result.error
    assert outcome.result.warnings == ["after_backup hook `exit 7` exited with status 7"]
    assert [b.backup_id for b in list_backups(tmp_path / "backups")] == [outcome.result.backup_id]
    entry = load_state(tmp_path / "backups")[SCHEDULED]
    assert entry["last_success"]["backup_id"] == outcome.result.backup_id
    assert entry["last_run"]["warnings"] == 1
    assert not (tmp_path / "source" / "on-error-ran").exists()


def test_on_error_runs_when_the_directory_is_locked(tmp_path: Path) -> None:
    source = make_source(tmp_path / "source")
    backup_dir = tmp_path / "backups"
    seen = tmp_path / "on_error.txt"
    clock = FakeClock(at(SEOUL, 2026, 5, 1, 3))
    config = SchedulerConfig(
        source, backup_dir, lock_timeout=0, on_error=[f"printf '%s' \"$OBS_BACKUP_ERROR\" > '{seen}'"]
    )
    scheduler = BackupScheduler(config, now=clock.now)

    with backup_dir_lock(backup_dir):
        outcome = scheduler.run_once()

    assert not outcome.result.success
    assert seen.read_text() == outcome.result.error


def test_bad_hook_settings_are_refused_at_construction(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="hook_timeout"):
        BackupScheduler(SchedulerConfig(tmp_path, tmp_path / "b", hook_timeout=0))


# -- locking -------------------------------------------------------------------------------


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


# -- logging carries the backup id ---------------------------------------------------------


def test_log_records_carry_the_backup_id(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    make_source(tmp_path / "source")
    [old] = make_backups(tmp_path, SCHEDULED, 1, at(SEOUL, 2026, 4, 1, 3))
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
    assert old in removed[0].getMessage()
    for record in complete + removed:
        assert getattr(record, "backup_id", None) == backup_id
        assert backup_id in record.getMessage()


# -- configuration -------------------------------------------------------------------------


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
