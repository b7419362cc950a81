"""Consistent copies of SQLite databases that are written while a backup reads them.

A database copied byte by byte while its application commits is torn: pages of
several transactions, and a ``-wal`` or ``-journal`` beside it from yet another
moment. Instead, a file that starts with SQLite's header (whatever its name) is read
through SQLite itself, with its online backup API, in one step under one read
transaction: the copy holds exactly one committed state, the committed part of the
write-ahead log included, so the ``-wal``, ``-shm`` and ``-journal`` files beside the
database are not needed to restore it.

Order of events, and why:

1. The live database is opened read-only, named through the descriptor of its
   directory (``file:/proc/self/fd/<dir>/<name>?mode=ro``), so the walk's
   directory chain is reused rather than a path resolved again. SQLite resolves
   that name to a path of its own (it follows links to find the ``-wal``), so:
2. after the copy, the file SQLite holds open must be the very file the archive
   writer opened (same device and inode), and the ``-wal`` and ``-shm`` it holds open
   the very files beside it in that directory (a directory swapped for a link
   meanwhile could hand it another database's log); if not, the copy is discarded.
   A companion that is not a regular file (a FIFO, on which SQLite's open would
   block for ever) is refused before SQLite looks; one swapped in afterwards is
   opened for writing by a watchdog, which lets SQLite's open return, and the copy
   is discarded.
3. The copy goes to a file in a private temporary directory (mode 0700), which is
   removed whatever happens, and is handed to the caller as an open descriptor.

A writer holding a lock is waited for at most ``busy_timeout`` seconds. Opening
read-only never writes the database file itself, but SQLite may create an empty
``-wal`` and a ``-shm`` beside a WAL database that had none (owned as the database
is), as any reader of it would. Any failure raises ``SnapshotError`` with the reason;
the archive writer then copies the file's bytes as it does any file, and says so.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import stat
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import quote

from .fstree import same_file

__all__ = [
    "BUSY_TIMEOUT",
    "COMPANION_SUFFIXES",
    "SQLITE_HEADER",
    "SQLITE_MIN_SIZE",
    "SnapshotError",
    "is_sqlite_header",
    "sqlite_snapshot",
]

SQLITE_HEADER = b"SQLite format 3\x00"
# The smallest page SQLite writes: a shorter file is not a database worth copying.
SQLITE_MIN_SIZE = 512
# The files SQLite keeps beside a database: the snapshot holds what they add.
COMPANION_SUFFIXES = ("-journal", "-wal", "-shm")
BUSY_TIMEOUT = 10.0
# Beyond the busy timeout, how long SQLite may take before a companion it is stuck
# opening is treated as a trap.
_STUCK_AFTER = 5.0
_SNAPSHOT_NAME = "snapshot.db"
_BUSY = (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)


class SnapshotError(Exception):
    """A database could not be copied through SQLite; the message says why. The
    archive writer catches it and copies the file's bytes instead: it never leaves
    the library."""


def is_sqlite_header(head: bytes | memoryview, size: int) -> bool:
    """Given a file's first bytes and its size, return whether it is an SQLite database."""
    return size >= SQLITE_MIN_SIZE and head[: len(SQLITE_HEADER)] == SQLITE_HEADER


@contextmanager
def sqlite_snapshot(
    dir_fd: int,
    name: str,
    fd: int,
    *,
    busy_timeout: float | None = None,
    temp_dir: str | None = None,
) -> Iterator[int]:
    """Given a directory descriptor, the name of a database in it and the descriptor
    the caller opened it with, yield an open descriptor of a consistent copy of it.

    The copy is made in a new private directory in ``temp_dir`` (the system's
    temporary directory by default) and removed when the context ends. Raise
    SnapshotError (before yielding) if SQLite cannot open or copy it within
    ``busy_timeout`` seconds (``BUSY_TIMEOUT`` by default), or if what it opened is
    not the file ``fd`` refers to.
    """
    if busy_timeout is None:
        busy_timeout = BUSY_TIMEOUT
    _check_companions(dir_fd, name)
    try:
        private = tempfile.mkdtemp(prefix="obs-backup-sqlite-", dir=temp_dir)
    except OSError as exc:
        raise SnapshotError(f"no private directory for the copy: {exc.strerror or exc}") from exc
    try:
        space = os.statvfs(private)
        needed = os.fstat(fd).st_size
        if space.f_bavail * space.f_frsize < needed + (16 << 20):
            shutil.rmtree(private, ignore_errors=True)
            raise SnapshotError(f"not enough free space for a {needed}-byte copy in {os.path.dirname(private)}")
    except OSError:
        pass  # unknown: the copy itself fails cleanly if space runs out
    try:
        copy = os.path.join(private, _SNAPSHOT_NAME)
        _copy_database(dir_fd, name, os.fstat(fd), fd, copy, busy_timeout)
        leftovers = sorted(set(os.listdir(private)) - {_SNAPSHOT_NAME})
        if leftovers:
            raise SnapshotError(f"the copy was left incomplete (beside it: {', '.join(leftovers)})")
        copy_fd = os.open(copy, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        shutil.rmtree(private, ignore_errors=True)
        raise SnapshotError(f"the copy could not be made: {exc.strerror or exc}") from exc
    except BaseException:
        shutil.rmtree(private, ignore_errors=True)
        raise
    try:
        yield copy_fd
    finally:
        os.close(copy_fd)
        shutil.rmtree(private, ignore_errors=True)


def _check_companions(dir_fd: int, name: str) -> None:
    """Raise SnapshotError if a file SQLite would open beside the database is not a
    regular file (a FIFO would block its open for ever)."""
    for suffix in COMPANION_SUFFIXES:
        try:
            info = os.stat(name + suffix, dir_fd=dir_fd, follow_symlinks=False)
        except FileNotFoundError:
            continue
        except OSError as exc:
            raise SnapshotError(f"{name + suffix} beside it cannot be examined: {exc.strerror or exc}") from exc
        if not stat.S_ISREG(info.st_mode):
            raise SnapshotError(f"{name + suffix} beside it is not a regular file")


class _Watchdog:
    """After ``delay`` seconds, unblocks an open of a FIFO swapped in for a companion
    (by opening it for writing, which lets a blocked reader's open return), and
    remembers having had to."""

    def __init__(self, dir_fd: int, name: str, delay: float) -> None:
        self.dir_fd = dir_fd
        self.name = name
        self.fired = False
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._watch, args=(delay,), daemon=True)
        self._thread.start()

    def _watch(self, delay: float) -> None:
        if self._done.wait(delay):
            return
        while not self._done.wait(0.5):
            for suffix in COMPANION_SUFFIXES:
                try:
                    info = os.stat(self.name + suffix, dir_fd=self.dir_fd, follow_symlinks=False)
                    if not stat.S_ISFIFO(info.st_mode):
                        continue
                    flags = os.O_WRONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC
                    os.close(os.open(self.name + suffix, flags, dir_fd=self.dir_fd))
                    self.fired = True
                except OSError:
                    continue

    def stop(self) -> None:
        self._done.set()
        self._thread.join()


