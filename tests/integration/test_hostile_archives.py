"""Hostile and damaged archives: refused with an error naming the problem, nothing written.

(Archives holding FIFOs and device nodes are not refused: they restore, with device
nodes skipped unless root restores an archive with its manifest; ``SPECIAL_CASES``
checks that, and that nothing is written outside the target either.)

Every case is restored three times (into a target holding the user's files, with and
without ``overwrite``, and into a target that does not exist yet) and verified once.
After each attempt the whole ``tmp_path`` tree, which holds the target, a sentinel
directory beside it and the archive itself, must be exactly as it was: nothing written
outside the target, the target unchanged, no staging directory left behind.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import shutil
import stat
import subprocess
import tarfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import pytest

from backup import VerifyReport, restore_backup, verify_backup

from .conftest import (
    BASE_MTIME,
    GNU_TAR,
    backup,
    fixed_now,
    make_corpus,
    snapshot,
    staging_leftovers,
    tar_dir,
    tar_file,
    tar_link,
    write_tar,
)


@dataclass
class Arena:
    root: Path
    work: Path
    target: Path
    sentinel: Path
    archives: Path
    build: Path

    @property
    def fresh(self) -> Path:
        return self.work / "fresh"


@pytest.fixture
def arena(tmp_path: Path) -> Arena:
    work = tmp_path / "work"
    target = work / "target"
    (target / "existing").mkdir(parents=True)
    (target / "keep.txt").write_bytes(b"the user's file\n")
    (target / "existing" / "inner.txt").write_bytes(b"inner\n")
    sentinel = work / "sentinel"
    sentinel.mkdir()
    (sentinel / "orig.txt").write_bytes(b"sentinel\n")
    archives = tmp_path / "archives"
    archives.mkdir()
    build = tmp_path / "build"
    build.mkdir()
    return Arena(tmp_path, work, target, sentinel, archives, build)


def _state(arena: Arena) -> dict:
    """The whole tree under tmp_path. Restore stages beside the target by design, so
    creating and removing the staging directory may change the mtime of the target's
    parent (only that); everything else, the target's own mtime included, is compared."""
    state = snapshot(arena.root)
    kind, mode, _mtime, value = state["work"]
    state["work"] = (kind, mode, 0, value)
    return state


def _file_signature(path: str) -> tuple[int, int, int, int, bytes]:
    info = os.lstat(path)
    with open(path, "rb") as handle:
        return info.st_ino, info.st_nlink, info.st_size, info.st_mtime_ns, handle.read()


# --- archive builders: each returns (archive, restore keyword arguments) -------------


def _tar(arena: Arena, name: str, members, **kwargs) -> Path:
    return write_tar(arena.archives / name, members, **kwargs)


def _gnu(arena: Arena, name: str, options: list[str], *paths: str) -> Path:
    """Create ``name`` with GNU tar: ``tar <options> -f <archive> <paths>``."""
    archive = arena.archives / name
    subprocess.run([GNU_TAR, *options, "-f", str(archive), *paths], check=True, capture_output=True)
    return archive


def _good_backup(arena: Arena, compression: str = "") -> tuple[Path, Path]:
    source = arena.build / "source"
    if not source.exists():
        make_corpus(source)
    result = backup(
        source,
        arena.build / "backups",
        compression=compression,
        now=fixed_now(datetime(2024, 2, 3, 4, 5, 6, tzinfo=UTC)),
    )
    archive = arena.archives / result.backup_path.name
    manifest = arena.archives / result.manifest_path.name
    shutil.move(result.backup_path, archive)
    shutil.move(result.manifest_path, manifest)
    return archive, manifest


def _edit_manifest(manifest: Path, change: Callable[[dict], None]) -> None:
    data = json.loads(manifest.read_text())
    change(data)
    manifest.write_text(json.dumps(data))


def build_absolute(arena: Arena):
    victim = arena.sentinel / "abs-pwned.txt"
    return _tar(arena, "absolute.tar", [tar_file(str(victim))]), {}


