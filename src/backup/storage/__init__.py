"""Backup locations: the interface (``base``), the local directory (``local``), its
lock (``lock``) and its durable writes (``durable``).

``open_storage`` turns what a user names (a directory, or a storage already made) into
a ``BackupStorage``; ``locate`` turns an archive's path into the object it is. These
are the only places a location is turned from a name into a storage.
"""

from __future__ import annotations

import os
from pathlib import Path

from .base import BackupStorage, ObjectInfo, ObjectRef, Upload
from .local import LocalStorage
from .lock import LOCK_NAME, backup_dir_lock

__all__ = [
    "LOCK_NAME",
    "BackupStorage",
    "Location",
    "LocalStorage",
    "ObjectInfo",
    "ObjectRef",
    "Upload",
    "backup_dir_lock",
    "locate",
    "open_storage",
]

Location = str | os.PathLike[str] | BackupStorage


def open_storage(location: Location) -> BackupStorage:
    """Given a backup location (a directory, or a storage), return its storage."""
    if isinstance(location, str | os.PathLike):
        return LocalStorage(Path(location))
    return location


def locate(archive: str | os.PathLike[str] | ObjectRef) -> ObjectRef:
    """Given an archive's path (or an object already located), return the object: its
    storage, its name, and the label to show in messages (the path as given)."""
    if isinstance(archive, ObjectRef):
        return archive
    path = Path(archive)
    return ObjectRef(LocalStorage(path.parent), path.name, str(path))
