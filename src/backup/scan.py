"""Walking the source directory: what would be archived, and what is left out and why.

One walk, one ``lstat`` per entry, no user or group name look-ups. Directories are
opened relative to their parent's descriptor without following links, so a directory
swapped for a symlink during the walk is never followed out of the source, and paths
of any length work. Symlinks are recorded as symlinks and never followed. Directories
matched by an exclude pattern are not descended into (as with ``.gitignore``).
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import pathspec

from .errors import ConfigError, SourceError
from .fstree import LOCAL_FILESYSTEM, STAGING_NAME, DirectoryChain, FileSystem
from .safety import MAX_DEPTH

__all__ = ["EntryKind", "Exclusion", "ScanResult", "SourceEntry", "compile_excludes", "scan_source"]

EntryKind = Literal["file", "dir", "symlink", "fifo", "chardev", "blockdev"]

_SPECIAL: tuple[tuple[Callable[[int], bool], EntryKind], ...] = (
    (stat.S_ISFIFO, "fifo"),
    (stat.S_ISCHR, "chardev"),
    (stat.S_ISBLK, "blockdev"),
)


@dataclass(frozen=True, slots=True)
class SourceEntry:
    """One thing to archive, as ``lstat`` saw it during the walk.

    ``path`` is relative to the source, with ``/`` between components; ``abspath``
    is for messages only: files are opened relative to their directory. ``dev``,
    ``ino`` and ``nlink`` tell hard links apart; ``rdev`` is a device's number.
    """

    path: str
    kind: EntryKind
    size: int
    mode: int
    mtime: float
    uid: int
    gid: int
    link_target: str | None
    root: str
    mtime_ns: int = 0
    dev: int = 0
    ino: int = 0
    nlink: int = 1
    rdev: int = 0

    @property
    def abspath(self) -> str:
        """The entry's path, for messages (made when needed: most entries never need it)."""
        return os.path.join(self.root, self.path)


@dataclass(frozen=True, slots=True)
class Exclusion:
    """One path left out of the backup, with the reason."""

    path: str
    reason: str


@dataclass(frozen=True)
class ScanResult:
    """The walk's outcome: entries in archive order, exclusions, and skipped problems."""

    entries: tuple[SourceEntry, ...]
    excluded: tuple[Exclusion, ...]
    problems: tuple[str, ...]
    root: str = ""
    # Exclude patterns that decided nothing: likely a typo, or a path given absolute.
    unmatched_excludes: tuple[str, ...] = ()
    # Names listed but gone before they could be examined, each with its problem line.
    vanished: tuple[tuple[str, str], ...] = ()


class _Excluder:
    def __init__(self, patterns: Sequence[str]) -> None:
        self._spec = compile_excludes(patterns) if patterns else None
        # Patterns not yet seen to match anything: each is tried on every path until
        # it matches once (the spec itself names only the last pattern that matched).
        self._unused = [
            (index, pattern)
            for index, pattern in enumerate(self._spec.patterns if self._spec else ())
            if pattern.include is not None
        ]

    def reason(self, relative: str, is_dir: bool) -> str | None:
        if self._spec is None:
            return None
        name = relative + "/" if is_dir else relative
        if self._unused:
            self._unused = [(index, pattern) for index, pattern in self._unused if pattern.match_file(name) is None]
        result = self._spec.check_file(name)
        if result.include and result.index is not None:
            return f"matches exclude pattern {self._spec.patterns[result.index].pattern!r}"
        return None

    def unmatched(self) -> tuple[str, ...]:
        return tuple(str(pattern.pattern) for _, pattern in self._unused)


def compile_excludes(patterns: Sequence[str]) -> pathspec.GitIgnoreSpec:
    """Given gitignore-style patterns, return the compiled spec; raise ConfigError if one is invalid."""
    try:
        return pathspec.GitIgnoreSpec.from_lines(list(patterns))
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"invalid exclude pattern: {exc}") from exc


