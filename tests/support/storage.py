"""Backup storages for tests: a fast in-memory one, and a wrapper that fails on purpose.

``MemoryStorage`` keeps the whole ``BackupStorage`` contract (see
``backup.storage.base``) in dictionaries, and passes the same contract suite as
``LocalStorage`` (``tests/unit/backup/storage/``). Tests that are about what the
library does with a location, not about files, run against it in microseconds.

``FaultyStorage`` wraps any storage and raises a chosen ``OSError`` from one of its
operations: the Nth write, commit or delete, every write once the "disk" is full, or
one named operation. The tests run as root, so permission bits cannot make a
directory read-only and no test can fill a real disk; the storage is the seam every
backup write, read and delete goes through, so faults are injected there
(``create_backup(config, storage=FaultyStorage(LocalStorage(path), ...))``) instead of
patching ``os`` or the library's module globals.
"""

from __future__ import annotations

import fnmatch
import io
import os
import time
import weakref
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import BinaryIO

from backup.errors import LockError, StorageError
from backup.storage.base import BackupStorage, ObjectInfo, Upload
from backup.storage.local import partial_name

__all__ = ["Fault", "FaultyStorage", "MemoryStorage", "put_object", "read_object"]


def put_object(storage: BackupStorage, name: str, data: bytes = b"data", claim: str | None = None) -> None:
    """Given a storage, write one object through the protocol (begin, write, commit)."""
    upload = storage.begin(name, claim=claim)
    try:
        upload.write(data)
        upload.commit()
    finally:
        upload.abort()  # does nothing after a commit


def read_object(storage: BackupStorage, name: str) -> bytes:
    """Given a storage, return one object's bytes, read through the protocol."""
    with storage.open_read(name) as handle:
        return handle.read()


def _check_name(name: str) -> None:
    # The same rule LocalStorage applies, so that a test that passes here passes there.
    if not name or "/" in name or "\x00" in name or name.startswith("."):
        raise StorageError(f"{name!r}: object names may not be empty, contain '/' or start with '.'")


# --- MemoryStorage ------------------------------------------------------------------------


class _MemoryUpload:
    """An object being written into a MemoryStorage.

    Its writer holds a key (its claim, or else its object's name) from ``begin`` until
    it commits or aborts. A writer that goes away without either (``abandon()``, or the
    upload garbage-collected) is dead: like a killed process's partial file, its key
    stays taken until ``clean_partials`` removes it.
    """

    def __init__(self, storage: MemoryStorage, name: str, key: str, mark: str | None = None) -> None:
        self.name = name
        self._storage = storage
        self._key = key
        self._mark = mark
        self._buffer = io.BytesIO()
        self._done = False
        self.abandoned = False

    @property
    def alive(self) -> bool:
        """Whether this writer may still commit."""
        return not self._done and not self.abandoned

    def _check_alive(self) -> None:
        if self._done:
            raise StorageError(f"{self._storage.describe(self.name)}: already committed or aborted")
        if self.abandoned:
            raise StorageError(f"{self._storage.describe(self.name)}: the writer died")

    def write(self, data: bytes | bytearray | memoryview) -> int:
        self._check_alive()
        return self._buffer.write(data)

    def flush(self) -> None:
        """Nothing is buffered."""

    def commit(self) -> None:
        self._check_alive()
        try:
            self._storage._commit(self.name, self._buffer.getvalue(), self._mark)
        except BaseException:
            self.abort()
            raise
        self._finish()

    def abort(self) -> None:
        if self._done or self.abandoned:
            return  # a dead writer does nothing more; its key waits for clean_partials
        self._finish()

    def abandon(self) -> None:
        """Die as a killed process does: neither commit nor abort; the key stays held."""
        self.abandoned = True

    def _finish(self) -> None:
        self._done = True
        writers = self._storage._writers
        ref = writers.get(self._key)
        if ref is not None and ref() is self:  # once cleaned, the key may be another writer's
            del writers[self._key]
        self._buffer = io.BytesIO()


