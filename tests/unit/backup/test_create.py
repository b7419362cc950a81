"""Tests for backup.create: execute_backup carrying out a plan, through its storage.

Storage faults come from ``support.storage.FaultyStorage`` around a ``LocalStorage`` in
``tmp_path`` (we run as root: a read-only directory would not stop us, and no test can
fill a real disk); source faults from ``support.sources``. Both are passed in through
the plan, as the library's seams.
"""

from __future__ import annotations

import errno
import hashlib
import os
from datetime import UTC, datetime
from pathlib import Path

import pytest

from backup.config import BackupConfig
from backup.create import execute_backup
from backup.fstree import LOCAL_FILESYSTEM, FileSystem
from backup.manifest import load_manifest
from backup.plan import BackupPlan, plan_backup
from backup.storage import LocalStorage, ObjectRef
from backup.storage.base import BackupStorage
from backup.storage.local import partial_name
from backup.stream.tarreader import read_archive_marker
from support.sources import RefusingFileSystem
from support.storage import Fault, FaultyStorage

MOMENT = datetime(2024, 5, 6, 7, 8, 9, tzinfo=UTC)
ID = "backup_20240506_070809"


@pytest.fixture
def source(tmp_path: Path) -> Path:
    root = tmp_path / "source"
    (root / "sub").mkdir(parents=True)
    (root / "a.txt").write_bytes(b"alpha\n")
    (root / "sub" / "b.bin").write_bytes(os.urandom(5000))
    return root


def _plan(
    source: Path,
    backups: Path,
    storage: BackupStorage | None = None,
    filesystem: FileSystem = LOCAL_FILESYSTEM,
    metadata: dict[str, str] | None = None,
    **settings: object,
) -> BackupPlan:
    config = BackupConfig(source, backups, **settings)  # type: ignore[arg-type]
    return plan_backup(config, metadata=metadata, now=lambda: MOMENT, storage=storage, filesystem=filesystem)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# --- what a backup writes ----------------------------------------------------------------


def test_a_backup_writes_its_archive_and_manifest_and_reports_them(source: Path, tmp_path: Path) -> None:
    backups = tmp_path / "backups"
    result = execute_backup(_plan(source, backups, compression="xz", metadata={"host": "db1"}))
    assert result.success, result.error
    archive, manifest_path = backups / f"{ID}.tar.xz", backups / f"{ID}.manifest.json"
    assert (result.backup_id, result.backup_path, result.manifest_path) == (ID, archive, manifest_path)
    assert sorted(os.listdir(backups)) == sorted([archive.name, manifest_path.name])
    assert result.archive_size == archive.stat().st_size
    assert result.entry_count == 3
    manifest = load_manifest(manifest_path)
    assert manifest.to_dict() == result.manifest.to_dict()  # type: ignore[union-attr]
    assert manifest.archive is not None
    assert (manifest.archive.name, manifest.archive.size, manifest.archive.checksum, manifest.archive.compression) == (
        archive.name,
        archive.stat().st_size,
        _sha256(archive),
        "xz",
    )
    assert [entry.path for entry in manifest.files] == ["a.txt", "sub", "sub/b.bin"]
    assert manifest.created_at == MOMENT.astimezone().isoformat()
    assert manifest.metadata == {"host": "db1"}
    assert read_archive_marker(ObjectRef(LocalStorage(backups), archive.name, str(archive))) == ID


def test_the_plan_s_problems_are_the_backup_s_warnings(source: Path, tmp_path: Path) -> None:
    """A socket the walk left out is a warning of the backup and of its manifest; a FIFO
    beside it is archived, and is no problem."""
    import socket

    os.mkfifo(source / "pipe")
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(str(source / "sock"))
    try:
        result = execute_backup(_plan(source, tmp_path / "backups"))
    finally:
        listener.close()
    assert result.success, result.error
    expected = f"{source / 'sock'}: is a socket; not archived (sockets cannot be restored)"
    assert result.warnings == [expected]
    assert result.manifest is not None and result.manifest.warnings == [expected]
    entries = result.manifest.entry_map()
    assert entries["pipe"].type == "fifo" and "sock" not in entries


def test_without_a_manifest_only_the_archive_is_written(source: Path, tmp_path: Path) -> None:
    storage = FaultyStorage(LocalStorage(tmp_path / "backups"))
    result = execute_backup(_plan(source, tmp_path / "backups", storage, include_manifest=False))
    assert result.success, result.error
    assert result.manifest_path is None
    assert storage.called("begin") == [f"{ID}.tar.gz"]
    assert os.listdir(tmp_path / "backups") == [f"{ID}.tar.gz"]


def test_the_manifest_is_committed_before_the_archive(source: Path, tmp_path: Path) -> None:
    """The archive under its final name is the moment the backup exists, so it comes
    last: an archive is never visible without the manifest that describes it."""
    storage = FaultyStorage(LocalStorage(tmp_path / "backups"))
    result = execute_backup(_plan(source, tmp_path / "backups", storage))
    assert result.success, result.error
    assert storage.called("begin") == [f"{ID}.tar.gz", f"{ID}.manifest.json"]
    assert storage.called("commit") == [f"{ID}.manifest.json", f"{ID}.tar.gz"]
    assert storage.called("delete") == []


# --- claims ------------------------------------------------------------------------------


def test_backups_in_the_same_second_claim_the_next_free_ids(source: Path, tmp_path: Path) -> None:
    """The plan's id, then <id>-2, <id>-3: each archive and manifest named for the id it
    claimed, and each archive's mark naming it too."""
    backups = tmp_path / "backups"
    ids = [execute_backup(_plan(source, backups)).backup_id for _ in range(3)]
    assert ids == [ID, f"{ID}-2", f"{ID}-3"]
    storage = LocalStorage(backups)
    for backup_id in ids:
        assert load_manifest(backups / f"{backup_id}.manifest.json").backup_id == backup_id
        assert read_archive_marker(ObjectRef(storage, f"{backup_id}.tar.gz", backup_id)) == backup_id


