"""Reading an archive once, front to back, whatever its compression and wherever it is.

The archive comes from its storage as a stream and goes up through the layers of
``backup.stream.pipeline``; the stored bytes are hashed as they are read, so a restore
or a verify learns the archive's own checksum in the same pass that extracts or checks
its members. Every error a damaged stream can raise comes out as ArchiveError naming
the archive.
"""

from __future__ import annotations

import io
import tarfile
from collections.abc import Callable, Iterator
from types import TracebackType
from typing import Any, BinaryIO, cast

from ..errors import ArchiveError, IdentityError
from ..hashing import CHUNK_SIZE, DEFAULT_ALGORITHM, new_hasher
from ..keys import IDENTITY_ENV, Identities
from ..manifest.sidecar import ENCRYPTED_SUFFIX
from ..progress import PROGRESS_STEP
from ..storage.base import ObjectRef
from .compression import (
    DECOMPRESSION_ERRORS,
    SNIFF_BYTES,
    decode_prefix,
    detect_compression,
    unsupported_compression,
)
from .encryption import AGE_MAGIC, AgeLayer, DecryptionError
from .pipeline import ArchiveInput, archive_layers
from .tarformat import TarFormatError, TarStreamReader, backup_id_from_comment

__all__ = ["ArchiveReader", "digest_regions", "is_encrypted", "read_archive_marker", "sniff_compression"]

_READ_AHEAD = 64 * 1024
# A writer's mark is the archive's first header: it decodes from the first block of a
# compressed stream (zstd's are at most 128 KiB, bzip2's about 900 KB), and is well
# within the first 64 KiB of the tar stream.
_MARK_STORED_BYTES = 2 << 20
_MARK_BYTES = 64 * 1024
_SHOWN_WARNINGS = 5
_READ_ERRORS: tuple[type[BaseException], ...] = (
    TarFormatError,
    *DECOMPRESSION_ERRORS,
    OSError,
    ValueError,
    IdentityError,
)


def _head(raw: BinaryIO) -> bytes:
    data = b""
    while len(data) < SNIFF_BYTES:
        more = raw.read(SNIFF_BYTES - len(data))
        if not more:
            break
        data += more
    return data


def is_encrypted(archive: ObjectRef) -> bool:
    """Given an archive, return whether it is age-encrypted (by its name, or else its
    first bytes)."""
    if archive.name.endswith(ENCRYPTED_SUFFIX):
        return True
    with archive.storage.open_read(archive.name, 0, len(AGE_MAGIC)) as head:
        return head.read(len(AGE_MAGIC)) == AGE_MAGIC


def sniff_compression(archive: ObjectRef, identities: Identities | None = None) -> str:
    """Given an archive of unknown origin, return its compression from its first bytes
    (decrypted with ``identities``, if it is age-encrypted); raise ArchiveError naming a
    compression obs-backup does not read, IdentityError if it is encrypted and no
    identity was given."""
    with archive.storage.open_read(archive.name, 0, SNIFF_BYTES) as head:
        data = _head(head)
    if data.startswith(AGE_MAGIC):
        if identities is None:
            raise IdentityError(
                f"{archive.label}: archive is age-encrypted; give the identity file that decrypts it "
                f"(--identity FILE, or {IDENTITY_ENV})",
                archive.label,
            )
        with archive.storage.open_read(archive.name) as raw:
            plain = AgeLayer(identities=identities).wrap_reader(raw)
            try:
                data = _head(plain)
            except IdentityError as exc:
                raise IdentityError(f"{archive.label}: {exc}", archive.label) from None
            except DecryptionError as exc:
                raise ArchiveError(f"{archive.label}: {exc}", archive.label) from None
            finally:
                plain.close()
    unsupported = unsupported_compression(data)
    if unsupported is not None:
        raise ArchiveError(
            f"{archive.label}: compressed with {unsupported}, which obs-backup does not read; decompress it first",
            archive.label,
        )
    return detect_compression(data)


