"""The library's main operations: create, restore and verify backups.

Each is a plan followed by its execution (see ``backup.plan``). Operational failures
(an unreadable file, a full disk, a damaged archive) come back as a result with
``success=False`` and a one-line ``error`` naming the path; they are not raised. Nor
is anything else: an unexpected error (a bug) is a failed result too, so that a
scheduled run records it and reaches ``on_error`` instead of dying.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from .config import BackupConfig, BackupResult
from .create import execute_backup
from .errors import BackupError
from .fstree import LOCAL_FILESYSTEM, FileSystem
from .keys import Identities, load_identities
from .plan import BackupPlan, RestorePlan, plan_backup, plan_restore, utc_now
from .progress import ProgressCallback
from .restore import execute_restore
from .storage.base import BackupStorage
from .verify import VerifyReport, verify_backup

__all__ = [
    "BackupConfig",
    "BackupResult",
    "VerifyReport",
    "create_backup",
    "execute_plan",
    "restore_backup",
    "verify_backup",
]


def execute_plan(plan: BackupPlan | RestorePlan, progress: ProgressCallback | None = None) -> BackupResult:
    """Given a backup or restore plan, carry it out and return the result.

    Operational failures, and unexpected ones, come back as ``success=False`` with a
    one-line ``error``; nothing is raised.
    """
    if isinstance(plan, BackupPlan):
        return execute_backup(plan, progress)
    return execute_restore(plan, progress)


def create_backup(
    config: BackupConfig,
    files: Iterable[str | os.PathLike[str]] | None = None,
    metadata: Mapping[str, Any] | None = None,
    *,
    progress: ProgressCallback | None = None,
    now: Callable[[], datetime] = utc_now,
    storage: BackupStorage | None = None,
    filesystem: FileSystem = LOCAL_FILESYSTEM,
) -> BackupResult:
    """Given a configuration (and optionally the files to include), write one backup.

    ``storage`` is where it goes (default: ``config.backup_dir``); ``filesystem`` is how
    the source is read (tests pass one that fails on purpose). Return the result: the
    archive and manifest paths and the manifest on success, or ``success=False`` and a
    one-line ``error``.
    """
    started = time.monotonic()
    try:
        plan = plan_backup(config, files, metadata, now=now, storage=storage, filesystem=filesystem)
    except BackupError as exc:
        return BackupResult(success=False, error=str(exc), duration_seconds=time.monotonic() - started)
    except OSError as exc:
        where = exc.filename or getattr(config, "source_dir", "")
        error = f"{where}: cannot plan the backup: {exc.strerror or exc}"
        return BackupResult(success=False, error=error, duration_seconds=time.monotonic() - started)
    except Exception as exc:
        error = f"backup failed: internal error: {type(exc).__name__}: {exc}"
        return BackupResult(success=False, error=error, duration_seconds=time.monotonic() - started)
    return execute_plan(plan, progress)


def restore_backup(
    archive_path: Path,
    restore_dir: Path,
    verify_checksums: bool = True,
    *,
    overwrite: bool = False,
    paths: Sequence[str] | None = None,
    allow_external_links: bool = False,
    progress: ProgressCallback | None = None,
    same_owner: bool | None = None,
    numeric_owner: bool = False,
    identity: str | os.PathLike[str] | Identities | None = None,
) -> BackupResult:
    """Given an archive and a target directory, restore the archive into it.

    With ``verify_checksums`` every restored file is checked against the manifest
    before anything is moved into ``restore_dir``. Existing entries are replaced only
    with ``overwrite``. ``paths`` restores only those paths (and what is under them).
    Symlinks pointing outside the target are refused unless ``allow_external_links``.
    As root, entries get their archived owners (by name, or by number with
    ``numeric_owner``) unless ``same_owner=False``, as with GNU tar's
    ``--no-same-owner``. An encrypted backup is decrypted with ``identity`` (an age
    identity file, or identities already loaded). Return the result; on failure
    ``restore_dir`` is unchanged.
    """
    started = time.monotonic()
    try:
        identities = load_identities(identity) if isinstance(identity, str | os.PathLike) else identity
        plan = plan_restore(
            archive_path,
            restore_dir,
            paths=paths,
            overwrite=overwrite,
            verify_checksums=verify_checksums,
            allow_external_links=allow_external_links,
            list_archive=False,  # no manifest: one pass, the restore itself, reads the archive
            same_owner=same_owner,
            numeric_owner=numeric_owner,
            identities=identities,
        )
    except BackupError as exc:
        error = str(exc)
    except OSError as exc:
        error = f"{exc.filename or archive_path}: cannot plan the restore: {exc.strerror or exc}"
    except Exception as exc:
        error = f"{archive_path}: restore failed: internal error: {type(exc).__name__}: {exc}"
    else:
        return execute_plan(plan, progress)
    return BackupResult(
        success=False, backup_path=Path(restore_dir), error=error, duration_seconds=time.monotonic() - started
    )
