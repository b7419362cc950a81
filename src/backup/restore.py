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

import grp
import os
import pwd
import secrets
import shutil
import stat
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from .acl import ACL_XATTRS, AclError, acl_from_text
from .config import BackupResult
from .errors import ArchiveError, BackupError, RestoreConflictError, StorageError, VerificationError
from .fstree import STAGING_NAME, DirectoryChain, exchange, open_directory, rename_noreplace, staging_name
from .hashing import DEFAULT_ALGORITHM
from .manifest.model import display_name
from .plan import RestorePlan
from .progress import ProgressCallback
from .safety import MemberChecker, SafeMember, read_warnings, shown_name
from .stream.tarreader import ArchiveReader, digest_regions
from .verify import compare_with_manifest

if TYPE_CHECKING:
    import tarfile

__all__ = ["execute_restore"]

_FILE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_SHOWN = 5
_ASIDE = ".obs-old-"


@dataclass
class _Directory:
    """A directory the restore finishes (owner, mode, attributes, time) once everything
    is in place.

    ``selected`` is False for an unselected ancestor of a selected path: it gets its
    archived metadata only if this restore created it, never when it already existed.
    """

    parts: tuple[str, ...]
    member: SafeMember
    selected: bool = True


@dataclass
class _Extracted:
    members: dict[str, SafeMember] = field(default_factory=dict)
    digests: dict[str, str] = field(default_factory=dict)
    dirs: list[_Directory] = field(default_factory=list)
    # Files not restored themselves, held in staging because a restored name links to them.
    held: dict[str, tuple[str, ...]] = field(default_factory=dict)
    meta: _Metadata | None = None
    bytes_written: int = 0
    archive_size: int = 0
    archive_digest: str = ""

    @property
    def entry_count(self) -> int:
        """Entries restored: those read, less the device nodes not made."""
        return len(self.members) - (len(self.meta.devices_skipped) if self.meta else 0)


_HOLDING = ".obs-held"
_NO_ID = (1 << 32) - 1
_ACL_NAMES = frozenset(ACL_XATTRS.values())  # in staging: link sources that are not restored themselves


