"""Manifests in files and in storage: loading, finding, and building one from a tree."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any

from ..checksum import calculate_checksum
from ..errors import ManifestError
from ..hashing import DEFAULT_ALGORITHM
from ..scan import scan_source
from ..storage import locate
from ..storage.base import ObjectRef
from ..stream.compression import split_archive_name
from .model import MANIFEST_SUFFIX, BackupManifest, ManifestEntry, iso_from_timestamp

__all__ = ["create_manifest", "load_manifest", "manifest_name_for", "read_manifest"]

# A manifest larger than this is refused rather than read into memory (a million
# entries take about 250 MB).
MAX_MANIFEST_BYTES = 1 << 30


def manifest_name_for(archive_name: str) -> str:
    """Given an archive's name, return its sidecar manifest's name."""
    split = split_archive_name(archive_name)
    return (split[0] if split else archive_name) + MANIFEST_SUFFIX


def read_manifest(manifest: ObjectRef) -> BackupManifest:
    """Given a manifest object, return the manifest; raise ManifestError naming it if it
    is missing, unreadable or not a manifest."""
    try:
        with manifest.storage.open_read(manifest.name) as handle:
            raw = handle.read(MAX_MANIFEST_BYTES + 1)
    except FileNotFoundError as exc:
        raise ManifestError(f"{manifest.label}: manifest not found", manifest.label) from exc
    except OSError as exc:
        raise ManifestError(f"{manifest.label}: cannot read manifest: {exc.strerror or exc}", manifest.label) from exc
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
