"""Walking the source directory: what would be archived, and what is left out and why.

One ``scandir`` walk, one ``lstat`` per entry, no user or group name look-ups.
Symlinks are recorded as symlinks and never followed. Directories matched by an
exclude pattern are not descended into (as with ``.gitignore``).
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import pathspec

from .errors import ConfigError, SourceError

__all__ = ["EntryKind", "Exclusion", "ScanResult", "SourceEntry", "compile_excludes", "scan_source"]

EntryKind = Literal["file", "dir", "symlink"]


@dataclass(frozen=True, slots=True)
class SourceEntry:
    """One thing to archive, as ``lstat`` saw it during the walk."""

    path: str
    kind: EntryKind
    size: int
    mode: int
    mtime: float
    uid: int
    gid: int
    link_target: str | None
    abspath: str


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


class _Excluder:
    def __init__(self, patterns: Sequence[str]) -> None:
        self._spec = compile_excludes(patterns) if patterns else None

    def reason(self, relative: str, is_dir: bool) -> str | None:
        if self._spec is None:
            return None
        result = self._spec.check_file(relative + "/" if is_dir else relative)
        if result.include and result.index is not None:
            return f"matches exclude pattern {self._spec.patterns[result.index].pattern!r}"
        return None


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
) -> ScanResult:
    """Given a source directory, return what a backup of it holds.

    ``files`` restricts the backup to those paths (directories include their contents);
    each must lie inside ``source_dir``. ``skip_dir`` (the backup directory) is never
    archived, even when it sits inside the source. Sockets, FIFOs and devices are left
    out with a reason. Raise SourceError if the source or a named file is missing or
    outside the source, or if a directory cannot be listed and ``on_error`` is "fail".
    """
    root = os.path.abspath(source_dir)
    try:
        root_info = os.stat(root)
    except OSError as exc:
        raise SourceError(f"{source_dir}: source directory {_reason(exc)}", source_dir) from exc
    if not stat.S_ISDIR(root_info.st_mode):
        raise SourceError(f"{source_dir}: source is not a directory", source_dir)

    walker = _Walker(root, _Excluder(exclude), _dir_key(skip_dir), on_error)
    if files is None:
        walker.walk_directory(root, "")
    else:
        for relative in _relative_paths(root, files):
            walker.add_path(relative)
    entries = walker.entries if files is None else sorted(walker.entries, key=lambda e: e.path)
    return ScanResult(tuple(entries), tuple(walker.excluded), tuple(walker.problems))


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
        excluder: _Excluder,
        skip_key: tuple[int, int] | None,
        on_error: Literal["fail", "skip"],
    ) -> None:
        self.root = root
        self.excluder = excluder
        self.skip_key = skip_key
        self.on_error = on_error
        self.entries: list[SourceEntry] = []
        self.excluded: list[Exclusion] = []
        self.problems: list[str] = []
        self._seen: set[str] = set()

    def add_path(self, relative: str) -> None:
        """Add one named path (and, for a directory, everything under it)."""
        absolute = os.path.join(self.root, relative)
        parts = relative.split("/")
        for depth in range(1, len(parts)):
            parent = os.path.join(self.root, *parts[:depth])
            if os.path.islink(parent):
                # lstat below would follow it, and read from wherever it points.
                raise SourceError(f"{absolute}: lies under the symlink {parent}, which is not followed", absolute)
        try:
            info = os.lstat(absolute)
        except OSError as exc:
            raise SourceError(f"{absolute}: {_reason(exc)}", absolute) from exc
        if self._consider(relative, absolute, info) == "dir":
            self.walk_directory(absolute, relative + "/")

    def walk_directory(self, absolute: str, prefix: str) -> None:
        """Add everything under one directory, depth first, parents before children."""
        stack: list[Iterator[tuple[str, str]]] = [self._children(absolute, prefix)]
        while stack:
            child = next(stack[-1], None)
            if child is None:
                stack.pop()
                continue
            child_abs, child_rel = child
            try:
                info = os.lstat(child_abs)
            except FileNotFoundError:
                self.problems.append(f"{child_abs}: disappeared during the walk; not archived")
                continue
            except OSError as exc:
                self._problem(child_abs, f"cannot be examined: {exc.strerror or exc}")
                continue
            if self._consider(child_rel, child_abs, info) == "dir":
                stack.append(self._children(child_abs, child_rel + "/"))

    def _children(self, absolute: str, prefix: str) -> Iterator[tuple[str, str]]:
        try:
            with os.scandir(absolute) as listing:
                names = sorted(item.name for item in listing)
        except OSError as exc:
            self._problem(absolute, f"directory cannot be listed: {exc.strerror or exc}")
            return
        for name in names:
            yield os.path.join(absolute, name), prefix + name

    def _problem(self, absolute: str, message: str) -> None:
        if self.on_error == "fail":
            raise SourceError(f"{absolute}: {message}", absolute)
        self.problems.append(f"{absolute}: {message}; skipped")

    def _consider(self, relative: str, absolute: str, info: os.stat_result) -> str | None:
        """Record one path as an entry or an exclusion; return its kind if it was kept."""
        if relative in self._seen:
            return None
        self._seen.add(relative)
        mode = info.st_mode
        is_dir = stat.S_ISDIR(mode)
        reason = self.excluder.reason(relative, is_dir)
        if reason is None and is_dir and (info.st_dev, info.st_ino) == self.skip_key:
            reason = "is the backup directory"
        if reason is None and not (is_dir or stat.S_ISREG(mode) or stat.S_ISLNK(mode)):
            reason = "is a socket, FIFO or device file; only files, directories and symlinks are archived"
        if reason is not None:
            self.excluded.append(Exclusion(relative, reason))
            return None
        kind: EntryKind = "dir" if is_dir else "symlink" if stat.S_ISLNK(mode) else "file"
        link_target = None
        if kind == "symlink":
            try:
                link_target = os.readlink(absolute)
            except OSError as exc:
                self._problem(absolute, f"symlink cannot be read: {exc.strerror or exc}")
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
                abspath=absolute,
            )
        )
        return kind
