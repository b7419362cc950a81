"""The stream layers an archive passes through, one job each.

On the way out (create): tar bytes -> compression -> (encryption) -> ``HashingSink``
(counts and hashes what reaches storage) -> the storage's upload. On the way in:
storage -> ``HashingSource`` -> (decryption) -> decompression -> tar bytes. Every
writing layer's ``close()`` finishes its own output and leaves the layer below open:
its owner decides when that is done.
"""

from __future__ import annotations

import errno
import io
from typing import BinaryIO

from ..hashing import new_hasher

__all__ = ["HashingSink", "HashingSource", "PassThrough", "write_all"]


def write_all(stream: BinaryIO, data: bytes | bytearray | memoryview) -> None:
    """Given a binary stream and some bytes, write all of them.

    An unbuffered write may write fewer bytes than asked without raising (a disk
    filling up, a file size limit): the rest is written again, so that the failure, if
    there is one, is raised instead of the data being silently cut short.
    """
    view = memoryview(data).cast("B")
    while view:
        written = stream.write(view)
        if not written:
            raise OSError(errno.EIO, "write made no progress")
        view = view[written:]


class PassThrough(io.RawIOBase):
    """Writes go straight to ``raw``; closing this leaves ``raw`` open (no compression)."""

    def __init__(self, raw: BinaryIO) -> None:
        super().__init__()
        self._raw = raw

    def writable(self) -> bool:
        return True

    def write(self, data: bytes | bytearray | memoryview) -> int:  # type: ignore[override]
        if self.closed:
            raise ValueError("write to closed stream")
        write_all(self._raw, data)
        return len(data)

    def flush(self) -> None:
        if not self.closed and not self._raw.closed:
            self._raw.flush()


class HashingSink:
    """A write-only stream that hashes and counts what passes through it to ``raw``."""

    def __init__(self, raw: BinaryIO, algorithm: str) -> None:
        self.raw = raw
        self.hasher = new_hasher(algorithm)
        self.size = 0
        self.discarding = False

    def write(self, data: bytes | bytearray | memoryview) -> int:
        if self.discarding:
            return len(data)  # the archive was given up: what the layers above flush goes nowhere
        self.hasher.update(data)
        self.size += len(data)
        write_all(self.raw, data)
        return len(data)

    def flush(self) -> None:
        self.raw.flush()

    def writable(self) -> bool:
        return True

    def close(self) -> None:
        """Leave ``raw`` open: its owner decides when it is done."""

    @property
    def closed(self) -> bool:
        return False


class HashingSource:
    """A read-only stream that hashes and counts what is read from ``raw``."""

    def __init__(self, raw: BinaryIO, algorithm: str) -> None:
        self.raw = raw
        self.hasher = new_hasher(algorithm)
        self.size = 0

    def read(self, size: int = -1) -> bytes:
        data = self.raw.read(size)
        self.hasher.update(data)
        self.size += len(data)
        return data

    def readinto(self, buffer: bytearray | memoryview) -> int:
        count = self.raw.readinto(buffer)  # type: ignore[attr-defined]
        self.hasher.update(memoryview(buffer)[:count])
        self.size += count
        return int(count)

    def readable(self) -> bool:
        return True

    def close(self) -> None:
        """The reader closes ``raw`` itself."""

    @property
    def closed(self) -> bool:
        return False
