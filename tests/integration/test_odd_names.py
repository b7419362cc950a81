"""Names of any shape: whatever ``create_backup`` reports as a success verifies,
restores byte for byte, and extracts to the same tree with GNU tar.

Every name here is built as bytes and created through ``os.fsdecode`` (surrogate
escapes), so bytes that are not UTF-8 reach the file system as they are. Trees are
compared with :func:`bytes_snapshot`, which walks with bytes paths, so two names
differing only in undecodable bytes, or only in Unicode normalisation, stay apart.

Each round trip gets its own ``tempfile.TemporaryDirectory`` (pytest's ``tmp_path``
is shared by every example of a hypothesis test, so it cannot give each a clean start).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from backup import BackupConfig, create_backup, load_manifest, restore_backup, verify_backup
from backup.fstree import STAGING_NAME

from .conftest import BASE_MTIME, COMPRESSIONS, GNU_TAR, ROOT, SRC

# --------------------------------------------------------------------------------------
# Trees as flat lists of entries, parents before children
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Node:
    """One entry to create: ``path`` is relative, bytes, components joined by b"/".

    ``data`` is a file's content or a symlink's target (bytes); unused for directories.
    """

    path: bytes
    kind: str  # "file", "dir" or "symlink"
    data: bytes = b""
    mode: int = 0o644
    mtime: int = BASE_MTIME


def file(path: bytes, data: bytes | None = None, mode: int = 0o644, mtime: int = BASE_MTIME) -> Node:
    return Node(path, "file", path if data is None else data, mode, mtime)


def folder(path: bytes, mode: int = 0o755, mtime: int = BASE_MTIME + 7) -> Node:
    return Node(path, "dir", b"", mode, mtime)


def link(path: bytes, target: bytes, mtime: int = BASE_MTIME + 3) -> Node:
    return Node(path, "symlink", target, 0o777, mtime)


def build_tree(root: bytes, nodes: Sequence[Node]) -> None:
    """Create ``nodes`` under ``root``: directories and files in order, then symlinks,
    then directory modes and times, deepest first (filling a directory changes its mtime)."""
    os.makedirs(root, exist_ok=True)
    for node in nodes:
        path = os.path.join(root, node.path)
        if node.kind == "dir":
            os.mkdir(os.fsdecode(path))
        elif node.kind == "file":
            with open(os.fsdecode(path), "wb") as handle:
                handle.write(node.data)
            os.chmod(os.fsdecode(path), node.mode)
            os.utime(os.fsdecode(path), (node.mtime, node.mtime))
    for node in nodes:
        if node.kind == "symlink":
            path = os.fsdecode(os.path.join(root, node.path))
            os.symlink(os.fsdecode(node.data), path)
            os.utime(path, (node.mtime, node.mtime), follow_symlinks=False)
    for node in sorted((n for n in nodes if n.kind == "dir"), key=lambda n: n.path.count(b"/"), reverse=True):
        path = os.fsdecode(os.path.join(root, node.path))
        os.chmod(path, node.mode)
        os.utime(path, (node.mtime, node.mtime))


BytesEntry = tuple[str, int, int, bytes]


def bytes_snapshot(root: bytes) -> dict[bytes, BytesEntry]:
    """Return ``{relpath: (type, permission bits, int mtime, digest-or-target)}`` for
    everything under ``root`` (not ``root`` itself), walking with bytes paths and lstat.

    The last field is the SHA-256 of a file's content, or a symlink's exact target bytes
    (kept raw rather than hashed, so a failing comparison shows the target itself).
    """
    out: dict[bytes, BytesEntry] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            rel = os.path.relpath(path, root)
            info = os.lstat(path)
            mode, mtime = stat.S_IMODE(info.st_mode), int(info.st_mtime)
            if stat.S_ISLNK(info.st_mode):
                out[rel] = ("symlink", mode, mtime, os.readlink(path))
            elif stat.S_ISDIR(info.st_mode):
                out[rel] = ("dir", mode, mtime, b"")
            elif stat.S_ISREG(info.st_mode):
                with open(path, "rb") as handle:
                    out[rel] = ("file", mode, mtime, hashlib.sha256(handle.read()).hexdigest().encode())
            else:
                out[rel] = ("other", mode, mtime, b"")
    return out


@contextmanager
def fresh_dir() -> Iterator[bytes]:
    with tempfile.TemporaryDirectory(prefix="obs-odd-") as temp:
        yield os.fsencode(temp)


def gnu_tar_extract(archive: Path, into: bytes, compression: str) -> None:
    """Extract with GNU tar; insist it succeeded and said nothing at all."""
    os.mkdir(into)
    options = ["--zstd", "-xf"] if compression == "zst" else ["-xf"]
    done = subprocess.run([GNU_TAR, *options, str(archive), "-C", os.fsdecode(into)], capture_output=True)
    assert done.returncode == 0, done.stderr.decode("utf-8", "backslashreplace")
    assert done.stderr == b"", done.stderr.decode("utf-8", "backslashreplace")


def assert_round_trip(
    nodes: Sequence[Node], compression: str, *, allow_external_links: bool = False, source_name: bytes = b"source"
) -> None:
    """Back ``nodes`` up, verify, restore with us and extract with GNU tar: both trees
    must equal the source exactly (bytes names, modes, mtimes, contents, link targets)."""
    with fresh_dir() as temp:
        source = os.path.join(temp, source_name)
        build_tree(source, nodes)
        expected = bytes_snapshot(source)
        assert sorted(expected) == sorted(node.path for node in nodes), "the test built a different tree"

        config = BackupConfig(Path(os.fsdecode(source)), Path(os.fsdecode(temp)) / "backups", compression=compression)
        result = create_backup(config)
        assert result.success, result.error
        assert result.warnings == []
        assert result.manifest is not None and result.backup_path is not None
        assert sorted(os.fsencode(entry.path) for entry in result.manifest.files) == sorted(expected)

        report = verify_backup(result.backup_path)
        assert report.ok, report.lines()

        target = os.path.join(temp, b"restored")
        restored = restore_backup(
            result.backup_path, Path(os.fsdecode(target)), allow_external_links=allow_external_links
        )
        assert restored.success, restored.error
        assert restored.verified is True
        assert restored.warnings == []
        assert bytes_snapshot(target) == expected

        # GNU tar sets each directory's mtime once it has finished extracting into it,
        # so directories' mtimes match here too (checked: no allowance is needed).
        gnu = os.path.join(temp, b"gnu-tar")
        gnu_tar_extract(result.backup_path, gnu, compression)
        assert bytes_snapshot(gnu) == expected


# --------------------------------------------------------------------------------------
# Names
# --------------------------------------------------------------------------------------

NFC_E = "\u00e9".encode()  # é precomposed: b"\xc3\xa9"
NFD_E = "e\u0301".encode()  # e + combining acute: b"e\xcc\x81"
# The zstd magic holds b"/" (0x2f), so no single name can start with it: a path can,
# as a directory b"(\xb5" holding a name starting with b"\xfd".
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
ZSTD_DIR, ZSTD_REST = ZSTD_MAGIC.split(b"/")

NASTY_NAMES: list[bytes] = [
    b"c:notes.txt",
    b"x:",
    b"C:\\Windows\\system32",
    b"back\\slash",
    b"\\",
    b"trailing\\",
    b"-rf",
    b"--help",
    b"-",
    b"new\nline",
    b"\n",
    b"tab\there",
    b"\t",
    b"\r\n",
    b" ",
    b"trailing space ",
    b"BZh91AY&SY",
    b"BZh91AY&SY-rest",
    b"\x1f\x8b",
    b"\x1f\x8b\x08gz",
    b"\xfd7zXZ",
    b"\xfd7zXZ-xz",
    ZSTD_DIR,
    ZSTD_REST + b"zst",
    NFC_E,
    NFD_E,
    b"caf" + NFC_E,
    b"cafe\xcc\x81",
    b"caf\xe9",
    b"\xff\xfe",
    b"\xff",
    b"\x80",
    b"\xed\xa0\x80",  # a UTF-8-encoded surrogate: not valid UTF-8
    b"\xc0\xaf",  # an overlong "/": not valid UTF-8
    b"\xef\xbb\xbfbom",
    b"caf\\xe9",  # what caf\xe9 looks like once made readable
    b"...",
    b".hidden",
    b"@PaxHeader",
    b"@LongLink",
    b"\x1b[31mred",
    b"\x7f",
    b"a" * 100,  # exactly fills the ustar name field
    b"b" * 101,
    b"x" * 255,
    NFC_E * 127,  # 254 bytes, 127 characters
    b"\xe9" * 255,
    "漢字🙂".encode(),
]


def valid_name(name: bytes) -> bool:
    return (
        0 < len(name) <= 255
        and name not in (b".", b"..")
        and b"/" not in name
        and b"\x00" not in name
        and STAGING_NAME.match(os.fsdecode(name)) is None  # obs-backup's own restore leftovers
    )


_TEXT_NAME = st.text(
    st.characters(blacklist_categories=("Cs",), blacklist_characters="/\x00"), min_size=1, max_size=16
).map(str.encode)
_RAW_NAME = st.binary(min_size=1, max_size=16).map(lambda b: b.replace(b"/", b"|").replace(b"\x00", b"0"))
_NASTY_NAME = st.sampled_from(NASTY_NAMES)
_MIXED_NAME = st.tuples(_NASTY_NAME, st.one_of(_TEXT_NAME, _RAW_NAME)).map(lambda pair: (pair[0] + pair[1])[:255])
NAME = st.one_of(_NASTY_NAME, _TEXT_NAME, _RAW_NAME, _MIXED_NAME).filter(valid_name)

FILE_MODES = st.sampled_from([0o644, 0o600, 0o640, 0o755, 0o700, 0o444, 0o000])
DIR_MODES = st.sampled_from([0o755, 0o750, 0o700, 0o775])
MTIMES = st.one_of(st.integers(BASE_MTIME - 10**8, BASE_MTIME + 10**8), st.sampled_from([0, 1, 10**9]))
CONTENT = st.one_of(st.just(b""), st.binary(min_size=1, max_size=512), _NASTY_NAME)

# How a symlink's target is chosen: ("pick", i) points at the i-th created entry;
# ("raw", up, components, style) is an arbitrary relative path climbing at most to the
# source root (up is capped at the link's depth), so it never leads outside.
_TARGET = st.one_of(
    st.tuples(st.just("pick"), st.integers(0, 10_000)),
    st.tuples(
        st.just("raw"),
        st.integers(0, 3),
        st.lists(NAME, min_size=1, max_size=3),
        st.sampled_from(["plain", "dot", "slashes", "trailing"]),
    ),
)
_KIND = st.one_of(
    st.tuples(st.just("file"), CONTENT, FILE_MODES, MTIMES),
    st.tuples(st.just("dir"), DIR_MODES, MTIMES),
    st.tuples(st.just("symlink"), _TARGET, MTIMES),
)
# (which earlier directory holds it, name, what it is): at most 12 entries.
_ENTRIES = st.lists(st.tuples(st.integers(0, 10_000), NAME, _KIND), min_size=1, max_size=12)
_EXTRAS = st.fixed_dictionaries({"nfc_nfd_pair": st.booleans(), "deep": st.booleans(), "zstd_path": st.booleans()})
DEEP_LEVELS = 40


def _raw_target(up: int, components: list[bytes], style: str) -> bytes:
    joined = b"/".join(components)
    if style == "dot":
        joined = b"./" + joined
    elif style == "slashes":
        joined = b"//".join(components)
    elif style == "trailing":
        joined += b"/"
    return b"../" * up + joined


def nodes_from_draw(entries: list, extras: dict) -> list[Node]:
    """Turn a hypothesis draw into a concrete tree (parents before children)."""
    dirs: list[bytes] = [b""]
    taken: set[bytes] = set()
    nodes: list[Node] = []
    pending_links: list[tuple[int, bytes, tuple, int]] = []

    def add(node: Node) -> None:
        taken.add(node.path)
        nodes.append(node)
        if node.kind == "dir":
            dirs.append(node.path)

    if extras["deep"]:
        # 40 nested directories with a file at the bottom; names kept short so the
        # whole path stays far below PATH_MAX even under a 255-byte leaf.
        path = b""
        for level in range(DEEP_LEVELS):
            path = os.path.join(path, b"d\xff%d:" % level)
            add(folder(path, mtime=BASE_MTIME + level))
        add(file(os.path.join(path, b"bottom\nleaf"), b"deep"))
    if extras["zstd_path"]:
        add(folder(ZSTD_DIR))
        add(file(ZSTD_DIR + b"/" + ZSTD_REST + b"-file", ZSTD_MAGIC))
    for pick, name, kind in entries:
        parent = dirs[pick % len(dirs)]
        path = os.path.join(parent, name) if parent else name
        if path in taken:
            continue
        if kind[0] == "file":
            add(file(path, kind[1], kind[2], kind[3]))
        elif kind[0] == "dir":
            add(folder(path, kind[1], kind[2]))
        else:
            taken.add(path)
            pending_links.append((len(nodes), path, kind[1], kind[2]))
            nodes.append(Node(path, "pending"))
    if extras["nfc_nfd_pair"]:
        parent = dirs[len(dirs) // 2]
        for name in (b"\xc3\xa9", b"e\xcc\x81"):
            path = os.path.join(parent, name) if parent else name
            if path not in taken:
                add(file(path, name))
    candidates = [node.path for node in nodes]
    for index, path, spec, mtime in pending_links:
        base = os.path.dirname(path)
        depth = base.count(b"/") + 1 if base else 0
        if spec[0] == "pick":
            chosen = candidates[spec[1] % len(candidates)]
            target = os.path.relpath(chosen, base or b".")
        else:
            target = _raw_target(min(spec[1], depth), spec[2], spec[3])
        nodes[index] = link(path, target, mtime)
    return nodes


def _external_target(draw_up: int, name: bytes, absolute: bool, depth: int) -> bytes:
    if absolute:
        return b"/" + name
    return b"../" * (depth + 1 + draw_up) + name


# --------------------------------------------------------------------------------------
# 1. Properties
# --------------------------------------------------------------------------------------


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(entries=_ENTRIES, extras=_EXTRAS, compression=st.sampled_from(COMPRESSIONS))
def test_trees_with_names_of_any_shape_round_trip(entries: list, extras: dict, compression: str) -> None:
    assert_round_trip(nodes_from_draw(entries, extras), compression)


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    entries=_ENTRIES,
    outside=st.lists(
        st.tuples(st.integers(0, 10_000), NAME, st.integers(0, 2), NAME, st.booleans()), min_size=1, max_size=3
    ),
    compression=st.sampled_from(COMPRESSIONS),
)
def test_links_pointing_outside_round_trip_when_allowed(entries: list, outside: list, compression: str) -> None:
    """Symlinks to absolute paths, or climbing above the source, restore as they are
    with ``allow_external_links=True`` (and GNU tar writes them as they are)."""
    nodes = nodes_from_draw(entries, {"nfc_nfd_pair": False, "deep": False, "zstd_path": False})
    dirs = [b""] + [node.path for node in nodes if node.kind == "dir"]
    taken = {node.path for node in nodes}
    for pick, name, up, target_name, absolute in outside:
        parent = dirs[pick % len(dirs)]
        path = os.path.join(parent, name) if parent else name
        if path in taken:
            continue
        taken.add(path)
        depth = parent.count(b"/") + 1 if parent else 0
        nodes.append(link(path, _external_target(up, target_name, absolute, depth)))
    assert_round_trip(nodes, compression, allow_external_links=True)


# --------------------------------------------------------------------------------------
# 2. Each nasty shape on its own
# --------------------------------------------------------------------------------------


def _deep_path() -> list[Node]:
    nodes, path = [], b""
    for level in range(DEEP_LEVELS):
        path = os.path.join(path, b"level%02d" % level)
        nodes.append(folder(path, mtime=BASE_MTIME + level))
    nodes.append(file(path + b"/bottom.txt", b"forty directories down\n"))
    nodes.append(link(path + b"/to-top", b"../" * DEEP_LEVELS + b"top.txt"))
    nodes.append(file(b"top.txt"))
    return nodes


SHAPES: dict[str, list[Node]] = {
    "colon-file": [file(b"c:notes.txt")],
    "colon-top-dir": [folder(b"x:"), file(b"x:/inside.txt"), folder(b"x:/y:"), file(b"x:/y:/c:z")],
    "drive-letter-path-in-one-name": [file(b"C:\\Windows\\system32\\drivers\\etc\\hosts")],
    "backslashes": [file(b"back\\slash"), file(b"\\"), file(b"trailing\\"), folder(b"\\\\server\\share")],
    "leading-dash": [file(b"-rf"), file(b"--help"), file(b"-"), folder(b"--directory=x"), file(b"--directory=x/-C")],
    "newlines-and-tabs": [file(b"new\nline"), file(b"\n"), file(b"tab\there"), file(b"\t"), file(b"cr\r\n")],
    "bzip2-magic": [file(b"BZh91AY&SY"), file(b"BZh91AY&SY and more")],
    "gzip-magic": [file(b"\x1f\x8b"), file(b"\x1f\x8b\x08\x08gzip")],
    "xz-magic": [file(b"\xfd7zXZ"), file(b"\xfd7zXZ-more")],
    "zstd-magic-path": [folder(ZSTD_DIR), file(ZSTD_DIR + b"/" + ZSTD_REST), file(ZSTD_DIR + b"/" + ZSTD_REST + b"x")],
    "nfc-nfd-siblings": [file(NFC_E, b"nfc"), file(NFD_E, b"nfd"), folder(b"caf" + NFC_E), folder(b"cafe\xcc\x81")],
    "name-of-255-bytes": [file(b"x" * 255), folder(b"d" * 255), file(b"d" * 255 + b"/" + b"f" * 255)],
    "multibyte-name-of-254-bytes": [file(NFC_E * 127), file("🙂".encode() * 63 + b"abc")],
    "ustar-field-boundaries": [
        file(b"a" * 99),
        file(b"a" * 100),
        file(b"a" * 101),
        folder(b"d" * 99),  # archived as 100 bytes with its trailing "/"
        folder(b"e" * 100),  # 101 with it
        link(b"l" * 100, b"t" * 100),
        link(b"m" * 100, b"t" * 101),
    ],
    "deep-path": _deep_path(),
    "non-utf8-bytes": [file(b"caf\xe9"), file(b"\xff\xfe"), file(b"\x80"), file(b"\xed\xa0\x80"), file(b"\xc0\xaf")],
    "non-utf8-255-bytes": [file(b"\xe9" * 255)],
    "non-utf8-directory": [folder(b"dir\xff"), file(b"dir\xff/caf\xe9"), link(b"dir\xff/up", b"../caf\xe9")],
    "non-utf8-symlink-targets": [
        file(b"caf\xe9"),
        link(b"to-latin1", b"caf\xe9"),
        link(b"dangling\xff", b"missing\xfe/\xff"),
        link(b"lnk\nline", b"./caf\xe9"),
        link(b"long-target", b"\xe9" * 200 + b"/" + b"\xff" * 200),
    ],
    "readable-form-collision": [file(b"caf\xe9.txt", b"latin-1"), file(b"caf\\xe9.txt", b"backslash")],
    "tar-internal-names": [
        file(b"@PaxHeader"),
        file(b"@LongLink"),
        folder(b"PaxHeaders.0"),
        file(b"PaxHeaders.0/@PaxHeader"),
    ],
    "escape-sequences": [file(b"\x1b[31mred\x1b[0m"), file(b"\x7f"), file(b"\x01\x02\x03")],
    "dots": [file(b"..."), file(b".hidden"), file(b"...."), folder(b". ."), file(b". ./.. ")],
    "links-with-odd-names-and-targets": [
        file(b"c:notes.txt"),
        link(b"-link", b"c:notes.txt"),
        link(b"x:\\", b"./c:notes.txt"),
        link(b"tab\tlink", b"\\"),
        link(b"self", b"self"),
        link(b"nl\n", b"new\nline/target"),
    ],
}


@pytest.mark.parametrize("shape", list(SHAPES))
def test_each_nasty_shape_round_trips(shape: str) -> None:
    nodes = SHAPES[shape]
    compression = COMPRESSIONS[list(SHAPES).index(shape) % len(COMPRESSIONS)]
    assert_round_trip(nodes, compression)


@pytest.mark.parametrize("compression", COMPRESSIONS)
def test_every_nasty_name_at_once_in_every_compression(compression: str) -> None:
    nodes = [file(name) for name in dict.fromkeys(NASTY_NAMES) if name != ZSTD_DIR]
    nodes += [folder(ZSTD_DIR), file(ZSTD_DIR + b"/" + ZSTD_REST)]
    assert_round_trip(nodes, compression)


def test_odd_source_directory_name() -> None:
    """The source directory's own name (recorded in the manifest) may be odd too."""
    assert_round_trip([file(b"caf\xe9"), file(b"c:notes.txt")], "gz", source_name=b"src \xff\n-x:")


