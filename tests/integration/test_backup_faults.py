"""Faults around a backup: a directory that cannot be listed, a file that vanishes
between the walk and the read, the backup directory vanishing mid-backup, and a
read-only backup directory.

We run as root, so permission bits cannot make a directory unlistable or a file
system read-only. Each fault is injected at a seam the library reads or writes
through, as each test says: the source through a ``FileSystem``
(``create_backup(config, filesystem=...)``, from ``support.sources``), the backup
location through a ``FaultyStorage`` (``create_backup(config, storage=...)``), the
moment mid-backup through the ``progress`` callback. The command line builds its own
file system and storage, so for it the file system object it reads through
(``LOCAL_FILESYSTEM``) is given the faulty method, and a read-only directory stays an
``os.open`` refusal (the CLI's lock file is the first thing it writes). A file that
vanishes is really removed. Every failure must be clean: one line naming the path, no
traceback, no ``.partial`` file anywhere, nothing that looks like a complete backup,
and the earlier backup's bytes (hashed before and after) unchanged and still verifying.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import tarfile
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest

from backup import (
    BackupConfig,
    clean_leftovers,
    create_backup,
    execute_plan,
    list_backups,
    plan_backup,
    restore_backup,
    verify_backup,
)
from backup.fstree import LOCAL_FILESYSTEM
from backup.monitor import STATE_NAME, load_state
from backup.storage import LocalStorage
from backup.storage.local import PARTIAL_PREFIX, partial_name
from backup.storage.lock import LOCK_NAME
from support.cli import run_cli
from support.sources import AfterReadFileSystem, UnlistableFileSystem
from support.storage import Fault, FaultyStorage

from .conftest import backup, decompressed_tar_bytes, dir_state, fixed_now, listing, make_corpus, snapshot

EARLIER = datetime(2023, 3, 4, 5, 6, 7, tzinfo=UTC)
ARCHIVE_SUFFIXES = (".tar", ".tar.gz", ".tar.bz2", ".tar.xz", ".tar.zst")


@pytest.fixture
def setup(tmp_path: Path) -> tuple[Path, dict, Path, dict]:
    """A corpus, its snapshot, a backup directory holding one earlier backup, and that
    directory's state (every file's mode, size and SHA-256)."""
    source = tmp_path / "source"
    expected = make_corpus(source)
    backups = tmp_path / "backups"
    backup(source, backups, now=fixed_now(EARLIER))
    return source, expected, backups, dir_state(backups)


def _partials(root: Path) -> list[str]:
    return [p for p in listing(root) if p.endswith(".partial")]


def _backup_files(root: Path) -> list[str]:
    """Every archive or manifest anywhere under ``root``."""
    return [p for p in listing(root) if p.endswith(ARCHIVE_SUFFIXES) or p.endswith(".manifest.json")]


def _without_lock(state: dict) -> dict:
    # The lock, and the state record a failed command-line run leaves for monitoring.
    return {name: value for name, value in state.items() if name not in (LOCK_NAME, STATE_NAME)}


def _assert_earlier_untouched(tmp_path: Path, backups: Path, before: dict) -> None:
    assert _partials(tmp_path) == []
    assert _without_lock(dir_state(backups)) == before  # same names, modes, sizes, SHA-256
    assert sorted(_backup_files(tmp_path)) == sorted(f"backups/{name}" for name in before)
    infos = list_backups(backups)
    assert [info.archive_path.name for info in infos] == [n for n in before if n.endswith(".tar.gz")]
    for info in infos:
        report = verify_backup(info.archive_path)
        assert report.ok, report.lines()


def _archive_names(archive: Path) -> list[str]:
    with tarfile.open(archive) as tf:
        return sorted(tf.getnames())


# --- a directory that cannot be listed ------------------------------------------------


def test_unlistable_directory_with_fail_policy_fails_and_writes_nothing(
    tmp_path: Path, setup, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # Fault injection: the source's file system refuses to list sub/deeper. The command
    # line reads through LOCAL_FILESYSTEM, so that object gets the refusing listdir.
    source, _expected, backups, before = setup
    victim = source / "sub" / "deeper"
    unlistable = UnlistableFileSystem(victim)
    result = create_backup(BackupConfig(source, backups, on_read_error="fail"), filesystem=unlistable)
    monkeypatch.setattr(LOCAL_FILESYSTEM, "listdir", unlistable.listdir)
    code, out, err = run_cli(capsys, "create", str(source), str(backups))
    monkeypatch.undo()

    message = f"{victim}: directory cannot be listed: Permission denied"
    assert result.success is False
    assert result.error == message
    assert result.backup_path is None and result.manifest_path is None
    assert (code, out, err) == (1, "", f"obs-backup: error: {message}\n")
    assert load_state(backups)["backup"]["last_run"]["error"] == message  # monitoring sees it
    _assert_earlier_untouched(tmp_path, backups, before)


def test_unlistable_directory_with_skip_policy_is_recorded_and_the_rest_archived(tmp_path: Path, setup) -> None:
    # Fault injection: the source's file system refuses to list sub/deeper.
    source, expected, backups, before = setup
    victim = source / "sub" / "deeper"
    result = create_backup(BackupConfig(source, backups, on_read_error="skip"), filesystem=UnlistableFileSystem(victim))

    assert result.success, result.error
    warning = f"{victim}: directory cannot be listed: Permission denied; skipped"
    assert result.warnings == [warning]
    manifest = json.loads(result.manifest_path.read_text())
    assert manifest["warnings"] == [warning]
    # The directory itself is archived (it was seen); nothing under it could be.
    want = {path: entry for path, entry in expected.items() if not path.startswith("sub/deeper/")}
    assert len(want) == len(expected) - 3
    assert _archive_names(result.backup_path) == sorted(want)
    assert sorted(entry["path"] for entry in manifest["files"]) == sorted(want)
    report = verify_backup(result.backup_path)
    assert report.ok, report.lines()
    target = tmp_path / "restored"
    restored = restore_backup(result.backup_path, target)
    assert restored.success, restored.error
    assert snapshot(target) == want
    state = dir_state(backups)
    assert {name: state[name] for name in before} == before
    assert _partials(tmp_path) == []


# --- a file that disappears between the walk and the read ------------------------------


def _make_it_vanish(source: Path, how: str, tmp_path: Path) -> tuple[Path, str]:
    """A real change, made between plan_backup and execute_plan. Return the victim and
    the reason the backup gives for it."""
    victim = source / "sub" / "nested.bin"
    victim.unlink()
    if how == "deleted":
        return victim, "disappeared before it could be read"
    # Replaced by a symlink to a file outside the source: its bytes must not be archived.
    outside = tmp_path / "outside-secret.txt"
    outside.write_bytes(b"OUTSIDE-THE-SOURCE-7c1e\n" * 100)
    os.symlink(outside, victim)
    return victim, "it or a directory above it was replaced by a symlink; not followed"


@pytest.mark.parametrize("how", ["deleted", "replaced-by-symlink"])
def test_file_vanishing_after_the_walk_with_fail_policy_fails_cleanly(tmp_path: Path, setup, how: str) -> None:
    source, _expected, backups, before = setup
    plan = plan_backup(BackupConfig(source, backups, on_read_error="fail"))
    assert "sub/nested.bin" in [entry.path for entry in plan.entries]
    victim, reason = _make_it_vanish(source, how, tmp_path)
    result = execute_plan(plan)
    assert result.success is False
    assert result.error == f"{victim}: {reason}"
    assert result.backup_path is None and result.manifest_path is None
    _assert_earlier_untouched(tmp_path, backups, before)


@pytest.mark.parametrize("how", ["deleted", "replaced-by-symlink"])
def test_file_vanishing_after_the_walk_with_skip_policy_is_recorded(tmp_path: Path, setup, how: str) -> None:
    source, expected, backups, before = setup
    plan = plan_backup(BackupConfig(source, backups, on_read_error="skip"))
    victim, reason = _make_it_vanish(source, how, tmp_path)
    result = execute_plan(plan)
    assert result.success, result.error
    warning = f"{victim}: {reason}; skipped"
    assert result.warnings == [warning]
    manifest = json.loads(result.manifest_path.read_text())
    assert manifest["warnings"] == [warning]
    want = sorted(path for path in expected if path != "sub/nested.bin")
    assert _archive_names(result.backup_path) == want
    assert sorted(entry["path"] for entry in manifest["files"]) == want
    assert b"OUTSIDE-THE-SOURCE" not in decompressed_tar_bytes(result.backup_path)
    assert verify_backup(result.backup_path).ok
    state = dir_state(backups)
    assert {name: state[name] for name in before} == before
    assert _partials(tmp_path) == []


# --- the backup directory vanishing mid-backup -------------------------------------------


def _vanish(backups: Path, how: str, moved: Path) -> tuple[list[list[str]], Callable[[], None]]:
    """Return a record of what the backup directory held when it vanished (filled in
    then) and the action that makes it vanish: renamed to ``moved``, or removed with
    shutil.rmtree. The action acts once."""
    seen: list[list[str]] = []

    def vanish() -> None:
        if seen:
            return
        seen.append(sorted(os.listdir(backups)))
        if how == "renamed":
            os.rename(backups, moved)
        else:
            shutil.rmtree(backups)

    return seen, vanish


@pytest.mark.parametrize("compression", ["gz", ""])
@pytest.mark.parametrize("how", ["renamed", "removed"])
def test_backup_directory_vanishing_mid_backup_fails_cleanly(tmp_path: Path, setup, how: str, compression: str) -> None:
    # Fault injection: the progress callback, called once the first entry has been
    # written, makes the backup directory vanish (a real rename or removal).
    source, _expected, backups, before = setup
    moved = tmp_path / "moved-away"
    seen, vanish = _vanish(backups, how, moved)
    result = create_backup(
        BackupConfig(source, backups, compression=compression), progress=lambda done, done_bytes: vanish()
    )

    assert len(seen) == 1
    assert seen[0] == sorted([*before, partial_name(result.backup_id)])  # it was mid-write
    assert result.success is False
    partial_manifest = backups / partial_name(f"{result.backup_id}.manifest.json")
    assert result.error == f"{partial_manifest}: cannot write backup: No such file or directory"
    assert result.backup_path is None and result.manifest_path is None
    assert not backups.exists()  # nothing re-created it
    assert list_backups(backups) == []
    if how == "removed":
        assert listing(tmp_path).count("moved-away") == 0
        assert _partials(tmp_path) == [] and _backup_files(tmp_path) == []
        return
    # The directory lives on elsewhere, with the earlier backup intact. The writer
    # cannot name its half-written archive any more (its directory moved), so it
    # stays there as a dead writer's partial, which is never listed and which the
    # next run in that directory removes.
    assert sorted(_backup_files(tmp_path)) == sorted(f"moved-away/{name}" for name in before)
    assert [info.archive_path.name for info in list_backups(moved)] == [n for n in before if n.endswith(".tar.gz")]
    assert _partials(tmp_path) == [f"moved-away/{partial_name(result.backup_id)}"]
    assert clean_leftovers(moved) == [partial_name(result.backup_id)]
    assert dir_state(moved) == before
    for info in list_backups(moved):
        assert verify_backup(info.archive_path).ok


def test_backup_directory_vanishing_mid_backup_through_the_cli(
    tmp_path: Path, setup, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # Fault injection: the command line reads its source through LOCAL_FILESYSTEM; its
    # read_into makes the backup directory vanish (removed with shutil.rmtree) right
    # after the first read of a file, when the archive is being written.
    source, _expected, backups, _before = setup
    seen, vanish = _vanish(backups, "removed", tmp_path / "unused")
    monkeypatch.setattr(LOCAL_FILESYSTEM, "read_into", AfterReadFileSystem(source / "top.txt", vanish).read_into)
    code, out, err = run_cli(capsys, "create", str(source), str(backups))
    monkeypatch.undo()
    assert len(seen) == 1 and LOCK_NAME in seen[0]
    assert any(name.startswith(f"{PARTIAL_PREFIX}backup_") for name in seen[0])  # it was mid-write
    assert code == 1 and out == ""
    assert err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith(f"obs-backup: error: {backups}/{PARTIAL_PREFIX}backup_")
    assert err.endswith(".manifest.json.partial: cannot write backup: No such file or directory\n")
    assert not backups.exists()
    assert _partials(tmp_path) == [] and _backup_files(tmp_path) == []


# --- a read-only backup directory ------------------------------------------------------


def _read_only(monkeypatch: pytest.MonkeyPatch, backups: Path) -> list[str]:
    """For the command line, which makes its own storage: os.open of anything in
    ``backups`` for writing or creating fails with EROFS, as on a read-only mount (as
    root, chmod cannot make a directory read-only, and we cannot mount). The first such
    open is the lock file's. Return the names refused."""
    real_open = os.open
    refused: list[str] = []

    def open_(path, flags, mode=0o777, *, dir_fd=None):
        name = os.fspath(path)
        if os.path.dirname(name) == str(backups) and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT):
            refused.append(os.path.basename(name))
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), name)
        return real_open(path, flags, mode, dir_fd=dir_fd)

    monkeypatch.setattr(os, "open", open_)
    return refused


