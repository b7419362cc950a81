"""Fidelity: what a backup keeps of each entry besides its bytes, one property at a time.

Each test backs a tree up, checks that the backup verifies, restores it and compares
the result with the source field by field (``support.trees``), then tries the edge
that would break the promise: owners by name and by number, hard links restored one
name at a time, holes, extended attributes and ACLs from other archives, times beyond
what a file system holds, FIFOs and device nodes, set-id and sticky bits. The suite
runs as root; what an ordinary user gets is tested in a child that became ``nobody``.
"""

from __future__ import annotations

import base64
import errno
import grp
import io
import json
import os
import pwd
import shutil
import socket
import stat
import tarfile
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from backup import BackupConfig, BackupResult, restore_backup, verify_backup
from backup.errors import ConfigError
from backup.manifest import manifest_name_for
from backup.plan import plan_backup, plan_restore
from support.cli import run_cli
from support.trees import (
    ACL_ACCESS,
    ACL_DEFAULT,
    GROUP,
    GROUP_OBJ,
    MASK,
    NOBODY,
    OTHER,
    UNDEFINED,
    USER,
    USER_OBJ,
    acl_value,
    allocated,
    as_nobody,
    backed_up,
    content_key,
    data_runs,
    entry_state,
    gnu_tar,
    hard_link_groups,
    make_sparse,
    restored,
    sha256_with_holes,
    shared_directory,
    tree_differences,
    tree_state,
)

from .conftest import staging_leftovers

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="fidelity tests set owners, trusted.* attributes and devices")

UID, GID = 4321, 4322  # ids with no name here (checked by _nameless)
NS_TIME = 1_600_000_000_123_456_789
MIB = 1 << 20
GIB = 1 << 30


def _nameless(*ids: int) -> None:
    for number in ids:
        for lookup in (pwd.getpwuid, grp.getgrgid):
            try:
                lookup(number)
            except KeyError:
                continue
            pytest.skip(f"id {number} has a name on this system")


def _manifest_entry(result: BackupResult, path: str) -> Any:
    assert result.manifest is not None
    return result.manifest.entry_map()[path]


def _edit_manifest(result: BackupResult, path: str, **changes: Any) -> None:
    """Change one entry of a backup's manifest on disk (tampering, for verify to find)."""
    assert result.manifest_path is not None
    data = json.loads(result.manifest_path.read_text())
    (entry,) = [entry for entry in data["files"] if entry["path"] == path]
    entry.update(changes)
    result.manifest_path.write_text(json.dumps(data))


def _drop_manifest(result: BackupResult) -> Path:
    """Move a backup's manifest away, leaving an archive like any other tar file."""
    assert result.manifest_path is not None and result.backup_path is not None
    return result.manifest_path.rename(result.manifest_path.with_name("elsewhere.json"))


def _pax_headers(archive: Path) -> dict[str, dict[str, str]]:
    with tarfile.open(archive) as tar:
        return {member.name.removeprefix("./"): member.pax_headers for member in tar.getmembers()}


def _warnings_about(result: BackupResult, words: str) -> list[str]:
    return [warning for warning in result.warnings if words in warning]


@pytest.fixture
def shared() -> Iterator[Path]:
    """A directory ``nobody`` can reach."""
    with shared_directory("obs-fidelity-") as root:
        yield root


def _open_to_others(result: BackupResult) -> None:
    assert result.backup_path is not None and result.manifest_path is not None
    os.chmod(result.backup_path.parent, 0o755)
    for path in (result.backup_path, result.manifest_path):
        os.chmod(path, 0o644)


def _home_of_nobody(root: Path) -> Path:
    home = root / "home"
    home.mkdir()
    os.chown(home, NOBODY, NOBODY)
    return home


def _outcome(result: BackupResult) -> tuple[bool, str | None, list[str]]:
    return result.success, result.error, list(result.warnings)


# -- owners -----------------------------------------------------------------------------------


def _owned_tree(root: Path) -> Path:
    """Entries owned by nobody:nogroup (names that exist here) and by 4321:4322 (no
    names), a directory and a symlink among them."""
    (root / "dir").mkdir(parents=True)
    (root / "by-name.txt").write_bytes(b"nobody's\n")
    os.chown(root / "by-name.txt", NOBODY, NOBODY)
    (root / "by-number.txt").write_bytes(b"nameless\n")
    os.chown(root / "by-number.txt", UID, GID)
    (root / "dir" / "mixed.txt").write_bytes(b"mixed\n")
    os.chown(root / "dir" / "mixed.txt", UID, NOBODY)
    os.symlink("../by-name.txt", root / "dir" / "link")
    os.chown(root / "dir" / "link", NOBODY, GID, follow_symlinks=False)
    os.chown(root / "dir", UID, GID)
    return root


def test_owners_come_back_by_name_and_by_number_as_root(tmp_path: Path) -> None:
    _nameless(UID, GID)
    source = _owned_tree(tmp_path / "source")
    result = backed_up(source, tmp_path / "backups")
    named, nameless = _manifest_entry(result, "by-name.txt"), _manifest_entry(result, "by-number.txt")
    assert (named.uid, named.gid, named.user, named.group) == (NOBODY, NOBODY, "nobody", "nogroup")
    assert (nameless.uid, nameless.gid, nameless.user or "", nameless.group or "") == (UID, GID, "", "")

    done = restored(result.backup_path, tmp_path / "out")
    assert done.warnings == []
    assert tree_differences(source, tmp_path / "out") == []