def _copy_database(
    dir_fd: int, name: str, expected: os.stat_result, own_fd: int, copy: str, busy_timeout: float
) -> None:
    """Copy the database ``name`` in ``dir_fd`` into the new file ``copy``; raise
    SnapshotError if SQLite fails or opened another file than ``expected``."""
    uri = f"file:/proc/self/fd/{dir_fd}/{quote(os.fsencode(name), safe='')}?mode=ro"
    deadline = time.monotonic() + busy_timeout
    watchdog = _Watchdog(dir_fd, name, busy_timeout + _STUCK_AFTER)
    try:
        _copy_watched(uri, dir_fd, name, expected, own_fd, copy, busy_timeout, deadline)
    finally:
        watchdog.stop()
    if watchdog.fired:
        raise SnapshotError("a FIFO was put beside it while it was read")


def _copy_watched(
    uri: str,
    dir_fd: int,
    name: str,
    expected: os.stat_result,
    own_fd: int,
    copy: str,
    busy_timeout: float,
    deadline: float,
) -> None:

    def give_up_when_late(status: int, remaining: int, total: int) -> None:
        # Python retries a busy step for ever; SQLite has already waited busy_timeout.
        if status in _BUSY and time.monotonic() >= deadline:
            raise SnapshotError(f"still locked by a writer after {busy_timeout:g} seconds")

    before = set(os.listdir("/proc/self/fd"))  # what is open before SQLite opens anything
    try:
        source = sqlite3.connect(uri, uri=True, timeout=busy_timeout, isolation_level=None)
    except sqlite3.Error as exc:
        raise SnapshotError(f"SQLite cannot open it read-only: {exc}") from exc
    try:
        try:
            target = sqlite3.connect(copy, isolation_level=None)
            try:
                # A private file: no journal or sync needed, it is discarded on any failure.
                target.execute("PRAGMA journal_mode=OFF")
                target.execute("PRAGMA synchronous=OFF")
                # One step, under one read transaction: a step at a time would restart
                # whenever the application commits, and might never finish.
                source.backup(target, pages=-1, progress=give_up_when_late)
            finally:
                target.close()
        except sqlite3.Error as exc:
            raise SnapshotError(f"SQLite cannot copy it: {exc}") from exc
        if not _held_open(expected, own_fd):
            raise SnapshotError("SQLite opened another file than the one archived (replaced while being read?)")
        stray = _stray_companion(dir_fd, name, before)
        if stray is not None:
            raise SnapshotError(f"SQLite read a {stray} that is not the one beside it (replaced while being read?)")
    finally:
        source.close()


def _stray_companion(dir_fd: int, name: str, before: set[str]) -> str | None:
    """Return the suffix of a ``-wal`` or ``-shm`` SQLite opened (a descriptor not in
    ``before``) under the database's name that is not the file of that name in
    ``dir_fd`` (None if all are)."""
    for entry in set(os.listdir("/proc/self/fd")) - before:
        try:
            target = os.readlink(f"/proc/self/fd/{entry}")
        except OSError:
            continue
        for suffix in ("-wal", "-shm"):
            if os.path.basename(target) != name + suffix:
                continue
            try:
                held = os.fstat(int(entry))
                beside = os.stat(name + suffix, dir_fd=dir_fd, follow_symlinks=False)
            except OSError:
                return suffix
            if not same_file(held, beside):
                return suffix
    return None


def _held_open(expected: os.stat_result, own_fd: int) -> bool:
    """Return whether a descriptor of this process other than ``own_fd`` (that is,
    SQLite's) refers to the file ``expected`` describes."""
    for entry in os.listdir("/proc/self/fd"):
        number = int(entry)
        if number == own_fd:
            continue
        try:
            info = os.fstat(number)
        except OSError:
            continue  # the listing's own descriptor, closed by now
        if same_file(info, expected):
            return True
    return False
