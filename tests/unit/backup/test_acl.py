"""Tests for backup.acl: POSIX ACLs between the kernel's binary form and tar's text.

The binary values are built here by hand (support.trees.acl_value), not by the module
under test; the last tests hold it against what the kernel and GNU tar really write.
"""

from __future__ import annotations

import grp
import os
import pwd
import re
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest

from backup.acl import ACL_XATTRS, AclError, acl_from_text, acl_to_text
from support.trees import (
    ACL_ACCESS,
    ACL_DEFAULT,
    GROUP,
    GROUP_OBJ,
    MASK,
    NOBODY,
    OTHER,
    UNDEFINED,
    USER,
    USER_OBJ,
    acl_value,
)

GNU_TAR = "/usr/bin/tar"

MINIMAL = acl_value((USER_OBJ, 6, UNDEFINED), (GROUP_OBJ, 4, UNDEFINED), (OTHER, 4, UNDEFINED))
MINIMAL_TEXT = "user::rw-\ngroup::r--\nother::r--\n"
NAMED = acl_value(
    (USER_OBJ, 7, UNDEFINED),
    (USER, 4, 1000),
    (USER, 6, 4321),
    (GROUP_OBJ, 5, UNDEFINED),
    (GROUP, 1, 50),
    (MASK, 7, UNDEFINED),
    (OTHER, 0, UNDEFINED),
)
NAMED_TEXT = "user::rwx\nuser:1000:r--\nuser:4321:rw-\ngroup::r-x\ngroup:50:--x\nmask::rwx\nother::---\n"
# A directory's default ACL has the same shape; what matters is that every tag and
# permission survives.
DEFAULT = acl_value(
    (USER_OBJ, 7, UNDEFINED),
    (USER, 5, NOBODY),
    (GROUP_OBJ, 5, UNDEFINED),
    (GROUP, 7, NOBODY),
    (MASK, 7, UNDEFINED),
    (OTHER, 5, UNDEFINED),
)
DEFAULT_TEXT = "user::rwx\nuser:65534:r-x\ngroup::r-x\ngroup:65534:rwx\nmask::rwx\nother::r-x\n"


def no_names(kind: str, name: str) -> int:
    raise AssertionError(f"resolve called for {kind} {name!r}, though every qualifier is numeric")


@pytest.mark.parametrize(
    ("raw", "text"),
    [(MINIMAL, MINIMAL_TEXT), (NAMED, NAMED_TEXT), (DEFAULT, DEFAULT_TEXT)],
    ids=["minimal", "named", "default"],
)
def test_binary_and_text_round_trip(raw: bytes, text: str) -> None:
    assert acl_to_text(raw) == text
    assert acl_from_text(text, no_names) == raw
    assert acl_from_text(acl_to_text(raw), no_names) == raw


def test_the_xattr_names_are_the_kernels() -> None:
    assert ACL_XATTRS == {"access": ACL_ACCESS, "default": ACL_DEFAULT}


def test_an_empty_acl_is_the_bare_header_both_ways() -> None:
    assert acl_to_text(acl_value()) == ""
    assert acl_from_text("", no_names) == acl_value()


def test_names_are_resolved_by_the_callback_and_numbers_are_not() -> None:
    asked: list[tuple[str, str]] = []

    def resolve(kind: str, name: str) -> int:
        asked.append((kind, name))
        return {"alice": 1000, "staff": 50}[name]

    text = "user::rwx\nuser:alice:r--\nuser:4321:rw-\ngroup::r-x\ngroup:staff:--x\nmask::rwx\nother::---\n"
    assert acl_from_text(text, resolve) == NAMED
    assert asked == [("user", "alice"), ("group", "staff")]


def test_an_unknown_name_is_refused_by_the_callbacks_error() -> None:
    def resolve(kind: str, name: str) -> int:
        raise AclError(f"no {kind} named {name!r}")

    with pytest.raises(AclError, match="no user named 'ghost'"):
        acl_from_text("user::rw-\nuser:ghost:r--\ngroup::r--\nmask::r--\nother::---\n", resolve)


def test_entries_come_out_in_the_kernels_order_whatever_the_texts() -> None:
    """The kernel refuses an ACL whose entries are not sorted by tag, then id."""
    shuffled = "other::---\nmask::rwx\ngroup:50:--x\nuser:4321:rw-\ngroup::r-x\nuser:1000:r--\nuser::rwx\n"
    assert acl_from_text(shuffled, no_names) == NAMED


def test_abbreviated_tags_commas_comments_and_blank_lines_are_read() -> None:
    """getfacl's output: ``#effective:`` comments, a header comment, blank lines;
    setfacl's short form: ``u:``, ``g:``, ``m:``, ``o:`` and commas."""
    getfacl = (
        "# file: somewhere\n# owner: root\n"
        "user::rwx\nuser:1000:r--\t#effective:r--\nuser:4321:rw-\ngroup::r-x\ngroup:50:--x\nmask::rwx\nother::---\n\n"
    )
    assert acl_from_text(getfacl, no_names) == NAMED
    assert acl_from_text("u::rwx,u:1000:r--,u:4321:rw-,g::r-x,g:50:--x,m::rwx,o::---", no_names) == NAMED


