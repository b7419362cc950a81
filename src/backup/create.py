"""Executing a backup plan: write the archive, then the manifest, then make both visible.

Order of events, and why:

1. Leftovers of interrupted runs are removed.
2. The backup id is claimed: the archive's temporary file ``.<id>.partial`` is created
   exclusively, so two runs in the same second get ``<id>`` and ``<id>-2``.
3. Entries stream through the compressor into that file; each file is read once.
4. The archive is fsynced; the manifest (which records the archive's size and
   checksum) is written and committed under its final name.
5. The archive is committed under its final name. This is the moment the backup
   exists: an archive under its final name is always complete, and a manifest
   without its archive is a leftover that the next run removes.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, cast

from .catalog import clean_leftovers, format_backup_id
from .compression import archive_suffix, open_compressor
from .config import BackupResult
from .durable import write_all
from .errors import BackupError, StorageError
from .manifest import MANIFEST_SUFFIX, ArchiveInfo, BackupManifest, encode_json_text
from .storage import LocalStorage, PendingObject
from .tarwriter import HashingSink, ProgressCallback, write_entries

if TYPE_CHECKING:
    from .plan import BackupPlan

__all__ = ["execute_backup"]

_MAX_SAME_SECOND = 1000


def execute_backup(plan: BackupPlan, progress: ProgressCallback | None = None) -> BackupResult:
    """Given a backup plan, write the backup; return the result (never raises for bad input).

    On failure nothing that looks like a backup is left behind.
    """
    started = time.monotonic()
    config = plan.config
    storage = LocalStorage(config.backup_dir)
    archive: PendingObject | None = None
    manifest_pending: PendingObject | None = None
    manifest_committed: Path | None = None
    backup_id = plan.backup_id
    try:
        storage.ensure()
        clean_leftovers(config.backup_dir)
        backup_id, archive = _claim(storage, plan)
        archive_name = backup_id + archive_suffix(config.compression)
        sink = HashingSink(archive.stream, config.checksum_algorithm)
        compressor = open_compressor(
            cast(BinaryIO, sink), config.compression, config.compression_level or 0, size_hint=plan.total_bytes
        )
        outcome = write_entries(
            compressor,
            plan.entries,
            root=str(Path(config.source_dir).absolute()),
            algorithm=config.checksum_algorithm,
            on_read_error=config.on_read_error,
            progress=progress,
            backup_id=backup_id,
        )
        compressor.close()  # finishes the compressed stream; the sink's close leaves the file open
        manifest = BackupManifest(
            backup_id=backup_id,
            created_at=plan.created_at.isoformat(),
            source_dir=str(Path(config.source_dir).absolute()),
            files=outcome.entries,
            metadata=dict(plan.metadata),
            checksum_algorithm=config.checksum_algorithm,
            archive=ArchiveInfo(archive_name, sink.size, sink.hasher.hexdigest(), config.compression),
            warnings=list(plan.problems) + outcome.warnings,
        )
        manifest_path = None
        if config.include_manifest:
            manifest_pending = storage.begin(backup_id + MANIFEST_SUFFIX)
            _write_manifest(manifest_pending.stream, manifest)
            manifest_pending.commit()
            manifest_path = manifest_committed = storage.path(manifest_pending.name)
        archive.commit()
    except BackupError as exc:
        return _failed(started, str(exc), backup_id)
    except OSError as exc:
        where = exc.filename or config.backup_dir
        return _failed(started, f"{where}: cannot write backup: {exc.strerror or exc}", backup_id)
    except Exception as exc:  # a bug: still a failed result (and no backup), never an exception
        return _failed(
            started, f"{config.backup_dir}: backup failed: internal error: {type(exc).__name__}: {exc}", backup_id
        )
    finally:
        for pending in (manifest_pending, archive):
            if pending is not None:
                pending.abort()
        if archive is not None and manifest_committed is not None and not storage.path(archive.name).exists():
            manifest_committed.unlink(missing_ok=True)
    return BackupResult(
        success=True,
        backup_path=storage.path(archive.name),
        manifest_path=manifest_path,
        manifest=manifest,
        duration_seconds=time.monotonic() - started,
        warnings=list(manifest.warnings),
        backup_id=backup_id,
        archive_size=sink.size,
        entry_count=len(outcome.entries),
        changed_files=list(outcome.changed),
    )


def _write_manifest(stream: BinaryIO, manifest: BackupManifest) -> None:
    """Write the manifest's JSON in batches of about 1 MiB (flat memory for huge trees)."""
    pending: list[str] = []
    size = 0
    for piece in manifest.iter_json():
        pending.append(piece)
        size += len(piece)
        if size >= 1 << 20:
            write_all(stream, encode_json_text("".join(pending)))
            pending, size = [], 0
    write_all(stream, encode_json_text("".join(pending)))


def _claim(storage: LocalStorage, plan: BackupPlan) -> tuple[str, PendingObject]:
    """Claim the first free id for this second: ``<id>``, ``<id>-2``, ``<id>-3`` ..."""
    suffix = archive_suffix(plan.config.compression)
    for sequence in range(1, _MAX_SAME_SECOND + 1):
        candidate = format_backup_id(plan.config.prefix, plan.created_at, sequence)
        try:
            return candidate, storage.begin(candidate + suffix, claim=candidate)
        except FileExistsError:
            continue
    raise StorageError(
        f"{storage.directory}: more than {_MAX_SAME_SECOND} backups claimed in one second", storage.directory
    )


def _failed(started: float, error: str, backup_id: str) -> BackupResult:
    return BackupResult(
        success=False,
        error=error,
        duration_seconds=time.monotonic() - started,
        backup_id=backup_id,
    )
