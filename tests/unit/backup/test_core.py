"""The seed's own acceptance test, kept verbatim, plus the contract around it."""

from datetime import datetime, UTC
from pathlib import Path

from backup.core import BackupConfig, BackupResult, create_backup, restore_backup

# Below the seed's imports, which stay as the seed wrote them.
import io
import os
import tarfile

from backup import list_backups, verify_backup
from backup.storage import LocalStorage
from support.storage import MemoryStorage, read_object


def test_create_backup(tmp_path):
    # Setup
    source = tmp_path / "source"
    source.mkdir()
    (source / "test.txt").write_text("hello")

    backup_dir = tmp_path / "backups"

    config = BackupConfig(
        source_dir=source,
        backup_dir=backup_dir,
    )

    # Execute
    result = create_backup(config)

    # Verify
    assert result.success
    assert result.backup_path.exists()
    assert result.manifest is not None


def test_result_fields_match_the_seed(tmp_path: Path) -> None:
    source = tmp_path / "source"
    source.mkdir()
    (source / "test.txt").write_text("hello")
    fixed = datetime(2026, 11, 26, 3, 0, 5, tzinfo=UTC)

    result = create_backup(BackupConfig(source, tmp_path / "b"), metadata={"host": "db1"}, now=lambda: fixed)

    assert isinstance(result, BackupResult)
    assert result.error is None
    assert result.backup_id == "backup_20261126_030005"
    assert result.backup_path == tmp_path / "b" / "backup_20261126_030005.tar.gz"
    assert result.manifest_path == tmp_path / "b" / "backup_20261126_030005.manifest.json"
    assert result.manifest is not None
    assert result.manifest.metadata == {"host": "db1"}
    assert [(e.path, e.size) for e in result.manifest.files] == [("test.txt", 5)]
    assert result.manifest.created_at == fixed.astimezone().isoformat()
    assert result.duration_seconds >= 0


def test_operational_failure_is_returned_not_raised(tmp_path: Path) -> None:
    result = create_backup(BackupConfig(tmp_path / "missing", tmp_path / "b"))

    assert result.success is False
    assert result.error == f"{tmp_path / 'missing'}: source directory does not exist"
    assert not (tmp_path / "b").exists()


def test_unknown_compression_fails_before_writing(tmp_path: Path) -> None:
    (tmp_path / "src").mkdir()

    result = create_backup(BackupConfig(tmp_path / "src", tmp_path / "b", compression="lz4"))

    assert result.success is False
    assert "unknown compression 'lz4'" in (result.error or "")
    assert not (tmp_path / "b").exists()


def test_no_manifest_when_disabled(tmp_path: Path) -> None:
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "a").write_text("a")

    result = create_backup(BackupConfig(tmp_path / "src", tmp_path / "b", include_manifest=False))

    assert result.success
    assert result.manifest_path is None
    assert sorted(p.name for p in (tmp_path / "b").iterdir()) == [result.backup_path.name]


def test_restore_of_missing_archive_names_it(tmp_path: Path) -> None:
    result = restore_backup(tmp_path / "nope.tar.gz", tmp_path / "out")

    assert result.success is False
    assert result.error == f"{tmp_path / 'nope.tar.gz'}: archive not found"
    assert not (tmp_path / "out").exists()


# -- the storage seam ------------------------------------------------------------------------


def _source(tmp_path: Path) -> Path:
    source = tmp_path / "source"
    source.mkdir()
    (source / "test.txt").write_text("hello")
    return source


def test_create_backup_writes_through_the_storage_it_is_given(tmp_path: Path) -> None:
    """Everything the backup writes goes through storage=: config.backup_dir is not
    touched, and the backup is complete in the storage (listed, and verified)."""
    storage = MemoryStorage()
    fixed = datetime(2026, 11, 26, 3, 0, 5, tzinfo=UTC)

    result = create_backup(BackupConfig(_source(tmp_path), tmp_path / "b"), now=lambda: fixed, storage=storage)

    assert result.success, result.error
    assert result.backup_id == "backup_20261126_030005"
    assert [o.name for o in storage.list_objects()] == [
        "backup_20261126_030005.manifest.json",
        "backup_20261126_030005.tar.gz",
    ]
    assert not (tmp_path / "b").exists()
    with tarfile.open(fileobj=io.BytesIO(read_object(storage, "backup_20261126_030005.tar.gz"))) as archive:
        assert archive.getnames() == ["test.txt"]
        member = archive.extractfile("test.txt")
        assert member is not None and member.read() == b"hello"
    [listed] = list_backups(storage)
    assert (listed.backup_id, listed.file_count, listed.problem) == (result.backup_id, 1, None)
    assert verify_backup(listed.archive).ok


def test_create_backup_into_another_local_storage(tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"

    result = create_backup(BackupConfig(_source(tmp_path), tmp_path / "b"), storage=LocalStorage(elsewhere))

    assert result.success, result.error
    assert result.backup_path is not None and result.backup_path.parent == elsewhere
    assert result.manifest_path is not None and result.manifest_path.parent == elsewhere
    assert sorted(os.listdir(elsewhere)) == sorted([result.backup_path.name, result.manifest_path.name])
    assert not (tmp_path / "b").exists()


def test_a_failure_in_the_storage_is_a_failed_result_naming_it(tmp_path: Path) -> None:
    """A location that cannot be created fails the backup with one line, not an exception."""
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")

    result = create_backup(BackupConfig(_source(tmp_path), tmp_path / "b"), storage=LocalStorage(blocker / "b"))

    assert result.success is False
    assert result.error is not None and str(blocker) in result.error and "\n" not in result.error
    assert not (tmp_path / "b").exists()
