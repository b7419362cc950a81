"""Tests for backup.fstree: directory chains, no-replace and exchange renames, and the
FileSystem seam's defaults."""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

import backup.fstree as fstree
from backup.fstree import (
    LOCAL_FILESYSTEM,
    STAGING_NAME,
    DirectoryChain,
    FileSystem,
    exchange,
    open_directory,
    rename_noreplace,
    same_file,
    staging_name,
)


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.fixture
def root(tmp_path: Path) -> Iterator[int]:
    """A descriptor of tmp_path, closed after the test."""
    fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        yield fd
    finally:
        os.close(fd)


@pytest.fixture
def opens(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every os.open call's name, in order (watched, not changed)."""
    seen: list[str] = []
    real = os.open

    def watching(path, flags, *args, **kwargs):  # type: ignore[no-untyped-def]
        seen.append(os.fspath(path))
        return real(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", watching)
    return seen


def _ino(fd: int) -> int:
    return os.fstat(fd).st_ino


# --- DirectoryChain ----------------------------------------------------------------------


def test_a_chain_reuses_the_directories_it_has_open(tmp_path: Path, root: int, opens: list[str]) -> None:
    """Walking a tree in order opens each directory once: siblings share their parent's
    descriptor, and asking for the same directory again opens nothing."""
    for parts in (("a", "b"), ("a", "c"), ("d",)):
        (tmp_path.joinpath(*parts)).mkdir(parents=True)
    with DirectoryChain(root) as chain:
        assert chain.fd([]) == root
        ab = chain.fd(["a", "b"])
        assert chain.fd(["a", "b"]) == ab
        assert _ino(ab) == (tmp_path / "a" / "b").stat().st_ino
        ac = chain.fd(["a", "c"])
        assert _ino(ac) == (tmp_path / "a" / "c").stat().st_ino
        a = chain.fd(["a"])
        assert _ino(a) == (tmp_path / "a").stat().st_ino
        d = chain.fd(["d"])
        assert _ino(d) == (tmp_path / "d").stat().st_ino
    assert opens == ["a", "b", "c", "d"]


def test_close_releases_every_descriptor_but_the_root(tmp_path: Path, root: int) -> None:
    (tmp_path / "a" / "b" / "c").mkdir(parents=True)
    before = _open_fds()
    chain = DirectoryChain(root)
    chain.fd(["a", "b", "c"])
    assert _open_fds() == before + 3
    chain.close()
    assert _open_fds() == before
    os.fstat(root)  # still the caller's, still open


def test_a_chain_never_follows_a_symlink(tmp_path: Path, root: int) -> None:
    (tmp_path / "real").mkdir()
    os.symlink("real", tmp_path / "link")
    (tmp_path / "file").write_bytes(b"")
    with DirectoryChain(root) as chain:
        with pytest.raises(OSError) as info:
            chain.fd(["link"])
        assert info.value.errno in (errno.ELOOP, errno.ENOTDIR)
        with pytest.raises(NotADirectoryError):
            chain.fd(["file"])
        with pytest.raises(FileNotFoundError):
            chain.fd(["missing", "deeper"])


def test_a_creating_chain_makes_missing_directories_with_its_mode(tmp_path: Path, root: int) -> None:
    old = os.umask(0)
    try:
        with DirectoryChain(root, create=True, mode=0o710) as chain:
            fd = chain.fd(["new", "deeper"])
    finally:
        os.umask(old)
    assert (tmp_path / "new" / "deeper").is_dir()
    assert stat.S_IMODE((tmp_path / "new").stat().st_mode) == 0o710
    assert stat.S_IMODE((tmp_path / "new" / "deeper").stat().st_mode) == 0o710
    assert fd >= 0


def _deep(tmp_path: Path, depth: int) -> list[str]:
    parts = [f"d{level}" for level in range(depth)]
    tmp_path.joinpath(*parts).mkdir(parents=True)
    return parts


def test_a_deep_walk_stays_within_the_descriptor_budget(tmp_path: Path, root: int) -> None:
    """Past the budget the shallowest levels are closed; walking back up re-opens them,
    and each is still the directory it was."""
    depth = fstree._MAX_HELD + 40
    parts = _deep(tmp_path, depth)
    before = _open_fds()
    with DirectoryChain(root) as chain:
        deepest = chain.fd(parts)
        assert _ino(deepest) == tmp_path.joinpath(*parts).stat().st_ino
        assert _open_fds() - before <= fstree._MAX_HELD
        for level in (3, 0, 50, depth - 1):
            fd = chain.fd(parts[: level + 1])
            assert _ino(fd) == tmp_path.joinpath(*parts[: level + 1]).stat().st_ino
            assert _open_fds() - before <= fstree._MAX_HELD
    assert _open_fds() == before


def test_a_closed_level_replaced_meanwhile_is_refused(tmp_path: Path, root: int) -> None:
    """A directory re-opened after the budget closed it must be the one the chain walked
    through; one swapped in under its name is ESTALE, not silently used."""
    depth = fstree._MAX_HELD + 20
    parts = _deep(tmp_path, depth)
    with DirectoryChain(root) as chain:
        chain.fd(parts)
        level = tmp_path.joinpath(*parts[:3])
        os.rename(level, tmp_path / "moved-away")
        level.mkdir()
        (level / parts[3]).mkdir()
        with pytest.raises(OSError) as info:
            chain.fd(parts[:4])
        assert info.value.errno == errno.ESTALE


# --- renames -----------------------------------------------------------------------------


def test_rename_noreplace_moves_into_a_free_name(tmp_path: Path, root: int) -> None:
    (tmp_path / "src").write_bytes(b"data")
    (tmp_path / "dir").mkdir()
    dir_fd = open_directory("dir", root)
    try:
        rename_noreplace(root, "src", dir_fd, "dst")
    finally:
        os.close(dir_fd)
    assert not (tmp_path / "src").exists()
    assert (tmp_path / "dir" / "dst").read_bytes() == b"data"


@pytest.mark.parametrize("existing", ["file", "empty-dir", "symlink"])
def test_rename_noreplace_never_replaces(tmp_path: Path, root: int, existing: str) -> None:
    """Not a file, not even an empty directory (which a plain rename would replace)."""
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "inside").write_bytes(b"new")
    if existing == "file":
        (tmp_path / "dst").write_bytes(b"old")
    elif existing == "empty-dir":
        (tmp_path / "dst").mkdir()
    else:
        os.symlink("nowhere", tmp_path / "dst")
    with pytest.raises(FileExistsError):
        rename_noreplace(root, "src", root, "dst")
    assert (tmp_path / "src" / "inside").read_bytes() == b"new"
    assert os.path.lexists(tmp_path / "dst")


def test_rename_noreplace_of_a_missing_source(root: int) -> None:
    with pytest.raises(FileNotFoundError):
        rename_noreplace(root, "missing", root, "dst")


def test_exchange_swaps_two_entries_at_once(tmp_path: Path, root: int) -> None:
    (tmp_path / "a").write_bytes(b"file a")
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "inside").write_bytes(b"in b")
    if not exchange(root, "a", root, "b"):
        pytest.skip("this file system cannot exchange entries")
    assert (tmp_path / "a" / "inside").read_bytes() == b"in b"
    assert (tmp_path / "b").read_bytes() == b"file a"