class _Metadata:
    """Gives restored entries their owners, modes, extended attributes and times.

    As root (and unless told otherwise) an entry gets its archived owner, by name when
    that name exists here, by number otherwise, as GNU tar does; as anyone else it
    belongs to the restoring user. What the file system refuses (an attribute it does
    not support, a time out of its range) is a warning, never a failure.
    """

    def __init__(self, plan: RestorePlan) -> None:
        self.chown = plan.same_owner
        self.numeric = plan.numeric_owner
        self._users: dict[str, int | None] = {}
        self._groups: dict[str, int | None] = {}
        self.refused: list[str] = []
        self.devices_skipped: list[str] = []
        # security.* (file capabilities, labels) and trusted.* attributes change what a
        # file may do, like set-id bits: taken only from an archive whose manifest
        # vouches for it; any archive's user.* attributes and ACLs are restored.
        self.all_xattrs = plan.manifest is not None
        self.xattrs_skipped: list[str] = []

    def owner(self, member: SafeMember) -> tuple[int, int] | None:
        if not self.chown:
            return None
        uid, gid = member.uid, member.gid
        if not self.numeric:
            uid = self._lookup(self._users, member.uname, "user", uid)
            gid = self._lookup(self._groups, member.gname, "group", gid)
        return uid, gid

    def _lookup(self, cache: dict[str, int | None], name: str, kind: str, fallback: int) -> int:
        if not name:
            return fallback
        if name not in cache:
            try:
                cache[name] = pwd.getpwnam(name).pw_uid if kind == "user" else grp.getgrnam(name).gr_gid
            except KeyError:
                cache[name] = None
        found = cache[name]
        return fallback if found is None else found

    def _resolve(self, kind: str, name: str) -> int:
        found = self._lookup(self._users if kind == "user" else self._groups, name, kind, -1)
        if found < 0:
            raise AclError(f"no {kind} named {name!r} here")
        return found

    def apply(self, target: int | str, member: SafeMember, dir_fd: int | None = None, *, link: bool = False) -> None:
        """Give an entry (an open descriptor, or a name in ``dir_fd``) its metadata:
        owner, then mode (a change of owner clears set-id bits), then extended
        attributes and ACLs, then times."""
        follow = not link
        owner = self.owner(member)
        if owner is not None and not all(0 <= number < _NO_ID for number in owner):
            # An id no kernel holds (2**32 - 1 means "unchanged" to chown): left as is.
            self.refused.append(f"{display_name(member.name)} (owner {owner[0]}:{owner[1]}: out of range)")
            owner = None
        if owner is not None:
            if isinstance(target, int):
                os.fchown(target, *owner)
            else:
                os.chown(target, *owner, dir_fd=dir_fd, follow_symlinks=follow)
        if not link:
            if isinstance(target, int):
                os.fchmod(target, member.mode)
            else:
                os.chmod(target, member.mode, dir_fd=dir_fd)
        self._xattrs(target, member, dir_fd)
        try:
            ns = (member.mtime_ns, member.mtime_ns)
            if isinstance(target, int):
                os.utime(target, ns=ns)
            else:
                os.utime(target, ns=ns, dir_fd=dir_fd, follow_symlinks=follow)
        except (OverflowError, ValueError) as exc:
            self.refused.append(f"{display_name(member.name)} (its time: {exc})")

    def _xattrs(self, target: int | str, member: SafeMember, dir_fd: int | None) -> None:
        values = dict(member.xattrs)
        if not self.all_xattrs:
            allowed = {name: value for name, value in values.items() if name.startswith("user.") or name in _ACL_NAMES}
            if len(allowed) < len(values):
                self.xattrs_skipped.append(member.name)
            values = allowed
        for kind, name in ACL_XATTRS.items():
            text = member.acls.get(kind)
            if text and name not in values:
                try:
                    values[name] = acl_from_text(text, self._resolve)
                except AclError as exc:
                    self.refused.append(f"{display_name(member.name)} ({name}: {exc})")
        if not values:
            return
        for name, value in values.items():
            try:
                if isinstance(target, int):
                    os.setxattr(target, name, value)
                else:
                    os.setxattr(f"/proc/self/fd/{dir_fd}/{target}", name, value, follow_symlinks=False)
            except OSError as exc:
                self.refused.append(f"{display_name(member.name)} ({name}: {exc.strerror or exc})")

    def warnings(self, label: str) -> list[str]:
        found = []
        if self.refused:
            shown = _listed(self.refused, str)
            found.append(
                f"{label}: {len(self.refused)} "
                f"{'owner, extended attribute or time was' if len(self.refused) == 1 else 'owners, extended attributes or times were'} "
                f"not restored, as this file system or user cannot hold them: {shown}"
            )
        if self.xattrs_skipped:
            shown = _listed(self.xattrs_skipped)
            found.append(
                f"{label}: security.* and trusted.* attributes of {len(self.xattrs_skipped)} "
                f"{'entry were' if len(self.xattrs_skipped) == 1 else 'entries were'} not restored ({shown}): "
                "they are restored only from an archive with its manifest"
            )
        if self.devices_skipped:
            shown = _listed(self.devices_skipped)
            found.append(
                f"{label}: {len(self.devices_skipped)} device "
                f"{'node was' if len(self.devices_skipped) == 1 else 'nodes were'} not restored ({shown}): "
                "device nodes are made only by root, from an archive with its manifest"
            )
        return found


def _listed(names: Sequence[str], show: Callable[[str], str] = display_name) -> str:
    """The first few of ``names`` for a one-line warning, with "..." when there are more."""
    return ", ".join(show(name) for name in names[:_SHOWN]) + (" ..." if len(names) > _SHOWN else "")


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
            _check_free_space(plan, space)
            extracted = _extract(plan, space.staging_fd, progress, warnings)
            verified = _verify(plan, extracted, target, warnings)
            space.install(extracted, plan.overwrite, warnings)
            if extracted.meta is not None:
                warnings += extracted.meta.warnings(plan.archive.label)
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
        entry_count=extracted.entry_count,
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
    shown = _listed(conflicts)
    count = f"{len(conflicts)} {'entry already exists' if len(conflicts) == 1 else 'entries already exist'}"
    return RestoreConflictError(
        f"{target}: {count} ({shown}); nothing was restored; "
        "restore into an empty directory or allow overwriting (--overwrite)",
        target,
    )


