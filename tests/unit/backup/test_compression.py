"""Tests for backup.compression: names, levels, suffixes, streams and magic bytes."""

from __future__ import annotations

import io
import os
import tarfile

import pytest

from backup.compression import (
    COMPRESSIONS,
    archive_suffix,
    check_level,
    detect_compression,
    normalize_compression,
    open_compressor,
    open_decompressor,
    split_archive_name,
)
from backup.errors import ArchiveError, ConfigError

ALL_FORMATS = ["", "gz", "bz2", "xz", "zst"]


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("", ""),
        (None, ""),
        ("none", ""),
        ("tar", ""),
        ("gz", "gz"),
        ("gzip", "gz"),
        ("tgz", "gz"),
        ("GZIP", "gz"),
        (" gz ", "gz"),
        ("bz2", "bz2"),
        ("bzip2", "bz2"),
        ("xz", "xz"),
        ("zst", "zst"),
        ("zstd", "zst"),
        ("ZSTD", "zst"),
    ],
)
def test_normalize_compression_aliases(value: str | None, expected: str) -> None:
    """Every spelling maps to its canonical key."""
    assert normalize_compression(value) == expected


@pytest.mark.parametrize("value", ["lz4", "zip", "gz2", "7z"])
def test_normalize_compression_unknown_names_value(value: str) -> None:
    """An unknown name is a ConfigError whose message names it."""
    with pytest.raises(ConfigError) as info:
        normalize_compression(value)
    assert f"unknown compression {value!r}" in str(info.value)


@pytest.mark.parametrize(("compression", "default"), [("", 0), ("gz", 6), ("bz2", 9), ("xz", 6), ("zst", 3)])
def test_check_level_default(compression: str, default: int) -> None:
    """None selects each format's default level."""
    assert check_level(compression, None) == default


@pytest.mark.parametrize(("compression", "low", "high"), [("gz", 1, 9), ("bz2", 1, 9), ("xz", 0, 9), ("zst", 1, 22)])
def test_check_level_range(compression: str, low: int, high: int) -> None:
    """The ends of each range are accepted; one past either end is a ConfigError naming the range."""
    assert check_level(compression, low) == low
    assert check_level(compression, high) == high
    for bad in (low - 1, high + 1):
        with pytest.raises(ConfigError) as info:
            check_level(compression, bad)
        assert f"compression level {bad} is out of range for {compression!r} ({low}-{high})" in str(info.value)


def test_check_level_uncompressed_ignores_level() -> None:
    """An uncompressed archive has no level: any given level becomes 0."""
    assert check_level("", 5) == 0


@pytest.mark.parametrize(
    ("compression", "suffix"),
    [("", ".tar"), ("gz", ".tar.gz"), ("bz2", ".tar.bz2"), ("xz", ".tar.xz"), ("zst", ".tar.zst")],
)
def test_archive_suffix(compression: str, suffix: str) -> None:
    """Each format has its conventional suffix."""
    assert archive_suffix(compression) == suffix


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("b_20240101_000000.tar", ("b_20240101_000000", "")),
        ("b.tar.gz", ("b", "gz")),
        ("b.tgz", ("b", "gz")),
        ("b.tar.bz2", ("b", "bz2")),
        ("b.tbz2", ("b", "bz2")),
        ("b.tar.xz", ("b", "xz")),
        ("b.txz", ("b", "xz")),
        ("b.tar.zst", ("b", "zst")),
        ("b.tar.zstd", ("b", "zst")),
        ("x.y.tar.gz", ("x.y", "gz")),
    ],
)
def test_split_archive_name_every_suffix(name: str, expected: tuple[str, str]) -> None:
    """Every archive suffix splits into stem and compression, the longest suffix winning."""
    assert split_archive_name(name) == expected


@pytest.mark.parametrize(
    "name",
    ["notes.txt", "b.gz", "b.zst", "b.manifest.json", ".tar", ".tar.gz", ".tgz", "tar", "b.tar.gz.partial", ""],
)
def test_split_archive_name_non_archives(name: str) -> None:
    """Names that are not tar archives (or are only a suffix) give None."""
    assert split_archive_name(name) is None