@pytest.mark.parametrize(
    "text",
    [
        "user::rw-x",  # four permission characters
        "user::rr-",  # a letter twice
        "user::",  # none
        "user:rw-",  # two fields
        "user:1000:r--:extra",  # four fields
        "bogus::rwx",  # unknown tag
        "user::rwz",  # unknown permission
        "mask:1000:r--",  # only user and group entries name someone
        "other:1000:r--",
        "user",
    ],
)
def test_malformed_text_is_refused(text: str) -> None:
    with pytest.raises(AclError):
        acl_from_text(text, no_names)


def test_an_id_too_large_for_an_acl_is_refused() -> None:
    with pytest.raises(AclError):
        acl_from_text("user::rw-\nuser:4294967296:r--\ngroup::r--\nmask::r--\nother::---\n", no_names)


def test_permissions_out_of_order_are_refused_or_read_as_written() -> None:
    try:
        raw = acl_from_text("user::wr-\ngroup::r--\nother::---\n", no_names)
    except AclError:
        return
    assert acl_to_text(raw) == "user::rw-\ngroup::r--\nother::---\n"


def test_short_permissions_read_as_setfacl_reads_them() -> None:
    assert acl_to_text(acl_from_text("u::rw,g::r,o::-", no_names)) == "user::rw-\ngroup::r--\nother::---\n"


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"", "wrong length"),
        (b"\x02\x00\x00", "wrong length"),
        (MINIMAL[:-1], "wrong length"),
        (MINIMAL + b"\x01\x00", "wrong length"),
        (acl_value((USER_OBJ, 6, UNDEFINED), version=1), "version 1"),
        (acl_value((USER_OBJ, 6, UNDEFINED), version=3), "version 3"),
        (acl_value((USER_OBJ, 6, UNDEFINED), (0x40, 4, UNDEFINED)), "tag 0x40"),
        (acl_value((0, 4, UNDEFINED)), "tag 0x0"),
    ],
    ids=["empty", "short-header", "cut-entry", "extra-bytes", "version-1", "version-3", "tag-0x40", "tag-0"],
)
def test_malformed_binary_is_refused(raw: bytes, message: str) -> None:
    with pytest.raises(AclError, match=message):
        acl_to_text(raw)


# -- against the kernel and GNU tar ---------------------------------------------------------


def _local_ids(kind: str, name: str) -> int:
    try:
        return pwd.getpwnam(name).pw_uid if kind == "user" else grp.getgrnam(name).gr_gid
    except KeyError:
        raise AclError(f"no {kind} named {name!r}") from None


def _numeric(text: str) -> str:
    """GNU tar's ACL text with its user and group names replaced by their ids."""

    def number(match: re.Match[str]) -> str:
        kind, name = match[1], match[2]
        return f"{kind}:{_local_ids(kind, name)}:" if not name.isdigit() else match[0]

    return re.sub(r"^(user|group):([^:]+):", number, text, flags=re.MULTILINE)


@pytest.mark.skipif(shutil.which(GNU_TAR) is None, reason="needs GNU tar")
def test_gnu_tars_text_gives_back_the_kernels_bytes(tmp_path: Path) -> None:
    """GNU tar writes names where ids have them (``user:nobody:r--``), in the kernel's
    order; acl_from_text with a name look-up must give back the very bytes the kernel
    holds, and acl_to_text the same text with numbers."""
    tree = tmp_path / "tree"
    (tree / "dir").mkdir(parents=True)
    (tree / "file").write_bytes(b"x")
    os.setxattr(tree / "file", ACL_ACCESS, NAMED)
    os.setxattr(
        tree / "dir",
        ACL_ACCESS,
        acl_value(
            (USER_OBJ, 7, UNDEFINED),
            (USER, 5, NOBODY),
            (GROUP_OBJ, 5, UNDEFINED),
            (MASK, 5, UNDEFINED),
            (OTHER, 0, UNDEFINED),
        ),
    )
    os.setxattr(tree / "dir", ACL_DEFAULT, DEFAULT)
    archive = tmp_path / "acls.tar"
    subprocess.run(
        [GNU_TAR, "--format=posix", "--acls", "-cf", str(archive), "-C", str(tree), "file", "dir"], check=True
    )
    with tarfile.open(archive) as tar:
        headers = {member.name: member.pax_headers for member in tar.getmembers()}

    checked = 0
    for name, kind in (("file", "access"), ("dir", "access"), ("dir", "default")):
        text = headers[name][f"SCHILY.acl.{kind}"]
        kernel = os.getxattr(tree / name, ACL_XATTRS[kind])
        assert acl_from_text(text, _local_ids) == kernel, f"{name} {kind}: {text!r}"
        assert acl_to_text(kernel) == _numeric(text), f"{name} {kind}"
        checked += 1
    assert checked == 3
    assert "user:nobody:" in headers["dir"]["SCHILY.acl.default"], "GNU tar wrote no names: the test proves less"


def test_text_made_here_is_accepted_by_the_kernel(tmp_path: Path) -> None:
    """What acl_from_text makes of shuffled, abbreviated text is an ACL the kernel takes
    and keeps byte for byte."""
    target = tmp_path / "file"
    target.write_bytes(b"x")
    raw = acl_from_text("o::---,m::rwx,g:50:--x,u:4321:rw-,g::r-x,u:1000:r--,u::rwx", no_names)
    os.setxattr(target, ACL_ACCESS, raw)
    assert os.getxattr(target, ACL_ACCESS) == raw == NAMED