def build_absolute_gnu(arena: Arena):
    victim = arena.sentinel / "orig.txt"  # GNU tar -P keeps the absolute name
    return _gnu(arena, "absolute-gnu.tar", ["-P", "-c"], str(victim)), {}


def build_dotdot(arena: Arena):
    members = [tar_file("fine.txt"), tar_file("../sentinel/evil.txt")]
    return _tar(arena, "dotdot.tar.gz", members, mode="w:gz"), {}


def build_dotdot_hidden(arena: Arena):
    members = [tar_dir("sub"), tar_file("sub/../../sentinel/evil.txt")]
    return _tar(arena, "dotdot-hidden.tar", members), {}


def build_dotdot_gnu(arena: Arena):
    return _gnu(arena, "dotdot-gnu.tar", ["-P", "-c", "-C", str(arena.target)], "../sentinel/orig.txt"), {}


def build_parent_name(arena: Arena):
    members = [tar_file("../target/keep.txt", b"replaced!\n")]
    return _tar(arena, "parent-name.tar", members), {}


def build_parent_itself(arena: Arena):
    return _tar(arena, "parent-itself.tar", [tar_file("../target", b"a file instead\n")]), {}


def build_symlink_out_then_write(arena: Arena, allow: bool = False):
    members = [tar_link("escape", "../sentinel"), tar_file("escape/pwned.txt")]
    return _tar(arena, f"through-{allow}.tar", members), {"allow_external_links": allow}


def build_symlink_abs_then_write(arena: Arena, allow: bool = False):
    members = [tar_link("escape", str(arena.sentinel)), tar_file("escape/pwned.txt")]
    return _tar(arena, f"through-abs-{allow}.tar", members), {"allow_external_links": allow}


def build_symlink_inside_then_write(arena: Arena):
    members = [tar_dir("d"), tar_link("inner", "d"), tar_file("inner/x.txt")]
    return _tar(arena, "through-inner.tar", members), {}


def build_symlink_through_gnu(arena: Arena):
    one, two = arena.build / "one", arena.build / "two"
    one.mkdir()
    os.symlink("../sentinel", one / "link")
    (two / "link").mkdir(parents=True)
    (two / "link" / "pwned.txt").write_bytes(b"pwned\n")
    archive = _gnu(arena, "through-gnu.tar", ["-c"], "-C", str(one), "link", "-C", str(two), "link/pwned.txt")
    return archive, {"allow_external_links": True}


def build_chain(arena: Arena):
    members = [tar_dir("d"), tar_link("d/up", ".."), tar_link("esc", "d/up/..")]
    return _tar(arena, "chain.tar", members), {}


def build_chain_late(arena: Arena):
    # "esc" looks safe when it is read; only the later "d/up" makes it escape.
    members = [tar_dir("d"), tar_link("esc", "d/up/../.."), tar_link("d/up", "..")]
    return _tar(arena, "chain-late.tar", members), {}


def build_loop_then_write(arena: Arena):
    members = [tar_link("a", "b"), tar_link("b", "a"), tar_file("a/x.txt")]
    return _tar(arena, "loop-then-write.tar", members), {}


def build_hardlink_passwd(arena: Arena):
    members = [tar_file("a.txt"), tar_link("passwd", "/etc/passwd", tarfile.LNKTYPE)]
    return _tar(arena, "hardlink-passwd.tar", members), {}


def build_hardlink_dotdot(arena: Arena):
    members = [tar_file("a.txt"), tar_link("x", "../x", tarfile.LNKTYPE)]
    return _tar(arena, "hardlink-dotdot.tar", members), {}


def build_hardlink_unknown(arena: Arena):
    members = [tar_link("h", "etc/passwd", tarfile.LNKTYPE)]
    return _tar(arena, "hardlink-unknown.tar", members), {}


