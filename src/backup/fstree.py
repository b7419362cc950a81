"""File system operations relative to directory descriptors, never through paths.

A path string is resolved again by the kernel at every call, so between a check and
a use another user who can write somewhere along it can swap a directory for a
symlink and redirect the use elsewhere. Everything here works from a directory
descriptor opened without following links: once a directory is open, renaming or
replacing it no longer changes where we read or write. It also removes the 4096-byte
limit on path length, since each call names only one component.

``DirectoryChain`` keeps the descriptors of the directories along the current path
open, so walking a tree in order costs one ``open`` per directory, not one per file.
``rename_noreplace`` and ``exchange`` are ``renameat2(2)`` with ``RENAME_NOREPLACE``
and ``RENAME_EXCHANGE``: a move that fails rather than replace, and an atomic swap,
so that an entry being replaced is never missing, not even for a moment.
"""

from __future__ import annotations

import ctypes
import errno
import grp
import os
import pwd
import re
import stat
from collections.abc import Sequence

__all__ = [
    "DIR_FLAGS",
    "LOCAL_FILESYSTEM",
    "FileSystem",
    "STAGING_NAME",
    "DirectoryChain",
    "exchange",
    "open_directory",
    "rename_noreplace",
    "same_file",
    "staging_name",
]

DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_RENAME_NOREPLACE = 1
_RENAME_EXCHANGE = 2
# Descriptors a chain keeps open at most; deeper trees re-open the upper levels
# when they walk back up (checking each is still the directory it was).
_MAX_HELD = 64


def _load_renameat2() -> ctypes._CFuncPtr | None:  # type: ignore[name-defined]
    try:
        function = ctypes.CDLL(None, use_errno=True).renameat2
    except (AttributeError, OSError):
        return None
    function.argtypes = (ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint)
    function.restype = ctypes.c_int
    return function


_renameat2 = _load_renameat2()

# listxattrat(2), Linux 6.13 and newer: an entry's attribute names relative to a
# directory descriptor. New system calls share one number on every architecture.
_SYS_LISTXATTRAT = 465
_AT_SYMLINK_NOFOLLOW = 0x100


def _load_listxattrat() -> ctypes._CFuncPtr | None:  # type: ignore[name-defined]
    if not os.uname().sysname == "Linux":
        return None
    try:
        function = ctypes.CDLL(None, use_errno=True).syscall
    except (AttributeError, OSError):
        return None
    function.restype = ctypes.c_long
    # Ask for the size of "/"'s list: a kernel without the call says ENOSYS.
    if function(_SYS_LISTXATTRAT, -100, b"/", _AT_SYMLINK_NOFOLLOW, None, 0) < 0:
        return None
    return function


_listxattrat = _load_listxattrat()


def _has_xattrs(dir_fd: int, name: str) -> bool:
    """Whether the entry ``name`` (not followed) may have extended attributes: False
    only when the kernel says its list is empty, in one call that resolves no path."""
    if _listxattrat is None:
        return True
    raw = name.encode("utf-8", "surrogateescape")
    return bool(_listxattrat(_SYS_LISTXATTRAT, dir_fd, raw, _AT_SYMLINK_NOFOLLOW, None, 0))


def _rename2(src_fd: int, src: str, dst_fd: int, dst: str, flags: int) -> bool:
    """Call renameat2; return False if the system or file system does not support it."""
    if _renameat2 is None:
        return False
    if _renameat2(src_fd, os.fsencode(src), dst_fd, os.fsencode(dst), flags) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP):
        return False
    raise OSError(code, os.strerror(code), dst)


def rename_noreplace(src_fd: int, src: str, dst_fd: int, dst: str) -> None:
    """Given two directory descriptors and names, move ``src`` to ``dst`` unless it exists.

    Raise FileExistsError if ``dst`` exists (also an empty directory, which a plain
    rename would silently replace). Where the file system cannot refuse atomically,
    the check and the rename are two steps.
    """
    if _rename2(src_fd, src, dst_fd, dst, _RENAME_NOREPLACE):
        return
    try:
        os.stat(dst, dir_fd=dst_fd, follow_symlinks=False)
    except FileNotFoundError:
        os.rename(src, dst, src_dir_fd=src_fd, dst_dir_fd=dst_fd)
        return
    raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), dst)


