"""Executing a backup plan: write the archive, then the manifest, then make both visible.

Order of events, and why:

1. Leftovers of interrupted runs are removed.
2. The backup id is claimed: the plan's id, or ``<id>-2``, ``<id>-3`` ... if another
   backup took it in the same second (a claim is the storage's atomic create-if-absent).
3. Entries stream through the archive pipeline (tar, compression, hashing) into the
   storage's upload; each file is read once.
4. In a directory, the manifest (which records the archive's size and checksum) is
   committed, then the archive; an encrypted backup commits its sidecar first. This is the moment the backup exists: an archive under
   its final name is always complete, and a manifest without its archive is a leftover
   that the next run removes.
   In an object store (``storage.manifest_commits``), where nothing can be linked into
   place at the end, the order is the other way: the archive is completed and its size
   and checksum confirmed, then the manifest is created, which is the moment the backup
   exists (an encrypted backup's sidecar, created after its encrypted manifest). The manifest's writer holds its claim from before the archive lands, so an
   archive without its manifest is never taken for a leftover while it is being made.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

from .catalog import commit_order
from .config import BackupResult
from .errors import BackupError, StorageError
from .listing import clean_leftovers
from .manifest.model import ArchiveInfo, BackupManifest, ManifestEntry, encode_json_text
from .manifest.sidecar import Sidecar, StoredObject
from .plan import BackupPlan
from .progress import ProgressCallback
from .sqlite_snapshot import COMPANION_SUFFIXES
from .storage.base import BackupStorage, Upload
from .stream.encryption import AgeLayer
from .stream.pipeline import ArchiveOutput, archive_layers
from .stream.tarwriter import write_entries

__all__ = ["commit_backup", "execute_backup"]

_MAX_SAME_SECOND = 1000


def execute_backup(plan: BackupPlan, progress: ProgressCallback | None = None) -> BackupResult:
    """Given a backup plan, write the backup; return the result (never raises).

    On failure nothing that looks like a backup is left behind.
    """
    started = time.monotonic()
    config = plan.config
    storage = plan.storage
    archive: Upload | None = None
    output: ArchiveOutput | None = None
    manifest_upload: Upload | None = None
    sidecar_upload: Upload | None = None
    manifest_committed: str | None = None
    backup_id = plan.backup_id
    try:
        storage.ensure()
        clean_leftovers(storage)
        backup_id, archive = _claim(storage, plan)
        archive_name = archive.name
        manifest_name = _renamed(plan.manifest_name, plan.backup_id, backup_id)
        encryption = AgeLayer(plan.recipients) if plan.recipients is not None else None
        output = ArchiveOutput(
            archive,  # type: ignore[arg-type]
            archive_layers(config.compression, config.compression_level or 0, plan.total_bytes, encryption),
            config.checksum_algorithm,
        )
        outcome = write_entries(
            output.stream,
            plan.entries,
            root=plan.source_root or str(Path(config.source_dir).absolute()),
            algorithm=config.checksum_algorithm,
            filesystem=plan.filesystem,
            on_read_error=config.on_read_error,
            progress=progress,
            backup_id=backup_id,
            sqlite_snapshot=config.sqlite_snapshot,
        )
        archive_size, archive_digest = output.finish()
        output = None
        manifest = BackupManifest(
            backup_id=backup_id,
            created_at=plan.created_at.isoformat(),
            source_dir=str(Path(config.source_dir).absolute()),
            files=outcome.entries,
            metadata=dict(plan.metadata),
            checksum_algorithm=config.checksum_algorithm,
            archive=ArchiveInfo(archive_name, archive_size, archive_digest, config.compression),
            warnings=_problems(plan, outcome.entries) + outcome.warnings,
        )
        manifests: list[Upload] = []
        if manifest_name is not None:
            manifest_upload = storage.begin(manifest_name, mark=backup_id)
            manifest_size, manifest_digest = _write_manifest(manifest_upload, manifest, encryption)
            if plan.recipients is not None and plan.sidecar_name is not None and manifest.archive is not None:
                sidecar = Sidecar(
                    backup_id=backup_id,
                    created_at=manifest.created_at,
                    kind="scheduled" if "scheduler" in plan.metadata else "manual",
                    source_size=manifest.total_size,
                    checksum_algorithm=config.checksum_algorithm,
                    archive=manifest.archive,
                    manifest=StoredObject(manifest_upload.name, manifest_size, manifest_digest),
                    recipients=plan.recipients.keys,
                )
                sidecar_name = _renamed(plan.sidecar_name, plan.backup_id, backup_id) or ""
                sidecar_upload = storage.begin(sidecar_name, mark=backup_id)
                sidecar_upload.write(sidecar.to_json().encode("utf-8"))
                manifests.append(sidecar_upload)
            manifests.append(manifest_upload)
        commit_backup(storage, archive, manifests)
        manifest_committed = None if manifest_upload is None else manifest_upload.name
    except BackupError as exc:
        return _failed(started, str(exc), backup_id)
    except OSError as exc:
        where = exc.filename or storage.location
        return _failed(started, f"{where}: cannot write backup: {exc.strerror or exc}", backup_id)
    except Exception as exc:  # a bug: still a failed result (and no backup), never an exception
        return _failed(
            started, f"{storage.location}: backup failed: internal error: {type(exc).__name__}: {exc}", backup_id
        )
    finally:
        if output is not None:
            output.abandon()  # failed mid-stream: the compressors' last words go nowhere
        for pending in (sidecar_upload, manifest_upload, archive):
            if pending is not None:
                pending.abort()
    return BackupResult(
        success=True,
        backup_path=storage.local_path(archive_name),
        manifest_path=storage.local_path(manifest_committed) if manifest_committed else None,
        archive=storage.describe(archive_name),
        manifest=manifest,
        duration_seconds=time.monotonic() - started,
        warnings=list(manifest.warnings),
        backup_id=backup_id,
        archive_size=archive_size,
        entry_count=len(outcome.entries),
        changed_files=list(outcome.changed),
    )


def commit_backup(storage: BackupStorage, archive: Upload, manifests: Sequence[Upload]) -> None:
    """Given a backup's archive and manifests, all written (for an encrypted backup the
    sidecar, then the encrypted manifest), commit them in the order that makes the
    backup exist at one moment (``backup.catalog.commit_order``). If one fails, those
    committed before it are removed again; raise what failed."""
    uploads = {upload.name: upload for upload in (archive, *manifests)}
    committed: list[str] = []
    for name in commit_order(storage.manifest_commits, archive.name, [upload.name for upload in manifests]):
        try:
            uploads[name].commit()
        except BaseException:
            # In an object store each name is held by this writer alone: if it is there,
            # it landed (its answer was lost), and what came before it is kept.
            if not (storage.manifest_commits and _exists(storage, name)):
                for earlier in reversed(committed):
                    try:
                        storage.delete(earlier)
                    except (OSError, BackupError):
                        pass  # a leftover the next run removes (after the grace period)
            raise
        committed.append(name)


def _exists(storage: BackupStorage, name: str) -> bool:
    try:
        storage.stat(name)
    except (OSError, BackupError):
        return False
    return True


def _problems(plan: BackupPlan, archived: list[ManifestEntry]) -> list[str]:
    """Return the walk's problems worth a warning: not the journal or WAL of a database
    archived as a snapshot, which came and went with the transactions the snapshot
    already holds."""
    databases = {entry.path for entry in archived if entry.snapshot == "sqlite"}
    expected = {
        message
        for path, message in plan.vanished
        if any(path.endswith(suffix) and path[: -len(suffix)] in databases for suffix in COMPANION_SUFFIXES)
    }
    return [problem for problem in plan.problems if problem not in expected]


def _write_manifest(upload: Upload, manifest: BackupManifest, encryption: AgeLayer | None) -> tuple[int, str]:
    """Write the manifest's JSON (encrypted, if ``encryption``) in batches of about 1 MiB
    (flat memory for huge trees); return the bytes stored and their digest."""
    output = ArchiveOutput(upload, [] if encryption is None else [encryption], manifest.checksum_algorithm)  # type: ignore[arg-type]
    try:
        pending: list[str] = []
        size = 0
        for piece in manifest.iter_json():
            pending.append(piece)
            size += len(piece)
            if size >= 1 << 20:
                output.stream.write(encode_json_text("".join(pending)))
                pending, size = [], 0
        output.stream.write(encode_json_text("".join(pending)))
        return output.finish()
    except BaseException:
        output.abandon()
        raise


def _renamed(name: str | None, planned_id: str, backup_id: str) -> str | None:
    """Given a name the plan gave, return it for the id actually claimed."""
    if name is None or backup_id == planned_id:
        return name
    if not name.startswith(planned_id):
        raise StorageError(f"{name}: already taken, and not named after its backup id {planned_id}")
    return backup_id + name[len(planned_id) :]


def _claim(storage: BackupStorage, plan: BackupPlan) -> tuple[str, Upload]:
    """Claim the plan's id and archive name, or the first free ``<id>-2``, ``<id>-3`` ...
    after it (another backup took the plan's id in the same second)."""
    for sequence in range(1, _MAX_SAME_SECOND + 1):
        candidate = plan.backup_id if sequence == 1 else f"{plan.backup_id}-{sequence}"
        archive_name = _renamed(plan.archive_name, plan.backup_id, candidate)
        assert archive_name is not None
        try:
            return candidate, storage.begin(archive_name, claim=candidate, size_hint=plan.size_estimate, mark=candidate)
        except FileExistsError:
            continue
    raise StorageError(
        f"{storage.location}: more than {_MAX_SAME_SECOND} backups claimed in one second", storage.location
    )


def _failed(started: float, error: str, backup_id: str) -> BackupResult:
    return BackupResult(
        success=False,
        error=error,
        duration_seconds=time.monotonic() - started,
        backup_id=backup_id,
    )
