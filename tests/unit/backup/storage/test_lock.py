"""The backup directory lock, in one process: flock conflicts between two open files
of the same process, so no second process is needed here, and the waiting is done
on an injected clock (never in real time)."""

from __future__ import annotations

import json
import os
from contextlib import ExitStack
from pathlib import Path

import pytest

from backup.errors import LockError, StorageError
from backup.storage.lock import LOCK_NAME, backup_dir_lock


class FakeTime:
    """``monotonic`` and ``sleep`` for the lock: sleeping advances the clock."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.slept: list[float] = []
        self.on_sleep: list[tuple[float, ExitStack]] = []  # (after this much sleep, release)

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds
        for after, holder in list(self.on_sleep):
            if sum(self.slept) >= after:
                self.on_sleep.remove((after, holder))
                holder.close()


def test_second_holder_without_waiting_fails_naming_the_pid(tmp_path: Path) -> None:
    fake = FakeTime()
    waiter = backup_dir_lock(tmp_path, 0, sleep=fake.sleep, monotonic=fake.monotonic)
    with backup_dir_lock(tmp_path, 0), pytest.raises(LockError) as caught, waiter:
        pytest.fail("acquired a held lock")
    assert caught.value.holder_pid == os.getpid()
    message = str(caught.value)
    assert f"pid {os.getpid()}" in message
    assert str(tmp_path) in message and "without waiting" in message
    assert "\n" not in message
    assert fake.slept == []


def test_waits_exactly_the_timeout_then_fails(tmp_path: Path) -> None:
    fake = FakeTime()
    with backup_dir_lock(tmp_path), pytest.raises(LockError, match=r"after waiting 2\.5s"):
        with backup_dir_lock(tmp_path, 2.5, sleep=fake.sleep, monotonic=fake.monotonic):
            pytest.fail("acquired a held lock")
    waited = sum(fake.slept)
    assert 2.5 <= waited < 2.5 + max(fake.slept) + 1e-9
    assert all(0 < s <= 0.5 for s in fake.slept)  # polls, not one long sleep


def test_acquires_when_released_within_the_timeout(tmp_path: Path) -> None:
    fake = FakeTime()
    holder = ExitStack()
    holder.enter_context(backup_dir_lock(tmp_path))
    fake.on_sleep.append((1.0, holder))  # the holder lets go after a second

    with backup_dir_lock(tmp_path, 30, sleep=fake.sleep, monotonic=fake.monotonic):
        waited = sum(fake.slept)
    assert 1.0 <= waited < 1.5


def test_reacquire_after_release_and_the_file_names_the_holder(tmp_path: Path) -> None:
    with backup_dir_lock(tmp_path):
        record = json.loads((tmp_path / LOCK_NAME).read_text())
        assert record["pid"] == os.getpid()
        assert "since" in record
    with backup_dir_lock(tmp_path, 0):
        pass
    with backup_dir_lock(tmp_path, 0):
        pass
    assert (tmp_path / LOCK_NAME).exists()  # the file stays; only the flock is released


def test_creates_a_missing_directory(tmp_path: Path) -> None:
    target = tmp_path / "new" / "backups"
    with backup_dir_lock(target):
        assert (target / LOCK_NAME).is_file()


def test_unreadable_holder_record_still_fails_cleanly(tmp_path: Path) -> None:
    with backup_dir_lock(tmp_path):
        (tmp_path / LOCK_NAME).write_text("garbage")
        with pytest.raises(LockError, match="another process") as caught, backup_dir_lock(tmp_path, 0):
            pass
    assert caught.value.holder_pid is None


def test_a_file_in_the_way_is_a_storage_error(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("not a directory")
    with pytest.raises(StorageError, match="lock"), backup_dir_lock(tmp_path / "file"):
        pass
