"""Deciding, member by member, whether an archive may be extracted under a target.

This does not rely on ``tarfile``'s extraction filters (Python 3.11.7 has known
bypasses). Every member name and link target is normalised and resolved here,
against the links the archive itself has already declared, and anything that could
write or point outside the target is refused.

The members seen so far are kept as a tree (one node per name component), so each
check walks a name once: the work is linear in the length of the names, however deep
they are. Names deeper than ``MAX_DEPTH`` components are refused outright.
"""

from __future__ import annotations

import stat
import tarfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

import pathspec

from .errors import ConfigError, UnsafeArchiveError

__all__ = [
    "MAX_DEPTH",
    "MemberChecker",
    "SafeMember",
    "Selection",
    "is_selected",
    "normalize_member_name",
    "read_warnings",
    "shown_name",
]

MemberKind = Literal["file", "dir", "symlink", "hardlink", "fifo", "chardev", "blockdev"]
DEVICE_KINDS = frozenset({"chardev", "blockdev"})
# Linux follows at most 40 symlinks while resolving one path, then fails with ELOOP.
_MAX_LINKS_FOLLOWED = 40
# Far deeper than any real tree (GNU tar and the kernel have no such limit, but a
# name of 200,000 components is an attack, not a backup).
MAX_DEPTH = 1024
_SET_ID_BITS = stat.S_ISUID | stat.S_ISGID
_GNU_DUMPDIR = b"D"
_GNU_MULTIVOLUME = b"M"
_SHOWN_CHARS = 120


class _TooManyLinks(Exception):
    """Resolving a path followed more symlinks than the kernel would: it leads nowhere."""


@dataclass(frozen=True, slots=True)
class SafeMember:
    """A member that passed every check, with its normalised name.

    ``size`` is a file's length (for a sparse file, with its holes; ``data_size`` is
    what it holds). Owners, exact time, extended attributes and ACLs (text), a device's
    numbers and a sparse file's data runs are as the archive gives them.
    """

    name: str
    kind: MemberKind
    size: int
    mode: int
    mtime: float
    link_target: str | None = None
    mtime_ns: int = 0
    uid: int = 0
    gid: int = 0
    uname: str = ""
    gname: str = ""
    xattrs: Mapping[str, bytes] = field(default_factory=dict)
    acls: Mapping[str, str] = field(default_factory=dict)
    device: tuple[int, int] | None = None
    sparse_map: tuple[tuple[int, int], ...] | None = None
    data_size: int = 0


def read_warnings(archive: str, checker: MemberChecker) -> list[str]:
    """The warnings about how a foreign archive was read: members it repeats, and
    members of types this reader does not know (read as files, as GNU tar does)."""
    found = []
    if checker.repeated:
        count = len(checker.repeated)
        shown = ", ".join(shown_name(name) for name in checker.repeated[:5]) + (" ..." if count > 5 else "")
        found.append(
            f"{archive}: {count} {'member appears' if count == 1 else 'members appear'} more than once ({shown}); "
            "the last copy of each is the one restored, as tar extracts them"
        )
    if checker.unknown_types:
        count = len(checker.unknown_types)
        shown = ", ".join(checker.unknown_types[:5]) + (" ..." if count > 5 else "")
        found.append(
            f"{archive}: {count} {'member is' if count == 1 else 'members are'} of a type obs-backup does not know "
            f"({shown}); extracted as regular files, as GNU tar does"
        )
    return found