# --------------------------------------------------------------------------------------
# 3. The manifest records names that are not UTF-8 reversibly
# --------------------------------------------------------------------------------------


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


def test_manifest_records_non_utf8_names_reversibly() -> None:
    with fresh_dir() as temp:
        source = os.path.join(temp, b"source")
        build_tree(
            source,
            [
                file(b"caf\xe9.txt", b"latin-1 name"),
                file(b"caf\\xe9.txt", b"a real backslash"),
                file(b"plain.txt"),
                link(b"lnk\xff", b"caf\xe9.txt"),
            ],
        )
        result = create_backup(BackupConfig(Path(os.fsdecode(source)), Path(os.fsdecode(temp)) / "backups"))
        assert result.success, result.error
        assert result.manifest_path is not None

        raw = result.manifest_path.read_bytes()
        text = raw.decode("utf-8")  # strict: the file is valid UTF-8
        data = json.loads(text)
        by_bytes = {
            base64.b64decode(entry["path_bytes"]) if "path_bytes" in entry else entry["path"].encode(): entry
            for entry in data["files"]
        }
        assert sorted(by_bytes) == sorted([b"caf\xe9.txt", b"caf\\xe9.txt", b"plain.txt", b"lnk\xff"])

        latin = by_bytes[b"caf\xe9.txt"]
        assert latin["path"] == "caf\\xe9.txt"
        assert latin["path_bytes"] == _b64(b"caf\xe9.txt")
        backslash = by_bytes[b"caf\\xe9.txt"]
        assert backslash["path"] == "caf\\xe9.txt"  # the same readable form ...
        assert "path_bytes" not in backslash  # ... told apart by path_bytes
        assert "path_bytes" not in by_bytes[b"plain.txt"]

        symlink = by_bytes[b"lnk\xff"]
        assert symlink["type"] == "symlink"
        assert symlink["path"] == "lnk\\xff"
        assert symlink["path_bytes"] == _b64(b"lnk\xff")
        assert symlink["link_target"] == "caf\\xe9.txt"
        assert symlink["link_target_bytes"] == _b64(b"caf\xe9.txt")

        loaded = load_manifest(result.manifest_path)
        names = {entry.path: entry for entry in loaded.files}
        assert sorted(names) == sorted(os.fsdecode(name) for name in by_bytes)
        assert names[os.fsdecode(b"lnk\xff")].link_target == os.fsdecode(b"caf\xe9.txt")
        assert names[os.fsdecode(b"caf\xe9.txt")].checksum == hashlib.sha256(b"latin-1 name").hexdigest()
        assert names["caf\\xe9.txt"].checksum == hashlib.sha256(b"a real backslash").hexdigest()


