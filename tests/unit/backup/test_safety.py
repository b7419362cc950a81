"""Tests for backup.safety: member-by-member checks of archives before extraction."""

from __future__ import annotations

import tarfile

import pytest

from backup.errors import ArchiveError, UnsafeArchiveError
from backup.safety import MemberChecker, SafeMember, is_selected, normalize_member_name, read_warnings

ARCHIVE = "test.tar"
MTIME_NS = 1_700_000_000 * 1_000_000_000

_TYPES = {
    "file": tarfile.REGTYPE,
    "dir": tarfile.DIRTYPE,
    "symlink": tarfile.SYMTYPE,
    "hardlink": tarfile.LNKTYPE,
    "chr": tarfile.CHRTYPE,
    "blk": tarfile.BLKTYPE,
    "fifo": tarfile.FIFOTYPE,
    "contiguous": tarfile.CONTTYPE,
}


def member(name: str, kind: str = "file", linkname: str = "", mode: int = 0o644, size: int = 0) -> tarfile.TarInfo:
    """Build a TarInfo the way a (possibly hostile) archive would declare it."""
    info = tarfile.TarInfo(name)
    info.type = _TYPES[kind]
    info.linkname = linkname
    info.mode = mode
    info.size = size
    info.mtime = 1_700_000_000
    return info


def _refused(checker: MemberChecker, info: tarfile.TarInfo) -> UnsafeArchiveError:
    with pytest.raises(UnsafeArchiveError) as caught:
        checker.check(info)
    return caught.value


def test_unsafe_archive_error_is_an_archive_error() -> None:
    """Callers catching ArchiveError also catch unsafe members."""
    assert issubclass(UnsafeArchiveError, ArchiveError)


def test_regular_file_passes() -> None:
    """A plain file comes back normalised with its size, mode, exact time and owners."""
    info = member("a/b.txt", size=12, mode=0o640)
    info.uid, info.gid, info.uname, info.gname = 1000, 100, "alice", "users"
    safe = MemberChecker(ARCHIVE).check(info)
    assert safe == SafeMember(
        "a/b.txt",
        "file",
        12,
        0o640,
        1_700_000_000.0,
        None,
        mtime_ns=MTIME_NS,
        uid=1000,
        gid=100,
        uname="alice",
        gname="users",
        data_size=12,
    )


@pytest.mark.parametrize(
    ("name", "fragment"),
    [
        ("/etc/passwd", "has an absolute path"),
        ("//etc/passwd", "has an absolute path"),
        ("..", "has a '..' component"),
        ("../x", "has a '..' component"),
        ("a/../../x", "has a '..' component"),
        ("a/../b", "has a '..' component"),
        ("a/b/..", "has a '..' component"),
        ("a\x00b", "has a NUL byte in its name"),
    ],
)
def test_unsafe_names_refused_naming_member(name: str, fragment: str) -> None:
    """Absolute, '..' and NUL names are refused, naming the member."""
    error = _refused(MemberChecker(ARCHIVE), member(name))
    assert str(error) == f"{ARCHIVE}: member {name!r} {fragment}"
    assert error.path == name


@pytest.mark.parametrize("name", ["./", ".", "./."])
def test_root_directory_entry_returns_none(name: str) -> None:
    """The archive's own root directory is skipped, not refused."""
    assert MemberChecker(ARCHIVE).check(member(name, "dir")) is None


def test_root_entry_that_is_not_a_directory_refused() -> None:
    """A file whose name normalises to nothing has an empty name."""
    error = _refused(MemberChecker(ARCHIVE), member("./", "file"))
    assert str(error) == f"{ARCHIVE}: member './' has an empty name"


@pytest.mark.parametrize(
    ("raw", "expected"), [("./a/b", "a/b"), ("a//b/./c", "a/b/c"), ("a/", "a"), ("./x.txt", "x.txt")]
)
def test_names_are_normalised(raw: str, expected: str) -> None:
    """Leading "./", doubled and trailing slashes and "." parts are removed."""
    checker = MemberChecker(ARCHIVE)
    assert normalize_member_name(raw) == expected
    safe = checker.check(member(raw))
    assert safe is not None and safe.name == expected


def test_symlink_with_absolute_target_refused() -> None:
    """A symlink to an absolute path is refused, naming member and target."""
    error = _refused(MemberChecker(ARCHIVE), member("l", "symlink", "/etc/passwd"))
    assert str(error) == (
        f"{ARCHIVE}: symlink 'l' points to the absolute path '/etc/passwd'; "
        "--allow-external-links (allow_external_links=True) restores it"
    )
    assert error.path == "l"


