"""Manifests in files and in storage: loading, finding, and building one from a tree."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any

from ..checksum import calculate_checksum
from ..errors import IdentityError, ManifestError
from ..hashing import DEFAULT_ALGORITHM
from ..keys import IDENTITY_ENV, Identities, short_recipient
from ..scan import scan_source
from ..storage import locate
from ..storage.base import ObjectRef
from ..stream.compression import split_archive_name
from ..stream.encryption import AgeLayer, DecryptionError
from .model import MANIFEST_SUFFIX, BackupManifest, ManifestEntry, iso_from_timestamp
from .sidecar import ENCRYPTED_SUFFIX, SIDECAR_SUFFIX, Sidecar

__all__ = [
    "check_identities",
    "create_manifest",
    "load_manifest",
    "manifest_name_for",
    "read_manifest",
    "read_sidecar",
    "read_sidecar_bytes",
    "sidecar_for",
]

# A manifest larger than this is refused rather than read into memory (a million
# entries take about 250 MB).
MAX_MANIFEST_BYTES = 1 << 30
_MAX_SIDECAR_BYTES = 1 << 20


def manifest_name_for(archive_name: str) -> str:
    """Given an archive's name, return its manifest's name (encrypted, ``.age``, for an
    encrypted archive)."""
    sealed = archive_name.endswith(ENCRYPTED_SUFFIX) and split_archive_name(archive_name[: -len(ENCRYPTED_SUFFIX)])
    if sealed:
        return sealed[0] + MANIFEST_SUFFIX + ENCRYPTED_SUFFIX
    split = split_archive_name(archive_name)
    return (split[0] if split else archive_name) + MANIFEST_SUFFIX


def sidecar_for(ref: ObjectRef) -> ObjectRef | None:
    """Given an encrypted backup's archive, manifest or sidecar, return its sidecar (None
    for an object of a backup that is not encrypted)."""
    name = ref.name
    if name.endswith(SIDECAR_SUFFIX):
        return ref
    if name.endswith(MANIFEST_SUFFIX + ENCRYPTED_SUFFIX):
        return ref.sibling(name[: -len(MANIFEST_SUFFIX + ENCRYPTED_SUFFIX)] + SIDECAR_SUFFIX)
    sealed = name.endswith(ENCRYPTED_SUFFIX) and split_archive_name(name[: -len(ENCRYPTED_SUFFIX)])
    return ref.sibling(sealed[0] + SIDECAR_SUFFIX) if sealed else None


def read_sidecar(ref: ObjectRef) -> Sidecar:
    """Given an encrypted backup's sidecar, return it; raise ManifestError naming it if
    it is missing, unreadable, not a sidecar, or not the one its name gives."""
    return read_sidecar_bytes(ref)[0]


def read_sidecar_bytes(ref: ObjectRef) -> tuple[Sidecar, bytes]:
    """As ``read_sidecar``, and the bytes it was read from (a copy writes them as they are)."""
    try:
        with ref.storage.open_read(ref.name) as handle:
            raw = handle.read(_MAX_SIDECAR_BYTES + 1)
    except FileNotFoundError as exc:
        raise ManifestError(f"{ref.label}: sidecar not found", ref.label) from exc
    except OSError as exc:
        raise ManifestError(f"{ref.label}: cannot read sidecar: {exc.strerror or exc}", ref.label) from exc
    if len(raw) > _MAX_SIDECAR_BYTES:
        raise ManifestError(f"{ref.label}: too large to be a sidecar", ref.label)
    try:
        sidecar = Sidecar.from_json(raw)
    except ManifestError as exc:
        raise ManifestError(f"{ref.label}: {exc}", ref.label) from exc
    if sidecar.backup_id + SIDECAR_SUFFIX != ref.name:
        raise ManifestError(f"{ref.label}: it is the sidecar of {sidecar.backup_id!r}", ref.label)
    return sidecar, raw


def check_identities(label: str, recipients: tuple[str, ...], identities: Identities | None) -> Identities:
    """Given an encrypted backup (its label and recipients) and the identities given,
    return them if one of them is a recipient; raise IdentityError (one line, naming
    the recipients) if none was given or none is."""
    wanted = ", ".join(recipients)
    if identities is None:
        raise IdentityError(
            f"{label}: encrypted to {wanted}; give the identity file that decrypts it "
            f"(--identity FILE, or {IDENTITY_ENV})",
            label,
        )
    if not identities.matching(recipients):
        held = ", ".join(short_recipient(key) for key in identities.public)
        raise IdentityError(
            f"{label}: encrypted to {wanted}, and no identity in {identities.source} is one of them (it holds {held})",
            label,
        )
    return identities


def read_manifest(manifest: ObjectRef, identities: Identities | None = None) -> BackupManifest:
    """Given a manifest object, return the manifest; raise ManifestError naming it if it
    is missing, unreadable or not a manifest. An encrypted manifest (``.age``) is
    decrypted with ``identities``; raise IdentityError if they cannot decrypt it."""
    sidecar_ref = sidecar_for(manifest)
    try:
        if sidecar_ref is not None:
            try:
                recipients: tuple[str, ...] | None = read_sidecar(sidecar_ref).recipients
            except ManifestError:
                if identities is None:
                    raise
                recipients = None  # lost or damaged: the identity given is tried as it is
            if recipients is not None:
                identities = check_identities(manifest.label, recipients, identities)
            assert identities is not None
            raw = _read_encrypted(manifest, identities, checked=recipients is not None)
        else:
            with manifest.storage.open_read(manifest.name) as handle:
                raw = handle.read(MAX_MANIFEST_BYTES + 1)
    except FileNotFoundError as exc:
        raise ManifestError(f"{manifest.label}: manifest not found", manifest.label) from exc
    except OSError as exc:
        raise ManifestError(f"{manifest.label}: cannot read manifest: {exc.strerror or exc}", manifest.label) from exc
    except DecryptionError as exc:
        raise ManifestError(f"{manifest.label}: cannot decrypt manifest: {exc}", manifest.label) from exc
    if len(raw) > MAX_MANIFEST_BYTES:
        raise ManifestError(f"{manifest.label}: manifest is larger than {MAX_MANIFEST_BYTES} bytes", manifest.label)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ManifestError(f"{manifest.label}: cannot read manifest: {exc}", manifest.label) from exc
    try:
        return BackupManifest.from_json(text)
    except ManifestError as exc:
        raise ManifestError(f"{manifest.label}: {exc}", manifest.label) from exc


def _read_encrypted(manifest: ObjectRef, identities: Identities, checked: bool) -> bytes:
    """Return an encrypted manifest's plaintext (up to one byte past the limit).
    ``checked``: the identities are known to be among its recipients."""
    with manifest.storage.open_read(manifest.name) as raw:
        plain = AgeLayer(identities=identities).wrap_reader(raw)
        try:
            data = bytearray()
            chunk = bytearray(1 << 16)
            while len(data) <= MAX_MANIFEST_BYTES and (count := plain.readinto(chunk)):  # type: ignore[attr-defined]
                data += chunk[:count]
        except IdentityError as exc:
            if checked:
                # One of its recipients' identities was given: its header is damaged.
                raise DecryptionError(str(exc)) from None
            raise IdentityError(f"{manifest.label}: {exc}", manifest.label) from None
        finally:
            plain.close()
    return bytes(data)


def load_manifest(path: Path) -> BackupManifest:
    """Given a manifest file, return the manifest; raise ManifestError naming the file if bad."""
    return read_manifest(locate(path))


def create_manifest(
    backup_id: str,
    source_dir: Path,
    files: list[Path] | None = None,
    metadata: dict[str, Any] | None = None,
    algorithm: str = DEFAULT_ALGORITHM,
) -> BackupManifest:
    """Given a source directory (and optionally some of its files), return a manifest of it.

    This reads and hashes the files on its own; ``create_backup`` does not use it, as it
    hashes the very bytes it archives. Symlinks are described, not followed.
    Raise SourceError if a file cannot be read.
    """
    source = Path(source_dir)
    scan = scan_source(source, files=files)
    entries = [
        ManifestEntry(
            path=item.path,
            size=item.size,
            checksum=calculate_checksum(item.abspath, algorithm) if item.kind == "file" else "",
            modified=iso_from_timestamp(item.mtime),
            type=item.kind,
            mode=item.mode,
            link_target=item.link_target,
        )
        for item in scan.entries
    ]
    return BackupManifest(
        backup_id=backup_id,
        created_at=datetime.now().astimezone().isoformat(),
        source_dir=str(source),
        files=entries,
        metadata=dict(metadata or {}),
        checksum_algorithm=algorithm,
    )
