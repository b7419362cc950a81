"""Tests for backup.stream.compression: the table of formats, and everything derived from it.

Most tests run over every row of ``COMPRESSIONS``, so a new format added as one row is
tested by them without a line changed here; the fixed tables below pin the spellings
and ranges users already rely on.
"""

from __future__ import annotations

import gzip
import io
import os
import random
import tarfile
import zlib

import pytest

from backup.errors import ConfigError
from backup.stream.compression import (
    COMPRESSIONS,
    DECOMPRESSION_ERRORS,
    SNIFF_BYTES,
    THREADED_GZIP_MIN_BYTES,
    Compression,
    archive_suffix,
    check_level,
    cli_choices,
    detect_compression,
    normalize_compression,
    split_archive_name,
)

ROWS = list(COMPRESSIONS.values())
COMPRESSED = [row for row in ROWS if row.name]


def _ids(row: Compression) -> str:
    return row.cli_name


def _tar_bytes() -> bytes:
    """A small real tar stream, so round trips carry realistic data."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        data = b"payload " * 5000
        info = tarfile.TarInfo("a.txt")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def _compress(row: Compression, data: bytes, level: int | None = None, size_hint: int | None = None) -> bytes:
    raw = io.BytesIO()
    writer = row.writer(raw, row.default_level if level is None else level, size_hint)
    writer.write(data)
    writer.close()
    assert raw.closed is False
    return raw.getvalue()


def _decompress(row: Compression, blob: bytes) -> bytes:
    return row.reader(io.BytesIO(blob)).read()


# --- the table ---------------------------------------------------------------------------


def test_the_table_is_keyed_by_each_row_s_name() -> None:
    """A row's key is its name; the uncompressed row is the empty name."""
    assert all(key == row.name for key, row in COMPRESSIONS.items())
    assert "" in COMPRESSIONS


def test_the_table_holds_the_formats_users_rely_on() -> None:
    """Removing a row would break existing configurations and archives."""
    assert {"", "gz", "bz2", "xz", "zst"} <= set(COMPRESSIONS)


@pytest.mark.parametrize("row", ROWS, ids=_ids)
def test_each_row_is_consistent(row: Compression) -> None:
    """Level range holds its default; a compressed row has magic bytes, the
    uncompressed one none; every suffix names a tar archive."""
    assert row.min_level <= row.default_level <= row.max_level
    assert bool(row.magic) == bool(row.name)
    for suffix in (row.suffix, *row.other_suffixes):
        assert suffix.startswith(".t")


def test_no_two_rows_share_a_spelling_a_suffix_or_magic_bytes() -> None:
    """Names, aliases, suffixes and magic bytes each pick exactly one row."""
    spellings = [spelling for row in ROWS for spelling in (row.name, *row.aliases)]
    suffixes = [suffix for row in ROWS for suffix in (row.suffix, *row.other_suffixes)]
    magics = [magic for row in COMPRESSED for magic in (row.magic, *row.other_magics)]
    assert len(spellings) == len(set(spellings))
    assert len(suffixes) == len(set(suffixes))
    assert len(magics) == len(set(magics))
    assert not any(a != b and b.startswith(a) for a in magics for b in magics)


# --- names -------------------------------------------------------------------------------


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
    """Every spelling users have written maps to its canonical key."""
    assert normalize_compression(value) == expected


@pytest.mark.parametrize("row", ROWS, ids=_ids)
def test_every_name_and_alias_of_a_row_normalizes_to_it(row: Compression) -> None:
    """The row's name, its aliases and its CLI name, in any case and with spaces around."""
    for spelling in (row.name, *row.aliases, row.cli_name):
        assert normalize_compression(spelling) == row.name
        assert normalize_compression(f"  {spelling.upper()} ") == row.name


@pytest.mark.parametrize("value", ["lz4", "zip", "gz2", "7z", ".tar.gz"])
def test_normalize_compression_unknown_names_value(value: str) -> None:
    """An unknown name is a ConfigError whose message names it and lists the choices."""
    with pytest.raises(ConfigError) as info:
        normalize_compression(value)
    assert f"unknown compression {value!r}" in str(info.value)
    for row in COMPRESSED:
        assert repr(row.name) in str(info.value)


def test_cli_choices_are_derived_from_the_table() -> None:
    """One choice per row, in table order, with 'none' for no compression; each is
    accepted by normalize_compression and leads back to its row."""
    choices = cli_choices()
    assert choices == [row.name for row in COMPRESSED] + ["none"]
    assert sorted(choices) == sorted(row.cli_name for row in ROWS)
    assert len(choices) == len(set(choices))
    assert {normalize_compression(choice) for choice in choices} == set(COMPRESSIONS)


# --- levels ------------------------------------------------------------------------------


@pytest.mark.parametrize(("compression", "default"), [("", 0), ("gz", 6), ("bz2", 9), ("xz", 6), ("zst", 3)])
def test_check_level_default(compression: str, default: int) -> None:
    """None selects each format's default level."""
    assert check_level(compression, None) == default