def exchange(fd_a: int, name_a: str, fd_b: int, name_b: str) -> bool:
    """Given two directory descriptors and names, swap the two entries atomically.

    Return False if the file system cannot (the caller then moves one aside first).
    Raise FileNotFoundError if either is missing.
    """
    return _rename2(fd_a, name_a, fd_b, name_b, _RENAME_EXCHANGE)


def open_directory(name: str, dir_fd: int | None = None) -> int:
    """Given a directory's name (relative to ``dir_fd``), open it without following a link.

    Raise NotADirectoryError if it is not a directory, OSError (ELOOP) if it is a symlink.
    """
    return os.open(name, DIR_FLAGS, dir_fd=dir_fd)


def same_file(a: os.stat_result, b: os.stat_result) -> bool:
    """Return whether two stat results describe the same file."""
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


class DirectoryChain:
    """Descriptors for the directories from a root down to the current one.

    ``fd(parts)`` returns a descriptor of ``root/parts[0]/parts[1]/...``, opening each
    component with ``O_NOFOLLOW`` and reusing what the previous call opened, so a walk
    in tree order opens each directory once. With ``create`` missing directories are
    made with ``mode``. The root descriptor belongs to the caller; ``close()`` closes
    the rest.
    """

    def __init__(self, root_fd: int, *, create: bool = False, mode: int = 0o700) -> None:
        self.root_fd = root_fd
        self._create = create
        self._mode = mode
        self._names: list[str] = []
        self._fds: list[int | None] = []
        self._ids: list[tuple[int, int]] = []
        self._held = 0

    def __enter__(self) -> DirectoryChain:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close every descriptor the chain opened."""
        self._truncate(0)

    def _truncate(self, depth: int) -> None:
        while len(self._names) > depth:
            self._names.pop()
            self._ids.pop()
            fd = self._fds.pop()
            if fd is not None:
                os.close(fd)
                self._held -= 1

    def fd(self, parts: Sequence[str]) -> int:
        """Given the components of a directory below the root, return its descriptor.

        The descriptor stays valid until the next call or ``close()``. Raise OSError if
        a component is missing (without ``create``), a symlink or not a directory.
        """
        if len(parts) == len(self._names) and parts == self._names:
            return self._fd_at(len(parts) - 1)  # the same directory as last time: most calls
        common = 0
        limit = min(len(parts), len(self._names))
        while common < limit and self._names[common] == parts[common]:
            common += 1
        self._truncate(common)
        for name in parts[common:]:
            self._push(name)
        return self._fd_at(len(parts) - 1)

    def _fd_at(self, level: int) -> int:
        if level < 0:
            return self.root_fd
        known = self._fds[level]
        if known is not None:
            return known
        # Closed to stay under the descriptor budget: open the missing levels again
        # from the deepest one still open, insisting each is the directory it was.
        start = level
        while start >= 0 and self._fds[start] is None:
            start -= 1
        parent = self.root_fd if start < 0 else self._fds[start]
        assert parent is not None
        for depth in range(start + 1, level + 1):
            fd = open_directory(self._names[depth], parent)
            info = os.fstat(fd)
            if (info.st_dev, info.st_ino) != self._ids[depth]:
                os.close(fd)
                raise OSError(errno.ESTALE, "directory was replaced while in use", self._names[depth])
            self._fds[depth] = fd
            self._held += 1
            parent = fd
        self._spill(keep=level)
        return parent

    def _push(self, name: str) -> None:
        parent = self._fd_at(len(self._names) - 1)
        try:
            fd = open_directory(name, parent)
        except FileNotFoundError:
            if not self._create:
                raise
            try:
                os.mkdir(name, self._mode, dir_fd=parent)
            except FileExistsError:
                pass
            fd = open_directory(name, parent)
        info = os.fstat(fd)
        if not stat.S_ISDIR(info.st_mode):  # pragma: no cover - O_DIRECTORY refuses these
            os.close(fd)
            raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), name)
        self._names.append(name)
        self._fds.append(fd)
        self._ids.append((info.st_dev, info.st_ino))
        self._held += 1
        self._spill(keep=len(self._names) - 1)

    def _spill(self, keep: int) -> None:
        """Close the shallowest open descriptors (never ``keep``) while over budget."""
        level = 0
        while self._held > _MAX_HELD and level < len(self._fds):
            fd = self._fds[level]
            if fd is not None and level != keep and level != keep - 1:
                os.close(fd)
                self._fds[level] = None
                self._held -= 1
            level += 1


# A restore stages its tree in a hidden directory beside the target (inside it when
# the target is a mount point): ".<target>.obs-restore-<pid>-<hex>". Backups leave
# such directories out, and the next restore into that target removes dead ones.
STAGING_NAME = re.compile(r"^\.(?P<target>.+)\.obs-(?:restore|replaced)-(?P<pid>\d+)-[0-9a-f]+$")


def staging_name(target_name: str, pid: int, token: str) -> str:
    """Given the target's name, the restoring process's pid and a random token, return
    the staging directory's name."""
    return f".{target_name}.obs-restore-{pid}-{token}"