def shown_name(name: str) -> str:
    """Given a member name, return its repr, shortened if it is very long (for messages)."""
    if len(name) <= _SHOWN_CHARS:
        return repr(name)
    return repr(name[: _SHOWN_CHARS // 2]) + f"...({len(name)} characters)"


def normalize_member_name(raw: str, archive: str = "archive") -> str:
    """Given a member name, return it relative and normalised ('' for the root itself).

    Raise UnsafeArchiveError for absolute names, '..' components, NUL bytes, and names
    deeper than MAX_DEPTH. A name such as ``c:notes.txt`` is an ordinary relative
    name on POSIX, and is kept as it is.
    """
    if "\x00" in raw:
        raise UnsafeArchiveError(f"{archive}: member {shown_name(raw)} has a NUL byte in its name", raw)
    if raw.startswith("/"):
        raise UnsafeArchiveError(f"{archive}: member {shown_name(raw)} has an absolute path", raw)
    parts = [part for part in raw.split("/") if part not in ("", ".")]
    if ".." in parts:
        raise UnsafeArchiveError(f"{archive}: member {shown_name(raw)} has a '..' component", raw)
    if len(parts) > MAX_DEPTH:
        raise UnsafeArchiveError(
            f"{archive}: member {shown_name(raw)} is {len(parts)} directories deep, more than the {MAX_DEPTH} allowed",
            raw,
        )
    return "/".join(parts)


def is_selected(name: str, paths: Sequence[str] | Selection | None, is_dir: bool = False) -> bool:
    """Given a normalised member name and a selection (None for all), return whether it is chosen."""
    if paths is None:
        return True
    if isinstance(paths, Selection):
        return paths(name, is_dir)
    return any(not path or name == path or name.startswith(path + "/") for path in paths)


@dataclass(frozen=True)
class Selection:
    """What a restore writes: entries under one of ``paths`` (None: all) that match an
    ``include`` pattern or lie under a directory that does (when there are any), and
    that neither match an ``exclude`` pattern nor lie under a directory that does.

    Patterns are gitignore-style and match names as the archive holds them (relative
    to the backed-up directory): ``*.log``, ``/config/``, ``cache/``.
    """

    paths: tuple[str, ...] | None = None
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    _specs: tuple[pathspec.GitIgnoreSpec | None, pathspec.GitIgnoreSpec | None] = field(
        init=False, repr=False, compare=False
    )

    def __post_init__(self) -> None:
        object.__setattr__(self, "_specs", (_compile("include", self.include), _compile("exclude", self.exclude)))

    @property
    def patterns(self) -> bool:
        """Whether patterns decide (so which directories a selection reaches is not known ahead)."""
        return bool(self.include or self.exclude)

    def __call__(self, name: str, is_dir: bool = False) -> bool:
        if not is_selected(name, self.paths):
            return False
        include, exclude = self._specs
        if include is None and exclude is None:
            return True
        steps = name.split("/")
        # The name's directories, then the name itself (a directory pattern needs its "/").
        candidates = ["/".join(steps[:depth]) + "/" for depth in range(1, len(steps))]
        candidates.append(name + "/" if is_dir else name)
        if include is not None and not any(include.match_file(candidate) for candidate in candidates):
            return False
        return exclude is None or not any(exclude.match_file(candidate) for candidate in candidates)


def _compile(option: str, patterns: Sequence[str]) -> pathspec.GitIgnoreSpec | None:
    if not patterns:
        return None
    try:
        return pathspec.GitIgnoreSpec.from_lines(list(patterns))
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"invalid --{option} pattern: {exc}") from exc


class _Node:
    """One name seen in the archive: what it is, and (for directories) what is in it.

    ``kind`` "implied" is a directory no member declared, only used as a parent.
    """

    __slots__ = ("children", "kind", "target")

    def __init__(self, kind: str, target: str | None = None) -> None:
        self.kind = kind
        self.target = target
        self.children: dict[str, _Node] | None = {} if kind in ("dir", "implied") else None


class MemberChecker:
    """Checks an archive's members in order; remembers what earlier members declared.

    ``setid_stripped`` lists the members whose set-user-id or set-group-id bits were
    removed from the mode returned: they are kept only with ``keep_set_id`` (a restore
    by root that gives files their archived owners, as GNU tar does); otherwise the
    files belong to the restoring user, and the bits would hand that user's identity
    to whoever made the archive.
    """

    def __init__(
        self,
        archive: str,
        allow_external_links: bool = False,
        *,
        keep_set_id: bool = False,
        foreign: bool = False,
    ) -> None:
        self.archive = archive
        self.allow_external_links = allow_external_links
        self.keep_set_id = keep_set_id
        self.foreign = foreign
        self._root = _Node("dir")
        # (name, parent components, target) of each symlink that will be written.
        self._written_links: list[tuple[str, list[str], str]] = []
        self.setid_stripped: list[str] = []
        # Files stored more than once (foreign archives only): the last copy wins.
        self.repeated: list[str] = []
        # Members of a type this reader does not know, read as files as GNU tar does.
        self.unknown_types: list[str] = []

    def check(self, member: tarfile.TarInfo, writes: bool = True) -> SafeMember | None:
        """Given the next member, return it made safe, or None for the archive's root entry
        or a repeated directory.

        ``writes`` says whether the member will be written: the rule against symlinks
        pointing outside the target applies only to those (what is merely read, by a
        verify or a selective restore, may point anywhere). Raise UnsafeArchiveError
        naming the member if it must not be extracted.
        """
        raw = member.name
        name = normalize_member_name(raw, self.archive)
        if not name:
            if member.isdir():
                return None
            raise UnsafeArchiveError(f"{self.archive}: member {shown_name(raw)} has an empty name", raw)
        kind = self._kind(member, raw)
        parts = name.split("/")
        parent = self._parent_node(parts, raw)
        assert parent.children is not None
        previous = parent.children.get(parts[-1])
        if previous is not None:
            if kind == "dir" and previous.kind in ("dir", "implied"):
                if previous.kind == "dir":
                    return None
                previous.kind = "dir"  # declared after members inside it: fine
                return self._safe(member, name, kind, None)
            if previous.kind == "implied":
                raise UnsafeArchiveError(
                    f"{self.archive}: member {shown_name(raw)} would replace a directory that earlier members "
                    "were written into",
                    raw,
                )
            if not self.foreign:
                raise UnsafeArchiveError(
                    f"{self.archive}: member {shown_name(raw)} appears more than once "
                    "(an archive with a manifest never repeats a member)",
                    raw,
                )
            if kind not in ("file", "hardlink") or previous.kind not in ("file", "hardlink"):
                raise UnsafeArchiveError(
                    f"{self.archive}: member {shown_name(raw)} appears more than once, first as a {previous.kind} "
                    f"and then as a {kind}; only a file is replaced by a later copy",
                    raw,
                )
            # Appended by tar -r or -u, or repeated to carry more metadata: as tar
            # extracts in order, the last copy wins.
            if name not in self.repeated:
                self.repeated.append(name)
        target = None
        if kind == "symlink":
            target = self._check_symlink(name, parts, member.linkname, raw, writes)
        elif kind == "hardlink":
            target = normalize_member_name(member.linkname, self.archive)
            if target == name:
                raise UnsafeArchiveError(f"{self.archive}: hard link {shown_name(raw)} points to itself", raw)
            if self._lookup(target) not in ("file", "hardlink"):
                raise UnsafeArchiveError(
                    f"{self.archive}: hard link {shown_name(raw)} points to {shown_name(member.linkname)}, "
                    "which is not an earlier file in the archive",
                    raw,
                )
        parent.children[parts[-1]] = _Node(kind, target)
        return self._safe(member, name, kind, target)

    def _safe(self, member: tarfile.TarInfo, name: str, kind: MemberKind, target: str | None) -> SafeMember:
        mode = stat.S_IMODE(member.mode)
        if mode & _SET_ID_BITS and not self.keep_set_id and kind not in ("symlink",):
            self.setid_stripped.append(name)
            mode &= ~_SET_ID_BITS
        # The sticky bit is always kept: a shared 1777 directory must stay one.
        sparse = getattr(member, "sparse_map", None)
        size = getattr(member, "realsize", member.size) if kind == "file" else 0
        return SafeMember(
            name,
            kind,
            size,
            mode,
            float(member.mtime),
            target,
            mtime_ns=getattr(member, "mtime_ns", int(member.mtime) * 1_000_000_000),
            uid=member.uid,
            gid=member.gid,
            uname=member.uname or "",
            gname=member.gname or "",
            xattrs=getattr(member, "xattrs", {}),
            acls=getattr(member, "acls", {}),
            device=(member.devmajor, member.devminor) if kind in DEVICE_KINDS else None,
            sparse_map=tuple(sparse) if sparse is not None else None,
            data_size=member.size if kind == "file" else 0,
        )

    def _kind(self, member: tarfile.TarInfo, raw: str) -> MemberKind:
        if member.isreg():
            return "file"
        if member.isdir():
            return "dir"
        if member.issym():
            return "symlink"
        if member.islnk():
            return "hardlink"
        if member.ischr():
            return "chardev"
        if member.isblk():
            return "blockdev"
        if member.isfifo():
            return "fifo"
        if member.type == _GNU_DUMPDIR:
            return "dir"  # an incremental backup's directory; its data lists the contents
        if member.type == _GNU_MULTIVOLUME:
            raise UnsafeArchiveError(
                f"{self.archive}: member {shown_name(raw)} is continued from another volume "
                "(multi-volume archives are not supported)",
                raw,
            )
        # As GNU tar does: a type it does not know is extracted as a regular file.
        self.unknown_types.append(f"{shown_name(raw)} (type {member.type.decode('latin-1')!r})")
        return "file"

    def _parent_node(self, parts: list[str], raw: str) -> _Node:
        """Walk to the directory that will hold ``parts[-1]``, creating implied ones."""
        node = self._root
        for depth, part in enumerate(parts[:-1]):
            assert node.children is not None
            child = node.children.get(part)
            if child is None:
                child = node.children[part] = _Node("implied")
            elif child.kind == "symlink":
                raise UnsafeArchiveError(
                    f"{self.archive}: member {shown_name(raw)} would be written through the symlink "
                    f"{shown_name('/'.join(parts[: depth + 1]))}",
                    raw,
                )
            elif child.kind in ("file", "hardlink"):
                raise UnsafeArchiveError(
                    f"{self.archive}: member {shown_name(raw)} would be written inside the file "
                    f"{shown_name('/'.join(parts[: depth + 1]))}",
                    raw,
                )
            node = child
        return node

    def _lookup(self, name: str) -> str | None:
        node: _Node | None = self._root
        for part in name.split("/") if name else ():
            if node is None or node.children is None:
                return None
            node = node.children.get(part)
        return None if node is None else node.kind

    def _check_symlink(self, name: str, parts: list[str], target: str, raw: str, writes: bool) -> str:
        if not target or "\x00" in target:
            raise UnsafeArchiveError(f"{self.archive}: symlink {shown_name(raw)} has an empty or invalid target", raw)
        if self.allow_external_links or not writes:
            return target
        if target.startswith("/"):
            raise UnsafeArchiveError(
                f"{self.archive}: symlink {shown_name(raw)} points to the absolute path {shown_name(target)}; "
                "--allow-external-links (allow_external_links=True) restores it",
                raw,
            )
        if self._leads_outside(parts[:-1], target):
            raise self._outside_error(raw, target)
        self._written_links.append((name, parts[:-1], target))
        return target

    def _outside_error(self, raw: str, target: str) -> UnsafeArchiveError:
        return UnsafeArchiveError(
            f"{self.archive}: symlink {shown_name(raw)} points outside the target: {shown_name(target)}; "
            "--allow-external-links (allow_external_links=True) restores it",
            raw,
        )

    def _leads_outside(self, base: list[str], target: str) -> bool:
        """Return whether a symlink in directory ``base`` pointing to ``target`` resolves
        outside the target.

        A link whose resolution follows more links than the kernel does (a loop, say)
        resolves to nothing (ELOOP), so it cannot lead outside.
        """
        try:
            return self._resolve(base, target, [_MAX_LINKS_FOLLOWED]) is None
        except _TooManyLinks:
            return False

    def _nodes_along(self, parts: list[str]) -> list[_Node | None]:
        nodes: list[_Node | None] = []
        node: _Node | None = self._root
        for part in parts:
            node = None if node is None or node.children is None else node.children.get(part)
            nodes.append(node)
        return nodes

    def _resolve(self, base: list[str], target: str, budget: list[int]) -> list[str] | None:
        """Resolve ``target`` from directory ``base`` through the archive's own links.

        Return the resolved components, or None if the path leaves the target at any
        step. ``budget`` holds how many more links may be followed, shared by the whole
        resolution (as the kernel counts them, which also keeps this linear); raise
        _TooManyLinks when it runs out. The tree nodes along the way are kept beside
        the components, so each step is one dictionary look-up.
        """
        parts = list(base)
        nodes = self._nodes_along(parts)
        for component in target.split("/"):
            if component in ("", "."):
                continue
            if component == "..":
                if not parts:
                    return None
                parts.pop()
                nodes.pop()
                continue
            current = nodes[-1] if nodes else self._root
            node = None if current is None or current.children is None else current.children.get(component)
            parts.append(component)
            nodes.append(node)
            if node is not None and node.kind == "symlink" and node.target is not None:
                budget[0] -= 1
                if budget[0] < 0:
                    raise _TooManyLinks
                if node.target.startswith("/"):
                    return None
                resolved = self._resolve(parts[:-1], node.target, budget)
                if resolved is None:
                    return None
                parts = resolved
                nodes = self._nodes_along(parts)
        return parts

    def recheck_links(self) -> None:
        """Re-resolve every symlink to be written against all the archive's links, once
        all are known.

        A link checked early may lead outside only through a link declared after it.
        Raise UnsafeArchiveError naming the first such link.
        """
        if self.allow_external_links:
            return
        for name, base, target in self._written_links:
            if self._leads_outside(base, target):
                raise self._outside_error(name, target)
