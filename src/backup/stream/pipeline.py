"""The archive stream, built in one place from its layers.

    create:  tar -> compress -> [encrypt] -> hash and count -> storage upload
    read:    storage -> hash and count -> [decrypt] -> decompress -> tar

Encryption (``backup.stream.encryption``) is below compression: ciphertext does not
compress, and the checksum a manifest records is then the ciphertext's, which anyone
can check without a key.

Each layer is one object with ``wrap_writer`` and ``wrap_reader`` (see
``CompressionLayer``); ``archive_layers`` lists them, top (nearest the tar stream)
first. A new transformation of the archive bytes (encryption, say) is one more layer
in that list; nothing else changes. The hash and the count are always taken at the
bottom, over the bytes as stored, so a manifest records the archive as it sits in
storage.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import BinaryIO, Protocol

from .compression import COMPRESSIONS
from .encryption import AgeLayer
from .layers import HashingSink, HashingSource

__all__ = ["ArchiveInput", "ArchiveOutput", "CompressionLayer", "Layer", "archive_layers"]


class Layer(Protocol):
    """One transformation of the archive bytes."""

    def wrap_writer(self, below: BinaryIO) -> BinaryIO:
        """Return a stream that transforms what is written and writes it to ``below``;
        closing it finishes its output and leaves ``below`` open."""

    def wrap_reader(self, below: BinaryIO) -> BinaryIO:
        """Return a stream of the bytes ``below`` holds, transformed back."""


@dataclass(frozen=True)
class CompressionLayer:
    """Compression with one of the table's formats (``''`` for none)."""

    compression: str
    level: int = 0
    size_hint: int | None = None

    def wrap_writer(self, below: BinaryIO) -> BinaryIO:
        return COMPRESSIONS[self.compression].writer(below, self.level, self.size_hint)

    def wrap_reader(self, below: BinaryIO) -> BinaryIO:
        return COMPRESSIONS[self.compression].reader(below)


def archive_layers(
    compression: str, level: int = 0, size_hint: int | None = None, encryption: AgeLayer | None = None
) -> list[Layer]:
    """Given an archive's settings, return its layers, top (nearest the tar stream) first."""
    layers: list[Layer] = [CompressionLayer(compression, level, size_hint)]
    if encryption is not None:
        layers.append(encryption)
    return layers


class ArchiveOutput:
    """Where a tar stream goes on its way to storage: write tar bytes to ``stream``,
    then ``finish()`` to flush every layer and learn the stored size and digest."""

    def __init__(self, upload: BinaryIO, layers: list[Layer], algorithm: str) -> None:
        self._sink = HashingSink(upload, algorithm)
        self._streams: list[BinaryIO] = []
        below: BinaryIO = self._sink  # type: ignore[assignment]
        for layer in reversed(layers):
            below = layer.wrap_writer(below)
            self._streams.append(below)
        self.stream = below

    def finish(self) -> tuple[int, str]:
        """Close every layer, top first; return the bytes stored and their hex digest."""
        for stream in reversed(self._streams):
            stream.close()
        return self._sink.size, self._sink.hasher.hexdigest()

    def abandon(self) -> None:
        """Give the archive up: close every layer, sending what they still flush nowhere
        (not into an upload that is being aborted). Never raises."""
        self._sink.discarding = True
        for stream in reversed(self._streams):
            try:
                stream.close()
            except Exception:
                pass


class ArchiveInput:
    """A stored archive read back: ``stream`` yields the tar bytes; ``drain()`` reads to
    the end (which checks each layer's own trailer) and returns the stored size and digest."""

    def __init__(self, raw: BinaryIO, layers: list[Layer], algorithm: str) -> None:
        self._source = HashingSource(raw, algorithm)
        self._streams: list[BinaryIO] = []
        above: BinaryIO = self._source  # type: ignore[assignment]
        for layer in reversed(layers):
            above = layer.wrap_reader(above)
            self._streams.append(above)
        self.stream = above

    def close(self) -> None:
        """Close every layer, top first (a layer's reader leaves the one below open);
        what is stored, below them, is its owner's to close."""
        for stream in reversed(self._streams):
            stream.close()

    @property
    def stored_bytes_read(self) -> int:
        """Bytes of the archive as stored (compressed) read so far."""
        return self._source.size

    def drain(self, buffer: bytearray) -> tuple[int, str]:
        """Read whatever is left, through every layer and then below them; return the
        stored size and hex digest."""
        while self.stream.readinto(buffer):  # type: ignore[attr-defined]
            pass
        while self._source.readinto(buffer):
            pass
        return self._source.size, self._source.hasher.hexdigest()
