"""A backup location that is a local directory.

Objects are files in the directory. A writer's temporary file is
``.obs-backup.<claim or name>.partial``, created 0600 and held under ``flock`` while it
is written: that is how ``clean_partials`` tells a dead writer's leftovers (of our own
naming, unlocked) from a live writer's work, and never touches another program's
files. ``commit`` fsyncs the file, then gives it its name with a hard link (a rename
would silently replace an existing file), then fsyncs the directory. Records (the run
state) are hidden files replaced atomically. The lock is an ``flock`` on
``.obs-backup.lock`` (see ``backup.storage.lock``).
"""

from __future__ import annotations

import fcntl
import os
import re
import stat
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path
from typing import BinaryIO, cast

from ..errors import StorageError
from .base import ObjectInfo
from .durable import PRIVATE_MODE, atomic_write_bytes, fsync_directory, link_no_replace, make_private_dir
from .lock import backup_dir_lock

__all__ = ["PARTIAL_PREFIX", "PARTIAL_SUFFIX", "LocalStorage", "partial_name"]

PARTIAL_PREFIX = ".obs-backup."
PARTIAL_SUFFIX = ".partial"
_PARTIAL = re.compile(r"^\.obs-backup\..+\.partial$")
_CLAIM_ATTEMPTS = 5
_READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


def partial_name(key: str) -> str:
    """Given a writer's key (its claim, or its object's name), return its temporary file's name."""
    return f"{PARTIAL_PREFIX}{key}{PARTIAL_SUFFIX}"


class _LocalUpload:
    """An object being written: the temporary file, under ``flock``, until commit."""

    def __init__(self, directory: Path, name: str, temp: Path, fd: int) -> None:
        self.name = name
        self._directory = directory
        self._temp = temp
        self._fd = fd
        self._done = False

    def write(self, data: bytes | bytearray | memoryview) -> int:
        if self._done:
            # The descriptor is closed, and its number may already be another file's.
            raise ValueError(f"{self._directory / self.name}: write to a finished upload")
        view = memoryview(data).cast("B")
        total = len(view)
        while view:
            # A short write (a disk filling up, a file size limit) is retried, so that
            # the failure, if there is one, is raised instead of the data cut short.
            written = os.write(self._fd, view)
            if not written:
                raise OSError(5, "write made no progress", str(self._temp))
            view = view[written:]
        return total

    def flush(self) -> None:
        """Writes are unbuffered: nothing to do."""

    @property
    def closed(self) -> bool:
        return self._done

    def writable(self) -> bool:
        return True

    def commit(self) -> None:
        if self._done:
            raise StorageError(f"{self._directory / self.name}: already committed or aborted")
        final = self._directory / self.name
        linked = False
        try:
            os.fsync(self._fd)
            # Linked while the flock is still held, so a cleaner never sees it unlocked.
            link_no_replace(self._temp, final)
            linked = True
            fsync_directory(self._directory)
        except BaseException:
            if linked:
                final.unlink(missing_ok=True)  # not durable: not committed either
            self.abort()
            raise
        self._done = True
        os.close(self._fd)

    def abort(self) -> None:
        if self._done:
            return
        self._done = True
        try:
            self._temp.unlink()
        except FileNotFoundError:
            pass
        finally:
            os.close(self._fd)


