"""The records of a backup location: backup ids, what one backup is, and what proves a
file is ours. Pure: nothing here reads or writes; ``backup.listing`` does, using these.

A backup is ``<backup_id><suffix>`` (the archive) plus ``<backup_id>.manifest.json``;
an encrypted one is ``<backup_id><suffix>.age``, ``<backup_id>.manifest.json.age`` and
its plaintext sidecar ``<backup_id>.sidecar.json`` (``backup.manifest.sidecar``).
Ids are ``<prefix>_<YYYYmmdd>_<HHMMSS>`` in UTC, with ``-2``, ``-3`` ... appended when
several backups start in the same second.

A backup location may hold other programs' files too (a database dump script's
``db_20240101_000000.tar.gz``, someone's ``notes.manifest.json``), and what is listed
is what retention deletes. So a file counts as ours only when it proves it:

* a manifest is ours when it parses as our manifest (with our ``format`` tag), its
  ``backup_id`` is its file name minus ``.manifest.json``, and its ``archive.name`` is
  that id plus one of our archive suffixes;
* an archive is ours when its manifest is ours and names it, or, for an archive made
  without a manifest, when its first header carries our mark naming the id its file
  name gives;
* an encrypted backup's three objects are ours when its sidecar parses as ours, its
  ``backup_id`` is its file name minus ``.sidecar.json``, and it names the archive and
  manifest that id gives, plus ``.age``.

The objects of one backup are committed in an order that makes it exist at one moment
(``commit_order``): what proves the others are ours first in a directory, where the
archive linked last is the commit point; the other way round in an object store, where
the last manifest written is.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from .errors import ManifestError
from .manifest.model import MANIFEST_FORMAT, MANIFEST_SUFFIX, BackupManifest
from .manifest.sidecar import ENCRYPTED_SUFFIX, Sidecar
from .storage.base import ObjectRef
from .stream.compression import archive_suffix, split_archive_name

__all__ = [
    "BackupInfo",
    "commit_order",
    "encrypted_archive_name",
    "format_backup_id",
    "oldest_first_key",
    "own_archive_name",
    "own_manifest",
    "own_sidecar",
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


def own_archive_name(name: str) -> tuple[str, str] | None:
    """Given a file name, return ``(backup id, compression)`` if it is spelled the way
    this tool names archives (``.tgz`` and other spellings are other tools')."""
    split = split_archive_name(name)
    if split is None or name != split[0] + archive_suffix(split[1]):
        return None
    return split


def encrypted_archive_name(name: str) -> tuple[str, str] | None:
    """Given a file name, return ``(backup id, compression)`` if it is spelled the way
    this tool names encrypted archives (an archive's name plus ``.age``)."""
    if not name.endswith(ENCRYPTED_SUFFIX):
        return None
    return own_archive_name(name[: -len(ENCRYPTED_SUFFIX)])


def own_sidecar(raw: bytes, backup_id: str) -> tuple[Sidecar | None, str | None]:
    """Given a sidecar file's bytes and the backup id its name gives, return
    ``(sidecar, None)`` if it is ours (see the module docstring), else ``(None, why not)``."""
    try:
        sidecar = Sidecar.from_json(raw)
    except ManifestError as exc:
        return None, str(exc)
    if sidecar.backup_id != backup_id:
        return None, f"it is the sidecar of {sidecar.backup_id!r}"
    split = encrypted_archive_name(sidecar.archive.name)
    if split is None or split[0] != backup_id:
        return None, f"it names the archive {sidecar.archive.name!r}"
    if sidecar.manifest.name != backup_id + MANIFEST_SUFFIX + ENCRYPTED_SUFFIX:
        return None, f"it names the manifest {sidecar.manifest.name!r}"
    return sidecar, None


def commit_order(manifest_commits: bool, archive: str, manifests: Sequence[str]) -> list[str]:
    """Given whether the storage's commit point is a manifest, a backup's archive and its
    manifests (the one that proves the others ours first: the sidecar of an encrypted
    backup), return the order to commit them in; removal goes the other way."""
    if manifest_commits:
        return [archive, *reversed(manifests)]
    return [*manifests, archive]


def own_manifest(raw: bytes, backup_id: str) -> tuple[BackupManifest | None, str | None]:
    """Given a manifest file's bytes and the backup id its name gives, return
    ``(manifest, None)`` if it is ours (see the module docstring), else ``(None, why not)``."""
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
    split = own_archive_name(archive.name)
    if split is None or split[0] != backup_id:
        return None, f"it names the archive {archive.name!r}"
    return manifest, None


@dataclass(frozen=True)
class BackupInfo:
    """One complete backup in a backup location: its archive, and its manifest if any."""

    backup_id: str
    prefix: str | None
    archive: ObjectRef
    manifest: ObjectRef | None
    created_at: datetime | None
    size_bytes: int
    file_count: int | None
    compression: str
    problem: str | None = None
    # The archive's modification time in its storage (POSIX seconds, by its clock).
    stored_at: float | None = None
    # An encrypted backup's plaintext sidecar, and the recipients it was encrypted to.
    sidecar: ObjectRef | None = None
    recipients: tuple[str, ...] = ()

    @property
    def encrypted(self) -> bool:
        """Whether the backup is encrypted (its manifest too)."""
        return self.sidecar is not None

    def objects(self) -> list[ObjectRef]:
        """Return the backup's objects in the order they were committed (see
        ``commit_order``); removing them goes the other way."""
        manifests = [ref for ref in (self.sidecar, self.manifest) if ref is not None]
        by_name = {ref.name: ref for ref in (self.archive, *manifests)}
        order = commit_order(self.archive.storage.manifest_commits, self.archive.name, [r.name for r in manifests])
        return [by_name[name] for name in order]

    @property
    def archive_path(self) -> Path | None:
        """The archive's local file (None in a storage without local files)."""
        return self.archive.path

    @property
    def manifest_path(self) -> Path | None:
        """The manifest's local file, if there is a manifest and it is local."""
        return None if self.manifest is None else self.manifest.path

    def to_dict(self) -> dict[str, object]:
        """Return the fields as JSON-ready data."""
        return {
            "backup_id": self.backup_id,
            "prefix": self.prefix,
            "archive_path": self.archive.label,
            "manifest_path": None if self.manifest is None else self.manifest.label,
            "created_at": None if self.created_at is None else self.created_at.isoformat(),
            "size_bytes": self.size_bytes,
            "file_count": self.file_count,
            "compression": self.compression,
            "encrypted_to": list(self.recipients),
            "sidecar_path": None if self.sidecar is None else self.sidecar.label,
            "problem": self.problem,
        }


def oldest_first_key(backup: BackupInfo) -> tuple[datetime, str, int]:
    """Sort key: oldest first; within one second, claims in sequence order ("-2" before "-10")."""
    parsed = parse_backup_id(backup.backup_id)
    sequence = parsed[2] if parsed else 1
    base = backup.backup_id.removesuffix(f"-{sequence}") if sequence > 1 else backup.backup_id
    return (backup.created_at or datetime.min.replace(tzinfo=UTC), base, sequence)
