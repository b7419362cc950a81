"""Our archives are ordinary tar files to GNU tar, and GNU tar's archives restore with us."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from backup import restore_backup, verify_backup

from .conftest import COMPRESSIONS, GNU_TAR, backup, make_corpus, snapshot, staging_leftovers

LONG_NAME = "a-rather-long-directory-name-" + "x" * 60 + "/and-a-file-name-that-pushes-past-one-hundred-bytes.txt"


def _gnu_tar(*args: str) -> None:
    subprocess.run([GNU_TAR, *args], check=True, capture_output=True)


@pytest.mark.parametrize("compression", COMPRESSIONS)
def test_gnu_tar_extracts_our_archives_exactly(tmp_path: Path, corpus, compression: str) -> None:
    source, expected = corpus
    result = backup(source, tmp_path / "backups", compression=compression)
    out = tmp_path / "gnu-out"
    out.mkdir()
    # No compression flag: GNU tar must recognise the format from the file itself.
    _gnu_tar("-xf", str(result.backup_path), "-C", str(out))
    assert snapshot(out) == expected
    listed = subprocess.run([GNU_TAR, "-tf", str(result.backup_path)], check=True, capture_output=True, text=True)
    names = sorted(name.rstrip("/") for name in listed.stdout.splitlines())
    assert names == sorted(expected)


def test_gnu_tar_reads_a_gzip_compressed_on_several_threads(tmp_path: Path) -> None:
    """Past THREADED_GZIP_MIN_BYTES the gzip stream is compressed in parallel blocks:
    it must still be one stream that gzip checks and GNU tar extracts."""
    from backup.stream.compression import THREADED_GZIP_MIN_BYTES

    source = tmp_path / "src"
    source.mkdir()
    payload = b"".join(b"line %08d of a log that compresses\n" % i for i in range(THREADED_GZIP_MIN_BYTES // 30))
    (source / "big.log").write_bytes(payload + os.urandom(1 << 20))
    result = backup(source, tmp_path / "backups", compression="gz")
    subprocess.run(["gzip", "-t", str(result.backup_path)], check=True)
    out = tmp_path / "gnu-out"
    out.mkdir()
    _gnu_tar("-xzf", str(result.backup_path), "-C", str(out))
    assert (out / "big.log").read_bytes() == (source / "big.log").read_bytes()


def _gnu_source(root: Path) -> dict:
    """The standard corpus plus what GNU tar encodes its own way: a hard link and a
    name longer than the 100 bytes of a ustar name field."""
    make_corpus(root)
    os.link(root / "top.txt", root / "hardlink-to-top.txt")
    long_file = root / LONG_NAME
    long_file.parent.mkdir()
    long_file.write_bytes(b"long\n")
    for path in (long_file, long_file.parent, root):
        os.utime(path, (1_650_000_000, 1_650_000_000))
    return snapshot(root)


GNU_VARIANTS = {
    "gz-dot": (["-cz"], True, ".tar.gz"),
    "gz-no-dot": (["-cz"], False, ".tar.gz"),
    "zstd-dot": (["--zstd", "-c"], True, ".tar.zst"),
    "zstd-no-dot": (["--zstd", "-c"], False, ".tar.zst"),
    "bz2-dot": (["-cj"], True, ".tar.bz2"),
    "xz-no-dot": (["-cJ"], False, ".tar.xz"),
    "plain-posix-no-dot": (["-c", "--format=posix"], False, ".tar"),
}


def _gnu_archive(tmp_path: Path, source: Path, variant: str) -> Path:
    options, dot, suffix = GNU_VARIANTS[variant]
    archive = tmp_path / f"gnu-{variant}{suffix}"
    names = ["."] if dot else sorted(os.listdir(source))
    _gnu_tar(*options, "-f", str(archive), "-C", str(source), "--", *names)
    return archive


@pytest.mark.parametrize("variant", list(GNU_VARIANTS))
def test_gnu_tar_archives_restore_exactly(tmp_path: Path, variant: str) -> None:
    source = tmp_path / "source"
    expected = _gnu_source(source)
    archive = _gnu_archive(tmp_path, source, variant)
    if variant.endswith("-no-dot"):
        listed = subprocess.run([GNU_TAR, "-tf", str(archive)], check=True, capture_output=True, text=True)
        assert not any(name.startswith("./") for name in listed.stdout.splitlines())
    target = tmp_path / "restored"
    result = restore_backup(archive, target)
    assert result.success, result.error
    assert result.verified is False
    assert len(result.warnings) == 1 and "no manifest" in result.warnings[0]
    assert snapshot(target) == expected
    assert os.stat(target / "hardlink-to-top.txt").st_ino == os.stat(target / "top.txt").st_ino
    assert staging_leftovers(tmp_path) == []


@pytest.mark.parametrize("variant", ["gz-dot", "zstd-no-dot", "plain-posix-no-dot"])
def test_verify_of_a_gnu_tar_archive_says_there_is_no_manifest(tmp_path: Path, variant: str) -> None:
    """Read to its end and intact, with nothing to compare checksums with: "OK, no checksums"."""
    source = tmp_path / "source"
    expected = _gnu_source(source)
    archive = _gnu_archive(tmp_path, source, variant)
    report = verify_backup(archive)
    assert report.ok is True and report.checksums is False
    assert report.manifest_path is None
    assert report.problems == [] and report.cause is None
    assert "OK, no checksums (no manifest)" in report.summary()
    assert report.missing == [] and report.extra == [] and report.mismatched == []
    assert report.checked_entries == len(expected)  # every member was still read and checked


def test_restoring_an_archive_without_manifest_reads_it_once(tmp_path: Path, monkeypatch) -> None:
    """Without a manifest there is no list of entries to plan from; a restore (not a dry
    run) must not read the whole archive once to plan and again to extract."""
    import backup.plan as plan_module
    import backup.restore as restore_module
    import backup.stream.tarreader as tarreader_module

    source = tmp_path / "src"
    make_corpus(source)
    archive = tmp_path / "gnu.tar.gz"
    _gnu_tar("-czf", str(archive), "-C", str(source), ".")
    opened: list[Path | None] = []
    real = tarreader_module.ArchiveReader

    class CountingReader(real):  # type: ignore[misc, valid-type]
        def __init__(self, ref, *args, **kwargs) -> None:
            opened.append(ref.path)
            super().__init__(ref, *args, **kwargs)

    # The class itself, and every name the planner and the restorer reach it by.
    for module in (tarreader_module, plan_module, restore_module):
        assert module.ArchiveReader is real
        monkeypatch.setattr(module, "ArchiveReader", CountingReader)

    result = restore_backup(archive, tmp_path / "out")

    assert result.success, result.error
    assert opened == [archive]
    assert snapshot(tmp_path / "out") == snapshot(source)


def test_archive_without_manifest_still_refuses_to_overwrite(tmp_path: Path) -> None:
    """With no entry list planned in advance, conflicts are found at install time: the
    restore fails the same way and the target is left as it was."""
    source = tmp_path / "src"
    make_corpus(source)
    archive = tmp_path / "gnu.tar"
    _gnu_tar("-cf", str(archive), "-C", str(source), ".")
    target = tmp_path / "out"
    target.mkdir()
    clash = next(p for p in sorted(source.iterdir()) if p.is_file() and not p.is_symlink())
    (target / clash.name).write_text("mine")
    before = snapshot(target)

    result = restore_backup(archive, target)

    assert result.success is False
    assert "1 entry already exists" in (result.error or "")
    assert clash.name in (result.error or "")
    assert snapshot(target) == before
    assert staging_leftovers(tmp_path) == []
