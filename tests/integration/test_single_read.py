"""Each source file is read once; files that change or fail while read are handled openly.

We run as root, so permission bits cannot make a file unreadable: faults are injected
by wrapping ``backup.tarwriter._open_source`` (the open of each source file, by name
relative to its directory's descriptor) and ``backup.tarwriter._read_into`` (each read
of its data) with monkeypatch.
"""

from __future__ import annotations

import builtins
import errno
import hashlib
import io
import json
import os
import tarfile
from datetime import UTC, datetime
from pathlib import Path

import pytest

import backup.tarwriter as tarwriter
from backup import BackupConfig, create_backup, restore_backup, verify_backup

from .conftest import backup, decompressed_tar_bytes, dir_state, fixed_now, listing, pattern_bytes, snapshot

CHUNK = 1 << 20
BIG_SIZE = 3 * CHUNK + 12345


def _path_of(name, dir_fd) -> str:
    """The absolute path a descriptor-relative open names (for matching in the wrappers)."""
    return os.path.join(os.readlink(f"/proc/self/fd/{dir_fd}"), os.fspath(name))


def _files_under(root: Path) -> list[str]:
    return sorted(str(root / p) for p, v in snapshot(root).items() if v[0] == "file")


def test_each_source_file_is_opened_exactly_once(tmp_path: Path, corpus, monkeypatch) -> None:
    source, _ = corpus
    source_prefix = str(source) + os.sep
    opened: list[str] = []
    other_opens: list[str] = []
    real_open_source = tarwriter._open_source
    real_os_open = os.open
    real_builtin_open = builtins.open

    def counting_open_source(name, flags, *args, dir_fd):
        opened.append(_path_of(name, dir_fd))
        return real_open_source(name, flags, *args, dir_fd=dir_fd)

    # Any other way of opening a source file (os.open, open) would also be caught.
    def spying_os_open(path, flags, *args, **kwargs):
        if os.fspath(path).startswith(source_prefix):
            other_opens.append(os.fspath(path))
        return real_os_open(path, flags, *args, **kwargs)

    def spying_open(file, *args, **kwargs):
        if isinstance(file, (str, os.PathLike)) and os.fspath(file).startswith(source_prefix):
            other_opens.append(os.fspath(file))
        return real_builtin_open(file, *args, **kwargs)

    monkeypatch.setattr(tarwriter, "_open_source", counting_open_source)
    monkeypatch.setattr(os, "open", spying_os_open)
    monkeypatch.setattr(builtins, "open", spying_open)
    result = backup(source, tmp_path / "backups", compression="gz")
    monkeypatch.undo()

    # Every non-empty file exactly once; empty files are not opened at all (nothing to read).
    assert any(os.path.getsize(path) == 0 for path in _files_under(source))
    assert sorted(opened) == [path for path in _files_under(source) if os.path.getsize(path) > 0]
    assert len(opened) == len(set(opened))
    assert other_opens == []
    assert verify_backup(result.backup_path).ok


def _make_big(source: Path) -> tuple[Path, bytes]:
    source.mkdir()
    (source / "small.txt").write_bytes(b"small\n")
    big = source / "big.bin"
    data = pattern_bytes(BIG_SIZE, 7)
    big.write_bytes(data)
    return big, data


def _wrap_reads(monkeypatch, target: Path, after_first_chunk) -> None:
    """Call ``after_first_chunk()`` once, right after the first chunk of ``target`` was read."""
    real_open, real_read = tarwriter._open_source, tarwriter._read_into
    fds: set[int] = set()
    state = {"done": False}

    def open_source(name, flags, *args, dir_fd):
        fd = real_open(name, flags, *args, dir_fd=dir_fd)
        if _path_of(name, dir_fd) == str(target):
            fds.add(fd)
        return fd

    def read_into(fd, buffers):
        count = real_read(fd, buffers)
        if fd in fds and not state["done"]:
            state["done"] = True
            after_first_chunk()
        return count

    monkeypatch.setattr(tarwriter, "_open_source", open_source)
    monkeypatch.setattr(tarwriter, "_read_into", read_into)


def _archived_bytes(archive: Path, name: str) -> bytes:
    with tarfile.open(fileobj=io.BytesIO(decompressed_tar_bytes(archive))) as tf:
        handle = tf.extractfile(name)
        assert handle is not None
        return handle.read()


def test_file_that_grows_while_read_is_archived_as_first_seen_and_flagged(tmp_path: Path, monkeypatch) -> None:
    source = tmp_path / "source"
    big, data = _make_big(source)

    def grow() -> None:
        with open(big, "ab") as handle:
            handle.write(b"G" * 5000)

    _wrap_reads(monkeypatch, big, grow)
    result = backup(source, tmp_path / "backups", compression="zst")
    monkeypatch.undo()

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


