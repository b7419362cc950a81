"""Ordinary deployment symlinks (``certs -> /etc/ssl/certs``, ``current ->
../releases/42``): a backup holding them verifies, restores with
``--allow-external-links``, and restores other paths without it.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from backup import BackupConfig, create_backup, restore_backup, verify_backup
from backup.cli import main


@pytest.fixture
def deployed(tmp_path: Path) -> Path:
    source = tmp_path / "app"
    (source / "config").mkdir(parents=True)
    (source / "config" / "app.toml").write_bytes(b"port = 8080\n")
    os.symlink("/etc/ssl/certs", source / "certs")
    os.symlink("../releases/42", source / "current")
    return source


def test_a_backup_with_links_leaving_the_tree_verifies(tmp_path: Path, deployed: Path) -> None:
    """Verify checks what was archived: a symlink is a symlink, wherever it points."""
    result = create_backup(BackupConfig(deployed, tmp_path / "backups"))
    assert result.success, result.error
    report = verify_backup(result.backup_path)
    assert report.ok, report.lines()
    assert report.checked_entries == 4


def test_restoring_other_paths_needs_no_permission_for_those_links(tmp_path: Path, deployed: Path) -> None:
    result = create_backup(BackupConfig(deployed, tmp_path / "backups"))
    restored = restore_backup(result.backup_path, tmp_path / "restored", paths=["config"])
    assert restored.success, restored.error
    assert (tmp_path / "restored" / "config" / "app.toml").read_bytes() == b"port = 8080\n"
    assert sorted(os.listdir(tmp_path / "restored")) == ["config"]


def test_restoring_the_links_themselves_names_the_flag_that_allows_it(
    tmp_path: Path, deployed: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    result = create_backup(BackupConfig(deployed, tmp_path / "backups"))
    refused = restore_backup(result.backup_path, tmp_path / "refused")
    assert refused.success is False
    assert "--allow-external-links" in (refused.error or "")
    assert not (tmp_path / "refused").exists()
    assert main(["restore", str(result.backup_path), str(tmp_path / "cli")]) == 1
    assert "--allow-external-links" in capsys.readouterr().err
    allowed = restore_backup(result.backup_path, tmp_path / "allowed", allow_external_links=True)
    assert allowed.success, allowed.error
    assert os.readlink(tmp_path / "allowed" / "certs") == "/etc/ssl/certs"
    assert os.readlink(tmp_path / "allowed" / "current") == "../releases/42"
    assert main(["verify", str(result.backup_path)]) == 0
