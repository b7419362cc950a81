"""Tests for backup.scan: walking the source, exclusions, restriction to files, errors."""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

import pytest

from backup.errors import ConfigError, SourceError
from backup.fstree import FileSystem
from backup.scan import Exclusion, ScanResult, compile_excludes, scan_source
from support.sources import UnlistableFileSystem, path_of


def _paths(result: ScanResult) -> list[str]:
    return [entry.path for entry in result.entries]


def _tree(root: Path, layout: dict[str, bytes | None]) -> Path:
    """Create files (bytes) and directories (None) under root."""
    root.mkdir(parents=True, exist_ok=True)
    for relative, content in layout.items():
        path = root / relative
        if content is None:
            path.mkdir(parents=True, exist_ok=True)
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(content)
    return root


@pytest.fixture
def source(tmp_path: Path) -> Path:
    """A small source tree with nesting, an empty directory and names that sort awkwardly."""
    return _tree(
        tmp_path / "src",
        {
            "b.txt": b"bb",
            "a/z.txt": b"zz",
            "a/b/c.txt": b"ccc",
            "a-x/f": b"f",
            "empty": None,
        },
    )


def test_entries_parents_before_children_depth_first(source: Path) -> None:
    """The walk lists a directory before its contents, depth first, names sorted."""
    result = scan_source(source)
    assert _paths(result) == ["a", "a/b", "a/b/c.txt", "a/z.txt", "a-x", "a-x/f", "b.txt", "empty"]
    seen: set[str] = set()
    for path in _paths(result):
        parent = path.rpartition("/")[0]
        assert parent == "" or parent in seen
        seen.add(path)
    assert result.excluded == ()
    assert result.problems == ()


def test_entry_fields(source: Path) -> None:
    """Each entry carries its kind, size (files only), mode, owner and absolute path."""
    result = {entry.path: entry for entry in scan_source(source).entries}
    file_entry = result["a/b/c.txt"]
    info = os.lstat(source / "a/b/c.txt")
    assert (file_entry.kind, file_entry.size, file_entry.abspath) == ("file", 3, str(source / "a/b/c.txt"))
    assert (file_entry.mode, file_entry.mtime, file_entry.uid, file_entry.gid) == (
        info.st_mode & 0o7777,
        info.st_mtime,
        info.st_uid,
        info.st_gid,
    )
    assert (result["a"].kind, result["a"].size, result["a"].link_target) == ("dir", 0, None)


def test_empty_directories_are_kept(source: Path) -> None:
    """An empty directory is an entry of its own."""
    result = {entry.path: entry.kind for entry in scan_source(source).entries}
    assert result["empty"] == "dir"


def test_symlinks_recorded_not_followed(tmp_path: Path, source: Path) -> None:
    """Symlinks to files, to directories (not descended) and dangling ones are recorded as links."""
    outside = _tree(tmp_path / "outside", {"secret": b"s"})
    os.symlink("b.txt", source / "l_file")
    os.symlink(str(outside), source / "l_dir")
    os.symlink("a", source / "l_inner_dir")
    os.symlink("missing", source / "l_dangling")
    result = scan_source(source)
    entries = {entry.path: entry for entry in result.entries}
    for name, target in [("l_file", "b.txt"), ("l_dir", str(outside)), ("l_inner_dir", "a"), ("l_dangling", "missing")]:
        assert (entries[name].kind, entries[name].size, entries[name].link_target) == ("symlink", 0, target)
    assert not any(path.startswith(("l_dir/", "l_inner_dir/")) for path in entries)


def test_exclude_pattern_with_reason(source: Path) -> None:
    """A matching file is left out, with the pattern in the reason."""
    result = scan_source(source, exclude=["*.txt"])
    assert _paths(result) == ["a", "a/b", "a-x", "a-x/f", "empty"]
    assert list(result.excluded) == [
        Exclusion("a/b/c.txt", "matches exclude pattern '*.txt'"),
        Exclusion("a/z.txt", "matches exclude pattern '*.txt'"),
        Exclusion("b.txt", "matches exclude pattern '*.txt'"),
    ]


def test_exclude_negation_reincludes(source: Path) -> None:
    """A later "!pattern" brings a file back."""
    result = scan_source(source, exclude=["*.txt", "!z.txt"])
    assert "a/z.txt" in _paths(result)
    assert [x.path for x in result.excluded] == ["a/b/c.txt", "b.txt"]


