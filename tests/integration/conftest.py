"""Helpers shared by the integration tests.

Everything here works on real directories under ``tmp_path``. Comparisons are made
on exact bytes, permission bits, whole-second mtimes and link targets, via
:func:`snapshot`, so a test fails on any difference at all.
"""

from __future__ import annotations

import hashlib
import io
import os
import stat
import subprocess
import sys
import tarfile
import textwrap
from collections.abc import Iterable
from pathlib import Path

import pytest

from support.backups import make_backup
from support.clock import fixed_now as fixed_now  # shared with the unit tests; re-exported

# The integration tests' name for support.backups.make_backup.
backup = make_backup

ROOT = Path(__file__).resolve().parents[2]
SRC = ROOT / "src"
GNU_TAR = "/usr/bin/tar"
ZSTD = "/usr/bin/zstd"

COMPRESSIONS = ["gz", "bz2", "xz", "zst", ""]
SUFFIXES = {"gz": ".tar.gz", "bz2": ".tar.bz2", "xz": ".tar.xz", "zst": ".tar.zst", "": ".tar"}

# A fixed, whole-second base time so mtimes compare exactly.
BASE_MTIME = 1_600_000_000

Entry = tuple[str, int, int, str | None]


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | Path) -> str:
    hasher = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            hasher.update(block)
    return hasher.hexdigest()


def snapshot(root: str | Path) -> dict[str, Entry]:
    """Return ``{relpath: (type, mode, mtime_int, sha256-or-link-target)}`` for everything
    under ``root`` (not ``root`` itself), using lstat, never following symlinks."""
    root = os.fspath(root)
    out: dict[str, Entry] = {}
    if not os.path.isdir(root):
        return out
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            rel = os.path.relpath(path, root).replace(os.sep, "/")
            info = os.lstat(path)
            mode = stat.S_IMODE(info.st_mode)
            mtime = int(info.st_mtime)
            if stat.S_ISLNK(info.st_mode):
                out[rel] = ("symlink", mode, mtime, os.readlink(path))
            elif stat.S_ISDIR(info.st_mode):
                out[rel] = ("dir", mode, mtime, None)
            elif stat.S_ISREG(info.st_mode):
                out[rel] = ("file", mode, mtime, sha256_file(path))
            else:
                out[rel] = ("other", mode, mtime, None)
    return out


def listing(root: str | Path) -> list[str]:
    """Return every path under ``root`` (hidden ones too), relative and sorted."""
    root = os.fspath(root)
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            found.append(os.path.relpath(os.path.join(dirpath, name), root).replace(os.sep, "/"))
    return sorted(found)


def dir_state(directory: str | Path) -> dict[str, tuple[int, int, str]]:
    """Return ``{name: (mode, size, sha256)}`` for the files directly in ``directory``
    (hidden ones included), to prove earlier backups were left untouched."""
    directory = Path(directory)
    if not directory.exists():
        return {}
    state = {}
    for name in sorted(os.listdir(directory)):
        path = directory / name
        info = os.lstat(path)
        digest = sha256_file(path) if stat.S_ISREG(info.st_mode) else ""
        state[name] = (info.st_mode, info.st_size, digest)
    return state


def set_mtime(path: str | Path, seconds: int) -> None:
    os.utime(path, (seconds, seconds), follow_symlinks=False)


def finish_dir_mtimes(root: str | Path, dirs: dict[str, int]) -> None:
    """Give directories their mtimes last, deepest first (writing into a directory
    changes its mtime)."""
    for rel in sorted(dirs, key=lambda r: r.count("/"), reverse=True):
        set_mtime(Path(root) / rel, dirs[rel])


