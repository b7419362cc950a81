"""Streaming source entries into a POSIX (pax) tar stream, hashing each file once.

Every file is opened once and read once: the same bytes feed its checksum and the
archive, so the manifest can never disagree with the archive. A file that changes
while it is read is archived as read and flagged, never silently.
"""

from __future__ import annotations

import os
import stat
import tarfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import BinaryIO, Literal

from .checksum import CHUNK_SIZE, new_hasher
from .durable import write_all
from .errors import SourceError
from .manifest import ManifestEntry, iso_from_timestamp
from .scan import SourceEntry
from .tarformat import encode_global_header, encode_header, writer_comment

__all__ = ["HashingSink", "ProgressCallback", "WriteOutcome", "write_entries"]

ProgressCallback = Callable[[int, int], None]
"""Called as ``progress(entries_done, bytes_done)`` while an archive is written or read."""

BLOCK = tarfile.BLOCKSIZE
RECORD = tarfile.RECORDSIZE
_ZEROS = bytes(CHUNK_SIZE)
_OPEN_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC

# Indirections the fault-injection tests replace (we run as root, so permission bits
# cannot make a file unreadable).
_open_source = os.open
_read_into = os.readv


class HashingSink:
    """A write-only stream that hashes and counts what passes through it to ``raw``."""

    def __init__(self, raw: BinaryIO, algorithm: str) -> None:
        self.raw = raw
        self.hasher = new_hasher(algorithm)
        self.size = 0

    def write(self, data: bytes | bytearray | memoryview) -> int:
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


@dataclass
class WriteOutcome:
    """What was archived: one manifest entry per member, plus warnings and skipped paths."""

    entries: list[ManifestEntry] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    bytes_read: int = 0


class _TarStream:
    """Batches small writes and counts the tar bytes (for the end-of-archive padding).

    Headers and small files are gathered into one buffer, so the compressor sees a
    few large writes instead of one per member; large chunks go straight through.
    """

    _FLUSH_AT = 1 << 20

    def __init__(self, out: BinaryIO) -> None:
        self.out = out
        self.offset = 0
        self._pending = bytearray()

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.offset += len(data)
        if len(data) >= self._FLUSH_AT:
            self.flush()
            self.out.write(data)
            return
        self._pending += data
        if len(self._pending) >= self._FLUSH_AT:
            self.flush()

    def flush(self) -> None:
        if self._pending:
            self.out.write(self._pending)
            self._pending = bytearray()

    def pad_block(self) -> None:
        remainder = self.offset % BLOCK
        if remainder:
            self.write(_ZEROS[: BLOCK - remainder])

    def finish(self) -> None:
        self.write(_ZEROS[: 2 * BLOCK])
        remainder = self.offset % RECORD
        if remainder:
            self.write(_ZEROS[: RECORD - remainder])
        self.flush()


def _header(
    entry: SourceEntry, kind: bytes, size: int = 0, mode: int | None = None, mtime: float | None = None
) -> bytes:
    # Whole seconds, as GNU tar's default format keeps them: no pax record per member.
    return encode_header(
        entry.path,
        kind,
        size=size,
        mode=entry.mode if mode is None else mode,
        mtime=int(entry.mtime if mtime is None else mtime),
        uid=entry.uid,
        gid=entry.gid,
        linkname=entry.link_target or "",
    )


def write_entries(
    out: BinaryIO,
    entries: Sequence[SourceEntry],
    *,
    algorithm: str,
    on_read_error: Literal["fail", "skip"] = "fail",
    progress: ProgressCallback | None = None,
    backup_id: str | None = None,
) -> WriteOutcome:
    """Given a writable stream and the entries of a plan, write a complete tar stream.

    With ``backup_id`` the stream starts with a pax global header whose ``comment``
    names it, so the archive says it is ours even without its manifest.

    Return the manifest entries of what was archived. Raise SourceError if a file
    cannot be read and ``on_read_error`` is "fail"; with "skip", a file that cannot be
    opened is left out and one that fails mid-read is completed with zeros, and either
    is recorded in the outcome's warnings and in its manifest entry.
    """
    tar = _TarStream(out)
    if backup_id is not None:
        tar.write(encode_global_header({"comment": writer_comment(backup_id)}))
    outcome = WriteOutcome()
    buffer = bytearray(CHUNK_SIZE)
    empty_digest = new_hasher(algorithm).hexdigest()
    for done, entry in enumerate(entries, start=1):
        if entry.kind == "dir":
            tar.write(_header(entry, tarfile.DIRTYPE))
            outcome.entries.append(ManifestEntry(entry.path, 0, "", iso_from_timestamp(entry.mtime), "dir", entry.mode))
        elif entry.kind == "symlink":
            tar.write(_header(entry, tarfile.SYMTYPE))
            outcome.entries.append(
                ManifestEntry(
                    entry.path, 0, "", iso_from_timestamp(entry.mtime), "symlink", entry.mode, entry.link_target
                )
            )
        elif entry.size == 0:
            # As GNU tar does, an empty file is not opened: there is nothing to read,
            # and on a tree of many empty files the open would be most of the cost.
            tar.write(_header(entry, tarfile.REGTYPE))
            outcome.entries.append(
                ManifestEntry(entry.path, 0, empty_digest, iso_from_timestamp(entry.mtime), "file", entry.mode)
            )
        else:
            archived = _write_file(tar, entry, algorithm, on_read_error, buffer, outcome)
            if archived is not None:
                outcome.entries.append(archived)
                outcome.bytes_read += archived.size
        if progress is not None:
            progress(done, outcome.bytes_read)
    tar.finish()
    return outcome