def build_chardev(arena: Arena):
    info, _ = tar_file("null")
    info.type, info.devmajor, info.devminor = tarfile.CHRTYPE, 1, 3
    return _tar(arena, "chardev.tar", [tar_file("ok.txt"), (info, None)]), {}


def build_blockdev(arena: Arena):
    info, _ = tar_file("disk")
    info.type, info.devmajor, info.devminor = tarfile.BLKTYPE, 8, 0
    return _tar(arena, "blockdev.tar", [(info, None)]), {}


def build_fifo(arena: Arena):
    info, _ = tar_file("pipe")
    info.type = tarfile.FIFOTYPE
    return _tar(arena, "fifo.tar", [(info, None)]), {}


def build_fifo_gnu(arena: Arena):
    source = arena.build / "fifo-src"
    source.mkdir()
    (source / "a.txt").write_bytes(b"a\n")
    os.mkfifo(source / "pipe")
    archive = _gnu(arena, "fifo-gnu.tar.gz", ["-cz", "-C", str(source)], ".")
    (source / "pipe").unlink()  # keep the tree snapshot free of special files
    return archive, {}


def build_duplicate(arena: Arena):
    """One of our own backups with a member appended again: an archive with a manifest
    never repeats a name (a foreign archive may: the last copy wins, as with tar)."""
    archive, _manifest = _good_backup(arena, "")
    with tarfile.open(archive, "a", format=tarfile.PAX_FORMAT) as tar:
        info, data = tar_file("dup.txt", b"again\n")
        info.name = next(m.name for m in tar.getmembers() if m.isfile())
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    return archive, {}


def build_duplicate_kinds(arena: Arena):
    members = [tar_file("both", b"file\n"), tar_dir("both")]
    return _tar(arena, "duplicate-kinds.tar", members), {}


def _huge_member(name: str) -> tuple[tarfile.TarInfo, bytes]:
    info, data = tar_file(name, b"x" * 10)
    info.pax_headers = {"size": str(10**15)}
    return info, data


def build_huge_size(arena: Arena):
    return _tar(arena, "huge.tar", [tar_file("small.txt"), _huge_member("big.bin")]), {}


def build_huge_size_duplicate(arena: Arena):
    # A later copy claiming a petabyte: reading it finds the end of the archive at
    # once, not after a petabyte of skipping.
    members = [tar_file("big.bin"), _huge_member("big.bin")]
    return _tar(arena, "huge-dup.tar", members), {}


def build_huge_size_gz(arena: Arena):
    return _tar(arena, "huge.tar.gz", [_huge_member("big.bin")], mode="w:gz"), {}


