"""kill -9 during ``prune`` and ``restore``: afterwards only complete backups are
listed, the newest is never lost, a target is either as it was or complete, and what
the killed run left behind (an orphan manifest, a staging directory) is removed by the
next run, which succeeds.

Two kinds of kill: at random moments (a fixed seed, delays drawn uniformly from the
measured run time of the same command uninterrupted, 6 kills per case), and at chosen
points (a child process that wraps one call and sends itself SIGKILL there), so that
the states a random kill rarely hits (an archive removed but not its manifest; a
half-extracted staging directory) are always checked. For prune the call is
``LocalStorage.delete``, the storage operation every removal goes through; for restore
it is ``_write_file`` or ``_finish_directories``. The child runs the real command line,
which makes its own storage, so the wrap is on the class, in the child only.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from backup import (
    BackupConfig,
    RetentionPolicy,
    create_backup,
    list_backups,
    plan_prune,
    restore_backup,
    verify_backup,
)
from backup.cli import main
from backup.monitor import STATE_NAME
from backup.storage.lock import LOCK_NAME

from .conftest import SRC, backup, dir_state, fixed_now, make_corpus, pattern_bytes, snapshot

SEED = 20241126
KILLS = 6
DAY0 = datetime(2024, 1, 1, tzinfo=UTC)


def _cli(*argv: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "backup", *argv],
        env=dict(os.environ, PYTHONPATH=str(SRC)),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _timed_run(*argv: str) -> float:
    """Run the CLI uninterrupted; return its wall time, process start to exit."""
    started = time.monotonic()
    proc = _cli(*argv)
    out, err = proc.communicate(timeout=60)
    duration = time.monotonic() - started
    assert proc.returncode == 0, (out, err)
    return duration


def _kill_at(delay: float, *argv: str) -> tuple[bool, int]:
    """Start the CLI, SIGKILL it after ``delay`` seconds unless it finished; return
    (whether it was killed, its exit status)."""
    proc = _cli(*argv)
    try:
        proc.wait(timeout=delay)
        killed = False
    except subprocess.TimeoutExpired:
        os.kill(proc.pid, signal.SIGKILL)
        killed = True
    out, err = proc.communicate(timeout=60)
    if killed and proc.returncode == -signal.SIGKILL:
        return True, proc.returncode
    assert proc.returncode == 0, (out, err)  # finished first (or won the race with the kill)
    return False, proc.returncode


def _run_child(code: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code, *args],
        env=dict(os.environ, PYTHONPATH=str(SRC)),
        capture_output=True,
        text=True,
        timeout=60,
    )


# --- prune ----------------------------------------------------------------------------------


@pytest.fixture
def pristine(tmp_path: Path) -> tuple[Path, Path, list[str], dict]:
    """A corpus and a backup directory of 8 daily backups of it (about 1.3 MB each),
    oldest first, plus that directory's state. Each attempt works on a copy."""
    source = tmp_path / "source"
    make_corpus(source)
    backups = tmp_path / "pristine"
    ids = [backup(source, backups, now=fixed_now(DAY0 + timedelta(days=day))).backup_id for day in range(8)]
    return source, backups, ids, dir_state(backups)


def _copy(pristine_dir: Path, destination: Path) -> Path:
    shutil.copytree(pristine_dir, destination)
    return destination


def _check_after_prune_kill(directory: Path, ids: list[str], pristine_state: dict, info: str) -> list[str]:
    """Only complete backups listed, each verifying; the two newest (which keep-last 2
    keeps) always there; everything present byte-identical to before. Return the orphan
    manifests (an archive removed, its manifest not yet)."""
    listed = list_backups(directory)
    listed_ids = [item.backup_id for item in listed]
    assert set(listed_ids) <= set(ids), info
    assert listed_ids[-2:] == ids[-2:], info  # the newest is always there, and the one before
    for item in listed:
        assert item.manifest_path is not None and item.problem is None, (info, item)
        report = verify_backup(item.archive_path)
        assert report.ok, (info, report.lines())
    state = {
        name: value for name, value in dir_state(directory).items() if name not in (LOCK_NAME, STATE_NAME)
    }  # prune records its run
    assert set(state) <= set(pristine_state), (info, sorted(set(state) - set(pristine_state)))
    for name, value in state.items():
        assert value == pristine_state[name], (info, name)  # nothing half-deleted or rewritten
    archives = {name[: -len(".tar.gz")] for name in state if name.endswith(".tar.gz")}
    assert archives == set(listed_ids), info  # every archive present is a listed, complete backup
    return sorted(
        name
        for name in state
        if name.endswith(".manifest.json") and name.removesuffix(".manifest.json") not in archives
    )


