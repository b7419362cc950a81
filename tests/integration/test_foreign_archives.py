"""Archives obs-backup did not write, read as GNU tar reads them.

A corpus is made here by the tools themselves: GNU tar in each of its formats, with
each sparse format, volume labels and appended copies; bsdtar in its formats; and
hand-made headers that are malformed or odd. Each archive GNU tar extracts is
restored by obs-backup and by GNU tar into two directories, which must be the same
tree field by field. The archives that must be refused end in one line naming the
problem, exit code 1, and an untouched target.
"""

from __future__ import annotations

import io
import os
import struct
import subprocess
import tarfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from backup import restore_backup, verify_backup
from support.cli import run_cli
from support.trees import make_sparse, tree_differences, tree_state

from .conftest import BASE_MTIME, GNU_TAR, ZSTD

BSDTAR = "/usr/bin/bsdtar"


def _run(*argv: str, cwd: Path | None = None) -> None:
    done = subprocess.run(argv, capture_output=True, text=True, check=False, cwd=cwd)
    assert done.returncode == 0, f"{' '.join(argv)}: {done.stderr}"


def _source(root: Path, *, long_names: int = 2, sparse: bool = False) -> Path:
    """A small tree of what every format holds: files, an empty one, directories (an
    empty one), a symlink and a hard link, odd modes; long names as far as the format
    holds them (1: a path ustar splits into prefix and name, 2: also a 150-character
    link target); a file with holes for the sparse formats."""
    root.mkdir()
    (root / "docs").mkdir()
    (root / "docs" / "readme.txt").write_bytes(b"read me\n" * 40)
    (root / "docs" / "empty").write_bytes(b"")
    (root / "empty-dir").mkdir()
    (root / "secret").write_bytes(b"s3cret\n")
    os.chmod(root / "secret", 0o600)
    (root / "run.sh").write_bytes(b"#!/bin/sh\necho hi\n")
    os.chmod(root / "run.sh", 0o755)
    (root / "link").symlink_to("docs/readme.txt")
    os.link(root / "docs" / "readme.txt", root / "hard")
    (root / "caf\u00e9 \u00fcnicode").write_bytes(b"utf-8 name\n")
    if long_names:
        deep = root / ("d" * 60) / ("e" * 60)
        deep.mkdir(parents=True)
        (deep / ("f" * 95)).write_bytes(b"long name\n")
    if long_names > 1:
        (root / "longlink").symlink_to("t" * 150)
    if sparse:
        make_sparse(root / "sparse.img", 3 << 20, [(0, b"head"), (1 << 20, b"middle" * 100), ((3 << 20) - 3, b"end")])
    for path in sorted(root.rglob("*"), reverse=True):
        os.utime(path, (BASE_MTIME, BASE_MTIME), follow_symlinks=False)
    return root


def _gnu_extract(archive: Path, target: Path) -> None:
    target.mkdir()
    _run(GNU_TAR, "-xf", str(archive), "-C", str(target))


@dataclass(frozen=True)
class Foreign:
    """An archive another tool wrote: how to make it (into ``dir``, from the tree it
    makes under ``dir / "src"``), the warnings obs-backup must give besides the
    missing manifest (each a substring), and whether the archive holds the source
    tree as it is now (not so for one appended to after a change)."""

    make: Callable[[Path], Path]
    warnings: tuple[str, ...] = ()
    holds_source: bool = True


def _gnu(*options: str, long_names: int = 2, sparse: bool = False, name: str = "a.tar") -> Callable[[Path], Path]:
    def make(work: Path) -> Path:
        source = _source(work / "src", long_names=long_names, sparse=sparse)
        archive = work / name
        _run(GNU_TAR, *options, "-cf", str(archive), "-C", str(source), ".")
        return archive

    return make


def _bsd(fmt: str, *, long_names: int = 2) -> Callable[[Path], Path]:
    def make(work: Path) -> Path:
        source = _source(work / "src", long_names=long_names)
        archive = work / "a.tar"
        _run(BSDTAR, "--format", fmt, "-cf", str(archive), "-C", str(source), ".")
        return archive

    return make


def _appended(update: bool) -> Callable[[Path], Path]:
    """tar -r (or -u) adds later copies of changed files: the last one wins."""

    def make(work: Path) -> Path:
        source = _source(work / "src")
        archive = work / "a.tar"
        _run(GNU_TAR, "-cf", str(archive), "-C", str(source), ".")
        (source / "secret").write_bytes(b"changed, longer than before\n")
        os.utime(source / "secret", (BASE_MTIME + 60, BASE_MTIME + 60))
        (source / "docs" / "added.txt").write_bytes(b"new\n")
        _run(GNU_TAR, "-uf" if update else "-rf", str(archive), "-C", str(source), "./secret", "./docs/added.txt")
        return archive

    return make