def _write_file(
    tar: _TarStream,
    entry: SourceEntry,
    algorithm: str,
    on_read_error: Literal["fail", "skip"],
    buffer: bytearray,
    outcome: WriteOutcome,
) -> ManifestEntry | None:
    try:
        fd = _open_source(entry.abspath, _OPEN_FLAGS)
    except OSError as exc:
        if isinstance(exc, FileNotFoundError):
            message = f"{entry.abspath}: disappeared before it could be read"
        else:
            message = f"{entry.abspath}: cannot be opened: {exc.strerror or exc}"
        _skip_or_fail(message, entry, on_read_error, outcome)
        return None
    try:
        before = os.fstat(fd)
        if not stat.S_ISREG(before.st_mode):
            _skip_or_fail(f"{entry.abspath}: is no longer a regular file", entry, on_read_error, outcome)
            return None
        size = before.st_size
        tar.write(_header(entry, tarfile.REGTYPE, size, stat.S_IMODE(before.st_mode), before.st_mtime))
        hasher = new_hasher(algorithm)
        view = memoryview(buffer)
        remaining = size
        warning = None
        while remaining:
            chunk = view[: min(CHUNK_SIZE, remaining)]
            try:
                count = _read_into(fd, [chunk])
            except OSError as exc:
                message = (
                    f"{entry.abspath}: read failed after {size - remaining} of {size} bytes: {exc.strerror or exc}"
                )
                if on_read_error == "fail":
                    raise SourceError(message, entry.abspath) from exc
                warning = message + "; the rest is archived as zero bytes"
                outcome.skipped.append(entry.abspath)
                break
            if count == 0:
                warning = (
                    f"{entry.abspath}: shrank from {size} to {size - remaining} bytes while being read; "
                    "the archive holds what was read, padded with zero bytes"
                )
                break
            hasher.update(chunk[:count])
            tar.write(chunk[:count])
            remaining -= count
        while remaining:
            pad = _ZEROS[: min(CHUNK_SIZE, remaining)]
            hasher.update(pad)
            tar.write(pad)
            remaining -= len(pad)
        if warning is None:
            warning = _changed_while_read(fd, entry.abspath, before, view)
        tar.pad_block()
    finally:
        os.close(fd)
    if warning is not None:
        outcome.warnings.append(warning)
    return ManifestEntry(
        entry.path,
        size,
        hasher.hexdigest(),
        iso_from_timestamp(before.st_mtime),
        "file",
        stat.S_IMODE(before.st_mode),
        warning=warning,
    )


def _changed_while_read(fd: int, path: str, before: os.stat_result, view: memoryview) -> str | None:
    try:
        grew = _read_into(fd, [view[:1]]) > 0
        after = os.fstat(fd)
    except OSError as exc:
        return f"{path}: could not be re-checked after reading: {exc.strerror or exc}"
    if grew or after.st_size > before.st_size:
        return (
            f"{path}: grew from {before.st_size} to at least {max(after.st_size, before.st_size + 1)} bytes "
            f"while being read; the archive holds its first {before.st_size} bytes"
        )
    if after.st_size != before.st_size or after.st_mtime_ns != before.st_mtime_ns:
        return f"{path}: was modified while being read; the archived copy may mix old and new data"
    return None


def _skip_or_fail(
    message: str, entry: SourceEntry, on_read_error: Literal["fail", "skip"], outcome: WriteOutcome
) -> None:
    if on_read_error == "fail":
        raise SourceError(message, entry.abspath)
    outcome.skipped.append(entry.abspath)
    outcome.warnings.append(message + "; skipped")
