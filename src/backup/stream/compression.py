"""Compression formats: one table row each, holding everything about the format.

A row gives the format's config name and spellings, its archive suffix, its magic
bytes, its level range, and how to open a compressing writer and a decompressing
reader. Everything else (the CLI's choices, name normalisation, archive names, format
detection, the errors a damaged stream raises) is derived from the table, so a new
format is one new row.

Readers of our own archives take the format from the manifest; an archive of unknown
origin is recognised by its first bytes, not its name.
"""

from __future__ import annotations

import bz2
import gzip
import lzma
import os
import sys
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, BinaryIO, cast

from zlib_ng import gzip_ng, gzip_ng_threaded, zlib_ng

if sys.version_info >= (3, 14):
    from compression import zstd
else:
    from backports import zstd

from ..errors import ConfigError
from .layers import PassThrough

__all__ = [
    "COMPRESSIONS",
    "DECOMPRESSION_ERRORS",
    "Compression",
    "archive_suffix",
    "check_level",
    "cli_choices",
    "decode_prefix",
    "detect_compression",
    "normalize_compression",
    "split_archive_name",
    "unsupported_compression",
]

Writer = Callable[[BinaryIO, int, "int | None"], BinaryIO]
Reader = Callable[[BinaryIO], BinaryIO]


@dataclass(frozen=True)
class Compression:
    """One supported format.

    ``writer(raw, level, size_hint)`` returns a stream that compresses into ``raw``;
    closing it finishes the compressed data and leaves ``raw`` open. ``reader(raw)``
    returns a stream of the decompressed bytes. ``errors`` are what a damaged stream
    raises while being read. ``magic`` starts what the writer writes; ``other_magics``
    start other streams of the format that the reader also reads.
    """

    name: str
    suffix: str
    magic: bytes
    default_level: int
    min_level: int
    max_level: int
    writer: Writer
    reader: Reader
    errors: tuple[type[BaseException], ...] = ()
    # An incremental decoder (``decompress(data, max_length)``), for what the first
    # bytes of a damaged stream still decode to; None: the bytes are the tar stream.
    decoder: Callable[[], Any] | None = None
    aliases: tuple[str, ...] = ()
    other_suffixes: tuple[str, ...] = ()
    other_magics: tuple[bytes, ...] = ()

    @property
    def cli_name(self) -> str:
        """The name the command line offers for it ('none' for no compression)."""
        return self.name or "none"


# Below this much input, starting compression threads costs more than it saves.
THREADED_GZIP_MIN_BYTES = 8 << 20


def _gzip_writer(raw: BinaryIO, level: int, size_hint: int | None) -> BinaryIO:
    threads = os.cpu_count() or 1
    if threads > 1 and (size_hint is None or size_hint >= THREADED_GZIP_MIN_BYTES):
        # Blocks compressed on every core, each primed with the previous block as its
        # dictionary: one ordinary gzip member that any gunzip reads, about as small as
        # a single-threaded stream.
        return cast(BinaryIO, gzip_ng_threaded.open(raw, "wb", compresslevel=level, threads=threads))  # type: ignore[no-untyped-call]
    # filename="" and mtime=0 keep the gzip header free of temp names and clocks.
    return cast(BinaryIO, gzip_ng.GzipNGFile(filename="", mode="wb", fileobj=raw, compresslevel=level, mtime=0))  # type: ignore[no-untyped-call]


def _zstd_writer(raw: BinaryIO, level: int, size_hint: int | None) -> BinaryIO:
    options: dict[int, int] = {
        zstd.CompressionParameter.compression_level: level,
        zstd.CompressionParameter.checksum_flag: 1,
        zstd.CompressionParameter.nb_workers: os.cpu_count() or 1,
    }
    return cast(BinaryIO, zstd.ZstdFile(raw, "wb", options=options))


def _zstd_reader(raw: BinaryIO) -> BinaryIO:
    # Reads across frames, skips skippable ones, and raises EOFError for a stream cut
    # inside a frame (a reader that ends quietly there would hide the cut).
    return cast(BinaryIO, zstd.ZstdFile(raw, "rb"))


# A zstd stream may begin with a skippable frame (magic 0x184D2A50-0x184D2A5F).
_ZSTD_SKIPPABLE = tuple(bytes([0x50 + low, 0x2A, 0x4D, 0x18]) for low in range(16))


