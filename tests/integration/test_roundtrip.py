"""Create, restore and verify end to end, comparing exact bytes, modes, mtimes and links."""

from __future__ import annotations

import grp
import hashlib
import io
import json
import os
import pwd
import tarfile
from datetime import UTC, datetime
from pathlib import Path

import pytest

from backup import BackupConfig, create_backup, list_backups, restore_backup, verify_backup

from .conftest import (
    COMPRESSIONS,
    SUFFIXES,
    backup,
    decompressed_tar_bytes,
    dir_state,
    fixed_now,
    listing,
    make_corpus,
    snapshot,
    staging_leftovers,
)

POSIX_MAGIC = b"ustar\x0000"


@pytest.mark.parametrize("compression", COMPRESSIONS)
def test_every_compression_round_trips_exactly(tmp_path: Path, corpus, compression: str) -> None:
    source, expected = corpus
    result = backup(source, tmp_path / "backups", compression=compression)
    assert result.backup_path.name == result.backup_id + SUFFIXES[compression]
    assert result.warnings == []
    assert result.entry_count == len(expected)

    target = tmp_path / "restored"
    restored = restore_backup(result.backup_path, target)
    assert restored.success, restored.error
    assert restored.verified is True
    assert restored.warnings == []
    assert snapshot(target) == expected
    # The snapshot must really cover what the corpus is meant to exercise.
    kinds = {value[0] for value in expected.values()}
    assert kinds == {"file", "dir", "symlink"}
    assert expected["link_to_sub"] == ("symlink", 0o777, expected["link_to_sub"][2], "sub")
    assert expected["emptydir"][:2] == ("dir", 0o700)
    assert expected["run.sh"][1] == 0o755 and expected["top.txt"][1] == 0o640 and expected["empty.txt"][1] == 0o600

    report = verify_backup(result.backup_path)
    assert report.ok, report.lines()
    assert report.lines() == []
    assert report.checked_entries == len(expected)
    assert report.checked_bytes == sum(os.path.getsize(source / p) for p, v in expected.items() if v[0] == "file")
    assert staging_leftovers(tmp_path) == []


@pytest.mark.parametrize("compression", COMPRESSIONS)
def test_archive_is_pax_tar_with_relative_member_names(tmp_path: Path, corpus, compression: str) -> None:
    source, expected = corpus
    result = backup(source, tmp_path / "backups", compression=compression)
    raw = decompressed_tar_bytes(result.backup_path)
    assert len(raw) % tarfile.RECORDSIZE == 0
    assert raw[-1024:] == bytes(1024)

    with tarfile.open(fileobj=io.BytesIO(raw), mode="r:") as tf:
        members = tf.getmembers()
    names = [m.name for m in members]
    assert len(names) == len(set(names))
    for name in names:
        assert not name.startswith(("./", "/")), name
        assert ".." not in name.split("/"), name
    assert sorted(names) == sorted(expected)  # no top-level folder, nothing extra, nothing missing

    for member in members:
        # Every header block, including a pax extended header before it, is POSIX ustar.
        header = raw[member.offset_data - 512 : member.offset_data]
        assert header[257:265] == POSIX_MAGIC, member.name
        first = raw[member.offset : member.offset + 512]
        assert first[257:265] == POSIX_MAGIC, member.name
        if member.offset != member.offset_data - 512:
            assert first[156:157] == tarfile.XHDTYPE, member.name
        kind, mode, mtime, digest = expected[member.name]
        assert member.mode == mode, member.name
        assert member.mtime == mtime, member.name
        if kind == "file":
            assert member.isreg()
            assert member.type == tarfile.REGTYPE
        elif kind == "dir":
            assert member.isdir()
        else:
            assert member.issym() and member.linkname == digest
    unicode_member = next(m for m in members if m.name == "unicodé-文件 Ω.txt")
    assert unicode_member.pax_headers.get("path") == "unicodé-文件 Ω.txt"


