"""What a backup directory holds: backup ids, complete backups, and leftovers.

A backup is ``<backup_id><suffix>`` (the archive) plus ``<backup_id>.manifest.json``.
Ids are ``<prefix>_<YYYYmmdd>_<HHMMSS>`` in UTC, with ``-2``, ``-3`` ... appended when
several backups start in the same second. The manifest is committed before the
archive, so an archive under its final name is always complete.

A backup directory may hold other programs' files too (a database dump script's
``db_20240101_000000.tar.gz``, someone's ``notes.manifest.json``), and what is listed
here is what retention deletes. So a file counts as ours only when it proves it:

* a manifest is ours when it parses as our manifest (with our ``format`` tag), its
  ``backup_id`` is its file name minus ``.manifest.json``, and its ``archive.name`` is
  that id plus one of our archive suffixes;
* an archive is ours when its manifest is ours and names it, or, for an archive made
  without a manifest, when its first header carries our mark naming the id its file
  name gives (see ``tarreader.read_archive_marker``).

Only regular files count: a symlink or a directory under a backup's name is never ours.
"""

from __future__ import annotations

import json
import os
import re
import stat
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from .compression import archive_suffix, split_archive_name
from .errors import ManifestError
from .manifest import MANIFEST_FORMAT, MANIFEST_SUFFIX, BackupManifest
from .storage import PARTIAL_SUFFIX, LocalStorage
from .tarreader import read_archive_marker

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
    """Given a backup directory, return the complete backups this tool provably wrote,
    oldest first.

    An archive is listed only if it is ours (see the module docstring): its manifest is
    ours and names it, or, without such a manifest, its mark names its id. Anything
    else, however much its name looks like a backup's, is not listed. Creation times
    come from the manifest, or from the id when there is none; never from file times.
    Raise StorageError if the directory cannot be listed.
    """
    storage = LocalStorage(backup_dir)
    names = storage.names()
    present = set(names)
    backups = []
    for name in names:
        split = _split_own_archive_name(name)
        if split is None:
            continue
        backup_id, compression = split
        parsed = parse_backup_id(backup_id)
        if prefix is not None and (parsed is None or parsed[0] != prefix):
            continue
        archive = storage.path(name)
        if not _is_regular_file(archive):
            continue
        manifest_name = backup_id + MANIFEST_SUFFIX
        manifest, why_not = None, None
        if manifest_name in present:
            manifest, why_not = _read_own_manifest(storage.path(manifest_name), backup_id)
        if manifest is not None and manifest.archive is not None and manifest.archive.name == name:
            backups.append(_describe(archive, backup_id, compression, parsed, manifest))
        elif read_archive_marker(archive) == backup_id:
            problem = None
            if manifest_name in present:
                # Not removed with the archive either: nothing proves it is ours.
                problem = f"{storage.path(manifest_name)}: not this backup's manifest ({why_not or 'it names another archive'})"
            backups.append(_describe(archive, backup_id, compression, parsed, None, problem))
    return sorted(backups, key=_oldest_first_key)


def _read_own_manifest(path: Path, backup_id: str) -> tuple[BackupManifest | None, str | None]:
    """Given a manifest file and the backup id its name gives, return ``(manifest, None)``
    if it is ours (see the module docstring), else ``(None, why not)``. Never raises.

    The file is read without following a symlink, and only if it is a regular file.
    """
    try:
        # O_NONBLOCK so that a FIFO under a manifest's name cannot hang the listing.
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        return None, f"cannot read it: {exc.strerror or exc}"
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None, "not a regular file"
        with os.fdopen(fd, "rb", closefd=False) as handle:
            raw = handle.read()
    except OSError as exc:
        return None, f"cannot read it: {exc.strerror or exc}"
    finally:
        os.close(fd)
    try:
        data = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return None, "not valid JSON"
    if not isinstance(data, dict) or data.get("format") != MANIFEST_FORMAT:
        return None, f'no "format": "{MANIFEST_FORMAT}"'
    try:
        manifest = BackupManifest.from_dict(data)
    except ManifestError as exc:
        return None, str(exc)
    if manifest.backup_id != backup_id:
        return None, f"it is the manifest of {manifest.backup_id!r}"
    archive = manifest.archive
    if archive is None:
        return None, "it names no archive"
    split = _split_own_archive_name(archive.name)
    if split is None or split[0] != backup_id:
        return None, f"it names the archive {archive.name!r}"
    return manifest, None


def _split_own_archive_name(name: str) -> tuple[str, str] | None:
    """Given a file name, return ``(stem, compression)`` if it is spelled the way this
    tool names archives (``.tgz`` and other spellings are other tools')."""
    split = split_archive_name(name)
    if split is None or name != split[0] + archive_suffix(split[1]):
        return None
    return split


def _is_regular_file(path: Path) -> bool:
    try:
        return stat.S_ISREG(os.lstat(path).st_mode)
    except OSError:
        return False


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
    manifest: BackupManifest | None,
    problem: str | None = None,
) -> BackupInfo:
    created_at = parsed[1] if parsed else None
    file_count = None
    manifest_path = manifest_path_for(archive) if manifest is not None else None
    if manifest is not None:
        file_count = manifest.file_count
        try:
            created_at = datetime.fromisoformat(manifest.created_at)
        except ValueError:
            problem = f"{manifest_path}: created_at {manifest.created_at!r} is not ISO 8601"
        if created_at is not None and created_at.tzinfo is None:
            created_at = created_at.astimezone()  # seed-era manifests wrote local naive times
    try:
        size = archive.lstat().st_size
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
    """Given a backup directory, remove what interrupted runs of this tool left there;
    return the names.

    Removes partial files of our own making whose writers are dead, and manifests of
    ours (see the module docstring) whose archive never landed. Leaves alone everything
    a live writer is still working on, and everything it cannot prove is ours.
    """
    storage = LocalStorage(backup_dir)
    removed = storage.clean_partials()
    names = storage.names()
    archived = _archive_ids(names)
    for name in names:
        backup_id = name[: -len(MANIFEST_SUFFIX)]
        # Only manifests with no archive of their id at all are read: every other one is
        # kept without a look, however large it is.
        if not name.endswith(MANIFEST_SUFFIX) or backup_id in archived:
            continue
        manifest, _ = _read_own_manifest(storage.path(name), backup_id)
        if manifest is None or manifest.archive is None:
            continue
        archive_name = manifest.archive.name
        if os.path.lexists(storage.path(archive_name)):
            continue
        # A writer drops its partial only after its archive has landed, so look for the
        # partial first and for the archive again after it.
        if any(os.path.lexists(storage.path(f".{key}{PARTIAL_SUFFIX}")) for key in (backup_id, archive_name)):
            continue
        if os.path.lexists(storage.path(archive_name)):
            continue
        try:
            storage.delete(name)
            removed.append(name)
        except FileNotFoundError:
            pass
    return removed


def _archive_ids(names: list[str]) -> set[str]:
    return {split[0] for split in map(split_archive_name, names) if split is not None}
