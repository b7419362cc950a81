"""plan_backup / plan_restore decide without writing; execute_plan (in backup.core)
carries the plan out: its id, its names, its storage and its source file system."""

import dataclasses
import json
import os
from datetime import UTC, datetime
from pathlib import Path

import pytest

import backup.core
import backup.plan
from backup import BackupConfig, BackupPlan, ConfigError, create_backup, execute_plan, plan_backup, plan_restore
from backup.errors import ArchiveError
from backup.fstree import LOCAL_FILESYSTEM
from backup.storage import LocalStorage
from support.sources import CountingFileSystem
from support.storage import MemoryStorage, read_object

FIXED = datetime(2026, 3, 8, 7, 0, 0, tzinfo=UTC)


def _tree(root: Path) -> Path:
    (root / "keep").mkdir(parents=True)
    (root / "keep" / "a.txt").write_bytes(b"aaaa")
    (root / "cache").mkdir()
    (root / "cache" / "big.bin").write_bytes(b"x" * 100)
    (root / "note.log").write_bytes(b"log")
    return root


def test_plan_lists_entries_exclusions_and_paths_without_writing(tmp_path: Path) -> None:
    source = _tree(tmp_path / "src")
    backup_dir = tmp_path / "backups"
    config = BackupConfig(source, backup_dir, exclude=["cache/", "*.log"], compression="zst")

    plan = plan_backup(config, now=lambda: FIXED)

    assert [(e.path, e.kind, e.size) for e in plan.entries] == [("keep", "dir", 0), ("keep/a.txt", "file", 4)]
    assert [(x.path, x.reason) for x in plan.excluded] == [
        ("cache", "matches exclude pattern 'cache/'"),
        ("note.log", "matches exclude pattern '*.log'"),
    ]
    assert plan.total_bytes == 4
    assert plan.file_count == 1
    assert plan.backup_id == "backup_20260308_070000"
    assert (plan.archive_name, plan.manifest_name) == (
        "backup_20260308_070000.tar.zst",
        "backup_20260308_070000.manifest.json",
    )
    assert plan.archive_path == backup_dir / "backup_20260308_070000.tar.zst"
    assert plan.manifest_path == backup_dir / "backup_20260308_070000.manifest.json"
    assert not backup_dir.exists()


def test_plan_is_frozen(tmp_path: Path) -> None:
    plan = plan_backup(BackupConfig(_tree(tmp_path / "src"), tmp_path / "b"), now=lambda: FIXED)

    with pytest.raises(AttributeError):
        plan.backup_id = "other"  # type: ignore[misc]


def test_plan_refuses_naive_clock(tmp_path: Path) -> None:
    with pytest.raises(ConfigError):
        plan_backup(BackupConfig(_tree(tmp_path / "src"), tmp_path / "b"), now=lambda: datetime(2026, 1, 1))


def test_execute_plan_writes_what_was_planned(tmp_path: Path) -> None:
    source = _tree(tmp_path / "src")
    plan = plan_backup(BackupConfig(source, tmp_path / "b", exclude=["cache/"]), now=lambda: FIXED)

    result = execute_plan(plan)

    assert result.success, result.error
    assert result.backup_path == plan.archive_path
    assert result.manifest is not None
    assert [e.path for e in result.manifest.files] == [e.path for e in plan.entries]


def test_a_plan_is_data_and_its_paths_are_derived() -> None:
    """What a backup plan holds; where it would write is computed from its storage and
    names, not stored beside them."""
    assert [f.name for f in dataclasses.fields(BackupPlan)] == [
        "config",
        "backup_id",
        "created_at",
        "storage",
        "archive_name",
        "manifest_name",
        "entries",
        "excluded",
        "problems",
        "source_root",
        "metadata",
        "filesystem",
        "notices",
        "vanished",
        "recipients",
        "sidecar_name",
    ]
    assert isinstance(BackupPlan.archive_path, property)
    assert isinstance(BackupPlan.manifest_path, property)


def test_the_default_storage_is_the_backup_directory_and_the_default_source_the_local_disk(tmp_path: Path) -> None:
    backup_dir = tmp_path / "b"
    plan = plan_backup(BackupConfig(_tree(tmp_path / "src"), backup_dir), now=lambda: FIXED)

    assert isinstance(plan.storage, LocalStorage)
    assert plan.storage.local_path(plan.archive_name) == backup_dir / plan.archive_name
    assert plan.filesystem is LOCAL_FILESYSTEM
    assert not backup_dir.exists()


def test_a_plan_without_a_manifest_names_none(tmp_path: Path) -> None:
    config = BackupConfig(_tree(tmp_path / "src"), tmp_path / "b", include_manifest=False, compression="none")

    plan = plan_backup(config, now=lambda: FIXED)

    assert (plan.archive_name, plan.manifest_name, plan.manifest_path) == ("backup_20260308_070000.tar", None, None)


def test_a_plan_keeps_the_storage_and_file_system_it_was_given_and_uses_neither(tmp_path: Path) -> None:
    storage = MemoryStorage()
    filesystem = CountingFileSystem()

    plan = plan_backup(
        BackupConfig(_tree(tmp_path / "src"), tmp_path / "b"), now=lambda: FIXED, storage=storage, filesystem=filesystem
    )

    assert plan.storage is storage and plan.filesystem is filesystem
    assert storage.list_objects() == []
    assert sum(filesystem.opens.values()) == 0  # a plan reads metadata, never contents
    assert not (tmp_path / "b").exists()


# -- the executor carries out the plan it is given ---------------------------------------------


def test_execute_plan_lives_in_core_and_is_exported() -> None:
    """Dispatching plans to executors is the layer above both: not in backup.plan."""
    assert execute_plan is backup.core.execute_plan
    assert "execute_plan" not in vars(backup.plan)