def test_read_only_backup_directory_fails_cleanly(
    tmp_path: Path, setup, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # Fault injection: for the library, the storage refuses every new object with EROFS
    # (a FaultyStorage around the directory); for the command line, see _read_only.
    source, _expected, backups, before = setup
    storage = FaultyStorage(LocalStorage(backups), Fault("begin", errno.EROFS, repeat=True))
    result = create_backup(
        BackupConfig(source, backups), now=fixed_now(datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC)), storage=storage
    )
    assert storage.called("begin") == ["backup_20240102_030405.tar.gz"]  # the archive, claimed first
    refused = _read_only(monkeypatch, backups)
    code, out, err = run_cli(capsys, "create", str(source), str(backups))
    monkeypatch.undo()

    assert result.success is False
    assert result.error == f"{backups}/backup_20240102_030405.tar.gz: cannot write backup: Read-only file system"
    assert result.backup_path is None
    assert refused == [LOCK_NAME]
    assert code == 1 and out == ""
    assert err == f"obs-backup: error: {backups / LOCK_NAME}: cannot create lock file: Read-only file system\n"
    assert dir_state(backups) == before
    _assert_earlier_untouched(tmp_path, backups, before)


def test_the_earlier_backup_really_is_checked(tmp_path: Path, setup) -> None:
    """_assert_earlier_untouched can fail: one changed byte in the earlier archive is seen."""
    _source, _expected, backups, before = setup
    _assert_earlier_untouched(tmp_path, backups, before)
    archive = next(backups / name for name in before if name.endswith(".tar.gz"))
    data = bytearray(archive.read_bytes())
    data[len(data) // 2] ^= 0x01
    archive.write_bytes(bytes(data))
    with pytest.raises(AssertionError):
        _assert_earlier_untouched(tmp_path, backups, before)
