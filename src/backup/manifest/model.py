"""The manifest: what a backup holds, entry by entry, and its JSON form.

Data and serialisation only; reading and writing manifests in storage, and building
one from a directory, are in ``backup.manifest.files``.

A manifest is a sidecar ``<backup_id>.manifest.json`` beside its archive. Version 2
(written now) adds entry types, modes, link targets, the checksum algorithm and the
archive's own name, size and digest to the seed's shape; a manifest without a
``version`` field is read as version 1, the seed's shape, and still loads.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, fields
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ..errors import ManifestError
from ..hashing import DEFAULT_ALGORITHM

__all__ = [
    "MANIFEST_FORMAT",
    "MANIFEST_SUFFIX",
    "MANIFEST_VERSION",
    "ArchiveInfo",
    "BackupManifest",
    "ManifestEntry",
    "display_name",
    "encode_json_text",
    "iso_from_timestamp",
]

MANIFEST_FORMAT = "obs-backup-manifest"
MANIFEST_VERSION = 3
MANIFEST_SUFFIX = ".manifest.json"
SUPPORTED_VERSIONS = frozenset({1, 2, 3})
_COMPACT = json.JSONEncoder(ensure_ascii=False, separators=(", ", ": "))
ENTRY_TYPES = frozenset({"file", "dir", "symlink", "hardlink", "fifo", "chardev", "blockdev"})


def encode_json_text(text: str) -> bytes:
    """Given JSON text, return it as UTF-8 bytes.

    Text from file names that are not valid UTF-8 holds surrogate escapes (PEP 383),
    which strict UTF-8 cannot encode; each is written as a JSON ``\\udcXX`` escape
    instead, which JSON readers accept and Python reads back as the same string.
    """
    return text.encode("utf-8", "backslashreplace")


def _is_utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _raw_bytes(text: str) -> bytes:
    return text.encode("utf-8", "surrogateescape")


def display_name(text: str) -> str:
    """Given a name that may hold undecodable bytes, return it readable: each such byte
    as ``\\xNN``."""
    return _raw_bytes(text).decode("utf-8", "backslashreplace")


def iso_from_timestamp(timestamp: float) -> str:
    """Given a POSIX timestamp, return it as ISO 8601 in UTC with its offset (a time
    beyond what a calendar date holds, year 10000 say, as ``@<seconds>``)."""
    try:
        return datetime.fromtimestamp(timestamp, UTC).isoformat()
    except (OverflowError, ValueError, OSError):
        return f"@{timestamp:.0f}"


@dataclass
class ManifestEntry:
    """One archived entry: a file, a directory, a symlink, a hard link, a FIFO or a device.

    ``checksum`` is the hex digest of the file's archived bytes (empty for directories
    and symlinks); ``modified`` is ISO 8601 with offset and ``mtime_ns`` the exact
    time; ``mode`` holds permission bits; ``warning`` says what went wrong while the
    entry was read, if anything, and ``changed_during_backup`` whether the file kept
    changing while it was read (the archived copy may mix old and new data).

    Version 3 adds: owners (``uid``, ``gid``, ``user``, ``group``); ``hardlink``
    entries, whose ``link_target`` is the first name of the same file (size and
    checksum are that file's: together they are the link group); ``xattrs`` (name ->
    raw value, base64 in JSON); ``device`` (major, minor) of a device node; and
    ``data_size`` for a sparse file (the bytes it holds; ``size`` is its length).

    Added since version 3 was first written, and ignored by readers that predate them
    (so the version is unchanged): ``snapshot``, how a file's archived bytes were taken
    other than by reading it (``"sqlite"``: a consistent copy of a live SQLite database
    through SQLite's online backup API, see ``backup.sqlite_snapshot``); and
    ``snapshot_omitted``, the suffixes (``"-wal"``, ``"-shm"``, ``"-journal"``) of the
    files beside that database left out of the archive because the copy already holds
    what they add.

    A ``path`` or ``link_target`` that is not valid UTF-8 is held as Python holds such
    names (surrogate escapes); in JSON it is written readable (``\\xNN`` per bad byte)
    beside its exact bytes in base64 (``path_bytes``, ``link_target_bytes``).
    """

    path: str
    size: int
    checksum: str
    modified: str
    type: str = "file"
    mode: int | None = None
    link_target: str | None = None
    warning: str | None = None
    changed_during_backup: bool = False
    uid: int | None = None
    gid: int | None = None
    user: str | None = None
    group: str | None = None
    mtime_ns: int | None = None
    xattrs: dict[str, bytes] | None = None
    device: tuple[int, int] | None = None
    data_size: int | None = None
    snapshot: str | None = None
    snapshot_omitted: list[str] | None = None

    def to_dict(self) -> dict[str, Any]:
        """Return the entry as plain data ready for JSON."""
        data: dict[str, Any] = {
            "path": self.path,
            "size": self.size,
            "checksum": self.checksum,
            "modified": self.modified,
            "type": self.type,
            "mode": self.mode,
            "link_target": self.link_target,
            "warning": self.warning,
        }
        if self.changed_during_backup:
            data["changed_during_backup"] = True
        for key in ("uid", "gid", "user", "group", "mtime_ns", "data_size", "snapshot"):
            value = getattr(self, key)
            if value is not None:
                data[key] = value
        if self.xattrs:
            data["xattrs"] = {name: base64.b64encode(value).decode("ascii") for name, value in self.xattrs.items()}
        if self.device is not None:
            data["device"] = list(self.device)
        if self.snapshot_omitted:
            data["snapshot_omitted"] = list(self.snapshot_omitted)
        for key in ("path", "link_target"):
            value = data[key]
            if value is not None and not _is_utf8(value):
                data[key] = display_name(value)
                data[key + "_bytes"] = base64.b64encode(_raw_bytes(value)).decode("ascii")
        return data

    @classmethod
    def from_dict(cls, data: Any) -> ManifestEntry:
        """Given one decoded entry, return it; raise ManifestError if malformed.

        Keys this version does not know are ignored, so newer writers stay readable.
        """
        if not isinstance(data, dict):
            raise ManifestError(f"manifest entry is not an object: {data!r:.80}")
        known = {f.name for f in fields(cls)}
        values = {key: value for key, value in data.items() if key in known}
        for key in ("path", "link_target"):
            encoded = data.get(key + "_bytes")
            if encoded is None:
                continue
            try:
                values[key] = base64.b64decode(str(encoded), validate=True).decode("utf-8", "surrogateescape")
            except (binascii.Error, ValueError) as exc:
                raise ManifestError(f"manifest entry {data.get('path')!r:.80}: {key}_bytes is not base64") from exc
        required: tuple[tuple[str, type], ...] = (("path", str), ("size", int), ("checksum", str), ("modified", str))
        for key, kind in required:
            if not isinstance(values.get(key), kind) or isinstance(values.get(key), bool):
                raise ManifestError(
                    f"manifest entry {data.get('path')!r:.80}: field {key!r} missing or not {kind.__name__}"
                )
        optional: tuple[tuple[str, type], ...] = (
            ("type", str),
            ("mode", int),
            ("link_target", str),
            ("warning", str),
            ("changed_during_backup", bool),
            ("uid", int),
            ("gid", int),
            ("user", str),
            ("group", str),
            ("mtime_ns", int),
            ("data_size", int),
            ("snapshot", str),
        )
        for key, expected in optional:
            value = values.get(key)
            if value is not None and (
                not isinstance(value, expected) or (expected is not bool and isinstance(value, bool))
            ):
                raise ManifestError(
                    f"manifest entry {data.get('path')!r:.80}: field {key!r} is not {expected.__name__}"
                )
        values["xattrs"] = _decode_xattrs(data.get("xattrs"), data.get("path"))
        values["device"] = _decode_device(data.get("device"), data.get("path"))
        values["snapshot_omitted"] = _decode_strings(data.get("snapshot_omitted"), "snapshot_omitted", data.get("path"))
        entry = cls(**values)
        if entry.type not in ENTRY_TYPES:
            raise ManifestError(f"manifest entry {entry.path!r}: unknown type {entry.type!r}")
        return entry


def _decode_xattrs(raw: Any, path: Any) -> dict[str, bytes] | None:
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise ManifestError(f"manifest entry {path!r:.80}: field 'xattrs' is not an object")
    try:
        return {str(name): base64.b64decode(str(value), validate=True) for name, value in raw.items()}
    except (binascii.Error, ValueError) as exc:
        raise ManifestError(f"manifest entry {path!r:.80}: an xattr value is not base64") from exc


def _decode_device(raw: Any, path: Any) -> tuple[int, int] | None:
    if raw is None:
        return None
    if not (
        isinstance(raw, list) and len(raw) == 2 and all(isinstance(n, int) and not isinstance(n, bool) for n in raw)
    ):
        raise ManifestError(f"manifest entry {path!r:.80}: field 'device' is not [major, minor]")
    return (raw[0], raw[1])


def _decode_strings(raw: Any, key: str, path: Any) -> list[str] | None:
    if raw is None:
        return None
    if not (isinstance(raw, list) and all(isinstance(item, str) for item in raw)):
        raise ManifestError(f"manifest entry {path!r:.80}: field {key!r} is not a list of strings")
    return list(raw)


@dataclass
class ArchiveInfo:
    """The archive a manifest describes: its file name, size and digest."""

    name: str
    size: int
    checksum: str
    compression: str


@dataclass
class BackupManifest:
    """Everything known about one backup.

    ``files`` lists every entry (directories and symlinks too); ``file_count`` and
    ``total_size`` count regular files only. ``created_at`` is ISO 8601 with offset.
    """

    backup_id: str
    created_at: str
    source_dir: str
    files: list[ManifestEntry] = field(default_factory=list)
    total_size: int = 0
    file_count: int = 0
    metadata: dict[str, Any] = field(default_factory=dict)
    version: int = MANIFEST_VERSION
    checksum_algorithm: str = DEFAULT_ALGORITHM
    archive: ArchiveInfo | None = None
    warnings: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        # Each file counts once: a hard link is another name of a file already counted.
        regular = [entry for entry in self.files if entry.type == "file"]
        if not self.total_size:
            self.total_size = sum(entry.size for entry in regular)
        if not self.file_count:
            self.file_count = len(regular)

    def to_dict(self) -> dict[str, Any]:
        """Return the manifest as plain data ready for JSON."""
        data = self.to_dict_without_files()
        data["files"] = [entry.to_dict() for entry in self.files]
        return data

    def to_dict_without_files(self) -> dict[str, Any]:
        """Return every field but ``files`` as plain data."""
        data = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "files"}
        data["metadata"] = dict(self.metadata)
        data["archive"] = None if self.archive is None else asdict(self.archive)
        data["warnings"] = list(self.warnings)
        data["format"] = MANIFEST_FORMAT
        return data

    def to_json(self, pretty: bool = True) -> str:
        """Return the manifest serialised as JSON text.

        Pretty output indents the manifest's own fields and puts each file entry on
        one line, which keeps a 100,000-entry manifest readable and quick to write.
        """
        if not pretty:
            return _COMPACT.encode(self.to_dict())
        return "".join(self.iter_json())

    def iter_json(self) -> Iterator[str]:
        """Yield the pretty JSON text in pieces, so a large manifest can be written
        without holding all of it (and its encoded copy) in memory at once."""
        data = self.to_dict_without_files()
        head = json.dumps(data, indent=2, ensure_ascii=False)
        if not self.files:
            yield head[:-2] + ',\n  "files": []\n}'
            return
        yield head[:-2] + ',\n  "files": [\n    '
        separator = ""
        for entry in self.files:
            yield separator + _COMPACT.encode(entry.to_dict())
            separator = ",\n    "
        yield "\n  ]\n}"

    def save(self, path: Path) -> None:
        """Write the manifest to ``path`` atomically, mode 0600; raise OSError on failure.

        (What a backup writes goes through its storage instead; this is for callers
        that hold a manifest and want it in a file.)
        """
        path = Path(path)
        temp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(encode_json_text(self.to_json()))
                handle.flush()
                os.fsync(handle.fileno())
            os.rename(temp, path)
        except BaseException:
            temp.unlink(missing_ok=True)
            raise

    def entry_map(self) -> dict[str, ManifestEntry]:
        """Return the entries keyed by path."""
        return {entry.path: entry for entry in self.files}

    @classmethod
    def from_dict(cls, data: Any) -> BackupManifest:
        """Given decoded JSON, return the manifest; raise ManifestError if it is not one."""
        if not isinstance(data, dict):
            raise ManifestError("manifest is not a JSON object")
        version = data.get("version", 1)
        if isinstance(version, bool) or version not in SUPPORTED_VERSIONS:
            raise ManifestError(
                f"unsupported manifest version {version!r} (this obs-backup reads versions "
                f"{', '.join(map(str, sorted(SUPPORTED_VERSIONS)))})"
            )
        for key in ("backup_id", "created_at", "source_dir"):
            if not isinstance(data.get(key), str):
                raise ManifestError(f"manifest field {key!r} is missing or not a string")
        raw_files = data.get("files", [])
        if not isinstance(raw_files, list):
            raise ManifestError("manifest field 'files' is not a list")
        archive = data.get("archive")
        archive_info = None
        if archive is not None:
            try:
                archive_info = ArchiveInfo(
                    name=str(archive["name"]),
                    size=int(archive["size"]),
                    checksum=str(archive["checksum"]),
                    compression=str(archive.get("compression", "")),
                )
            except (KeyError, TypeError, ValueError) as exc:
                raise ManifestError(f"manifest field 'archive' is malformed: {exc}") from exc
        metadata = data.get("metadata", {})
        warnings = data.get("warnings", [])
        if not isinstance(metadata, dict) or not isinstance(warnings, list):
            raise ManifestError("manifest fields 'metadata' or 'warnings' have the wrong type")
        return cls(
            backup_id=data["backup_id"],
            created_at=data["created_at"],
            source_dir=data["source_dir"],
            files=[ManifestEntry.from_dict(item) for item in raw_files],
            total_size=_int_field(data, "total_size"),
            file_count=_int_field(data, "file_count"),
            metadata=metadata,
            version=version,
            checksum_algorithm=str(data.get("checksum_algorithm", DEFAULT_ALGORITHM)),
            archive=archive_info,
            warnings=[str(item) for item in warnings],
        )

    @classmethod
    def from_json(cls, json_str: str) -> BackupManifest:
        """Given JSON text, return the manifest; raise ManifestError if invalid."""
        try:
            data = json.loads(json_str)
        except json.JSONDecodeError as exc:
            raise ManifestError(
                f"manifest is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
            ) from exc
        return cls.from_dict(data)


def _int_field(data: dict[str, Any], key: str) -> int:
    value = data.get(key, 0)
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ManifestError(f"manifest field {key!r} is not a non-negative integer")
    return value
