"""Plans: what a backup or a restore would do, as data.

``plan_backup`` and ``plan_restore`` decide what would be read, written and left out,
and why, without writing anything: the frozen plan they return is what ``--dry-run``
prints, what the tests inspect, and what ``backup.core.execute_plan`` hands to the
executors (``backup.create``, ``backup.restore``), which carry out exactly that plan:
its backup id, its storage, its names. Nothing here imports an executor.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import MappingProxyType
from typing import Any

from .catalog import format_backup_id
from .config import BackupConfig
from .errors import ArchiveError, ConfigError, IdentityError, ManifestError, UnsafeArchiveError
from .fstree import LOCAL_FILESYSTEM, FileSystem
from .keys import IDENTITY_ENV, Identities, Recipients, load_recipients
from .manifest import MANIFEST_SUFFIX, BackupManifest, manifest_name_for, read_manifest
from .manifest.files import check_identities, read_sidecar, sidecar_for
from .manifest.sidecar import ENCRYPTED_SUFFIX, SIDECAR_SUFFIX
from .safety import DEVICE_KINDS, MemberChecker, Selection, is_selected, normalize_member_name, read_warnings
from .scan import Exclusion, SourceEntry, scan_source
from .storage import locate, open_storage
from .storage.base import BackupStorage, ObjectRef
from .stream.compression import archive_suffix
from .stream.tarreader import ArchiveReader, is_encrypted

__all__ = [
    "BackupPlan",
    "RestoreEntry",
    "RestorePlan",
    "plan_backup",
    "plan_restore",
    "utc_now",
]


def utc_now() -> datetime:
    """The real clock, in UTC (the default of every ``now=``)."""
    return datetime.now(UTC)


@dataclass(frozen=True)
class BackupPlan:
    """What a backup would do: the entries to archive, what is left out and why, and
    where the archive and manifest would go. ``backup_id`` is the id it will claim; a
    second backup in the same second gets ``<id>-2`` when executed.

    ``storage`` is the backup location and ``filesystem`` the source tree's file
    system: the two seams through which everything is read and written.
    """

    config: BackupConfig
    backup_id: str
    created_at: datetime
    storage: BackupStorage
    archive_name: str
    manifest_name: str | None
    entries: tuple[SourceEntry, ...]
    excluded: tuple[Exclusion, ...]
    problems: tuple[str, ...]
    source_root: str = ""
    metadata: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    filesystem: FileSystem = LOCAL_FILESYSTEM
    # About the settings, not the backup (an exclude pattern that matched nothing):
    # shown to whoever runs it, not recorded as the backup's warnings.
    notices: tuple[str, ...] = ()
    # Files listed but gone before the walk examined them, with their problem lines
    # (a SQLite journal that comes and goes is expected when its database is copied
    # through a snapshot).
    vanished: tuple[tuple[str, str], ...] = ()
    # An encrypted backup: the recipients, and the name of its plaintext sidecar.
    recipients: Recipients | None = None
    sidecar_name: str | None = None

    @property
    def archive_path(self) -> Path | None:
        """The archive's local file (None in a storage without local files)."""
        return self.storage.local_path(self.archive_name)

    @property
    def manifest_path(self) -> Path | None:
        """The manifest's local file, if one is written and the storage is local."""
        return None if self.manifest_name is None else self.storage.local_path(self.manifest_name)

    @property
    def archive_label(self) -> str:
        """Where the archive would be, in any storage (a path, a URL)."""
        return self.storage.describe(self.archive_name)

    @property
    def total_bytes(self) -> int:
        """Bytes of regular-file data the backup would read."""
        return sum(entry.size for entry in self.entries if entry.kind == "file")

    @property
    def size_estimate(self) -> int:
        """An upper estimate of the uncompressed archive's size: the data, plus a header
        (with room for long names) per entry; an object store sizes its parts by it."""
        return self.total_bytes + 2048 * len(self.entries) + (1 << 20)

    @property
    def file_count(self) -> int:
        """Number of regular files the backup would read."""
        return sum(1 for entry in self.entries if entry.kind == "file")

    def to_dict(self) -> dict[str, Any]:
        """Return the plan as JSON-ready data."""
        return {
            "action": "create",
            "backup_id": self.backup_id,
            "source_dir": str(self.config.source_dir),
            "archive_path": self.archive_label,
            "manifest_path": None if self.manifest_name is None else self.storage.describe(self.manifest_name),
            "compression": self.config.compression,
            "encrypted_to": list(self.recipients.keys) if self.recipients else [],
            "file_count": self.file_count,
            "entry_count": len(self.entries),
            "total_bytes": self.total_bytes,
            "entries": [{"path": e.path, "type": e.kind, "size": e.size} for e in self.entries],
            "excluded": [{"path": x.path, "reason": x.reason} for x in self.excluded],
            "problems": list(self.problems),
            "notices": list(self.notices),
        }


