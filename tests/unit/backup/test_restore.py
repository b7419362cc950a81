"""Tests for backup.restore: execute_restore carrying out a plan.

Extraction goes into a staging directory beside the target; only a complete, verified
tree is moved in; a failure at any step undoes every move and removes the staging
directory. Watching a restore in the middle is done from its progress callback.
"""

from __future__ import annotations

import errno
import json
import os
import stat
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

import backup.restore as restore_module
from backup import BackupConfig, create_backup
from backup.config import BackupResult
from backup.fstree import STAGING_NAME
from backup.plan import plan_restore
from backup.restore import execute_restore

MOMENT = datetime(2024, 5, 6, 7, 8, 9, tzinfo=UTC)
MTIME = 1_600_000_000


@pytest.fixture
def umask_022() -> Iterator[None]:
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


@pytest.fixture
def made(tmp_path: Path, umask_022: None) -> BackupResult:
    """A backup of a file, a read-only directory holding a file, and a symlink."""
    source = tmp_path / "source"
    (source / "ro").mkdir(parents=True)
    (source / "a.txt").write_bytes(b"new a\n")
    (source / "ro" / "b.txt").write_bytes(b"new b\n")
    os.symlink("a.txt", source / "link")
    os.chmod(source / "ro", 0o500)
    for path in (source / "a.txt", source / "ro" / "b.txt", source / "ro"):
        os.utime(path, (MTIME, MTIME))
    result = create_backup(BackupConfig(source, tmp_path / "backups"), now=lambda: MOMENT)
    assert result.success, result.error
    return result


def _tree(root: Path) -> dict[str, tuple[str, int, bytes | str | None]]:
    """Everything under ``root``: kind, permission bits, and content or link target."""
    found: dict[str, tuple[str, int, bytes | str | None]] = {}
    for directory, names, files in os.walk(root):
        for name in names + files:
            path = Path(directory) / name
            info = path.lstat()
            relative = str(path.relative_to(root))
            if stat.S_ISLNK(info.st_mode):
                found[relative] = ("link", 0, os.readlink(path))
            elif stat.S_ISDIR(info.st_mode):
                found[relative] = ("dir", stat.S_IMODE(info.st_mode), None)
            else:
                found[relative] = ("file", stat.S_IMODE(info.st_mode), path.read_bytes())
    return found


def _staging(parent: Path) -> list[str]:
    return [name for name in os.listdir(parent) if STAGING_NAME.match(name)]


def _existing_target(tmp_path: Path) -> Path:
    """A target that holds an older a.txt and a file of its own."""
    target = tmp_path / "target"
    target.mkdir()
    (target / "a.txt").write_bytes(b"old a\n")
    (target / "mine.txt").write_bytes(b"mine\n")
    return target


# --- staging -----------------------------------------------------------------------------


def test_nothing_reaches_a_new_target_until_everything_is_extracted(made: BackupResult, tmp_path: Path) -> None:
    """While members are extracted, the target does not exist; a private staging
    directory named for the target and this process sits beside it."""
    target = tmp_path / "target"
    seen: list[tuple[bool, list[str]]] = []

    def watch(done: int, written: int) -> None:
        staging = _staging(tmp_path)
        seen.append((target.exists(), staging))
        for name in staging:
            match = STAGING_NAME.match(name)
            assert match is not None and (match["target"], match["pid"]) == ("target", str(os.getpid()))
            assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o700

    result = execute_restore(plan_restore(made.backup_path, target), watch)  # type: ignore[arg-type]
    assert result.success, result.error
    assert len(seen) == 4
    assert all(exists is False and len(staging) == 1 for exists, staging in seen)
    assert _staging(tmp_path) == []


def test_a_new_target_gets_the_archived_tree_and_the_umask_s_mode(made: BackupResult, tmp_path: Path) -> None:
    target = tmp_path / "target"
    result = execute_restore(plan_restore(made.backup_path, target))  # type: ignore[arg-type]
    assert result.success, result.error
    assert stat.S_IMODE(target.stat().st_mode) == 0o755  # as mkdir would have made it, umask 022
    assert _tree(target) == {
        "a.txt": ("file", 0o644, b"new a\n"),
        "ro": ("dir", 0o500, None),  # filled first, then given its archived mode
        "ro/b.txt": ("file", 0o644, b"new b\n"),
        "link": ("link", 0, "a.txt"),
    }
    assert int((target / "ro").stat().st_mtime) == MTIME


def test_nothing_in_an_existing_target_changes_until_everything_is_extracted(
    made: BackupResult, tmp_path: Path
) -> None:
    target = _existing_target(tmp_path)
    before = _tree(target)
    during: list[dict[str, tuple[str, int, bytes | str | None]]] = []
    plan = plan_restore(made.backup_path, target, overwrite=True)  # type: ignore[arg-type]
    result = execute_restore(plan, lambda done, written: during.append(_tree(target)))
    assert result.success, result.error
    assert during and all(state == before for state in during)
    after = _tree(target)
    assert after["a.txt"] == ("file", 0o644, b"new a\n")
    assert after["mine.txt"] == before["mine.txt"]  # not in the backup: left alone
    assert _staging(tmp_path) == [] and _staging(target) == []


