"""The configurations of a backup and of the scheduler, and the result of an operation.

Both configurations are the seed's contract (names, fields and defaults), and both are
built on ``backup.settings``: every default below is read from that table, so the
library, the TOML file and the command line cannot disagree. ``backup.core`` and
``backup.scheduler`` re-export them under their seed paths.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from datetime import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from .errors import ConfigError
from .hashing import new_hasher
from .locations import S3Location, as_location
from .retention import RetentionPolicy
from .settings import field_default
from .stream.compression import check_level, normalize_compression

if TYPE_CHECKING:
    from .manifest import BackupManifest

__all__ = ["BackupConfig", "BackupResult", "ReadErrorPolicy", "SchedulerConfig"]

ReadErrorPolicy = Literal["fail", "skip"]

_PREFIX = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


@dataclass
class BackupConfig:
    """What to back up, where to, and how.

    ``source_dir`` and ``backup_dir`` may be given as strings; ``backup_dir`` may be an
    object store's ``s3://bucket/prefix``. ``exclude`` holds
    gitignore-style patterns matched against paths relative to ``source_dir``.
    ``compression`` is ``"gz"``, ``"bz2"``, ``"xz"``, ``"zst"`` or ``""`` for none;
    ``compression_level`` None means the format's default. ``on_read_error`` decides
    what a source file that cannot be read does: ``"fail"`` the backup, or ``"skip"``
    it and record the problem in the result and the manifest. With ``encrypt_to``
    (age recipients, ``age1...``) or ``recipients_file`` (files of them), the archive
    and manifest are encrypted to those recipients (see ``backup.manifest.sidecar``).
    """

    # Defaults are read from the settings table once, at import; all are immutable.
    source_dir: Path
    backup_dir: Path | S3Location
    prefix: str = field_default("prefix")
    compression: str = field_default("compression")
    include_manifest: bool = field_default("include_manifest")
    exclude: Sequence[str] = field_default("exclude")
    compression_level: int | None = field_default("compression_level")
    checksum_algorithm: str = field_default("checksum_algorithm")
    on_read_error: ReadErrorPolicy = field_default("on_read_error")  # noqa: RUF009
    sqlite_snapshot: bool = field_default("sqlite_snapshot")
    encrypt_to: Sequence[str] = field_default("encrypt_to")
    recipients_file: Sequence[Path] = field_default("recipients_file")

    def __post_init__(self) -> None:
        self.source_dir = Path(self.source_dir)
        self.backup_dir = as_location(self.backup_dir)
        if isinstance(self.exclude, str):
            self.exclude = (self.exclude,)
        self.exclude = tuple(self.exclude)
        if isinstance(self.encrypt_to, str):
            self.encrypt_to = (self.encrypt_to,)
        self.encrypt_to = tuple(self.encrypt_to)
        files: Any = self.recipients_file
        self.recipients_file = (Path(files),) if isinstance(files, str | os.PathLike) else tuple(map(Path, files))

    @property
    def encrypted(self) -> bool:
        """Whether backups are encrypted (to recipients given, or named in files)."""
        return bool(self.encrypt_to or self.recipients_file)

    def validated(self) -> BackupConfig:
        """Return a copy with canonical compression and level; raise ConfigError if invalid."""
        if not _PREFIX.fullmatch(self.prefix):
            raise ConfigError(
                f"invalid prefix {self.prefix!r}: use letters, digits, '_', '-' or '.', starting with a letter or digit"
            )
        if _same_directory(self.source_dir, self.backup_dir):
            # Every backup would hold all the earlier ones: 1, 2, 4, 8 ... times the data.
            raise ConfigError(
                f"{self.backup_dir}: the backup directory is the source directory; keep backups outside it "
                "(or in a directory below it, which backups leave out)",
                str(self.backup_dir),
            )
        compression = normalize_compression(self.compression)
        level = check_level(compression, self.compression_level)
        new_hasher(self.checksum_algorithm)
        if self.on_read_error not in ("fail", "skip"):
            raise ConfigError(f"on_read_error must be 'fail' or 'skip', not {self.on_read_error!r}")
        return dataclasses.replace(self, compression=compression, compression_level=level)


def _same_directory(a: Path, b: Path | S3Location) -> bool:
    if not isinstance(b, Path):
        return False
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False  # one does not exist (yet): it cannot be the other


@dataclass
class SchedulerConfig:
    """Configuration for the backup scheduler.

    The first six fields are the seed's contract. ``policy`` replaces the plain
    ``retention_days`` rule when given (``None`` keeps ``retention_days`` days).
    ``lock_timeout`` is how long a run waits for another process using the same
    backup directory. Every field a backup takes is here too, with the same meaning
    as in ``BackupConfig`` (``backup_config()`` builds one from them).
    """

    source_dir: Path
    backup_dir: Path | S3Location
    schedule_time: time = field_default("schedule_time", "schedule")  # noqa: RUF009
    retention_days: int = field_default("retention_days", "schedule")
    tz_name: str = field_default("tz_name")
    prefix: str = field_default("prefix", "schedule")
    compression: str = field_default("compression", "schedule")
    compression_level: int | None = field_default("compression_level", "schedule")
    exclude: Sequence[str] = field_default("exclude", "schedule")
    policy: RetentionPolicy | None = None
    catch_up: bool = field_default("catch_up", "schedule")
    metrics_file: Path | None = field_default("metrics_file", "schedule")  # noqa: RUF009
    lock_timeout: float = field_default("lock_timeout")
    on_read_error: ReadErrorPolicy = field_default("on_read_error", "schedule")  # noqa: RUF009
    include_manifest: bool = field_default("include_manifest", "schedule")
    checksum_algorithm: str = field_default("checksum_algorithm", "schedule")
    sqlite_snapshot: bool = field_default("sqlite_snapshot", "schedule")
    encrypt_to: Sequence[str] = field_default("encrypt_to", "schedule")
    recipients_file: Sequence[Path] = field_default("recipients_file", "schedule")
    before_backup: Sequence[str] = field_default("before_backup", "schedule")
    after_backup: Sequence[str] = field_default("after_backup", "schedule")
    on_error: Sequence[str] = field_default("on_error", "schedule")
    hook_timeout: float = field_default("hook_timeout", "schedule")
    check_after: bool = field_default("check_after", "schedule")
    # Where to copy the backups after each run (directories or s3:// locations).
    copy_to: Sequence[Path | S3Location] = field_default("copy_to", "schedule")

    def __post_init__(self) -> None:
        self.source_dir = Path(self.source_dir)
        self.backup_dir = as_location(self.backup_dir)
        self.copy_to = tuple(as_location(item) for item in self.copy_to)

    def retention_policy(self) -> RetentionPolicy:
        """Return the policy in force: ``policy`` if set, else ``retention_days`` days."""
        return self.policy if self.policy is not None else RetentionPolicy.from_days(self.retention_days)

    def backup_config(self) -> BackupConfig:
        """Return the configuration of one scheduled backup (every field it shares)."""
        shared: dict[str, Any] = {f.name: getattr(self, f.name) for f in fields(BackupConfig)}
        return BackupConfig(**shared)


@dataclass
class BackupResult:
    """The outcome of a create or restore.

    On failure ``success`` is False and ``error`` is one line naming the path at fault.
    For a restore, ``backup_path`` is the directory restored into. ``warnings`` lists
    everything that did not stop the operation but that its user should know (a file
    that changed while it was read, a file skipped, an archive with no manifest);
    ``changed_files`` names the files whose archived copy may mix old and new data
    because they kept changing while they were read. ``archive`` says where the archive
    is in any storage (a path, a URL); ``backup_path`` is its local file, if it has one.
    """

    success: bool
    backup_path: Path | None = None
    manifest_path: Path | None = None
    manifest: BackupManifest | None = None
    error: str | None = None
    duration_seconds: float = 0.0
    warnings: list[str] = field(default_factory=list)
    backup_id: str | None = None
    archive_size: int = 0
    entry_count: int = 0
    verified: bool = False
    changed_files: list[str] = field(default_factory=list)
    archive: str | None = None