class LocalStorage:
    """Backups kept as files in one local directory (see the module docstring)."""

    manifest_commits = False
    grace_seconds = 0.0

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)

    @property
    def location(self) -> str:
        return str(self.directory)

    def __repr__(self) -> str:
        return f"LocalStorage({str(self.directory)!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, LocalStorage) and other.directory == self.directory

    def __hash__(self) -> int:
        return hash(self.directory)

    def describe(self, name: str) -> str:
        return str(self.directory / name)

    def now(self) -> float:
        return time.time()

    def local_path(self, name: str) -> Path:
        return self.directory / name

    def path(self, name: str) -> Path:
        """Return the local path of an object."""
        return self.directory / name

    def exists(self) -> bool:
        return self.directory.is_dir()

    def ensure(self) -> None:
        try:
            make_private_dir(self.directory)
        except OSError as exc:
            raise StorageError(
                f"{self.directory}: cannot create backup directory: {exc.strerror or exc}", self.directory
            ) from exc
        if not self.directory.is_dir():
            raise StorageError(f"{self.directory}: backup directory is not a directory", self.directory)

    def _check_name(self, name: str) -> None:
        if not name or "/" in name or "\x00" in name or name.startswith("."):
            raise StorageError(f"{name!r}: object names may not be empty, contain '/' or start with '.'")

    def _listdir(self) -> list[str]:
        try:
            return os.listdir(self.directory)
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise StorageError(
                f"{self.directory}: cannot list backup directory: {exc.strerror or exc}", self.directory
            ) from exc

    def list_objects(self) -> list[ObjectInfo]:
        objects = []
        for name in sorted(self._listdir()):
            if name.startswith("."):
                continue
            try:
                info = os.lstat(self.directory / name)
            except FileNotFoundError:
                continue
            # Only regular files are objects: a symlink or a directory under a backup's
            # name was not written here.
            if stat.S_ISREG(info.st_mode):
                objects.append(ObjectInfo(name, info.st_size, info.st_mtime))
        return objects

    def stat(self, name: str) -> ObjectInfo:
        self._check_name(name)
        info = os.lstat(self.directory / name)
        if not stat.S_ISREG(info.st_mode):
            raise FileNotFoundError(2, "not an object (not a regular file)", str(self.directory / name))
        return ObjectInfo(name, info.st_size, info.st_mtime)

    def open_read(self, name: str, offset: int = 0, length: int | None = None) -> BinaryIO:
        path = self.directory / name
        if not name or "/" in name:
            raise FileNotFoundError(2, "not an object name", str(path))
        # Without following a link, and non-blocking, so that a FIFO under an object's
        # name cannot hang a reader.
        try:
            fd = os.open(path, _READ_FLAGS)
        except OSError as exc:
            if exc.errno == 40:  # ELOOP: a symlink
                raise FileNotFoundError(2, "not an object (a symlink)", str(path)) from exc
            raise
        try:
            mode = os.fstat(fd).st_mode
            if stat.S_ISDIR(mode):
                raise IsADirectoryError(21, "Is a directory", str(path))
            if not stat.S_ISREG(mode):
                raise FileNotFoundError(2, "not an object (not a regular file)", str(path))
            if offset:
                os.lseek(fd, offset, os.SEEK_SET)
            handle = os.fdopen(fd, "rb", buffering=0)
        except BaseException:
            os.close(fd)
            raise
        if length is None:
            return handle
        return cast(BinaryIO, _Limited(handle, length))

    def begin(
        self, name: str, claim: str | None = None, size_hint: int | None = None, mark: str | None = None
    ) -> _LocalUpload:
        self._check_name(name)
        if claim is not None:
            self._check_name(claim)
        temp = self.directory / partial_name(claim or name)
        for _ in range(_CLAIM_ATTEMPTS):
            fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW, PRIVATE_MODE)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BaseException:
                os.close(fd)
                raise
            if _is_still(temp, fd):
                break
            # Between its creation and the lock, a cleaner took the file for a dead
            # writer's and removed it: create it again (another writer may win it now,
            # and then the claim is theirs).
            os.close(fd)
        else:
            raise FileExistsError(f"{temp}: could not be claimed")
        try:
            os.fchmod(fd, PRIVATE_MODE)
            taken = os.path.lexists(self.directory / name) or (
                claim is not None and any(other.startswith(claim + ".") for other in self._listdir())
            )
            if taken:
                raise FileExistsError(f"{self.directory / name}: already exists")
        except BaseException:
            os.unlink(temp)
            os.close(fd)
            raise
        return _LocalUpload(self.directory, name, temp, fd)

    def marked(self, name: str) -> str | None:
        """A directory keeps no marks: its commit order leaves nothing that needs one."""
        self.stat(name)
        return None

    def claimed(self, key: str) -> bool:
        return os.path.lexists(self.directory / partial_name(key))

    def delete(self, name: str) -> None:
        self.stat(name)  # only objects: a symlink or a FIFO under the name was not written here
        os.unlink(self.directory / name)

    def clean_partials(self) -> list[str]:
        removed = []
        for name in sorted(self._listdir()):
            if not _PARTIAL.match(name):
                continue
            path = self.directory / name
            try:
                # O_NONBLOCK: a FIFO under such a name must not hang the clean-up.
                fd = os.open(path, _READ_FLAGS)
            except OSError:
                continue
            try:
                if not stat.S_ISREG(os.fstat(fd).st_mode):
                    continue  # writers leave regular files; anything else is not theirs
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    continue  # a live writer holds it
                if not _is_still(path, fd):
                    continue  # replaced since it was opened: not the file we locked
                try:
                    os.unlink(path)
                    removed.append(name)
                except FileNotFoundError:
                    pass
            finally:
                os.close(fd)
        return removed

    def read_record(self, name: str) -> bytes | None:
        """Return the record, or None if there is none; raise StorageError if it cannot
        be read (then nothing may be written over it as if it were empty)."""
        try:
            with self.open_read(name) as handle:
                return handle.read()
        except FileNotFoundError:
            return None
        except OSError as exc:
            path = self.directory / name
            raise StorageError(f"{path}: cannot read: {exc.strerror or exc}", path) from exc

    def write_record(self, name: str, data: bytes) -> None:
        if not name.startswith(".") or "/" in name or "\x00" in name or name in (".", ".."):
            raise StorageError(f"{name!r}: a record's name starts with '.' and has no '/'")
        atomic_write_bytes(self.directory / name, data, temp_name=partial_name(f"{name.lstrip('.')}.{os.getpid()}"))

    def lock(
        self,
        timeout: float = 0.0,
        *,
        sleep: Callable[[float], None] = time.sleep,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> AbstractContextManager[None]:
        return backup_dir_lock(self.directory, timeout, sleep=sleep, monotonic=monotonic)


def _is_still(path: Path, fd: int) -> bool:
    """Return whether ``path`` still names the file open as ``fd``."""
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return False
    opened = os.fstat(fd)
    return (info.st_dev, info.st_ino) == (opened.st_dev, opened.st_ino)


class _Limited:
    """At most ``length`` bytes of ``raw``: a ranged read."""

    def __init__(self, raw: BinaryIO, length: int) -> None:
        self._raw = raw
        self._left = length

    def read(self, size: int = -1) -> bytes:
        if size < 0 or size > self._left:
            size = self._left
        data = self._raw.read(size)
        self._left -= len(data)
        return data

    def readinto(self, buffer: bytearray | memoryview) -> int:
        view = memoryview(buffer)[: self._left]
        count = int(self._raw.readinto(view))  # type: ignore[attr-defined]
        self._left -= count
        return count

    def readable(self) -> bool:
        return True

    @property
    def closed(self) -> bool:
        return bool(self._raw.closed)

    def close(self) -> None:
        self._raw.close()

    def __enter__(self) -> _Limited:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