def test_exclude_negation_inside_directory(tmp_path: Path) -> None:
    """ "dir/*" with "!dir/keep" keeps the directory and the negated file."""
    root = _tree(tmp_path / "src", {"logs/app.log": b"1", "logs/keep.log": b"2"})
    result = scan_source(root, exclude=["logs/*", "!logs/keep.log"])
    assert _paths(result) == ["logs", "logs/keep.log"]
    assert list(result.excluded) == [Exclusion("logs/app.log", "matches exclude pattern 'logs/*'")]


def test_excluded_directory_is_not_descended(tmp_path: Path) -> None:
    """A directory pattern excludes the directory once; nothing under it is visited or re-included."""
    root = _tree(tmp_path / "src", {"cache/x": b"1", "cache/deep/keep.txt": b"2", "cachefile": b"3", "d/cache/y": b"4"})
    result = scan_source(root, exclude=["cache/", "!cache/deep/keep.txt"])
    assert _paths(result) == ["cachefile", "d"]
    assert list(result.excluded) == [
        Exclusion("cache", "matches exclude pattern 'cache/'"),
        Exclusion("d/cache", "matches exclude pattern 'cache/'"),
    ]


def test_directory_pattern_does_not_match_file(tmp_path: Path) -> None:
    """A trailing-slash pattern matches directories only."""
    root = _tree(tmp_path / "src", {"build": b"a file named build"})
    result = scan_source(root, exclude=["build/"])
    assert _paths(result) == ["build"]
    assert result.excluded == ()


def test_anchored_pattern(tmp_path: Path) -> None:
    """A leading slash anchors the pattern at the source root."""
    root = _tree(tmp_path / "src", {"top.txt": b"1", "sub/top.txt": b"2"})
    result = scan_source(root, exclude=["/top.txt"])
    assert _paths(result) == ["sub", "sub/top.txt"]
    assert list(result.excluded) == [Exclusion("top.txt", "matches exclude pattern '/top.txt'")]


def test_compile_excludes_invalid_pattern_is_config_error() -> None:
    """A pattern pathspec cannot compile is a ConfigError."""
    with pytest.raises(ConfigError, match="invalid exclude pattern"):
        compile_excludes(["!"])


def test_backup_dir_inside_source_is_excluded(source: Path) -> None:
    """The backup directory is never archived, nor descended into."""
    backups = _tree(source / "a" / "backups", {"old.tar.gz": b"x"})
    result = scan_source(source, skip_dir=backups)
    assert "a/backups" not in _paths(result)
    assert "a/backups/old.tar.gz" not in _paths(result)
    assert list(result.excluded) == [Exclusion("a/backups", "is the backup directory")]


def test_fifos_and_devices_are_entries_and_a_socket_is_excluded_with_a_warning(source: Path) -> None:
    """A FIFO or a device node is archived as what it is (the walk does not open it, so
    does not block on it); a socket cannot be restored, so it is left out with a reason
    and a problem, which a real backup's result and manifest record."""
    import socket

    os.mkfifo(source / "a" / "pipe", 0o600)
    os.mknod(source / "a" / "null", 0o600 | stat.S_IFCHR, os.makedev(1, 3))  # as root may
    os.mknod(source / "a" / "disk", 0o600 | stat.S_IFBLK, os.makedev(7, 200))
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(str(source / "a" / "sock"))
    try:
        result = scan_source(source)
    finally:
        listener.close()
    entries = {entry.path: entry for entry in result.entries}
    assert "a/sock" not in entries
    assert (entries["a/pipe"].kind, entries["a/pipe"].size, entries["a/pipe"].rdev) == ("fifo", 0, 0)
    assert (entries["a/null"].kind, entries["a/null"].rdev) == ("chardev", os.makedev(1, 3))
    assert (entries["a/disk"].kind, entries["a/disk"].rdev) == ("blockdev", os.makedev(7, 200))
    assert entries["a/null"].mode == entries["a/pipe"].mode == 0o600
    assert list(result.excluded) == [Exclusion("a/sock", "is a socket; sockets cannot be restored")]
    assert result.problems == (f"{source / 'a' / 'sock'}: is a socket; not archived (sockets cannot be restored)",)


def test_backup_dir_that_is_the_source_is_refused(source: Path) -> None:
    """create D D would archive every earlier backup into the next one (1, 2, 4, 8 MB ...)."""
    with pytest.raises(ConfigError) as info:
        scan_source(source, skip_dir=source / "a" / "..")
    assert "the backup directory is the source directory" in str(info.value)


