"""Compression formats: names, archive suffixes, and stream wrappers.

Readers pick the format from the archive's first bytes, not from its name, so a
renamed archive or one made by another tool still opens.
"""

from __future__ import annotations

import bz2
import gzip
import io
import lzma
import os
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, cast

import zstandard
from zlib_ng import gzip_ng, gzip_ng_threaded, zlib_ng

from .errors import ArchiveError, ConfigError

__all__ = [
    "COMPRESSIONS",
    "DECOMPRESSION_ERRORS",
    "Compression",
    "archive_suffix",
    "check_level",
    "detect_compression",
    "normalize_compression",
    "open_compressor",
    "open_decompressor",
    "sniff_file",
    "split_archive_name",
]


@dataclass(frozen=True)
class Compression:
    """One supported format: its config name, archive suffix and level range."""

    name: str
    suffix: str
    default_level: int
    min_level: int
    max_level: int
    magic: bytes


COMPRESSIONS: dict[str, Compression] = {
    "": Compression("", ".tar", 0, 0, 0, b""),
    "gz": Compression("gz", ".tar.gz", 6, 1, 9, b"\x1f\x8b"),
    "bz2": Compression("bz2", ".tar.bz2", 9, 1, 9, b"BZh"),
    "xz": Compression("xz", ".tar.xz", 6, 0, 9, b"\xfd7zXZ\x00"),
    "zst": Compression("zst", ".tar.zst", 3, 1, 22, b"\x28\xb5\x2f\xfd"),
}

# Other spellings users and other tools use for the same formats.
_ALIASES = {"none": "", "tar": "", "gzip": "gz", "tgz": "gz", "bzip2": "bz2", "zstd": "zst"}
_EXTRA_SUFFIXES = {".tgz": "gz", ".tar.zstd": "zst", ".tbz2": "bz2", ".txz": "xz"}

# What a damaged compressed stream can raise while being read.
DECOMPRESSION_ERRORS: tuple[type[BaseException], ...] = (
    EOFError,
    zlib.error,
    cast(type[BaseException], zlib_ng.error),  # typed as an instance in its stubs
    gzip.BadGzipFile,
    lzma.LZMAError,
    zstandard.ZstdError,
)


def normalize_compression(value: str | None) -> str:
    """Given a compression name (or None), return its canonical key; raise ConfigError if unknown."""
    key = (value or "").strip().lower()
    key = _ALIASES.get(key, key)
    if key not in COMPRESSIONS:
        choices = ", ".join(repr(name) for name in COMPRESSIONS if name) + ", '' (none)"
        raise ConfigError(f"unknown compression {value!r}; choose one of {choices}")
    return key


def check_level(compression: str, level: int | None) -> int:
    """Given a canonical compression and a level (None for its default), return the level to use."""
    spec = COMPRESSIONS[compression]
    if level is None:
        return spec.default_level
    if not spec.name:
        return 0
    if not spec.min_level <= level <= spec.max_level:
        raise ConfigError(
            f"compression level {level} is out of range for {compression!r} ({spec.min_level}-{spec.max_level})"
        )
    return level


def archive_suffix(compression: str) -> str:
    """Given a canonical compression key, return the archive suffix (``.tar.gz`` ...)."""
    return COMPRESSIONS[compression].suffix


def split_archive_name(name: str) -> tuple[str, str] | None:
    """Given a file name, return ``(stem, compression)`` if it names a tar archive, else None."""
    candidates = [(spec.suffix, spec.name) for spec in COMPRESSIONS.values()]
    candidates += list(_EXTRA_SUFFIXES.items())
    # Longest suffix first, so the most specific spelling wins.
    for suffix, compression in sorted(candidates, key=lambda item: -len(item[0])):
        if name.endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)], compression
    return None


class _PassThrough(io.RawIOBase):
    """Writes go straight to ``raw``; closing this, like closing a compressor, leaves ``raw`` open."""

    def __init__(self, raw: BinaryIO) -> None:
        super().__init__()
        self._raw = raw

    def writable(self) -> bool:
        return True

    def write(self, data: bytes | bytearray | memoryview) -> int:  # type: ignore[override]
        if self.closed:
            raise ValueError("write to closed stream")
        self._raw.write(data)
        return len(data)

    def flush(self) -> None:
        if not self.closed and not self._raw.closed:
            self._raw.flush()