# --------------------------------------------------------------------------------------
# 4. The command line
# --------------------------------------------------------------------------------------

CLI_TREE = [
    file(b"caf\xe9.txt", b"latin-1 name"),
    file(b"c:notes.txt", b"colon"),
    folder(b"x:"),
    file(b"x:/\xff\xfe", b"bytes"),
    link(b"lnk\xff", b"caf\xe9.txt"),
]

# C.UTF-8 makes Python's stdout forgiving (surrogateescape); under any other UTF-8
# locale (en_US.UTF-8, the usual one, is not installed here) it is strict, which
# PYTHONIOENCODING reproduces.
STDOUT_MODES = {"c-utf8-locale": {}, "strict-utf8-stdout": {"PYTHONIOENCODING": "utf-8:strict"}}


def _cli(env_extra: dict[str, str], *argv: str) -> subprocess.CompletedProcess[bytes]:
    env = dict(os.environ, PYTHONPATH=str(SRC), **env_extra)
    python = ROOT / ".venv" / "bin" / "python"
    return subprocess.run(
        [str(python) if python.exists() else sys.executable, "-m", "backup", *argv],
        env=env,
        capture_output=True,
        timeout=60,
    )


def _ok(done: subprocess.CompletedProcess[bytes]) -> bytes:
    assert done.returncode == 0, (done.returncode, done.stderr.decode("utf-8", "backslashreplace"))
    return done.stdout