def _follow_up(
    directory: Path, source: Path, ids: list[str], orphans: list[str], create_first: bool, capsys, info: str
) -> None:
    """The next create (or not), then the next prune: orphans go, the prune succeeds,
    and exactly the two newest remain."""
    newest = ids[-2:]
    if create_first:
        created = create_backup(BackupConfig(source, directory), now=fixed_now(DAY0 + timedelta(days=30)))
        assert created.success, (info, created.error)
        names = os.listdir(directory)
        assert not [name for name in orphans if name in names], (info, orphans)
        newest = [ids[-1], created.backup_id]
    code = main(["prune", str(directory), "--keep-last", "2"])
    out, err = capsys.readouterr()
    assert code == 0 and err == "", (info, err)
    if not create_first:
        for name in orphans:
            assert f"removed leftover {name}\n" in out, (info, out)
    assert [item.backup_id for item in list_backups(directory)] == newest, info
    expected = {LOCK_NAME, STATE_NAME} | {f"{i}.tar.gz" for i in newest} | {f"{i}.manifest.json" for i in newest}
    assert set(os.listdir(directory)) == expected, info


@pytest.mark.timeout(90)
def test_kill_9_during_prune_at_random_moments(tmp_path: Path, pristine, capsys) -> None:
    source, pristine_dir, ids, pristine_state = pristine
    rnd = random.Random(SEED)
    # The uninterrupted run time (the shorter of two, so the kills land inside it).
    duration = min(
        _timed_run("prune", str(_copy(pristine_dir, tmp_path / f"reference{i}")), "--keep-last", "2") for i in range(2)
    )
    kills = 0
    orphans_seen = 0
    for attempt in range(KILLS):
        directory = _copy(pristine_dir, tmp_path / f"attempt{attempt}")
        delay = rnd.uniform(0, duration)
        killed, status = _kill_at(delay, "prune", str(directory), "--keep-last", "2")
        kills += killed
        info = f"seed={SEED} attempt={attempt} delay={delay:.3f}/{duration:.3f} killed={killed} status={status}"
        orphans = _check_after_prune_kill(directory, ids, pristine_state, info)
        orphans_seen += len(orphans)
        _follow_up(directory, source, ids, orphans, attempt % 2 == 0, capsys, info)
        shutil.rmtree(directory)
    assert kills >= KILLS // 2, (
        f"only {kills} of {KILLS} runs were killed (duration {duration:.3f}s); {orphans_seen} orphan manifests seen"
    )
    assert dir_state(pristine_dir) == pristine_state


_PRUNE_KILLED_AT = """
import os, signal, sys
from backup.cli import main
from backup.storage import LocalStorage
stop_after = int(sys.argv[1])
real_delete = LocalStorage.delete
done = [0]

def delete(self, name):
    real_delete(self, name)
    done[0] += 1
    if done[0] == stop_after:
        os.kill(os.getpid(), signal.SIGKILL)

LocalStorage.delete = delete
sys.exit(main(sys.argv[2:]))
"""


@pytest.mark.parametrize(
    ("removals", "next_run"),
    [(1, "create"), (2, "prune"), (5, "prune"), (11, "create")],
    ids=["after-first-archive", "after-first-backup", "after-third-archive", "after-last-archive"],
)
def test_kill_9_during_prune_between_archive_and_manifest(
    tmp_path: Path, pristine, capsys, removals: int, next_run: str
) -> None:
    """The child deletes ``removals`` objects of the six backups it removes (archive, then
    manifest, in the plan's order), then is killed: an odd count leaves an orphan manifest."""
    source, pristine_dir, ids, pristine_state = pristine
    directory = _copy(pristine_dir, tmp_path / "work")
    proc = _run_child(_PRUNE_KILLED_AT, str(removals), "prune", str(directory), "--keep-last", "2")
    assert proc.returncode == -signal.SIGKILL, (proc.stdout, proc.stderr)
    info = f"removals={removals}"
    orphans = _check_after_prune_kill(directory, ids, pristine_state, info)
    order = [d.backup.backup_id for d in plan_prune(pristine_dir, RetentionPolicy(keep_last=2), UTC).remove]
    assert sorted(order) == ids[:6]
    gone = order[: (removals + 1) // 2]  # the backups whose archive is gone
    assert [item.backup_id for item in list_backups(directory)] == [i for i in ids if i not in gone], info
    assert orphans == ([f"{gone[-1]}.manifest.json"] if removals % 2 else []), info
    _follow_up(directory, source, ids, orphans, next_run == "create", capsys, info)


# --- restore --------------------------------------------------------------------------------


@pytest.fixture
def restorable(tmp_path: Path) -> tuple[Path, dict]:
    """A backup of the standard corpus plus 300 small files and a 4 MiB one (so the
    restore itself, not just interpreter start-up, takes a good part of the run)."""
    source = tmp_path / "source"
    make_corpus(source)
    for i in range(300):
        path = source / "many" / f"d{i % 10}" / f"f{i:03d}.txt"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"line %d\n" % i * (i + 1))
    (source / "large.bin").write_bytes(pattern_bytes(4 << 20, 3))
    result = backup(source, tmp_path / "backups", now=fixed_now())
    return result.backup_path, snapshot(source)


