"""Where backups are kept: a small interface and its local-directory implementation.

The contract every storage keeps (``tests/unit/backup/test_storage.py`` runs the same
suite against each implementation):

* ``begin(name, claim=...)`` starts writing a new object. Nothing under ``name`` is
  visible to ``names()`` until ``commit()``; ``abort()`` (or the writer's death) leaves
  no object behind. A ``claim`` is a key at most one writer may hold, and which is
  refused while any committed object's name starts with ``claim + "."``: this is how
  two backups started in the same second get different ids.
* ``commit()`` makes the object durable, then visible under its name in one step; it
  never replaces an existing object (FileExistsError).
* ``names()`` lists committed objects only; ``delete(name)`` removes one.
* ``clean_partials()`` removes what writers that died mid-write left behind, and
  nothing a live writer still holds.
"""

from __future__ import annotations

import fcntl
import os
import re
import stat
from pathlib import Path
from typing import BinaryIO, Protocol

from .durable import PRIVATE_MODE, fsync_directory, link_no_replace, make_private_dir
from .errors import StorageError

__all__ = ["BackupStorage", "LocalStorage", "PendingObject", "PARTIAL_SUFFIX"]

PARTIAL_SUFFIX = ".partial"
# Only the temporary names this tool makes, so that another program's ".download.partial"
# is never taken for a dead writer's: ".<id>.partial" (an archive claimed by its backup
# id), ".<id><archive suffix>.partial" and ".<id>.manifest.json.partial" (objects begun
# under their own name), and durable.atomic_write_bytes's ".<name>.<pid>.partial" for a
# manifest or the state file. <id> is catalog.format_backup_id's, with a prefix as
# config.BackupConfig allows it; the suffixes are compression.COMPRESSIONS's.
_PARTIAL = re.compile(
    r"""^\.(?:
        [A-Za-z0-9][A-Za-z0-9_.-]*_\d{8}_\d{6}(?:-\d+)?
        (?:\.tar(?:\.gz|\.bz2|\.xz|\.zst)?|\.manifest\.json(?:\.\d+)?)?
      | \.obs-backup-state\.json\.\d+
    )\.partial$""",
    re.VERBOSE,
)


class PendingObject(Protocol):
    """An object being written: a stream plus the decision to keep it or not."""

    name: str
    stream: BinaryIO

    def commit(self) -> None:
        """Make the object durable and visible under its name."""

    def abort(self) -> None:
        """Discard everything written; safe to call after commit (then it does nothing)."""


class BackupStorage(Protocol):
    """A place to keep archives and manifests."""

    def begin(self, name: str, claim: str | None = None) -> PendingObject:
        """Start writing ``name``; raise FileExistsError if it or the claim is taken."""

    def names(self) -> list[str]:
        """Return the names of committed objects, sorted."""

    def delete(self, name: str) -> None:
        """Remove a committed object; raise FileNotFoundError if there is none."""

    def clean_partials(self) -> list[str]:
        """Remove leftovers of dead writers; return what was removed."""


class _LocalPending:
    def __init__(self, directory: Path, name: str, temp: Path, handle: BinaryIO) -> None:
        self.name = name
        self.stream = handle
        self._directory = directory
        self._temp = temp
        self._done = False

    def commit(self) -> None:
        if self._done:
            raise StorageError(f"{self._directory / self.name}: already committed or aborted")
        handle = self.stream
        try:
            handle.flush()
            os.fsync(handle.fileno())
            # Renamed while the lock is still held, so a cleaner never sees it unlocked.
            link_no_replace(self._temp, self._directory / self.name)
            fsync_directory(self._directory)
        except BaseException:
            self.abort()
            raise
        self._done = True
        handle.close()

    def abort(self) -> None:
        if self._done:
            return
        self._done = True
        try:
            self._temp.unlink()
        except FileNotFoundError:
            pass
        finally:
            self.stream.close()


class LocalStorage:
    """Backups kept as files in one local directory.

    A writer's temporary file is ``.<claim or name>.partial``, created mode 0600 and
    held under ``flock`` while it is written, which is how ``clean_partials`` tells a
    dead writer's leftovers from a live one's work.
    """

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)

    def ensure(self) -> None:
        """Create the directory if needed; raise StorageError if it cannot be."""
        try:
            make_private_dir(self.directory)
        except OSError as exc:
            raise StorageError(
                f"{self.directory}: cannot create backup directory: {exc.strerror or exc}", self.directory
            ) from exc
        if not self.directory.is_dir():
            raise StorageError(f"{self.directory}: backup directory is not a directory", self.directory)

    def path(self, name: str) -> Path:
        """Return the local path of an object."""
        return self.directory / name

    def _check_name(self, name: str) -> None:
        if not name or "/" in name or "\x00" in name or name.startswith("."):
            raise StorageError(f"{name!r}: object names may not be empty, contain '/' or start with '.'")

    def begin(self, name: str, claim: str | None = None) -> _LocalPending:
        self._check_name(name)
        if claim is not None:
            self._check_name(claim)
        key = claim or name
        temp = self.directory / f".{key}{PARTIAL_SUFFIX}"
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW, PRIVATE_MODE)
        handle = os.fdopen(fd, "wb", buffering=0)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            os.fchmod(fd, PRIVATE_MODE)
            taken = os.path.lexists(self.directory / name) or (
                claim is not None and any(other.startswith(claim + ".") for other in self.names())
            )
            if taken:
                raise FileExistsError(f"{self.directory / name}: already exists")
        except BaseException:
            os.unlink(temp)
            handle.close()
            raise
        return _LocalPending(self.directory, name, temp, handle)

    def names(self) -> list[str]:
        try:
            return sorted(name for name in os.listdir(self.directory) if not name.startswith("."))
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise StorageError(
                f"{self.directory}: cannot list backup directory: {exc.strerror or exc}", self.directory
            ) from exc

    def delete(self, name: str) -> None:
        self._check_name(name)
        os.unlink(self.directory / name)

    def clean_partials(self) -> list[str]:
        removed = []
        try:
            candidates = [name for name in os.listdir(self.directory) if _PARTIAL.match(name)]
        except FileNotFoundError:
            return []
        for name in candidates:
            path = self.directory / name
            try:
                # O_NONBLOCK: a FIFO under such a name must not hang the clean-up.
                fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK)
            except OSError:
                continue
            try:
                if not stat.S_ISREG(os.fstat(fd).st_mode):
                    continue  # writers leave regular files; anything else is not theirs
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    continue  # a live writer holds it
                try:
                    os.unlink(path)
                    removed.append(name)
                except FileNotFoundError:
                    pass
            finally:
                os.close(fd)
        return removed