class ArchiveReader:
    """A tar archive opened for one sequential pass.

    Use as a context manager; iterate :meth:`members`, read a file member's data with
    :meth:`chunks` before moving on (data not read is skipped), then call
    :meth:`finish` to drain the stream and learn the archive's size and checksum.
    ``compression`` is the archive's compression when known (from its manifest: our
    own archives are never guessed at); None recognises it by its first bytes. An
    age-encrypted archive is decrypted with ``identities``.
    """

    def __init__(
        self,
        archive: ObjectRef,
        algorithm: str = DEFAULT_ALGORITHM,
        compression: str | None = None,
        identities: Identities | None = None,
    ) -> None:
        self.archive = archive
        self.label = archive.label
        try:
            self.compression = sniff_compression(archive, identities) if compression is None else compression
            encryption = None
            if is_encrypted(archive):
                if identities is None:
                    raise IdentityError(
                        f"{self.label}: archive is age-encrypted; give the identity file that decrypts it "
                        f"(--identity FILE, or {IDENTITY_ENV})",
                        self.label,
                    )
                encryption = AgeLayer(identities=identities)
            self._raw: BinaryIO = archive.storage.open_read(archive.name)
        except FileNotFoundError as exc:
            raise ArchiveError(f"{self.label}: archive not found", self.label) from exc
        except IsADirectoryError as exc:
            raise ArchiveError(f"{self.label}: is a directory, not an archive", self.label) from exc
        except OSError as exc:
            raise ArchiveError(f"{self.label}: cannot read archive: {exc.strerror or exc}", self.label) from exc
        self._input = ArchiveInput(self._raw, archive_layers(self.compression, encryption=encryption), algorithm)
        # Headers are read a block at a time; through a read-ahead buffer each costs a
        # copy instead of a call down every layer. Large reads bypass the buffer.
        self._stream = cast(BinaryIO, io.BufferedReader(cast(io.RawIOBase, self._input.stream), _READ_AHEAD))
        self._tar = TarStreamReader(self._stream)
        self._buffer = bytearray(CHUNK_SIZE)
        self._unread: tarfile.TarInfo | None = None
        # Called with the bytes of the current member read so far, every few MiB inside
        # a large one, so that progress moves while a 30 GB file is read.
        self.on_data: Callable[[int], None] | None = None

    def __enter__(self) -> ArchiveReader:
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    @property
    def warnings(self) -> list[str]:
        """What was read past rather than refused, each naming its member (the first
        few of them: an archive of many odd members gets one line for the rest)."""
        found = [f"{self.label}: {warning}" for warning in self._tar.warnings[:_SHOWN_WARNINGS]]
        if len(self._tar.warnings) > _SHOWN_WARNINGS:
            found.append(f"{self.label}: and {len(self._tar.warnings) - _SHOWN_WARNINGS} more members like these")
        return found

    @property
    def global_records(self) -> dict[str, str]:
        """The pax global records read so far (a writer's mark, for instance)."""
        return self._tar.global_records

    def close(self) -> None:
        """Release the archive, and every layer reading it (a decrypting layer's thread)."""
        try:
            self._input.close()
        finally:
            self._raw.close()

    def _error(self, exc: BaseException) -> ArchiveError:
        if isinstance(exc, ArchiveError):
            return exc
        label = self.label
        text = str(exc) or type(exc).__name__
        if isinstance(exc, DecryptionError | IdentityError):
            # Its identity was checked against its recipients first: a header that does
            # not open with it is damaged too.
            return ArchiveError(f"{label}: archive is damaged: {text}", label)
        if self._tar.count == 0 and isinstance(exc, TarFormatError):
            return ArchiveError(f"{label}: not a valid tar archive ({text})", label)
        if isinstance(exc, EOFError) or "unexpected end" in text or "truncated" in text:
            return ArchiveError(
                f"{label}: archive is truncated at byte {self._input.stored_bytes_read} ({text})", label
            )
        if isinstance(exc, OSError) and exc.strerror:
            return ArchiveError(f"{label}: cannot read archive: {exc.strerror}", label)
        if self._tar.count == 0 and not isinstance(exc, DECOMPRESSION_ERRORS):
            return ArchiveError(f"{label}: not a valid tar archive ({text})", label)
        # A compressed stream that fails its own checks is damaged, wherever the damage
        # is: reading ahead may find it before the first member.
        return ArchiveError(f"{label}: archive is damaged ({text})", label)

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
        report = self.on_data
        next_report = PROGRESS_STEP if report is not None else remaining + 1
        try:
            while remaining:
                if member.size - remaining >= next_report and report is not None:
                    report(member.size - remaining)
                    next_report += PROGRESS_STEP
                count = stream.readinto(view[: min(CHUNK_SIZE, remaining)])  # type: ignore[attr-defined]
                if not count:
                    raise ArchiveError(
                        f"{self.label}: archive is truncated at byte {self._input.stored_bytes_read}, "
                        f"inside {member.name!r}",
                        self.label,
                    )
                remaining -= count
                yield view[:count]
            self._unread = None
            self._tar.skip_padding()
        except _READ_ERRORS as exc:
            raise self._error(exc) from exc

    def regions(self, member: tarfile.TarInfo) -> Iterator[tuple[int, memoryview]]:
        """Yield a file member's data as ``(offset, chunk)``: from 0 on for a plain file,
        run by run for a sparse one (what lies between runs, and after the last up to
        its real size, is a hole). Each chunk is a view of one reused buffer."""
        sparse = getattr(member, "sparse_map", None)
        if sparse is None:
            position = 0
            for chunk in self.chunks(member):
                yield position, chunk
                position += len(chunk)
            return
        runs = iter(sparse)
        offset, left = next(runs, (0, 0))
        for chunk in self.chunks(member):
            while chunk:
                while not left:
                    offset, left = next(runs)  # the map's total equals the data's: checked
                piece = chunk[:left]
                yield offset, piece
                offset += len(piece)
                left -= len(piece)
                chunk = chunk[len(piece) :]

    def finish(self) -> tuple[int, str]:
        """Read to the end of the archive; return its stored size and hex checksum.

        Reading each layer to its end is what checks its trailer (a compressed stream's
        CRC). Raise ArchiveError if the rest of the stream is damaged.
        """
        try:
            return self._input.drain(self._buffer)
        except _READ_ERRORS as exc:
            raise self._error(exc) from exc


