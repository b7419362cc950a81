"""An in-memory BackupStorage, held to the same contract as LocalStorage by test_storage.py.

A writer holds a key (its claim, or else its object's name) from ``begin`` until it
commits or aborts. A writer that goes away without either (its stream closed, or the
pending object garbage-collected) is "dead": like a dead process's partial file, its
key stays taken until ``clean_partials`` removes it.
"""

from __future__ import annotations

import io
import weakref
from typing import BinaryIO

from backup.errors import StorageError
from backup.storage import PARTIAL_SUFFIX

__all__ = ["MemoryStorage"]


class _MemoryPending:
    """An object being written into a MemoryStorage."""

    def __init__(self, storage: MemoryStorage, name: str, key: str) -> None:
        self.name = name
        self.stream: BinaryIO = io.BytesIO()
        self._storage = storage
        self._key = key
        self._done = False

    @property
    def alive(self) -> bool:
        """Whether this writer may still commit: not finished and its stream still open."""
        return not self._done and not self.stream.closed

    def commit(self) -> None:
        if self._done:
            raise StorageError(f"{self.name}: already committed or aborted")
        if self.stream.closed:
            raise StorageError(f"{self.name}: the writer's stream was closed before commit")
        data = self.stream.getvalue()  # type: ignore[attr-defined]
        try:
            if self.name in self._storage._objects:
                raise FileExistsError(f"{self.name}: already exists")
            self._storage._objects[self.name] = data
        except BaseException:
            self.abort()
            raise
        self._finish()

    def abort(self) -> None:
        if self._done:
            return
        self._finish()

    def _finish(self) -> None:
        self._done = True
        self._storage._writers.pop(self._key, None)
        self.stream.close()


class MemoryStorage:
    """Committed objects in a dict; writers' keys in another, so claims work as on disk."""

    def __init__(self) -> None:
        self._objects: dict[str, bytes] = {}
        self._writers: dict[str, weakref.ref[_MemoryPending]] = {}

    def begin(self, name: str, claim: str | None = None) -> _MemoryPending:
        if "/" in name or name.startswith("."):
            raise StorageError(f"{name!r}: object names may not contain '/' or start with '.'")
        key = claim or name
        if key in self._writers:
            raise FileExistsError(f"{key}: claimed by another writer")
        if name in self._objects or (
            claim is not None and any(other.startswith(claim + ".") for other in self._objects)
        ):
            raise FileExistsError(f"{name}: already exists")
        pending = _MemoryPending(self, name, key)
        self._writers[key] = weakref.ref(pending)
        return pending

    def names(self) -> list[str]:
        return sorted(self._objects)

    def delete(self, name: str) -> None:
        try:
            del self._objects[name]
        except KeyError:
            raise FileNotFoundError(name) from None

    def clean_partials(self) -> list[str]:
        dead = [key for key, ref in self._writers.items() if (writer := ref()) is None or not writer.alive]
        for key in dead:
            del self._writers[key]
        return sorted(f".{key}{PARTIAL_SUFFIX}" for key in dead)

    def read(self, name: str) -> bytes:
        """Return a committed object's bytes (test helper; not part of the protocol)."""
        return self._objects[name]