def test_one_plan_executed_twice_makes_two_backups(source: Path, tmp_path: Path) -> None:
    """A plan names the id it will try first; executing it again claims the next."""
    plan = _plan(source, tmp_path / "backups")
    assert [execute_backup(plan).backup_id for _ in range(2)] == [ID, f"{ID}-2"]


def test_an_id_held_by_a_live_writer_is_not_taken(source: Path, tmp_path: Path) -> None:
    """Another process still writing <id> holds its claim: this backup becomes <id>-2,
    and the other's partial object is left alone."""
    backups = tmp_path / "backups"
    storage = LocalStorage(backups)
    storage.ensure()
    other = storage.begin(f"{ID}.tar.zst", claim=ID)
    try:
        result = execute_backup(_plan(source, backups))
        assert result.backup_id == f"{ID}-2"
        assert storage.claimed(ID)
        assert (backups / partial_name(ID)).exists()
    finally:
        other.abort()


def test_a_dead_writer_s_leftovers_are_removed_first(source: Path, tmp_path: Path) -> None:
    """A partial object no live writer holds (a killed run's) is removed, and its id is
    free again."""
    backups = tmp_path / "backups"
    backups.mkdir()
    (backups / partial_name(ID)).write_bytes(b"half an archive")
    result = execute_backup(_plan(source, backups))
    assert result.backup_id == ID
    assert sorted(os.listdir(backups)) == [f"{ID}.manifest.json", f"{ID}.tar.gz"]


# --- nothing is left behind by a failure -------------------------------------------------


@pytest.mark.parametrize(
    ("fault", "failed_name"),
    [
        (Fault("write", errno.ENOSPC, room=2000, names="*.tar.gz"), f"{ID}.tar.gz"),
        (Fault("commit", errno.ENOSPC, names="*.manifest.json"), f"{ID}.manifest.json"),
        (Fault("commit", errno.EIO, names="*.tar.gz"), f"{ID}.tar.gz"),
        (Fault("begin", errno.EACCES, names="*.manifest.json"), f"{ID}.manifest.json"),
    ],
    ids=["disk-full-while-archiving", "manifest-commit", "archive-commit", "manifest-begin"],
)
def test_a_storage_failure_leaves_nothing_that_looks_like_a_backup(
    source: Path, tmp_path: Path, fault: Fault, failed_name: str
) -> None:
    backups = tmp_path / "backups"
    storage = FaultyStorage(LocalStorage(backups), fault)
    result = execute_backup(_plan(source, backups, storage))
    assert result.success is False
    assert fault.fired == 1
    assert result.error == f"{backups / failed_name}: cannot write backup: {os.strerror(fault.error)}"  # type: ignore[arg-type]
    assert result.backup_id == ID and result.backup_path is None and result.manifest_path is None
    assert os.listdir(backups) == []  # no archive, no manifest, no partial object
    assert not LocalStorage(backups).claimed(ID)


def test_a_manifest_committed_before_a_failed_archive_commit_is_removed(source: Path, tmp_path: Path) -> None:
    backups = tmp_path / "backups"
    storage = FaultyStorage(LocalStorage(backups), Fault("commit", errno.EIO, names="*.tar.gz"))
    execute_backup(_plan(source, backups, storage))
    assert storage.called("commit") == [f"{ID}.manifest.json", f"{ID}.tar.gz"]
    assert storage.called("delete") == [f"{ID}.manifest.json"]


def test_a_manifest_that_could_not_be_removed_is_a_leftover_the_next_run_removes(source: Path, tmp_path: Path) -> None:
    backups = tmp_path / "backups"
    storage = FaultyStorage(
        LocalStorage(backups), Fault("commit", errno.EIO, names="*.tar.gz"), Fault("delete", errno.EIO)
    )
    assert execute_backup(_plan(source, backups, storage)).success is False
    assert os.listdir(backups) == [f"{ID}.manifest.json"]  # a manifest whose archive never landed
    result = execute_backup(_plan(source, backups))
    assert result.success, result.error
    assert result.backup_id == ID
    assert sorted(os.listdir(backups)) == [f"{ID}.manifest.json", f"{ID}.tar.gz"]
    assert load_manifest(backups / f"{ID}.manifest.json").archive.size == (backups / f"{ID}.tar.gz").stat().st_size  # type: ignore[union-attr]


@pytest.mark.parametrize("compression", ["gz", ""])
def test_a_source_failure_leaves_nothing_and_keeps_earlier_backups(
    source: Path, tmp_path: Path, compression: str
) -> None:
    backups = tmp_path / "backups"
    earlier = execute_backup(_plan(source, backups, compression=compression))
    before = {name: (backups / name).read_bytes() for name in os.listdir(backups)}
    victim = source / "sub" / "b.bin"
    result = execute_backup(_plan(source, backups, filesystem=RefusingFileSystem(victim), compression=compression))
    assert result.success is False
    assert result.error == f"{victim}: cannot be opened: Permission denied"
    assert result.backup_id == f"{ID}-2"
    assert {name: (backups / name).read_bytes() for name in os.listdir(backups)} == before
    assert earlier.success


def test_a_failed_backup_returns_rather_than_raises(source: Path, tmp_path: Path) -> None:
    """Even the location itself failing is a failed result with one line."""
    (tmp_path / "backups").write_bytes(b"a file where the directory should be")
    result = execute_backup(_plan(source, tmp_path / "backups"))
    assert result.success is False
    assert result.error is not None and "\n" not in result.error
    assert str(tmp_path / "backups") in result.error
