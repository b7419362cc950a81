"""Executing a restore plan: extract beside the target, verify, then move into place.

Nothing is written under the target until every member has been extracted into a
staging directory and, with verification on, checked against the manifest. Files
are written by this module (never by ``tarfile``): each is created exclusively,
without following links, and hashed as it is written. Symlinks are created last, so
no member is ever written through one.

Every step below the target works on directory descriptors opened without following
links (``backup.fstree``), never on path strings: another user who can write inside
the target and swaps a directory for a symlink between a check and a use gets an
error, not a write outside the target. Entries are moved into the target with
``renameat2``: a new entry with ``RENAME_NOREPLACE`` (it never replaces anything that
appeared meanwhile), a replaced one (``overwrite``) with ``RENAME_EXCHANGE`` (it is
never missing, not even for a moment). Directories stay 0700 until everything is in
place, then get their archived modes and times, deepest first, as GNU tar does: a
directory archived 0500 or 0600 can still be filled, and none is ever more open than
its archived mode.

A failed restore undoes every move it made and removes its staging directory: the
target is left as it was. A killed one leaves a hidden staging directory (beside the
target, or inside it when the target is a mount point), which the next restore into
that target removes and which backups leave out.
"""

from __future__ import annotations

import os
import secrets
import shutil
import stat
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from .config import BackupResult
from .errors import ArchiveError, BackupError, RestoreConflictError, StorageError, VerificationError
from .fstree import STAGING_NAME, DirectoryChain, exchange, open_directory, rename_noreplace, staging_name
from .hashing import DEFAULT_ALGORITHM, new_hasher
from .manifest.model import display_name
from .plan import RestorePlan
from .progress import ProgressCallback
from .safety import MemberChecker, SafeMember, is_selected, shown_name
from .stream.tarreader import ArchiveReader
from .verify import compare_with_manifest

if TYPE_CHECKING:
    import tarfile

__all__ = ["execute_restore"]

_FILE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_SHOWN = 5
_ASIDE = ".obs-old-"


@dataclass
class _Directory:
    """A directory the restore finishes (mode, time) once everything is in place.

    ``selected`` is False for an unselected ancestor of a selected path: it gets its
    archived mode only if this restore created it, never when it already existed.
    """

    parts: tuple[str, ...]
    mode: int
    mtime: float
    selected: bool = True


@dataclass
class _Extracted:
    members: dict[str, SafeMember] = field(default_factory=dict)
    digests: dict[str, str] = field(default_factory=dict)
    dirs: list[_Directory] = field(default_factory=list)
    bytes_written: int = 0
    archive_size: int = 0
    archive_digest: str = ""


def execute_restore(plan: RestorePlan, progress: ProgressCallback | None = None) -> BackupResult:
    """Given a restore plan, carry it out; return the result (never raises).

    On failure the target directory is as it was before and ``error`` says why.
    """
    started = time.monotonic()
    target = Path(os.path.abspath(plan.restore_dir))
    warnings = list(plan.warnings)
    try:
        if plan.conflicts and not plan.overwrite:
            raise _conflict_error(target, list(plan.conflicts))
        with _Workspace(target) as space:
            extracted = _extract(plan, space.staging_fd, progress, warnings)
            verified = _verify(plan, extracted, target, warnings)
            space.install(extracted, plan.overwrite, warnings)
    except BackupError as exc:
        return _failed(plan, started, str(exc), warnings)
    except OSError as exc:
        where = exc.filename if isinstance(exc.filename, str) and exc.filename.startswith("/") else target
        return _failed(plan, started, f"{where}: restore failed: {exc.strerror or exc}", warnings)
    except Exception as exc:  # a bug: still a failed result, never an exception
        return _failed(
            plan, started, f"{target}: restore failed: internal error: {type(exc).__name__}: {exc}", warnings
        )
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
    shown = ", ".join(display_name(path) for path in conflicts[:_SHOWN]) + (" ..." if len(conflicts) > _SHOWN else "")
    count = f"{len(conflicts)} {'entry already exists' if len(conflicts) == 1 else 'entries already exist'}"
    return RestoreConflictError(
        f"{target}: {count} ({shown}); nothing was restored; "
        "restore into an empty directory or allow overwriting (--overwrite)",
        target,
    )