@pytest.mark.parametrize(("compression", "low", "high"), [("gz", 1, 9), ("bz2", 1, 9), ("xz", 0, 9), ("zst", 1, 22)])
def test_check_level_range(compression: str, low: int, high: int) -> None:
    """The ends of each range are accepted; one past either end is a ConfigError naming the range."""
    assert (COMPRESSIONS[compression].min_level, COMPRESSIONS[compression].max_level) == (low, high)
    assert check_level(compression, low) == low
    assert check_level(compression, high) == high
    for bad in (low - 1, high + 1):
        with pytest.raises(ConfigError) as info:
            check_level(compression, bad)
        assert f"compression level {bad} is out of range for {compression!r} ({low}-{high})" in str(info.value)


@pytest.mark.parametrize("row", COMPRESSED, ids=_ids)
def test_check_level_follows_the_row(row: Compression) -> None:
    """Whatever the row's range, its ends pass and one past them fails."""
    assert check_level(row.name, None) == row.default_level
    assert check_level(row.name, row.min_level) == row.min_level
    assert check_level(row.name, row.max_level) == row.max_level
    for bad in (row.min_level - 1, row.max_level + 1):
        with pytest.raises(ConfigError):
            check_level(row.name, bad)


def test_check_level_uncompressed_ignores_level() -> None:
    """An uncompressed archive has no level: any given level becomes 0."""
    assert check_level("", 5) == 0


# --- suffixes ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("compression", "suffix"),
    [("", ".tar"), ("gz", ".tar.gz"), ("bz2", ".tar.bz2"), ("xz", ".tar.xz"), ("zst", ".tar.zst")],
)
def test_archive_suffix(compression: str, suffix: str) -> None:
    """Each format has its conventional suffix."""
    assert archive_suffix(compression) == suffix


@pytest.mark.parametrize("row", ROWS, ids=_ids)
def test_every_suffix_of_a_row_splits_back_to_it(row: Compression) -> None:
    """Its own suffix (what archive_suffix gives) and its other spellings."""
    assert archive_suffix(row.name) == row.suffix
    for suffix in (row.suffix, *row.other_suffixes):
        assert split_archive_name(f"b_20240101_000000{suffix}") == ("b_20240101_000000", row.name)
        assert split_archive_name(f"x.y{suffix}") == ("x.y", row.name)


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


# --- writers and readers -----------------------------------------------------------------


@pytest.mark.parametrize("row", ROWS, ids=_ids)
def test_round_trip_every_row(row: Compression) -> None:
    """Bytes written through a row's writer come back unchanged through its reader."""
    data = _tar_bytes() + os.urandom(4096)
    assert _decompress(row, _compress(row, data)) == data


@pytest.mark.parametrize("row", COMPRESSED, ids=_ids)
def test_round_trip_at_every_end_of_the_level_range(row: Compression) -> None:
    """The lowest and highest levels give valid streams too, and different ones: the
    level reaches the compressor."""
    data = _tar_bytes()
    low, high = _compress(row, data, row.min_level), _compress(row, data, row.max_level)
    assert _decompress(row, low) == data
    assert _decompress(row, high) == data
    assert low != high


def test_the_uncompressed_row_writes_the_bytes_as_they_are() -> None:
    data = _tar_bytes()
    assert _compress(COMPRESSIONS[""], data) == data


@pytest.mark.parametrize("row", ROWS, ids=_ids)
def test_closing_a_writer_finishes_it_and_leaves_raw_open(row: Compression) -> None:
    """Closing the writer finishes its data but leaves the raw stream usable."""
    raw = io.BytesIO()
    writer = row.writer(raw, row.default_level, None)
    writer.write(b"abc")
    writer.close()
    assert raw.closed is False
    raw.write(b"")  # still writable: would raise ValueError if closed
    assert raw.getvalue().startswith(row.magic)
    if not row.name:
        assert raw.getvalue() == b"abc"
    else:
        assert _decompress(row, raw.getvalue()) == b"abc"


@pytest.mark.parametrize("size_hint", [None, 0, THREADED_GZIP_MIN_BYTES - 1, THREADED_GZIP_MIN_BYTES])
def test_gzip_is_one_ordinary_member_whichever_writer_the_size_hint_picks(size_hint: int | None) -> None:
    """Past THREADED_GZIP_MIN_BYTES (or with no hint) gzip may be written on several
    threads: it is still one gzip member any gunzip reads, with no name and no time."""
    data = _tar_bytes() * 3
    blob = _compress(COMPRESSIONS["gz"], data, size_hint=size_hint)
    assert gzip.decompress(blob) == data
    unpacker = zlib.decompressobj(31)
    assert unpacker.decompress(blob) == data
    assert unpacker.eof and unpacker.unused_data == b""  # one member, nothing after it
    assert blob[4:8] == b"\x00\x00\x00\x00"  # mtime 0
    assert not blob[3] & 0x08  # no file name