def _tar_bytes() -> bytes:
    """A small real tar stream, so round trips carry realistic data."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        data = b"payload " * 5000
        info = tarfile.TarInfo("a.txt")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


@pytest.mark.parametrize("compression", ALL_FORMATS)
def test_round_trip_every_format(compression: str) -> None:
    """Bytes written through a compressor come back unchanged through the decompressor."""
    data = _tar_bytes() + os.urandom(4096)
    raw = io.BytesIO()
    writer = open_compressor(raw, compression, check_level(compression, None))
    writer.write(data)
    writer.close()
    assert raw.closed is False
    raw.seek(0)
    reader = open_decompressor(raw, compression)
    assert reader.read() == data


@pytest.mark.parametrize("compression", ALL_FORMATS)
def test_closing_compressor_leaves_raw_open(compression: str) -> None:
    """Closing the compressor finishes its data but leaves the raw stream usable."""
    raw = io.BytesIO()
    writer = open_compressor(raw, compression, check_level(compression, None))
    writer.write(b"abc")
    writer.close()
    assert raw.closed is False
    raw.write(b"")  # still writable: would raise ValueError if closed
    if compression:
        assert raw.getvalue().startswith(COMPRESSIONS[compression].magic)
    else:
        assert raw.getvalue() == b"abc"


@pytest.mark.parametrize("compression", ALL_FORMATS)
def test_detect_compression_of_real_output(compression: str) -> None:
    """The compressor's own output is recognised by its magic bytes."""
    raw = io.BytesIO()
    writer = open_compressor(raw, compression, check_level(compression, None))
    writer.write(_tar_bytes())
    writer.close()
    assert detect_compression(raw.getvalue()[:8]) == compression


@pytest.mark.parametrize(
    ("head", "expected"),
    [
        (b"\x1f\x8b\x08\x00", "gz"),
        (b"BZh91AY", "bz2"),
        (b"\xfd7zXZ\x00\x00", "xz"),
        (b"\x28\xb5\x2f\xfd\x00", "zst"),
        (b"", ""),
        (b"\x1f", ""),
        (b"a.txt\x00\x00\x00", ""),
        (b"PK\x03\x04", ""),
    ],
)
def test_detect_compression_magic(head: bytes, expected: str) -> None:
    """Magic bytes pick the format; anything else (or too short) is uncompressed."""
    assert detect_compression(head) == expected


def test_open_compressor_unknown_raises_config_error() -> None:
    """A non-canonical key is refused when opening a compressor."""
    with pytest.raises(ConfigError):
        open_compressor(io.BytesIO(), "gzip", 6)


def test_open_decompressor_unknown_raises_archive_error() -> None:
    """A non-canonical key is refused when opening a decompressor."""
    with pytest.raises(ArchiveError):
        open_decompressor(io.BytesIO(), "lz4")


@pytest.mark.parametrize("magic", [b"\x1f\x8b", b"BZh", b"BZh91AY&SY", b"\xfd7zXZ\x00", b"\x28\xb5\x2f\xfd"])
def test_uncompressed_archive_whose_first_name_looks_like_magic_is_uncompressed(magic: bytes) -> None:
    """An uncompressed archive starts with its first member's name: a member named
    "BZh91..." must not make the archive look like bzip2 (GNU tar checks the header first)."""
    info = tarfile.TarInfo(magic.decode("latin-1") + "notes.txt")
    head = info.tobuf(tarfile.GNU_FORMAT, "latin-1", "strict")  # raw bytes in the name field, as GNU tar writes
    assert head.startswith(magic)
    assert detect_compression(head) == ""


def test_a_block_with_a_bad_checksum_is_not_taken_for_a_tar_header() -> None:
    """Bytes that merely begin like a compressed stream are still recognised by magic."""
    block = bytearray(tarfile.TarInfo("BZh9x").tobuf(tarfile.USTAR_FORMAT))
    block[150] ^= 1
    assert detect_compression(bytes(block)) == "bz2"
