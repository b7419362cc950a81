"""Trees for fidelity tests: building what a backup must keep (owners, hard links,
holes, extended attributes and ACLs, exact times, FIFOs and device nodes), reading
back everything ``lstat`` and ``getxattr`` say about each entry, and naming every
difference between two trees field by field.

Contents are compared without reading holes: :func:`content_key` hashes only the
non-zero blocks of a file's data runs (with their offsets), so a 1 GiB file with two
small runs compares in microseconds, and two files compare equal exactly when their
bytes are equal, however their holes are laid out.

:func:`backed_up` and :func:`restored` are the two halves of a round trip, each
checked (the backup verifies, the restore succeeds); :func:`as_nobody` runs a step as
an ordinary user, in a forked child.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import pickle
import shutil
import stat
import struct
import subprocess
import tempfile
import traceback
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from backup import BackupResult, restore_backup, verify_backup
from support.backups import make_backup

__all__ = [
    "ACL_ACCESS",
    "ACL_DEFAULT",
    "GNU_TAR",
    "GROUP",
    "GROUP_OBJ",
    "MASK",
    "NOBODY",
    "OTHER",
    "UNDEFINED",
    "USER",
    "USER_OBJ",
    "EntryState",
    "acl_value",
    "allocated",
    "as_nobody",
    "backed_up",
    "gnu_tar",
    "content_key",
    "data_runs",
    "entry_state",
    "hard_link_groups",
    "make_sparse",
    "restored",
    "sha256_with_holes",
    "shared_directory",
    "tree_differences",
    "tree_state",
]

GNU_TAR = "/usr/bin/tar"
NOBODY = 65534  # nobody:nogroup, a user and group that exist on every Linux system

# POSIX ACLs as the kernel keeps them (see backup.acl): tags, and the id of unnamed entries.
ACL_ACCESS = "system.posix_acl_access"
ACL_DEFAULT = "system.posix_acl_default"
USER_OBJ, USER, GROUP_OBJ, GROUP, MASK, OTHER = 0x01, 0x02, 0x04, 0x08, 0x10, 0x20
UNDEFINED = 0xFFFFFFFF
_BLOCK = 4096


def acl_value(*entries: tuple[int, int, int], version: int = 2) -> bytes:
    """Given ``(tag, permission bits, id)`` entries, return an ACL xattr value, written
    here independently of ``backup.acl`` (setfacl is not installed)."""
    return struct.pack("<I", version) + b"".join(struct.pack("<HHI", *entry) for entry in entries)


def make_sparse(path: Path, size: int, runs: Iterable[tuple[int, bytes]], mode: int = 0o644) -> Path:
    """Create a file of ``size`` bytes holding ``runs`` (offset, data) and holes elsewhere."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        for offset, data in runs:
            os.pwrite(fd, data, offset)
        os.ftruncate(fd, size)
    finally:
        os.close(fd)
    return path


def allocated(path: Path) -> int:
    """Bytes the file system holds for a file (its holes take none)."""
    return os.lstat(path).st_blocks * 512