def plan_backup(
    config: BackupConfig,
    files: Iterable[str | os.PathLike[str]] | None = None,
    metadata: Mapping[str, Any] | None = None,
    *,
    now: Callable[[], datetime] = utc_now,
    storage: BackupStorage | None = None,
    filesystem: FileSystem = LOCAL_FILESYSTEM,
) -> BackupPlan:
    """Given a configuration (and optionally the files to back up), return the backup plan.

    Reads the source tree's metadata but no file contents, and writes nothing.
    ``storage`` is where the backup goes (default: ``config.backup_dir``).
    Raise ConfigError for invalid settings, SourceError for an unreadable source or a
    file outside it.
    """
    config = config.validated()
    moment = now()
    if moment.tzinfo is None:
        raise ConfigError("now() must return an aware datetime")
    storage = storage if storage is not None else open_storage(config.backup_dir)
    if storage.manifest_commits and not config.include_manifest:
        raise ConfigError(
            f"{storage.location}: in object storage every backup has a manifest (writing it is what "
            "completes a backup); drop --no-manifest",
            storage.location,
        )
    recipients = load_recipients(config.encrypt_to, config.recipients_file) if config.encrypted else None
    if recipients is not None and not config.include_manifest:
        raise ConfigError(
            "an encrypted backup has a manifest (its sidecar records the manifest's checksum); drop --no-manifest"
        )
    scan = scan_source(
        config.source_dir,
        files=files,
        exclude=config.exclude,
        skip_dir=config.backup_dir if isinstance(config.backup_dir, Path) else None,
        on_error=config.on_read_error,
        filesystem=filesystem,
    )
    backup_id = format_backup_id(config.prefix, moment)
    sealed = ENCRYPTED_SUFFIX if recipients is not None else ""
    return BackupPlan(
        config=config,
        backup_id=backup_id,
        created_at=moment.astimezone(),
        storage=storage,
        archive_name=backup_id + archive_suffix(config.compression) + sealed,
        manifest_name=backup_id + MANIFEST_SUFFIX + sealed if config.include_manifest else None,
        recipients=recipients,
        sidecar_name=backup_id + SIDECAR_SUFFIX if recipients is not None else None,
        entries=scan.entries,
        excluded=scan.excluded,
        problems=scan.problems,
        source_root=scan.root,
        metadata=MappingProxyType(dict(metadata or {})),
        filesystem=filesystem,
        notices=tuple(_pattern_notices(scan.unmatched_excludes, scan.root)),
        vanished=scan.vanished,
    )


def _pattern_notices(unmatched: Sequence[str], root: str) -> Iterator[str]:
    for pattern in unmatched:
        if pattern.startswith(root.rstrip("/") + "/") or pattern == root:
            yield (
                f"exclude pattern {pattern!r} matched nothing: patterns are relative to the source {root}, "
                f"so write {'/' + pattern[len(root) :].strip('/')!r}"
            )
        else:
            yield f"exclude pattern {pattern!r} matched nothing in {root}"


@dataclass(frozen=True)
class RestoreEntry:
    """One entry a restore would write: ``size`` is its length, ``data_size`` the bytes
    it would take (less for a sparse file; none for another name of a file)."""

    path: str
    kind: str
    size: int
    data_size: int = 0


@dataclass(frozen=True)
class RestorePlan:
    """What a restore would do: the entries it would write, those that already exist in
    the target (``conflicts``), and how it would check them."""

    archive: ObjectRef
    restore_dir: Path
    manifest_object: ObjectRef | None
    manifest: BackupManifest | None
    entries: tuple[RestoreEntry, ...]
    conflicts: tuple[str, ...]
    paths: tuple[str, ...] | None
    overwrite: bool
    verify_checksums: bool
    allow_external_links: bool = False
    warnings: tuple[str, ...] = ()
    same_owner: bool = False
    numeric_owner: bool = False
    link_sources: frozenset[str] = frozenset()
    skipped: tuple[RestoreEntry, ...] = ()
    selection: Selection = field(default_factory=Selection)
    # What decrypts an encrypted backup (checked against its recipients when planned).
    identities: Identities | None = field(default=None, repr=False)

    @property
    def makes_devices(self) -> bool:
        """Whether device nodes are made: only by root, and only from an archive whose
        manifest vouches for them (a stranger's device node could open this machine's disks)."""
        return os.geteuid() == 0 and self.manifest is not None

    @property
    def archive_path(self) -> Path | None:
        """The archive's local file (None in a storage without local files)."""
        return self.archive.path

    @property
    def manifest_path(self) -> Path | None:
        """The manifest's local file, if there is one."""
        return None if self.manifest_object is None else self.manifest_object.path

    @property
    def total_bytes(self) -> int:
        """Bytes of file data the restore would write."""
        return sum(entry.size for entry in self.entries)

    def to_dict(self) -> dict[str, Any]:
        """Return the plan as JSON-ready data."""
        return {
            "action": "restore",
            "archive_path": self.archive.label,
            "restore_dir": str(self.restore_dir),
            "manifest_path": None if self.manifest_object is None else self.manifest_object.label,
            "verify_checksums": self.verify_checksums and self.manifest is not None,
            "overwrite": self.overwrite,
            "entry_count": len(self.entries),
            "total_bytes": self.total_bytes,
            "entries": [{"path": e.path, "type": e.kind, "size": e.size} for e in self.entries],
            "conflicts": list(self.conflicts),
            "skipped": [{"path": e.path, "type": e.kind} for e in self.skipped],
            "warnings": list(self.warnings),
        }


