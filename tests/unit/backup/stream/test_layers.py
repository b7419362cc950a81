"""Tests for backup.stream.layers: write_all, PassThrough, HashingSink and HashingSource."""

from __future__ import annotations

import errno
import hashlib
import io

import pytest

from backup.errors import ConfigError
from backup.stream.layers import HashingSink, HashingSource, PassThrough, write_all


class _Trickle(io.RawIOBase):
    """A raw stream that accepts at most ``step`` bytes per write (0: makes no progress),
    as an unbuffered file does when the disk fills up or a size limit is reached."""

    def __init__(self, step: int) -> None:
        super().__init__()
        self.step = step
        self.data = bytearray()
        self.calls = 0
        self.flushes = 0

    def writable(self) -> bool:
        return True

    def write(self, data: bytes | bytearray | memoryview) -> int:  # type: ignore[override]
        self.calls += 1
        taken = bytes(memoryview(data)[: self.step])
        self.data += taken
        return len(taken)

    def flush(self) -> None:
        self.flushes += 1


class _Pieces(io.RawIOBase):
    """A raw stream that returns at most ``step`` bytes per read."""

    def __init__(self, data: bytes, step: int) -> None:
        super().__init__()
        self._data = io.BytesIO(data)
        self.step = step

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        piece = self._data.read(min(len(buffer), self.step))
        memoryview(buffer)[: len(piece)] = piece
        return len(piece)


# --- write_all ---------------------------------------------------------------------------


def test_write_all_writes_again_after_a_short_write() -> None:
    """Every byte reaches the stream, in order, however little each write takes."""
    raw = _Trickle(step=3)
    write_all(raw, b"0123456789")  # type: ignore[arg-type]
    assert bytes(raw.data) == b"0123456789"
    assert raw.calls == 4


def test_write_all_raises_when_a_write_makes_no_progress() -> None:
    """A write that takes nothing would loop for ever: it is an EIO instead of a silent cut."""
    with pytest.raises(OSError) as info:
        write_all(_Trickle(step=0), b"abc")  # type: ignore[arg-type]
    assert info.value.errno == errno.EIO


def test_write_all_takes_any_buffer() -> None:
    """bytes, bytearray and (even multi-byte) memoryviews are written as their bytes."""
    raw = io.BytesIO()
    write_all(raw, b"ab")
    write_all(raw, bytearray(b"cd"))
    write_all(raw, memoryview(b"\x01\x00\x02\x00").cast("H"))
    assert raw.getvalue() == b"abcd\x01\x00\x02\x00"


def test_write_all_of_nothing_writes_nothing() -> None:
    raw = _Trickle(step=0)
    write_all(raw, b"")  # type: ignore[arg-type]
    assert raw.calls == 0


# --- PassThrough -------------------------------------------------------------------------


def test_pass_through_writes_straight_to_raw_and_survives_short_writes() -> None:
    raw = _Trickle(step=2)
    layer = PassThrough(raw)  # type: ignore[arg-type]
    assert layer.write(b"hello") == 5
    assert bytes(raw.data) == b"hello"


def test_closing_a_pass_through_leaves_raw_open() -> None:
    """Its owner decides when the layer below is done."""
    raw = io.BytesIO()
    layer = PassThrough(raw)
    layer.write(b"x")
    layer.close()
    assert layer.closed and not raw.closed
    raw.write(b"y")
    assert raw.getvalue() == b"xy"


def test_a_closed_pass_through_refuses_writes() -> None:
    layer = PassThrough(io.BytesIO())
    layer.close()
    with pytest.raises(ValueError):
        layer.write(b"x")


def test_pass_through_flush_flushes_raw() -> None:
    raw = _Trickle(step=10)
    layer = PassThrough(raw)  # type: ignore[arg-type]
    layer.flush()
    assert raw.flushes == 1


# --- HashingSink -------------------------------------------------------------------------


def test_hashing_sink_counts_hashes_and_forwards_every_byte() -> None:
    """What reaches raw is exactly what was hashed and counted, short writes and all."""
    raw = _Trickle(step=7)
    sink = HashingSink(raw, "sha256")  # type: ignore[arg-type]
    pieces = [b"alpha", bytearray(b"beta" * 10), memoryview(b"gamma")]
    for piece in pieces:
        assert sink.write(piece) == len(piece)
    expected = b"".join(bytes(piece) for piece in pieces)
    assert bytes(raw.data) == expected
    assert sink.size == len(expected)
    assert sink.hasher.hexdigest() == hashlib.sha256(expected).hexdigest()


def test_hashing_sink_uses_the_algorithm_named() -> None:
    sink = HashingSink(io.BytesIO(), "blake2b")
    sink.write(b"data")
    assert sink.hasher.hexdigest() == hashlib.blake2b(b"data").hexdigest()


def test_hashing_sink_refuses_an_unknown_algorithm() -> None:
    with pytest.raises(ConfigError):
        HashingSink(io.BytesIO(), "nope")


def test_closing_a_hashing_sink_leaves_raw_open() -> None:
    """The upload below it is committed or aborted by its owner, not closed by a layer."""
    raw = io.BytesIO()
    sink = HashingSink(raw, "sha256")
    sink.write(b"x")
    sink.close()
    assert not raw.closed
    assert sink.closed is False and sink.writable()
    sink.flush()


# --- HashingSource -----------------------------------------------------------------------


def test_hashing_source_hashes_and_counts_what_read_returns() -> None:
    data = bytes(range(256)) * 20
    source = HashingSource(io.BytesIO(data), "sha256")
    got = source.read(100) + source.read(1000) + source.read()
    assert got == data
    assert source.size == len(data)
    assert source.hasher.hexdigest() == hashlib.sha256(data).hexdigest()
    assert source.read(10) == b"" and source.size == len(data)


def test_hashing_source_hashes_only_the_bytes_readinto_filled() -> None:
    """A short read fills part of the buffer: only that part is hashed and counted."""
    data = b"abcdefghij" * 30
    source = HashingSource(_Pieces(data, step=7), "sha256")  # type: ignore[arg-type]
    buffer = bytearray(64)
    got = bytearray()
    while count := source.readinto(buffer):
        assert count <= 7
        got += buffer[:count]
    assert bytes(got) == data
    assert source.size == len(data)
    assert source.hasher.hexdigest() == hashlib.sha256(data).hexdigest()


def test_closing_a_hashing_source_leaves_raw_open() -> None:
    """The reader that opened the object closes it."""
    raw = io.BytesIO(b"data")
    source = HashingSource(raw, "sha256")
    source.close()
    assert not raw.closed and source.closed is False and source.readable()