_ZEROS = bytes(CHUNK_SIZE)


def digest_regions(
    regions: Iterator[tuple[int, memoryview]],
    size: int,
    algorithm: str,
    sink: Callable[[int, memoryview], None] | None = None,
) -> str:
    """Given a member's regions (see :meth:`ArchiveReader.regions`) and its real size,
    return the hex digest of all its bytes, holes read as zeros; hand each region to
    ``sink`` on the way (a restore writes it)."""
    hasher = new_hasher(algorithm)
    position = 0
    for offset, chunk in regions:
        _zeros(hasher, offset - position)
        hasher.update(chunk)
        if sink is not None:
            sink(offset, chunk)
        position = offset + len(chunk)
    _zeros(hasher, size - position)
    return hasher.hexdigest()


def _zeros(hasher: Any, count: int) -> None:
    while count > 0:
        piece = min(count, CHUNK_SIZE)
        hasher.update(_ZEROS[:piece])
        count -= piece


def read_archive_marker(archive: ObjectRef) -> str | None:
    """Given an archive, return the backup id its writer's mark names, or None.

    Only the first header is read. An archive this tool wrote starts with a pax global
    header naming its backup id; any other archive (or one that cannot be read) gives
    None.
    """
    # From what the archive's first bytes decode to, whatever comes after: damage
    # further on (in a small archive, just after the mark) must not hide it, so the
    # backup is still listed, and a check finds the damage.
    try:
        compression = sniff_compression(archive)
        with archive.storage.open_read(archive.name, 0, _MARK_STORED_BYTES) as raw:
            stored = raw.read(_MARK_STORED_BYTES)
    except (ArchiveError, IdentityError, OSError):
        return None  # unreadable, or encrypted (an encrypted archive's mark is its sidecar)
    tar = TarStreamReader(io.BytesIO(decode_prefix(compression, stored, _MARK_BYTES)))
    try:
        tar.next()
    except _READ_ERRORS:
        pass
    return backup_id_from_comment(tar.global_records.get("comment"))