COMPRESSIONS: dict[str, Compression] = {
    row.name: row
    for row in (
        Compression(
            name="",
            suffix=".tar",
            magic=b"",
            default_level=0,
            min_level=0,
            max_level=0,
            writer=lambda raw, level, size_hint: cast(BinaryIO, PassThrough(raw)),
            reader=lambda raw: raw,
            aliases=("none", "tar"),
        ),
        Compression(
            name="gz",
            suffix=".tar.gz",
            magic=b"\x1f\x8b",
            default_level=6,
            min_level=1,
            max_level=9,
            writer=_gzip_writer,
            reader=lambda raw: cast(BinaryIO, gzip_ng.GzipNGFile(fileobj=raw, mode="rb")),  # type: ignore[no-untyped-call]
            errors=(
                zlib.error,
                cast(type[BaseException], zlib_ng.error),  # typed as an instance in its stubs
                gzip.BadGzipFile,
            ),
            decoder=lambda: zlib.decompressobj(wbits=31),
            aliases=("gzip", "tgz"),
            other_suffixes=(".tgz",),
        ),
        Compression(
            name="bz2",
            suffix=".tar.bz2",
            magic=b"BZh",
            default_level=9,
            min_level=1,
            max_level=9,
            writer=lambda raw, level, size_hint: cast(BinaryIO, bz2.BZ2File(raw, "wb", compresslevel=level)),
            reader=lambda raw: cast(BinaryIO, bz2.BZ2File(raw, "rb")),
            decoder=bz2.BZ2Decompressor,
            aliases=("bzip2",),
            other_suffixes=(".tbz2",),
        ),
        Compression(
            name="xz",
            suffix=".tar.xz",
            magic=b"\xfd7zXZ\x00",
            default_level=6,
            min_level=0,
            max_level=9,
            writer=lambda raw, level, size_hint: cast(BinaryIO, lzma.LZMAFile(raw, "wb", preset=level)),
            reader=lambda raw: cast(BinaryIO, lzma.LZMAFile(raw, "rb")),
            errors=(lzma.LZMAError,),
            decoder=lzma.LZMADecompressor,
            other_suffixes=(".txz",),
        ),
        Compression(
            name="zst",
            suffix=".tar.zst",
            magic=b"\x28\xb5\x2f\xfd",
            default_level=3,
            min_level=1,
            max_level=22,
            writer=_zstd_writer,
            reader=_zstd_reader,
            errors=(zstd.ZstdError,),
            decoder=zstd.ZstdDecompressor,
            aliases=("zstd",),
            other_suffixes=(".tar.zstd",),
            other_magics=_ZSTD_SKIPPABLE,
        ),
    )
}

# What a damaged compressed stream can raise while being read (EOFError: cut short).
DECOMPRESSION_ERRORS: tuple[type[BaseException], ...] = (
    EOFError,
    *(error for row in COMPRESSIONS.values() for error in row.errors),
)

_DECODE_ERRORS: tuple[type[BaseException], ...] = (*DECOMPRESSION_ERRORS, ValueError)


def decode_prefix(compression: str, stored: bytes, limit: int) -> bytes:
    """Given the first bytes of a compressed stream, return as much of what they decode
    to as decodes (at most ``limit`` bytes): damage or the end of ``stored`` stops
    the decoding, not the caller. Uncompressed (``""``): the bytes themselves."""
    factory = COMPRESSIONS[compression].decoder
    if factory is None:
        return stored[:limit]
    decompressor = factory()
    decoded = bytearray()
    for start in range(0, len(stored), 4096):
        try:
            decoded += decompressor.decompress(stored[start : start + 4096], limit - len(decoded))
        except _DECODE_ERRORS:
            break
        if len(decoded) >= limit:
            break
    return bytes(decoded[:limit])


_SPELLINGS = {alias: row.name for row in COMPRESSIONS.values() for alias in row.aliases}
# Longest suffix first, so the most specific spelling wins.
_SUFFIXES = sorted(
    [(row.suffix, row.name) for row in COMPRESSIONS.values()]
    + [(suffix, row.name) for row in COMPRESSIONS.values() for suffix in row.other_suffixes],
    key=lambda item: -len(item[0]),
)


def cli_choices() -> list[str]:
    """Return the compression names the command line offers."""
    return [row.cli_name for row in COMPRESSIONS.values() if row.name] + ["none"]


def normalize_compression(value: str | None) -> str:
    """Given a compression name (or None), return its canonical key; raise ConfigError if unknown."""
    key = (value or "").strip().lower()
    key = _SPELLINGS.get(key, key)
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
    for suffix, compression in _SUFFIXES:
        if name.endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)], compression
    return None


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


SNIFF_BYTES = _TAR_BLOCK


def detect_compression(head: bytes) -> str:
    """Given the first bytes of an archive (SNIFF_BYTES, or all of a shorter file),
    return its compression key ('' if uncompressed).

    As GNU tar does, a first block that is a valid tar header means an uncompressed
    archive, whatever its first bytes look like: a member named "BZh..." is not bzip2.
    """
    if _is_tar_header(head[:_TAR_BLOCK]):
        return ""
    for spec in COMPRESSIONS.values():
        if spec.magic and head.startswith((spec.magic, *spec.other_magics)):
            return spec.name
    return ""


# Compressions tar archives come in that obs-backup does not read, by their magic bytes.
_UNSUPPORTED = {
    b"\x1f\x9d": "compress (.Z)",
    b"\x1f\xa0": "compress (LZH)",
    b"\x04\x22\x4d\x18": "lz4",
    b"LZIP": "lzip",
    b"\x89LZO\x00\r\n\x1a\n": "lzop",
    b"\x28\xb5\x2f\xfe": "old zstd (v0.7)",
}


def unsupported_compression(head: bytes) -> str | None:
    """Given an archive's first bytes, return the name of a compression it is in that
    obs-backup cannot read (None if it is none of those, or a tar header)."""
    if _is_tar_header(head[:_TAR_BLOCK]):
        return None
    for magic, name in _UNSUPPORTED.items():
        if head.startswith(magic):
            return name
    return None