@pytest.mark.parametrize(
    ("name", "target"), [("l", ".."), ("l", "../x"), ("a/l", "../../x"), ("a/b/l", "../x/../../../y"), ("l", "a/../..")]
)
def test_symlink_escaping_relative_target_refused(name: str, target: str) -> None:
    """A relative target that climbs above the root is refused."""
    error = _refused(MemberChecker(ARCHIVE), member(name, "symlink", target))
    assert str(error) == (
        f"{ARCHIVE}: symlink {name!r} points outside the target: {target!r}; "
        "--allow-external-links (allow_external_links=True) restores it"
    )


@pytest.mark.parametrize("target", ["", "a\x00b"])
def test_symlink_with_empty_or_nul_target_refused(target: str) -> None:
    """A symlink needs a real target."""
    error = _refused(MemberChecker(ARCHIVE), member("l", "symlink", target))
    assert str(error) == f"{ARCHIVE}: symlink 'l' has an empty or invalid target"


def test_symlink_inside_target_allowed() -> None:
    """Relative links that stay inside the target pass, target unchanged."""
    checker = MemberChecker(ARCHIVE)
    checker.check(member("a", "dir", mode=0o755))
    safe = checker.check(member("a/l", "symlink", "../b/c", mode=0o777))
    assert safe == SafeMember("a/l", "symlink", 0, 0o777, 1_700_000_000.0, "../b/c", mtime_ns=MTIME_NS)
    checker.recheck_links()


def test_symlink_escaping_through_earlier_link_refused() -> None:
    """A target that escapes only through a link declared earlier is caught at once."""
    checker = MemberChecker(ARCHIVE)
    checker.check(member("d", "dir"))
    checker.check(member("d/deep", "symlink", ".."))  # -> root: fine
    error = _refused(checker, member("x", "symlink", "d/deep/.."))
    assert "points outside the target" in str(error)


def test_link_chain_escaping_caught_by_recheck() -> None:
    """a -> "c/.." passes while c is unknown; once c -> "." exists, a escapes: recheck_links says so."""
    checker = MemberChecker(ARCHIVE)
    assert checker.check(member("a", "symlink", "c/..")) is not None
    assert checker.check(member("c", "symlink", ".")) is not None
    with pytest.raises(UnsafeArchiveError) as caught:
        checker.recheck_links()
    assert str(caught.value).startswith(f"{ARCHIVE}: symlink 'a' points outside the target: 'c/..'; ")
    assert caught.value.path == "a"


def test_link_loop_inside_target_is_allowed() -> None:
    """A loop of relative links (a -> b, b -> a) resolves to nothing (ELOOP), never outside:
    a source tree holding one must still restore."""
    checker = MemberChecker(ARCHIVE)
    assert checker.check(member("a", "symlink", "b")) is not None
    assert checker.check(member("b", "symlink", "a")) is not None
    assert checker.check(member("self", "symlink", "self")) is not None
    checker.recheck_links()


@pytest.mark.timeout(10)
def test_link_resolution_is_not_exponential() -> None:
    """Links that each name the next one twice must not cost 2**n resolutions."""
    checker = MemberChecker(ARCHIVE)
    checker.check(member("d", "dir"))
    checker.check(member("d/l60", "symlink", "."))
    for i in range(59, -1, -1):
        assert checker.check(member(f"d/l{i}", "symlink", f"l{i + 1}/l{i + 1}")) is not None
    checker.recheck_links()


def test_member_written_through_symlink_refused() -> None:
    """Nothing may be written beneath an earlier symlink, even one pointing inside."""
    checker = MemberChecker(ARCHIVE)
    checker.check(member("real", "dir"))
    checker.check(member("l", "symlink", "real"))
    error = _refused(checker, member("l/x.txt"))
    assert str(error) == f"{ARCHIVE}: member 'l/x.txt' would be written through the symlink 'l'"


def test_member_written_through_symlink_refused_with_external_links() -> None:
    """allow_external_links does not allow writing through links."""
    checker = MemberChecker(ARCHIVE, allow_external_links=True)
    checker.check(member("l", "symlink", "/etc"))
    error = _refused(checker, member("l/passwd"))
    assert "would be written through the symlink 'l'" in str(error)


