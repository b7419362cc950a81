"""Restores racing other users: a second user who can write inside the target swaps
directories for symlinks while root restores, and a reader watches files being
replaced by ``--overwrite``.

The attackers are real processes running as another user (``nobody``), started by
the test; the arena lives under a world-searchable directory so that they can reach
it. Everything is bounded in time.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from backup import BackupConfig, create_backup, restore_backup

NOBODY = 65534
ATTACK_SECONDS = 6.0

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run an attacker as another user")


@pytest.fixture
def arena() -> Iterator[Path]:
    """A directory every user can search (pytest's own tmp_path is private to root)."""
    root = Path(tempfile.mkdtemp(prefix="obs-race-", dir="/tmp"))
    os.chmod(root, 0o755)
    try:
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _swap_in_a_loop(target: str, outside: str, seconds: float, names: list[str]) -> int:
    """The attacker: swap each directory for a symlink to ``outside`` and back, until
    the time is up; return how many swaps it made."""
    deadline = time.monotonic() + seconds
    swaps = 0
    while time.monotonic() < deadline:
        for rel in names:
            path = os.path.join(target, rel)
            try:
                os.rename(path, path + ".away")
                os.symlink(os.path.join(outside, rel.replace("/", "_")), path)
                swaps += 1
            except OSError:
                pass
        for rel in names:
            path = os.path.join(target, rel)
            try:
                os.unlink(path)
                os.rename(path + ".away", path)
            except OSError:
                pass
    return swaps


def _fork_as(uid: int, work: Callable[[], int]) -> tuple[int, int]:
    """Run ``work`` in a child process that has become ``uid`` (a fork, since this
    interpreter lives where ``nobody`` cannot run it); return its pid and the read end
    of a pipe that receives its result."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        code = 1
        try:
            os.close(read)
            os.setgroups([])
            os.setgid(uid)
            os.setuid(uid)
            os.write(write, str(work()).encode())
            code = 0
        finally:
            os._exit(code)
    os.close(write)
    return pid, read


def _collect(pid: int, read: int) -> tuple[int, str]:
    with os.fdopen(read) as pipe:
        out = pipe.read()
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status), out


def _tree(root: Path, tops: int, subs: int, files: int) -> list[str]:
    """Build top/sub/file.txt directories; return the directory paths (top and sub)."""
    dirs = []
    for t in range(tops):
        for s in range(subs):
            sub = root / f"d{t}" / f"s{s}"
            sub.mkdir(parents=True, exist_ok=True)
            for f in range(files):
                (sub / f"f{f}.txt").write_bytes(f"{t}/{s}/{f}\n".encode() * 20)
            dirs.append(f"d{t}/s{s}")
        dirs.append(f"d{t}")
    return dirs


def _everything_under(root: Path) -> list[str]:
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            found.append(os.path.relpath(os.path.join(dirpath, name), root))
    return found


def _written_outside(outside: Path) -> list[str]:
    """Anything inside the (initially empty) directories the attacker's links point to."""
    return [name for name in _everything_under(outside) if os.sep in name]


def test_a_user_swapping_directories_for_symlinks_never_redirects_a_root_restore(arena: Path) -> None:
    """While root restores (with --overwrite, merging into directories another user
    owns), that user swaps those directories for symlinks to a root-owned directory
    outside the target, in a loop. Restores may fail (cleanly) but nothing may ever be
    written outside the target."""
    source = arena / "source"
    dirs = _tree(source, tops=4, subs=3, files=40)
    result = create_backup(BackupConfig(source, arena / "backups", compression=""))
    assert result.success, result.error
    os.chmod(arena / "backups", 0o755)
    os.chmod(result.backup_path, 0o644)

    target = arena / "shared"
    target.mkdir(mode=0o777)
    os.chmod(target, 0o777)  # a shared directory (not sticky: the attacker may rename anything in it)
    _tree(target, tops=4, subs=3, files=0)
    for rel in dirs:
        os.chown(target / rel, NOBODY, NOBODY)
    outside = arena / "outside"
    outside.mkdir()
    for rel in dirs:
        (outside / rel.replace("/", "_")).mkdir(mode=0o755)  # root's: only a redirected restore writes here

    # The directories being merged into (not their parents, which would carry the
    # swapped links away with them and leave nothing to race).
    leaves = [rel for rel in dirs if "/" in rel]
    attacker = _fork_as(NOBODY, lambda: _swap_in_a_loop(str(target), str(outside), ATTACK_SECONDS, leaves))
    outcomes = []
    deadline = time.monotonic() + ATTACK_SECONDS - 0.5
    try:
        while time.monotonic() < deadline:
            restored = restore_backup(result.backup_path, target, overwrite=True)
            outcomes.append(restored.success)
            if not restored.success:
                assert restored.error and "\n" not in restored.error
            assert _written_outside(outside) == [], "a restore wrote outside the target"
    finally:
        code, out = _collect(*attacker)
    assert code == 0
    assert int(out) > 100, "the attacker did not get to swap anything"
    assert len(outcomes) >= 3
    assert _written_outside(outside) == [], "a restore wrote outside the target"
    assert not any(".obs-restore-" in name for name in os.listdir(arena))


_WATCHER = textwrap.dedent(
    """
    import os, sys, time
    seconds = float(sys.argv[1])
    paths = sys.argv[2:]
    deadline = time.monotonic() + seconds
    looks = misses = 0
    while time.monotonic() < deadline:
        for path in paths:
            looks += 1
            try:
                os.lstat(path)
            except FileNotFoundError:
                misses += 1
    print(looks, misses)
    """
)


def test_overwrite_never_leaves_a_replaced_entry_missing(tmp_path: Path) -> None:
    """A restore with --overwrite swaps each replaced entry atomically: a process
    watching those paths never sees one missing, however many restores run."""
    source = tmp_path / "source"
    _tree(source, tops=2, subs=2, files=50)
    result = create_backup(BackupConfig(source, tmp_path / "backups", compression=""))
    assert result.success, result.error
    target = tmp_path / "target"
    first = restore_backup(result.backup_path, target)
    assert first.success, first.error
    watched = [str(target / f"d{t}" / f"s{s}" / f"f{f}.txt") for t in range(2) for s in range(2) for f in range(50)]
    watcher = subprocess.Popen(
        [sys.executable, "-c", _WATCHER, "4", *watched], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    restores = 0
    deadline = time.monotonic() + 3.5
    while time.monotonic() < deadline:
        again = restore_backup(result.backup_path, target, overwrite=True)
        assert again.success, again.error
        restores += 1
    out, err = watcher.communicate(timeout=60)
    looks, misses = (int(word) for word in out.split())
    assert restores >= 3 and looks > 10_000, (restores, looks, err)
    assert misses == 0


def test_a_failure_while_moving_into_place_undoes_every_move(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Fault injection: the fourth new entry moved into the target fails (as a full disk or a
    vanished directory would make it). The moves already made are undone: the target
    is exactly as it was, replaced files included."""
    import backup.restore as restore_module

    source = tmp_path / "source"
    _tree(source, tops=3, subs=2, files=3)
    result = create_backup(BackupConfig(source, tmp_path / "backups"))
    assert result.success, result.error
    target = tmp_path / "target"
    (target / "d0" / "s0").mkdir(parents=True)
    (target / "d0" / "s0" / "f0.txt").write_bytes(b"mine\n")  # replaced with --overwrite
    (target / "keep.txt").write_bytes(b"keep\n")
    os.chmod(target / "d0", 0o711)
    before = {rel: _signature(target / rel) for rel in _everything_under(target)}

    real = restore_module.rename_noreplace
    calls = {"n": 0}

    def failing(*args: object) -> None:
        calls["n"] += 1
        if calls["n"] == 4:
            raise OSError(28, "No space left on device")
        real(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(restore_module, "rename_noreplace", failing)
    restored = restore_backup(result.backup_path, target, overwrite=True)
    monkeypatch.undo()
    assert restored.success is False
    assert "No space left on device" in (restored.error or "")
    assert {rel: _signature(target / rel) for rel in _everything_under(target)} == before
    assert not [name for name in os.listdir(tmp_path) if ".obs-restore-" in name]


def _signature(path: Path) -> tuple[int, int, bytes]:
    info = os.lstat(path)
    data = path.read_bytes() if stat.S_ISREG(info.st_mode) else b""
    return (info.st_mode, info.st_ino if stat.S_ISDIR(info.st_mode) else 0, data)