def _check_free_space(plan: RestorePlan, space: _Workspace) -> None:
    """Refuse a restore that cannot fit: the bytes its manifest says it will write (data
    only, for sparse files), each file rounded up to a block, against the space free
    where it stages. Without a manifest, the size is not known before reading."""
    if plan.manifest is None:
        return
    info = os.fstatvfs(space.staging_fd)
    block = info.f_frsize or 4096
    needed = sum(-(-entry.data_size // block) * block for entry in plan.entries)
    # Root may use the blocks a file system keeps back for it; anyone else may not.
    free = (info.f_bfree if os.geteuid() == 0 else info.f_bavail) * block
    if needed > free:
        raise StorageError(
            f"{plan.restore_dir}: restoring needs {needed} bytes and its file system has {free} free; "
            "nothing was restored",
            plan.restore_dir,
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
                    _finish_directories(self.staging_fd, extracted.dirs, set(), warnings, extracted.meta)
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
                _finish_directories(self.target_fd, extracted.dirs, merged, warnings, extracted.meta)
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
    checker = MemberChecker(
        plan.archive.label, plan.allow_external_links, keep_set_id=plan.same_owner, foreign=manifest is None
    )
    meta = _Metadata(plan)
    out = _Extracted()
    links: list[SafeMember] = []
    with (
        DirectoryChain(staging_fd, create=True) as chain,
        ArchiveReader(plan.archive, algorithm, compression, plan.identities) as reader,
    ):
        if progress is not None:
            reader.on_data = lambda done: progress(len(out.members), out.bytes_written + done)
        for member in reader.members():
            selected = plan.selection(_normal(member.name), member.isdir())
            safe = checker.check(member, writes=selected)
            if safe is None:
                continue
            parts = tuple(safe.name.split("/"))
            if not selected:
                if safe.kind == "dir" and plan.selection.patterns:
                    # Made only if something selected turns out to be in it.
                    out.dirs.append(_Directory(parts, safe, selected=False))
                elif safe.kind == "dir" and _is_ancestor(safe.name, plan.paths):
                    chain.fd(parts)
                    out.dirs.append(_Directory(parts, safe, selected=False))
                elif safe.kind == "file" and safe.name in plan.link_sources:
                    held = (_HOLDING, str(len(out.held)))
                    out.digests[safe.name] = _write_file(
                        reader, member, chain.fd(held[:-1]), held[-1], safe, algorithm, meta
                    )
                    out.held[safe.name] = held
                continue
            if safe.name in out.members and safe.kind != "dir":
                # A later copy of a file (foreign archives only): it replaces the
                # earlier one, whose other names keep the earlier data, as with tar.
                os.unlink(parts[-1], dir_fd=chain.fd(parts[:-1]))
            if safe.kind == "dir":
                chain.fd(parts)
                out.dirs.append(_Directory(parts, safe))
            elif safe.kind == "file":
                parent = chain.fd(parts[:-1])
                out.digests[safe.name] = _write_file(reader, member, parent, parts[-1], safe, algorithm, meta)
                out.bytes_written += safe.data_size
            elif safe.kind == "hardlink":
                _link(plan, chain, staging_fd, parts, safe, out)
            elif safe.kind == "symlink":
                links.append(safe)
            else:
                _special(plan, chain.fd(parts[:-1]), parts[-1], safe, meta)
            out.members[safe.name] = safe
            if progress is not None:
                progress(len(out.members), out.bytes_written)
        checker.recheck_links()
        for link in links:
            parts = tuple(link.name.split("/"))
            parent = chain.fd(parts[:-1])
            os.symlink(link.link_target or "", parts[-1], dir_fd=parent)
            meta.apply(parts[-1], link, parent, link=True)
        out.archive_size, out.archive_digest = reader.finish()
        read = reader.warnings
    if out.held:
        shutil.rmtree(_HOLDING, dir_fd=staging_fd)
    if plan.selection.patterns:
        # An unselected directory is restored (given its archived mode, owner, times)
        # only if something selected was staged in it; one that exists in the target
        # and received nothing is not touched.
        out.dirs = [d for d in out.dirs if d.selected or _staged(staging_fd, d.parts)]
    # The plan's listing of a foreign archive may have said these already.
    warnings.extend(w for w in [*read, *read_warnings(plan.archive.label, checker)] if w not in warnings)
    if checker.setid_stripped:
        names = _listed(checker.setid_stripped)
        why = (
            "files are not given their owners, so they would grant the restoring user's identity"
            if not plan.same_owner
            else "they are kept only for their archived owners"
        )
        warnings.append(
            f"{plan.archive.label}: set-user-id and set-group-id bits were not restored on "
            f"{len(checker.setid_stripped)} {'entry' if len(checker.setid_stripped) == 1 else 'entries'} "
            f"({names}): {why}"
        )
    out.meta = meta
    return out


def _special(plan: RestorePlan, parent: int, name: str, safe: SafeMember, meta: _Metadata) -> None:
    """Make a FIFO (anyone may) or a device node (root, from an archive whose manifest
    vouches for it: a device node in a stranger's archive could open this machine's disks)."""
    if safe.kind == "fifo":
        os.mkfifo(name, 0o600, dir_fd=parent)
    elif plan.makes_devices and safe.device is not None:
        kind = stat.S_IFCHR if safe.kind == "chardev" else stat.S_IFBLK
        os.mknod(name, 0o600 | kind, os.makedev(*safe.device), dir_fd=parent)
    else:
        meta.devices_skipped.append(safe.name)
        return
    meta.apply(name, safe, parent)


def _normal(raw: str) -> str:
    # For the selection test only; the checker normalises (and refuses) names itself.
    return "/".join(part for part in raw.split("/") if part not in ("", "."))


def _is_ancestor(name: str, paths: tuple[str, ...] | None) -> bool:
    return paths is not None and any(path.startswith(name + "/") for path in paths)


def _write_file(
    reader: ArchiveReader,
    member: tarfile.TarInfo,
    parent_fd: int,
    name: str,
    safe: SafeMember,
    algorithm: str,
    meta: _Metadata,
) -> str:
    """Write one file (holes as holes), give it its metadata; return its data's digest."""
    fd = os.open(name, _FILE_FLAGS, 0o600, dir_fd=parent_fd)
    try:
        position = [0]

        def write(offset: int, chunk: memoryview) -> None:
            if offset != position[0]:
                os.lseek(fd, offset, os.SEEK_SET)  # over a hole: it stays one
            view = chunk
            while view:
                written = os.write(fd, view)
                view = view[written:]
            position[0] = offset + len(chunk)

        digest = digest_regions(reader.regions(member), safe.size, algorithm, write)
        if position[0] != safe.size:
            os.ftruncate(fd, safe.size)  # a trailing hole
        meta.apply(fd, safe)
    finally:
        os.close(fd)
    return digest


def _staged(staging_fd: int, parts: tuple[str, ...]) -> bool:
    """Whether the directory ``parts`` was made in staging."""
    try:
        os.close(_open_parts(staging_fd, parts))
    except (FileNotFoundError, NotADirectoryError):
        return False
    return True


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
    # A link source that is not restored itself was held aside in staging for it.
    source_parts = out.held.get(source) or tuple(source.split("/"))
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
        plan.selection,
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
    root_fd: int,
    directories: list[_Directory],
    merged: set[tuple[str, ...]],
    warnings: list[str],
    meta: _Metadata | None,
) -> None:
    """Give restored directories their archived owners, modes, attributes and times,
    deepest first (writing into a directory changes its time, and a directory without
    its search bit could not be entered to finish the ones below it).

    An unselected ancestor that already existed keeps its own. A directory that cannot
    be changed (an existing one owned by someone else) is a warning, as in GNU tar, not
    a failure: its contents are restored.
    """
    with DirectoryChain(root_fd) as chain:
        for directory in sorted(directories, key=lambda d: len(d.parts), reverse=True):
            if not directory.selected and directory.parts in merged:
                continue
            try:
                try:
                    fd = chain.fd(directory.parts)
                except FileNotFoundError:
                    if directory.selected:
                        raise
                    continue  # an unselected directory nothing selected was in
                if meta is not None:
                    meta.apply(fd, directory.member)
                else:
                    os.fchmod(fd, directory.member.mode)
                    os.utime(fd, ns=(directory.member.mtime_ns, directory.member.mtime_ns))
            except OSError as exc:
                warnings.append(
                    f"{display_name('/'.join(directory.parts))}: mode and time not restored: {exc.strerror or exc}"
                )