def plan_restore(
    archive_path: Path | ObjectRef,
    restore_dir: Path,
    *,
    paths: Sequence[str] | None = None,
    overwrite: bool = False,
    verify_checksums: bool = True,
    allow_external_links: bool = False,
    list_archive: bool = True,
    same_owner: bool | None = None,
    numeric_owner: bool = False,
    include: Sequence[str] = (),
    exclude: Sequence[str] = (),
    identities: Identities | None = None,
) -> RestorePlan:
    """Given an archive and a target directory, return the restore plan; write nothing.

    The entries come from the manifest when there is one, otherwise from one pass over
    the archive. With ``list_archive=False`` (a restore about to run, with no selection)
    that pass is skipped, leaving ``entries`` and ``conflicts`` empty: the restore then
    reads the archive once, and finds conflicts as it installs. ``paths`` restricts the
    restore to those paths and what is under them; ``include`` and ``exclude``
    patterns narrow it further (see ``backup.safety.Selection``). ``same_owner`` (default: whether
    this process is root) gives entries their archived owners, by name unless
    ``numeric_owner``; it is refused for anyone but root. An encrypted backup is
    decrypted with ``identities``.
    Raise ArchiveError if the archive is missing or unreadable, ManifestError if its
    manifest is damaged while verification is on, ConfigError for a path not in the
    backup, IdentityError if it is encrypted and no identity given is one of its recipients.
    """
    archive = locate(archive_path)
    restore_dir = Path(restore_dir)
    try:
        archive.storage.stat(archive.name)
    except FileNotFoundError:
        raise ArchiveError(f"{archive.label}: archive not found", archive.label) from None
    except OSError as exc:
        raise ArchiveError(f"{archive.label}: cannot read archive: {exc.strerror or exc}", archive.label) from exc
    selection = Selection(_normalize_selection(paths), tuple(include), tuple(exclude))
    manifest_object: ObjectRef | None = archive.sibling(manifest_name_for(archive.name))
    manifest = None
    warnings: list[str] = []
    identities = _identities_for(archive, identities, verify_checksums, warnings)
    if manifest_object is not None and manifest_object.exists():
        try:
            manifest = read_manifest(manifest_object, identities)
        except ManifestError as exc:
            if verify_checksums:
                raise
            warnings.append(f"{exc}; restoring without it")
            manifest_object = None
    else:
        if verify_checksums and sidecar_for(archive) is not None:
            # An encrypted backup always has its manifest: without it nothing checks the files.
            label = archive.sibling(manifest_name_for(archive.name)).label
            raise ManifestError(
                f"{label}: encrypted manifest not found, so the files cannot be checked; "
                "restore with --no-verify to restore them unchecked",
                label,
            )
        manifest_object = None
    if same_owner is None:
        same_owner = os.geteuid() == 0
    elif same_owner and os.geteuid() != 0:
        raise ConfigError("only root can give restored files their archived owners")
    link_sources: frozenset[str] = frozenset()
    if manifest is not None:
        entries = [
            RestoreEntry(e.path, e.type, e.size, _data_size(e.type, e.size, e.data_size)) for e in manifest.files
        ]
        link_sources = frozenset(
            e.link_target
            for e in manifest.files
            if e.type == "hardlink" and e.link_target and selection(e.path) and not selection(e.link_target)
        )
    elif list_archive or selection.paths is not None or selection.patterns:
        links: dict[str, str] = {}
        entries = _list_archive(archive, allow_external_links, selection, warnings, links, identities)
        # As from a manifest: the first name of a file whose later name is restored
        # without it is held aside for that name.
        link_sources = frozenset(target for name, target in links.items() if selection(name) and not selection(target))
    else:
        entries = []
    chosen = tuple(entry for entry in entries if selection(entry.path, entry.kind == "dir"))
    for path in selection.paths or ():
        if path and not any(is_selected(entry.path, (path,)) for entry in chosen):
            raise ConfigError(f"{path}: not in the backup {archive.name}", path)
    if selection.patterns and entries and not chosen:
        raise ConfigError(f"{archive.label}: no entry matches the --include and --exclude patterns given")
    skipped: tuple[RestoreEntry, ...] = ()
    if not (os.geteuid() == 0 and manifest is not None):
        skipped = tuple(entry for entry in chosen if entry.kind in DEVICE_KINDS)
        chosen = tuple(entry for entry in chosen if entry.kind not in DEVICE_KINDS)
    return RestorePlan(
        archive=archive,
        restore_dir=restore_dir,
        manifest_object=manifest_object,
        manifest=manifest,
        entries=chosen,
        conflicts=tuple(_conflicts(restore_dir, chosen)),
        paths=selection.paths,
        overwrite=overwrite,
        verify_checksums=verify_checksums,
        allow_external_links=allow_external_links,
        warnings=tuple(warnings),
        same_owner=same_owner,
        numeric_owner=numeric_owner,
        link_sources=link_sources,
        skipped=skipped,
        selection=selection,
        identities=identities,
    )


