"""Real backups for tests to work on: a tiny source tree, and backups made from it at
known instants through the library (the command line's clock would put several in one
second)."""

from __future__ import annotations

import os
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from backup import BackupConfig, BackupResult, create_backup
from backup.catalog import parse_backup_id
from backup.storage import BackupStorage, LocalStorage
from support.clock import fixed_now

__all__ = ["START", "backup_instant", "make_backup", "make_backups", "make_source", "partials"]

# The first of make_backups' backups, unless told otherwise; one a day after it.
START = datetime(2026, 5, 1, 3, 0, tzinfo=UTC)


def make_source(root: Path) -> Path:
    """Given a directory (made if missing), put two small files in it, one in a
    subdirectory; return it. Calling it again on the same directory is harmless."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "data.txt").write_text("some data\n")
    (root / "sub").mkdir(exist_ok=True)
    (root / "sub" / "more.txt").write_text("more\n")
    return root


def make_backup(
    source: Path,
    backup_dir: Path,
    *,
    now: Callable[[], datetime] | None = None,
    files: list[str] | None = None,
    storage: BackupStorage | None = None,
    **config: Any,
) -> BackupResult:
    """Given a source, a backup directory and ``BackupConfig`` fields, create one backup
    (at ``now()``, if given; in ``storage``, if given, else in ``backup_dir``) and return
    its result; fail the test unless it succeeded and its archive is there."""
    extra: dict[str, Any] = {"now": now} if now is not None else {}
    result = create_backup(BackupConfig(source, backup_dir, **config), files=files, storage=storage, **extra)
    assert result.success, result.error
    assert result.manifest is not None and result.manifest.archive is not None
    (storage or LocalStorage(backup_dir)).stat(result.manifest.archive.name)  # raises if it is not there
    return result


def make_backups(
    tmp_path: Path,
    prefix: str,
    count: int,
    start: datetime = START,
    *,
    step: timedelta = timedelta(days=1),
    storage: BackupStorage | None = None,
    **config: Any,
) -> list[str]:
    """Make ``count`` real backups with ``prefix`` in ``tmp_path/backups`` (or in
    ``storage``), of the source ``tmp_path/source`` (made by :func:`make_source` if
    missing), one every ``step`` from ``start``; return their ids, oldest first.
    ``config`` holds further ``BackupConfig`` fields (``include_manifest=False`` ...)."""
    source = tmp_path / "source"
    if not source.exists():
        make_source(source)
    ids = []
    for index in range(count):
        moment = start + index * step
        result = make_backup(
            source, tmp_path / "backups", prefix=prefix, now=fixed_now(moment), storage=storage, **config
        )
        assert result.backup_id is not None
        ids.append(result.backup_id)
    return ids


def backup_instant(backup_id: str | None) -> datetime:
    """Given a backup id, return the instant its name records (UTC, to the second)."""
    assert backup_id is not None
    parsed = parse_backup_id(backup_id)
    assert parsed is not None, backup_id
    return parsed[1]


def partials(directory: Path) -> list[str]:
    """Return the names of the unfinished writes (``*.partial``) in a backup directory."""
    return sorted(name for name in os.listdir(directory) if name.endswith(".partial"))
