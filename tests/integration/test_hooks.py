"""Hooks with real processes and real backups: a command past its timeout is stopped
with its whole process group, one that ignores SIGTERM is killed, a background
process left holding the output does not hold up the backup, and a dump made by
``before_backup`` ends up in the archive (or, if it fails, nothing is written).

Every process a test starts is stopped by the test (by its pid) if the code under test
left it running.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from backup import BackupConfig, BackupResult, create_backup, list_backups, load_manifest
from backup.hooks import Hooks, run_with_hooks
from support.backups import make_source
from support.clock import fixed_now

# The time a stopped command may take on a loaded machine: the timeout, SIGTERM's
# grace, and slack; far less than the 30 s the commands would otherwise run.
BOUND = 10.0


def running(pid: int) -> bool:
    """Whether ``pid`` is a live process (a zombie waiting to be reaped is not)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as handle:
            state = handle.read().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state not in ("Z", "X")


def stopped(pid: int, within: float = 2.0) -> bool:
    """Whether ``pid`` is gone within ``within`` seconds (a killed process closes its
    files, and so our pipe, a moment before it is gone)."""
    deadline = time.monotonic() + within
    while running(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


@pytest.fixture
def leftovers() -> Iterator[list[int]]:
    """Pids of processes a test's hooks started; any still running at the end is killed."""
    pids: list[int] = []
    yield pids
    for pid in pids:
        if running(pid):
            os.kill(pid, signal.SIGKILL)


def never_called() -> BackupResult:
    raise AssertionError("the backup ran after a failing before_backup hook")


pytestmark = pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads process states from /proc")


def test_a_command_past_its_timeout_is_stopped_with_its_process_group(tmp_path: Path, leftovers: list[int]) -> None:
    child_pid = tmp_path / "child.pid"
    shell_pid = tmp_path / "shell.pid"
    seen = tmp_path / "on_error.txt"
    hooks = Hooks(
        before_backup=(f"echo $$ > '{shell_pid}'; sleep 30 & echo $! > '{child_pid}'; echo 'waiting'; wait",),
        on_error=(f"printf '%s' \"$OBS_BACKUP_ERROR\" > '{seen}'",),
        timeout=1,
    )

    started = time.monotonic()
    result = run_with_hooks(hooks, never_called, source_dir=tmp_path, backup_dir=tmp_path / "backups")
    elapsed = time.monotonic() - started

    leftovers.extend(int(path.read_text()) for path in (shell_pid, child_pid))
    assert elapsed < BOUND
    assert result.success is False
    assert result.error is not None
    assert result.error.endswith("timed out after 1 s: waiting")
    assert seen.read_text() == result.error
    assert all(stopped(pid) for pid in leftovers), "the command's process group outlived its timeout"


def test_a_command_that_ignores_sigterm_is_killed(tmp_path: Path, leftovers: list[int]) -> None:
    pid_file = tmp_path / "sleep.pid"
    hooks = Hooks(before_backup=(f"trap '' TERM; sleep 30 & echo $! > '{pid_file}'; wait",), timeout=1)

    started = time.monotonic()
    result = run_with_hooks(hooks, never_called, source_dir=tmp_path, backup_dir=tmp_path / "backups")
    elapsed = time.monotonic() - started

    leftovers.append(int(pid_file.read_text()))
    assert elapsed < BOUND
    assert result.error is not None and "timed out after 1 s" in result.error
    assert stopped(leftovers[0])


def test_a_background_process_holding_the_output_does_not_hold_up_the_backup(
    tmp_path: Path, leftovers: list[int]
) -> None:
    pid_file = tmp_path / "daemon.pid"
    calls: list[float] = []
    hooks = Hooks(before_backup=(f"sleep 30 & echo $! > '{pid_file}'; echo started",), timeout=600)

    def backup() -> BackupResult:
        calls.append(time.monotonic())
        return BackupResult(success=True, backup_id="b")

    started = time.monotonic()
    result = run_with_hooks(hooks, backup, source_dir=tmp_path, backup_dir=tmp_path / "backups")

    leftovers.append(int(pid_file.read_text()))
    assert result.success, result.error
    assert len(calls) == 1 and calls[0] - started < BOUND
    # The command exited successfully; what it left running is its own business.
    assert running(leftovers[0])


def test_a_dump_made_before_the_backup_is_in_it_and_after_backup_sees_the_archive(tmp_path: Path) -> None:
    source = make_source(tmp_path / "source")
    backup_dir = tmp_path / "backups"
    seen = tmp_path / "after.txt"
    config = BackupConfig(source, backup_dir, prefix="app")
    hooks = Hooks(
        # Relative to the source directory: the dump is backed up.
        before_backup=("printf 'CREATE TABLE t (x int);\\n' > app.sql",),
        after_backup=(f"ls \"$OBS_BACKUP_ARCHIVE\" > '{seen}' && rm app.sql",),
    )

    result = run_with_hooks(
        hooks, lambda: create_backup(config, now=fixed_now()), source_dir=source, backup_dir=backup_dir
    )

    assert result.success, result.error
    assert result.warnings == []
    assert result.archive is not None and seen.read_text() == f"{result.archive}\n"
    assert not (source / "app.sql").exists()
    assert result.manifest_path is not None
    manifest = load_manifest(result.manifest_path)
    assert "app.sql" in {entry.path for entry in manifest.files}


def test_a_failing_dump_writes_nothing_to_the_backup_directory(tmp_path: Path) -> None:
    source = make_source(tmp_path / "source")
    backup_dir = tmp_path / "backups"
    config = BackupConfig(source, backup_dir)
    hooks = Hooks(before_backup=("echo 'mysqldump: Got error: 2002: Can'\\''t connect' >&2; exit 2",))

    result = run_with_hooks(hooks, lambda: create_backup(config), source_dir=source, backup_dir=backup_dir)

    assert result.success is False
    assert result.error is not None and result.error.endswith(
        "exited with status 2: mysqldump: Got error: 2002: Can't connect"
    )
    assert not backup_dir.exists()
    assert list_backups(tmp_path) == []


def test_an_interruption_while_a_command_runs_kills_its_process_group(
    tmp_path: Path, leftovers: list[int], monkeypatch: pytest.MonkeyPatch
) -> None:
    import backup.hooks

    pid_file = tmp_path / "sleep.pid"

    def interrupted(self: object, chunk: bytes) -> None:
        raise KeyboardInterrupt  # as if Ctrl-C arrived while the command ran

    monkeypatch.setattr(backup.hooks._OutputLog, "feed", interrupted)
    hooks = Hooks(before_backup=(f"sleep 30 & echo $! > '{pid_file}'; echo started; wait",), timeout=600)

    started = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        run_with_hooks(hooks, never_called, source_dir=tmp_path, backup_dir=tmp_path / "backups")

    leftovers.append(int(pid_file.read_text()))
    assert time.monotonic() - started < BOUND
    assert stopped(leftovers[0])
