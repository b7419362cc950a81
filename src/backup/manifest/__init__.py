"""The JSON manifest that lists every entry of a backup with its checksum.

``model`` is the manifest itself and its JSON form (no I/O); ``files`` reads
manifests from storage and files and builds one from a directory. Everything public
is importable from here, as it always was.
"""

from .files import (
    check_identities,
    create_manifest,
    load_manifest,
    manifest_name_for,
    read_manifest,
    read_sidecar,
    read_sidecar_bytes,
    sidecar_for,
)
from .model import (
    MANIFEST_FORMAT,
    MANIFEST_SUFFIX,
    MANIFEST_VERSION,
    ArchiveInfo,
    BackupManifest,
    ManifestEntry,
    display_name,
    encode_json_text,
    iso_from_timestamp,
)

__all__ = [
    "MANIFEST_FORMAT",
    "MANIFEST_SUFFIX",
    "MANIFEST_VERSION",
    "ArchiveInfo",
    "BackupManifest",
    "ManifestEntry",
    "check_identities",
    "create_manifest",
    "display_name",
    "encode_json_text",
    "iso_from_timestamp",
    "load_manifest",
    "manifest_name_for",
    "read_manifest",
    "read_sidecar",
    "read_sidecar_bytes",
    "sidecar_for",
]