@dataclass
class _Stored:
    data: bytes
    modified: float
    mark: str | None = None


class MemoryStorage:
    """A ``BackupStorage`` held in memory (see the module docstring).

    ``clock`` gives each committed object its modification time (POSIX seconds).
    ``exists=False`` makes a location that does not exist until ``ensure()`` (or a
    lock) creates it: it lists nothing, and writing into it fails as writing into a
    missing directory does. Partials are reported under the names LocalStorage gives
    them, so results compare across the two.
    """

    grace_seconds = 0.0

    def __init__(
        self,
        location: str = "memory://backups",
        *,
        clock: Callable[[], float] = time.time,
        exists: bool = True,
        manifest_commits: bool = False,
    ) -> None:
        self.manifest_commits = manifest_commits
        self._location = location
        self._clock = clock
        self._exists = exists
        self._objects: dict[str, _Stored] = {}
        self._records: dict[str, bytes] = {}
        self._writers: dict[str, weakref.ref[_MemoryUpload]] = {}
        self._holder: tuple[int, str] | None = None

    def __repr__(self) -> str:
        return f"MemoryStorage({self._location!r})"

    # -- where it is ------------------------------------------------------------------

    @property
    def location(self) -> str:
        return self._location

    def describe(self, name: str) -> str:
        return f"{self._location}/{name}"

    def now(self) -> float:
        return self._clock()

    def local_path(self, name: str) -> Path | None:
        return None

    def ensure(self) -> None:
        self._exists = True

    def exists(self) -> bool:
        return self._exists

    def _missing(self, name: str) -> FileNotFoundError:
        return FileNotFoundError(2, os.strerror(2), self.describe(name))

    # -- objects ----------------------------------------------------------------------

    def list_objects(self) -> list[ObjectInfo]:
        return [ObjectInfo(name, len(item.data), item.modified) for name, item in sorted(self._objects.items())]

    def stat(self, name: str) -> ObjectInfo:
        _check_name(name)
        item = self._objects.get(name)
        if item is None:
            raise self._missing(name)
        return ObjectInfo(name, len(item.data), item.modified)

    def open_read(self, name: str, offset: int = 0, length: int | None = None) -> BinaryIO:
        item = self._objects.get(name) if name and "/" not in name else None
        if item is None:
            raise self._missing(name)
        end = None if length is None else offset + length
        return io.BytesIO(item.data[offset:end])

    def begin(
        self, name: str, claim: str | None = None, size_hint: int | None = None, mark: str | None = None
    ) -> _MemoryUpload:
        _check_name(name)
        if claim is not None:
            _check_name(claim)
        if not self._exists:
            raise self._missing(partial_name(claim or name))
        key = claim or name
        if key in self._writers:
            raise FileExistsError(17, "claimed by another writer", self.describe(partial_name(key)))
        if name in self._objects or (
            claim is not None and any(other.startswith(claim + ".") for other in self._objects)
        ):
            raise FileExistsError(17, os.strerror(17), self.describe(name))
        upload = _MemoryUpload(self, name, key, mark)
        self._writers[key] = weakref.ref(upload)
        return upload

    def _commit(self, name: str, data: bytes, mark: str | None = None) -> None:
        if not self._exists:
            raise self._missing(name)
        if name in self._objects:
            raise FileExistsError(17, os.strerror(17), self.describe(name))
        self._objects[name] = _Stored(data, self._clock(), mark)

    def marked(self, name: str) -> str | None:
        item = self._objects.get(name)
        if item is None:
            raise self._missing(name)
        return item.mark

    def claimed(self, key: str) -> bool:
        return key in self._writers

    def delete(self, name: str) -> None:
        _check_name(name)
        if self._objects.pop(name, None) is None:
            raise self._missing(name)

    def clean_partials(self) -> list[str]:
        dead = [key for key, ref in self._writers.items() if (upload := ref()) is None or not upload.alive]
        for key in dead:
            del self._writers[key]
        return sorted(partial_name(key) for key in dead)

    # -- records ----------------------------------------------------------------------

    def read_record(self, name: str) -> bytes | None:
        return self._records.get(name)

    def write_record(self, name: str, data: bytes) -> None:
        if not name.startswith(".") or "/" in name:
            raise StorageError(f"{name!r}: record names start with '.' and contain no '/'")
        if not self._exists:
            raise self._missing(name)
        self._records[name] = bytes(data)

    # -- the lock ---------------------------------------------------------------------

    def lock(
        self,
        timeout: float = 0.0,
        *,
        sleep: Callable[[float], None] = time.sleep,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> AbstractContextManager[None]:
        return self._locked(timeout, sleep, monotonic)

    @contextmanager
    def _locked(self, timeout: float, sleep: Callable[[float], None], monotonic: Callable[[], float]) -> Iterator[None]:
        deadline = monotonic() + max(timeout, 0.0)
        while self._holder is not None:
            if monotonic() >= deadline:
                pid, since = self._holder
                waited = f"after waiting {timeout:g}s" if timeout > 0 else "without waiting"
                raise LockError(
                    f"{self._location}: backup location is locked by pid {pid} (since {since}); gave up {waited}",
                    self._location,
                    holder_pid=pid,
                )
            sleep(0.1)
        self._exists = True
        holder = (os.getpid(), datetime.now(UTC).isoformat())
        self._holder = holder
        try:
            yield
        finally:
            if self._holder is holder:
                self._holder = None


# --- FaultyStorage ------------------------------------------------------------------------

OPERATIONS = (
    "ensure",
    "exists",
    "list_objects",
    "stat",
    "open_read",
    "begin",
    "write",
    "commit",
    "abort",
    "claimed",
    "delete",
    "clean_partials",
    "read_record",
    "write_record",
    "lock",
)


@dataclass
class Fault:
    """One fault: which operation fails, with what, and when.

    ``error`` is the exception to raise, or an errno (then the error is the OSError the
    operation would raise for the object, naming it as ``describe`` does). ``names`` is
    a glob: only calls about matching objects count (for ``write``, ``commit`` and
    ``abort``, the upload's object). The ``nth`` counted call fails, and with
    ``repeat`` every one after it too. For ``write``, ``room`` instead of ``nth``: the
    matching uploads may write that many bytes in all, the write that crosses it writes
    what fits and then fails, and so does every later write, as on a full disk.
    """

    operation: str
    error: OSError | int
    nth: int = 1
    names: str | None = None
    repeat: bool = False
    room: int | None = None
    seen: int = field(default=0, init=False)
    fired: int = field(default=0, init=False)

    def __post_init__(self) -> None:
        if self.operation not in OPERATIONS:
            raise ValueError(f"unknown storage operation {self.operation!r}")
        if self.room is not None and self.operation != "write":
            raise ValueError("room= is for write faults only")

    def matches(self, operation: str, name: str | None) -> bool:
        if operation != self.operation:
            return False
        return self.names is None or (name is not None and fnmatch.fnmatchcase(name, self.names))

    def due(self) -> bool:
        """Count one matching call; return whether it fails."""
        self.seen += 1
        return self.seen == self.nth or (self.repeat and self.seen > self.nth)

    def exception(self, storage: BackupStorage, name: str | None) -> OSError:
        self.fired += 1
        if isinstance(self.error, int):
            where = storage.describe(name) if name is not None else storage.location
            return OSError(self.error, os.strerror(self.error), where)
        return self.error


class _FaultyUpload:
    """An upload whose writes and decisions go through its storage's faults."""

    def __init__(self, storage: FaultyStorage, inner: Upload) -> None:
        self.name = inner.name
        self._storage = storage
        self._inner = inner

    def write(self, data: bytes | bytearray | memoryview) -> int:
        view = memoryview(data).cast("B")
        self._storage.calls.append(("write", self.name))
        for fault in self._storage.faults:
            if not fault.matches("write", self.name):
                continue
            if fault.room is not None:
                if len(view) > fault.room:
                    if fault.room:
                        self._inner.write(view[: fault.room])
                    fault.room = 0
                    raise fault.exception(self._storage.inner, self.name)
                fault.room -= len(view)
            elif fault.due():
                raise fault.exception(self._storage.inner, self.name)
        return self._inner.write(view)

    def flush(self) -> None:
        self._inner.flush()

    def commit(self) -> None:
        try:
            self._storage._check("commit", self.name)
        except BaseException:
            self._inner.abort()  # a failed commit aborts, as the contract says
            raise
        self._inner.commit()

    def abort(self) -> None:
        self._storage._check("abort", self.name)
        self._inner.abort()


class FaultyStorage:
    """Any storage, with faults injected (see ``Fault``); ``calls`` logs every
    ``(operation, name)`` made through it, faulty or not."""

    def __init__(self, inner: BackupStorage, *faults: Fault) -> None:
        self.inner = inner
        self.faults = list(faults)
        self.calls: list[tuple[str, str | None]] = []

    def __repr__(self) -> str:
        return f"FaultyStorage({self.inner!r})"

    def _check(self, operation: str, name: str | None = None) -> None:
        self.calls.append((operation, name))
        for fault in self.faults:
            if fault.matches(operation, name) and fault.due():
                raise fault.exception(self.inner, name)

    def called(self, operation: str) -> list[str | None]:
        """Return the names the given operation was called with, in order."""
        return [name for op, name in self.calls if op == operation]

    @property
    def location(self) -> str:
        return self.inner.location

    @property
    def manifest_commits(self) -> bool:  # type: ignore[override]
        return self.inner.manifest_commits

    @property
    def grace_seconds(self) -> float:  # type: ignore[override]
        return self.inner.grace_seconds

    def now(self) -> float:
        return self.inner.now()

    def describe(self, name: str) -> str:
        return self.inner.describe(name)

    def local_path(self, name: str) -> Path | None:
        return self.inner.local_path(name)

    def ensure(self) -> None:
        self._check("ensure")
        self.inner.ensure()

    def exists(self) -> bool:
        self._check("exists")
        return self.inner.exists()

    def list_objects(self) -> list[ObjectInfo]:
        self._check("list_objects")
        return self.inner.list_objects()

    def stat(self, name: str) -> ObjectInfo:
        self._check("stat", name)
        return self.inner.stat(name)

    def open_read(self, name: str, offset: int = 0, length: int | None = None) -> BinaryIO:
        self._check("open_read", name)
        return self.inner.open_read(name, offset, length)

    def begin(
        self, name: str, claim: str | None = None, size_hint: int | None = None, mark: str | None = None
    ) -> _FaultyUpload:
        self._check("begin", name)
        return _FaultyUpload(self, self.inner.begin(name, claim=claim, size_hint=size_hint, mark=mark))

    def marked(self, name: str) -> str | None:
        self._check("marked", name)
        return self.inner.marked(name)

    def claimed(self, key: str) -> bool:
        self._check("claimed", key)
        return self.inner.claimed(key)

    def delete(self, name: str) -> None:
        self._check("delete", name)
        self.inner.delete(name)

    def clean_partials(self) -> list[str]:
        self._check("clean_partials")
        return self.inner.clean_partials()

    def read_record(self, name: str) -> bytes | None:
        self._check("read_record", name)
        return self.inner.read_record(name)

    def write_record(self, name: str, data: bytes) -> None:
        self._check("write_record", name)
        self.inner.write_record(name, data)

    def lock(
        self,
        timeout: float = 0.0,
        *,
        sleep: Callable[[float], None] = time.sleep,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> AbstractContextManager[None]:
        self._check("lock")
        return self.inner.lock(timeout, sleep=sleep, monotonic=monotonic)