def test_staging_directory_of_a_killed_restore_is_left_out(source: Path) -> None:
    """A restore killed while staging inside its target (a mount point) leaves a hidden
    directory there; the next backup of that directory must not archive it."""
    _tree(source / ".data.obs-restore-4242-0a1b2c3d", {"half.bin": b"x"})
    result = scan_source(source)
    assert not any("obs-restore" in path for path in _paths(result))
    assert Exclusion(".data.obs-restore-4242-0a1b2c3d", "is the staging directory of an unfinished restore") in (
        result.excluded
    )


def test_paths_longer_than_path_max_are_walked(tmp_path: Path) -> None:
    """Each call names one component, so a tree deeper than 4096 bytes is walked."""
    source = tmp_path / "deep"
    source.mkdir()
    fd = os.open(source, os.O_RDONLY)
    parts = ["d" * 200] * 30  # 6,000 bytes
    try:
        for part in parts:
            os.mkdir(part, dir_fd=fd)
            child = os.open(part, os.O_RDONLY, dir_fd=fd)
            os.close(fd)
            fd = child
        with open(os.open("leaf.txt", os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd), "wb") as leaf:
            leaf.write(b"deep")
    finally:
        os.close(fd)
    result = scan_source(source)
    deepest = "/".join(parts) + "/leaf.txt"
    assert len(deepest) > 4096
    assert _paths(result)[-1] == deepest
    assert result.entries[-1].size == 4


def test_a_directory_swapped_for_a_symlink_is_not_followed(tmp_path: Path, source: Path) -> None:
    """Naming a path under a directory that is now a symlink must not read through it."""
    outside = _tree(tmp_path / "outside", {"secret": b"s"})
    os.rename(source / "a", tmp_path / "a-moved")
    os.symlink(outside, source / "a")
    result = scan_source(source, files=["a"])
    assert [(e.path, e.kind) for e in result.entries] == [("a", "symlink")]


def test_files_restricts_to_given_paths(source: Path) -> None:
    """files= archives just those paths, sorted, without duplicates."""
    result = scan_source(source, files=["b.txt", "a/z.txt", Path("b.txt")])
    assert _paths(result) == ["a/z.txt", "b.txt"]


def test_files_directory_includes_its_contents(source: Path) -> None:
    """A directory named in files= brings everything under it."""
    result = scan_source(source, files=["a", "a/z.txt"])
    assert _paths(result) == ["a", "a/b", "a/b/c.txt", "a/z.txt"]


def test_files_absolute_path_inside_source(source: Path) -> None:
    """Absolute paths inside the source are accepted and made relative."""
    result = scan_source(source, files=[source / "a" / "b" / "c.txt"])
    assert _paths(result) == ["a/b/c.txt"]


def test_files_respect_excludes(source: Path) -> None:
    """Exclusions apply to named files and within named directories."""
    result = scan_source(source, files=["a", "b.txt"], exclude=["z.txt", "b.txt"])
    assert _paths(result) == ["a", "a/b", "a/b/c.txt"]
    assert sorted(x.path for x in result.excluded) == ["a/z.txt", "b.txt"]


@pytest.mark.parametrize("outside", ["/etc/passwd", "../elsewhere", "a/../../elsewhere", "."])
def test_files_outside_source_raise_naming_path(source: Path, outside: str) -> None:
    """A path outside the source (absolute, via '..', or the root itself) is a SourceError naming it."""
    with pytest.raises(SourceError) as info:
        scan_source(source, files=[outside])
    assert str(info.value).startswith(f"{outside}: outside the source directory")
    assert info.value.path == outside


def test_files_through_symlinked_directory_are_refused(tmp_path: Path, source: Path) -> None:
    """A named path under a symlinked directory would read outside the source: refused, not followed."""
    outside = _tree(tmp_path / "outside", {"secret": b"s"})
    os.symlink(str(outside), source / "l_dir")
    with pytest.raises(SourceError) as info:
        scan_source(source, files=["l_dir/secret"])
    assert info.value.path == str(source / "l_dir" / "secret")
    assert "symlink" in str(info.value)
    # The link itself may be named: it is recorded as a link.
    result = scan_source(source, files=["l_dir"])
    assert [(e.path, e.kind) for e in result.entries] == [("l_dir", "symlink")]


def test_files_missing_path_raises(source: Path) -> None:
    """A named file that does not exist is a SourceError naming it."""
    with pytest.raises(SourceError) as info:
        scan_source(source, files=["nope.txt"])
    assert str(info.value) == f"{source / 'nope.txt'}: does not exist"


