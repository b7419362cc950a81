"""Copying complete backups from one location to another (a directory, an object store).

Only complete backups of ours are copied (``backup.listing``), and only those the
destination lacks: a backup id the destination already holds is never written again.
Each archive streams from the source to the destination while its size and checksum
are computed, and is committed only if both match what its manifest records; the
manifest is copied byte for byte. An encrypted backup is copied as ciphertext, checked
against its sidecar, and needs no identity. Archive and manifest are committed in the order
that makes the copy exist at one moment (``backup.create.commit_backup``), so a copy
that fails or is killed leaves nothing that is listed as a backup.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Callable
from dataclasses import dataclass, field

from .catalog import BackupInfo, own_manifest
from .create import commit_backup
from .errors import BackupError
from .hashing import DEFAULT_ALGORITHM, new_hasher
from .listing import list_backups
from .manifest.files import read_sidecar_bytes
from .manifest.model import MANIFEST_SUFFIX, ArchiveInfo
from .manifest.sidecar import Sidecar
from .progress import ProgressCallback
from .storage import Location, open_storage
from .storage.base import BackupStorage, ObjectRef, Upload

__all__ = ["CopyResult", "copy_backups"]

log = logging.getLogger(__name__)

_CHUNK = 1 << 20
_MAX_MANIFEST_BYTES = 1 << 30


@dataclass
class CopyResult:
    """What a copy did: the backups copied, those the destination had already, and
    one line per backup that could not be copied."""

    source: str
    dest: str
    copied: list[str] = field(default_factory=list)
    present: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    bytes_copied: int = 0

    @property
    def success(self) -> bool:
        return not self.errors

    def to_dict(self) -> dict[str, object]:
        """Return the result as JSON-ready data."""
        return {
            "success": self.success,
            "source": self.source,
            "dest": self.dest,
            "copied": self.copied,
            "already_present": self.present,
            "bytes_copied": self.bytes_copied,
            "errors": self.errors,
        }


def copy_backups(
    source: Location,
    dest: Location,
    prefix: str | None = None,
    *,
    progress: ProgressCallback | None = None,
) -> CopyResult:
    """Given two backup locations, copy the complete backups ``dest`` lacks (only those
    with ``prefix``, if given), oldest first; return what was done.

    The caller holds the destination's lock. Raise StorageError if either location
    cannot be listed; a backup that cannot be copied is one line in ``errors``, and the
    others are still copied.
    """
    src = open_storage(source)
    dst = open_storage(dest)
    result = CopyResult(src.location, dst.location)
    dst.ensure()
    present = {backup.backup_id for backup in list_backups(dst)}
    taken = {info.name for info in dst.list_objects()}
    for backup in list_backups(src, prefix=prefix):
        if backup.backup_id in present:
            result.present.append(backup.backup_id)
            continue
        if any(ref.name in taken for ref in backup.objects()) or backup.backup_id + MANIFEST_SUFFIX in taken:
            result.errors.append(
                f"{dst.describe(backup.archive.name)}: the destination has part of {backup.backup_id} "
                "but not a complete backup; left alone (run check, or prune, there)"
            )
            continue
        try:
            result.bytes_copied += _copy_one(backup, dst, progress, len(result.copied), result.bytes_copied)
        except (BackupError, OSError) as exc:
            message = (
                str(exc) if isinstance(exc, BackupError) else f"{exc.filename or dst.location}: {exc.strerror or exc}"
            )
            result.errors.append(f"{backup.backup_id}: not copied: {message}")
            continue
        result.copied.append(backup.backup_id)
        log.info("copied %s to %s", backup.backup_id, dst.location)
    return result


def _copy_one(backup: BackupInfo, dst: BackupStorage, progress: ProgressCallback | None, done: int, before: int) -> int:
    """Copy one backup; return the archive's size. ``progress`` is told the backups
    ``done`` and the bytes copied (``before`` this one, plus its own). Raise
    BackupError or OSError."""
    raw = None
    expected: ArchiveInfo | None = None
    algorithm = DEFAULT_ALGORITHM
    sealed: tuple[bytes, Sidecar] | None = None
    if backup.sidecar is not None:
        if backup.manifest is None:
            raise BackupError(f"{backup.problem or backup.archive.label}; not copied", backup.archive.label)
        sidecar, raw_sidecar = read_sidecar_bytes(backup.sidecar)
        sealed = raw_sidecar, sidecar
        expected, algorithm = sidecar.archive, sidecar.checksum_algorithm
    elif backup.manifest is not None:
        with backup.manifest.storage.open_read(backup.manifest.name) as handle:
            raw = handle.read(_MAX_MANIFEST_BYTES + 1)
        manifest, why_not = own_manifest(raw, backup.backup_id)
        if manifest is None or manifest.archive is None:
            raise BackupError(f"{backup.manifest.label}: {why_not or 'names no archive'}", backup.manifest.label)
        expected = manifest.archive
        algorithm = manifest.checksum_algorithm
    elif dst.manifest_commits:
        raise BackupError(
            f"{backup.archive.label}: has no manifest, and in object storage every backup needs one",
            backup.archive.label,
        )
    mark = backup.backup_id
    uploads: list[Upload] = []
    try:
        archive = dst.begin(backup.archive.name, claim=backup.backup_id, size_hint=backup.size_bytes, mark=mark)
        uploads.append(archive)

        def report(size: int) -> None:
            if progress is not None:
                progress(done, before + size)

        size = _stream(backup.archive, archive, expected, algorithm, report)
        manifests: list[Upload] = []
        if sealed is not None and backup.sidecar is not None and backup.manifest is not None:
            raw_sidecar, sidecar = sealed
            manifests.append(dst.begin(backup.sidecar.name, mark=mark))
            uploads.append(manifests[-1])
            manifests[-1].write(raw_sidecar)
            manifests.append(dst.begin(backup.manifest.name, mark=mark))
            uploads.append(manifests[-1])
            encrypted = ArchiveInfo(sidecar.manifest.name, sidecar.manifest.size, sidecar.manifest.checksum, "")
            _stream(backup.manifest, manifests[-1], encrypted, algorithm, None)
        elif raw is not None:
            manifests.append(dst.begin(backup.backup_id + MANIFEST_SUFFIX, mark=mark))
            uploads.append(manifests[-1])
            manifests[-1].write(raw)
        commit_backup(dst, archive, manifests)
    finally:
        for pending in reversed(uploads):
            pending.abort()
    return size


def _stream(
    source: ObjectRef,
    upload: Upload,
    expected: ArchiveInfo | None,
    algorithm: str,
    report: Callable[[int], None] | None,
) -> int:
    """Copy one object into ``upload``, checking its size and checksum against
    ``expected`` (if known); return its size. Raise BackupError if they differ."""
    hasher = new_hasher(algorithm)
    size = 0
    with source.storage.open_read(source.name) as handle:
        while chunk := handle.read(_CHUNK):
            hasher.update(chunk)
            upload.write(chunk)
            size += len(chunk)
            if report is not None:
                report(size)
    if expected is not None:
        digest = hasher.hexdigest()
        if size != expected.size or not hmac.compare_digest(digest, expected.checksum.lower()):
            raise BackupError(
                f"{source.label}: read {size} bytes with checksum {digest}, but the backup records "
                f"{expected.size} bytes with {expected.checksum}; the source copy is damaged",
                source.label,
            )
    return size