def test_file_that_shrinks_while_read_is_padded_and_flagged(tmp_path: Path, monkeypatch) -> None:
    source = tmp_path / "source"
    big, data = _make_big(source)
    keep = CHUNK + CHUNK // 2

    def shrink() -> None:
        os.truncate(big, keep)

    _wrap_reads(monkeypatch, big, shrink)
    result = backup(source, tmp_path / "backups", compression="gz")
    monkeypatch.undo()

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


def _refuse_open(monkeypatch, victim: Path) -> None:
    real_open = tarwriter._open_source

    def open_source(name, flags, *args, dir_fd):
        if _path_of(name, dir_fd) == str(victim):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), os.fspath(name))
        return real_open(name, flags, *args, dir_fd=dir_fd)

    monkeypatch.setattr(tarwriter, "_open_source", open_source)


@pytest.mark.parametrize("compression", ["gz", ""])
def test_unreadable_file_with_fail_policy_leaves_nothing(tmp_path: Path, corpus, monkeypatch, compression) -> None:
    source, _ = corpus
    backups, before = _earlier_backup(tmp_path, source)
    victim = source / "sub" / "deeper" / "leaf.txt"
    _refuse_open(monkeypatch, victim)
    result = create_backup(BackupConfig(source, backups, compression=compression, on_read_error="fail"))
    monkeypatch.undo()
    assert result.success is False
    assert str(victim) in result.error
    assert "Permission denied" in result.error
    assert result.backup_path is None and result.manifest_path is None
    assert dir_state(backups) == before  # no archive, manifest or .partial; earlier backup untouched
    for name in before:
        if name.endswith(".tar.gz"):
            assert verify_backup(backups / name).ok


def test_unreadable_file_with_skip_policy_is_left_out_and_recorded(tmp_path: Path, corpus, monkeypatch) -> None:
    source, expected = corpus
    backups, before = _earlier_backup(tmp_path, source)
    victim = source / "sub" / "nested.bin"
    _refuse_open(monkeypatch, victim)
    result = create_backup(BackupConfig(source, backups, compression="xz", on_read_error="skip"))
    monkeypatch.undo()
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


def _eio_on_second_chunk(monkeypatch, victim: Path) -> None:
    real_open, real_read = tarwriter._open_source, tarwriter._read_into
    fds: set[int] = set()
    calls = {"n": 0}

    def open_source(name, flags, *args, dir_fd):
        fd = real_open(name, flags, *args, dir_fd=dir_fd)
        if _path_of(name, dir_fd) == str(victim):
            fds.add(fd)
        return fd

    def read_into(fd, buffers):
        if fd in fds:
            calls["n"] += 1
            if calls["n"] == 2:
                raise OSError(errno.EIO, os.strerror(errno.EIO))
        return real_read(fd, buffers)

    monkeypatch.setattr(tarwriter, "_open_source", open_source)
    monkeypatch.setattr(tarwriter, "_read_into", read_into)


def test_mid_read_eio_with_fail_policy_fails_cleanly(tmp_path: Path, monkeypatch) -> None:
    source = tmp_path / "source"
    big, _ = _make_big(source)
    backups, before = _earlier_backup(tmp_path, source)
    _eio_on_second_chunk(monkeypatch, big)
    result = create_backup(BackupConfig(source, backups, compression="gz", on_read_error="fail"))
    monkeypatch.undo()
    assert result.success is False
    assert str(big) in result.error
    assert "Input/output error" in result.error
    assert f"after {CHUNK} of {BIG_SIZE} bytes" in result.error
    assert dir_state(backups) == before
    assert listing(backups) == sorted(before)


def test_mid_read_eio_with_skip_policy_zero_fills_and_flags(tmp_path: Path, monkeypatch) -> None:
    source = tmp_path / "source"
    big, data = _make_big(source)
    _eio_on_second_chunk(monkeypatch, big)
    result = create_backup(BackupConfig(source, tmp_path / "backups", compression="", on_read_error="skip"))
    monkeypatch.undo()
    assert result.success, result.error
    assert len(result.warnings) == 1 and str(big) in result.warnings[0] and "zero" in result.warnings[0]
    archived = _archived_bytes(result.backup_path, "big.bin")
    assert archived == data[:CHUNK] + bytes(BIG_SIZE - CHUNK)
    entry = next(e for e in result.manifest.files if e.path == "big.bin")
    assert entry.warning == result.warnings[0]
    assert entry.checksum == hashlib.sha256(archived).hexdigest()
    assert verify_backup(result.backup_path).ok