def data_runs(path: Path) -> list[tuple[int, int]]:
    """The ``(offset, length)`` runs of a file that hold data, as SEEK_DATA/SEEK_HOLE say."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    try:
        size = os.fstat(fd).st_size
        runs = []
        position = 0
        while position < size:
            try:
                start = os.lseek(fd, position, os.SEEK_DATA)
            except OSError as exc:
                if exc.errno == errno.ENXIO:
                    break
                raise
            end = min(os.lseek(fd, start, os.SEEK_HOLE), size)
            runs.append((start, end - start))
            position = end
        return runs
    finally:
        os.close(fd)


def content_key(path: Path) -> str:
    """Return a digest of a file's bytes that does not depend on where its holes are:
    its size, then each non-zero 4 KiB block of its data runs with its offset."""
    hasher = hashlib.sha256()
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    try:
        size = os.fstat(fd).st_size
        hasher.update(b"%d\n" % size)
        for offset, length in data_runs(path):
            start = offset - offset % _BLOCK
            while start < offset + length:
                block = os.pread(fd, _BLOCK, start)
                if block.rstrip(b"\x00"):
                    hasher.update(b"%d:" % start + block.ljust(_BLOCK, b"\x00"))
                start += _BLOCK
    finally:
        os.close(fd)
    return hasher.hexdigest()


def sha256_with_holes(path: Path) -> str:
    """Return the sha256 of a file's bytes, reading only its data runs (its holes are
    hashed as the zeros they read as, without being read)."""
    hasher = hashlib.sha256()
    zeros = bytes(1 << 20)
    position = 0
    with open(path, "rb", buffering=0) as handle:
        size = os.fstat(handle.fileno()).st_size
        for offset, length in [*data_runs(path), (size, 0)]:
            while position < offset:
                step = min(len(zeros), offset - position)
                hasher.update(zeros[:step])
                position += step
            hasher.update(os.pread(handle.fileno(), length, offset))
            position = offset + length
    return hasher.hexdigest()


@dataclass(frozen=True)
class EntryState:
    """What a fidelity test compares of one entry (``None`` where it does not apply)."""

    type: str
    mode: int
    uid: int
    gid: int
    mtime_ns: int
    size: int | None
    content: str | None
    link_target: str | None
    rdev: int | None
    has_holes: bool | None
    xattrs: tuple[tuple[str, bytes], ...]


_TYPES = (
    (stat.S_ISREG, "file"),
    (stat.S_ISDIR, "dir"),
    (stat.S_ISLNK, "symlink"),
    (stat.S_ISFIFO, "fifo"),
    (stat.S_ISCHR, "chardev"),
    (stat.S_ISBLK, "blockdev"),
    (stat.S_ISSOCK, "socket"),
)


def entry_state(path: Path) -> EntryState:
    """Return everything a backup must keep of one entry, never following a symlink."""
    info = os.lstat(path)
    kind = next(name for test, name in _TYPES if test(info.st_mode))
    names = os.listxattr(path, follow_symlinks=False)
    xattrs = tuple(sorted((name, os.getxattr(path, name, follow_symlinks=False)) for name in names))
    is_file = kind == "file"
    return EntryState(
        type=kind,
        mode=stat.S_IMODE(info.st_mode),
        uid=info.st_uid,
        gid=info.st_gid,
        mtime_ns=info.st_mtime_ns,
        size=info.st_size if is_file else None,
        content=content_key(path) if is_file else None,
        link_target=os.readlink(path) if kind == "symlink" else None,
        rdev=info.st_rdev if kind in ("chardev", "blockdev") else None,
        has_holes=info.st_blocks * 512 < info.st_size if is_file else None,
        xattrs=xattrs,
    )


def tree_state(root: Path) -> dict[str, EntryState]:
    """Return ``{relative path: state}`` for everything under ``root`` (not ``root``)."""
    found = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath, name)
            found[path.relative_to(root).as_posix()] = entry_state(path)
    return found


def hard_link_groups(root: Path) -> set[frozenset[str]]:
    """Return the sets of names (relative to ``root``) that are one file with several names."""
    by_inode: dict[tuple[int, int], set[str]] = {}
    for dirpath, _, filenames in os.walk(root):
        for name in filenames:
            path = Path(dirpath, name)
            info = os.lstat(path)
            if stat.S_ISREG(info.st_mode) and info.st_nlink > 1:
                by_inode.setdefault((info.st_dev, info.st_ino), set()).add(path.relative_to(root).as_posix())
    return {frozenset(names) for names in by_inode.values() if len(names) > 1}


def _shown(name: str, value: Any) -> str:
    return f"{value:#o}" if name == "mode" else repr(value)


def tree_differences(
    source: Path,
    restored: Path,
    *,
    ignore: Mapping[str, Iterable[str]] | None = None,
    missing_ok: Iterable[str] = (),
) -> list[str]:
    """Return one line per difference between two trees: ``<path>: <field>: source ...,
    restored ...``, entries only on one side, and hard-link groups that differ.

    ``ignore`` maps a path to the fields not compared for it; ``missing_ok`` lists
    paths the restored tree may lack (each is still reported if it is there and differs).
    """
    ignore = ignore or {}
    before, after = tree_state(source), tree_state(restored)
    missing_ok = set(missing_ok)
    problems = [
        f"{path}: missing from the restored tree" for path in before if path not in after and path not in missing_ok
    ]
    problems += [f"{path}: in the restored tree only" for path in after if path not in before]
    for path, want in before.items():
        got = after.get(path)
        if got is None:
            continue
        skipped = set(ignore.get(path, ()))
        for item in fields(EntryState):
            if item.name in skipped:
                continue
            expected, actual = getattr(want, item.name), getattr(got, item.name)
            if expected != actual:
                problems.append(
                    f"{path}: {item.name}: source {_shown(item.name, expected)}, restored {_shown(item.name, actual)}"
                )
    groups_before, groups_after = hard_link_groups(source), hard_link_groups(restored)
    if groups_before != groups_after:
        shown = sorted(sorted(group) for group in groups_before)
        problems.append(f"hard-link groups: source {shown}, restored {sorted(sorted(g) for g in groups_after)}")
    return problems


@contextlib.contextmanager
def shared_directory(prefix: str) -> Iterator[Path]:
    """Yield a new directory under /tmp that another user can reach (pytest's
    ``tmp_path`` is private to root); remove it afterwards."""
    root = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    os.chmod(root, 0o755)
    try:
        yield root
    finally:
        for dirpath, dirnames, _ in os.walk(root):
            for name in dirnames:
                os.chmod(os.path.join(dirpath, name), 0o700, follow_symlinks=False)
        shutil.rmtree(root, ignore_errors=True)


def as_nobody(work: Callable[[], Any]) -> Any:
    """Run ``work()`` in a forked child that has become ``nobody``; return what it
    returned (it must pickle). An exception in the child fails the caller with the
    child's traceback."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        code = 1
        try:
            os.close(read)
            try:
                os.setgroups([])
                os.setgid(NOBODY)
                os.setuid(NOBODY)
                payload = pickle.dumps(("ok", work()))
            except BaseException:
                payload = pickle.dumps(("error", traceback.format_exc()))
            with os.fdopen(write, "wb") as pipe:
                pipe.write(payload)
            code = 0
        finally:
            os._exit(code)
    os.close(write)
    with os.fdopen(read, "rb") as pipe:
        data = pipe.read()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, "the child running as nobody died"
    outcome, value = pickle.loads(data)
    assert outcome == "ok", f"as nobody:\n{value}"
    return value


# -- round trips ------------------------------------------------------------------------------


def backed_up(source: Path, backup_dir: Path, **config: Any) -> BackupResult:
    """Back ``source`` up into ``backup_dir`` (uncompressed unless told otherwise) and
    check that the backup verifies; return the result."""
    config.setdefault("compression", "")
    result = make_backup(source, backup_dir, **config)
    report = verify_backup(result.backup_path)
    assert report.ok, report.lines()
    return result


def restored(archive: Path, target: Path, **options: Any) -> BackupResult:
    """Restore ``archive`` into ``target`` (``restore_backup`` options); fail the test
    unless it succeeded; return the result."""
    result = restore_backup(archive, target, **options)
    assert result.success, result.error
    return result


def gnu_tar(*args: str) -> subprocess.CompletedProcess[str]:
    """Run GNU tar; fail the test with its message unless it succeeded."""
    done = subprocess.run([GNU_TAR, *args], capture_output=True, text=True, check=False)
    assert done.returncode == 0, f"tar {' '.join(args)}: {done.stderr}"
    return done
