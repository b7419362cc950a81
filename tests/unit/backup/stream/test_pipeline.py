"""Tests for backup.stream.pipeline: the archive stream built from its layers.

Every row of the compression table goes out through ``ArchiveOutput`` and back through
``ArchiveInput``; the size and digest each reports are those of the bytes as stored.
A layer written here (XOR with a key, standing in for encryption) is inserted into the
list and round-trips with nothing else changed: a new layer is one insertion.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import tarfile
from dataclasses import FrozenInstanceError
from pathlib import Path
from typing import BinaryIO, cast

import pytest

from backup.storage import LocalStorage
from backup.stream.compression import COMPRESSIONS, Compression, check_level
from backup.stream.pipeline import ArchiveInput, ArchiveOutput, CompressionLayer, Layer, archive_layers

ROWS = list(COMPRESSIONS.values())
BUFFER = bytearray(1 << 16)


def _ids(row: Compression) -> str:
    return row.cli_name


def _tar_bytes() -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in (("a.txt", b"payload " * 5000), ("b.bin", os.urandom(70000))):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _write(layers: list[Layer], data: bytes) -> tuple[bytes, int, str]:
    """Send ``data`` out through the layers into memory; return the stored bytes and
    what finish() reported."""
    upload = io.BytesIO()
    output = ArchiveOutput(upload, layers, "sha256")
    output.stream.write(data)
    size, digest = output.finish()
    assert not upload.closed  # the upload is its owner's to commit or abort
    return upload.getvalue(), size, digest


def _read(stored: bytes, layers: list[Layer]) -> tuple[bytes, int, str]:
    """Read stored bytes back through the layers; return the data and what drain() reported."""
    archive_input = ArchiveInput(io.BytesIO(stored), layers, "sha256")
    data = archive_input.stream.read()
    size, digest = archive_input.drain(BUFFER)
    return data, size, digest


def _xor(data: bytes | bytearray | memoryview, key: int) -> bytes:
    return bytes(byte ^ key for byte in bytes(data))


class _XorWriter(io.RawIOBase):
    def __init__(self, below: BinaryIO, key: int, events: list[str]) -> None:
        super().__init__()
        self._below = below
        self._key = key
        self._events = events

    def writable(self) -> bool:
        return True

    def write(self, data: bytes | bytearray | memoryview) -> int:  # type: ignore[override]
        if self.closed:
            raise ValueError("write to closed XOR layer")
        self._below.write(_xor(data, self._key))
        return len(data)

    def close(self) -> None:
        if not self.closed:
            self._events.append("xor closed")
        super().close()  # and the layer below stays open, as the Layer protocol says


class _XorReader(io.RawIOBase):
    def __init__(self, below: BinaryIO, key: int) -> None:
        super().__init__()
        self._below = below
        self._key = key

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        data = self._below.read(len(buffer))
        memoryview(buffer)[: len(data)] = _xor(data, self._key)
        return len(data)


class XorLayer:
    """A transformation of the archive bytes that is not compression: every byte XOR ``key``."""

    def __init__(self, key: int) -> None:
        self.key = key
        self.events: list[str] = []

    def wrap_writer(self, below: BinaryIO) -> BinaryIO:
        return cast(BinaryIO, _XorWriter(below, self.key, self.events))

    def wrap_reader(self, below: BinaryIO) -> BinaryIO:
        return cast(BinaryIO, _XorReader(below, self.key))


# --- the compression layers --------------------------------------------------------------


def test_archive_layers_is_one_compression_layer_with_the_settings() -> None:
    assert archive_layers("zst", 7, size_hint=123) == [CompressionLayer("zst", 7, 123)]
    assert archive_layers("") == [CompressionLayer("", 0, None)]


def test_a_compression_layer_is_frozen_data() -> None:
    layer = CompressionLayer("gz", 6)
    with pytest.raises(FrozenInstanceError):
        layer.level = 1  # type: ignore[misc]


@pytest.mark.parametrize("row", ROWS, ids=_ids)
def test_every_row_round_trips_and_reports_the_stored_bytes(row: Compression) -> None:
    """Out and back through each format: the tar bytes come back whole, and both ends
    report the size and sha256 of the bytes as stored, not of the tar stream."""
    data = _tar_bytes()
    stored, size, digest = _write(archive_layers(row.name, check_level(row.name, None)), data)
    assert stored.startswith(row.magic)
    assert (size, digest) == (len(stored), _sha256(stored))
    if row.name:
        assert stored != data
    back, read_size, read_digest = _read(stored, archive_layers(row.name))
    assert back == data
    assert (read_size, read_digest) == (size, digest)


@pytest.mark.parametrize("row", ROWS, ids=_ids)
def test_many_small_writes_make_the_same_archive_data(row: Compression) -> None:
    """The tar writer writes headers and data in pieces; the pieces' boundaries do not matter."""
    data = _tar_bytes()
    upload = io.BytesIO()
    output = ArchiveOutput(upload, archive_layers(row.name, row.default_level), "sha256")
    for start in range(0, len(data), 1000):
        output.stream.write(data[start : start + 1000])
    size, digest = output.finish()
    assert (size, digest) == (len(upload.getvalue()), _sha256(upload.getvalue()))
    assert _read(upload.getvalue(), archive_layers(row.name))[0] == data