def scan_source(
    source_dir: Path,
    *,
    files: Iterable[str | os.PathLike[str]] | None = None,
    exclude: Sequence[str] = (),
    skip_dir: Path | None = None,
    on_error: Literal["fail", "skip"] = "fail",
    filesystem: FileSystem = LOCAL_FILESYSTEM,
) -> ScanResult:
    """Given a source directory, return what a backup of it holds.

    ``files`` restricts the backup to those paths (directories include their contents);
    each must lie inside ``source_dir``. ``skip_dir`` (the backup directory) is never
    archived, even when it sits inside the source. Sockets are left
    out, each with a reason and a warning. Raise ConfigError if ``skip_dir`` is the
    source itself; SourceError if the source or a named file is missing or outside the
    source, or if a directory cannot be listed and ``on_error`` is "fail". Every call
    on the tree goes through ``filesystem``.
    """
    root = os.path.abspath(source_dir)
    try:
        root_fd = filesystem.open_root(root)
    except FileNotFoundError as exc:
        raise SourceError(f"{source_dir}: source directory does not exist", source_dir) from exc
    except NotADirectoryError as exc:
        raise SourceError(f"{source_dir}: source is not a directory", source_dir) from exc
    except OSError as exc:
        raise SourceError(f"{source_dir}: source directory {_reason(exc)}", source_dir) from exc
    try:
        root_info = os.fstat(root_fd)
        skip_key = _dir_key(skip_dir)
        if skip_key == (root_info.st_dev, root_info.st_ino):
            # Every backup would hold all the earlier ones: 1, 2, 4, 8 ... times the data.
            raise ConfigError(
                f"{skip_dir}: the backup directory is the source directory; keep backups outside it "
                "(or in a directory below it, which backups leave out)",
                skip_dir,
            )
        with DirectoryChain(root_fd) as chain:
            excluder = _Excluder(exclude)
            walker = _Walker(root, chain, filesystem, excluder, skip_key, on_error)
            if files is None:
                walker.walk_directory([], "")
            else:
                for relative in _relative_paths(root, files):
                    walker.add_path(relative)
    finally:
        os.close(root_fd)
    entries = walker.entries if files is None else sorted(walker.entries, key=lambda e: e.path)
    return ScanResult(
        tuple(entries),
        tuple(walker.excluded),
        tuple(walker.problems),
        root,
        excluder.unmatched(),
        tuple(walker.vanished),
    )


def _dir_key(directory: Path | None) -> tuple[int, int] | None:
    if directory is None:
        return None
    try:
        info = os.stat(directory)
    except OSError:
        return None
    return (info.st_dev, info.st_ino)


def _reason(exc: OSError) -> str:
    if isinstance(exc, FileNotFoundError):
        return "does not exist"
    return f"cannot be read: {exc.strerror or exc}"


def _relative_paths(root: str, files: Iterable[str | os.PathLike[str]]) -> Iterator[str]:
    for item in files:
        candidate = os.path.normpath(os.path.join(root, os.fspath(item)))
        if candidate == root or os.path.commonpath([root, candidate]) != root:
            raise SourceError(f"{item}: outside the source directory {root}", os.fspath(item))
        yield os.path.relpath(candidate, root).replace(os.sep, "/")


