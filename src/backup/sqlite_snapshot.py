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
   writer opened (same device and inode); if it is not, the copy is discarded.
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
import tempfile
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
    try:
        private = tempfile.mkdtemp(prefix="obs-backup-sqlite-", dir=temp_dir)
    except OSError as exc:
        raise SnapshotError(f"no private directory for the copy: {exc.strerror or exc}") from exc
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


def _copy_database(
    dir_fd: int, name: str, expected: os.stat_result, own_fd: int, copy: str, busy_timeout: float
) -> None:
    """Copy the database ``name`` in ``dir_fd`` into the new file ``copy``; raise
    SnapshotError if SQLite fails or opened another file than ``expected``."""
    uri = f"file:/proc/self/fd/{dir_fd}/{quote(os.fsencode(name), safe='')}?mode=ro"
    deadline = time.monotonic() + busy_timeout

    def give_up_when_late(status: int, remaining: int, total: int) -> None:
        # Python retries a busy step for ever; SQLite has already waited busy_timeout.
        if status in _BUSY and time.monotonic() >= deadline:
            raise SnapshotError(f"still locked by a writer after {busy_timeout:g} seconds")

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
    finally:
        source.close()


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
