"""Source trees that misbehave on purpose, through the seam every source read goes through.

The tests run as root, and root reads any file and lists any directory whatever their
permission bits: ``chmod 000`` cannot make a source unreadable. So faults are injected
where the backup reads its source, ``backup.fstree.FileSystem``: each class here
overrides one or two of its calls and is passed in as
``create_backup(config, filesystem=...)``, ``plan_backup(config, filesystem=...)``,
``scan_source(root, filesystem=...)`` or ``write_entries(..., filesystem=...)``.
Nothing in ``os`` or in the library is patched.

The seam names entries relative to a directory descriptor, and reads by file
descriptor; :func:`path_of` and :func:`fd_path` turn either back into the absolute path
a test compares against, as the kernel sees it (through ``/proc/self/fd``). Victims are
therefore given as paths and compared after ``os.path.realpath``.
"""

from __future__ import annotations

import errno
import os
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from backup.fstree import FileSystem

__all__ = [
    "AfterReadFileSystem",
    "CountingFileSystem",
    "FailingReadFileSystem",
    "RefusingFileSystem",
    "UnlistableFileSystem",
    "fd_path",
    "path_of",
]


def fd_path(fd: int) -> str:
    """Given an open descriptor, return the absolute path it was opened under."""
    return os.readlink(f"/proc/self/fd/{fd}")


def path_of(name: str, dir_fd: int) -> str:
    """Given a name relative to a directory descriptor, return its absolute path."""
    return os.path.join(fd_path(dir_fd), name)


def _real(path: str | os.PathLike[str]) -> str:
    return os.path.realpath(os.fspath(path))


def _error(code: int, name: str) -> OSError:
    # OSError(EACCES, ...) is a PermissionError, OSError(ENOENT, ...) a FileNotFoundError:
    # exactly what the real call would raise.
    return OSError(code, os.strerror(code), name)


class CountingFileSystem(FileSystem):
    """The local file system, counting how often each file is opened (by absolute path)
    and how many reads each one gets."""

    def __init__(self) -> None:
        self.opens: Counter[str] = Counter()
        self.reads: Counter[str] = Counter()

    def open_file(self, name: str, dir_fd: int) -> int:
        self.opens[path_of(name, dir_fd)] += 1
        return super().open_file(name, dir_fd)

    def read_into(self, fd: int, buffer: memoryview) -> int:
        self.reads[fd_path(fd)] += 1
        return super().read_into(fd, buffer)


class RefusingFileSystem(FileSystem):
    """A file system on which one file cannot be opened (EACCES unless told otherwise)."""

    def __init__(self, victim: str | Path, code: int = errno.EACCES) -> None:
        self.victim = _real(victim)
        self.code = code
        self.refused: list[str] = []

    def open_file(self, name: str, dir_fd: int) -> int:
        if path_of(name, dir_fd) == self.victim:
            self.refused.append(self.victim)
            raise _error(self.code, name)
        return super().open_file(name, dir_fd)


class UnlistableFileSystem(FileSystem):
    """A file system on which one directory cannot be listed (EACCES unless told otherwise)."""

    def __init__(self, victim: str | Path, code: int = errno.EACCES) -> None:
        self.victim = _real(victim)
        self.code = code

    def listdir(self, dir_fd: int) -> list[str]:
        if fd_path(dir_fd) == self.victim:
            raise _error(self.code, self.victim)
        return super().listdir(dir_fd)


class FailingReadFileSystem(FileSystem):
    """A file system on which reading one file fails (EIO unless told otherwise) once
    ``after`` bytes of it have been read, counted over every read of it.

    Reads of it are cut short so that exactly ``after`` bytes come back before the
    failure, wherever the chunk boundaries fall.
    """

    def __init__(self, victim: str | Path, after: int, code: int = errno.EIO) -> None:
        self.victim = _real(victim)
        self.after = after
        self.code = code
        self.delivered = 0
        self.failures = 0

    def read_into(self, fd: int, buffer: memoryview) -> int:
        if fd_path(fd) != self.victim:
            return super().read_into(fd, buffer)
        left = self.after - self.delivered
        if left <= 0:
            self.failures += 1
            raise _error(self.code, self.victim)
        count = super().read_into(fd, buffer[:left])
        self.delivered += count
        return count


class AfterReadFileSystem(FileSystem):
    """A file system that runs ``action()`` right after each of the first ``times``
    reads of one file that return data: the moment to change the file under the reader."""

    def __init__(self, victim: str | Path, action: Callable[[], object], times: int = 1) -> None:
        self.victim = _real(victim)
        self.action = action
        self.times = times
        self.done = 0

    def read_into(self, fd: int, buffer: memoryview) -> int:
        count = super().read_into(fd, buffer)
        if count and self.done < self.times and fd_path(fd) == self.victim:
            self.done += 1
            self.action()
        return count