@pytest.mark.parametrize("parent_kind", ["file", "hardlink"])
def test_member_inside_a_file_refused(parent_kind: str) -> None:
    """A member cannot live under a file (or a hard link to one)."""
    checker = MemberChecker(ARCHIVE)
    checker.check(member("f"))
    if parent_kind == "hardlink":
        checker.check(member("h", "hardlink", "f"))
        parent = "h"
    else:
        parent = "f"
    error = _refused(checker, member(f"{parent}/sub/x"))
    assert str(error) == f"{ARCHIVE}: member '{parent}/sub/x' would be written inside the file {parent!r}"


@pytest.mark.parametrize(
    ("first", "second"),
    [("file", "file"), ("file", "dir"), ("dir", "file"), ("symlink", "file"), ("file", "symlink")],
)
def test_duplicate_names_refused(first: str, second: str) -> None:
    """In an archive with a manifest a name appears once (spelled differently or not)."""
    checker = MemberChecker(ARCHIVE)
    checker.check(member("x", first, "y" if first == "symlink" else ""))
    error = _refused(checker, member("./x", second, "y" if second == "symlink" else ""))
    assert str(error) == (
        f"{ARCHIVE}: member './x' appears more than once (an archive with a manifest never repeats a member)"
    )


def test_a_foreign_archive_may_repeat_a_file_and_the_last_copy_wins() -> None:
    """tar -r and -u append later copies; pax archives repeat a file to carry more
    metadata. Each repeat is listed once, for one warning."""
    checker = MemberChecker(ARCHIVE, foreign=True)
    assert checker.check(member("x", "file")) is not None
    again = checker.check(member("./x", "file", size=5))
    assert again is not None and (again.name, again.size) == ("x", 5)
    assert checker.check(member("h", "hardlink", "x")) is not None
    assert checker.check(member("x", "file")) is not None
    assert checker.check(member("h", "file")) is not None
    assert checker.repeated == ["x", "h"]
    assert read_warnings(ARCHIVE, checker) == [
        f"{ARCHIVE}: 2 members appear more than once ('x', 'h'); the last copy of each is the one restored, "
        "as tar extracts them"
    ]


@pytest.mark.parametrize(
    ("first", "second"),
    [("file", "dir"), ("dir", "file"), ("symlink", "file"), ("file", "symlink"), ("symlink", "symlink")],
)
def test_a_foreign_archive_may_not_change_what_a_name_is(first: str, second: str) -> None:
    """Only a file is replaced by a later copy: a name that turns from one kind into
    another is refused, naming both."""
    checker = MemberChecker(ARCHIVE, foreign=True)
    checker.check(member("x", first, "y" if first == "symlink" else ""))
    if (first, second) == ("dir", "file"):
        checker.check(member("x/inside", "file"))
    error = _refused(checker, member("x", second, "y" if second == "symlink" else ""))
    assert "appears more than once" in str(error) or "would replace a directory" in str(error)
    if first != "dir":
        assert f"first as a {first} and then as a {second}" in str(error)


def test_a_hard_link_to_itself_is_refused() -> None:
    checker = MemberChecker(ARCHIVE, foreign=True)
    checker.check(member("x", "file"))
    assert str(_refused(checker, member("x", "hardlink", "x"))) == f"{ARCHIVE}: hard link 'x' points to itself"


def test_directory_twice_allowed() -> None:
    """A directory repeated (as GNU tar does for --append) is skipped the second time."""
    checker = MemberChecker(ARCHIVE)
    assert checker.check(member("d", "dir")) is not None
    assert checker.check(member("d/", "dir")) is None


def test_hard_link_to_earlier_file_allowed() -> None:
    """A hard link to a file already in the archive passes, with size 0 and its target."""
    checker = MemberChecker(ARCHIVE)
    checker.check(member("d", "dir"))
    checker.check(member("d/f", size=10))
    safe = checker.check(member("h", "hardlink", "./d/f", size=10))
    assert safe == SafeMember("h", "hardlink", 0, 0o644, 1_700_000_000.0, "d/f", mtime_ns=MTIME_NS)
    chained = checker.check(member("h2", "hardlink", "h"))
    assert chained is not None and chained.link_target == "h"


@pytest.mark.parametrize("target", ["missing", "later", "d", "l", ""])
def test_hard_link_to_non_file_refused(target: str) -> None:
    """Hard links to missing, later, directory, symlink or empty targets are refused."""
    checker = MemberChecker(ARCHIVE)
    checker.check(member("d", "dir"))
    checker.check(member("l", "symlink", "d"))
    error = _refused(checker, member("h", "hardlink", target))
    assert str(error) == (f"{ARCHIVE}: hard link 'h' points to {target!r}, which is not an earlier file in the archive")
    checker.check(member("later"))