def test_exchange_needs_both_entries(tmp_path: Path, root: int) -> None:
    (tmp_path / "a").write_bytes(b"a")
    with pytest.raises(FileNotFoundError):
        exchange(root, "a", root, "missing")
    assert (tmp_path / "a").read_bytes() == b"a"


# --- small helpers -----------------------------------------------------------------------


def test_open_directory_refuses_links_and_files(tmp_path: Path, root: int) -> None:
    (tmp_path / "d").mkdir()
    os.symlink("d", tmp_path / "l")
    (tmp_path / "f").write_bytes(b"")
    fd = open_directory("d", root)
    os.close(fd)
    with pytest.raises(OSError) as info:
        open_directory("l", root)
    assert info.value.errno in (errno.ELOOP, errno.ENOTDIR)
    with pytest.raises(NotADirectoryError):
        open_directory("f", root)


def test_same_file(tmp_path: Path) -> None:
    (tmp_path / "a").write_bytes(b"")
    os.link(tmp_path / "a", tmp_path / "hard")
    (tmp_path / "b").write_bytes(b"")
    assert same_file(os.stat(tmp_path / "a"), os.stat(tmp_path / "hard"))
    assert not same_file(os.stat(tmp_path / "a"), os.stat(tmp_path / "b"))


def test_staging_names_are_recognised_and_name_their_target_and_pid() -> None:
    name = staging_name("my.target", 4242, "0a1b2c3d")
    assert name == ".my.target.obs-restore-4242-0a1b2c3d"
    match = STAGING_NAME.match(name)
    assert match is not None and (match["target"], match["pid"]) == ("my.target", "4242")
    assert STAGING_NAME.match(".t.obs-replaced-1-ff")
    for other in ("t.obs-restore-1-ff", ".t.obs-restore-x-ff", ".t.obs-restore-1-FF", ".t.other-1-ff"):
        assert STAGING_NAME.match(other) is None


# --- the FileSystem seam -----------------------------------------------------------------