def _owner_archive(path: Path) -> Path:
    """A tar file naming owners three ways: a name that exists here for another id
    (nobody as 4321), no name at all, and a name unknown here."""
    members = [
        ("named", "nobody", UID, "nogroup", GID),
        ("nameless", "", UID + 2, "", GID + 2),
        ("stranger", "no-such-user-obs", UID + 4, "no-such-group-obs", GID + 4),
    ]
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
        for name, uname, uid, gname, gid in members:
            info = tarfile.TarInfo(name)
            info.uname, info.uid, info.gname, info.gid = uname, uid, gname, gid
            info.mode, info.mtime, info.size = 0o644, 1_600_000_000, len(name)
            tar.addfile(info, io.BytesIO(name.encode()))
    return path


OWNER_CASES = {
    "by-name": ({}, {"named": (NOBODY, NOBODY), "nameless": (UID + 2, GID + 2), "stranger": (UID + 4, GID + 4)}),
    "numeric": (
        {"numeric_owner": True},
        {"named": (UID, GID), "nameless": (UID + 2, GID + 2), "stranger": (UID + 4, GID + 4)},
    ),
    "not-same-owner": ({"same_owner": False}, {"named": (0, 0), "nameless": (0, 0), "stranger": (0, 0)}),
    "not-same-owner-numeric": (
        {"same_owner": False, "numeric_owner": True},
        {"named": (0, 0), "nameless": (0, 0), "stranger": (0, 0)},
    ),
}


@pytest.mark.parametrize("case", list(OWNER_CASES))
def test_a_name_wins_over_its_number_unless_numeric_owner(tmp_path: Path, case: str) -> None:
    _nameless(UID, GID, UID + 2, GID + 2, UID + 4, GID + 4)
    options, expected = OWNER_CASES[case]
    archive = _owner_archive(tmp_path / "owners.tar")
    restored(archive, tmp_path / "out", **options)
    found = {
        name: (os.lstat(tmp_path / "out" / name).st_uid, os.lstat(tmp_path / "out" / name).st_gid) for name in expected
    }
    assert found == expected


def test_a_user_who_is_not_root_owns_everything_restored_and_loses_set_id_bits(shared: Path) -> None:
    _nameless(UID, GID)
    source = _owned_tree(shared / "source")
    (source / "setuid").write_bytes(b"#!/bin/sh\n")
    os.chown(source / "setuid", UID, GID)
    os.chmod(source / "setuid", 0o4755)
    (source / "setgid-dir").mkdir()
    os.chown(source / "setgid-dir", UID, GID)
    os.chmod(source / "setgid-dir", 0o2775)
    os.mkfifo(source / "fifo", 0o640)
    os.chown(source / "fifo", UID, GID)
    result = backed_up(source, shared / "backups")
    _open_to_others(result)
    target = _home_of_nobody(shared) / "out"

    success, error, warnings = as_nobody(lambda: _outcome(restore_backup(result.backup_path, target)))

    assert success, error
    owners = {path: (state.uid, state.gid) for path, state in tree_state(target).items()}
    assert owners == dict.fromkeys(owners, (NOBODY, NOBODY)) and len(owners) == 8
    assert (os.stat(target).st_uid, os.stat(target).st_gid) == (NOBODY, NOBODY)
    assert stat.S_IMODE(os.stat(target / "setuid").st_mode) == 0o755
    assert stat.S_IMODE(os.stat(target / "setgid-dir").st_mode) == 0o775
    set_id = [warning for warning in warnings if "set-user-id and set-group-id" in warning]
    assert len(set_id) == 1 and "(setgid-dir, setuid)" in set_id[0], warnings
    ignore = dict.fromkeys(tree_state(source), ("uid", "gid"))
    ignore["setuid"] = ignore["setgid-dir"] = ("uid", "gid", "mode")
    assert tree_differences(source, target, ignore=ignore) == []


def test_asking_for_archived_owners_as_a_user_who_is_not_root_is_refused(shared: Path) -> None:
    source = _owned_tree(shared / "source")
    result = backed_up(source, shared / "backups")
    _open_to_others(result)
    target = _home_of_nobody(shared) / "out"

    def attempt() -> tuple[str, tuple[bool, str | None, list[str]]]:
        try:
            plan_restore(result.backup_path, target, same_owner=True)
        except ConfigError as exc:
            refused = str(exc)
        else:
            refused = "planned"
        return refused, _outcome(restore_backup(result.backup_path, target, same_owner=True))

    refused, (success, error, _) = as_nobody(attempt)
    assert refused == "only root can give restored files their archived owners"
    assert (success, error) == (False, refused)
    assert not target.exists()


def test_verify_compares_owners_when_asked(tmp_path: Path) -> None:
    _nameless(UID, GID)
    result = backed_up(_owned_tree(tmp_path / "source"), tmp_path / "backups")
    assert verify_backup(result.backup_path, check_owners=True).ok

    _edit_manifest(result, "by-name.txt", uid=4444)

    assert verify_backup(result.backup_path).ok, "owners are compared only when asked"
    report = verify_backup(result.backup_path, check_owners=True)
    assert [mismatch.path for mismatch in report.mismatched] == ["by-name.txt"]
    assert (report.missing, report.extra, report.problems) == ([], [], [])


def test_an_owner_mismatch_says_which_ids_differ(tmp_path: Path) -> None:
    result = backed_up(_owned_tree(tmp_path / "source"), tmp_path / "backups")
    _edit_manifest(result, "by-name.txt", uid=4444)
    (mismatch,) = verify_backup(result.backup_path, check_owners=True).mismatched
    assert "4444" in mismatch.problem and str(NOBODY) in mismatch.problem, mismatch.problem


