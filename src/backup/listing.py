"""What a backup location holds: its complete backups, and the leftovers of runs that
died. Reads (and, for leftovers, deletes) through the location's storage only; what
counts as ours is decided by the pure rules of ``backup.catalog``.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

from .catalog import (
    BackupInfo,
    encrypted_archive_name,
    oldest_first_key,
    own_archive_name,
    own_manifest,
    own_sidecar,
    parse_backup_id,
)
from .manifest.model import MANIFEST_SUFFIX, BackupManifest
from .manifest.sidecar import ENCRYPTED_SUFFIX, SIDECAR_SUFFIX, Sidecar
from .storage import Location, open_storage
from .storage.base import BackupStorage, ObjectInfo, ObjectRef
from .stream.tarreader import read_archive_marker

__all__ = ["clean_leftovers", "list_backups"]

# A file under a manifest's name larger than this is not read (and so not ours).
_MAX_MANIFEST_BYTES = 1 << 30
_SEALED_MANIFEST = MANIFEST_SUFFIX + ENCRYPTED_SUFFIX
# A sidecar is a few hundred bytes, and a few KiB with many recipients.
_MAX_SIDECAR_BYTES = 1 << 20


def list_backups(backup_dir: Location, prefix: str | None = None) -> list[BackupInfo]:
    """Given a backup location, return the complete backups this tool provably wrote,
    oldest first.

    An archive is listed only if it is ours (see ``backup.catalog``): its manifest is
    ours and names it, or, without such a manifest, its mark names its id. Anything
    else, however much its name looks like a backup's, is not listed. Creation times
    come from the manifest, or from the id when there is none; never from file times.
    Raise StorageError if the location cannot be listed.
    """
    storage = open_storage(backup_dir)
    objects = {info.name: info for info in storage.list_objects()}
    backups = []
    for name in objects:
        sealed = encrypted_archive_name(name)
        found = None if sealed is None else _encrypted_backup(storage, objects, name, *sealed, prefix)
        if found is not None:
            backups.append(found)
    for name, info in objects.items():
        split = own_archive_name(name)  # never an encrypted archive's name (those end in .age)
        if split is None:
            continue
        backup_id, compression = split
        parsed = parse_backup_id(backup_id)
        if prefix is not None and (parsed is None or parsed[0] != prefix):
            continue
        archive = _ref(storage, name)
        manifest_name = backup_id + MANIFEST_SUFFIX
        manifest, why_not = None, None
        if manifest_name in objects:
            manifest, why_not = _read_own_manifest(storage, objects[manifest_name], backup_id)
        if manifest is not None and manifest.archive is not None and manifest.archive.name == name:
            backups.append(
                _describe(archive, info, backup_id, compression, parsed, manifest, _ref(storage, manifest_name))
            )
        elif not storage.manifest_commits and read_archive_marker(archive) == backup_id:
            problem = None
            if manifest_name in objects:
                # Not removed with the archive either: nothing proves it is ours.
                problem = (
                    f"{storage.describe(manifest_name)}: not this backup's manifest "
                    f"({why_not or 'it names another archive'})"
                )
            backups.append(_describe(archive, info, backup_id, compression, parsed, None, None, problem))
    return sorted(backups, key=oldest_first_key)


def _encrypted_backup(
    storage: BackupStorage,
    objects: dict[str, ObjectInfo],
    name: str,
    backup_id: str,
    compression: str,
    prefix: str | None,
) -> BackupInfo | None:
    """Return the encrypted backup whose archive is ``name``, if its sidecar is ours and
    names it (with a problem if its encrypted manifest is not there)."""
    parsed = parse_backup_id(backup_id)
    if prefix is not None and (parsed is None or parsed[0] != prefix):
        return None
    sidecar_name = backup_id + SIDECAR_SUFFIX
    if sidecar_name not in objects:
        return None
    sidecar, _ = _read_own_sidecar(storage, objects[sidecar_name], backup_id)
    if sidecar is None or sidecar.archive.name != name:
        return None
    info = objects[name]
    created_at = parsed[1] if parsed else None
    problem = None
    manifest = _ref(storage, sidecar.manifest.name) if sidecar.manifest.name in objects else None
    if manifest is None:
        problem = (
            f"{storage.describe(sidecar.manifest.name)}: encrypted manifest not found, though its sidecar names it"
        )
    try:
        created_at = datetime.fromisoformat(sidecar.created_at)
    except ValueError:
        problem = problem or f"{storage.describe(sidecar_name)}: created_at {sidecar.created_at!r} is not ISO 8601"
    return BackupInfo(
        backup_id=backup_id,
        prefix=parsed[0] if parsed else None,
        archive=_ref(storage, name),
        manifest=manifest,
        created_at=created_at,
        size_bytes=info.size,
        file_count=None,  # in the encrypted manifest
        compression=compression,
        problem=problem,
        stored_at=info.modified,
        sidecar=_ref(storage, sidecar_name),
        recipients=sidecar.recipients,
    )


def _read_small(storage: BackupStorage, info: ObjectInfo, limit: int, what: str) -> tuple[bytes | None, str | None]:
    """Return ``(the object's bytes, None)``, or ``(None, why not)`` if it cannot be read
    or is larger than ``limit``: as listed (then it is not read at all), or once read
    (it grew after the listing; no more than one byte past the limit is read)."""
    if info.size > limit:
        return None, f"too large to be a {what}"
    try:
        with storage.open_read(info.name) as handle:
            raw = handle.read(limit + 1)
    except OSError as exc:
        return None, f"cannot read it: {exc.strerror or exc}"
    if len(raw) > limit:
        return None, f"too large to be a {what}"
    return raw, None


def _read_own_sidecar(storage: BackupStorage, info: ObjectInfo, backup_id: str) -> tuple[Sidecar | None, str | None]:
    """Return ``(sidecar, None)`` if the object is our sidecar, else ``(None, why not)``."""
    raw, why_not = _read_small(storage, info, _MAX_SIDECAR_BYTES, "sidecar")
    if raw is None:
        return None, why_not
    return own_sidecar(raw, backup_id)


def _ref(storage: BackupStorage, name: str) -> ObjectRef:
    return ObjectRef(storage, name, storage.describe(name))


def _read_own_manifest(
    storage: BackupStorage, info: ObjectInfo, backup_id: str
) -> tuple[BackupManifest | None, str | None]:
    """Return ``(manifest, None)`` if the object is our manifest, else ``(None, why not)``."""
    raw, why_not = _read_small(storage, info, _MAX_MANIFEST_BYTES, "manifest")
    if raw is None:
        return None, why_not
    return own_manifest(raw, backup_id)


def _describe(
    archive: ObjectRef,
    info: ObjectInfo,
    backup_id: str,
    compression: str,
    parsed: tuple[str, datetime, int] | None,
    manifest: BackupManifest | None,
    manifest_ref: ObjectRef | None,
    problem: str | None = None,
) -> BackupInfo:
    created_at = parsed[1] if parsed else None
    file_count = None
    if manifest is not None:
        file_count = manifest.file_count
        try:
            created_at = datetime.fromisoformat(manifest.created_at)
        except ValueError:
            label = manifest_ref.label if manifest_ref else backup_id
            problem = f"{label}: created_at {manifest.created_at!r} is not ISO 8601"
        if created_at is not None and created_at.tzinfo is None:
            created_at = created_at.astimezone()  # seed-era manifests wrote local naive times
    return BackupInfo(
        backup_id=backup_id,
        prefix=parsed[0] if parsed else None,
        archive=archive,
        manifest=manifest_ref,
        created_at=created_at,
        size_bytes=info.size,
        file_count=file_count,
        compression=compression,
        problem=problem,
        stored_at=info.modified,
    )


def clean_leftovers(backup_dir: Location) -> list[str]:
    """Given a backup location, remove what interrupted runs of this tool left there;
    return the names.

    Removes the partial objects of dead writers, manifests of ours (see
    ``backup.catalog``) whose archive never landed and, where the manifest is the commit
    point (object storage), archives of ours whose manifest never did; the same for the
    parts of encrypted backups. Leaves alone
    everything a live writer is still working on, everything younger than the
    storage's grace period, and everything it cannot prove is ours.
    """
    storage = open_storage(backup_dir)
    removed = storage.clean_partials()
    objects = {info.name: info for info in storage.list_objects()}
    now = storage.now()

    def young(info: ObjectInfo) -> bool:
        return now - info.modified < storage.grace_seconds

    archives = {split[0]: name for name in objects if (split := own_archive_name(name)) is not None}
    for name, info in objects.items():
        backup_id = name[: -len(MANIFEST_SUFFIX)]
        # Only manifests with no archive of their id at all are read: every other one is
        # kept without a look, however large it is.
        if not name.endswith(MANIFEST_SUFFIX) or backup_id in archives or young(info):
            continue
        manifest, _ = _read_own_manifest(storage, info, backup_id)
        if manifest is None or manifest.archive is None:
            continue
        if not _never_landed(storage, manifest.archive.name, backup_id):
            continue
        if _remove(storage, name):
            removed.append(name)
    if storage.manifest_commits:
        for backup_id, name in archives.items():
            manifest_name = backup_id + MANIFEST_SUFFIX
            if manifest_name in objects or young(objects[name]):
                continue
            archive = _ref(storage, name)
            if read_archive_marker(archive) != backup_id:
                continue  # not provably ours
            # The manifest's writer holds its claim until the manifest has landed.
            if storage.claimed(manifest_name) or storage.claimed(backup_id) or _exists(storage, manifest_name):
                continue
            if _remove(storage, name):
                removed.append(name)
    removed += _clean_encrypted(storage, objects, young)
    return removed


def _clean_encrypted(
    storage: BackupStorage, objects: dict[str, ObjectInfo], young: Callable[[ObjectInfo], bool]
) -> list[str]:
    """Remove what interrupted encrypted backups left: in a directory, a sidecar of ours
    whose archive never landed, with the encrypted manifest it names; in an object
    store, an encrypted archive or manifest without its sidecar (the commit point),
    proved ours by the mark the storage keeps with it. Return the names removed."""
    removed: list[str] = []
    sidecars = {name[: -len(SIDECAR_SUFFIX)]: name for name in objects if name.endswith(SIDECAR_SUFFIX)}
    archives = {split[0]: name for name in objects if (split := encrypted_archive_name(name)) is not None}
    if not storage.manifest_commits:
        for backup_id, name in sidecars.items():
            if backup_id in archives or young(objects[name]):
                continue
            sidecar, _ = _read_own_sidecar(storage, objects[name], backup_id)
            if sidecar is None:
                continue
            if not _never_landed(storage, sidecar.archive.name, backup_id):
                continue
            for leftover in (sidecar.manifest.name, name):  # the proof of ownership last
                if _remove(storage, leftover):
                    removed.append(leftover)
        return removed
    manifests = {
        name[: -len(_SEALED_MANIFEST)]: name
        for name in objects
        if name.endswith(_SEALED_MANIFEST) and parse_backup_id(name[: -len(_SEALED_MANIFEST)]) is not None
    }
    for backup_id, name in [*archives.items(), *manifests.items()]:
        sidecar_name = backup_id + SIDECAR_SUFFIX
        if sidecar_name in objects or young(objects[name]) or storage.marked(name) != backup_id:
            continue
        # The sidecar's writer holds its claim until the sidecar has landed.
        if storage.claimed(sidecar_name) or storage.claimed(backup_id) or storage.claimed(name):
            continue
        if _exists(storage, sidecar_name):
            continue
        if _remove(storage, name):
            removed.append(name)
    return removed


def _never_landed(storage: BackupStorage, archive_name: str, backup_id: str) -> bool:
    """Whether the archive of ``backup_id`` is not there and no writer is at work on it.
    A writer gives up its claim only after its archive has landed, so look for a live
    claim first and for the archive again after it."""
    if _exists(storage, archive_name) or storage.claimed(backup_id) or storage.claimed(archive_name):
        return False
    return not _exists(storage, archive_name)


def _remove(storage: BackupStorage, name: str) -> bool:
    try:
        storage.delete(name)
    except (FileNotFoundError, FileExistsError):
        return False  # gone already, or replaced meanwhile: not what was looked at
    return True


def _exists(storage: BackupStorage, name: str) -> bool:
    try:
        storage.stat(name)
    except FileNotFoundError:
        return False
    return True