def _labelled(work: Path) -> Path:
    source = _source(work / "src")
    archive = work / "a.tar"
    _run(GNU_TAR, "-V", "Nightly dump 2026-11-26", "-cf", str(archive), "-C", str(source), ".")
    return archive


def _skippable_zstd(work: Path) -> Path:
    """A zstd stream that begins with a skippable frame (as some tools write metadata)."""
    source = _source(work / "src")
    plain = work / "plain.tar"
    _run(GNU_TAR, "-cf", str(plain), "-C", str(source), ".")
    _run(ZSTD, "-q", "-o", str(work / "plain.tar.zst"), str(plain))
    archive = work / "a.tar.zst"
    frame = struct.pack("<II", 0x184D2A53, 6) + b"meta!\n"
    archive.write_bytes(frame + (work / "plain.tar.zst").read_bytes())
    return archive


FOREIGN = {
    "gnu-tar-gnu": Foreign(_gnu("--format=gnu")),
    "gnu-tar-oldgnu": Foreign(_gnu("--format=oldgnu")),
    "gnu-tar-posix": Foreign(_gnu("--format=posix")),
    "gnu-tar-ustar": Foreign(_gnu("--format=ustar", long_names=1)),
    "gnu-tar-v7": Foreign(_gnu("--format=v7", long_names=0)),
    "gnu-tar-sparse-gnu": Foreign(_gnu("--format=gnu", "--sparse", sparse=True)),
    "gnu-tar-sparse-oldgnu": Foreign(_gnu("--format=oldgnu", "--sparse", sparse=True)),
    "gnu-tar-sparse-0.0": Foreign(_gnu("--format=posix", "--sparse", "--sparse-version=0.0", sparse=True)),
    "gnu-tar-sparse-0.1": Foreign(_gnu("--format=posix", "--sparse", "--sparse-version=0.1", sparse=True)),
    "gnu-tar-sparse-1.0": Foreign(_gnu("--format=posix", "--sparse", "--sparse-version=1.0", sparse=True)),
    "gnu-tar-volume-label": Foreign(_labelled),
    "gnu-tar-appended": Foreign(
        _appended(update=False), ("1 member appears more than once ('secret')",), holds_source=False
    ),
    "gnu-tar-updated": Foreign(
        _appended(update=True), ("1 member appears more than once ('secret')",), holds_source=False
    ),
    "gnu-tar-gz": Foreign(_gnu("-z", name="a.tar.gz")),
    "gnu-tar-bz2": Foreign(_gnu("-j", name="a.tar.bz2")),
    "gnu-tar-xz": Foreign(_gnu("-J", name="a.tar.xz")),
    "gnu-tar-zst": Foreign(_gnu("--zstd", name="a.tar.zst")),
    "zstd-with-a-skippable-frame": Foreign(_skippable_zstd),
    "bsdtar-ustar": Foreign(_bsd("ustar", long_names=1)),
    "bsdtar-pax": Foreign(_bsd("pax")),
    "bsdtar-paxr": Foreign(_bsd("paxr")),
    "bsdtar-gnutar": Foreign(_bsd("gnutar")),
    "bsdtar-v7": Foreign(_bsd("v7", long_names=0)),
}


@pytest.mark.timeout(120)
@pytest.mark.parametrize("name", list(FOREIGN))
def test_obs_backup_restores_what_gnu_tar_restores(tmp_path: Path, name: str) -> None:
    case = FOREIGN[name]
    archive = case.make(tmp_path)
    ours, theirs = tmp_path / "ours", tmp_path / "theirs"
    _gnu_extract(archive, theirs)

    result = restore_backup(archive, ours)
    assert result.success, result.error
    # GNU tar sets a directory's time when it leaves it; an archive that comes back to
    # a directory later (bsdtar's order, appended members) leaves it at "now" there.
    # obs-backup sets them all at the end, as archived: checked against the source.
    moved = {path: ["mtime_ns"] for path, state in tree_state(theirs).items() if state.type == "dir"}
    assert tree_differences(theirs, ours, ignore=moved) == []
    if case.holds_source:
        assert tree_differences(tmp_path / "src", ours) == []
    assert any(w.endswith(": no manifest; restored without checksum verification") for w in result.warnings)
    for expected in case.warnings:
        assert any(expected in warning for warning in result.warnings), result.warnings
    assert len(result.warnings) == 1 + len(case.warnings), result.warnings


