"""Fidelity all at once: one tree holding every property a backup must keep, through
obs-backup and GNU tar in both directions.

The tree has owners other than root (by name and by number), a hard-link group across
directories, a sparse file, binary user.* attributes, access and default ACLs,
nanosecond and pre-1970 times, a FIFO, a character device, a sticky directory and
set-id bits. Our archive is restored by obs-backup and by GNU tar; GNU tar's archive
is restored by obs-backup; each result is compared with the source field by field
(type, mode, owners, mtime_ns, content, link target, hard-link groups, holes,
extended attributes, device numbers). The one stated exception: a device node in an
archive without our manifest is skipped, with a warning.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path

import pytest

from backup import BackupResult
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
    backed_up,
    gnu_tar,
    hard_link_groups,
    make_sparse,
    restored,
    tree_differences,
    tree_state,
)

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the tree has other owners, a device node and set-id bits")

UID, GID = 4321, 4322
MIB = 1 << 20
FIRST_NS = 1_600_000_000_123_456_789
DEVICE_SKIPPED = "device nodes are made only by root, from an archive with its manifest"


def _build(root: Path) -> Path:
    """Make the tree; every entry gets its own nanosecond time, set last (children
    before their directory, whose time each new child changes)."""
    for directory in ("owners", "links", "other", "acl", "shared", "team"):
        (root / directory).mkdir(parents=True)

    (root / "owners" / "by-name.txt").write_bytes(b"nobody's\n")
    os.chown(root / "owners" / "by-name.txt", NOBODY, NOBODY)
    (root / "owners" / "by-number.txt").write_bytes(b"nameless\n")
    os.chown(root / "owners" / "by-number.txt", UID, GID)
    os.symlink("by-name.txt", root / "owners" / "link")
    os.chown(root / "owners" / "link", UID, NOBODY, follow_symlinks=False)
    os.chown(root / "owners", UID, GID)
    os.chmod(root / "owners", 0o750)

    (root / "links" / "first").write_bytes(os.urandom(256 * 1024))
    os.link(root / "links" / "first", root / "links" / "second")
    os.link(root / "links" / "first", root / "other" / "third")

    make_sparse(root / "sparse.img", 64 * MIB, [(MIB + 17, os.urandom(5000)), (40 * MIB, os.urandom(3000))])

    (root / "attrs.bin").write_bytes(b"attributes\n")
    os.setxattr(root / "attrs.bin", "user.binary", b"\x00\xff\x00 tail \xff")
    os.setxattr(root / "attrs.bin", "user.text", b"plain")

    (root / "acl" / "file").write_bytes(b"shared\n")
    os.setxattr(
        root / "acl" / "file",
        ACL_ACCESS,
        acl_value(
            (USER_OBJ, 6, UNDEFINED),
            (USER, 4, NOBODY),
            (GROUP_OBJ, 4, UNDEFINED),
            (MASK, 4, UNDEFINED),
            (OTHER, 0, UNDEFINED),
        ),
    )
    os.setxattr(
        root / "acl",
        ACL_ACCESS,
        acl_value(
            (USER_OBJ, 7, UNDEFINED),
            (USER, 5, UID),
            (GROUP_OBJ, 5, UNDEFINED),
            (GROUP, 7, NOBODY),
            (MASK, 7, UNDEFINED),
            (OTHER, 1, UNDEFINED),
        ),
    )
    os.setxattr(
        root / "acl",
        ACL_DEFAULT,
        acl_value(
            (USER_OBJ, 7, UNDEFINED),
            (USER, 5, NOBODY),
            (GROUP_OBJ, 5, UNDEFINED),
            (MASK, 5, UNDEFINED),
            (OTHER, 0, UNDEFINED),
        ),
    )

    os.mkfifo(root / "fifo", 0o640)
    os.chown(root / "fifo", UID, GID)
    os.mknod(root / "null", 0o666 | stat.S_IFCHR, os.makedev(1, 3))
    os.chmod(root / "null", 0o666)

    os.chmod(root / "shared", 0o1777)
    (root / "setuid").write_bytes(b"#!/bin/sh\n")
    os.chown(root / "setuid", UID, GID)
    os.chmod(root / "setuid", 0o4755)
    os.chown(root / "team", UID, GID)
    os.chmod(root / "team", 0o2775)

    (root / "before-1970").write_bytes(b"-1.5 s\n")

    entries = [Path(dirpath, name) for dirpath, dirs, files in os.walk(root, topdown=False) for name in files + dirs]
    for number, path in enumerate(entries):
        ns = -1_500_000_000 if path.name == "before-1970" else FIRST_NS + number
        os.utime(path, ns=(ns, ns), follow_symlinks=False)
    return root


def _check_the_tree_holds_it_all(root: Path) -> None:
    """Fail at once if the file system quietly dropped a property (the comparisons
    would then prove less than they claim)."""
    state = tree_state(root)
    assert {state[name].uid for name in ("owners", "owners/by-name.txt", "owners/link", "fifo", "setuid")} == {
        UID,
        NOBODY,
    }
    assert hard_link_groups(root) == {frozenset({"links/first", "links/second", "other/third"})}
    assert state["sparse.img"].has_holes
    assert dict(state["attrs.bin"].xattrs)["user.binary"] == b"\x00\xff\x00 tail \xff"
    assert {name for name, _ in state["acl"].xattrs} == {ACL_ACCESS, ACL_DEFAULT}
    assert (state["fifo"].type, state["null"].type, state["null"].rdev) == ("fifo", "chardev", os.makedev(1, 3))
    assert (state["shared"].mode, state["setuid"].mode, state["team"].mode) == (0o1777, 0o4755, 0o2775)
    assert state["before-1970"].mtime_ns == -1_500_000_000
    assert state["owners/link"].mtime_ns % 1_000_000_000 and state["acl"].mtime_ns % 1_000_000_000


@dataclass(frozen=True)
class Matrix:
    source: Path
    work: Path
    ours: BackupResult


@pytest.fixture(scope="module")
def matrix(tmp_path_factory: pytest.TempPathFactory) -> Matrix:
    work = tmp_path_factory.mktemp("matrix")
    source = _build(work / "source")
    _check_the_tree_holds_it_all(source)
    return Matrix(source, work, backed_up(source, work / "backups", compression="gz"))


def test_obs_backup_restores_its_own_archive_exactly(matrix: Matrix, tmp_path: Path) -> None:
    done = restored(matrix.ours.backup_path, tmp_path / "ours")
    assert done.warnings == []
    assert tree_differences(matrix.source, tmp_path / "ours") == []


def test_gnu_tar_restores_our_archive_exactly(matrix: Matrix, tmp_path: Path) -> None:
    out = tmp_path / "gnu"
    out.mkdir()
    gnu_tar("--xattrs", "--acls", "-S", "--numeric-owner", "-p", "-xf", str(matrix.ours.backup_path), "-C", str(out))
    assert tree_differences(matrix.source, out) == []


def test_obs_backup_restores_gnu_tars_archive_exactly_but_for_the_device_node(matrix: Matrix, tmp_path: Path) -> None:
    archive = tmp_path / "gnu.tar"
    gnu_tar("--format=posix", "--xattrs", "--acls", "-S", "-cf", str(archive), "-C", str(matrix.source), ".")

    done = restored(archive, tmp_path / "ours")

    assert tree_differences(matrix.source, tmp_path / "ours", missing_ok=("null",)) == []
    assert not os.path.lexists(tmp_path / "ours" / "null")
    assert done.warnings == [
        f"{archive}: no manifest; restored without checksum verification",
        f"{archive}: 1 device node was not restored (null): {DEVICE_SKIPPED}",
    ]
