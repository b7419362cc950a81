"""Each source file is read once; files that change or fail while read are handled openly.

We run as root, so permission bits cannot make a file unreadable: faults are injected
through the source file system seam (``backup.fstree.FileSystem``), with the classes of
``support.sources`` passed as ``create_backup(config, filesystem=...)``: one refuses to
open a file, one fails a read half way, one changes a file right after its first read.
"""

from __future__ import annotations

import builtins
import hashlib
import io
import json
import os
import tarfile
from datetime import UTC, datetime
from pathlib import Path

import pytest

from backup import BackupConfig, BackupResult, create_backup, restore_backup, verify_backup
from backup.fstree import FileSystem
from support.sources import AfterReadFileSystem, CountingFileSystem, FailingReadFileSystem, RefusingFileSystem, path_of

from .conftest import backup, decompressed_tar_bytes, dir_state, fixed_now, listing, pattern_bytes, snapshot

CHUNK = 1 << 20
BIG_SIZE = 3 * CHUNK + 12345


def _files_under(root: Path) -> list[str]:
    return sorted(str(root / p) for p, v in snapshot(root).items() if v[0] == "file")


def _backup_through(filesystem: FileSystem, source: Path, backups: Path, **settings: object) -> BackupResult:
    """Run create_backup with the given source file system and insist it succeeded."""
    result = create_backup(BackupConfig(source, backups, **settings), filesystem=filesystem)  # type: ignore[arg-type]
    assert result.success, result.error
    assert result.backup_path is not None and result.backup_path.is_file()
    return result


def test_each_source_file_is_opened_exactly_once(tmp_path: Path, corpus, monkeypatch) -> None:
    source, _ = corpus
    source_prefix = str(source) + os.sep
    filesystem = CountingFileSystem()
    file_opens: list[str] = []
    other_opens: list[str] = []
    real_os_open = os.open
    real_builtin_open = builtins.open

    # Watching (not faking) os.open and open: every open of a source file, by path or by
    # name relative to a directory descriptor, must be the seam's one open of it.
    def spying_os_open(path, flags, *args, dir_fd=None, **kwargs):
        name = os.fspath(path)
        where = path_of(name, dir_fd) if dir_fd is not None and not os.path.isabs(name) else name
        if where.startswith(source_prefix) and not flags & os.O_DIRECTORY:
            file_opens.append(where)
        return real_os_open(path, flags, *args, dir_fd=dir_fd, **kwargs)

    def spying_open(file, *args, **kwargs):
        if isinstance(file, (str, os.PathLike)) and os.fspath(file).startswith(source_prefix):
            other_opens.append(os.fspath(file))
        return real_builtin_open(file, *args, **kwargs)

    monkeypatch.setattr(os, "open", spying_os_open)
    monkeypatch.setattr(builtins, "open", spying_open)
    result = _backup_through(filesystem, source, tmp_path / "backups", compression="gz")
    monkeypatch.undo()

    # Every non-empty file exactly once; empty files are not opened at all (nothing to read).
    assert any(os.path.getsize(path) == 0 for path in _files_under(source))
    non_empty = [path for path in _files_under(source) if os.path.getsize(path) > 0]
    assert sorted(filesystem.opens.elements()) == non_empty
    assert sorted(file_opens) == non_empty  # nothing opened a source file but the seam
    assert other_opens == []
    assert verify_backup(result.backup_path).ok


def _make_big(source: Path) -> tuple[Path, bytes]:
    source.mkdir()
    (source / "small.txt").write_bytes(b"small\n")
    big = source / "big.bin"
    data = pattern_bytes(BIG_SIZE, 7)
    big.write_bytes(data)
    return big, data


def _archived_bytes(archive: Path, name: str) -> bytes:
    with tarfile.open(fileobj=io.BytesIO(decompressed_tar_bytes(archive))) as tf:
        handle = tf.extractfile(name)
        assert handle is not None
        return handle.read()


def test_file_that_grows_while_read_is_archived_as_first_seen_and_flagged(tmp_path: Path) -> None:
    source = tmp_path / "source"
    big, data = _make_big(source)

    def grow() -> None:
        with open(big, "ab") as handle:
            handle.write(b"G" * 5000)

    filesystem = AfterReadFileSystem(big, grow)
    result = _backup_through(filesystem, source, tmp_path / "backups", compression="zst")

    assert filesystem.done == 1
    assert big.stat().st_size == BIG_SIZE + 5000  # it really grew
    assert len(result.warnings) == 1
    assert str(big) in result.warnings[0] and "grew" in result.warnings[0]
    manifest = json.loads(result.manifest_path.read_text())
    entry = next(e for e in manifest["files"] if e["path"] == "big.bin")
    assert entry["warning"] == result.warnings[0]
    assert manifest["warnings"] == result.warnings
    assert entry["size"] == BIG_SIZE
    archived = _archived_bytes(result.backup_path, "big.bin")
    assert archived == data  # exactly the bytes present when it was opened
    assert entry["checksum"] == hashlib.sha256(archived).hexdigest()
    other = next(e for e in manifest["files"] if e["path"] == "small.txt")
    assert other.get("warning") is None
    report = verify_backup(result.backup_path)
    assert report.ok, report.lines()