def _identities_for(
    archive: ObjectRef, identities: Identities | None, verify_checksums: bool, warnings: list[str]
) -> Identities | None:
    """Given an archive and the identities given, return those that decrypt it (None if
    it is not encrypted); raise IdentityError if it is encrypted and none of them is
    one of the recipients its sidecar names (or none was given)."""
    sidecar_ref = sidecar_for(archive)
    if sidecar_ref is None and not is_encrypted(archive):
        return None
    if sidecar_ref is None or not sidecar_ref.exists():
        if identities is None:
            raise IdentityError(
                f"{archive.label}: archive is age-encrypted, and no sidecar says to whom; give the identity "
                f"file that decrypts it (--identity FILE, or {IDENTITY_ENV})",
                archive.label,
            )
        if sidecar_ref is not None:
            warnings.append(f"{sidecar_ref.label}: sidecar not found; decrypting with the identity given")
        return identities
    try:
        sidecar = read_sidecar(sidecar_ref)
    except ManifestError as exc:
        if identities is None:
            raise
        # Only the recipients are lost with it: the manifest, decrypted, still checks every file.
        warnings.append(f"{exc}; decrypting with the identity given")
        return identities
    return check_identities(archive.label, sidecar.recipients, identities)


def _data_size(kind: str, size: int, data_size: int | None) -> int:
    if kind != "file":
        return 0
    return size if data_size is None else data_size


def _normalize_selection(paths: Sequence[str] | None) -> tuple[str, ...] | None:
    if paths is None:
        return None
    selection = []
    for path in paths:
        try:
            selection.append(normalize_member_name(str(path).replace(os.sep, "/")))
        except UnsafeArchiveError as exc:
            raise ConfigError(f"{path}: cannot restore this path: it is absolute or has '..'", path) from exc
    return None if "" in selection else tuple(selection)


def _list_archive(
    archive: ObjectRef,
    allow_external_links: bool,
    selection: Selection,
    warnings: list[str],
    links: dict[str, str] | None = None,
    identities: Identities | None = None,
) -> list[RestoreEntry]:
    """Given an archive without a manifest, return the entries it would restore (a
    repeated file once, as its last copy) and add how it was read to ``warnings``; fill
    ``links`` with each hard link's name and the name it links to."""
    checker = MemberChecker(archive.label, allow_external_links, foreign=True)
    entries: dict[str, RestoreEntry] = {}
    with ArchiveReader(archive, identities=identities) as reader:
        for member in reader.members():
            safe = checker.check(member, writes=selection(normalize_member_name(member.name), member.isdir()))
            if safe is not None:
                entries.pop(safe.name, None)
                entries[safe.name] = RestoreEntry(safe.name, safe.kind, safe.size, safe.data_size)
                if links is not None and safe.kind == "hardlink" and safe.link_target:
                    links[safe.name] = safe.link_target
        checker.recheck_links()
        warnings.extend(reader.warnings)
    warnings.extend(read_warnings(archive.label, checker))
    return list(entries.values())


def _conflicts(restore_dir: Path, entries: Sequence[RestoreEntry]) -> list[str]:
    if not restore_dir.is_dir():
        return []
    conflicts = []
    for entry in entries:
        target = os.path.join(restore_dir, entry.path)
        if not os.path.lexists(target):
            continue
        if entry.kind == "dir" and os.path.isdir(target) and not os.path.islink(target):
            continue
        conflicts.append(entry.path)
    return conflicts