def test_manifest_lists_every_entry_with_source_sha256(tmp_path: Path, corpus) -> None:
    source, expected = corpus
    result = backup(source, tmp_path / "backups", compression="gz")
    data = json.loads(result.manifest_path.read_text(encoding="utf-8"))
    assert data["version"] == 3
    assert data["backup_id"] == result.backup_id
    entries = {entry["path"]: entry for entry in data["files"]}
    assert len(entries) == len(data["files"])
    assert sorted(entries) == sorted(expected)
    for path, (kind, mode, _mtime, value) in expected.items():
        entry = entries[path]
        info = os.lstat(source / path)
        assert entry["type"] == kind, path
        assert entry["mode"] == mode, path
        assert (entry["uid"], entry["gid"]) == (info.st_uid, info.st_gid), path
        assert (entry["user"], entry["group"]) == (pwd.getpwuid(info.st_uid).pw_name, grp.getgrgid(info.st_gid).gr_name)
        assert entry["mtime_ns"] == info.st_mtime_ns, path
        if kind == "file":
            content = (source / path).read_bytes()
            assert entry["checksum"] == hashlib.sha256(content).hexdigest(), path
            assert entry["size"] == len(content), path
        elif kind == "symlink":
            assert entry["link_target"] == value, path
        assert entry.get("warning") is None, path
    assert data["file_count"] == sum(1 for v in expected.values() if v[0] == "file")
    archive = data["archive"]
    assert archive["name"] == result.backup_path.name
    assert archive["size"] == result.backup_path.stat().st_size
    assert archive["checksum"] == hashlib.sha256(result.backup_path.read_bytes()).hexdigest()
    assert data["warnings"] == []


def test_archive_and_manifest_are_0600_even_under_umask_zero(tmp_path: Path, corpus) -> None:
    source, expected = corpus
    old = os.umask(0o000)
    try:
        result = backup(source, tmp_path / "backups", compression="zst")
        target = tmp_path / "restored"
        restored = restore_backup(result.backup_path, target)
    finally:
        os.umask(old)
    assert result.backup_path.stat().st_mode & 0o7777 == 0o600
    assert result.manifest_path.stat().st_mode & 0o7777 == 0o600
    assert restored.success, restored.error
    assert snapshot(target) == expected


def test_two_backups_in_the_same_second_get_distinct_ids(tmp_path: Path, corpus) -> None:
    source, _ = corpus
    backups = tmp_path / "backups"
    now = fixed_now(datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC))
    first = backup(source, backups, now=now)
    second = backup(source, backups, now=now)
    assert first.backup_id == "backup_20240102_030405"
    assert second.backup_id == "backup_20240102_030405-2"
    assert sorted(os.listdir(backups)) == [
        "backup_20240102_030405-2.manifest.json",
        "backup_20240102_030405-2.tar.gz",
        "backup_20240102_030405.manifest.json",
        "backup_20240102_030405.tar.gz",
    ]
    for result in (first, second):
        manifest = json.loads(result.manifest_path.read_text())
        assert manifest["backup_id"] == result.backup_id
        assert manifest["archive"]["name"] == result.backup_path.name
        assert verify_backup(result.backup_path).ok
    assert [b.backup_id for b in list_backups(backups)] == [first.backup_id, second.backup_id]


def test_backup_dir_inside_source_is_not_archived(tmp_path: Path) -> None:
    source = tmp_path / "source"
    expected = make_corpus(source)
    backups = source / "backups"
    first = backup(source, backups, now=fixed_now(datetime(2024, 1, 1, tzinfo=UTC)))
    # The second run finds the directory (holding the first backup) inside the source.
    second = backup(source, backups, now=fixed_now(datetime(2024, 1, 2, tzinfo=UTC)))
    for result in (first, second):
        with tarfile.open(result.backup_path) as tf:
            names = sorted(tf.getnames())
        assert names == sorted(expected)
        assert sorted(e.path for e in result.manifest.files) == sorted(expected)
    target = tmp_path / "restored"
    assert restore_backup(second.backup_path, target).success
    assert snapshot(target) == expected


@pytest.mark.parametrize("outside", ["ABS", "../outside.txt", "sub/../../outside.txt"])
def test_files_outside_the_source_fail_naming_the_path(tmp_path: Path, corpus, outside: str) -> None:
    source, _ = corpus
    (tmp_path / "outside.txt").write_text("not mine")
    item = str(tmp_path / "outside.txt") if outside == "ABS" else outside
    backups = tmp_path / "backups"
    result = create_backup(BackupConfig(source, backups), files=["top.txt", item])
    assert result.success is False
    assert result.error is not None and item in result.error
    assert "outside the source" in result.error
    assert not backups.exists()


def test_files_selection_archives_only_those(tmp_path: Path, corpus) -> None:
    source, expected = corpus
    result = backup(source, tmp_path / "backups", files=["top.txt", "sub/deeper"])
    chosen = ["sub/deeper", "sub/deeper/leaf.txt", "sub/deeper/link_up", "sub/deeper/zero", "top.txt"]
    assert sorted(e.path for e in result.manifest.files) == chosen
    target = tmp_path / "restored"
    assert restore_backup(result.backup_path, target).success
    restored = snapshot(target)
    for path in chosen:
        assert restored[path] == expected[path]


