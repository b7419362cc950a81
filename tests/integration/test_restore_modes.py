"""Directory modes on restore: applied last (as GNU tar does), never looser than
archived on the way, kept for existing directories that were not asked for, sticky
bits kept; and a restore by a user who is not root.
"""

from __future__ import annotations

import os
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from backup import BackupConfig, create_backup, restore_backup
from support.trees import shared_directory

from .conftest import GNU_TAR

NOBODY = 65534


def _mode(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def _private_tree(root: Path) -> Path:
    """secret/ is 0600 (no search bit even for its owner) and holds a subdirectory."""
    (root / "secret" / "inner").mkdir(parents=True)
    (root / "secret" / "inner" / "key.txt").write_bytes(b"key\n")
    (root / "secret" / "note.txt").write_bytes(b"note\n")
    (root / "readonly").mkdir()
    (root / "readonly" / "f.txt").write_bytes(b"ro\n")
    os.chmod(root / "readonly", 0o500)
    os.chmod(root / "secret" / "inner", 0o700)
    os.chmod(root / "secret", 0o600)
    return root


@pytest.fixture
def shared() -> Iterator[Path]:
    """A directory another user can reach (pytest's tmp_path is private to root)."""
    with shared_directory("obs-modes-") as root:
        yield root


def _as_nobody(work) -> str:
    """Run ``work()`` in a child that has become ``nobody``; return what it returned."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        code = 1
        try:
            os.close(read)
            os.setgroups([])
            os.setgid(NOBODY)
            os.setuid(NOBODY)
            os.write(write, str(work()).encode())
            code = 0
        finally:
            os._exit(code)
    os.close(write)
    with os.fdopen(read) as pipe:
        out = pipe.read()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    return out


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to restore as another user")
def test_a_user_who_is_not_root_restores_a_0600_directory_holding_a_directory(shared: Path) -> None:
    """GNU tar restores it (applying directory modes last); so must we, with the modes
    as archived. Before, the restore failed with "Permission denied" and left the tree
    half installed."""
    source = _private_tree(shared / "source")
    result = create_backup(BackupConfig(source, shared / "backups", compression=""))
    assert result.success, result.error
    os.chmod(shared / "backups", 0o755)
    os.chmod(result.backup_path, 0o644)
    os.chmod(result.manifest_path, 0o644)
    home = shared / "home"
    home.mkdir()
    os.chown(home, NOBODY, NOBODY)
    target = home / "restored"

    outcome = _as_nobody(lambda: repr((lambda r: (r.success, r.error))(restore_backup(result.backup_path, target))))
    assert outcome == "(True, None)"
    assert _mode(target / "secret") == 0o600
    assert _mode(target / "secret" / "inner") == 0o700
    assert _mode(target / "readonly") == 0o500
    assert os.stat(target / "secret").st_uid == NOBODY
    os.chmod(target / "secret", 0o700)
    assert (target / "secret" / "inner" / "key.txt").read_bytes() == b"key\n"

    # GNU tar, as the same user, agrees on every mode.
    gnu = home / "gnu"
    gnu.mkdir()
    os.chown(gnu, NOBODY, NOBODY)
    code = _as_nobody(
        lambda: subprocess.run([GNU_TAR, "-xf", str(result.backup_path), "-C", str(gnu)], check=False).returncode
    )
    assert code == "0"
    assert (_mode(gnu / "secret"), _mode(gnu / "readonly")) == (0o600, 0o500)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to restore as another user")
def test_a_failed_restore_by_a_user_who_is_not_root_leaves_the_target_as_it_was(shared: Path) -> None:
    """The last entry replaces a directory of root's, which the user may not move (that
    needs write access to the directory itself): the replacement fails after every
    other entry was moved in, and all of them are moved back."""
    source = _private_tree(shared / "source")
    (source / "zz-last").write_bytes(b"new\n")
    result = create_backup(BackupConfig(source, shared / "backups", compression=""))
    assert result.success, result.error
    for path in (shared / "backups", result.backup_path, result.manifest_path):
        os.chmod(path, 0o755 if path.is_dir() else 0o644)
    target = shared / "target"
    target.mkdir()
    os.chown(target, NOBODY, NOBODY)
    (target / "mine.txt").write_bytes(b"mine\n")
    (target / "zz-last").mkdir()  # root's
    (target / "zz-last" / "roots.txt").write_bytes(b"root\n")
    before = sorted(os.listdir(target))

    def attempt() -> str:
        restored = restore_backup(result.backup_path, target, overwrite=True)
        return repr((restored.success, restored.error))

    outcome = _as_nobody(attempt)
    assert outcome.startswith("(False, ") and "Permission denied" in outcome, outcome
    assert sorted(os.listdir(target)) == before
    assert (target / "mine.txt").read_bytes() == b"mine\n"
    assert (target / "zz-last" / "roots.txt").read_bytes() == b"root\n"
    assert not [name for name in os.listdir(shared) if ".obs-restore-" in name]


def _nested(root: Path) -> Path:
    (root / "a" / "b" / "c").mkdir(parents=True)
    (root / "a" / "b" / "c" / "f.txt").write_bytes(b"f\n")
    (root / "a" / "other.txt").write_bytes(b"o\n")
    os.chmod(root / "a" / "b" / "c", 0o750)
    os.chmod(root / "a" / "b", 0o700)
    os.chmod(root / "a", 0o700)
    return root


def test_restoring_one_path_gives_its_parents_their_archived_modes(tmp_path: Path) -> None:
    """--path a/b/c creates a and a/b: with the modes they were archived with (0700),
    not the umask's 0755."""
    result = create_backup(BackupConfig(_nested(tmp_path / "source"), tmp_path / "backups"))
    assert result.success, result.error
    target = tmp_path / "target"
    previous = os.umask(0o022)
    try:
        restored = restore_backup(result.backup_path, target, paths=["a/b/c"])
    finally:
        os.umask(previous)
    assert restored.success, restored.error
    assert (_mode(target / "a"), _mode(target / "a" / "b"), _mode(target / "a" / "b" / "c")) == (0o700, 0o700, 0o750)
    assert not (target / "a" / "other.txt").exists()


