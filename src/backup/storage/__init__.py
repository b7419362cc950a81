"""Backup locations: the interface (``base``), the local directory (``local``), its
lock (``lock``) and its durable writes (``durable``), and S3-compatible object storage
(``s3``).

``open_storage`` turns what a user names (a directory, an ``s3://bucket/prefix`` URL,
or a storage already made) into a ``BackupStorage``; ``locate`` turns an archive's path
or URL into the object it is. These are the only places a location is turned from a
name into a storage.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

from ..locations import S3Location, as_location, is_url, parse_location, with_endpoint
from .base import BackupStorage, ObjectInfo, ObjectRef, Upload
from .local import LocalStorage
from .lock import LOCK_NAME, backup_dir_lock
from .s3 import S3Storage

__all__ = [
    "LOCK_NAME",
    "BackupStorage",
    "Location",
    "LocalStorage",
    "ObjectInfo",
    "ObjectRef",
    "S3Location",
    "S3Storage",
    "Upload",
    "as_location",
    "backup_dir_lock",
    "is_url",
    "locate",
    "open_storage",
    "parse_location",
    "where",
    "with_endpoint",
]

Location = str | os.PathLike[str] | S3Location | BackupStorage

# One storage per object-store location in a process: one client (its connections),
# one check of the store's conditional writes, and one idea of whether its lock is held.
_remote: dict[S3Location, S3Storage] = {}
_remote_guard = threading.Lock()


def open_storage(location: Location) -> BackupStorage:
    """Given a backup location (a directory, an ``s3://`` URL or location, or a
    storage), return its storage. Raise ConfigError for a URL that is not valid."""
    if isinstance(location, str) and is_url(location):
        location = parse_location(location)
    if isinstance(location, S3Location):
        with _remote_guard:
            storage = _remote.get(location)
            if storage is None:
                storage = _remote[location] = S3Storage(location)
            return storage
    if isinstance(location, str | os.PathLike):
        return LocalStorage(Path(location))
    return location


def locate(archive: str | os.PathLike[str] | ObjectRef, endpoint_url: str | None = None) -> ObjectRef:
    """Given an archive's path or URL (or an object already located), return the object:
    its storage, its name, and the label to show in messages (the path as given)."""
    if isinstance(archive, ObjectRef):
        return archive
    if isinstance(archive, str) and is_url(archive):
        url, _, query = archive.partition("?")
        scheme, _, rest = url.partition("://")
        bucket_and_prefix, _, name = rest.rpartition("/")
        if not bucket_and_prefix or not name:
            raise FileNotFoundError(2, "names a bucket or prefix, not an object", url)
        parent = parse_location(f"{scheme}://{bucket_and_prefix}" + (f"?{query}" if query else ""), endpoint_url)
        storage = open_storage(parent)
        return ObjectRef(storage, name, storage.describe(name))
    path = Path(archive)
    return ObjectRef(LocalStorage(path.parent), path.name, str(path))


def where(location: Location) -> str:
    """Given a backup location, return it for messages: a URL, or an absolute path."""
    if isinstance(location, S3Location):
        return str(location)
    if isinstance(location, str | os.PathLike):
        return str(location) if is_url(location) else str(Path(location).absolute())
    return location.location
