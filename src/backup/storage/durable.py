"""Writing files so that a crash leaves either the old state or the complete new file.

A file is written under a temporary name in its final directory, flushed, fsynced,
then renamed; the directory is fsynced so the rename itself survives a power cut.
Files are created mode 0600 whatever the umask, because backups hold secrets.
"""

from __future__ import annotations

import errno
import fcntl
import os
from pathlib import Path

__all__ = ["PRIVATE_MODE", "atomic_write_bytes", "fsync_directory", "link_no_replace", "make_private_dir"]

PRIVATE_MODE = 0o600


def make_private_dir(directory: str | Path) -> None:
    """Create ``directory`` (and missing parents) if needed; a directory created here is
    mode 0700 whatever the umask, because it will hold backups. Raise OSError on failure."""
    directory = Path(directory)
    if directory.is_dir():
        return
    directory.parent.mkdir(parents=True, exist_ok=True)
    try:
        directory.mkdir(mode=0o700)
    except FileExistsError:
        return  # made by someone else meanwhile: theirs to decide
    os.chmod(directory, 0o700)


def fsync_directory(directory: str | Path) -> None:
    """Given a directory, flush its entries (new names, renames) to stable storage."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def link_no_replace(source: str | Path, target: str | Path) -> None:
    """Given a file and a new name, give the file that name, failing if the name exists.

    ``os.rename`` would silently replace an existing file; a hard link cannot. Where the
    file system has no hard links, fall back to a rename after checking the name.
    Raise FileExistsError if ``target`` exists.
    """
    try:
        os.link(source, target, follow_symlinks=False)
    except OSError as exc:
        if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK, errno.EXDEV):
            raise
        if os.path.lexists(target):
            raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), str(target)) from exc
        os.rename(source, target)
        return
    os.unlink(source)


def atomic_write_bytes(
    path: str | Path, data: bytes, mode: int = PRIVATE_MODE, *, temp_name: str | None = None
) -> None:
    """Given a path and bytes, replace the file at ``path`` with them atomically and durably.

    The bytes are written to ``temp_name`` (default ``.<name>.<pid>.partial``) beside
    it first. Raise OSError if the directory cannot be written; nothing is left behind then.
    """
    path = Path(path)
    temp = path.with_name(temp_name or f".{path.name}.{os.getpid()}.partial")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW, mode)
    try:
        # Held while writing so a backup directory's clean-up never takes it for a leftover.
        fcntl.flock(fd, fcntl.LOCK_EX)
        os.fchmod(fd, mode)
        view = memoryview(data)
        while view:
            written = os.write(fd, view)
            view = view[written:]
        os.fsync(fd)
        os.rename(temp, path)
    except BaseException:
        os.close(fd)
        fd = -1
        try:
            os.unlink(temp)
        except FileNotFoundError:
            pass
        raise
    finally:
        if fd >= 0:
            os.close(fd)
    fsync_directory(path.parent)
