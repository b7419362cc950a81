"""One process at a time per backup directory: an ``flock`` on ``.obs-backup.lock``.

The kernel releases an ``flock`` when its holder dies, however it dies, so a lock left
by a crashed or killed process never blocks anyone. The file itself stays; it holds
the pid and start time of the current (or last) holder, for the error message.
"""

from __future__ import annotations

import fcntl
import json
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

from ..errors import LockError, StorageError
from .durable import PRIVATE_MODE, make_private_dir

__all__ = ["LOCK_NAME", "backup_dir_lock"]

LOCK_NAME = ".obs-backup.lock"
_POLL_SECONDS = 0.1


@contextmanager
def backup_dir_lock(
    backup_dir: Path,
    timeout: float = 0.0,
    *,
    sleep: Callable[[float], None] = time.sleep,
    monotonic: Callable[[], float] = time.monotonic,
) -> Iterator[None]:
    """Given a backup directory, hold its lock for the duration of the ``with`` block.

    Wait up to ``timeout`` seconds for another holder to finish. Raise LockError naming
    the holder's pid if it does not, StorageError if the lock file cannot be created.
    """
    backup_dir = Path(backup_dir)
    path = backup_dir / LOCK_NAME
    try:
        make_private_dir(backup_dir)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, PRIVATE_MODE)
    except OSError as exc:
        raise StorageError(f"{path}: cannot create lock file: {exc.strerror or exc}", path) from exc
    try:
        deadline = monotonic() + max(timeout, 0.0)
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if monotonic() >= deadline:
                    raise _held_error(path, fd, timeout) from None
                sleep(_POLL_SECONDS)
        record = json.dumps({"pid": os.getpid(), "since": datetime.now(UTC).isoformat()})
        os.ftruncate(fd, 0)
        os.pwrite(fd, record.encode() + b"\n", 0)
        yield
    finally:
        os.close(fd)  # closing releases the flock


def _held_error(path: Path, fd: int, timeout: float) -> LockError:
    pid = None
    since = "an unknown time"
    try:
        holder = json.loads(os.pread(fd, 4096, 0) or b"{}")
        pid = int(holder["pid"])
        since = str(holder.get("since", since))
    except (ValueError, KeyError, TypeError, OSError):
        pass
    who = f"pid {pid}" if pid is not None else "another process"
    waited = f"after waiting {timeout:g}s" if timeout > 0 else "without waiting"
    return LockError(
        f"{path.parent}: backup directory is locked by {who} (since {since}); gave up {waited}",
        path,
        holder_pid=pid,
    )
