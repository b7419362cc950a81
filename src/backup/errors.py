"""Every exception the ``backup`` package raises on purpose.

The tree::

    BackupError                     base; ``str(err)`` is one line naming the path
    ├── ConfigError                 bad settings, detected before anything is written
    ├── SourceError                 a source file or directory could not be read
    ├── StorageError                the backup directory could not be written or read
    ├── ArchiveError                an archive is unreadable, truncated or not a tar at all
    │   └── UnsafeArchiveError      a member would write outside the target, or is a device
    ├── ManifestError               a manifest is missing, not JSON, or of an unknown version
    ├── VerificationError           restored or archived bytes disagree with the manifest
    ├── RestoreConflictError        restore would replace existing files without ``overwrite``
    ├── IdentityError               an encrypted backup needs an identity not given, or not read
    └── LockError                   another process holds the backup directory's lock

Each carries the ``path`` it concerns (an archive, a source file, a member name) so
that callers can act on it without parsing the message.
"""

from __future__ import annotations

from pathlib import Path

__all__ = [
    "ArchiveError",
    "BackupError",
    "ConfigError",
    "IdentityError",
    "LockError",
    "ManifestError",
    "RestoreConflictError",
    "SourceError",
    "StorageError",
    "UnsafeArchiveError",
    "VerificationError",
]


class BackupError(Exception):
    """Base class: a one-line message plus the path it concerns (if any)."""

    def __init__(self, message: str, path: str | Path | None = None) -> None:
        super().__init__(message)
        self.path = None if path is None else str(path)


class ConfigError(BackupError):
    """A setting is invalid (unknown compression, bad pattern, bad directory)."""


class SourceError(BackupError):
    """A file or directory under the source could not be read."""


class StorageError(BackupError):
    """The backup directory could not be written, listed or read."""


class ArchiveError(BackupError):
    """An archive could not be read as a tar archive."""


class UnsafeArchiveError(ArchiveError):
    """An archive member would escape the target or is a special file."""


class ManifestError(BackupError):
    """A manifest could not be loaded or does not describe its archive."""


class VerificationError(BackupError):
    """Bytes on disk or in the archive do not match the manifest."""


class RestoreConflictError(BackupError):
    """Restoring would replace existing files and ``overwrite`` was not given."""


class IdentityError(BackupError):
    """An encrypted backup cannot be decrypted: no identity was given, none given is one
    it was encrypted to, or the identity file cannot be read."""


class LockError(BackupError):
    """Another process holds the backup directory's lock and did not let go in time."""

    def __init__(self, message: str, path: str | Path | None = None, holder_pid: int | None = None) -> None:
        super().__init__(message, path)
        self.holder_pid = holder_pid
