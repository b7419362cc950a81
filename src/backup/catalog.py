"""What a backup directory holds: backup ids, complete backups, and leftovers.

A backup is ``<backup_id><suffix>`` (the archive) plus ``<backup_id>.manifest.json``.
Ids are ``<prefix>_<YYYYmmdd>_<HHMMSS>`` in UTC, with ``-2``, ``-3`` ... appended when
several backups start in the same second. The manifest is committed before the
archive, so an archive under its final name is always complete.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from .compression import split_archive_name
from .errors import ManifestError
from .manifest import MANIFEST_SUFFIX, load_manifest
from .storage import PARTIAL_SUFFIX, LocalStorage

__all__ = [
    "BackupInfo",
    "clean_leftovers",
    "format_backup_id",
    "list_backups",
    "manifest_path_for",
    "parse_backup_id",
]

_ID = re.compile(r"^(?P<prefix>.+)_(?P<stamp>\d{8}_\d{6})(?:-(?P<seq>\d+))?$")


def format_backup_id(prefix: str, moment: datetime, sequence: int = 1) -> str:
    """Given a prefix and an aware moment, return the backup id (``-N`` added for N > 1)."""
    stamp = moment.astimezone(UTC).strftime("%Y%m%d_%H%M%S")
    return f"{prefix}_{stamp}" if sequence == 1 else f"{prefix}_{stamp}-{sequence}"


def parse_backup_id(backup_id: str) -> tuple[str, datetime, int] | None:
    """Given a backup id, return ``(prefix, UTC time, sequence)``, or None if it is not one."""
    match = _ID.fullmatch(backup_id)
    if not match:
        return None
    try:
        moment = datetime.strptime(match["stamp"], "%Y%m%d_%H%M%S").replace(tzinfo=UTC)
    except ValueError:
        return None
    return match["prefix"], moment, int(match["seq"] or 1)


def manifest_path_for(archive_path: Path) -> Path:
    """Given an archive path, return where its sidecar manifest lives."""
    archive_path = Path(archive_path)
    split = split_archive_name(archive_path.name)
    stem = split[0] if split else archive_path.name
    return archive_path.with_name(stem + MANIFEST_SUFFIX)


@dataclass(frozen=True)
class BackupInfo:
    """One complete backup in a backup directory."""

    backup_id: str
    prefix: str | None
    archive_path: Path
    manifest_path: Path | None
    created_at: datetime | None
    size_bytes: int
    file_count: int | None
    compression: str
    problem: str | None = None

    def to_dict(self) -> dict[str, object]:
        """Return the fields as JSON-ready data."""
        return {
            "backup_id": self.backup_id,
            "prefix": self.prefix,
            "archive_path": str(self.archive_path),
            "manifest_path": None if self.manifest_path is None else str(self.manifest_path),
            "created_at": None if self.created_at is None else self.created_at.isoformat(),
            "size_bytes": self.size_bytes,
            "file_count": self.file_count,
            "compression": self.compression,
            "problem": self.problem,
        }


def list_backups(backup_dir: Path, prefix: str | None = None) -> list[BackupInfo]:
    """Given a backup directory, return its complete backups, oldest first.

    Creation times come from each manifest, or from the id when there is none; never
    from file times. An archive is listed if its name is a backup id or it has a
    manifest. Raise StorageError if the directory cannot be listed.
    """
    storage = LocalStorage(backup_dir)
    names = storage.names()
    present = set(names)
    backups = []
    for name in names:
        split = split_archive_name(name)
        if split is None:
            continue
        backup_id, compression = split
        parsed = parse_backup_id(backup_id)
        if prefix is not None and (parsed is None or parsed[0] != prefix):
            continue
        manifest_name = backup_id + MANIFEST_SUFFIX
        if parsed is None and manifest_name not in present:
            continue
        backups.append(_describe(storage.path(name), backup_id, compression, parsed, manifest_name in present))
    return sorted(backups, key=_oldest_first_key)


def _oldest_first_key(backup: BackupInfo) -> tuple[datetime, str, int]:
    # Within one second the claims come in sequence order: "-2" before "-10".
    parsed = parse_backup_id(backup.backup_id)
    sequence = parsed[2] if parsed else 1
    base = backup.backup_id.removesuffix(f"-{sequence}") if sequence > 1 else backup.backup_id
    return (backup.created_at or datetime.min.replace(tzinfo=UTC), base, sequence)


def _describe(
    archive: Path,
    backup_id: str,
    compression: str,
    parsed: tuple[str, datetime, int] | None,
    has_manifest: bool,
) -> BackupInfo:
    created_at = parsed[1] if parsed else None
    file_count = None
    problem = None
    manifest_path = manifest_path_for(archive) if has_manifest else None
    if manifest_path is not None:
        try:
            manifest = load_manifest(manifest_path)
        except ManifestError as exc:
            problem = str(exc)
        else:
            file_count = manifest.file_count
            try:
                created_at = datetime.fromisoformat(manifest.created_at)
            except ValueError:
                problem = f"{manifest_path}: created_at {manifest.created_at!r} is not ISO 8601"
            if created_at is not None and created_at.tzinfo is None:
                created_at = created_at.astimezone()  # seed-era manifests wrote local naive times
    try:
        size = archive.stat().st_size
    except OSError:
        size = 0
    return BackupInfo(
        backup_id=backup_id,
        prefix=parsed[0] if parsed else None,
        archive_path=archive,
        manifest_path=manifest_path,
        created_at=created_at,
        size_bytes=size,
        file_count=file_count,
        compression=compression,
        problem=problem,
    )


def clean_leftovers(backup_dir: Path) -> list[str]:
    """Given a backup directory, remove what interrupted runs left there; return the names.

    Removes partial files of dead writers and manifests whose archive never landed.
    Leaves alone everything a live writer is still working on.
    """
    storage = LocalStorage(backup_dir)
    removed = storage.clean_partials()
    names = storage.names()
    archived = _archive_ids(names)
    for name in names:
        backup_id = name[: -len(MANIFEST_SUFFIX)]
        if not name.endswith(MANIFEST_SUFFIX) or backup_id in archived:
            continue
        # A writer drops its partial only after its archive has landed, so look for the
        # partial first and for the archive again after it.
        if os.path.lexists(storage.path(f".{backup_id}{PARTIAL_SUFFIX}")):
            continue
        if backup_id in _archive_ids(storage.names()):
            continue
        try:
            storage.delete(name)
            removed.append(name)
        except FileNotFoundError:
            pass
    return removed


def _archive_ids(names: list[str]) -> set[str]:
    return {split[0] for split in map(split_archive_name, names) if split is not None}