def test_the_executor_uses_the_plans_id_and_time_not_the_clock(tmp_path: Path) -> None:
    """Planned in 2026-03, executed now: the backup is the planned one."""
    plan = plan_backup(BackupConfig(_tree(tmp_path / "src"), tmp_path / "b"), now=lambda: FIXED)

    result = execute_plan(plan)

    assert result.success, result.error
    assert result.backup_id == plan.backup_id == "backup_20260308_070000"
    assert (result.backup_path, result.manifest_path) == (plan.archive_path, plan.manifest_path)
    assert result.manifest is not None and result.manifest.created_at == plan.created_at.isoformat()
    assert set(os.listdir(tmp_path / "b")) == {plan.archive_name, plan.manifest_name}


def test_the_executor_uses_an_id_and_names_it_did_not_compute(tmp_path: Path) -> None:
    """Not recomputed from the configuration's prefix or the clock."""
    planned = plan_backup(BackupConfig(_tree(tmp_path / "src"), tmp_path / "b"), now=lambda: FIXED)
    plan = dataclasses.replace(
        planned,
        backup_id="nightly_20200101_000000",
        archive_name="nightly_20200101_000000.tar.gz",
        manifest_name="nightly_20200101_000000.manifest.json",
    )

    result = execute_plan(plan)

    assert result.success, result.error
    assert result.backup_id == "nightly_20200101_000000"
    assert sorted(os.listdir(tmp_path / "b")) == [
        "nightly_20200101_000000.manifest.json",
        "nightly_20200101_000000.tar.gz",
    ]
    manifest = json.loads((tmp_path / "b" / "nightly_20200101_000000.manifest.json").read_text())
    assert (manifest["backup_id"], manifest["archive"]["name"]) == (
        "nightly_20200101_000000",
        "nightly_20200101_000000.tar.gz",
    )


def test_the_executor_writes_under_the_plans_names(tmp_path: Path) -> None:
    planned = plan_backup(BackupConfig(_tree(tmp_path / "src"), tmp_path / "b"), now=lambda: FIXED)
    plan = dataclasses.replace(planned, archive_name="backup_20260308_070000.tgz", manifest_name=None)

    result = execute_plan(plan)

    assert result.success, result.error
    assert os.listdir(tmp_path / "b") == ["backup_20260308_070000.tgz"]
    assert (result.backup_path, result.manifest_path) == (tmp_path / "b" / "backup_20260308_070000.tgz", None)


def test_two_plans_for_the_same_second_get_the_next_id_and_names_to_match(tmp_path: Path) -> None:
    """The one departure from the plan: its id is taken, so the executor claims the next."""
    config = BackupConfig(_tree(tmp_path / "src"), tmp_path / "b")
    first, second = (plan_backup(config, now=lambda: FIXED) for _ in range(2))
    assert first.backup_id == second.backup_id

    results = [execute_plan(first), execute_plan(second)]

    assert [r.backup_id for r in results] == ["backup_20260308_070000", "backup_20260308_070000-2"]
    assert results[1].backup_path == tmp_path / "b" / "backup_20260308_070000-2.tar.gz"
    assert results[1].manifest_path == tmp_path / "b" / "backup_20260308_070000-2.manifest.json"


def test_the_executor_writes_through_the_plans_storage_and_reads_through_its_file_system(tmp_path: Path) -> None:
    storage = MemoryStorage()
    filesystem = CountingFileSystem()
    plan = plan_backup(
        BackupConfig(_tree(tmp_path / "src"), tmp_path / "b"), now=lambda: FIXED, storage=storage, filesystem=filesystem
    )

    result = execute_plan(plan)

    assert result.success, result.error
    assert {o.name for o in storage.list_objects()} == {plan.archive_name, plan.manifest_name}
    manifest = json.loads(read_object(storage, "backup_20260308_070000.manifest.json"))
    assert sorted(e["path"] for e in manifest["files"]) == ["cache", "cache/big.bin", "keep", "keep/a.txt", "note.log"]
    assert sorted(os.path.basename(p) for p in filesystem.opens.elements()) == ["a.txt", "big.bin", "note.log"]
    assert not (tmp_path / "b").exists()


def test_restore_plan_reports_conflicts_and_writes_nothing(tmp_path: Path) -> None:
    source = _tree(tmp_path / "src")
    result = create_backup(BackupConfig(source, tmp_path / "b"))
    target = tmp_path / "target"
    (target / "keep").mkdir(parents=True)
    (target / "keep" / "a.txt").write_text("mine")

    plan = plan_restore(result.backup_path, target)

    assert {e.path for e in plan.entries} == {"keep", "keep/a.txt", "cache", "cache/big.bin", "note.log"}
    assert plan.conflicts == ("keep/a.txt",)
    assert plan.total_bytes == 107
    assert (target / "keep" / "a.txt").read_text() == "mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b", "src", "target"]


def test_restore_plan_selection_must_exist(tmp_path: Path) -> None:
    result = create_backup(BackupConfig(_tree(tmp_path / "src"), tmp_path / "b"))

    plan = plan_restore(result.backup_path, tmp_path / "t", paths=["keep"])
    assert [e.path for e in plan.entries] == ["keep", "keep/a.txt"]
    with pytest.raises(ConfigError, match="nothere: not in the backup"):
        plan_restore(result.backup_path, tmp_path / "t", paths=["nothere"])
    with pytest.raises(ConfigError, match=r"absolute or has '\.\.'"):
        plan_restore(result.backup_path, tmp_path / "t", paths=["../x"])


def test_restore_plan_of_missing_archive(tmp_path: Path) -> None:
    with pytest.raises(ArchiveError, match="archive not found"):
        plan_restore(tmp_path / "x.tar.gz", tmp_path / "t")
