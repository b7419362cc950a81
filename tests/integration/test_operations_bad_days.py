"""What a second review of the operations work tried, and each fix: a FIFO or another
database's log planted beside a database, a database that is mostly holes, SIGTERM in
the middle of a copy, two runs interleaving their hooks, a damaged state file, a hook
printing terminal escapes, and damage found after a scheduled run."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

import backup.cli
from backup import BackupConfig, create_backup
from backup.monitor import STATE_NAME
from backup.scheduler import BackupScheduler, SchedulerConfig
from backup.sqlite_snapshot import _stray_companion
from backup.storage.lock import LOCK_NAME
from support.backups import make_source
from support.cli import run_cli
from support.clock import FakeClock, at

from .conftest import SRC

SEOUL = ZoneInfo("Asia/Seoul")


def _database(path: Path, *, wal: bool = False, rows: int = 10) -> sqlite3.Connection:
    db = sqlite3.connect(path, isolation_level=None)
    if wal:
        db.execute("PRAGMA journal_mode=WAL")
    db.execute("CREATE TABLE t (x)")
    db.execute("BEGIN")
    db.executemany("INSERT INTO t VALUES (?)", ((number,) for number in range(rows)))
    db.execute("COMMIT")
    return db


@pytest.mark.timeout(60)
def test_a_fifo_planted_as_a_journal_does_not_hang_the_backup(tmp_path: Path) -> None:
    """SQLite's open of a hot-journal candidate blocks on a FIFO: the FIFO is refused
    first, and the database copied as it is, with a warning."""
    source = tmp_path / "source"
    source.mkdir()
    _database(source / "x.db").close()
    os.mkfifo(source / "x.db-journal")
    result = create_backup(BackupConfig(source, tmp_path / "backups"))
    assert result.success, result.error
    [warning] = result.warnings
    assert warning == (
        f"{source / 'x.db'}: SQLite database archived byte for byte, not as a snapshot: "
        "x.db-journal beside it is not a regular file"
    )
    kinds = {entry.path: entry.type for entry in result.manifest.files}  # type: ignore[union-attr]
    assert kinds == {"x.db": "file", "x.db-journal": "fifo"}


def test_a_log_of_another_database_is_found_out(tmp_path: Path) -> None:
    """SQLite opens the -wal by path: one that is not the file beside the database (a
    directory swapped for a link meanwhile) is named, and the copy discarded."""
    mine, theirs = tmp_path / "mine", tmp_path / "theirs"
    mine.mkdir()
    theirs.mkdir()
    (mine / "app.db-wal").write_bytes(b"")  # files of the same names, not the ones SQLite holds
    (mine / "app.db-shm").write_bytes(b"")
    before = set(os.listdir("/proc/self/fd"))
    victim = _database(theirs / "app.db", wal=True)  # holds theirs/app.db-wal open
    try:
        mine_fd = os.open(mine, os.O_RDONLY | os.O_DIRECTORY)
        theirs_fd = os.open(theirs, os.O_RDONLY | os.O_DIRECTORY)
        try:
            assert _stray_companion(mine_fd, "app.db", before) in ("-wal", "-shm")
            assert _stray_companion(theirs_fd, "app.db", before) is None
        finally:
            os.close(mine_fd)
            os.close(theirs_fd)
    finally:
        victim.close()


def test_a_database_that_is_mostly_holes_is_not_copied_through_sqlite(tmp_path: Path) -> None:
    """A copy would fill the holes: 8 KiB on disk could become a terabyte in $TMPDIR."""
    source = tmp_path / "source"
    source.mkdir()
    _database(source / "x.db").close()
    os.truncate(source / "x.db", 64 << 20)
    result = create_backup(BackupConfig(source, tmp_path / "backups"))
    assert result.success, result.error
    assert result.warnings == [
        f"{source / 'x.db'}: SQLite database archived byte for byte, not as a snapshot: "
        "it is mostly holes, which a copy would fill"
    ]
    [entry] = result.manifest.files  # type: ignore[union-attr]
    assert entry.snapshot is None and entry.size == 64 << 20 and (entry.data_size or 0) < 1 << 20


@pytest.mark.timeout(60)
def test_sigterm_during_a_snapshot_removes_the_private_copy_and_the_partial_archive(tmp_path: Path) -> None:
    source = tmp_path / "source"
    source.mkdir()
    _database(source / "x.db", rows=1000).close()
    holder = subprocess.Popen(  # holds an exclusive lock: the snapshot waits for it
        [
            sys.executable,
            "-c",
            "import sqlite3, sys, time\n"
            "db = sqlite3.connect(sys.argv[1], isolation_level=None)\n"
            "db.execute('BEGIN EXCLUSIVE'); print('locked', flush=True); time.sleep(60)\n",
            str(source / "x.db"),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    temp = tmp_path / "tmp"
    temp.mkdir()
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "locked\n"
        backups = tmp_path / "backups"
        create = subprocess.Popen(
            [sys.executable, "-m", "backup", "create", str(source), str(backups)],
            env={**os.environ, "PYTHONPATH": str(SRC), "TMPDIR": str(temp)},
            stderr=subprocess.PIPE,
            text=True,
        )
        deadline = time.monotonic() + 20
        while not list(temp.glob("obs-backup-sqlite-*")) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert list(temp.glob("obs-backup-sqlite-*")), "the snapshot never started"
        create.send_signal(signal.SIGTERM)
        _, err = create.communicate(timeout=30)
    finally:
        holder.kill()
        holder.wait()
    assert create.returncode == 143 and err == "obs-backup: terminated\n", err
    assert list(temp.iterdir()) == []
    assert [name for name in os.listdir(backups) if name != LOCK_NAME] == []


def test_the_lock_is_held_while_the_hooks_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Two runs must not interleave one's dump with the other's clean-up."""
    source = make_source(tmp_path / "source")
    seen = tmp_path / "seen"
    probe = f'flock --nonblock "$OBS_BACKUP_DIR/{LOCK_NAME}" true && echo free >> {seen} || echo held >> {seen}'
    config = tmp_path / "hooks.toml"
    config.write_text(f"before_backup = [{json.dumps(probe)}]\nafter_backup = [{json.dumps(probe)}]\n")
    code, _, err = run_cli(capsys, "--config", str(config), "create", str(source), str(tmp_path / "backups"))
    assert code == 0, err
    assert seen.read_text().split() == ["held", "held"]


