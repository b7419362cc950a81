"""The one interface every backup location implements, and the contract it keeps.

Everything that touches a backup location (create, list, verify, restore, prune, the
scheduler, monitoring) goes through a ``BackupStorage``; nothing below the command
line opens a backup directory by path. ``LocalStorage`` (a directory) is one
implementation; a new location is one new file implementing this protocol and
passing the shared contract suite (``tests/unit/backup/storage/contract.py``).

The contract:

* **Objects** have flat names (no ``/``, not starting with ``.``). ``list_objects()`` shows
  committed objects only, with sizes and modification times, sorted by name.
* **Writing** streams: ``begin(name, claim=...)`` returns an ``Upload``; nothing is
  visible under ``name`` until ``commit()``, which makes the object durable and then
  visible in one step and never replaces an existing object (FileExistsError).
  ``abort()``, or the writer's death, leaves no object behind.
* **Claims** are the atomic "create if absent" of ids: ``begin(..., claim=key)``
  succeeds for at most one writer per key, and is refused while a committed object's
  name starts with ``key + "."``. This is how two backups started in the same second
  get different ids. ``claimed(key)`` says whether a writer holds the key (or a dead
  one left it held, until ``clean_partials()``).
* **Reading** streams too, from any offset: ``open_read(name, offset, length)``.
* **Marks.** ``begin(..., mark=backup_id)`` asks the storage to keep the backup id with
  the object; ``marked(name)`` returns it. An object store keeps it (as object
  metadata), so that an encrypted object cut off before its commit point, whose bytes
  prove nothing, is still known to be ours. A storage whose commit order needs no
  marks (a directory) may keep none and return None.
* ``clean_partials()`` removes what dead writers left, and nothing a live one holds.
* **Records** are small internal objects (the run state) under names starting with
  ``.``, replaced atomically by ``write_record`` and never listed.
* ``lock(timeout)`` holds the location's lock (one writer or pruner at a time) for the
  duration of a ``with`` block, and raises LockError naming the holder.
* **Commit point.** Where an object appears only complete but cannot be linked into
  place at the last moment (an object store), the manifest, written last, is what makes
  a backup exist: ``manifest_commits`` is True, and an archive without its manifest is
  a leftover. In a directory the archive, linked last, is the commit point.
* **Time.** ``now()`` is the location's clock, the one its modification times come
  from (an object store's, not this machine's). Leftovers and backups younger than
  ``grace_seconds`` by it are never removed.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Protocol

__all__ = ["BackupStorage", "ObjectInfo", "ObjectRef", "Upload"]


@dataclass(frozen=True)
class ObjectInfo:
    """A committed object: its name, size in bytes and modification time (POSIX)."""

    name: str
    size: int
    modified: float


class Upload(Protocol):
    """An object being written: a write-only stream plus the decision to keep it."""

    name: str

    def write(self, data: bytes | bytearray | memoryview) -> int:
        """Write all of ``data`` (or raise); return its length."""

    def flush(self) -> None:
        """Push buffered bytes down (committing does this too)."""

    def commit(self) -> None:
        """Make the object durable and visible under its name; raise FileExistsError if
        the name is taken (the upload is then aborted)."""

    def abort(self) -> None:
        """Discard everything written; safe to call after commit (then it does nothing)."""


class BackupStorage(Protocol):
    """A place that keeps archives and manifests (see the module docstring)."""

    #: Whether the manifest, written after the archive, is the commit point.
    manifest_commits: bool
    #: How old (by ``now()``) a leftover or a backup must be before it may be removed.
    grace_seconds: float

    def now(self) -> float:
        """Return the location's clock, in POSIX seconds."""

    @property
    def location(self) -> str:
        """Where this is, for people: a directory path or a URL."""

    def describe(self, name: str) -> str:
        """Return where one object is, for messages (a path, a URL)."""

    def local_path(self, name: str) -> Path | None:
        """Return the local file an object lives in, or None for remote storage."""

    def ensure(self) -> None:
        """Create the location if needed; raise StorageError if it cannot be."""

    def exists(self) -> bool:
        """Return whether the location exists."""

    def list_objects(self) -> list[ObjectInfo]:
        """Return the committed objects, sorted by name; raise StorageError."""

    def stat(self, name: str) -> ObjectInfo:
        """Return one committed object's information; raise FileNotFoundError."""

    def open_read(self, name: str, offset: int = 0, length: int | None = None) -> BinaryIO:
        """Return a stream of an object's bytes from ``offset`` (``length`` of them, or
        to the end); raise FileNotFoundError, or IsADirectoryError for what is not an
        object."""

    def begin(
        self, name: str, claim: str | None = None, size_hint: int | None = None, mark: str | None = None
    ) -> Upload:
        """Start writing ``name`` (about ``size_hint`` bytes, if known, marked with the
        backup id ``mark``); raise FileExistsError if it or the claim is taken."""

    def marked(self, name: str) -> str | None:
        """Return the backup id a committed object was marked with, or None (no mark,
        or a storage that keeps none); raise FileNotFoundError if there is no object."""

    def claimed(self, key: str) -> bool:
        """Return whether a writer (live, or dead and not yet cleaned) holds ``key``."""

    def delete(self, name: str) -> None:
        """Remove a committed object; raise FileNotFoundError if there is none."""

    def clean_partials(self) -> list[str]:
        """Remove leftovers of dead writers; return what was removed."""

    def read_record(self, name: str) -> bytes | None:
        """Return an internal record's bytes, or None if there is none."""

    def write_record(self, name: str, data: bytes) -> None:
        """Replace an internal record atomically; raise OSError on failure."""

    def lock(
        self,
        timeout: float = 0.0,
        *,
        sleep: Callable[[float], None] = time.sleep,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> AbstractContextManager[None]:
        """Return a context manager holding the location's lock; it waits up to
        ``timeout`` seconds, then raises LockError naming the holder."""


@dataclass(frozen=True)
class ObjectRef:
    """One object in one storage, with the name to show for it in messages."""

    storage: BackupStorage
    name: str
    label: str

    def exists(self) -> bool:
        """Whether the object is there (False, too, if it cannot be looked at)."""
        try:
            self.storage.stat(self.name)
        except OSError:
            return False
        return True

    def sibling(self, name: str) -> ObjectRef:
        """Return the object ``name`` beside this one, labelled the same way."""
        head = self.label[: len(self.label) - len(self.name)] if self.label.endswith(self.name) else ""
        return ObjectRef(self.storage, name, head + name if head else self.storage.describe(name))

    @property
    def path(self) -> Path | None:
        """The local file, if the storage is local."""
        return self.storage.local_path(self.name)