def test_the_default_file_system_is_a_plain_file_system() -> None:
    assert type(LOCAL_FILESYSTEM) is FileSystem


def test_open_root_follows_a_link_the_caller_named(tmp_path: Path) -> None:
    (tmp_path / "real").mkdir()
    os.symlink("real", tmp_path / "link")
    fd = LOCAL_FILESYSTEM.open_root(str(tmp_path / "link"))
    try:
        assert _ino(fd) == (tmp_path / "real").stat().st_ino
    finally:
        os.close(fd)
    (tmp_path / "file").write_bytes(b"")
    with pytest.raises(NotADirectoryError):
        LOCAL_FILESYSTEM.open_root(str(tmp_path / "file"))


def test_listdir_lstat_and_readlink_work_relative_to_a_directory(tmp_path: Path, root: int) -> None:
    (tmp_path / "f").write_bytes(b"12345")
    os.symlink("f", tmp_path / "l")
    assert sorted(LOCAL_FILESYSTEM.listdir(root)) == ["f", "l"]
    assert LOCAL_FILESYSTEM.lstat("f", root).st_size == 5
    assert stat.S_ISLNK(LOCAL_FILESYSTEM.lstat("l", root).st_mode)  # not followed
    assert LOCAL_FILESYSTEM.readlink("l", root) == "f"


def test_open_file_refuses_a_symlink(tmp_path: Path, root: int) -> None:
    (tmp_path / "f").write_bytes(b"")
    os.symlink("f", tmp_path / "l")
    with pytest.raises(OSError) as info:
        LOCAL_FILESYSTEM.open_file("l", root)
    assert info.value.errno == errno.ELOOP


@pytest.mark.timeout(10)
def test_open_file_does_not_wait_for_a_fifo_writer(tmp_path: Path, root: int) -> None:
    os.mkfifo(tmp_path / "fifo")
    fd = LOCAL_FILESYSTEM.open_file("fifo", root)
    try:
        assert stat.S_ISFIFO(os.fstat(fd).st_mode)
    finally:
        os.close(fd)


def test_open_file_is_read_only(tmp_path: Path, root: int) -> None:
    (tmp_path / "f").write_bytes(b"data")
    fd = LOCAL_FILESYSTEM.open_file("f", root)
    try:
        with pytest.raises(OSError):
            os.write(fd, b"x")
    finally:
        os.close(fd)


def test_read_into_fills_a_view_and_returns_zero_at_the_end(tmp_path: Path, root: int) -> None:
    (tmp_path / "f").write_bytes(b"0123456789")
    fd = LOCAL_FILESYSTEM.open_file("f", root)
    try:
        buffer = bytearray(4)
        view = memoryview(buffer)
        got = bytearray()
        while count := LOCAL_FILESYSTEM.read_into(fd, view):
            got += view[:count]
        assert bytes(got) == b"0123456789"
        assert LOCAL_FILESYSTEM.read_into(fd, view[:2]) == 0
    finally:
        os.close(fd)


@pytest.mark.parametrize("listxattrat", ["kernel", "none"])
def test_xattrs_of_an_entry_without_a_descriptor_of_its_own(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, listxattrat: str
) -> None:
    """Read relative to the directory's descriptor: through listxattrat(2) where the
    kernel has it (an empty list answers at once), else through /proc; a symlink's own
    attributes, never its target's."""
    if listxattrat == "none":
        monkeypatch.setattr(fstree, "_listxattrat", None)
    (tmp_path / "plain").write_bytes(b"")
    (tmp_path / "tagged").write_bytes(b"")
    os.setxattr(tmp_path / "tagged", "user.origin", b"\x00raw")
    (tmp_path / "link").symlink_to("tagged")
    (tmp_path / "we:ird\udcff").write_bytes(b"")
    os.setxattr(os.fsencode(tmp_path / "we:ird\udcff"), "user.k", b"v")
    dir_fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fs = fstree.LOCAL_FILESYSTEM
        assert fs.xattrs("plain", dir_fd) == {}
        assert fs.xattrs("tagged", dir_fd) == {"user.origin": b"\x00raw"}
        assert fs.xattrs("link", dir_fd) == {}
        assert fs.xattrs("we:ird\udcff", dir_fd) == {"user.k": b"v"}
        with pytest.raises(FileNotFoundError):
            fs.xattrs("gone", dir_fd)
    finally:
        os.close(dir_fd)


def test_the_kernel_s_listxattrat_is_used_when_it_has_one() -> None:
    """This machine's kernel (6.13 or newer) has it; an older one falls back to /proc."""
    major, minor = (int(part) for part in os.uname().release.split(".")[:2])
    assert (fstree._listxattrat is not None) == ((major, minor) >= (6, 13))