def test_the_last_appended_copy_is_the_one_restored(tmp_path: Path) -> None:
    """And a hard link made before the later copy keeps the earlier data, as with tar."""
    archive = _appended(update=False)(tmp_path)
    result = restore_backup(archive, tmp_path / "ours")
    assert result.success, result.error
    assert (tmp_path / "ours" / "secret").read_bytes() == b"changed, longer than before\n"
    assert os.stat(tmp_path / "ours" / "secret").st_mtime == BASE_MTIME + 60


def _hand_made(path: Path, *members: tuple[tarfile.TarInfo, bytes | None], fmt: int = tarfile.PAX_FORMAT) -> Path:
    with tarfile.open(path, "w", format=fmt) as tar:
        for info, data in members:
            if data is not None:
                info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return path


def _file(name: str, data: bytes = b"data\n", **fields: object) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.mtime = BASE_MTIME
    info.mode = 0o644
    for key, value in fields.items():
        setattr(info, key, value)
    return info, data


@pytest.mark.parametrize("value", ["inf", "nan", "-inf", "1e400", "abc", "", "1.2.3", "9" * 5000])
def test_a_pax_mtime_that_is_not_a_time_is_a_warning_and_the_header_time_is_used(tmp_path: Path, value: str) -> None:
    """GNU tar and bsdtar read on past a malformed mtime record; so does obs-backup,
    keeping the member's header time, and saying so. Nothing escapes as an internal error."""
    before, odd, after = _file("before.txt"), _file("odd.txt"), _file("after.txt")
    odd[0].pax_headers = {"mtime": value}
    archive = _hand_made(tmp_path / "a.tar", before, odd, after)
    result = restore_backup(archive, tmp_path / "ours")
    assert result.success, result.error
    assert sorted(p.name for p in (tmp_path / "ours").iterdir()) == ["after.txt", "before.txt", "odd.txt"]
    assert os.stat(tmp_path / "ours" / "odd.txt").st_mtime == BASE_MTIME
    [warning] = [w for w in result.warnings if "odd.txt" in w]
    assert "its pax mtime" in warning and "the time in its header was used" in warning
    assert "\n" not in warning and len(warning) < 300


def test_a_pax_mtime_beyond_any_clock_is_a_warning(tmp_path: Path) -> None:
    """A well-formed time no time_t holds (10**20 seconds) cannot be set anywhere: the
    header's time is used, and the warning says why."""
    info, data = _file("future.txt")
    info.pax_headers = {"mtime": "100000000000000000000.5"}
    archive = _hand_made(tmp_path / "a.tar", (info, data))
    result = restore_backup(archive, tmp_path / "ours")
    assert result.success, result.error
    assert (tmp_path / "ours" / "future.txt").read_bytes() == data
    assert os.stat(tmp_path / "ours" / "future.txt").st_mtime == BASE_MTIME
    assert any("'future.txt'" in w and "is beyond any clock" in w for w in result.warnings), result.warnings


def _raw_member(name: str, kind: bytes, data: bytes) -> bytes:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.size = len(data)
    info.mtime = BASE_MTIME
    return info.tobuf(tarfile.USTAR_FORMAT) + data + bytes(-len(data) % 512)


@pytest.mark.parametrize("code", [b"A", b"E", b"N", b"Z"])
def test_a_member_of_unknown_type_carrying_a_header_is_one_file_as_gnu_tar_extracts_it(
    tmp_path: Path, code: bytes
) -> None:
    """Its data is stepped over by its size (never parsed as the next header): GNU tar
    extracts it as a regular file holding that data, and so does obs-backup, with a
    warning; verify lists no member that is not there."""
    phantom = _raw_member("phantom.txt", tarfile.REGTYPE, b"not a member\n")
    blob = _raw_member("odd", code, phantom) + _raw_member("real.txt", tarfile.REGTYPE, b"real\n") + bytes(1024)
    archive = tmp_path / "a.tar"
    archive.write_bytes(blob)
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    subprocess.run([GNU_TAR, "-xf", str(archive), "-C", str(theirs)], capture_output=True, check=False)
    result = restore_backup(archive, tmp_path / "ours")
    assert result.success, result.error
    assert tree_differences(theirs, tmp_path / "ours") == []
    assert (tmp_path / "ours" / "odd").read_bytes() == phantom
    assert not (tmp_path / "ours" / "phantom.txt").exists()
    assert any("type obs-backup does not know ('odd' (type" in warning for warning in result.warnings)
    report = verify_backup(archive)
    assert report.checked_entries == 2


@dataclass(frozen=True)
class Refused:
    """An archive obs-backup must refuse: how to write it, and its one-line error's end."""

    make: Callable[[Path], Path]
    error: str


