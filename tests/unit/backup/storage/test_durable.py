"""Tests for backup.storage.durable: atomic, private file writes and no-replace linking."""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

import pytest

from backup.storage import durable
from backup.storage.durable import atomic_write_bytes, fsync_directory, link_no_replace


def test_atomic_write_creates_file(tmp_path: Path) -> None:
    """A new file gets exactly the bytes, and nothing else is left in the directory."""
    target = tmp_path / "f.json"
    atomic_write_bytes(target, b'{"a": 1}')
    assert target.read_bytes() == b'{"a": 1}'
    assert os.listdir(tmp_path) == ["f.json"]


def test_atomic_write_replaces_content(tmp_path: Path) -> None:
    """An existing file is replaced whole, by a new inode (readers of the old one are unaffected)."""
    target = tmp_path / "f"
    target.write_bytes(b"old content that is longer")
    old_inode = target.stat().st_ino
    with open(target, "rb") as reader:
        atomic_write_bytes(target, b"new")
        assert reader.read() == b"old content that is longer"
    assert target.read_bytes() == b"new"
    assert target.stat().st_ino != old_inode
    assert os.listdir(tmp_path) == ["f"]


def test_atomic_write_large_payload(tmp_path: Path) -> None:
    """Several MiB are written completely."""
    data = os.urandom(3 * 1024 * 1024 + 17)
    atomic_write_bytes(tmp_path / "big", data)
    assert (tmp_path / "big").read_bytes() == data


def test_atomic_write_private_under_umask_zero(tmp_path: Path, umask_zero: None) -> None:
    """Files are 0600 even with umask 0, and even when replacing a 0644 file."""
    target = tmp_path / "f"
    atomic_write_bytes(target, b"x")
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    target.chmod(0o644)
    atomic_write_bytes(target, b"y")
    assert stat.S_IMODE(target.stat().st_mode) == 0o600


def test_atomic_write_explicit_mode(tmp_path: Path, umask_zero: None) -> None:
    """The mode argument is honoured exactly."""
    atomic_write_bytes(tmp_path / "f", b"x", mode=0o640)
    assert stat.S_IMODE((tmp_path / "f").stat().st_mode) == 0o640


def test_write_failure_keeps_old_file_and_leaves_no_temp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A full disk mid-write (some bytes written, then ENOSPC) leaves the old file intact."""
    target = tmp_path / "f"
    target.write_bytes(b"old")
    real_write = os.write
    calls: list[int] = []

    def full_disk(fd: int, data: bytes | memoryview) -> int:
        calls.append(len(data))
        if len(calls) == 1:
            return real_write(fd, bytes(data[:100]))  # a short write first
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    with monkeypatch.context() as patch:
        patch.setattr(durable.os, "write", full_disk)
        with pytest.raises(OSError) as info:
            atomic_write_bytes(target, b"n" * 1000)
    assert info.value.errno == errno.ENOSPC
    assert calls == [1000, 900]
    assert target.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["f"]


def test_rename_failure_leaves_no_temp(tmp_path: Path) -> None:
    """If the final rename fails (a directory is in the way), the temp file is removed."""
    target = tmp_path / "d"
    target.mkdir()
    (target / "inside").write_bytes(b"")
    with pytest.raises(OSError):
        atomic_write_bytes(target, b"x")
    assert os.listdir(tmp_path) == ["d"]
    assert os.listdir(target) == ["inside"]


def test_atomic_write_into_missing_directory(tmp_path: Path) -> None:
    """A missing directory is an OSError and creates nothing."""
    with pytest.raises(FileNotFoundError):
        atomic_write_bytes(tmp_path / "missing" / "f", b"x")
    assert os.listdir(tmp_path) == []


def test_link_no_replace_moves_file(tmp_path: Path) -> None:
    """The file gets the new name and loses the old one."""
    (tmp_path / "src").write_bytes(b"data")
    link_no_replace(tmp_path / "src", tmp_path / "dst")
    assert os.listdir(tmp_path) == ["dst"]
    assert (tmp_path / "dst").read_bytes() == b"data"


def test_link_no_replace_refuses_existing_target(tmp_path: Path) -> None:
    """An existing target is never replaced; both files stay as they were."""
    (tmp_path / "src").write_bytes(b"new")
    (tmp_path / "dst").write_bytes(b"old")
    with pytest.raises(FileExistsError):
        link_no_replace(tmp_path / "src", tmp_path / "dst")
    assert (tmp_path / "dst").read_bytes() == b"old"
    assert (tmp_path / "src").read_bytes() == b"new"


def test_link_no_replace_refuses_dangling_symlink_target(tmp_path: Path) -> None:
    """Even a dangling symlink at the target name counts as existing."""
    (tmp_path / "src").write_bytes(b"new")
    os.symlink("nowhere", tmp_path / "dst")
    with pytest.raises(FileExistsError):
        link_no_replace(tmp_path / "src", tmp_path / "dst")
    assert os.readlink(tmp_path / "dst") == "nowhere"


@pytest.mark.parametrize("code", [errno.EPERM, errno.EXDEV])
def test_link_no_replace_fallback_without_hard_links(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, code: int
) -> None:
    """Where hard links are unsupported it renames, but still refuses an existing target."""

    def no_links(*args: object, **kwargs: object) -> None:
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(durable.os, "link", no_links)
    (tmp_path / "a").write_bytes(b"a")
    link_no_replace(tmp_path / "a", tmp_path / "b")
    assert os.listdir(tmp_path) == ["b"]
    (tmp_path / "c").write_bytes(b"c")
    with pytest.raises(FileExistsError):
        link_no_replace(tmp_path / "c", tmp_path / "b")
    assert (tmp_path / "b").read_bytes() == b"a"
    assert (tmp_path / "c").read_bytes() == b"c"


def test_link_no_replace_other_errors_propagate(tmp_path: Path) -> None:
    """A missing source is not hidden behind the fallback."""
    with pytest.raises(FileNotFoundError):
        link_no_replace(tmp_path / "missing", tmp_path / "dst")
    assert os.listdir(tmp_path) == []


def test_fsync_directory(tmp_path: Path) -> None:
    """fsync_directory works on a directory and refuses a file."""
    fsync_directory(tmp_path)
    (tmp_path / "f").write_bytes(b"")
    with pytest.raises(NotADirectoryError):
        fsync_directory(tmp_path / "f")
