"""Finding the backup a command names: an archive's path, a manifest's path, a backup id
or ``latest``.

Ids and ``latest`` are looked up among the backups this tool wrote in a backup
location (``backup.listing``), so a foreign file named like a backup is never chosen.
A path wins over an id: ``restore ./backup_20260101_030000.tar.gz`` restores that file
even when a backup directory is also given.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from .catalog import BackupInfo, own_manifest
from .errors import ArchiveError, ConfigError, ManifestError
from .keys import Identities
from .listing import list_backups
from .manifest import BackupManifest, manifest_name_for, read_manifest
from .manifest.files import read_sidecar, sidecar_for
from .manifest.model import MANIFEST_SUFFIX
from .manifest.sidecar import ENCRYPTED_SUFFIX
from .retention import is_dated_in_future
from .storage import Location, is_url, locate, open_storage, where
from .storage.base import BackupStorage, ObjectRef
from .stream.compression import split_archive_name

__all__ = ["LATEST", "Selected", "find_backup"]

LATEST = "latest"
_MAX_MANIFEST_BYTES = 1 << 30


@dataclass(frozen=True)
class Selected:
    """A backup a command named: its archive, and its manifest if it has one."""

    archive: ObjectRef
    manifest: ObjectRef | None
    backup_id: str | None = None
    # An encrypted backup's plaintext sidecar.
    sidecar: ObjectRef | None = None

    def read_manifest(self, identities: Identities | None = None) -> BackupManifest:
        """Return the manifest (decrypted with ``identities``, if it is encrypted); raise
        ManifestError naming the archive if there is none, IdentityError if it cannot
        be decrypted."""
        if self.manifest is None:
            raise ManifestError(
                f"{self.archive.label}: this backup has no manifest (made with --no-manifest, or by another tool)",
                self.archive.label,
            )
        return read_manifest(self.manifest, identities)


def find_backup(
    spec: str | os.PathLike[str],
    backup_dir: Location | None = None,
    prefix: str | None = None,
    *,
    archive_required: bool = True,
    endpoint_url: str | None = None,
) -> Selected:
    """Given what a command was told (a path, an id or ``latest``) and the backup location
    to look ids up in, return the backup. ``prefix`` limits ``latest`` to one prefix.
    Without ``archive_required`` (reading the manifest only), a backup whose archive is
    gone is found by its manifest, when that manifest is provably ours.

    An object in an object store is named by its URL (``s3://bucket/prefix/NAME``);
    ``endpoint_url`` is the store's endpoint, unless the URL names one.

    Raise ConfigError (one line, naming it) if it is none of these, and ArchiveError if a
    manifest names an archive that is missing.
    """
    text = os.fspath(spec)
    if is_url(text):
        try:
            given = locate(text, endpoint_url)
        except FileNotFoundError as exc:
            raise ArchiveError(f"{exc.filename}: {exc.strerror}", text) from None
        if not given.exists():
            what = "manifest" if given.name.endswith(MANIFEST_SUFFIX) else "archive"
            raise ArchiveError(f"{given.label}: {what} not found", given.label)
        return _from_ref(given, given.label, archive_required)
    path = Path(text)
    if path.is_file():
        return _from_ref(locate(path.absolute()), str(path), archive_required)
    if text.endswith(MANIFEST_SUFFIX):
        raise ManifestError(f"{path.absolute()}: manifest not found", text)
    if os.sep in text or path.exists() or split_archive_name(text) is not None:
        what = "is not a file" if path.exists() else "archive not found"
        raise ArchiveError(f"{path.absolute()}: {what}", text)
    if backup_dir is None:
        raise ConfigError(
            f"{text}: no such file; to name a backup by id or 'latest', give --backup-dir "
            "(or backup_dir in the config file, or OBS_BACKUP_DIR)",
            text,
        )
    backups = list_backups(backup_dir, prefix=prefix if text == LATEST else None)
    if text == LATEST:
        which = f" with prefix {prefix!r}" if prefix else ""
        if not backups:
            raise ConfigError(
                f"{where(backup_dir)}: no complete backups{which}; 'latest' names none", where(backup_dir)
            )
        # A backup dated after now (made while the clock ran ahead) is not the latest:
        # it would hide every backup made since the clock was put right.
        now = datetime.now(UTC)
        current = [info for info in backups if not is_dated_in_future(info, now)]
        if not current:
            raise ConfigError(
                f"{where(backup_dir)}: every backup{which} is dated in the future (check the clock); name one by its id",
                where(backup_dir),
            )
        return _from_info(current[-1])
    for info in backups:
        if info.backup_id == text:
            return _from_info(info)
    if not archive_required:
        found = _manifest_only(open_storage(backup_dir), text)
        if found is not None:
            return found
    raise ConfigError(f"{text}: no such file, and no backup with this id in {where(backup_dir)}", text)


def _from_info(info: BackupInfo) -> Selected:
    return Selected(info.archive, info.manifest, info.backup_id, info.sidecar)


def _manifest_only(storage: BackupStorage, backup_id: str) -> Selected | None:
    """Return the backup ``backup_id`` by its manifest alone, if that manifest is ours."""
    name = backup_id + MANIFEST_SUFFIX
    try:
        with storage.open_read(name) as handle:
            raw = handle.read(_MAX_MANIFEST_BYTES + 1)
    except OSError:
        return None
    if len(raw) > _MAX_MANIFEST_BYTES:
        return None
    manifest, _ = own_manifest(raw, backup_id)
    if manifest is None or manifest.archive is None:
        return None
    ref = ObjectRef(storage, name, storage.describe(name))
    return Selected(ref.sibling(manifest.archive.name), ref, backup_id)


def _from_ref(given: ObjectRef, path: str, archive_required: bool = True) -> Selected:
    sidecar_ref = sidecar_for(given)
    if sidecar_ref is not None:
        # An encrypted backup, named by any of its three objects: its sidecar names the others.
        if sidecar_ref is given or given.name.endswith(MANIFEST_SUFFIX + ENCRYPTED_SUFFIX):
            sidecar = read_sidecar(sidecar_ref)
            named = sidecar_ref.sibling(sidecar.archive.name)
            if archive_required and not named.exists():
                raise ArchiveError(f"{named.label}: archive not found (named by {path})", named.label)
            return Selected(named, sidecar_ref.sibling(sidecar.manifest.name), sidecar.backup_id, sidecar_ref)
        beside = given.sibling(manifest_name_for(given.name))
        return Selected(
            given,
            beside if beside.exists() else None,
            sidecar=sidecar_ref if sidecar_ref.exists() else None,
        )
    if not given.name.endswith(MANIFEST_SUFFIX):
        beside = given.sibling(manifest_name_for(given.name))
        return Selected(given, beside if beside.exists() else None)
    manifest_ref = given
    manifest = read_manifest(manifest_ref)
    if manifest.archive is None or not manifest.archive.name:
        raise ManifestError(f"{path}: the manifest does not name its archive", str(path))
    named = manifest_ref.sibling(manifest.archive.name)
    if named.name != manifest.archive.name or "/" in manifest.archive.name:
        raise ManifestError(f"{path}: the manifest names an archive outside its directory", str(path))
    if archive_required and not named.exists():
        raise ArchiveError(f"{named.label}: archive not found (named by {path})", named.label)
    return Selected(named, manifest_ref, manifest.backup_id)