class _Workspace:
    """The target, its parent and the staging directory, each held by a descriptor."""

    def __init__(self, target: Path) -> None:
        self.target = target
        self.parent_fd = -1
        self.target_fd: int | None = None
        self.base_fd = -1  # where staging lives: the parent, or the target if it is a mount point
        self.staging = ""
        self.staging_fd = -1
        self.root_mode = 0o700

    def __enter__(self) -> _Workspace:
        target = self.target
        if target == target.parent:
            raise StorageError(f"{target}: cannot restore into the root directory", target)
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            # The target and its parent are the caller's own paths: followed as given.
            self.parent_fd = os.open(target.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            self.target_fd = self._open_target()
            self.base_fd = self.parent_fd
            if self.target_fd is not None and os.fstat(self.target_fd).st_dev != os.fstat(self.parent_fd).st_dev:
                self.base_fd = self.target_fd  # a mount point: stage inside it so the moves stay renames
            # A killed restore leaves its staging directory beside the target, or inside
            # it if the target was a mount point then: look in both places.
            _remove_dead_staging(self.parent_fd, target.name)
            if self.target_fd is not None:
                _remove_dead_staging(self.target_fd, target.name)
            self.staging = staging_name(target.name, os.getpid(), secrets.token_hex(4))
            os.mkdir(self.staging, 0o777, dir_fd=self.base_fd)
            self.staging_fd = open_directory(self.staging, self.base_fd)
            # The mode a new directory gets here (the umask's), for a target created by
            # this restore; until then the staging directory is private.
            self.root_mode = stat.S_IMODE(os.fstat(self.staging_fd).st_mode)
            os.fchmod(self.staging_fd, 0o700)
        except BaseException:
            self.__exit__()
            raise
        return self

    def _open_target(self) -> int | None:
        try:
            return os.open(self.target.name, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=self.parent_fd)
        except FileNotFoundError:
            return None
        except NotADirectoryError:
            raise StorageError(f"{self.target}: restore target exists and is not a directory", self.target) from None

    def __exit__(self, *exc: object) -> None:
        if self.staging and self.base_fd >= 0:
            try:
                shutil.rmtree(self.staging, dir_fd=self.base_fd)
            except FileNotFoundError:
                pass
            except OSError:
                pass  # a dead restore's leftover: the next restore removes it
        for fd in {self.staging_fd, self.parent_fd, -1 if self.target_fd is None else self.target_fd}:
            if fd >= 0:
                os.close(fd)
        self.staging_fd = self.parent_fd = -1
        self.target_fd = None

    def install(self, extracted: _Extracted, overwrite: bool, warnings: list[str]) -> None:
        """Move the staged tree into the target, then finish its directories.

        Raise RestoreConflictError (nothing moved) if entries exist and ``overwrite``
        is off; on any failure every move made is undone.
        """
        if self.target_fd is None:
            try:
                rename_noreplace(self.base_fd, self.staging, self.parent_fd, self.target.name)
            except FileExistsError:
                self.target_fd = self._open_target()  # created meanwhile: merge into it
            else:
                try:
                    _finish_directories(self.staging_fd, extracted.dirs, merged=set(), warnings=warnings)
                    os.fchmod(self.staging_fd, self.root_mode)
                except BaseException:
                    rename_noreplace(self.parent_fd, self.target.name, self.base_fd, self.staging)
                    raise
                self.staging = ""  # it is the target now
                return
        assert self.target_fd is not None
        with DirectoryChain(self.staging_fd) as staged, DirectoryChain(self.target_fd) as existing:
            moves, conflicts, merged = _plan_merge(staged, existing)
            if conflicts and not overwrite:
                raise _conflict_error(self.target, conflicts)
            undo = _move_all(staged, existing, moves)
            try:
                _finish_directories(self.target_fd, extracted.dirs, merged, warnings)
            except BaseException:
                _undo(staged, existing, undo)
                raise


def _remove_dead_staging(base_fd: int, target_name: str) -> None:
    for name in os.listdir(base_fd):
        match = STAGING_NAME.match(name)
        if not match or match["target"] != target_name:
            continue
        try:
            os.kill(int(match["pid"]), 0)
        except ProcessLookupError:
            shutil.rmtree(name, dir_fd=base_fd, ignore_errors=True)
        except PermissionError:
            pass  # alive, owned by someone else


def _extract(plan: RestorePlan, staging_fd: int, progress: ProgressCallback | None, warnings: list[str]) -> _Extracted:
    manifest = plan.manifest
    algorithm = manifest.checksum_algorithm if manifest else DEFAULT_ALGORITHM
    compression = manifest.archive.compression if manifest and manifest.archive else None
    checker = MemberChecker(plan.archive.label, plan.allow_external_links)
    out = _Extracted()
    links: list[SafeMember] = []
    with (
        DirectoryChain(staging_fd, create=True) as chain,
        ArchiveReader(plan.archive, algorithm, compression) as reader,
    ):
        for member in reader.members():
            selected = is_selected(_normal(member.name), plan.paths)
            safe = checker.check(member, writes=selected)
            if safe is None:
                continue
            parts = tuple(safe.name.split("/"))
            if not selected:
                if safe.kind == "dir" and _is_ancestor(safe.name, plan.paths):
                    chain.fd(parts)
                    out.dirs.append(_Directory(parts, safe.mode, safe.mtime, selected=False))
                continue
            if safe.kind == "dir":
                chain.fd(parts)
                out.dirs.append(_Directory(parts, safe.mode, safe.mtime))
            elif safe.kind == "file":
                out.digests[safe.name] = _write_file(reader, member, chain.fd(parts[:-1]), parts[-1], safe, algorithm)
                out.bytes_written += safe.size
            elif safe.kind == "hardlink":
                _link(plan, chain, staging_fd, parts, safe, out)
            else:
                links.append(safe)
            out.members[safe.name] = safe
            if progress is not None:
                progress(len(out.members), out.bytes_written)
        checker.recheck_links()
        for link in links:
            parts = tuple(link.name.split("/"))
            parent = chain.fd(parts[:-1])
            os.symlink(link.link_target or "", parts[-1], dir_fd=parent)
            os.utime(parts[-1], (link.mtime, link.mtime), dir_fd=parent, follow_symlinks=False)
        out.archive_size, out.archive_digest = reader.finish()
    if checker.setid_stripped:
        names = ", ".join(display_name(name) for name in checker.setid_stripped[:_SHOWN])
        more = " ..." if len(checker.setid_stripped) > _SHOWN else ""
        warnings.append(
            f"{plan.archive.label}: set-user-id and set-group-id bits were not restored on "
            f"{len(checker.setid_stripped)} {'entry' if len(checker.setid_stripped) == 1 else 'entries'} "
            f"({names}{more}): ownership is not restored, so they would grant the restoring user's identity"
        )
    return out


def _normal(raw: str) -> str:
    # For the selection test only; the checker normalises (and refuses) names itself.
    return "/".join(part for part in raw.split("/") if part not in ("", "."))


def _is_ancestor(name: str, paths: tuple[str, ...] | None) -> bool:
    return paths is not None and any(path.startswith(name + "/") for path in paths)


def _write_file(
    reader: ArchiveReader, member: tarfile.TarInfo, parent_fd: int, name: str, safe: SafeMember, algorithm: str
) -> str:
    hasher = new_hasher(algorithm)
    fd = os.open(name, _FILE_FLAGS, 0o600, dir_fd=parent_fd)
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


def _open_parts(root_fd: int, parts: tuple[str, ...]) -> int:
    """Open the directory ``root/parts...`` one component at a time, without links."""
    fd = os.dup(root_fd)
    try:
        for part in parts:
            child = open_directory(part, fd)
            os.close(fd)
            fd = child
    except BaseException:
        os.close(fd)
        raise
    return fd


def _link(
    plan: RestorePlan,
    chain: DirectoryChain,
    staging_fd: int,
    parts: tuple[str, ...],
    safe: SafeMember,
    out: _Extracted,
) -> None:
    source = safe.link_target or ""
    if source not in out.digests:
        raise ArchiveError(
            f"{plan.archive.label}: hard link {shown_name(safe.name)} needs {shown_name(source)}, which is not being "
            "restored; select it too",
            plan.archive.label,
        )
    source_parts = tuple(source.split("/"))
    source_dir = _open_parts(staging_fd, source_parts[:-1])
    try:
        os.link(
            source_parts[-1],
            parts[-1],
            src_dir_fd=source_dir,
            dst_dir_fd=chain.fd(parts[:-1]),
            follow_symlinks=False,
        )
    finally:
        os.close(source_dir)
    out.digests[safe.name] = out.digests[source]


def _verify(plan: RestorePlan, extracted: _Extracted, target: Path, warnings: list[str]) -> bool:
    """Check what was extracted against the manifest; return whether it was checked."""
    if plan.manifest is None:
        warnings.append(f"{plan.archive.label}: no manifest; restored without checksum verification")
        return False
    if not plan.verify_checksums:
        warnings.append(f"{plan.archive.label}: checksum verification was turned off")
        return False
    found = compare_with_manifest(
        plan.manifest,
        extracted.members,
        extracted.digests,
        plan.archive.label,
        extracted.archive_size,
        extracted.archive_digest,
        plan.paths,
    )
    problems = [f"missing from archive: {display_name(path)}" for path in found.missing]
    problems += [f"not in manifest: {display_name(path)}" for path in found.extra]
    problems += [f"{display_name(m.path)}: {m.problem}" for m in found.mismatched]
    problems += found.archive
    if problems:
        shown = "; ".join(problems[:_SHOWN]) + (
            f"; and {len(problems) - _SHOWN} more" if len(problems) > _SHOWN else ""
        )
        raise VerificationError(
            f"{plan.archive.label}: does not match its manifest, nothing was restored to {target}: {shown}",
            plan.archive.label,
        )
    return True


@dataclass(frozen=True)
class _Move:
    parts: tuple[str, ...]
    replace: bool


def _children(chain: DirectoryChain, parts: tuple[str, ...]) -> Iterator[str]:
    yield from sorted(os.listdir(chain.fd(parts)))


def _plan_merge(
    staged: DirectoryChain, existing: DirectoryChain
) -> tuple[list[_Move], list[str], set[tuple[str, ...]]]:
    """Compare the staged tree with the target; return the moves, the conflicts (paths
    that exist), and the directories that exist on both sides (merged, not moved)."""
    moves: list[_Move] = []
    conflicts: list[str] = []
    merged: set[tuple[str, ...]] = set()
    stack: list[tuple[tuple[str, ...], Iterator[str]]] = [((), _children(staged, ()))]
    while stack:
        parts, names = stack[-1]
        name = next(names, None)
        if name is None:
            stack.pop()
            continue
        child = (*parts, name)
        source = os.stat(name, dir_fd=staged.fd(parts), follow_symlinks=False)
        try:
            there = os.stat(name, dir_fd=existing.fd(parts), follow_symlinks=False)
        except FileNotFoundError:
            moves.append(_Move(child, replace=False))
            continue
        if stat.S_ISDIR(there.st_mode) and stat.S_ISDIR(source.st_mode):
            merged.add(child)
            stack.append((child, _children(staged, child)))
            continue
        conflicts.append("/".join(child))
        moves.append(_Move(child, replace=True))
    return moves, conflicts, merged


_Undo = list[tuple[str, tuple[str, ...], str]]


def _move_all(staged: DirectoryChain, existing: DirectoryChain, moves: list[_Move]) -> _Undo:
    """Carry out the moves; return how to undo them. On any failure undo those done, in
    reverse, and re-raise.

    A replaced entry is swapped with its new version in one step where the file system
    allows (it then sits in staging, removed with it); elsewhere it is first moved
    aside into staging, which leaves the name missing between the two renames.
    """
    undo: _Undo = []
    try:
        for number, move in enumerate(moves):
            parent = move.parts[:-1]
            name = move.parts[-1]
            here, there = staged.fd(parent), existing.fd(parent)
            if not move.replace:
                rename_noreplace(here, name, there, name)
                undo.append(("move", move.parts, ""))
            elif exchange(here, name, there, name):
                undo.append(("swap", move.parts, ""))
            else:
                aside = f"{_ASIDE}{number}"
                rename_noreplace(there, name, here, aside)
                undo.append(("aside", move.parts, aside))
                rename_noreplace(here, name, there, name)
                undo.append(("move", move.parts, ""))
    except BaseException:
        _undo(staged, existing, undo)
        raise
    return undo


def _undo(staged: DirectoryChain, existing: DirectoryChain, undo: _Undo) -> None:
    """Put every moved entry back where it was, last move first."""
    for kind, parts, aside in reversed(undo):
        here, there = staged.fd(parts[:-1]), existing.fd(parts[:-1])
        name = parts[-1]
        if kind == "move":
            rename_noreplace(there, name, here, name)
        elif kind == "swap":
            exchange(here, name, there, name)
        else:
            rename_noreplace(here, aside, there, name)


def _finish_directories(
    root_fd: int, directories: list[_Directory], merged: set[tuple[str, ...]], warnings: list[str]
) -> None:
    """Give restored directories their archived modes and times, deepest first (writing
    into a directory changes its time, and a directory without its search bit could
    not be entered to finish the ones below it).

    An unselected ancestor that already existed keeps its own mode. A directory that
    cannot be changed (an existing one owned by someone else) is a warning, as in GNU
    tar, not a failure: its contents are restored.
    """
    with DirectoryChain(root_fd) as chain:
        for directory in sorted(directories, key=lambda d: len(d.parts), reverse=True):
            if not directory.selected and directory.parts in merged:
                continue
            try:
                fd = chain.fd(directory.parts)
                os.fchmod(fd, directory.mode)
                os.utime(fd, (directory.mtime, directory.mtime))
            except OSError as exc:
                warnings.append(
                    f"{display_name('/'.join(directory.parts))}: mode and time not restored: {exc.strerror or exc}"
                )