def _json(out: bytes) -> object:
    """JSON output must be UTF-8 (RFC 8259), whatever the names in it."""
    try:
        text = out.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise AssertionError(
            f"JSON output is not valid UTF-8: {exc}: {out[max(0, exc.start - 40) : exc.end + 40]!r}"
        ) from None
    return json.loads(text)


@pytest.mark.parametrize("stdout_mode", list(STDOUT_MODES))
def test_cli_create_verify_list_restore_with_odd_names(stdout_mode: str) -> None:
    env = STDOUT_MODES[stdout_mode]
    with fresh_dir() as temp:
        source = os.path.join(temp, b"source")
        build_tree(source, CLI_TREE)
        expected = bytes_snapshot(source)
        backups = os.fsdecode(os.path.join(temp, b"backups"))

        created = _json(_ok(_cli(env, "create", os.fsdecode(source), backups, "--json")))
        assert isinstance(created, dict) and created["success"] is True
        assert created["file_count"] == 3
        archive = created["path"]

        _ok(_cli(env, "verify", archive))
        assert _json(_ok(_cli(env, "verify", archive, "--json")))
        assert os.path.basename(archive).encode() in _ok(_cli(env, "list", backups))
        listed = _json(_ok(_cli(env, "list", backups, "--json")))
        assert isinstance(listed, list) and [item["archive_path"] for item in listed] == [archive]

        target = os.path.join(temp, b"restored")
        _ok(_cli(env, "restore", archive, os.fsdecode(target)))
        assert bytes_snapshot(target) == expected


