"""The settings of a backup and the result of an operation.

Both the planner and the executor need these, so they live here rather than in
``core``; ``backup.core`` re-exports them so ``from backup.core import BackupConfig``
keeps working.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from .checksum import DEFAULT_ALGORITHM, new_hasher
from .compression import check_level, normalize_compression
from .errors import ConfigError

if TYPE_CHECKING:
    from .manifest import BackupManifest

__all__ = ["BackupConfig", "BackupResult", "ReadErrorPolicy"]

ReadErrorPolicy = Literal["fail", "skip"]

_PREFIX = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


@dataclass
class BackupConfig:
    """What to back up, where to, and how.

    ``source_dir`` and ``backup_dir`` may be given as strings. ``exclude`` holds
    gitignore-style patterns matched against paths relative to ``source_dir``.
    ``compression`` is ``"gz"``, ``"bz2"``, ``"xz"``, ``"zst"`` or ``""`` for none;
    ``compression_level`` None means the format's default. ``on_read_error`` decides
    what a source file that cannot be read does: ``"fail"`` the backup, or ``"skip"``
    it and record the problem in the result and the manifest.
    """

    source_dir: Path
    backup_dir: Path
    prefix: str = "backup"
    compression: str = "gz"
    include_manifest: bool = True
    exclude: Sequence[str] = ()
    compression_level: int | None = None
    checksum_algorithm: str = DEFAULT_ALGORITHM
    on_read_error: ReadErrorPolicy = "fail"

    def __post_init__(self) -> None:
        self.source_dir = Path(self.source_dir)
        self.backup_dir = Path(self.backup_dir)
        if isinstance(self.exclude, str):
            self.exclude = (self.exclude,)
        self.exclude = tuple(self.exclude)

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
                self.backup_dir,
            )
        compression = normalize_compression(self.compression)
        level = check_level(compression, self.compression_level)
        new_hasher(self.checksum_algorithm)
        if self.on_read_error not in ("fail", "skip"):
            raise ConfigError(f"on_read_error must be 'fail' or 'skip', not {self.on_read_error!r}")
        return BackupConfig(
            source_dir=self.source_dir,
            backup_dir=self.backup_dir,
            prefix=self.prefix,
            compression=compression,
            include_manifest=self.include_manifest,
            exclude=self.exclude,
            compression_level=level,
            checksum_algorithm=self.checksum_algorithm,
            on_read_error=self.on_read_error,
        )


def _same_directory(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False  # one does not exist (yet): it cannot be the other


@dataclass
class BackupResult:
    """The outcome of a create or restore.

    On failure ``success`` is False and ``error`` is one line naming the path at fault.
    For a restore, ``backup_path`` is the directory restored into. ``warnings`` lists
    everything that did not stop the operation but that its user should know (a file
    that changed while it was read, a file skipped, an archive with no manifest);
    ``changed_files`` names the files whose archived copy may mix old and new data
    because they kept changing while they were read.
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
