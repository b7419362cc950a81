"""Deciding, member by member, whether an archive may be extracted under a target.

This does not rely on ``tarfile``'s extraction filters (Python 3.11.7 has known
bypasses). Every member name and link target is normalised and resolved here,
against the links the archive itself has already declared, and anything that could
write or point outside the target is refused.
"""

from __future__ import annotations

import posixpath
import stat
import tarfile
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from .errors import UnsafeArchiveError

__all__ = ["MemberChecker", "SafeMember", "is_selected", "normalize_member_name"]

MemberKind = Literal["file", "dir", "symlink", "hardlink"]
# Linux follows at most 40 symlinks while resolving one path, then fails with ELOOP.
_MAX_LINKS_FOLLOWED = 40


class _TooManyLinks(Exception):
    """Resolving a path followed more symlinks than the kernel would: it leads nowhere."""


@dataclass(frozen=True, slots=True)
class SafeMember:
    """A member that passed every check, with its normalised name."""

    name: str
    kind: MemberKind
    size: int
    mode: int
    mtime: float
    link_target: str | None = None


def normalize_member_name(raw: str, archive: str = "archive") -> str:
    """Given a member name, return it relative and normalised ('' for the root itself).

    Raise UnsafeArchiveError for absolute names, '..' components and NUL bytes.
    """
    if "\x00" in raw:
        raise UnsafeArchiveError(f"{archive}: member {raw!r} has a NUL byte in its name", raw)
    if raw.startswith("/") or (len(raw) > 1 and raw[1] == ":" and raw[0].isalpha()):
        raise UnsafeArchiveError(f"{archive}: member {raw!r} has an absolute path", raw)
    parts = [part for part in raw.split("/") if part not in ("", ".")]
    if ".." in parts:
        raise UnsafeArchiveError(f"{archive}: member {raw!r} has a '..' component", raw)
    return "/".join(parts)


def is_selected(name: str, paths: Sequence[str] | None) -> bool:
    """Given a normalised member name and a selection (None for all), return whether it is chosen."""
    if paths is None:
        return True
    return any(not path or name == path or name.startswith(path + "/") for path in paths)


class MemberChecker:
    """Checks an archive's members in order; remembers what earlier members declared."""

    def __init__(self, archive: str, allow_external_links: bool = False) -> None:
        self.archive = archive
        self.allow_external_links = allow_external_links
        self.kinds: dict[str, MemberKind] = {}
        self.symlinks: dict[str, str] = {}

    def check(self, member: tarfile.TarInfo) -> SafeMember | None:
        """Given the next member, return it made safe, or None for the archive's root entry.

        Raise UnsafeArchiveError naming the member if it must not be extracted.
        """
        raw = member.name
        name = normalize_member_name(raw, self.archive)
        if not name:
            if member.isdir():
                return None
            raise UnsafeArchiveError(f"{self.archive}: member {raw!r} has an empty name", raw)
        kind = self._kind(member, raw)
        self._check_parents(name, raw)
        previous = self.kinds.get(name)
        if previous is not None:
            if previous == "dir" and kind == "dir":
                return None
            raise UnsafeArchiveError(f"{self.archive}: member {raw!r} appears more than once", raw)
        target = None
        if kind == "symlink":
            target = self._check_symlink(name, member.linkname, raw)
            self.symlinks[name] = target
        elif kind == "hardlink":
            target = normalize_member_name(member.linkname, self.archive)
            if self.kinds.get(target) not in ("file", "hardlink"):
                raise UnsafeArchiveError(
                    f"{self.archive}: hard link {raw!r} points to {member.linkname!r}, "
                    "which is not an earlier file in the archive",
                    raw,
                )
        self.kinds[name] = kind
        # Set-user-id, set-group-id and sticky bits are never restored.
        mode = stat.S_IMODE(member.mode) & 0o777
        return SafeMember(name, kind, member.size if kind == "file" else 0, mode, float(member.mtime), target)

    def _kind(self, member: tarfile.TarInfo, raw: str) -> MemberKind:
        if member.isreg():
            return "file"
        if member.isdir():
            return "dir"
        if member.issym():
            return "symlink"
        if member.islnk():
            return "hardlink"
        if member.ischr() or member.isblk():
            what = "a device file"
        elif member.isfifo():
            what = "a FIFO"
        else:
            what = f"of unsupported type {member.type!r}"
        raise UnsafeArchiveError(f"{self.archive}: member {raw!r} is {what}; refused", raw)

    def _check_parents(self, name: str, raw: str) -> None:
        parts = name.split("/")
        for depth in range(1, len(parts)):
            parent = "/".join(parts[:depth])
            kind = self.kinds.get(parent)
            if kind == "symlink":
                raise UnsafeArchiveError(
                    f"{self.archive}: member {raw!r} would be written through the symlink {parent!r}", raw
                )
            if kind in ("file", "hardlink"):
                raise UnsafeArchiveError(
                    f"{self.archive}: member {raw!r} would be written inside the file {parent!r}", raw
                )

    def _check_symlink(self, name: str, target: str, raw: str) -> str:
        if not target or "\x00" in target:
            raise UnsafeArchiveError(f"{self.archive}: symlink {raw!r} has an empty or invalid target", raw)
        if self.allow_external_links:
            return target
        if target.startswith("/"):
            raise UnsafeArchiveError(f"{self.archive}: symlink {raw!r} points to the absolute path {target!r}", raw)
        if self._leads_outside(name, target):
            raise UnsafeArchiveError(f"{self.archive}: symlink {raw!r} points outside the target: {target!r}", raw)
        return target

    def _leads_outside(self, name: str, target: str) -> bool:
        """Return whether the symlink ``name`` -> ``target`` resolves outside the target.

        A link whose resolution follows more links than the kernel does (a loop, say)
        resolves to nothing (ELOOP), so it cannot lead outside.
        """
        try:
            return self._resolve(posixpath.dirname(name), target, [_MAX_LINKS_FOLLOWED]) is None
        except _TooManyLinks:
            return False

    def _resolve(self, base: str, target: str, budget: list[int]) -> list[str] | None:
        """Resolve ``target`` from directory ``base`` through the archive's own links.

        Return the resolved parts, or None if the path leaves the target at any step.
        ``budget`` holds how many more links may be followed, shared by the whole
        resolution (as the kernel counts them, which also keeps this linear); raise
        _TooManyLinks when it runs out.
        """
        parts = [p for p in base.split("/") if p]
        for component in target.split("/"):
            if component in ("", "."):
                continue
            if component == "..":
                if not parts:
                    return None
                parts.pop()
                continue
            parts.append(component)
            link = self.symlinks.get("/".join(parts))
            if link is not None:
                budget[0] -= 1
                if budget[0] < 0:
                    raise _TooManyLinks
                if link.startswith("/"):
                    return None
                resolved = self._resolve("/".join(parts[:-1]), link, budget)
                if resolved is None:
                    return None
                parts = resolved
        return parts

    def recheck_links(self) -> None:
        """Re-resolve every symlink against all the archive's links, once all are known.

        A link checked early may lead outside only through a link declared after it.
        Raise UnsafeArchiveError naming the first such link.
        """
        if self.allow_external_links:
            return
        for name, target in self.symlinks.items():
            if self._leads_outside(name, target):
                raise UnsafeArchiveError(
                    f"{self.archive}: symlink {name!r} points outside the target: {target!r}", name
                )
