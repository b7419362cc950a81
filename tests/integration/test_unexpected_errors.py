"""No exception of any kind escapes create_backup, restore_backup or verify_backup: an
unexpected error (a bug, an exotic OS error) becomes a failed result with one line,
and leaves no backup and no changed target behind.

Faults are injected by making one internal step raise an error nobody planned for:
this simulates a bug, which no seam can (a seam's faults are operational ones), so
these tests patch the executors' own names (``backup.create``, ``backup.restore``,
``backup.stream.tarreader``).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

import backup.create as create_module
import backup.restore as restore_module
import backup.stream.tarreader as tarreader_module
from backup import BackupConfig, create_backup, restore_backup, verify_backup
from backup.storage import LOCK_NAME

from .conftest import listing


def _boom(*args: object, **kwargs: object) -> None:
    raise ZeroDivisionError("an error nobody planned for")


@pytest.fixture
def source(tmp_path: Path) -> Path:
    root = tmp_path / "source"
    (root / "d").mkdir(parents=True)
    (root / "d" / "f.txt").write_bytes(b"f\n")
    return root


def test_create_turns_an_unexpected_error_into_a_failed_result(
    tmp_path: Path, source: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(create_module, "archive_layers", _boom)  # building the archive's stream
    result = create_backup(BackupConfig(source, tmp_path / "backups"))
    assert result.success is False
    assert result.error is not None and "internal error: ZeroDivisionError" in result.error
    assert "\n" not in result.error
    # No archive, no manifest, no partial object: at most the location's lock file.
    assert [name for name in listing(tmp_path / "backups") if name != LOCK_NAME] == []


def test_create_turns_an_unexpected_error_while_planning_into_a_failed_result(tmp_path: Path, source: Path) -> None:
    config = BackupConfig(source, tmp_path / "backups")
    config.exclude = (42,)  # type: ignore[assignment]  # what a bad caller could pass
    result = create_backup(config)
    assert result.success is False and result.error is not None and "\n" not in result.error


def test_restore_turns_an_unexpected_error_into_a_failed_result(
    tmp_path: Path, source: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    backup = create_backup(BackupConfig(source, tmp_path / "backups"))
    target = tmp_path / "target"
    target.mkdir()
    (target / "keep.txt").write_bytes(b"keep\n")
    monkeypatch.setattr(restore_module, "_finish_directories", _boom)
    result = restore_backup(backup.backup_path, target, overwrite=True)
    assert result.success is False
    assert result.error is not None and "internal error: ZeroDivisionError" in result.error
    assert sorted(os.listdir(target)) == ["keep.txt"]
    assert not [name for name in os.listdir(tmp_path) if ".obs-restore-" in name]


def test_verify_turns_an_unexpected_error_into_a_problem(
    tmp_path: Path, source: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    backup = create_backup(BackupConfig(source, tmp_path / "backups"))
    monkeypatch.setattr(tarreader_module.ArchiveReader, "chunks", _boom)
    report = verify_backup(backup.backup_path)
    assert report.ok is False
    assert any("internal error: ZeroDivisionError" in line for line in report.lines())
