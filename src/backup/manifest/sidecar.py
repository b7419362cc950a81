"""The plaintext sidecar of an encrypted backup: what needs no secret.

An encrypted backup is three objects: the archive ``<id>.tar.<comp>.age``, its
manifest ``<id>.manifest.json.age`` (encrypted too: its per-file checksums would tell
whoever reads the storage which known files a backup holds), and the sidecar
``<id>.sidecar.json``. The sidecar holds the id, the time, the kind of run, the size of
the source, the size and SHA-256 of both encrypted objects, and the recipients the
backup was encrypted to: enough to list, prune and copy the backup and to check its
ciphertext without the identity, and to say which key a restore needs. Pure: no I/O.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from ..errors import ManifestError
from .model import ArchiveInfo

__all__ = [
    "ENCRYPTED_SUFFIX",
    "SIDECAR_FORMAT",
    "SIDECAR_SUFFIX",
    "SIDECAR_VERSION",
    "Sidecar",
    "StoredObject",
]

SIDECAR_FORMAT = "obs-backup-sidecar"
SIDECAR_VERSION = 1
SIDECAR_SUFFIX = ".sidecar.json"
# Added to the archive's and the manifest's names when they are encrypted.
ENCRYPTED_SUFFIX = ".age"
_AGE_FORMAT = "age-encryption.org/v1"


@dataclass(frozen=True)
class StoredObject:
    """An object as stored: its name, size in bytes and checksum."""

    name: str
    size: int
    checksum: str


@dataclass(frozen=True)
class Sidecar:
    """What an encrypted backup says of itself in plaintext (see the module docstring)."""

    backup_id: str
    created_at: str
    kind: str
    source_size: int
    checksum_algorithm: str
    archive: ArchiveInfo
    manifest: StoredObject
    recipients: tuple[str, ...]

    def to_json(self) -> str:
        """Return the sidecar as JSON text."""
        data = {
            "format": SIDECAR_FORMAT,
            "version": SIDECAR_VERSION,
            "backup_id": self.backup_id,
            "created_at": self.created_at,
            "kind": self.kind,
            "source_size": self.source_size,
            "checksum_algorithm": self.checksum_algorithm,
            "archive": {
                "name": self.archive.name,
                "size": self.archive.size,
                "checksum": self.archive.checksum,
                "compression": self.archive.compression,
            },
            "manifest": {"name": self.manifest.name, "size": self.manifest.size, "checksum": self.manifest.checksum},
            "encryption": {"format": _AGE_FORMAT, "recipients": list(self.recipients)},
        }
        return json.dumps(data, indent=2, ensure_ascii=False) + "\n"

    @classmethod
    def from_json(cls, raw: bytes) -> Sidecar:
        """Given a sidecar's bytes, return it; raise ManifestError saying what is wrong."""
        try:
            data = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            raise ManifestError("sidecar is not valid JSON") from None
        if not isinstance(data, dict) or data.get("format") != SIDECAR_FORMAT:
            raise ManifestError(f'sidecar has no "format": "{SIDECAR_FORMAT}"')
        if data.get("version") != SIDECAR_VERSION:
            raise ManifestError(
                f"unsupported sidecar version {data.get('version')!r} (this obs-backup reads {SIDECAR_VERSION})"
            )
        try:
            archive, manifest = data["archive"], data["manifest"]
            encryption = data["encryption"]
            recipients = encryption["recipients"]
            sidecar = cls(
                backup_id=_text(data["backup_id"]),
                created_at=_text(data["created_at"]),
                kind=_text(data["kind"]),
                source_size=_count(data["source_size"]),
                checksum_algorithm=_text(data["checksum_algorithm"]),
                archive=ArchiveInfo(
                    _text(archive["name"]),
                    _count(archive["size"]),
                    _text(archive["checksum"]),
                    _text(archive["compression"]),
                ),
                manifest=StoredObject(_text(manifest["name"]), _count(manifest["size"]), _text(manifest["checksum"])),
                recipients=tuple(_text(key) for key in recipients),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ManifestError(f"sidecar is malformed: {exc}") from None
        if encryption.get("format") != _AGE_FORMAT or not sidecar.recipients:
            raise ManifestError(f"sidecar names no {_AGE_FORMAT} recipients")
        return sidecar


def _text(value: Any) -> str:
    if not isinstance(value, str):
        raise TypeError(f"{value!r:.40} is not a string")
    return value


def _count(value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ValueError(f"{value!r:.40} is not a non-negative integer")
    return value