def test_file_that_shrinks_while_read_is_padded_and_flagged(tmp_path: Path) -> None:
    source = tmp_path / "source"
    big, data = _make_big(source)
    keep = CHUNK + CHUNK // 2

    def shrink() -> None:
        os.truncate(big, keep)

    filesystem = AfterReadFileSystem(big, shrink)
    result = _backup_through(filesystem, source, tmp_path / "backups", compression="gz")

    assert filesystem.done == 1
    assert big.stat().st_size == keep
    assert len(result.warnings) == 1
    warning = result.warnings[0]
    assert str(big) in warning and "shrank" in warning and str(BIG_SIZE) in warning and str(keep) in warning
    manifest = json.loads(result.manifest_path.read_text())
    entry = next(e for e in manifest["files"] if e["path"] == "big.bin")
    assert entry["warning"] == warning
    assert manifest["warnings"] == [warning]
    archived = _archived_bytes(result.backup_path, "big.bin")
    assert archived == data[:keep] + bytes(BIG_SIZE - keep)
    assert entry["size"] == BIG_SIZE
    assert entry["checksum"] == hashlib.sha256(archived).hexdigest()
    report = verify_backup(result.backup_path)
    assert report.ok, report.lines()
    target = tmp_path / "restored"
    restored = restore_backup(result.backup_path, target)
    assert restored.success, restored.error
    assert (target / "big.bin").read_bytes() == archived


def _earlier_backup(tmp_path: Path, source: Path) -> tuple[Path, dict]:
    backups = tmp_path / "backups"
    backup(source, backups, now=fixed_now(datetime(2023, 1, 1, tzinfo=UTC)))
    return backups, dir_state(backups)


@pytest.mark.parametrize("compression", ["gz", ""])
def test_unreadable_file_with_fail_policy_leaves_nothing(tmp_path: Path, corpus, compression) -> None:
    source, _ = corpus
    backups, before = _earlier_backup(tmp_path, source)
    victim = source / "sub" / "deeper" / "leaf.txt"
    filesystem = RefusingFileSystem(victim)
    config = BackupConfig(source, backups, compression=compression, on_read_error="fail")
    result = create_backup(config, filesystem=filesystem)
    assert filesystem.refused == [str(victim)]
    assert result.success is False
    assert str(victim) in result.error
    assert "Permission denied" in result.error
    assert result.backup_path is None and result.manifest_path is None
    assert dir_state(backups) == before  # no archive, manifest or .partial; earlier backup untouched
    for name in before:
        if name.endswith(".tar.gz"):
            assert verify_backup(backups / name).ok


def test_unreadable_file_with_skip_policy_is_left_out_and_recorded(tmp_path: Path, corpus) -> None:
    source, expected = corpus
    backups, before = _earlier_backup(tmp_path, source)
    victim = source / "sub" / "nested.bin"
    filesystem = RefusingFileSystem(victim)
    config = BackupConfig(source, backups, compression="xz", on_read_error="skip")
    result = create_backup(config, filesystem=filesystem)
    assert filesystem.refused == [str(victim)]
    assert result.success, result.error
    assert len(result.warnings) == 1
    assert str(victim) in result.warnings[0] and "skipped" in result.warnings[0]
    with tarfile.open(result.backup_path) as tf:
        names = sorted(tf.getnames())
    want = sorted(p for p in expected if p != "sub/nested.bin")
    assert names == want
    manifest = json.loads(result.manifest_path.read_text())
    assert sorted(e["path"] for e in manifest["files"]) == want
    assert manifest["warnings"] == result.warnings
    assert verify_backup(result.backup_path).ok
    for name, state in before.items():
        assert dir_state(backups)[name] == state
    target = tmp_path / "restored"
    assert restore_backup(result.backup_path, target).success
    assert snapshot(target) == {p: v for p, v in expected.items() if p != "sub/nested.bin"}


def test_mid_read_eio_with_fail_policy_fails_cleanly(tmp_path: Path) -> None:
    source = tmp_path / "source"
    big, _ = _make_big(source)
    backups, before = _earlier_backup(tmp_path, source)
    filesystem = FailingReadFileSystem(big, after=CHUNK)  # EIO on the second chunk
    result = create_backup(BackupConfig(source, backups, compression="gz", on_read_error="fail"), filesystem=filesystem)
    assert filesystem.failures == 1
    assert result.success is False
    assert str(big) in result.error
    assert "Input/output error" in result.error
    assert f"after {CHUNK} of {BIG_SIZE} bytes" in result.error
    assert dir_state(backups) == before
    assert listing(backups) == sorted(before)


def test_mid_read_eio_with_skip_policy_zero_fills_and_flags(tmp_path: Path) -> None:
    source = tmp_path / "source"
    big, data = _make_big(source)
    filesystem = FailingReadFileSystem(big, after=CHUNK)  # EIO on the second chunk
    config = BackupConfig(source, tmp_path / "backups", compression="", on_read_error="skip")
    result = create_backup(config, filesystem=filesystem)
    assert filesystem.failures == 1
    assert result.success, result.error
    assert len(result.warnings) == 1 and str(big) in result.warnings[0] and "zero" in result.warnings[0]
    archived = _archived_bytes(result.backup_path, "big.bin")
    assert archived == data[:CHUNK] + bytes(BIG_SIZE - CHUNK)
    entry = next(e for e in result.manifest.files if e.path == "big.bin")
    assert entry.warning == result.warnings[0]
    assert entry.checksum == hashlib.sha256(archived).hexdigest()
    assert verify_backup(result.backup_path).ok