@pytest.mark.parametrize(
    ("target", "fragment"), [("../outside", "has a '..' component"), ("/etc/shadow", "has an absolute path")]
)
def test_hard_link_outside_refused(target: str, fragment: str) -> None:
    """Hard links to targets outside the archive are refused, naming the target."""
    error = _refused(MemberChecker(ARCHIVE), member("h", "hardlink", target))
    assert str(error) == f"{ARCHIVE}: member {target!r} {fragment}"


@pytest.mark.parametrize(
    ("kind", "expected", "device"), [("chr", "chardev", (8, 1)), ("blk", "blockdev", (8, 1)), ("fifo", "fifo", None)]
)
def test_fifos_and_devices_pass_with_their_kind_and_numbers(
    kind: str, expected: str, device: tuple[int, int] | None
) -> None:
    """FIFOs and device nodes are members like others (whether a device node is made is
    the restore's decision: root, from an archive with its manifest). A device keeps its
    numbers; a FIFO has none, and neither has data, whatever its size field says."""
    info = member("dev/x", kind, mode=0o660, size=10)
    info.devmajor, info.devminor = 8, 1
    safe = MemberChecker(ARCHIVE).check(info)
    assert safe == SafeMember("dev/x", expected, 0, 0o660, 1_700_000_000.0, None, mtime_ns=MTIME_NS, device=device)


@pytest.mark.parametrize("kind", ["chr", "blk", "fifo"])
def test_fifos_and_devices_are_checked_like_other_members(kind: str) -> None:
    """Their names are normalised and checked, and they cannot repeat or sit in a file."""
    checker = MemberChecker(ARCHIVE)
    assert str(_refused(checker, member("../dev/sda", kind))) == f"{ARCHIVE}: member '../dev/sda' has a '..' component"
    assert checker.check(member("f")) is not None
    assert "would be written inside the file 'f'" in str(_refused(checker, member("f/x", kind)))
    assert checker.check(member("./x", kind)) is not None
    assert str(_refused(checker, member("x", kind))).startswith(f"{ARCHIVE}: member 'x' appears more than once")


@pytest.mark.parametrize("code", [b"Z", b"A", b"E", b"N", b"I"])
def test_a_member_of_an_unknown_type_is_a_file_as_gnu_tar_reads_it(code: bytes) -> None:
    """GNU tar extracts a type it does not know as a regular file, with a warning."""
    info = member("x", size=3)
    info.type = code
    checker = MemberChecker(ARCHIVE, foreign=True)
    safe = checker.check(info)
    assert safe is not None and (safe.kind, safe.size) == ("file", 3)
    assert read_warnings(ARCHIVE, checker) == [
        f"{ARCHIVE}: 1 member is of a type obs-backup does not know ('x' (type {code.decode()!r})); "
        "extracted as regular files, as GNU tar does"
    ]


def test_a_dumpdir_is_a_directory_and_a_volume_continuation_is_refused() -> None:
    """GNU incremental archives' 'D' members are directories; an 'M' member continues a
    file from another volume of a multi-volume archive, which cannot be restored alone."""
    dumpdir = member("d", size=20)
    dumpdir.type = b"D"
    safe = MemberChecker(ARCHIVE).check(dumpdir)
    assert safe is not None and safe.kind == "dir"
    continued = member("big")
    continued.type = b"M"
    assert str(_refused(MemberChecker(ARCHIVE), continued)) == (
        f"{ARCHIVE}: member 'big' is continued from another volume (multi-volume archives are not supported)"
    )


@pytest.mark.parametrize(
    ("kind", "mode", "expected"),
    [
        ("file", 0o4755, 0o755),
        ("file", 0o2750, 0o750),
        ("dir", 0o1777, 0o1777),
        ("dir", 0o3777, 0o1777),
        ("file", 0o7777, 0o1777),
        ("file", 0o600, 0o600),
    ],
)
def test_set_id_bits_stripped_and_sticky_bit_kept(kind: str, mode: int, expected: int) -> None:
    """By default (files will belong to the restoring user) set-user-id and set-group-id
    bits are removed and the members listed; the sticky bit of a shared directory stays."""
    checker = MemberChecker(ARCHIVE)
    safe = checker.check(member("x", kind, mode=mode))
    assert safe is not None and safe.mode == expected
    assert checker.setid_stripped == (["x"] if mode & 0o6000 else [])