def test_the_result_describes_the_restore(made: BackupResult, tmp_path: Path) -> None:
    result = execute_restore(plan_restore(made.backup_path, tmp_path / "target"))  # type: ignore[arg-type]
    assert result.success and result.verified
    assert result.backup_path == tmp_path / "target"
    assert result.manifest_path == made.manifest_path
    assert result.backup_id == made.backup_id
    assert result.archive_size == made.backup_path.stat().st_size  # type: ignore[union-attr]
    assert result.entry_count == 4
    assert result.warnings == []


def test_dead_restores_staging_directories_are_removed_and_live_ones_kept(made: BackupResult, tmp_path: Path) -> None:
    dead = tmp_path / ".target.obs-restore-999999999-0a1b2c3d"
    live = tmp_path / f".target.obs-restore-{os.getppid()}-0a1b2c3d"
    other = tmp_path / ".another.obs-restore-999999999-0a1b2c3d"
    for directory in (dead, live, other):
        (directory / "half").mkdir(parents=True)
    result = execute_restore(plan_restore(made.backup_path, tmp_path / "target"))  # type: ignore[arg-type]
    assert result.success, result.error
    assert not dead.exists()
    assert live.exists()  # its restore is still running
    assert other.exists()  # another target's


# --- refusals and failures ---------------------------------------------------------------


def test_conflicts_known_to_the_plan_fail_before_anything_is_extracted(made: BackupResult, tmp_path: Path) -> None:
    target = _existing_target(tmp_path)
    before = _tree(target)
    calls: list[int] = []
    plan = plan_restore(made.backup_path, target)  # type: ignore[arg-type]
    assert plan.conflicts == ("a.txt",)
    result = execute_restore(plan, lambda done, written: calls.append(done))
    assert result.success is False
    assert result.error == (
        f"{target}: 1 entry already exists (a.txt); nothing was restored; "
        "restore into an empty directory or allow overwriting (--overwrite)"
    )
    assert calls == []
    assert _tree(target) == before
    assert _staging(tmp_path) == []


def test_a_verification_failure_moves_nothing_in(made: BackupResult, tmp_path: Path) -> None:
    manifest = made.manifest_path
    assert manifest is not None
    data = json.loads(manifest.read_text())
    next(entry for entry in data["files"] if entry["path"] == "a.txt")["checksum"] = "0" * 64
    manifest.write_text(json.dumps(data))
    target = _existing_target(tmp_path)
    before = _tree(target)
    result = execute_restore(plan_restore(made.backup_path, target, overwrite=True))  # type: ignore[arg-type]
    assert result.success is False
    assert result.error is not None
    assert result.error.startswith(
        f"{made.backup_path}: does not match its manifest, nothing was restored to {target}: "
    )
    assert "a.txt: checksum " in result.error and f"manifest says {'0' * 64}" in result.error
    assert _tree(target) == before
    assert _staging(tmp_path) == []


def test_without_verification_the_result_says_so(made: BackupResult, tmp_path: Path) -> None:
    plan = plan_restore(made.backup_path, tmp_path / "target", verify_checksums=False)  # type: ignore[arg-type]
    result = execute_restore(plan)
    assert result.success and result.verified is False
    assert result.warnings == [f"{made.backup_path}: checksum verification was turned off"]


def test_a_move_that_fails_half_way_is_undone(
    made: BackupResult, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Some entries are in (one swapped with the target's own, one moved), then a move
    fails: each is put back, the target's replaced file included, and the staging
    directory goes."""
    target = _existing_target(tmp_path)
    before = _tree(target)
    real = restore_module.rename_noreplace
    calls: list[str] = []

    def failing(src_fd: int, src: str, dst_fd: int, dst: str) -> None:
        calls.append(dst)
        if len(calls) == 2:
            raise OSError(errno.EIO, os.strerror(errno.EIO), "/the/failed/move")
        real(src_fd, src, dst_fd, dst)

    monkeypatch.setattr(restore_module, "rename_noreplace", failing)
    result = execute_restore(plan_restore(made.backup_path, target, overwrite=True))  # type: ignore[arg-type]
    monkeypatch.undo()
    assert result.success is False
    assert result.error == "/the/failed/move: restore failed: Input/output error"
    assert len(calls) > 2  # the first move was made, then undone
    assert _tree(target) == before
    assert _staging(tmp_path) == []


def test_a_selection_restores_only_what_was_selected(made: BackupResult, tmp_path: Path) -> None:
    target = tmp_path / "target"
    result = execute_restore(plan_restore(made.backup_path, target, paths=["ro/b.txt"]))  # type: ignore[arg-type]
    assert result.success, result.error
    assert sorted(_tree(target)) == ["ro", "ro/b.txt"]
    assert result.entry_count == 1