def pattern_bytes(size: int, seed: int) -> bytes:
    """Deterministic, moderately compressible bytes (a random 64 KiB block repeated)."""
    import random

    block = random.Random(seed).randbytes(65536)
    return (block * (size // len(block) + 1))[:size]


# The standard corpus: every kind of entry the library archives.
CORPUS_FILES: dict[str, tuple[bytes, int]] = {
    "top.txt": (b"hello, backup\n", 0o640),
    "empty.txt": (b"", 0o600),
    "run.sh": (b"#!/bin/sh\necho hi\n", 0o755),
    "unicodé-文件 Ω.txt": ("ünïcödé content ✓\n".encode(), 0o644),
    " spaced name.txt": (b"spaces\n", 0o644),
    "sub/nested.bin": (bytes(range(256)) * 40, 0o644),
    "sub/deeper/leaf.txt": (b"leaf\n", 0o600),
    "sub/deeper/zero": (b"", 0o644),
    "sub/big.bin": (pattern_bytes(1_300_000, 1), 0o644),  # more than one 1 MiB chunk
}
CORPUS_DIRS: dict[str, int] = {
    "sub": 0o750,
    "sub/deeper": 0o755,
    "emptydir": 0o700,
    "sub/empty2": 0o755,
}
CORPUS_LINKS: dict[str, str] = {
    "sub/link_to_top": "../top.txt",
    "link_to_sub": "sub",
    "sub/deeper/link_up": "../nested.bin",
    "dangling": "does-not-exist",
}


def make_corpus(root: str | Path) -> dict[str, Entry]:
    """Create the standard corpus under ``root``; return its snapshot."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    times = iter(range(BASE_MTIME, BASE_MTIME + 10_000_000, 3607))
    for rel in CORPUS_DIRS:
        (root / rel).mkdir(parents=True, exist_ok=True)
    for rel, (data, mode) in CORPUS_FILES.items():
        path = root / rel
        path.write_bytes(data)
        os.chmod(path, mode)
        set_mtime(path, next(times))
    for rel, target in CORPUS_LINKS.items():
        os.symlink(target, root / rel)
        set_mtime(root / rel, next(times))
    for rel, mode in CORPUS_DIRS.items():
        os.chmod(root / rel, mode)
    finish_dir_mtimes(root, {rel: next(times) for rel in CORPUS_DIRS})
    return snapshot(root)


def tar_members(archive: Path) -> list[tarfile.TarInfo]:
    with tarfile.open(archive, "r:*") as tf:
        return tf.getmembers()


def decompressed_tar_bytes(archive: Path) -> bytes:
    """Return the uncompressed tar stream of an archive (any compression)."""
    import bz2
    import gzip
    import lzma

    import zstandard

    raw = Path(archive).read_bytes()
    if raw.startswith(b"\x1f\x8b"):
        return gzip.decompress(raw)
    if raw.startswith(b"BZh"):
        return bz2.decompress(raw)
    if raw.startswith(b"\xfd7zXZ\x00"):
        return lzma.decompress(raw)
    if raw.startswith(b"\x28\xb5\x2f\xfd"):
        return zstandard.ZstdDecompressor().stream_reader(io.BytesIO(raw), read_across_frames=True).read()
    return raw


def run_python(code: str, *, timeout: float = 60, **kwargs) -> subprocess.CompletedProcess[str]:
    """Run ``code`` in a fresh interpreter that imports this checkout's ``backup``."""
    env = dict(os.environ, PYTHONPATH=str(SRC))
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        **kwargs,
    )


def popen_python(code: str, **kwargs) -> subprocess.Popen[str]:
    env = dict(os.environ, PYTHONPATH=str(SRC))
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(code)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **kwargs,
    )


def staging_leftovers(root: str | Path) -> list[str]:
    return [p for p in listing(root) if ".obs-restore-" in p or ".obs-replaced-" in p]


def write_tar(
    path: Path, members: Iterable[tuple[tarfile.TarInfo, bytes | None]], mode: str = "w", fmt: int = tarfile.PAX_FORMAT
) -> Path:
    """Write an archive from ``(TarInfo, data)`` pairs exactly as given (no name clean-up)."""
    with tarfile.open(path, mode, format=fmt) as tf:
        for info, data in members:
            if data is not None:
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
            else:
                tf.addfile(info)
    return path


def tar_file(name: str, data: bytes = b"data\n", mode: int = 0o644) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.mode = mode
    info.mtime = BASE_MTIME
    return info, data


def tar_dir(name: str, mode: int = 0o755) -> tuple[tarfile.TarInfo, None]:
    info = tarfile.TarInfo(name)
    info.type = tarfile.DIRTYPE
    info.mode = mode
    info.mtime = BASE_MTIME
    return info, None


def tar_link(name: str, target: str, kind: bytes = tarfile.SYMTYPE) -> tuple[tarfile.TarInfo, None]:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = target
    info.mode = 0o777
    info.mtime = BASE_MTIME
    return info, None


@pytest.fixture
def corpus(tmp_path: Path) -> tuple[Path, dict[str, Entry]]:
    source = tmp_path / "source"
    return source, make_corpus(source)
