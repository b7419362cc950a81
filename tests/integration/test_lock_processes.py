"""The backup directory lock between two real processes, taken through the storage
interface (``LocalStorage.lock``) and directly (``backup_dir_lock``), and as the CLI
reports it."""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from backup.cli import main
from backup.errors import LockError
from backup.storage import LocalStorage
from backup.storage.lock import backup_dir_lock

from .conftest import SRC

HOLD = """
import sys, time
from backup.storage import LocalStorage
with LocalStorage(sys.argv[1]).lock(0):
    print("locked", flush=True)
    time.sleep(120)
"""


@pytest.fixture
def holder(tmp_path: Path) -> Iterator[subprocess.Popen[str]]:
    """A child process holding the lock on ``tmp_path / "backups"`` until killed."""
    backup_dir = tmp_path / "backups"
    backup_dir.mkdir()
    child = _spawn(backup_dir)
    try:
        assert child.stdout is not None
        ready, _, _ = select.select([child.stdout], [], [], 10)
        assert ready, "the child did not take the lock"
        assert child.stdout.readline().strip() == "locked"
        yield child
    finally:
        if child.poll() is None:
            child.kill()
        child.wait(10)
        for stream in (child.stdout, child.stderr):
            if stream is not None:
                stream.close()


def _spawn(backup_dir: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", HOLD, str(backup_dir)],
        env=dict(os.environ, PYTHONPATH=str(SRC)),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_lock_held_by_another_process_then_freed_by_its_death(tmp_path: Path, holder: subprocess.Popen[str]) -> None:
    backup_dir = tmp_path / "backups"

    with pytest.raises(LockError) as caught, backup_dir_lock(backup_dir, 0):
        pytest.fail("acquired a lock another process holds")
    assert caught.value.holder_pid == holder.pid
    assert f"pid {holder.pid}" in str(caught.value)
    with pytest.raises(LockError) as through_storage, LocalStorage(backup_dir).lock(0):
        pytest.fail("acquired a lock another process holds")
    assert through_storage.value.holder_pid == holder.pid

    os.kill(holder.pid, signal.SIGKILL)
    holder.wait(10)
    started = time.monotonic()
    with backup_dir_lock(backup_dir, 0):  # no waiting: a dead holder's lock is gone
        pass
    with LocalStorage(backup_dir).lock(0):
        pass
    assert time.monotonic() - started < 1.0


def test_cli_prune_reports_the_holder(
    tmp_path: Path, holder: subprocess.Popen[str], capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["prune", str(tmp_path / "backups"), "--keep-last", "1", "--lock-timeout", "0"])

    captured = capsys.readouterr()
    assert code == 1
    assert captured.err.count("\n") == 1
    assert captured.err.startswith("obs-backup: error: ")
    assert f"pid {holder.pid}" in captured.err
    assert holder.poll() is None  # it was the child's lock, still held
