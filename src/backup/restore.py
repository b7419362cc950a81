"""Executing a restore plan: extract beside the target, verify, then move into place.

Nothing is written under the target until every member has been extracted into a
staging directory and, with verification on, checked against the manifest. Files
are written by this module (never by ``tarfile``): each is created exclusively,
without following links, and hashed as it is written. Symlinks are created last, so
no member is ever written through one. A failed restore removes its staging
directory and leaves the target as it was; a killed one leaves a hidden staging
directory beside the target, which the next restore into that target removes.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import stat
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from .checksum import DEFAULT_ALGORITHM, new_hasher
from .config import BackupResult
from .errors import ArchiveError, BackupError, RestoreConflictError, StorageError, VerificationError
from .safety import MemberChecker, SafeMember, is_selected
from .tarreader import ArchiveReader
from .tarwriter import ProgressCallback
from .verify import compare_with_manifest

if TYPE_CHECKING:
    import tarfile

    from .plan import RestorePlan

__all__ = ["execute_restore"]

_FILE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_STAGING = re.compile(r"^\.(?P<target>.+)\.obs-(?:restore|replaced)-(?P<pid>\d+)-[0-9a-f]+$")
_SHOWN = 5


@dataclass
class _Extracted:
    members: dict[str, SafeMember] = field(default_factory=dict)
    digests: dict[str, str] = field(default_factory=dict)
    dirs: list[SafeMember] = field(default_factory=list)
    bytes_written: int = 0
    archive_size: int = 0
    archive_digest: str = ""


def execute_restore(plan: RestorePlan, progress: ProgressCallback | None = None) -> BackupResult:
    """Given a restore plan, carry it out; return the result (never raises for bad input).

    On failure the target directory is as it was before and ``error`` says why.
    """
    started = time.monotonic()
    target = Path(os.path.abspath(plan.restore_dir))
    staging: Path | None = None
    warnings = list(plan.warnings)
    try:
        if plan.conflicts and not plan.overwrite:
            raise _conflict_error(target, list(plan.conflicts))
        staging, root_mode = _make_staging(target)
        extracted = _extract(plan, staging, progress)
        verified = _verify(plan, extracted, target, warnings)
        _install(staging, target, plan.overwrite, extracted.dirs, root_mode)
        staging = None if not staging.exists() else staging
        _finish_directories(target, extracted.dirs)
    except BackupError as exc:
        return _failed(plan, started, str(exc), warnings)
    except OSError as exc:
        where = exc.filename or target
        return _failed(plan, started, f"{where}: restore failed: {exc.strerror or exc}", warnings)
    finally:
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)
    return BackupResult(
        success=True,
        backup_path=target,
        manifest_path=plan.manifest_path,
        manifest=plan.manifest,
        duration_seconds=time.monotonic() - started,
        warnings=warnings,
        backup_id=plan.manifest.backup_id if plan.manifest else None,
        archive_size=extracted.archive_size,
        entry_count=len(extracted.members),
        verified=verified,
    )


def _failed(plan: RestorePlan, started: float, error: str, warnings: list[str]) -> BackupResult:
    return BackupResult(
        success=False,
        backup_path=Path(plan.restore_dir),
        manifest_path=plan.manifest_path,
        manifest=plan.manifest,
        error=error,
        duration_seconds=time.monotonic() - started,
        warnings=warnings,
    )


def _conflict_error(target: Path, conflicts: list[str]) -> RestoreConflictError:
    shown = ", ".join(conflicts[:_SHOWN]) + (" ..." if len(conflicts) > _SHOWN else "")
    return RestoreConflictError(
        f"{target}: {len(conflicts)} entries already exist ({shown}); nothing was restored; "
        "restore into an empty directory or allow overwriting",
        target,
    )


def _make_staging(target: Path) -> tuple[Path, int]:
    """Create the staging directory on the target's file system; remove dead ones.

    Return it with the mode a new directory gets here (the umask's), which the target
    takes if the staging directory becomes it. Until then the staging directory is
    0700, so nothing is readable by others while it is incomplete, or if it is left
    behind by a killed restore.
    """
    try:
        info = os.lstat(target)
    except FileNotFoundError:
        info = None
    if info is not None and not stat.S_ISDIR(os.stat(target).st_mode):
        raise StorageError(f"{target}: restore target exists and is not a directory", target)
    base = target.parent
    try:
        base.mkdir(parents=True, exist_ok=True)
        if info is not None and os.stat(target).st_dev != os.stat(base).st_dev:
            base = target  # a mount point: stage inside it so the final moves stay renames
        _remove_dead_staging(base, target.name)
        staging = base / f".{target.name}.obs-restore-{os.getpid()}-{secrets.token_hex(4)}"
        staging.mkdir()
        root_mode = stat.S_IMODE(os.stat(staging).st_mode)
        os.chmod(staging, 0o700)
    except OSError as exc:
        raise StorageError(f"{exc.filename or base}: cannot prepare restore: {exc.strerror or exc}", base) from exc
    return staging, root_mode


def _remove_dead_staging(base: Path, target_name: str) -> None:
    for name in os.listdir(base):
        match = _STAGING.match(name)
        if not match or match["target"] != target_name:
            continue
        try:
            os.kill(int(match["pid"]), 0)
        except ProcessLookupError:
            shutil.rmtree(base / name, ignore_errors=True)
        except PermissionError:
            pass  # alive, owned by someone else


def _extract(plan: RestorePlan, staging: Path, progress: ProgressCallback | None) -> _Extracted:
    algorithm = plan.manifest.checksum_algorithm if plan.manifest else DEFAULT_ALGORITHM
    checker = MemberChecker(str(plan.archive_path), plan.allow_external_links)
    out = _Extracted()
    links: list[SafeMember] = []
    ensure_dir = _DirectoryMaker(str(staging))
    with ArchiveReader(plan.archive_path, algorithm) as reader:
        for member in reader.members():
            safe = checker.check(member)
            if safe is None or not is_selected(safe.name, plan.paths):
                continue
            destination = os.path.join(staging, safe.name)
            if safe.kind == "dir":
                ensure_dir(destination)
                out.dirs.append(safe)
            elif safe.kind == "file":
                ensure_dir(os.path.dirname(destination))
                out.digests[safe.name] = _write_file(reader, member, destination, safe, algorithm)
                out.bytes_written += safe.size
            elif safe.kind == "hardlink":
                ensure_dir(os.path.dirname(destination))
                _link(plan, staging, destination, safe, out)
            else:
                links.append(safe)
            out.members[safe.name] = safe
            if progress is not None:
                progress(len(out.members), out.bytes_written)
        checker.recheck_links()
        for link in links:
            destination = os.path.join(staging, link.name)
            ensure_dir(os.path.dirname(destination))
            os.symlink(link.link_target or "", destination)
            os.utime(destination, (link.mtime, link.mtime), follow_symlinks=False)
        out.archive_size, out.archive_digest = reader.finish()
    return out


class _DirectoryMaker:
    """Creates directories under the staging root, remembering which exist, so a tree of
    many files costs one mkdir per directory rather than a stat and a mkdir per file."""

    def __init__(self, root: str) -> None:
        self._known = {root}

    def __call__(self, path: str) -> None:
        if path in self._known:
            return
        os.makedirs(path, exist_ok=True)
        while path not in self._known:
            self._known.add(path)
            path = os.path.dirname(path)


def _write_file(
    reader: ArchiveReader, member: tarfile.TarInfo, destination: str, safe: SafeMember, algorithm: str
) -> str:
    hasher = new_hasher(algorithm)
    fd = os.open(destination, _FILE_FLAGS, 0o600)
    try:
        for chunk in reader.chunks(member):
            hasher.update(chunk)
            while chunk:
                written = os.write(fd, chunk)
                chunk = chunk[written:]
        os.fchmod(fd, safe.mode)
        os.utime(fd, (safe.mtime, safe.mtime))
    finally:
        os.close(fd)
    return hasher.hexdigest()


def _link(plan: RestorePlan, staging: Path, destination: str, safe: SafeMember, out: _Extracted) -> None:
    source = safe.link_target or ""
    if source not in out.digests:
        raise ArchiveError(
            f"{plan.archive_path}: hard link {safe.name!r} needs {source!r}, which is not being restored; "
            "select it too",
            plan.archive_path,
        )
    os.link(os.path.join(staging, source), destination, follow_symlinks=False)
    out.digests[safe.name] = out.digests[source]


def _verify(plan: RestorePlan, extracted: _Extracted, target: Path, warnings: list[str]) -> bool:
    """Check what was extracted against the manifest; return whether it was checked."""
    if plan.manifest is None:
        warnings.append(f"{plan.archive_path}: no manifest; restored without checksum verification")
        return False
    if not plan.verify_checksums:
        warnings.append(f"{plan.archive_path}: checksum verification was turned off")
        return False
    found = compare_with_manifest(
        plan.manifest,
        extracted.members,
        extracted.digests,
        plan.archive_path,
        extracted.archive_size,
        extracted.archive_digest,
        plan.paths,
    )
    problems = [f"missing from archive: {path}" for path in found.missing]
    problems += [f"not in manifest: {path}" for path in found.extra]
    problems += [f"{m.path}: {m.problem}" for m in found.mismatched]
    problems += found.archive
    if problems:
        shown = "; ".join(problems[:_SHOWN]) + (
            f"; and {len(problems) - _SHOWN} more" if len(problems) > _SHOWN else ""
        )
        raise VerificationError(
            f"{plan.archive_path}: does not match its manifest, nothing was restored to {target}: {shown}",
            plan.archive_path,
        )
    return True


def _install(staging: Path, target: Path, overwrite: bool, directories: list[SafeMember], root_mode: int) -> None:
    """Move the staged tree into the target; on failure undo every move made.

    Directories get their archived modes before they become visible under the
    target, so a private directory is never briefly readable there.
    """
    if not os.path.lexists(target):
        _set_directory_modes(staging, directories, merged=set())
        os.rename(staging, target)
        os.chmod(target, root_mode)
        return
    moves: list[tuple[str, str, bool]] = []
    conflicts: list[str] = []
    merged: set[str] = set()
    _plan_merge(str(staging), os.path.realpath(target), "", moves, conflicts, merged)
    if conflicts and not overwrite:
        raise _conflict_error(target, conflicts)
    # Directories merged into existing ones stay in staging (their children move out
    # of them, which needs them writable); the existing ones get the modes afterwards.
    _set_directory_modes(staging, directories, merged)
    trash = staging.with_name(staging.name.replace(".obs-restore-", ".obs-replaced-"))
    if conflicts:
        trash.mkdir()
    undo: list[tuple[str, str]] = []
    try:
        for number, (source, destination, replace) in enumerate(moves):
            if replace:
                aside = os.path.join(trash, str(number))
                os.rename(destination, aside)
                undo.append((aside, destination))
            os.rename(source, destination)
            undo.append((destination, source))
    except BaseException:
        for moved, back in reversed(undo):
            os.rename(moved, back)
        if conflicts:
            trash.rmdir()  # empty again; if undoing failed, what it holds is the user's
        raise
    if conflicts:
        shutil.rmtree(trash)


def _plan_merge(
    source_dir: str,
    target_dir: str,
    prefix: str,
    moves: list[tuple[str, str, bool]],
    conflicts: list[str],
    merged: set[str],
) -> None:
    for name in sorted(os.listdir(source_dir)):
        source = os.path.join(source_dir, name)
        destination = os.path.join(target_dir, name)
        try:
            existing = os.lstat(destination)
        except FileNotFoundError:
            moves.append((source, destination, False))
            continue
        if stat.S_ISDIR(existing.st_mode) and stat.S_ISDIR(os.lstat(source).st_mode):
            merged.add(prefix + name)
            _plan_merge(source, destination, f"{prefix}{name}/", moves, conflicts, merged)
            continue
        conflicts.append(prefix + name)
        moves.append((source, destination, True))


def _set_directory_modes(root: Path, directories: list[SafeMember], merged: set[str]) -> None:
    """Give staged directories (except ``merged`` ones) their archived modes, deepest
    first, so that no directory loses its search bit before its children are done."""
    for member in sorted(directories, key=lambda m: m.name.count("/"), reverse=True):
        if member.name not in merged:
            os.chmod(os.path.join(root, member.name), member.mode)


def _finish_directories(target: Path, directories: list[SafeMember]) -> None:
    """Give restored directories their modes and times, deepest first (writing into a
    directory changes its time)."""
    for member in sorted(directories, key=lambda m: m.name.count("/"), reverse=True):
        path = os.path.join(target, member.name)
        if not stat.S_ISDIR(os.lstat(path).st_mode):
            continue
        os.chmod(path, member.mode)
        os.utime(path, (member.mtime, member.mtime))