# Below this much input, starting compression threads costs more than it saves.
THREADED_GZIP_MIN_BYTES = 8 << 20


def open_compressor(raw: BinaryIO, compression: str, level: int, size_hint: int | None = None) -> BinaryIO:
    """Given a writable binary stream, return a stream that compresses into it.

    ``size_hint`` (the bytes expected, if known) lets small archives skip the
    thread pool. Closing the returned stream finishes the compressed data but leaves
    ``raw`` open.
    """
    if compression == "":
        return cast(BinaryIO, _PassThrough(raw))
    if compression == "gz":
        threads = os.cpu_count() or 1
        if threads > 1 and (size_hint is None or size_hint >= THREADED_GZIP_MIN_BYTES):
            # Blocks compressed on every core, each primed with the previous block as
            # its dictionary: one ordinary gzip member that any gunzip reads, about as
            # small as a single-threaded stream.
            return cast(BinaryIO, gzip_ng_threaded.open(raw, "wb", compresslevel=level, threads=threads))  # type: ignore[no-untyped-call]
        # filename="" and mtime=0 keep the gzip header free of temp names and clocks.
        return cast(BinaryIO, gzip_ng.GzipNGFile(filename="", mode="wb", fileobj=raw, compresslevel=level, mtime=0))  # type: ignore[no-untyped-call]
    if compression == "bz2":
        return cast(BinaryIO, bz2.BZ2File(raw, "wb", compresslevel=level))
    if compression == "xz":
        return cast(BinaryIO, lzma.LZMAFile(raw, "wb", preset=level))
    if compression == "zst":
        compressor = zstandard.ZstdCompressor(level=level, write_checksum=True, threads=-1)
        return cast(BinaryIO, compressor.stream_writer(raw, closefd=False))
    raise ConfigError(f"unknown compression {compression!r}")


_TAR_BLOCK = 512


def _is_tar_header(block: bytes) -> bool:
    """Return whether a 512-byte block is a tar header with a valid checksum."""
    if len(block) != _TAR_BLOCK or not any(block):
        return False
    try:
        recorded = int(block[148:156].replace(b"\x00", b" ").strip() or b"-1", 8)
    except ValueError:
        return False
    unsigned = sum(block[:148]) + 8 * 0x20 + sum(block[156:])
    signed = unsigned - 2 * sum(byte for byte in block[:148] + block[156:] if byte >= 0x80)
    return recorded in (unsigned, signed)


def detect_compression(head: bytes) -> str:
    """Given the first bytes of an archive (512 or more, or all of a shorter file),
    return its compression key ('' if uncompressed).

    As GNU tar does, a first block that is a valid tar header means an uncompressed
    archive, whatever its first bytes look like: a member named "BZh..." is not bzip2.
    """
    if _is_tar_header(head[:_TAR_BLOCK]):
        return ""
    for spec in COMPRESSIONS.values():
        if spec.magic and head.startswith(spec.magic):
            return spec.name
    return ""


def open_decompressor(raw: BinaryIO, compression: str) -> BinaryIO:
    """Given a readable stream and its compression key, return a stream of the tar bytes."""
    if compression == "":
        return raw
    if compression == "gz":
        return cast(BinaryIO, gzip_ng.GzipNGFile(fileobj=raw, mode="rb"))  # type: ignore[no-untyped-call]
    if compression == "bz2":
        return cast(BinaryIO, bz2.BZ2File(raw, "rb"))
    if compression == "xz":
        return cast(BinaryIO, lzma.LZMAFile(raw, "rb"))
    if compression == "zst":
        reader = zstandard.ZstdDecompressor().stream_reader(raw, read_across_frames=True, closefd=False)
        return cast(BinaryIO, reader)
    raise ArchiveError(f"unknown compression {compression!r}")


def sniff_file(path: Path) -> str:
    """Given an archive path, return its compression key from its first bytes."""
    with open(path, "rb") as handle:
        return detect_compression(handle.read(_TAR_BLOCK))