class FileSystem:
    """The calls a backup makes on its source tree, in one place.

    The walk and the archive writer call nothing else, so a test injects a fault (a
    directory that cannot be listed, a file that cannot be opened, a read that fails
    half way) by overriding one method, instead of patching ``os``: we run as root,
    and permission bits cannot make a file unreadable for us.
    """

    def open_root(self, path: str) -> int:
        """Open the source directory itself (following links: the caller named it)."""
        return os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)

    def listdir(self, dir_fd: int) -> list[str]:
        """Return the names in a directory."""
        return os.listdir(dir_fd)

    def lstat(self, name: str, dir_fd: int) -> os.stat_result:
        """Return an entry's status, without following a link."""
        return os.stat(name, dir_fd=dir_fd, follow_symlinks=False)

    def readlink(self, name: str, dir_fd: int) -> str:
        """Return a symlink's target."""
        return os.readlink(name, dir_fd=dir_fd)

    def open_file(self, name: str, dir_fd: int) -> int:
        """Open a file to archive it: read-only, without following a link, and without
        blocking (a file swapped for a FIFO must not wait for a writer)."""
        return os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=dir_fd)

    def read_into(self, fd: int, buffer: memoryview) -> int:
        """Read into ``buffer``; return the count (0 at the end)."""
        return os.readv(fd, [buffer])

    def pread_into(self, fd: int, buffer: memoryview, offset: int) -> int:
        """Read into ``buffer`` from ``offset``; return the count (0 at the end)."""
        return os.preadv(fd, [buffer], offset)

    def data_segments(self, fd: int, size: int) -> list[tuple[int, int]]:
        """Return the ``(offset, length)`` runs of a file that hold data (the rest are
        holes), as ``SEEK_DATA``/``SEEK_HOLE`` report them."""
        segments = []
        position = 0
        while position < size:
            try:
                start = os.lseek(fd, position, os.SEEK_DATA)
            except OSError as exc:
                if exc.errno == errno.ENXIO:  # no data after position: a trailing hole
                    break
                raise
            if start >= size:
                break
            end = min(os.lseek(fd, start, os.SEEK_HOLE), size)
            segments.append((start, end - start))
            position = end
        os.lseek(fd, 0, os.SEEK_SET)
        return segments

    def xattrs(self, name: str, dir_fd: int, fd: int | None = None) -> dict[str, bytes]:
        """Return an entry's extended attributes (from ``fd`` if it is open); {} where
        the file system has none. A symlink's own are read, not its target's."""
        try:
            if fd is not None:
                return {key: os.getxattr(fd, key) for key in os.listxattr(fd)}
            if not _has_xattrs(dir_fd, name):
                return {}
            # Without a descriptor of its own, the entry is named through its directory's.
            path = f"/proc/self/fd/{dir_fd}/{name}"
            names = os.listxattr(path, follow_symlinks=False)
            return {key: os.getxattr(path, key, follow_symlinks=False) for key in names}
        except OSError as exc:
            if exc.errno in (errno.ENOTSUP, errno.EOPNOTSUPP, errno.ENODATA):
                return {}
            raise

    def user_name(self, uid: int) -> str:
        """Return the name of a user id ('' if it has none)."""
        try:
            return pwd.getpwuid(uid).pw_name
        except KeyError:
            return ""

    def group_name(self, gid: int) -> str:
        """Return the name of a group id ('' if it has none)."""
        try:
            return grp.getgrgid(gid).gr_name
        except KeyError:
            return ""


LOCAL_FILESYSTEM = FileSystem()