@pytest.mark.parametrize(
    "damage",
    [
        '{"backup": []}',
        '{"backup": {"last_success": "x", "last_run": 7}}',
        '{"backup": {"last_success": {"archive_size": 1' + "0" * 400 + "}}}",
        "[1, 2]",
        "{not json",
    ],
    ids=["prefix-not-a-table", "records-not-tables", "huge-number", "a-list", "not-json"],
)
def test_a_damaged_state_file_never_fails_a_backup_and_is_repaired(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], damage: str
) -> None:
    source = make_source(tmp_path / "source")
    backups = tmp_path / "backups"
    backups.mkdir(mode=0o700)
    (backups / STATE_NAME).write_text(damage)
    metrics = tmp_path / "m.prom"
    argv = ("create", str(source), str(backups), "--metrics-file", str(metrics))
    code, _, err = run_cli(capsys, *argv)
    assert (code, err) == (0, "")
    state = json.loads((backups / STATE_NAME).read_text())
    assert state["backup"]["last_run"]["success"] is True
    assert 'obs_backup_last_run_success{prefix="backup"} 1.0' in metrics.read_text()


def test_terminal_escapes_from_a_hook_are_shown_not_obeyed(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    source = make_source(tmp_path / "source")
    config = tmp_path / "hooks.toml"
    config.write_text("before_backup = ['printf \"\\\\033[2Jgone\\\\n\"; exit 2']\n")
    code, _, err = run_cli(capsys, "--config", str(config), "create", str(source), str(tmp_path / "backups"))
    assert code == 1
    assert "\x1b" not in err
    assert err.rstrip().endswith("exited with status 2: \\x1b[2Jgone")


def test_damage_found_after_a_scheduled_run_reaches_on_error(tmp_path: Path) -> None:
    source = make_source(tmp_path / "source")
    clock = FakeClock(at(SEOUL, 2026, 5, 1, 3))
    config = SchedulerConfig(source, tmp_path / "backups", check_after=True)
    told: list[str] = []
    scheduler = BackupScheduler(config, on_error=told.append, now=clock.now)
    assert scheduler.run_once().result.success
    [archive] = (tmp_path / "backups").glob("*.tar.gz")
    os.truncate(archive, archive.stat().st_size - 100)
    clock.advance(timedelta(days=1))
    asyncio.run(scheduler._run_and_report())
    outcome = scheduler.runs[-1]
    assert outcome.result.success and outcome.damaged_backups == 1
    assert told == ["check after the run: 1 damaged backup (see the log)"]


def test_a_snapshot_that_would_not_fit_in_tmpdir_is_not_attempted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Free space is asked for first (here made to look nearly full): the database is
    copied as it is, and the warning says why."""
    source = tmp_path / "source"
    source.mkdir()
    _database(source / "x.db").close()
    real = os.statvfs

    def nearly_full(path: object) -> os.statvfs_result:
        found = real(path)  # type: ignore[arg-type]
        if "obs-backup-sqlite-" not in str(path):
            return found
        values = list(found)
        values[4] = 1  # f_bavail: one block
        return os.statvfs_result(values)

    monkeypatch.setattr(os, "statvfs", nearly_full)
    result = create_backup(BackupConfig(source, tmp_path / "backups"))
    assert result.success, result.error
    [warning] = result.warnings
    assert warning.startswith(f"{source / 'x.db'}: SQLite database archived byte for byte, not as a snapshot: ")
    assert "not enough free space for a " in warning


@pytest.mark.timeout(60)
def test_stopping_during_before_backup_begins_no_backup_and_reports_no_failure(tmp_path: Path) -> None:
    """A restart while a dump runs: the dump finishes, then nothing is begun, nothing is
    recorded as failed, and neither on_error hook nor callback hears of it."""
    source = make_source(tmp_path / "source")
    started, told = tmp_path / "started", tmp_path / "told"
    config = SchedulerConfig(
        source,
        tmp_path / "backups",
        before_backup=[f"touch {started}; sleep 1"],
        on_error=[f"echo hook >> {told}"],
    )
    errors: list[str] = []
    scheduler = BackupScheduler(config, on_error=errors.append, now=FakeClock(at(SEOUL, 2026, 5, 1, 3)).now)

    async def stop_during_the_hook() -> None:
        run = asyncio.create_task(scheduler._run_and_report())
        while not started.exists():
            await asyncio.sleep(0.02)
        await scheduler.stop()
        await run

    asyncio.run(stop_during_the_hook())
    assert scheduler.runs[-1].stopped
    assert errors == [] and not told.exists()
    assert sorted(os.listdir(tmp_path / "backups")) == [LOCK_NAME]  # no archive, no failed run recorded


def test_a_backup_whose_metrics_cannot_be_written_still_succeeds_with_a_warning(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = make_source(tmp_path / "source")
    metrics = tmp_path / "missing" / "m.prom"
    code, out, err = run_cli(capsys, "create", str(source), str(tmp_path / "backups"), "--metrics-file", str(metrics))
    assert code == 0 and out.startswith("created ")
    assert err.startswith("obs-backup: warning: cannot record the run (state file or metrics): ")
    assert err.count("\n") == 1 and not metrics.parent.exists()


def test_schedule_refuses_a_backup_directory_it_cannot_write(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """As root, permission bits do not stop a write: the probe's failure is injected
    (a read-only file system, as a mount would give)."""
    source = make_source(tmp_path / "source")
    backups = tmp_path / "backups"
    backups.mkdir()

    def read_only(*args: object, **kwargs: object) -> None:
        raise OSError(30, "Read-only file system")

    monkeypatch.setattr(backup.cli.tempfile, "NamedTemporaryFile", read_only)
    code, out, err = run_cli(capsys, "schedule", str(source), str(backups))
    assert (code, out) == (2, "")
    assert err == f"obs-backup: error: {backups}: backup directory cannot be written: Read-only file system\n"