def _negative_size(work: Path) -> Path:
    block = bytearray(tarfile.TarInfo("f").tobuf(tarfile.USTAR_FORMAT))
    block[124:136] = b"\xff" * 12  # base-256 for -1, with no pax record to say otherwise
    block[148:156] = b"        "
    block[148:156] = b"%06o\x00 " % sum(block)
    path = work / "a.tar"
    path.write_bytes(bytes(block) + bytes(1024))
    return path


def _underscore_size(work: Path) -> Path:
    block = bytearray(tarfile.TarInfo("f").tobuf(tarfile.USTAR_FORMAT))
    block[124:136] = b"0000001_000\x00"
    block[148:156] = b"        "
    block[148:156] = b"%06o\x00 " % sum(block)
    path = work / "a.tar"
    path.write_bytes(bytes(block) + bytes(1024))
    return path


def _huge_pax(work: Path) -> Path:
    info, data = _file("f")
    info.pax_headers = {"comment": "x" * (1 << 20)}
    return _hand_made(work / "a.tar", (info, data))


def _continued(work: Path) -> Path:
    path = work / "a.tar"
    path.write_bytes(_raw_member("part2", b"M", b"the rest\n") + bytes(1024))
    return path


def _kind_changes(work: Path) -> Path:
    link = tarfile.TarInfo("x")
    link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
    return _hand_made(work / "a.tar", _file("x"), (link, None))


def _compressed_with(tool_args: list[str]) -> Callable[[Path], Path]:
    def make(work: Path) -> Path:
        source = _source(work / "src")
        archive = work / "a.tar.odd"
        _run(BSDTAR, *tool_args, "-cf", str(archive), "-C", str(source), ".")
        return archive

    return make


def _truncated_zstd(work: Path) -> Path:
    archive = _gnu("--zstd", name="whole.tar.zst")(work)
    cut = work / "a.tar.zst"
    data = archive.read_bytes()
    cut.write_bytes(data[: len(data) - 200])
    return cut


REFUSED = {
    "negative-size": Refused(_negative_size, "malformed header: member 'f' has a negative size"),
    "octal-with-underscore": Refused(_underscore_size, "the header of 'f' holds '0000001_000' where a number belongs"),
    "pax-record-over-the-cap": Refused(_huge_pax, "exceeds the 1048576-byte limit on metadata records"),
    "multi-volume-continuation": Refused(_continued, "is continued from another volume"),
    "file-then-symlink": Refused(_kind_changes, "first as a file and then as a symlink"),
    "compress-dot-z": Refused(
        _compressed_with(["-Z"]), "compressed with compress (.Z), which obs-backup does not read"
    ),
    "lz4": Refused(_compressed_with(["--lz4"]), "compressed with lz4, which obs-backup does not read"),
    "lzip": Refused(_compressed_with(["--lzip"]), "compressed with lzip, which obs-backup does not read"),
    "zstd-cut-inside-a-frame": Refused(_truncated_zstd, "archive is truncated"),
}


@pytest.mark.timeout(60)
@pytest.mark.parametrize("name", list(REFUSED))
def test_what_must_be_refused_is_one_line_exit_1_and_the_target_untouched(
    tmp_path: Path, name: str, capsys: pytest.CaptureFixture[str]
) -> None:
    case = REFUSED[name]
    archive = case.make(tmp_path)
    target = tmp_path / "target"
    target.mkdir()
    (target / "keep.txt").write_bytes(b"keep\n")
    code, out, err = run_cli(capsys, "restore", str(archive), str(target))
    assert code == 1, (out, err)
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("obs-backup: error: "), err
    assert case.error in lines[0], lines[0]
    assert "internal error" not in err
    assert sorted(p.name for p in target.iterdir()) == ["keep.txt"]
    result = restore_backup(archive, tmp_path / "fresh")
    assert not result.success and result.error and case.error in result.error
    assert not (tmp_path / "fresh").exists()


def test_many_odd_members_make_a_few_warning_lines(tmp_path: Path) -> None:
    """The first five are named; one more line counts the rest."""
    members = []
    for index in range(12):
        info, data = _file(f"odd-{index:02}.txt")
        info.pax_headers = {"mtime": "nan"}
        members.append((info, data))
    result = restore_backup(_hand_made(tmp_path / "a.tar", *members), tmp_path / "ours")
    assert result.success, result.error
    odd = [w for w in result.warnings if "pax mtime" in w or "more members like these" in w]
    assert len(odd) == 6
    assert [w.split("'")[1] for w in odd[:5]] == [f"odd-{index:02}.txt" for index in range(5)]
    assert odd[5].endswith(": and 7 more members like these")