def test_existing_parents_keep_their_modes_and_asked_for_directories_get_theirs(tmp_path: Path) -> None:
    """Merging --path a/b/c into a target where a/ already exists (0711) leaves a/ alone
    and creates a/b with its archived 0700 (not 0755); a directory that was asked for
    and exists gets its archived mode, as with GNU tar."""
    result = create_backup(BackupConfig(_nested(tmp_path / "source"), tmp_path / "backups"))
    assert result.success, result.error
    target = tmp_path / "target"
    (target / "a").mkdir(parents=True)
    os.chmod(target / "a", 0o711)
    previous = os.umask(0o022)
    try:
        restored = restore_backup(result.backup_path, target, paths=["a/b/c"], overwrite=True)
    finally:
        os.umask(previous)
    assert restored.success, restored.error
    assert (_mode(target / "a"), _mode(target / "a" / "b")) == (0o711, 0o700)
    assert (target / "a" / "b" / "c" / "f.txt").read_bytes() == b"f\n"

    again = tmp_path / "again"
    (again / "a" / "b" / "c").mkdir(parents=True)
    os.chmod(again / "a" / "b" / "c", 0o777)
    restored = restore_backup(result.backup_path, again, paths=["a/b/c"], overwrite=True)
    assert restored.success, restored.error
    assert _mode(again / "a" / "b" / "c") == 0o750


def test_a_sticky_shared_directory_comes_back_sticky(tmp_path: Path) -> None:
    """A world-writable 1777 directory (an upload or spool directory) must not come back
    0777, where every user could delete every other user's files."""
    source = tmp_path / "source"
    (source / "spool").mkdir(parents=True)
    (source / "spool" / "job").write_bytes(b"job\n")
    os.chmod(source / "spool", 0o1777)
    result = create_backup(BackupConfig(source, tmp_path / "backups"))
    assert result.success, result.error
    target = tmp_path / "target"
    restored = restore_backup(result.backup_path, target)
    assert restored.success, restored.error
    assert _mode(target / "spool") == 0o1777
    assert restored.warnings == []


def test_a_killed_restores_staging_inside_the_target_is_removed_by_the_next_restore(tmp_path: Path) -> None:
    """Restoring into a mount point stages inside it; if that restore was killed, the next
    restore into the target removes the leftover (its process is gone)."""
    source = tmp_path / "source"
    source.mkdir()
    (source / "f.txt").write_bytes(b"f\n")
    result = create_backup(BackupConfig(source, tmp_path / "backups"))
    target = tmp_path / "target"
    leftover = target / ".target.obs-restore-999999999-0a1b2c3d"
    (leftover / "half").mkdir(parents=True)
    (leftover / "half" / "x").write_bytes(b"x")
    restored = restore_backup(result.backup_path, target)
    assert restored.success, restored.error
    assert sorted(os.listdir(target)) == ["f.txt"]
