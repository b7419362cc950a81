"""Reading an archive once, front to back, whatever its compression.

The raw file bytes are hashed as they are read, so a restore or a verify learns the
archive's own checksum in the same pass that extracts or checks its members. Every
error a damaged stream can raise comes out as ArchiveError naming the archive.
"""

from __future__ import annotations

import tarfile
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType
from typing import BinaryIO

from .checksum import CHUNK_SIZE, DEFAULT_ALGORITHM, new_hasher
from .compression import DECOMPRESSION_ERRORS, open_decompressor, sniff_file
from .errors import ArchiveError
from .tarformat import TarFormatError, TarStreamReader, backup_id_from_comment

__all__ = ["ArchiveReader", "read_archive_marker"]

_READ_ERRORS: tuple[type[BaseException], ...] = (TarFormatError, *DECOMPRESSION_ERRORS, OSError, ValueError)


class _HashingSource:
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


class ArchiveReader:
    """A tar archive opened for one sequential pass.

    Use as a context manager; iterate :meth:`members`, read a file member's data with
    :meth:`chunks` before moving on (data not read is skipped), then call
    :meth:`finish` to drain the stream and learn the archive's size and checksum.
    ``compression`` is the archive's compression when known; None detects it.
    """

    def __init__(self, path: Path, algorithm: str = DEFAULT_ALGORITHM, compression: str | None = None) -> None:
        self.path = Path(path)
        try:
            # Our own archives' compression is known (from the manifest); only an
            # archive of unknown origin is recognised by its first bytes.
            self.compression = sniff_file(self.path) if compression is None else compression
            self._raw: BinaryIO = open(self.path, "rb", buffering=0)
        except FileNotFoundError as exc:
            raise ArchiveError(f"{self.path}: archive not found", self.path) from exc
        except IsADirectoryError as exc:
            raise ArchiveError(f"{self.path}: is a directory, not an archive", self.path) from exc
        except OSError as exc:
            raise ArchiveError(f"{self.path}: cannot read archive: {exc.strerror or exc}", self.path) from exc
        self._source = _HashingSource(self._raw, algorithm)
        self._stream = open_decompressor(self._source, self.compression)  # type: ignore[arg-type]
        self._tar = TarStreamReader(self._stream)
        self._buffer = bytearray(CHUNK_SIZE)
        self._unread: tarfile.TarInfo | None = None

    def __enter__(self) -> ArchiveReader:
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    @property
    def global_records(self) -> dict[str, str]:
        """The pax global records read so far (a writer's mark, for instance)."""
        return self._tar.global_records

    def close(self) -> None:
        """Release the file."""
        self._raw.close()

    def _error(self, exc: BaseException) -> ArchiveError:
        if isinstance(exc, ArchiveError):
            return exc
        text = str(exc) or type(exc).__name__
        if self._tar.count == 0 and isinstance(exc, TarFormatError):
            return ArchiveError(f"{self.path}: not a valid tar archive ({text})", self.path)
        if isinstance(exc, EOFError) or "unexpected end" in text or "truncated" in text:
            return ArchiveError(f"{self.path}: archive is truncated ({text})", self.path)
        if isinstance(exc, OSError) and exc.strerror:
            return ArchiveError(f"{self.path}: cannot read archive: {exc.strerror}", self.path)
        if self._tar.count == 0:
            return ArchiveError(f"{self.path}: not a valid tar archive ({text})", self.path)
        return ArchiveError(f"{self.path}: archive is damaged ({text})", self.path)

    def members(self) -> Iterator[tarfile.TarInfo]:
        """Yield each member in archive order; raise ArchiveError if the stream is damaged."""
        while True:
            try:
                if self._unread is not None:
                    # Data the caller did not read is read through (and fails at once if
                    # the archive ends early, however large the member claims to be).
                    self._tar.skip_data(self._unread)
                    self._unread = None
                member = self._tar.next()
            except _READ_ERRORS as exc:
                raise self._error(exc) from exc
            if member is None:
                return
            self._unread = member if member.size else None
            yield member

    def chunks(self, member: tarfile.TarInfo) -> Iterator[memoryview]:
        """Yield a file member's data in chunks; raise ArchiveError if it is cut short.

        Each chunk is a view of one reused buffer: use it before asking for the next.
        """
        stream = self._stream
        view = memoryview(self._buffer)
        remaining = member.size
        try:
            while remaining:
                count = stream.readinto(view[: min(CHUNK_SIZE, remaining)])  # type: ignore[attr-defined]
                if not count:
                    raise ArchiveError(f"{self.path}: archive is truncated inside {member.name!r}", self.path)
                remaining -= count
                yield view[:count]
            self._unread = None
            self._tar.skip_padding()
        except _READ_ERRORS as exc:
            raise self._error(exc) from exc

    def finish(self) -> tuple[int, str]:
        """Read to the end of the file; return the archive's size and hex checksum.

        Reading the compressed stream to its end is what checks its trailing CRC.
        Raise ArchiveError if the rest of the stream is damaged.
        """
        try:
            while self._stream.readinto(self._buffer):  # type: ignore[attr-defined]
                pass
            while self._source.readinto(self._buffer):
                pass
        except _READ_ERRORS as exc:
            raise self._error(exc) from exc
        return self._source.size, self._source.hasher.hexdigest()


def read_archive_marker(path: Path) -> str | None:
    """Given an archive, return the backup id its writer's mark names, or None.

    Only the first header is read. An archive this tool wrote starts with a pax global
    header naming its backup id; any other archive (or one that cannot be read) gives
    None.
    """
    try:
        with ArchiveReader(path) as reader:
            next(reader.members(), None)
            return backup_id_from_comment(reader.global_records.get("comment"))
    except ArchiveError:
        return None