@pytest.mark.parametrize("precreate", [False, True])
def test_unknown_compression_fails_and_writes_nothing(tmp_path: Path, corpus, precreate: bool) -> None:
    source, _ = corpus
    backups = tmp_path / "backups"
    if precreate:
        backups.mkdir()
    result = create_backup(BackupConfig(source, backups, compression="rar"))
    assert result.success is False
    assert "unknown compression 'rar'" in (result.error or "")
    assert result.backup_path is None
    if precreate:
        assert os.listdir(backups) == []
    else:
        assert not backups.exists()


def test_restore_into_non_empty_dir_needs_overwrite(tmp_path: Path, corpus) -> None:
    source, expected = corpus
    result = backup(source, tmp_path / "backups")
    target = tmp_path / "target"
    (target / "sub").mkdir(parents=True)
    (target / "top.txt").write_bytes(b"local edit\n")
    (target / "sub" / "nested.bin").write_bytes(b"local nested\n")
    (target / "mine.txt").write_bytes(b"only here\n")
    os.utime(target / "mine.txt", (1_500_000_000, 1_500_000_000))
    before = snapshot(target)

    refused = restore_backup(result.backup_path, target)
    assert refused.success is False
    assert "already exist" in refused.error
    assert "top.txt" in refused.error and "sub/nested.bin" in refused.error
    assert snapshot(target) == before
    assert staging_leftovers(tmp_path) == []

    replaced = restore_backup(result.backup_path, target, overwrite=True)
    assert replaced.success, replaced.error
    after = snapshot(target)
    assert after == {**expected, "mine.txt": before["mine.txt"]}
    assert staging_leftovers(tmp_path) == []


def test_partial_restore_of_one_directory(tmp_path: Path, corpus) -> None:
    source, expected = corpus
    result = backup(source, tmp_path / "backups", compression="xz")
    target = tmp_path / "target"
    restored = restore_backup(result.backup_path, target, paths=["sub"])
    assert restored.success, restored.error
    assert restored.verified is True
    want = {p: v for p, v in expected.items() if p == "sub" or p.startswith("sub/")}
    assert len(want) > 5
    assert snapshot(target) == want

    single = tmp_path / "single"
    assert restore_backup(result.backup_path, single, paths=["sub/deeper/leaf.txt"]).success
    got = snapshot(single)
    assert sorted(got) == ["sub", "sub/deeper", "sub/deeper/leaf.txt"]
    assert got["sub/deeper/leaf.txt"] == expected["sub/deeper/leaf.txt"]

    missing = restore_backup(result.backup_path, tmp_path / "none", paths=["nope"])
    assert missing.success is False and "nope" in missing.error
    assert not (tmp_path / "none").exists()


def test_restore_without_manifest_works_with_a_warning(tmp_path: Path, corpus) -> None:
    source, expected = corpus
    result = backup(source, tmp_path / "backups", compression="bz2")
    result.manifest_path.unlink()
    target = tmp_path / "target"
    restored = restore_backup(result.backup_path, target)
    assert restored.success, restored.error
    assert restored.verified is False
    assert len(restored.warnings) == 1 and "no manifest" in restored.warnings[0]
    assert snapshot(target) == expected


def test_verify_reports_a_good_archive_ok(tmp_path: Path, corpus) -> None:
    source, _ = corpus
    backups = tmp_path / "backups"
    result = backup(source, backups, compression="gz")
    state = dir_state(backups)
    report = verify_backup(result.backup_path)
    assert report.ok and report.lines() == []
    assert report.missing == [] and report.extra == [] and report.mismatched == [] and report.problems == []
    assert report.manifest_path == result.manifest_path
    assert dir_state(backups) == state  # verify writes nothing
    assert listing(backups) == sorted([result.backup_path.name, result.manifest_path.name])


def test_symlink_loops_round_trip(tmp_path: Path) -> None:
    """A loop resolves to nothing (the kernel gives up: ELOOP), so it cannot lead outside;
    a backup holding one must restore like any other."""
    source = tmp_path / "source"
    (source / "d").mkdir(parents=True)
    (source / "f.txt").write_bytes(b"f\n")
    os.symlink("b", source / "a")
    os.symlink("a", source / "b")
    os.symlink("self", source / "self")
    os.symlink("../d/loop", source / "d" / "loop")
    os.symlink("../f.txt", source / "d" / "fine")
    expected = snapshot(source)
    result = backup(source, tmp_path / "backups", compression="gz")
    report = verify_backup(result.backup_path)
    assert report.ok, report.lines()
    target = tmp_path / "restored"
    restored = restore_backup(result.backup_path, target)
    assert restored.success, restored.error
    assert snapshot(target) == expected