def test_the_command_lines_owner_options(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _nameless(UID, GID)
    archive = str(_owner_archive(tmp_path / "owners.tar"))
    for flags, expected in (((), (NOBODY, NOBODY)), (("--numeric-owner",), (UID, GID)), (("--no-same-owner",), (0, 0))):
        target = tmp_path / ("out" + "".join(flags))
        code, _, err = run_cli(capsys, "restore", archive, str(target), *flags)
        assert code == 0, err
        info = os.lstat(target / "named")
        assert (info.st_uid, info.st_gid) == expected, flags

    result = backed_up(_owned_tree(tmp_path / "source"), tmp_path / "backups")
    assert run_cli(capsys, "verify", str(result.backup_path), "--check-owners")[0] == 0
    _edit_manifest(result, "by-name.txt", uid=4444)
    assert run_cli(capsys, "verify", str(result.backup_path))[0] == 0
    code, _, err = run_cli(capsys, "verify", str(result.backup_path), "--check-owners")
    assert code == 1
    assert "by-name.txt" in err and "FAILED, 1 mismatched" in err


# -- hard links -------------------------------------------------------------------------------


def _linked_tree(root: Path) -> Path:
    """One 1 MiB file with three names (the first in archive order is ``first``)."""
    (root / "sub").mkdir(parents=True)
    (root / "first").write_bytes(os.urandom(MIB))
    os.link(root / "first", root / "second")
    os.link(root / "first", root / "sub" / "third")
    (root / "lonely").write_bytes(b"one name\n")
    return root


def test_a_file_with_several_names_is_archived_once_and_restored_as_one_file(tmp_path: Path) -> None:
    source = _linked_tree(tmp_path / "source")
    result = backed_up(source, tmp_path / "backups")

    with tarfile.open(result.backup_path) as tar:
        members = {member.name: member for member in tar.getmembers()}
    assert sorted(name for name, member in members.items() if member.isreg()) == ["first", "lonely"]
    assert members["first"].size == MIB
    for name in ("second", "sub/third"):
        assert members[name].islnk() and members[name].linkname == "first", name
    assert os.path.getsize(result.backup_path) < MIB + 64 * 1024, "the data is archived more than once"
    first = _manifest_entry(result, "first")
    for name in ("second", "sub/third"):
        entry = _manifest_entry(result, name)
        assert (entry.type, entry.link_target, entry.size, entry.checksum) == (
            "hardlink",
            "first",
            first.size,
            first.checksum,
        ), name

    restored(result.backup_path, tmp_path / "out")
    assert tree_differences(source, tmp_path / "out") == []
    assert os.stat(tmp_path / "out" / "first").st_nlink == 3


@pytest.mark.parametrize(
    ("paths", "expected"),
    [
        (["second"], ["second"]),
        (["sub"], ["sub", "sub/third"]),
        (["second", "sub/third"], ["second", "sub", "sub/third"]),
    ],
)
def test_restoring_only_later_names_still_gets_the_data(tmp_path: Path, paths: list[str], expected: list[str]) -> None:
    source = _linked_tree(tmp_path / "source")
    result = backed_up(source, tmp_path / "backups")
    target = tmp_path / "out"

    restored(result.backup_path, target, paths=paths)

    found = sorted(path for path in tree_state(target))
    assert found == expected, "the link source (or its holding place) was left in the target"
    files = [name for name in expected if name != "sub"]
    for name in files:
        assert content_key(target / name) == content_key(source / "first"), name
        assert os.stat(target / name).st_nlink == len(files), name
    assert len({os.stat(target / name).st_ino for name in files}) == 1


@pytest.mark.parametrize("made_by", ["gnu-tar", "obs-backup"])
def test_without_a_manifest_a_later_name_alone_gets_the_data_of_the_file_it_names(tmp_path: Path, made_by: str) -> None:
    """The listing pass a selection needs finds the link and its first name, which is
    held aside for it, as with a manifest."""
    source = _linked_tree(tmp_path / "source")
    if made_by == "gnu-tar":
        archive = tmp_path / "links.tar"
        gnu_tar("--format=posix", "-cf", str(archive), "-C", str(source), "first", "second", "sub")
    else:
        result = backed_up(source, tmp_path / "backups")
        _drop_manifest(result)
        archive = result.backup_path
    target = tmp_path / "out"

    restored = restore_backup(archive, target, paths=["second"])

    assert restored.success, restored.error
    assert os.listdir(target) == ["second"]
    assert (target / "second").read_bytes() == (source / "first").read_bytes()
    assert staging_leftovers(tmp_path) == []


def test_gnu_tar_extracts_our_hard_links_as_links(tmp_path: Path) -> None:
    source = _linked_tree(tmp_path / "source")
    result = backed_up(source, tmp_path / "backups")
    out = tmp_path / "gnu"
    out.mkdir()
    gnu_tar("-xf", str(result.backup_path), "-C", str(out))
    assert hard_link_groups(out) == hard_link_groups(source) == {frozenset({"first", "second", "sub/third"})}
    assert content_key(out / "sub" / "third") == content_key(source / "first")


# -- sparse files -----------------------------------------------------------------------------


@dataclass(frozen=True)
class SparseBackup:
    source: Path
    result: BackupResult
    sha256: str  # of the source's 1 GiB, holes read as zeros: computed once


@pytest.fixture(scope="module")
def gib_sparse(tmp_path_factory: pytest.TempPathFactory) -> SparseBackup:
    """A 1 GiB file holding two small runs of data (one not block-aligned), backed up."""
    root = tmp_path_factory.mktemp("sparse")
    source = root / "source"
    source.mkdir()
    make_sparse(source / "disk.img", GIB, [(MIB + 17, os.urandom(5000)), (700 * MIB, os.urandom(3000))])
    assert allocated(source / "disk.img") < MIB, "this file system does not keep holes"
    result = backed_up(source, root / "backups")
    return SparseBackup(source, result, sha256_with_holes(source / "disk.img"))


def test_a_sparse_file_is_archived_as_its_data_only(gib_sparse: SparseBackup) -> None:
    result = gib_sparse.result
    assert os.path.getsize(result.backup_path) < 64 * 1024
    entry = _manifest_entry(result, "disk.img")
    assert (entry.size, entry.checksum) == (GIB, gib_sparse.sha256)
    assert 8000 <= entry.data_size <= 16 * 1024
    headers = _pax_headers(result.backup_path)["disk.img"]
    assert {key: headers.get(key) for key in ("GNU.sparse.major", "GNU.sparse.minor", "GNU.sparse.realsize")} == {
        "GNU.sparse.major": "1",
        "GNU.sparse.minor": "0",
        "GNU.sparse.realsize": str(GIB),
    }


def test_a_sparse_file_restores_with_its_holes(gib_sparse: SparseBackup, tmp_path: Path) -> None:
    target = tmp_path / "out"
    restored(gib_sparse.result.backup_path, target)
    restored_file = target / "disk.img"
    assert os.stat(restored_file).st_size == GIB
    assert allocated(restored_file) < MIB, "the holes were written out"
    assert sha256_with_holes(restored_file) == gib_sparse.sha256
    assert tree_differences(gib_sparse.source, target) == []


def test_gnu_tar_restores_the_holes_of_our_sparse_files(gib_sparse: SparseBackup, tmp_path: Path) -> None:
    out = tmp_path / "gnu"
    out.mkdir()
    gnu_tar("-S", "-xf", str(gib_sparse.result.backup_path), "-C", str(out))
    assert os.listdir(out) == ["disk.img"], "GNU tar did not read the sparse member as one"
    assert allocated(out / "disk.img") < MIB
    assert tree_differences(gib_sparse.source, out) == []


def test_verify_finds_a_flipped_byte_in_a_sparse_files_data(gib_sparse: SparseBackup, tmp_path: Path) -> None:
    result = gib_sparse.result
    data = bytearray(result.backup_path.read_bytes())
    with open(gib_sparse.source / "disk.img", "rb") as handle:
        handle.seek(MIB + 17)
        run = handle.read(5000)
    where = data.find(run)
    assert where > 0 and data.find(run, where + 1) == -1
    data[where + 2500] ^= 0x01
    archive = tmp_path / "flipped.tar"
    archive.write_bytes(data)
    shutil.copy(result.manifest_path, tmp_path / manifest_name_for(archive.name))

    report = verify_backup(archive)

    assert [mismatch.path for mismatch in report.mismatched] == ["disk.img"]
    assert report.mismatched[0].problem.startswith("checksum ")
    assert any("archive checksum" in problem for problem in report.problems)


@pytest.fixture(scope="module")
def sparse_variety(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """64 MiB files with holes laid out every way: two runs, data at both ends, no data
    at all, and 30 runs (past the 4 of an old GNU header and the 21 of one extension
    block). Whole-second times, which every tar format holds."""
    source = tmp_path_factory.mktemp("variety") / "source"
    source.mkdir()
    size = 64 * MIB
    make_sparse(source / "two-runs", size, [(MIB, b"A" * 5000), (40 * MIB, b"B" * 3000)])
    make_sparse(source / "both-ends", size, [(0, b"H" * 100), (size - 10, b"T" * 10)])
    make_sparse(source / "all-hole", size, [])
    make_sparse(source / "many-runs", size, [(i * 2 * MIB + i, bytes([i]) * 700) for i in range(1, 31)])
    for name in os.listdir(source):
        os.utime(source / name, (1_600_000_000, 1_600_000_000))
    return source


@pytest.mark.parametrize(
    "flags",
    [
        ("--format=gnu",),
        ("--format=oldgnu",),
        ("--format=posix", "--sparse-version=0.0"),
        ("--format=posix", "--sparse-version=0.1"),
        ("--format=posix", "--sparse-version=1.0"),
    ],
    ids=["gnu", "oldgnu", "pax-0.0", "pax-0.1", "pax-1.0"],
)
def test_gnu_tars_sparse_archives_restore_with_their_holes(
    sparse_variety: Path, tmp_path: Path, flags: tuple[str, ...]
) -> None:
    archive = tmp_path / "sparse.tar"
    gnu_tar(*flags, "-S", "-cf", str(archive), "-C", str(sparse_variety), ".")
    assert os.path.getsize(archive) < MIB, "GNU tar did not write sparse members"
    target = tmp_path / "out"

    restored(archive, target)

    assert tree_differences(sparse_variety, target) == []
    assert allocated(target / "all-hole") == 0
    assert sum(allocated(target / name) for name in os.listdir(target)) < MIB


def _free_space_tree(root: Path) -> tuple[Path, int]:
    """Make a tree; return it and the bytes restoring it writes, worked out from the
    files themselves (not the manifest): each file's data rounded up to a block, the
    sparse file's runs only, the second name of a file nothing."""
    root.mkdir()
    (root / "big.bin").write_bytes(os.urandom(2 * MIB + 1))
    os.link(root / "big.bin", root / "big-again.bin")
    (root / "small.txt").write_bytes(b"ten bytes\n")
    make_sparse(root / "disk.img", 64 * MIB, [(MIB, os.urandom(5000)), (40 * MIB, os.urandom(3000))])
    block = os.statvfs(root).f_frsize
    runs = sum(length for _, length in data_runs(root / "disk.img"))
    assert runs < MIB
    return root, -(-(2 * MIB + 1) // block) * block + block + -(-runs // block) * block


_REAL_FSTATVFS = os.fstatvfs


def _report_free(monkeypatch: pytest.MonkeyPatch, free: int) -> None:
    """Fault injection: the file system the restore stages on says ``free`` bytes are available."""

    def fstatvfs(fd: int) -> os.statvfs_result:
        fields = list(_REAL_FSTATVFS(fd))
        fields[3] = fields[4] = free // fields[1]  # f_bfree, f_bavail, in f_frsize blocks
        return os.statvfs_result(fields)

    monkeypatch.setattr("backup.restore.os.fstatvfs", fstatvfs)


def test_a_restore_that_cannot_fit_is_refused_before_anything_is_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source, needed = _free_space_tree(tmp_path / "source")
    result = backed_up(source, tmp_path / "backups")
    target = tmp_path / "target"
    target.mkdir()
    (target / "keep.txt").write_bytes(b"mine\n")
    before = tree_state(target)
    refusal = f"{target}: restoring needs {needed} bytes and its file system has {MIB} free; nothing was restored"
    _report_free(monkeypatch, MIB)

    failed = restore_backup(result.backup_path, target)

    assert (failed.success, failed.error) == (False, refusal)
    assert tree_state(target) == before
    assert staging_leftovers(tmp_path) == []
    # Refused before the archive is even read: its data, zeroed, makes no difference.
    result.backup_path.write_bytes(bytes(result.backup_path.stat().st_size))
    failed = restore_backup(result.backup_path, target)
    assert (failed.success, failed.error) == (False, refusal)


def test_exactly_enough_free_space_is_enough_and_holes_need_none(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source, needed = _free_space_tree(tmp_path / "source")
    result = backed_up(source, tmp_path / "backups")
    block = os.statvfs(tmp_path).f_frsize

    _report_free(monkeypatch, needed - block)
    assert not restore_backup(result.backup_path, tmp_path / "short").success
    _report_free(monkeypatch, needed)
    restored(result.backup_path, tmp_path / "exact")
    assert tree_differences(source, tmp_path / "exact") == []
    # 64 MiB long, a few KiB of data: restored with 1 MiB free.
    _report_free(monkeypatch, MIB)
    restored(result.backup_path, tmp_path / "sparse-only", paths=["disk.img"])


# -- extended attributes and ACLs -------------------------------------------------------------

BINARY_VALUE = b"\x00\xff\x00 tail \xff"
DIR_ACCESS = acl_value(
    (USER_OBJ, 7, UNDEFINED),
    (USER, 5, NOBODY),
    (GROUP_OBJ, 5, UNDEFINED),
    (GROUP, 7, GID),
    (MASK, 7, UNDEFINED),
    (OTHER, 1, UNDEFINED),
)
DIR_DEFAULT = acl_value(
    (USER_OBJ, 7, UNDEFINED),
    (USER, 5, UID),
    (GROUP_OBJ, 5, UNDEFINED),
    (GROUP, 1, NOBODY),
    (MASK, 5, UNDEFINED),
    (OTHER, 0, UNDEFINED),
)
FILE_ACCESS = acl_value(
    (USER_OBJ, 6, UNDEFINED), (USER, 4, NOBODY), (GROUP_OBJ, 4, UNDEFINED), (MASK, 4, UNDEFINED), (OTHER, 0, UNDEFINED)
)


def _attributed_tree(root: Path) -> Path:
    """user.* attributes (binary, empty, text), trusted.* and security.* ones, and a
    directory with an access and a default ACL holding a file with its own ACL."""
    (root / "shared").mkdir(parents=True)
    (root / "attrs.bin").write_bytes(b"attributes\n")
    for name, value in (
        ("user.binary", BINARY_VALUE),
        ("user.empty", b""),
        ("user.text", b"plain"),
        ("trusted.obs", b"t\x00v"),
        ("security.obs", b"s"),
    ):
        os.setxattr(root / "attrs.bin", name, value)
    (root / "shared" / "file").write_bytes(b"shared\n")
    os.setxattr(root / "shared" / "file", ACL_ACCESS, FILE_ACCESS)
    os.setxattr(root / "shared", ACL_ACCESS, DIR_ACCESS)
    os.setxattr(root / "shared", ACL_DEFAULT, DIR_DEFAULT)
    return root


def _xattrs(path: Path, prefix: str = "") -> dict[str, bytes]:
    return {name: value for name, value in entry_state(path).xattrs if name.startswith(prefix)}


def test_extended_attributes_and_acls_round_trip(tmp_path: Path) -> None:
    source = _attributed_tree(tmp_path / "source")
    result = backed_up(source, tmp_path / "backups")
    assert _manifest_entry(result, "attrs.bin").xattrs["user.binary"] == BINARY_VALUE

    done = restored(result.backup_path, tmp_path / "out")

    assert done.warnings == []
    assert tree_differences(source, tmp_path / "out") == []
    assert os.getxattr(tmp_path / "out" / "shared", ACL_DEFAULT) == DIR_DEFAULT


def test_gnu_tar_restores_user_attributes_and_acls_from_our_archive(tmp_path: Path) -> None:
    source = _attributed_tree(tmp_path / "source")
    result = backed_up(source, tmp_path / "backups")
    out = tmp_path / "gnu"
    out.mkdir()
    gnu_tar("--xattrs", "--acls", "-xf", str(result.backup_path), "-C", str(out))
    for name in ("attrs.bin", "shared", "shared/file"):
        for prefix in ("user.", "system.posix_acl_"):
            assert _xattrs(out / name, prefix) == _xattrs(source / name, prefix), (name, prefix)
    assert _xattrs(out / "attrs.bin", "user.")["user.binary"] == BINARY_VALUE


def test_our_restore_of_gnu_tars_attributes_and_acls(tmp_path: Path) -> None:
    source = _attributed_tree(tmp_path / "source")
    archive = tmp_path / "gnu.tar"
    gnu_tar("--format=posix", "--xattrs", "--acls", "-cf", str(archive), "-C", str(source), ".")
    assert "SCHILY.xattr.trusted.obs" in _pax_headers(archive)["attrs.bin"], "GNU tar left it out: the test proves less"

    done = restored(archive, tmp_path / "out")

    ignore = {"attrs.bin": ("xattrs",)}
    assert tree_differences(source, tmp_path / "out", ignore=ignore) == []
    assert _xattrs(tmp_path / "out" / "attrs.bin") == _xattrs(source / "attrs.bin", "user.")
    assert _warnings_about(done, "security.* and trusted.* attributes of 1 entry were not restored (attrs.bin)")


def test_an_acl_given_only_as_text_is_restored(tmp_path: Path) -> None:
    source = _attributed_tree(tmp_path / "source")
    archive = tmp_path / "acls-only.tar"
    gnu_tar("--format=posix", "--acls", "-cf", str(archive), "-C", str(source), ".")
    headers = _pax_headers(archive)
    assert "SCHILY.acl.default" in headers["shared"] and "SCHILY.acl.access" in headers["shared/file"]
    assert not [key for records in headers.values() for key in records if key.startswith("SCHILY.xattr.")]
    assert "user:nobody:" in headers["shared/file"]["SCHILY.acl.access"], "no name to resolve: the test proves less"

    done = restored(archive, tmp_path / "out")

    assert not _warnings_about(done, "not restored"), done.warnings
    for name in ("shared", "shared/file"):
        assert _xattrs(tmp_path / "out" / name) == _xattrs(source / name), name
    assert _xattrs(tmp_path / "out" / "attrs.bin") == {}


def test_an_attribute_the_file_system_refuses_is_a_warning(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    source = _attributed_tree(tmp_path / "source")
    result = backed_up(source, tmp_path / "backups")
    real = os.setxattr

    def setxattr(path: Any, name: str, value: bytes, *args: Any, **kwargs: Any) -> None:
        # Fault injection: a file system without room for this one attribute.
        if name == "user.text":
            raise OSError(errno.ENOTSUP, os.strerror(errno.ENOTSUP), path)
        real(path, name, value, *args, **kwargs)

    monkeypatch.setattr("backup.restore.os.setxattr", setxattr)
    done = restored(result.backup_path, tmp_path / "out")

    assert done.warnings == [
        f"{result.backup_path}: 1 owner, extended attribute or time was not restored, as this file system or user "
        "cannot hold them: attrs.bin (user.text: Operation not supported)"
    ]
    expected = _xattrs(source / "attrs.bin")
    del expected["user.text"]
    assert _xattrs(tmp_path / "out" / "attrs.bin") == expected
    assert tree_differences(source, tmp_path / "out", ignore={"attrs.bin": ("xattrs",)}) == []


def test_security_and_trusted_attributes_need_the_manifest(tmp_path: Path) -> None:
    source = _attributed_tree(tmp_path / "source")
    result = backed_up(source, tmp_path / "backups")
    _drop_manifest(result)

    done = restored(result.backup_path, tmp_path / "out")

    assert _xattrs(tmp_path / "out" / "attrs.bin") == _xattrs(source / "attrs.bin", "user.")
    assert tree_differences(source, tmp_path / "out", ignore={"attrs.bin": ("xattrs",)}) == []
    assert _warnings_about(
        done,
        "security.* and trusted.* attributes of 1 entry were not restored (attrs.bin): they are restored only "
        "from an archive with its manifest",
    )


def test_an_acl_the_kernel_cannot_hold_is_a_warning_not_a_failure(tmp_path: Path) -> None:
    archive = tmp_path / "odd-acl.tar"
    with tarfile.open(archive, "w", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo("file")
        info.size = 2
        info.pax_headers = {"SCHILY.acl.access": "user::rw-\nuser:4294967296:r--\ngroup::r--\nmask::r--\nother::---\n"}
        tar.addfile(info, io.BytesIO(b"hi"))
    done = restore_backup(archive, tmp_path / "out")
    assert done.success, done.error
    assert _warnings_about(done, "file (system.posix_acl_access:")


def test_an_attribute_name_with_an_equals_sign_round_trips(tmp_path: Path) -> None:
    source = tmp_path / "source"
    source.mkdir()
    (source / "file").write_bytes(b"x")
    os.setxattr(source / "file", "user.key=value", b"v")
    result = backed_up(source, tmp_path / "backups")
    restored(result.backup_path, tmp_path / "out")
    assert tree_differences(source, tmp_path / "out") == []


def test_attribute_names_with_equals_and_percent_signs_travel_between_gnu_tar_and_us(tmp_path: Path) -> None:
    source = tmp_path / "source"
    source.mkdir()
    (source / "file").write_bytes(b"x")
    os.setxattr(source / "file", "user.a=b", b"1")
    os.setxattr(source / "file", "user.p%3Dq", b"2")
    archive = tmp_path / "gnu.tar"
    gnu_tar("--format=posix", "--xattrs", "-cf", str(archive), "-C", str(source), "file")
    restored(archive, tmp_path / "ours")
    assert _xattrs(tmp_path / "ours" / "file") == _xattrs(source / "file")

    os.removexattr(source / "file", "user.a=b")  # what we cannot archive yet (above)
    result = backed_up(source, tmp_path / "backups")
    out = tmp_path / "gnu"
    out.mkdir()
    gnu_tar("--xattrs", "-xf", str(result.backup_path), "-C", str(out))
    assert _xattrs(out / "file") == _xattrs(source / "file")


# -- times ------------------------------------------------------------------------------------


def test_nanosecond_times_of_files_directories_symlinks_and_fifos_restore_exactly(tmp_path: Path) -> None:
    source = tmp_path / "source"
    (source / "dir").mkdir(parents=True)
    (source / "dir" / "file").write_bytes(b"ns\n")
    os.symlink("dir/file", source / "link")
    os.mkfifo(source / "fifo")
    (source / "before-1970").write_bytes(b"-1.5 s\n")
    times = {
        "dir/file": NS_TIME,
        "link": NS_TIME + 1,
        "fifo": NS_TIME + 2,
        "before-1970": -1_500_000_000,
        "dir": NS_TIME + 3,
    }
    for name, ns in times.items():  # the directory last: writing into it changes its time
        os.utime(source / name, ns=(ns, ns), follow_symlinks=False)
    assert {name: os.lstat(source / name).st_mtime_ns for name in times} == times
    result = backed_up(source, tmp_path / "backups")
    assert _pax_headers(result.backup_path)["dir/file"]["mtime"] == "1600000000.123456789"

    restored(result.backup_path, tmp_path / "out")

    assert {name: os.lstat(tmp_path / "out" / name).st_mtime_ns for name in times} == times
    assert tree_differences(source, tmp_path / "out") == []


FAR_TIMES = {
    "before-1970": -1_500_000_000,
    "year-2500": 16_725_225_600_000_000_001,  # 2500-01-01 plus 1 ns
    "2-to-the-40": 2**40 * 1_000_000_000,  # past datetime's year 9999
}


@pytest.fixture
def far_time_dir(tmp_path: Path) -> Iterator[Path]:
    """A directory on a file system that holds every time in FAR_TIMES: ext4 stops at
    2446 (and silently clamps), so /dev/shm (tmpfs) is used where tmp_path's cannot."""
    for base in (tmp_path, Path("/dev/shm")):
        if not base.is_dir():
            continue
        probe_dir = Path(tempfile.mkdtemp(prefix="obs-far-", dir=base))
        probe = probe_dir / "probe"
        probe.touch()
        holds = True
        for ns in FAR_TIMES.values():
            try:
                os.utime(probe, ns=(ns, ns))
            except (OSError, OverflowError):
                holds = False
                break
            holds = holds and os.stat(probe).st_mtime_ns == ns
        probe.unlink()
        if holds:
            try:
                yield probe_dir
            finally:
                shutil.rmtree(probe_dir, ignore_errors=True)
            return
        shutil.rmtree(probe_dir, ignore_errors=True)
    pytest.skip("no file system here holds times past 2446")


def test_times_before_1970_and_far_in_the_future_round_trip(far_time_dir: Path) -> None:
    source = far_time_dir / "source"
    source.mkdir()
    for name, ns in FAR_TIMES.items():
        (source / name).write_bytes(name.encode())
        os.utime(source / name, ns=(ns, ns))
    result = backed_up(source, far_time_dir / "backups")
    modified = {
        name: (_manifest_entry(result, name).modified, _manifest_entry(result, name).mtime_ns) for name in FAR_TIMES
    }
    assert modified == {
        "before-1970": ("1969-12-31T23:59:58.500000+00:00", FAR_TIMES["before-1970"]),
        "year-2500": ("2500-01-01T00:00:00+00:00", FAR_TIMES["year-2500"]),
        "2-to-the-40": (f"@{2**40}", FAR_TIMES["2-to-the-40"]),
    }

    restored(result.backup_path, far_time_dir / "out")

    assert tree_differences(source, far_time_dir / "out") == []


def test_a_time_beyond_what_the_file_system_holds_is_a_warning_not_a_failure(tmp_path: Path) -> None:
    archive = tmp_path / "far.tar"
    with tarfile.open(archive, "w", format=tarfile.PAX_FORMAT) as tar:
        for name, kind, when in (
            ("far-file", tarfile.REGTYPE, "99999999999999999999.5"),
            ("far-dir", tarfile.DIRTYPE, "99999999999999999999"),
            ("far-link", tarfile.SYMTYPE, "-99999999999999999999"),
            ("fine", tarfile.REGTYPE, "1600000000.5"),
        ):
            info = tarfile.TarInfo(name)
            info.type, info.linkname, info.pax_headers = (
                kind,
                "fine" if kind == tarfile.SYMTYPE else "",
                {"mtime": when},
            )
            tar.addfile(info, io.BytesIO(b"") if kind == tarfile.REGTYPE else None)

    done = restored(archive, tmp_path / "out")

    # 10**20 seconds is beyond a 64-bit time_t: no file system holds it, so the
    # member keeps its header's time (0 here), and each says so.
    for name in ("far-file", "far-dir", "far-link"):
        (warning,) = _warnings_about(done, f"member {name!r}: its pax mtime")
        assert warning.endswith("is beyond any clock; the time in its header was used"), warning
        assert os.lstat(tmp_path / "out" / name).st_mtime_ns == 0
    assert os.stat(tmp_path / "out" / "fine").st_mtime_ns == 1_600_000_000_500_000_000
    assert sorted(os.listdir(tmp_path / "out")) == ["far-dir", "far-file", "far-link", "fine"]


# -- FIFOs, device nodes, sockets ---------------------------------------------------------------


def _special_tree(root: Path) -> Path:
    root.mkdir()
    os.mkfifo(root / "fifo", 0o640)
    os.chown(root / "fifo", UID, GID)
    os.mknod(root / "null", 0o666 | stat.S_IFCHR, os.makedev(1, 3))
    os.chmod(root / "null", 0o666)
    os.mknod(root / "block", 0o660 | stat.S_IFBLK, os.makedev(7, 200))
    os.chown(root / "block", 0, NOBODY)
    for offset, name in enumerate(("fifo", "null", "block")):
        os.utime(root / name, ns=(NS_TIME + offset, NS_TIME + offset))
    return root


def test_fifos_and_device_nodes_round_trip_as_root(tmp_path: Path) -> None:
    source = _special_tree(tmp_path / "source")
    result = backed_up(source, tmp_path / "backups")
    kinds = {
        name: (_manifest_entry(result, name).type, _manifest_entry(result, name).device)
        for name in ("fifo", "null", "block")
    }
    assert kinds == {"fifo": ("fifo", None), "null": ("chardev", (1, 3)), "block": ("blockdev", (7, 200))}

    done = restored(result.backup_path, tmp_path / "out")

    assert done.warnings == []
    assert tree_differences(source, tmp_path / "out") == []
    assert os.lstat(tmp_path / "out" / "null").st_rdev == os.makedev(1, 3)


def test_a_socket_is_left_out_with_a_warning(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    source = tmp_path / "source"
    source.mkdir()
    (source / "file").write_bytes(b"kept\n")
    monkeypatch.chdir(source)  # a relative name: socket paths are limited to 108 bytes
    with socket.socket(socket.AF_UNIX) as listener:
        listener.bind("sock")
        plan = plan_backup(BackupConfig(source, tmp_path / "backups"))
        result = backed_up(source, tmp_path / "backups")

    assert [(item.path, item.reason) for item in plan.excluded] == [("sock", "is a socket; sockets cannot be restored")]
    assert result.warnings == [f"{source}/sock: is a socket; not archived (sockets cannot be restored)"]
    assert [entry.path for entry in result.manifest.files] == ["file"]
    restored(result.backup_path, tmp_path / "out")
    assert os.listdir(tmp_path / "out") == ["file"]


DEVICE_SKIPPED = "device nodes are made only by root, from an archive with its manifest"


def test_as_a_user_who_is_not_root_a_fifo_is_made_and_a_device_node_skipped(shared: Path) -> None:
    source = _special_tree(shared / "source")
    os.unlink(source / "block")
    result = backed_up(source, shared / "backups")
    _open_to_others(result)
    target = _home_of_nobody(shared) / "out"

    success, error, warnings = as_nobody(lambda: _outcome(restore_backup(result.backup_path, target)))

    assert success, error
    assert sorted(os.listdir(target)) == ["fifo"]
    state = entry_state(target / "fifo")
    assert (state.type, state.mode, state.uid, state.mtime_ns) == ("fifo", 0o640, NOBODY, NS_TIME)
    assert [w for w in warnings if DEVICE_SKIPPED in w] == [
        f"{result.backup_path}: 1 device node was not restored (null): {DEVICE_SKIPPED}"
    ]


def test_a_device_node_from_an_archive_without_its_manifest_is_skipped_even_by_root(tmp_path: Path) -> None:
    source = _special_tree(tmp_path / "source")
    result = backed_up(source, tmp_path / "backups")
    _drop_manifest(result)

    done = restored(result.backup_path, tmp_path / "out")

    assert os.listdir(tmp_path / "out") == ["fifo"]
    assert _warnings_about(done, DEVICE_SKIPPED) == [
        f"{result.backup_path}: 2 device nodes were not restored (block, null): {DEVICE_SKIPPED}"
    ]
    assert tree_differences(source, tmp_path / "out", missing_ok=("null", "block")) == []


# -- modes ------------------------------------------------------------------------------------


def _mode_tree(root: Path) -> Path:
    (root / "shared").mkdir(parents=True)
    os.chmod(root / "shared", 0o1777)
    (root / "setuid").write_bytes(b"#!/bin/sh\n")
    os.chown(root / "setuid", UID, GID)
    os.chmod(root / "setuid", 0o4755)
    (root / "setgid").write_bytes(b"#!/bin/sh\n")
    os.chown(root / "setgid", NOBODY, NOBODY)
    os.chmod(root / "setgid", 0o2711)
    (root / "team").mkdir()
    os.chown(root / "team", UID, GID)
    os.chmod(root / "team", 0o2775)
    return root


def test_sticky_and_set_id_bits_are_kept_when_owners_are_restored(tmp_path: Path) -> None:
    source = _mode_tree(tmp_path / "source")
    result = backed_up(source, tmp_path / "backups")

    done = restored(result.backup_path, tmp_path / "out")

    assert done.warnings == []
    assert tree_differences(source, tmp_path / "out") == []
    assert stat.S_IMODE(os.stat(tmp_path / "out" / "setuid").st_mode) == 0o4755


def test_set_id_bits_are_stripped_with_one_warning_when_owners_are_not_restored(tmp_path: Path) -> None:
    source = _mode_tree(tmp_path / "source")
    result = backed_up(source, tmp_path / "backups")

    done = restored(result.backup_path, tmp_path / "out", same_owner=False)

    assert done.warnings == [
        f"{result.backup_path}: set-user-id and set-group-id bits were not restored on 3 entries "
        "(setgid, setuid, team): files are not given their owners, so they would grant the restoring user's identity"
    ]
    modes = {
        name: stat.S_IMODE(os.lstat(tmp_path / "out" / name).st_mode) for name in ("shared", "setuid", "setgid", "team")
    }
    assert modes == {"shared": 0o1777, "setuid": 0o755, "setgid": 0o711, "team": 0o775}
    assert {(state.uid, state.gid) for state in tree_state(tmp_path / "out").values()} == {(0, 0)}
    ignore = dict.fromkeys(("shared", "setuid", "setgid", "team"), ("uid", "gid", "mode"))
    assert tree_differences(source, tmp_path / "out", ignore=ignore) == []


# -- verify -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "change"),
    [
        ("second", {"link_target": "lonely"}),
        ("null", {"device": [1, 5]}),
        ("fifo", {"type": "file"}),
        ("attrs.bin", {"xattrs": {"user.text": base64.b64encode(b"other").decode()}}),
    ],
    ids=["hard-link-target", "device-numbers", "fifo-type", "xattr-value"],
)
def test_verify_compares_links_special_files_and_attributes_with_the_manifest(
    tmp_path: Path, path: str, change: dict[str, Any]
) -> None:
    source = _linked_tree(tmp_path / "source")
    _special_tree(tmp_path / "special")
    for name in ("fifo", "null"):
        os.rename(tmp_path / "special" / name, source / name)
    (source / "attrs.bin").write_bytes(b"attributes\n")
    os.setxattr(source / "attrs.bin", "user.text", b"plain")
    result = backed_up(source, tmp_path / "backups")

    _edit_manifest(result, path, **change)

    report = verify_backup(result.backup_path)
    assert [mismatch.path for mismatch in report.mismatched] == [path]