@pytest.mark.parametrize("mode", [0o4755, 0o2750, 0o7777, 0o1777])
def test_set_id_bits_are_kept_for_a_restore_that_gives_files_their_owners(mode: int) -> None:
    """With keep_set_id (root restoring archived owners, as GNU tar does) every bit stays."""
    checker = MemberChecker(ARCHIVE, keep_set_id=True)
    safe = checker.check(member("x", mode=mode))
    assert safe is not None and safe.mode == mode
    assert checker.setid_stripped == []


def test_allow_external_links_lets_absolute_targets_through() -> None:
    """With allow_external_links, absolute and escaping targets pass and recheck is a no-op."""
    checker = MemberChecker(ARCHIVE, allow_external_links=True)
    safe = checker.check(member("l", "symlink", "/etc/passwd"))
    assert safe is not None and (safe.kind, safe.link_target) == ("symlink", "/etc/passwd")
    up = checker.check(member("u", "symlink", "../../x"))
    assert up is not None and up.link_target == "../../x"
    checker.recheck_links()


def test_allow_external_links_still_refuses_bad_names_and_volume_continuations() -> None:
    """allow_external_links is about link targets only."""
    checker = MemberChecker(ARCHIVE, allow_external_links=True)
    _refused(checker, member("/abs"))
    _refused(checker, member("/dev/sda", "blk"))
    continued = member("d")
    continued.type = b"M"
    _refused(checker, continued)
    _refused(checker, member("l", "symlink", ""))


@pytest.mark.parametrize(
    ("name", "paths", "expected"),
    [
        ("a/b", None, True),
        ("anything", [""], True),
        ("a", ["a"], True),
        ("a/b/c", ["a"], True),
        ("ab", ["a"], False),
        ("a", ["a/b"], False),
        ("a/b", ["x", "a/b"], True),
        ("a/bc", ["a/b"], False),
        ("a", [], False),
    ],
)
def test_is_selected(name: str, paths: list[str] | None, expected: bool) -> None:
    """A path is selected by itself or an ancestor; None or "" selects everything."""
    assert is_selected(name, paths) is expected


@pytest.mark.parametrize("name", ["c:notes.txt", "C:x", "x:", "c:/windows/x", "a:b/c:d", "\\server\\share", "-rf"])
def test_names_that_look_like_windows_drives_are_ordinary(name: str) -> None:
    """On POSIX "c:notes.txt" is a relative name like any other: backed up, it must restore."""
    checker = MemberChecker(ARCHIVE)
    safe = checker.check(member(name))
    assert safe is not None and safe.name == name.strip("/")


def test_external_symlink_passes_when_it_is_only_read() -> None:
    """A deployment link such as certs -> /etc/ssl/certs is checked as what it is when it
    is not written (verify, or a restore of other paths); its chain is not checked either."""
    checker = MemberChecker(ARCHIVE)
    assert checker.check(member("certs", "symlink", "/etc/ssl/certs"), writes=False) is not None
    assert checker.check(member("current", "symlink", "../releases/42"), writes=False) is not None
    assert checker.check(member("config"), writes=True) is not None
    checker.recheck_links()
    error = _refused(checker, member("certs/x"))
    assert "would be written through the symlink 'certs'" in str(error)


def test_link_escaping_through_a_link_in_a_directory_is_caught() -> None:
    """d/up -> ".." is inside; x -> "d/up/.." climbs out only because the link sits in d,
    so resolving it must start from d, not from the root."""
    checker = MemberChecker(ARCHIVE)
    checker.check(member("d", "dir"))
    checker.check(member("d/e", "dir"))
    checker.check(member("d/e/up", "symlink", "../.."))  # -> the root: fine
    error = _refused(checker, member("x", "symlink", "d/e/up/.."))
    assert "points outside the target" in str(error)
    checker.check(member("y", "symlink", "d/e/up/d"))  # back inside: fine
    checker.recheck_links()


def test_member_after_members_inside_it_is_refused() -> None:
    """A file declared where earlier members implied a directory cannot be restored."""
    checker = MemberChecker(ARCHIVE)
    checker.check(member("a/b/c"))
    error = _refused(checker, member("a/b"))
    assert str(error) == f"{ARCHIVE}: member 'a/b' would replace a directory that earlier members were written into"
    assert checker.check(member("a", "dir")) is not None  # declaring the directory late is fine


def test_too_deep_names_are_refused_in_one_line() -> None:
    """A name of thousands of components is refused at once, with its depth, shortened."""
    deep = "/".join(["d"] * 200_000)
    error = _refused(MemberChecker(ARCHIVE), member(deep))
    message = str(error)
    assert "is 200000 directories deep, more than the 1024 allowed" in message
    assert len(message) < 400 and "\n" not in message