def test_missing_source_raises(tmp_path: Path) -> None:
    """A missing source directory is a SourceError naming it."""
    missing = tmp_path / "missing"
    with pytest.raises(SourceError) as info:
        scan_source(missing)
    assert str(info.value) == f"{missing}: source directory does not exist"
    assert info.value.path == str(missing)


def test_source_that_is_a_file_raises(tmp_path: Path) -> None:
    """A regular file is not a source directory."""
    path = tmp_path / "file"
    path.write_bytes(b"x")
    with pytest.raises(SourceError) as info:
        scan_source(path)
    assert str(info.value) == f"{path}: source is not a directory"


# We run as root, so chmod 000 would not stop a listing: the directory is made
# unlistable through the walk's file system seam instead (support.sources).


def test_unlistable_directory_fails_by_default(source: Path) -> None:
    """on_error="fail": a directory that cannot be listed is a SourceError naming it."""
    with pytest.raises(SourceError) as info:
        scan_source(source, on_error="fail", filesystem=UnlistableFileSystem(source / "a" / "b"))
    assert str(info.value) == f"{source / 'a' / 'b'}: directory cannot be listed: Permission denied"
    assert info.value.path == str(source / "a" / "b")


def test_unlistable_directory_skipped_records_problem(source: Path) -> None:
    """on_error="skip": the directory's contents are left out and the problem is recorded."""
    result = scan_source(source, on_error="skip", filesystem=UnlistableFileSystem(source / "a" / "b"))
    assert _paths(result) == ["a", "a/b", "a/z.txt", "a-x", "a-x/f", "b.txt", "empty"]
    assert result.problems == (f"{source / 'a' / 'b'}: directory cannot be listed: Permission denied; skipped",)


class _FailingLstat(FileSystem):
    """A file system on which examining one entry fails with ``code``."""

    def __init__(self, victim: Path, code: int) -> None:
        self.victim = str(victim)
        self.code = code

    def lstat(self, name: str, dir_fd: int) -> os.stat_result:
        if path_of(name, dir_fd) == self.victim:
            raise OSError(self.code, os.strerror(self.code), name)
        return super().lstat(name, dir_fd)


class _FailingReadlink(FileSystem):
    def readlink(self, name: str, dir_fd: int) -> str:
        raise OSError(errno.EIO, os.strerror(errno.EIO), name)


def test_an_entry_that_cannot_be_examined_is_a_problem(source: Path) -> None:
    victim = source / "a" / "z.txt"
    filesystem = _FailingLstat(victim, errno.EIO)
    with pytest.raises(SourceError) as info:
        scan_source(source, filesystem=filesystem)
    assert str(info.value) == f"{victim}: cannot be examined: Input/output error"
    result = scan_source(source, on_error="skip", filesystem=filesystem)
    assert "a/z.txt" not in _paths(result)
    assert result.problems == (f"{victim}: cannot be examined: Input/output error; skipped",)


def test_an_entry_that_disappears_during_the_walk_is_noted_whatever_the_policy(source: Path) -> None:
    """Listed, then gone before it could be examined: not an error, but not silent either."""
    victim = source / "b.txt"
    result = scan_source(source, on_error="fail", filesystem=_FailingLstat(victim, errno.ENOENT))
    assert "b.txt" not in _paths(result)
    assert result.problems == (f"{victim}: disappeared during the walk; not archived",)


def test_a_symlink_that_cannot_be_read_is_a_problem(source: Path) -> None:
    os.symlink("b.txt", source / "link")
    with pytest.raises(SourceError) as info:
        scan_source(source, filesystem=_FailingReadlink())
    assert str(info.value) == f"{source / 'link'}: symlink cannot be read: Input/output error"
    result = scan_source(source, on_error="skip", filesystem=_FailingReadlink())
    assert "link" not in _paths(result) and "b.txt" in _paths(result)


def test_a_source_the_file_system_cannot_open_is_a_source_error(source: Path) -> None:
    """The source itself is opened through the seam too."""

    class Nothing(FileSystem):
        def open_root(self, path: str) -> int:
            raise OSError(errno.EACCES, os.strerror(errno.EACCES), path)

    with pytest.raises(SourceError) as info:
        scan_source(source, filesystem=Nothing())
    assert str(info.value) == f"{source}: source directory cannot be read: Permission denied"
