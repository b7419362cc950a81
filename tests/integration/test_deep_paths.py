"""Deep and long paths: a tree whose paths exceed the 4096 bytes one system call
accepts backs up and restores (ours, and GNU tar's archives of it); a hostile member
hundreds of thousands of components deep is refused at once, in one line.
"""

from __future__ import annotations

import io
import os
import subprocess
import tarfile
from pathlib import Path

import pytest

from backup import BackupConfig, create_backup, restore_backup, verify_backup
from backup.cli import main

from .conftest import GNU_TAR

COMPONENT = "d" * 200
DEPTH = 30  # 30 * 201 bytes: far past PATH_MAX


def _make_deep(root: Path) -> str:
    """Build root/ddd.../ddd.../leaf.txt DEPTH levels down without ever naming the whole
    path (the kernel would refuse it); return the leaf's relative path."""
    root.mkdir(parents=True)
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for _ in range(DEPTH):
            os.mkdir(COMPONENT, dir_fd=fd)
            child = os.open(COMPONENT, os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = child
        leaf = os.open("leaf.txt", os.O_WRONLY | os.O_CREAT, 0o640, dir_fd=fd)
        os.write(leaf, b"at the bottom\n")
        os.close(leaf)
    finally:
        os.close(fd)
    return "/".join([COMPONENT] * DEPTH + ["leaf.txt"])


def _read_deep(root: Path, relative: str) -> bytes:
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        *dirs, name = relative.split("/")
        for part in dirs:
            child = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
            os.close(fd)
            fd = child
        leaf = os.open(name, os.O_RDONLY, dir_fd=fd)
        try:
            return os.read(leaf, 1 << 16)
        finally:
            os.close(leaf)
    finally:
        os.close(fd)


def test_a_tree_deeper_than_path_max_backs_up_verifies_and_restores(tmp_path: Path) -> None:
    leaf = _make_deep(tmp_path / "source")
    assert len(str(tmp_path / "source" / leaf)) > 4096
    result = create_backup(BackupConfig(tmp_path / "source", tmp_path / "backups"))
    assert result.success, result.error
    assert leaf in result.manifest.entry_map()
    assert verify_backup(result.backup_path).ok
    restored = restore_backup(result.backup_path, tmp_path / "restored")
    assert restored.success, restored.error
    assert _read_deep(tmp_path / "restored", leaf) == b"at the bottom\n"


def test_gnu_tars_archive_of_a_tree_deeper_than_path_max_restores(tmp_path: Path) -> None:
    """GNU tar archives such a tree (it walks relative to descriptors); we restore it."""
    leaf = _make_deep(tmp_path / "source")
    archive = tmp_path / "deep-gnu.tar"
    made = subprocess.run([GNU_TAR, "-cf", str(archive), "-C", str(tmp_path / "source"), "."], capture_output=True)
    assert made.returncode == 0, made.stderr
    restored = restore_backup(archive, tmp_path / "restored")
    assert restored.success, restored.error
    assert _read_deep(tmp_path / "restored", leaf) == b"at the bottom\n"


def _hostile_deep_archive(path: Path, components: int) -> Path:
    info = tarfile.TarInfo("x")
    info.pax_headers = {"path": "/".join(["a"] * components)}
    info.size = 4
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tf:
        tf.addfile(info, io.BytesIO(b"deep"))
    path.write_bytes(buffer.getvalue())
    return path


@pytest.mark.timeout(30)
def test_a_member_200000_components_deep_is_refused_at_once(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A 1.5 KB archive used to keep verify and restore busy for minutes (every prefix of
    the name was rebuilt per component). Now: refused in one line, nothing written."""
    archive = _hostile_deep_archive(tmp_path / "deep.tar", 200_000)
    assert archive.stat().st_size < 500_000
    target = tmp_path / "target"
    restored = restore_backup(archive, target)
    assert restored.success is False
    assert "is 200000 directories deep, more than the 1024 allowed" in (restored.error or "")
    assert len(restored.error or "") < 500
    assert not target.exists()
    report = verify_backup(archive)
    assert not report.ok and any("200000 directories deep" in line for line in report.lines())
    assert main(["restore", str(archive), str(target)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "directories deep" in err and "internal error" not in err


@pytest.mark.timeout(60)
def test_members_just_under_the_depth_limit_are_checked_in_linear_time(tmp_path: Path) -> None:
    """Many members 1,000 components deep restore (they are legal), and quickly."""
    members = []
    base = "/".join(f"{i % 10}" for i in range(1000))
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for i in range(300):
            info = tarfile.TarInfo(f"{base}/f{i}")
            info.size = 1
            tf.addfile(info, io.BytesIO(b"x"))
            members.append(info.name)
    archive = tmp_path / "deep-legal.tar"
    archive.write_bytes(buffer.getvalue())
    try:
        restored = restore_backup(archive, tmp_path / "restored")
        assert restored.success, restored.error
        assert _read_deep(tmp_path / "restored", members[-1]) == b"x"
    finally:
        # pytest's clean-up of old temporary directories recurses once per level and
        # would fail on 1,000 of them; GNU rm does not.
        subprocess.run(["rm", "-rf", str(tmp_path / "restored")], check=True)