@pytest.mark.timeout(20)
def test_checks_are_linear_in_the_depth_of_names() -> None:
    """Many members 1,000 components deep, links among them and their resolution take
    linear work: with the old prefix-rebuilding checks this took minutes."""
    checker = MemberChecker(ARCHIVE)
    base = "/".join(f"d{i}" for i in range(1000))
    checker.check(member(base, "dir"))
    for i in range(2000):
        checker.check(member(f"{base}/f{i}"))
    checker.check(member(f"{base}/up", "symlink", "/".join([".."] * 1000)))
    for i in range(200):
        checker.check(member(f"{base}/l{i}", "symlink", "up/" + base + f"/f{i}"))
    checker.recheck_links()
    escaping = _refused(checker, member(f"{base}/out", "symlink", "up/.."))
    assert "points outside the target" in str(escaping)


def test_a_chain_through_an_absolute_link_not_restored_is_refused() -> None:
    """``etc`` -> /etc is not restored (only ``b`` is asked for), but ``b`` -> etc/passwd
    leads through it: resolving the chain follows the absolute link out of the target."""
    checker = MemberChecker(ARCHIVE)
    checker.check(member("etc", "symlink", "/etc", mode=0o777), writes=False)
    error = _refused(checker, member("b", "symlink", "etc/passwd"))
    assert "points outside the target" in str(error)


def test_a_chain_through_a_link_in_a_subdirectory_resolves_from_that_directory() -> None:
    """``d/e/up`` -> ../.. is the target's root, from its own directory: a link through it
    that climbs once more escapes. Resolved from anywhere else, it would not."""
    checker = MemberChecker(ARCHIVE)
    checker.check(member("d", "dir"))
    checker.check(member("d/e", "dir"))
    assert checker.check(member("d/e/up", "symlink", "../..")) is not None
    error = _refused(checker, member("x", "symlink", "d/e/up/.."))
    assert "points outside the target" in str(error)
    assert checker.check(member("y", "symlink", "d/e/up/d")) is not None  # through it, and inside


@pytest.mark.parametrize(("count", "dots"), [(5, False), (6, True)])
def test_repeated_members_of_a_foreign_archive_are_named_up_to_five(count: int, dots: bool) -> None:
    checker = MemberChecker(ARCHIVE, foreign=True)
    for number in range(count):
        checker.check(member(f"f{number}"))
        checker.check(member(f"f{number}"))
    [warning] = read_warnings(ARCHIVE, checker)
    assert f"{count} members appear more than once" in warning
    assert ("'f4' ..." in warning) is dots and "'f5'" not in warning
    assert all(f"'f{n}'" in warning for n in range(5))


def test_names_are_shown_whole_up_to_120_characters() -> None:
    from backup.safety import shown_name

    assert shown_name("n" * 120) == repr("n" * 120)
    assert shown_name("n" * 121) == repr("n" * 60) + "...(121 characters)"


def test_a_chain_through_a_link_to_directories_the_archive_does_not_hold() -> None:
    """``l1`` -> zz/yy names directories no member declares; ``l2`` -> l1/.. climbs back
    through it and stays inside."""
    checker = MemberChecker(ARCHIVE)
    assert checker.check(member("l1", "symlink", "zz/yy")) is not None
    assert checker.check(member("l2", "symlink", "l1/..")) is not None
    checker.recheck_links()


def test_allowing_external_links_allows_them_at_the_recheck_too() -> None:
    checker = MemberChecker(ARCHIVE, allow_external_links=True)
    assert checker.check(member("a", "symlink", "c/..")) is not None
    assert checker.check(member("c", "symlink", "..")) is not None
    checker.recheck_links()  # a escapes through c, as allowed
    assert checker.check(member("abs", "symlink", "/etc/passwd")) is not None


def test_the_symlink_a_member_would_be_written_through_is_named_whole() -> None:
    checker = MemberChecker(ARCHIVE)
    checker.check(member("a", "dir"))
    checker.check(member("a/l", "symlink", "../b"))
    error = _refused(checker, member("a/l/x/y.txt"))
    assert str(error).endswith("would be written through the symlink 'a/l'")


def test_a_selection_called_without_is_dir_means_a_file() -> None:
    from backup.safety import Selection

    selection = Selection(include=("logs/",))
    assert selection("logs", is_dir=True) and not selection("logs")