def build_truncated_gz(arena: Arena):
    archive, _manifest = _good_backup(arena, "gz")
    data = archive.read_bytes()
    archive.write_bytes(data[: len(data) // 2])
    return archive, {}


def build_truncated_gz_no_manifest(arena: Arena):
    archive, manifest = _good_backup(arena, "gz")
    manifest.unlink()
    data = archive.read_bytes()
    archive.write_bytes(data[: len(data) // 3])
    return archive, {}


def build_gz_without_trailer(arena: Arena):
    # Every member is intact; only the gzip CRC and length at the very end are gone.
    archive, manifest = _good_backup(arena, "gz")
    manifest.unlink()
    archive.write_bytes(archive.read_bytes()[:-8])
    return archive, {}


def build_not_a_tar(arena: Arena):
    archive = arena.archives / "notes.tar"
    archive.write_bytes(b"These are my notes, not an archive.\n" * 40)
    return archive, {}


def build_garbage_gz(arena: Arena):
    archive = arena.archives / "garbage.tar.gz"
    archive.write_bytes(gzip.compress(os.urandom(4096)))
    return archive, {}


def build_empty_file(arena: Arena):
    archive = arena.archives / "empty.tar.gz"
    archive.write_bytes(b"")
    return archive, {}


def build_manifest_extra_path(arena: Arena):
    archive, manifest = _good_backup(arena, "gz")

    def add(data: dict) -> None:
        data["files"].append(
            {
                "path": "ghost.txt",
                "size": 5,
                "checksum": "0" * 64,
                "modified": "2024-01-01T00:00:00+00:00",
                "type": "file",
                "mode": 420,
            }
        )

    _edit_manifest(manifest, add)
    return archive, {}


def build_manifest_missing_path(arena: Arena):
    archive, manifest = _good_backup(arena, "gz")
    _edit_manifest(
        manifest, lambda data: data.__setitem__("files", [e for e in data["files"] if e["path"] != "top.txt"])
    )
    return archive, {}


def build_manifest_bad_json(arena: Arena):
    archive, manifest = _good_backup(arena, "gz")
    manifest.write_text(manifest.read_text()[:-20])
    return archive, {}


def build_manifest_version_99(arena: Arena):
    archive, manifest = _good_backup(arena, "gz")
    _edit_manifest(manifest, lambda data: data.__setitem__("version", 99))
    return archive, {}


def build_flipped_byte(arena: Arena):
    archive, _manifest = _good_backup(arena, "")
    with tarfile.open(archive) as tf:
        member = tf.getmember("sub/nested.bin")
    raw = bytearray(archive.read_bytes())
    raw[member.offset_data + 1000] ^= 0x01
    archive.write_bytes(bytes(raw))
    return archive, {}


# --- expectations ---------------------------------------------------------------------


def lines_contain(*needles: str) -> Callable[[VerifyReport], None]:
    def check(report: VerifyReport) -> None:
        text = "\n".join(report.lines())
        for needle in needles:
            assert needle in text, (needle, report.lines())

    return check


def only_the_missing_manifest(report: VerifyReport) -> None:
    """Links are checked as links by verify, whatever they point to: an archive of
    nothing but links has nothing wrong with it, and without a manifest no checksums."""
    assert report.ok and not report.checksums and report.lines() == []


def verify_missing(path: str) -> Callable[[VerifyReport], None]:
    def check(report: VerifyReport) -> None:
        assert report.missing == [path]
        assert report.extra == [] and report.mismatched == [] and report.problems == []

    return check


def verify_extra(path: str) -> Callable[[VerifyReport], None]:
    def check(report: VerifyReport) -> None:
        assert report.extra == [path]
        assert report.missing == [] and report.mismatched == [] and report.problems == []

    return check


def verify_flipped(report: VerifyReport) -> None:
    assert [m.path for m in report.mismatched] == ["sub/nested.bin"]
    assert "checksum" in report.mismatched[0].problem
    assert report.missing == [] and report.extra == []
    assert len(report.problems) == 1 and "archive checksum" in report.problems[0]


@dataclass
class Case:
    build: Callable[[Arena], tuple[Path, dict]]
    error: tuple[str, ...]
    verify: Callable[[VerifyReport], None]
    marks: list = field(default_factory=list)


CASES: dict[str, Case] = {
    "absolute-member": Case(
        build_absolute,
        ("has an absolute path", "abs-pwned.txt"),
        lines_contain("has an absolute path", "abs-pwned.txt"),
    ),
    "absolute-member-gnu-tar": Case(
        build_absolute_gnu, ("has an absolute path", "sentinel/orig.txt"), lines_contain("has an absolute path")
    ),
    "dotdot-member": Case(
        build_dotdot,
        ("'..' component", "../sentinel/evil.txt"),
        lines_contain("'..' component", "../sentinel/evil.txt"),
    ),
    "dotdot-in-the-middle": Case(
        build_dotdot_hidden, ("'..' component", "sub/../../sentinel/evil.txt"), lines_contain("'..' component")
    ),
    "dotdot-member-gnu-tar": Case(
        build_dotdot_gnu, ("'..' component", "../sentinel/orig.txt"), lines_contain("'..' component")
    ),
    "member-named-like-target-file": Case(
        build_parent_name,
        ("'..' component", "../target/keep.txt"),
        lines_contain("'..' component", "../target/keep.txt"),
    ),
    "member-named-like-target": Case(
        build_parent_itself, ("'..' component", "'../target'"), lines_contain("'..' component")
    ),
    # verify checks a link as a link, wherever it points; what it reports is the
    # member that would be written through it.
    "symlink-outside-then-write": Case(
        build_symlink_out_then_write,
        ("'escape'", "points outside the target", "--allow-external-links"),
        lines_contain("'escape/pwned.txt' would be written through the symlink 'escape'"),
    ),
    "symlink-outside-then-write-allowed": Case(
        lambda a: build_symlink_out_then_write(a, True),
        ("'escape/pwned.txt'", "written through the symlink 'escape'"),
        lines_contain("'escape/pwned.txt' would be written through the symlink 'escape'"),
    ),
    "absolute-symlink-then-write": Case(
        build_symlink_abs_then_write,
        ("'escape'", "absolute path"),
        lines_contain("'escape/pwned.txt' would be written through the symlink 'escape'"),
    ),
    "absolute-symlink-then-write-allowed": Case(
        lambda a: build_symlink_abs_then_write(a, True),
        ("'escape/pwned.txt'", "written through the symlink"),
        lines_contain("'escape/pwned.txt' would be written through the symlink 'escape'"),
    ),
    "inner-symlink-then-write": Case(
        build_symlink_inside_then_write,
        ("'inner/x.txt'", "written through the symlink"),
        lines_contain("written through the symlink 'inner'"),
    ),
    "symlink-then-write-gnu-tar": Case(
        build_symlink_through_gnu,
        ("'link/pwned.txt'", "written through the symlink"),
        lines_contain("'link/pwned.txt' would be written through the symlink 'link'"),
    ),
    "symlink-chain-escapes": Case(build_chain, ("'esc'", "points outside the target"), only_the_missing_manifest),
    "symlink-chain-escapes-through-later-link": Case(
        build_chain_late,
        ("'esc'", "points outside the target"),
        only_the_missing_manifest,
    ),
    "symlink-loop-then-write": Case(
        build_loop_then_write,
        ("'a/x.txt'", "written through the symlink 'a'"),
        lines_contain("'a/x.txt' would be written through the symlink 'a'"),
    ),
    "hardlink-to-etc-passwd": Case(
        build_hardlink_passwd, ("'/etc/passwd'", "absolute path"), lines_contain("'/etc/passwd' has an absolute path")
    ),
    "hardlink-to-dotdot": Case(
        build_hardlink_dotdot, ("'../x'", "'..' component"), lines_contain("'../x' has a '..' component")
    ),
    "hardlink-to-unknown": Case(
        build_hardlink_unknown, ("'h'", "not an earlier file"), lines_contain("not an earlier file")
    ),
    # FIFOs and device nodes are not refused: see SPECIAL_CASES below.
    "duplicate-names": Case(
        build_duplicate,
        ("appears more than once (an archive with a manifest never repeats a member)",),
        lines_contain("appears more than once"),
    ),
    "duplicate-file-and-dir": Case(
        build_duplicate_kinds, ("'both'", "appears more than once"), lines_contain("'both' appears more than once")
    ),
    "pax-huge-size": Case(build_huge_size, ("huge.tar", "truncated"), lines_contain("truncated")),
    "pax-huge-size-duplicate": Case(
        build_huge_size_duplicate, ("huge-dup.tar", "inside 'big.bin'"), lines_contain("truncated")
    ),
    "pax-huge-size-gz": Case(build_huge_size_gz, ("huge.tar.gz", "truncated"), lines_contain("truncated")),
    "truncated-tar-gz": Case(build_truncated_gz, ("truncated",), lines_contain("truncated")),
    "truncated-tar-gz-no-manifest": Case(build_truncated_gz_no_manifest, ("truncated",), lines_contain("truncated")),
    "tar-gz-missing-trailer": Case(build_gz_without_trailer, ("truncated",), lines_contain("truncated")),
    "not-a-tar": Case(
        build_not_a_tar, ("notes.tar", "not a valid tar archive"), lines_contain("not a valid tar archive")
    ),
    "gzip-of-garbage": Case(
        build_garbage_gz, ("garbage.tar.gz", "not a valid tar archive"), lines_contain("not a valid tar archive")
    ),
    "empty-file": Case(
        build_empty_file, ("empty.tar.gz", "not a valid tar archive"), lines_contain("not a valid tar archive")
    ),
    "manifest-lists-path-archive-lacks": Case(
        build_manifest_extra_path, ("missing from archive: ghost.txt",), verify_missing("ghost.txt")
    ),
    "archive-has-path-manifest-lacks": Case(
        build_manifest_missing_path, ("not in manifest: top.txt",), verify_extra("top.txt")
    ),
    "manifest-invalid-json": Case(
        build_manifest_bad_json, (".manifest.json", "not valid JSON"), lines_contain("not valid JSON")
    ),
    "manifest-version-99": Case(
        build_manifest_version_99,
        (".manifest.json", "unsupported manifest version 99"),
        lines_contain("unsupported manifest version 99"),
    ),
    "flipped-byte-in-file-data": Case(
        build_flipped_byte, ("sub/nested.bin", "checksum", "nothing was restored"), verify_flipped
    ),
}


@dataclass
class SpecialCase:
    """An archive without a manifest holding FIFOs or device nodes: what it restores."""

    build: Callable[[Arena], tuple[Path, dict]]
    files: list[str] = field(default_factory=list)
    fifos: list[str] = field(default_factory=list)
    devices: list[str] = field(default_factory=list)


SPECIAL_CASES: dict[str, SpecialCase] = {
    "char-device": SpecialCase(build_chardev, files=["ok.txt"], devices=["null"]),
    "block-device": SpecialCase(build_blockdev, devices=["disk"]),
    "fifo": SpecialCase(build_fifo, fifos=["pipe"]),
    "fifo-gnu-tar": SpecialCase(build_fifo_gnu, files=["a.txt"], fifos=["pipe"]),
}


def device_warning(archive: Path, devices: list[str]) -> list[str]:
    """The one line a restore gives for the device nodes it did not make (none: no line)."""
    if not devices:
        return []
    count = "1 device node was" if len(devices) == 1 else f"{len(devices)} device nodes were"
    return [
        f"{archive}: {count} not restored ({', '.join(devices)}): "
        "device nodes are made only by root, from an archive with its manifest"
    ]


def _outside(state: dict, target: Path, arena: Arena) -> dict:
    """The part of a state that is not the target or under it."""
    prefix = str(target.relative_to(arena.root))
    return {key: value for key, value in state.items() if key != prefix and not key.startswith(prefix + "/")}


def check_special_restore(arena: Arena, case: SpecialCase, target: Path, before: dict) -> None:
    """What a restore of a SpecialCase archive must have done to ``target``, and only there."""
    after = _state(arena)
    assert _outside(after, target, arena) == _outside(before, target, arena)
    prefix = str(target.relative_to(arena.root)) + "/"
    new = sorted(key[len(prefix) :] for key in after if key.startswith(prefix) and key not in before)
    assert new == sorted(case.files + case.fifos)
    assert all(after[key] == value for key, value in before.items() if key.startswith(prefix))
    for fifo in case.fifos:
        assert stat.S_ISFIFO(os.lstat(target / fifo).st_mode), fifo
    for device in case.devices:
        assert not os.path.lexists(target / device), device
    assert staging_leftovers(arena.root) == []


@pytest.mark.timeout(30)
@pytest.mark.parametrize("name", list(SPECIAL_CASES))
def test_fifo_and_device_members_of_an_archive_without_a_manifest(arena: Arena, name: str) -> None:
    """Not refused, and not trusted either: from an archive without a manifest (anyone's),
    a FIFO is made, a device node is not (it could open this machine's disks): it is
    skipped with one warning line naming it, and nothing is created in its place.
    Nothing is written outside the target, whether it exists or not."""
    case = SPECIAL_CASES[name]
    archive, kwargs = case.build(arena)
    passwd = _file_signature("/etc/passwd")
    for target in (arena.target, arena.fresh):
        before = _state(arena)
        result = restore_backup(archive, target, **kwargs)
        assert result.success, (name, target, result.error)
        assert result.verified is False
        assert result.warnings == [
            f"{archive}: no manifest; restored without checksum verification",
            *device_warning(archive, case.devices),
        ]
        check_special_restore(arena, case, target, before)

    before = _state(arena)
    report = verify_backup(archive)
    only_the_missing_manifest(report)
    assert _state(arena) == before
    assert _file_signature("/etc/passwd") == passwd


@pytest.mark.parametrize("name", ["char-device", "block-device"])
def test_skipped_device_nodes_are_not_counted_as_restored(arena: Arena, name: str) -> None:
    """The result counts the entries restored: a device node it did not make is not one."""
    case = SPECIAL_CASES[name]
    archive, _kwargs = case.build(arena)
    result = restore_backup(archive, arena.fresh)
    assert result.success, result.error
    assert result.entry_count == len(case.files + case.fifos)


@pytest.mark.timeout(30)
@pytest.mark.parametrize("name", list(CASES))
def test_hostile_archive_is_refused_and_nothing_is_written(arena: Arena, name: str) -> None:
    case = CASES[name]
    archive, kwargs = case.build(arena)
    before = _state(arena)
    passwd = _file_signature("/etc/passwd")
    assert before["work/target/keep.txt"][0] == "file" and before["work/sentinel/orig.txt"][0] == "file"

    for target, overwrite in ((arena.target, False), (arena.target, True), (arena.fresh, False)):
        result = restore_backup(archive, target, overwrite=overwrite, **kwargs)
        assert result.success is False, (name, target, overwrite)
        assert result.error and "\n" not in result.error
        for needle in case.error:
            assert needle in result.error, (needle, result.error)
        assert _state(arena) == before, (name, target, overwrite)
        assert staging_leftovers(arena.root) == []
        assert not arena.fresh.exists()

    report = verify_backup(archive)
    # Every case is unsafe to restore; verify fails on each but links that only point
    # out, which are archived intact (only_the_missing_manifest says so).
    assert report.ok is (case.verify is only_the_missing_manifest)
    case.verify(report)
    assert _state(arena) == before
    assert _file_signature("/etc/passwd") == passwd


def test_the_good_archive_behind_the_manifest_cases_restores(arena: Arena) -> None:
    """The damaged-manifest cases start from a sound backup: prove it is one."""
    archive, _manifest = _good_backup(arena, "gz")
    assert verify_backup(archive).ok
    result = restore_backup(archive, arena.fresh)
    assert result.success, result.error
    assert snapshot(arena.fresh) == snapshot(arena.build / "source")


def test_an_archive_with_only_safe_links_restores(arena: Arena) -> None:
    """The link checks refuse escapes, not links: the same shapes kept inside restore."""
    members = [
        tar_dir("d"),
        tar_file("d/f.txt", b"f\n"),
        tar_link("d/up", ".."),
        tar_link("in", "d/up/d/f.txt"),
        tar_file("h.txt", b"h\n"),
        tar_link("hard", "h.txt", tarfile.LNKTYPE),
    ]
    archive = write_tar(arena.archives / "safe.tar", members)
    result = restore_backup(archive, arena.fresh)
    assert result.success, result.error
    assert (arena.fresh / "in").read_bytes() == b"f\n"
    assert os.readlink(arena.fresh / "d" / "up") == ".."
    assert os.stat(arena.fresh / "hard").st_ino == os.stat(arena.fresh / "h.txt").st_ino
    assert os.stat(arena.fresh / "h.txt").st_mtime == BASE_MTIME
    report = verify_backup(archive)
    assert [line for line in report.lines() if "no manifest" not in line] == []


def test_restore_checks_are_not_fooled_by_a_pax_path_override(arena: Arena) -> None:
    """A pax 'path' record replaces the ustar name: the checks must see the real name."""
    info, data = tar_file("innocent.txt", b"evil\n")
    info.pax_headers = {"path": "../sentinel/evil.txt"}
    archive = write_tar(arena.archives / "pax-path.tar", [(info, data)])
    before = _state(arena)
    result = restore_backup(archive, arena.target)
    assert result.success is False and "../sentinel/evil.txt" in result.error
    assert _state(arena) == before
    assert verify_backup(archive).ok is False


def _chain(count: int) -> list[tuple[str, str]]:
    """Links whose escape needs ``count + 2`` links followed: esc -> c0/.., c0 -> c1 ...
    -> c<count-1> -> d/up, d/up -> .. (the root), so esc resolves to the root's parent."""
    links = [("d/up", "..")]
    links += [(f"c{i}", f"c{i + 1}") for i in range(count - 1)] + [(f"c{count - 1}", "d/up")]
    return [*links, ("esc", "c0/..")]


@pytest.mark.parametrize("count", [38, 39])
def test_a_long_link_chain_that_escapes_is_refused(arena: Arena, count: int) -> None:
    """Checking links against a budget, as the kernel does, must not open a hole: a
    chain the kernel can still follow (40 links, count=38) is refused, and so is one
    link more (count=39, which the kernel would refuse with ELOOP)."""
    # The same links on disk show what the kernel does with them.
    real = arena.build / "chain" / "inner"
    (real / "d").mkdir(parents=True)
    (real.parent / "outside.txt").write_bytes(b"outside\n")
    for name, target in _chain(count):
        os.symlink(target, real / name)
    if count == 38:
        assert (real / "esc" / "outside.txt").read_bytes() == b"outside\n"  # it escapes
    else:
        with pytest.raises(OSError) as loop:
            (real / "esc" / "outside.txt").read_bytes()
        assert loop.value.errno == 40  # ELOOP

    members = [tar_dir("d"), *(tar_link(name, target) for name, target in _chain(count))]
    archive = write_tar(arena.archives / f"chain-{count}.tar", members)
    before = _state(arena)
    result = restore_backup(archive, arena.fresh)
    assert result.success is False
    assert "symlink 'esc' points outside the target" in result.error
    assert _state(arena) == before
    # Links are archived as links, intact: verify says so; only restoring them is refused.
    report = verify_backup(archive)
    assert report.ok is True and report.checksums is False


@pytest.mark.timeout(20)
def test_many_branching_links_are_checked_quickly(arena: Arena) -> None:
    """l0 -> l1/../l1, l1 -> l2/../l2 ... l60 -> d: following l<k> takes 2**(61-k) - 1
    links, so a resolver that limits depth rather than links followed takes 2**60 steps."""
    count = 60
    members = [tar_dir("d"), tar_file("d/f.txt", b"f\n"), tar_link(f"l{count}", "d")]
    members += [tar_link(f"l{i}", f"l{i + 1}/../l{i + 1}") for i in range(count - 1, -1, -1)]
    archive = write_tar(arena.archives / "branching.tar", members)
    started = time.monotonic()
    result = restore_backup(archive, arena.fresh)
    assert result.success, result.error
    assert os.readlink(arena.fresh / "l0") == "l1/../l1"
    assert (arena.fresh / "l56" / "f.txt").read_bytes() == b"f\n"  # 31 links: the kernel follows it
    with pytest.raises(OSError) as loop:
        (arena.fresh / "l55" / "f.txt").read_bytes()  # 63 links: the kernel gives up
    assert loop.value.errno == 40  # ELOOP
    report = verify_backup(archive)
    assert [line for line in report.lines() if "no manifest" not in line] == []
    assert time.monotonic() - started < 5