def test_the_digest_follows_the_algorithm_named() -> None:
    upload = io.BytesIO()
    output = ArchiveOutput(upload, archive_layers("gz", 6), "blake2b")
    output.stream.write(b"x" * 1000)
    size, digest = output.finish()
    assert digest == hashlib.blake2b(upload.getvalue()).hexdigest()
    archive_input = ArchiveInput(io.BytesIO(upload.getvalue()), archive_layers("gz"), "blake2b")
    assert archive_input.drain(BUFFER) == (size, digest)


def test_an_archive_goes_into_a_storage_upload(tmp_path: Path) -> None:
    """The bottom of the pipeline is a storage's upload; what finish() reports is the
    committed object exactly."""
    storage = LocalStorage(tmp_path)
    upload = storage.begin("a.tar.xz")
    output = ArchiveOutput(upload, archive_layers("xz", 6), "sha256")  # type: ignore[arg-type]
    data = _tar_bytes()
    output.stream.write(data)
    size, digest = output.finish()
    upload.commit()
    stored = (tmp_path / "a.tar.xz").read_bytes()
    assert (size, digest) == (len(stored), _sha256(stored))
    with storage.open_read("a.tar.xz") as raw:
        archive_input = ArchiveInput(raw, archive_layers("xz"), "sha256")
        assert archive_input.stream.read() == data
        assert archive_input.drain(BUFFER) == (size, digest)


# --- draining ----------------------------------------------------------------------------


@pytest.mark.parametrize("row", ROWS, ids=_ids)
def test_drain_after_a_partial_read_still_covers_every_stored_byte(row: Compression) -> None:
    """A reader that stops early (at the tar end-of-archive blocks, say) learns the
    checksum of the whole stored object, not of what it happened to read."""
    data = _tar_bytes()
    stored, size, digest = _write(archive_layers(row.name, row.default_level), data)
    archive_input = ArchiveInput(io.BytesIO(stored), archive_layers(row.name), "sha256")
    assert archive_input.stream.read(100) == data[:100]
    assert archive_input.drain(BUFFER) == (size, digest)


def test_drain_counts_bytes_stored_after_the_data() -> None:
    """What the stored object holds past the tar stream is in its size and digest too."""
    data = _tar_bytes()
    stored = data + b"trailing"
    archive_input = ArchiveInput(io.BytesIO(stored), archive_layers(""), "sha256")
    assert archive_input.stream.read(len(data)) == data
    assert archive_input.drain(BUFFER) == (len(stored), _sha256(stored))


def test_drain_checks_a_compressed_stream_s_trailer() -> None:
    """Reading every layer to its end is what checks a gzip CRC: a reader that stops
    early (as the tar reader does at its end-of-archive blocks) reads fine, and the
    damage in the trailer surfaces in drain()."""
    data = _tar_bytes()
    stored = bytearray(_write(archive_layers("gz", 6), data)[0])
    stored[-8] ^= 0xFF  # the CRC-32 of the data
    archive_input = ArchiveInput(io.BytesIO(bytes(stored)), archive_layers("gz"), "sha256")
    assert archive_input.stream.read(100) == data[:100]
    with pytest.raises(gzip.BadGzipFile):
        archive_input.drain(BUFFER)


# --- a new layer is one insertion --------------------------------------------------------


@pytest.mark.parametrize("row", ROWS, ids=_ids)
def test_a_new_layer_below_compression_round_trips(row: Compression) -> None:
    """tar -> compress -> XOR -> store: the stored bytes are the compressed stream
    XORed, and the size and digest are still those of what is stored."""
    data = _tar_bytes()
    plain, _, _ = _write(archive_layers(row.name, row.default_level), data)
    layers: list[Layer] = [*archive_layers(row.name, row.default_level), XorLayer(0x5A)]
    stored, size, digest = _write(layers, data)
    assert (size, digest) == (len(stored), _sha256(stored))
    if row.name != "zst":  # multithreaded zstd frames need not be the same twice
        assert stored == _xor(plain, 0x5A)
    assert _xor(stored, 0x5A).startswith(row.magic)
    back, read_size, read_digest = _read(stored, [*archive_layers(row.name), XorLayer(0x5A)])
    assert back == data
    assert (read_size, read_digest) == (size, digest)


def test_the_list_is_top_first() -> None:
    """Put above compression, XOR transforms the tar bytes, and the stored stream is
    ordinary gzip of the XORed tar."""
    data = _tar_bytes()
    stored, _, _ = _write([XorLayer(0x33), *archive_layers("gz", 6)], data)
    assert stored.startswith(COMPRESSIONS["gz"].magic)
    assert gzip.decompress(stored) == _xor(data, 0x33)
    assert _read(stored, [XorLayer(0x33), *archive_layers("gz")])[0] == data


def test_finish_closes_each_layer_top_first() -> None:
    """Compression is closed (writing its trailer into the layer below) before the layer
    below it is closed: a write after close would have raised."""
    data = _tar_bytes()
    xor = XorLayer(0x01)
    stored, _, _ = _write([*archive_layers("bz2", 9), xor], data)
    assert xor.events == ["xor closed"]
    assert _read(stored, [*archive_layers("bz2"), XorLayer(0x01)])[0] == data


def test_reading_without_the_layer_it_was_written_with_fails() -> None:
    """The layer really transforms the stored bytes: gzip alone cannot read them."""
    stored, _, _ = _write([*archive_layers("gz", 6), XorLayer(0x5A)], _tar_bytes())
    with pytest.raises(gzip.BadGzipFile):
        _read(stored, archive_layers("gz"))