class _Walker:
    def __init__(
        self,
        root: str,
        chain: DirectoryChain,
        filesystem: FileSystem,
        excluder: _Excluder,
        skip_key: tuple[int, int] | None,
        on_error: Literal["fail", "skip"],
    ) -> None:
        self.root = root
        self.chain = chain
        self.fs = filesystem
        self.excluder = excluder
        self.skip_key = skip_key
        self.on_error = on_error
        self.entries: list[SourceEntry] = []
        self.excluded: list[Exclusion] = []
        self.problems: list[str] = []
        self.vanished: list[tuple[str, str]] = []  # (path, its problem)
        self._seen: set[str] = set()

    def _absolute(self, relative: str) -> str:
        return os.path.join(self.root, relative) if relative else self.root

    def add_path(self, relative: str) -> None:
        """Add one named path (and, for a directory, everything under it)."""
        absolute = self._absolute(relative)
        parts = relative.split("/")
        try:
            parent = self.chain.fd(parts[:-1])
            info = self.fs.lstat(parts[-1], parent)
        except OSError as exc:
            if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                # A component on the way is a symlink (or not a directory): following it
                # would read from wherever it points.
                raise SourceError(
                    f"{absolute}: lies under a symlink or a file, which is not followed", absolute
                ) from exc
            raise SourceError(f"{absolute}: {_reason(exc)}", absolute) from exc
        if self._consider(relative, parts[-1], info) == "dir":
            self.walk_directory(parts, relative + "/")

    def walk_directory(self, parts: list[str], prefix: str) -> None:
        """Add everything under one directory, depth first, parents before children."""
        stack: list[tuple[list[str], str, Iterator[str]]] = [(parts, prefix, self._children(parts, prefix))]
        while stack:
            dir_parts, dir_prefix, names = stack[-1]
            name = next(names, None)
            if name is None:
                stack.pop()
                continue
            relative = dir_prefix + name
            try:
                info = self.fs.lstat(name, self.chain.fd(dir_parts))
            except FileNotFoundError:
                message = f"{self._absolute(relative)}: disappeared during the walk; not archived"
                self.problems.append(message)
                self.vanished.append((relative, message))
                continue
            except OSError as exc:
                self._problem(self._absolute(relative), f"cannot be examined: {exc.strerror or exc}")
                continue
            if self._consider(relative, name, info) == "dir":
                child = [*dir_parts, name]
                stack.append((child, relative + "/", self._children(child, relative + "/")))

    def _children(self, parts: list[str], prefix: str) -> Iterator[str]:
        absolute = self._absolute(prefix.rstrip("/"))
        try:
            names = sorted(self.fs.listdir(self.chain.fd(parts)))
        except OSError as exc:
            if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                self._problem(absolute, "was replaced by a symlink or a file during the walk; not followed")
            else:
                self._problem(absolute, f"directory cannot be listed: {exc.strerror or exc}")
            return
        yield from names

    def _problem(self, absolute: str, message: str) -> None:
        if self.on_error == "fail":
            raise SourceError(f"{absolute}: {message}", absolute)
        self.problems.append(f"{absolute}: {message}; skipped")

    def _leave_out(self, relative: str, info: os.stat_result, name: str) -> str | None:
        mode = info.st_mode
        is_dir = stat.S_ISDIR(mode)
        reason = self.excluder.reason(relative, is_dir)
        if reason is not None:
            return reason
        if is_dir and (info.st_dev, info.st_ino) == self.skip_key:
            return "is the backup directory"
        if is_dir and STAGING_NAME.match(name):
            return "is the staging directory of an unfinished restore"
        if stat.S_ISSOCK(mode):
            # A socket is a live endpoint of a running program: nothing to restore.
            self.problems.append(f"{self._absolute(relative)}: is a socket; not archived (sockets cannot be restored)")
            return "is a socket; sockets cannot be restored"
        return None

    def _consider(self, relative: str, name: str, info: os.stat_result) -> str | None:
        """Record one path as an entry or an exclusion; return its kind if it was kept."""
        if relative in self._seen:
            return None
        self._seen.add(relative)
        reason = self._leave_out(relative, info, name)
        if reason is not None:
            self.excluded.append(Exclusion(relative, reason))
            return None
        if relative.count("/") >= MAX_DEPTH:
            self._problem(self._absolute(relative), f"is more than {MAX_DEPTH} directories deep, which restores refuse")
            return None
        mode = info.st_mode
        kind: EntryKind = "dir" if stat.S_ISDIR(mode) else "symlink" if stat.S_ISLNK(mode) else "file"
        if kind == "file" and not stat.S_ISREG(mode):
            for test, special in _SPECIAL:
                if test(mode):
                    kind = special
        link_target = None
        if kind == "symlink":
            try:
                parent = self.chain.fd(relative.split("/")[:-1])
                link_target = self.fs.readlink(name, parent)
            except OSError as exc:
                self._problem(self._absolute(relative), f"symlink cannot be read: {exc.strerror or exc}")
                return None
        self.entries.append(
            SourceEntry(
                path=relative,
                kind=kind,
                size=info.st_size if kind == "file" else 0,
                mode=stat.S_IMODE(mode),
                mtime=info.st_mtime,
                uid=info.st_uid,
                gid=info.st_gid,
                link_target=link_target,
                root=self.root,
                mtime_ns=info.st_mtime_ns,
                dev=info.st_dev,
                ino=info.st_ino,
                nlink=info.st_nlink,
                rdev=info.st_rdev if kind in ("chardev", "blockdev") else 0,
            )
        )
        return kind