def _prepare_target(work: Path, kind: str) -> tuple[Path, dict]:
    """The target, and what a complete restore into it looks like beyond the backup."""
    target = work / "target"
    if target.exists():
        shutil.rmtree(target)
    if kind == "new":
        return target, {}
    target.mkdir(parents=True)
    (target / "sentinel.txt").write_bytes(b"the user's own file\n")
    os.utime(target / "sentinel.txt", (1_500_000_000, 1_500_000_000))
    return target, snapshot(target)


def _content(state: dict) -> dict:
    """A snapshot without directory modes and times: the files (bytes, mode, mtime)
    and symlinks. A kill after the final move but before directory modes and times
    are applied leaves those as created; the next restore sets them."""
    return {path: ("dir",) if value[0] == "dir" else value for path, value in state.items()}


def _staging(work: Path) -> list[str]:
    return sorted(name for name in os.listdir(work) if name.startswith(".target.obs-"))


def _check_after_restore_kill(target: Path, before: dict, expected: dict, info: str) -> bool:
    """The target is as it was (absent, or holding only the user's files), or complete.
    Return whether it is complete."""
    if not os.path.lexists(target):
        assert before == {}, (info, "the user's target is gone")
        return False
    state = snapshot(target)
    if before and state == before:
        return False
    assert _content(state) == _content({**expected, **before}), (info, "target neither unchanged nor complete")
    return True


def _restore_again(archive: Path, work: Path, target: Path, before: dict, expected: dict, complete: bool, info: str):
    """The next restore into the same target removes any staging left and succeeds
    (with overwrite if the killed run had already completed the target)."""
    result = restore_backup(archive, target, overwrite=complete)
    assert result.success, (info, result.error)
    assert _staging(work) == [], info
    assert snapshot(target) == {**expected, **before}, info


@pytest.mark.timeout(90)
@pytest.mark.parametrize("kind", ["new", "existing"])
def test_kill_9_during_restore_at_random_moments(tmp_path: Path, restorable, kind: str) -> None:
    archive, expected = restorable
    work = tmp_path / "work"
    work.mkdir()
    rnd = random.Random(f"{SEED}-{kind}")
    durations = []
    for _ in range(2):  # the uninterrupted run time: the shorter of two, so the kills land inside it
        target, before = _prepare_target(work, kind)
        durations.append(_timed_run("restore", str(archive), str(target)))
    duration = min(durations)
    kills = leftovers = completed = 0
    for attempt in range(KILLS):
        target, before = _prepare_target(work, kind)
        delay = rnd.uniform(0, duration)
        killed, status = _kill_at(delay, "restore", str(archive), str(target))
        kills += killed
        info = f"seed={SEED} kind={kind} attempt={attempt} delay={delay:.3f}/{duration:.3f} status={status}"
        complete = _check_after_restore_kill(target, before, expected, info)
        completed += complete
        leftovers += len(_staging(work))
        _restore_again(archive, work, target, before, expected, complete, info)
    assert kills >= KILLS // 2, (
        f"only {kills} of {KILLS} runs were killed (duration {duration:.3f}s); "
        f"{completed} had completed the target, {leftovers} staging directories were left"
    )


_RESTORE_KILLED_AT = """
import os, signal, sys
import backup.restore as restore_module
from backup.cli import main
where, count = sys.argv[1], int(sys.argv[2])
real = getattr(restore_module, where)
calls = [0]

def wrapper(*args, **kwargs):
    calls[0] += 1
    if calls[0] == count:
        os.kill(os.getpid(), signal.SIGKILL)
    return real(*args, **kwargs)

setattr(restore_module, where, wrapper)
sys.exit(main(sys.argv[3:]))
"""


@pytest.mark.parametrize("kind", ["new", "existing"])
@pytest.mark.parametrize(
    ("where", "count"),
    [("_write_file", 1), ("_write_file", 150), ("_finish_directories", 1)],
    ids=["before-the-first-file", "mid-extraction", "after-the-final-move"],
)
def test_kill_9_during_restore_at_chosen_points(tmp_path: Path, restorable, kind: str, where: str, count: int) -> None:
    archive, expected = restorable
    work = tmp_path / "work"
    work.mkdir()
    target, before = _prepare_target(work, kind)
    proc = _run_child(_RESTORE_KILLED_AT, where, str(count), "restore", str(archive), str(target))
    assert proc.returncode == -signal.SIGKILL, (proc.stdout, proc.stderr)
    info = f"kind={kind} killed in {where} call {count}"
    complete = _check_after_restore_kill(target, before, expected, info)
    assert complete == (where == "_finish_directories"), info
    assert len(_staging(work)) == (0 if complete and kind == "new" else 1), (info, _staging(work))
    _restore_again(archive, work, target, before, expected, complete, info)
