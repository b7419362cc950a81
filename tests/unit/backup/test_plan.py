"""plan_backup / plan_restore decide without writing; execute_plan carries the plan out."""

from datetime import UTC, datetime
from pathlib import Path

import pytest

from backup import BackupConfig, ConfigError, create_backup, execute_plan, plan_backup, plan_restore
from backup.errors import ArchiveError

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