DRY_RUNS = {
    "create-dry-run-list": ("create", "--dry-run", "--list"),
    "create-dry-run-list-json": ("create", "--dry-run", "--list", "--json"),
    "restore-dry-run": ("restore", "--dry-run"),
    "restore-dry-run-json": ("restore", "--dry-run", "--json"),
}


@pytest.mark.parametrize("stdout_mode", list(STDOUT_MODES))
@pytest.mark.parametrize("dry_run", list(DRY_RUNS))
def test_cli_dry_runs_print_odd_names(dry_run: str, stdout_mode: str) -> None:
    """The dry runs print every entry's name: a name that is not UTF-8 must neither
    crash them nor make their JSON output invalid."""
    env = STDOUT_MODES[stdout_mode]
    command, *options = DRY_RUNS[dry_run]
    with fresh_dir() as temp:
        source = os.fsdecode(os.path.join(temp, b"source"))
        build_tree(os.fsencode(source), CLI_TREE)
        backups = os.fsdecode(os.path.join(temp, b"backups"))
        if command == "create":
            argv = ["create", source, backups, *options]
        else:
            created = _json(_ok(_cli(env, "create", source, backups, "--json")))
            assert isinstance(created, dict)
            argv = ["restore", created["path"], os.fsdecode(os.path.join(temp, b"restored")), *options]

        out = _ok(_cli(env, *argv))
        if "--json" in options:
            plan = _json(out)
            assert isinstance(plan, dict) and plan["dry_run"] is True
            # How a name that is not UTF-8 is spelled in JSON is not prescribed here.
            assert len(plan["entries"]) == len(CLI_TREE)
            assert "c:notes.txt" in [item["path"] for item in plan["entries"]]
        else:
            assert out.count(b"(dry run; not making any changes) ") >= len(CLI_TREE) + 2
            assert b"c:notes.txt" in out
        if command == "restore":
            assert not os.path.exists(os.path.join(temp, b"restored"))
        else:
            assert not os.path.exists(backups) or not any(n.endswith(".tar.gz") for n in os.listdir(backups))