@pytest.mark.parametrize("row", COMPRESSED, ids=_ids)
def test_a_damaged_stream_raises_rather_than_reading_clean(row: Compression) -> None:
    """A flipped byte in the middle is an error (each format checks its data), never a
    quiet wrong read: a decompression error (where the damage makes the stream end
    early, EOFError), or an OSError."""
    blob = bytearray(_compress(row, random.Random(7).randbytes(20000) + _tar_bytes()))
    blob[len(blob) // 2] ^= 0xFF
    with pytest.raises((*DECOMPRESSION_ERRORS, OSError)):
        _decompress(row, bytes(blob))


@pytest.mark.parametrize("row", [row for row in COMPRESSED if row.name != "zst"], ids=_ids)
def test_a_stream_cut_short_raises_eof_error(row: Compression) -> None:
    """Cut in half, a stream ends before its end marker: EOFError, which every reader
    treats as a truncated archive. (A zstd reader returns what it could decode and
    stops: the tar layer and the archive's checksum catch that.)"""
    blob = _compress(row, random.Random(8).randbytes(20000))
    with pytest.raises(EOFError):
        _decompress(row, blob[: len(blob) // 2])


def test_decompression_errors_hold_every_row_s_errors() -> None:
    """DECOMPRESSION_ERRORS is derived from the table, plus EOFError for a stream cut short."""
    assert EOFError in DECOMPRESSION_ERRORS
    for row in ROWS:
        assert set(row.errors) <= set(DECOMPRESSION_ERRORS)


# --- detection ---------------------------------------------------------------------------


def test_sniffing_reads_one_tar_block() -> None:
    """Enough to tell a tar header from magic bytes."""
    assert SNIFF_BYTES == tarfile.BLOCKSIZE


@pytest.mark.parametrize("row", ROWS, ids=_ids)
def test_detect_compression_of_each_row_s_own_output(row: Compression) -> None:
    """A row's writer output is recognised as that row, from its first block."""
    blob = _compress(row, _tar_bytes())
    assert detect_compression(blob[:SNIFF_BYTES]) == row.name


@pytest.mark.parametrize("row", COMPRESSED, ids=_ids)
def test_detect_compression_by_magic_alone(row: Compression) -> None:
    """The magic bytes, even with nothing after them, pick the row."""
    assert detect_compression(row.magic) == row.name
    assert detect_compression(row.magic + bytes(100)) == row.name


@pytest.mark.parametrize(
    ("head", "expected"),
    [
        (b"\x1f\x8b\x08\x00", "gz"),
        (b"BZh91AY", "bz2"),
        (b"\xfd7zXZ\x00\x00", "xz"),
        (b"\x28\xb5\x2f\xfd\x00", "zst"),
        (b"\x50\x2a\x4d\x18\x04\x00\x00\x00", "zst"),  # a skippable frame first
        (b"\x5f\x2a\x4d\x18", "zst"),
        (b"", ""),
        (b"\x1f", ""),
        (b"a.txt\x00\x00\x00", ""),
        (b"PK\x03\x04", ""),
        (bytes(512), ""),
    ],
)
def test_detect_compression_magic(head: bytes, expected: str) -> None:
    """Magic bytes pick the format; anything else (or too short) is uncompressed."""
    assert detect_compression(head) == expected


@pytest.mark.parametrize("row", COMPRESSED, ids=_ids)
def test_a_first_block_that_is_a_tar_header_means_uncompressed(row: Compression) -> None:
    """An uncompressed archive starts with its first member's name: a member named
    like a format's magic must not make the archive look compressed (GNU tar checks
    the header first)."""
    info = tarfile.TarInfo(row.magic.decode("latin-1") + "notes.txt")
    head = info.tobuf(tarfile.GNU_FORMAT, "latin-1", "strict")  # raw bytes in the name field, as GNU tar writes
    assert head.startswith(row.magic)
    assert detect_compression(head) == ""


@pytest.mark.parametrize("magic", [b"BZh91AY&SY", b"\x1f\x8b\x08"])
def test_a_tar_header_named_like_magic_is_recognised_in_every_header_format(magic: bytes) -> None:
    """ustar and pax headers too, not only GNU ones."""
    for form in (tarfile.USTAR_FORMAT, tarfile.PAX_FORMAT):
        head = tarfile.TarInfo(magic.decode("latin-1") + "x").tobuf(form, "latin-1", "strict")
        assert detect_compression(head[:SNIFF_BYTES]) == ""


def test_a_block_with_a_bad_checksum_is_not_taken_for_a_tar_header() -> None:
    """Bytes that merely begin like a compressed stream are still recognised by magic."""
    block = bytearray(tarfile.TarInfo("BZh9x").tobuf(tarfile.USTAR_FORMAT))
    block[150] ^= 1
    assert detect_compression(bytes(block)) == "bz2"


def test_a_short_head_is_never_taken_for_a_tar_header() -> None:
    """The rule needs a whole block: a shorter file that starts with magic is that format."""
    head = tarfile.TarInfo("BZh9x").tobuf(tarfile.USTAR_FORMAT)[:511]
    assert detect_compression(head) == "bz2"
