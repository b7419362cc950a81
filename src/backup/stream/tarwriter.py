"""Streaming source entries into a POSIX (pax) tar stream, hashing each file once.

Every file is opened once, relative to its directory's descriptor and without
following links, and the same bytes feed its checksum and the archive, so the
manifest can never disagree with the archive.

A file that changes while it is read (its size, mtime or ctime differ after the read;
a writer that puts the mtime back still changes the ctime, as GNU tar checks) is read
again: a file smaller than one chunk is read whole before anything is written, so the
second read replaces the first; a larger one, already streamed, is re-read to check
that what was archived is what the file now holds. If it still changes, the archived
copy is kept, flagged ``changed_during_backup`` in the manifest, and named in the
result's warnings: never silently.
"""

from __future__ import annotations

import errno
import os
import stat
import tarfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import BinaryIO, Literal

from ..checksum import CHUNK_SIZE, new_hasher
from ..errors import SourceError
from ..fstree import LOCAL_FILESYSTEM, DirectoryChain, FileSystem
from ..manifest.model import ManifestEntry, iso_from_timestamp
from ..progress import ProgressCallback
from ..scan import SourceEntry
from .tarformat import encode_global_header, encode_header, writer_comment

__all__ = ["WriteOutcome", "write_entries"]

BLOCK = tarfile.BLOCKSIZE
RECORD = tarfile.RECORDSIZE
_ZEROS = bytes(CHUNK_SIZE)


@dataclass
class WriteOutcome:
    """What was archived: one manifest entry per member, plus warnings and skipped paths."""

    entries: list[ManifestEntry] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)
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
    root: str,
    algorithm: str,
    filesystem: FileSystem = LOCAL_FILESYSTEM,
    on_read_error: Literal["fail", "skip"] = "fail",
    progress: ProgressCallback | None = None,
    backup_id: str | None = None,
) -> WriteOutcome:
    """Given a writable stream, the source root and the entries of a plan, write a
    complete tar stream.

    With ``backup_id`` the stream starts with a pax global header whose ``comment``
    names it, so the archive says it is ours even without its manifest.
    Return the manifest entries of what was archived. Raise SourceError if a file
    cannot be read and ``on_read_error`` is "fail"; with "skip", a file that cannot be
    opened or read is left out (one already partly streamed is completed with zeros),
    and either is recorded in the outcome's warnings and in its manifest entry.
    """
    tar = _TarStream(out)
    if backup_id is not None:
        tar.write(encode_global_header({"comment": writer_comment(backup_id)}))
    outcome = WriteOutcome()
    buffer = bytearray(CHUNK_SIZE)
    empty_digest = new_hasher(algorithm).hexdigest()
    try:
        root_fd = filesystem.open_root(root)
    except OSError as exc:
        raise SourceError(f"{root}: source directory cannot be opened: {exc.strerror or exc}", root) from exc
    try:
        with DirectoryChain(root_fd) as chain:
            reader = _FileReader(tar, chain, filesystem, algorithm, on_read_error, buffer, outcome)
            for done, entry in enumerate(entries, start=1):
                if entry.kind == "dir":
                    tar.write(_header(entry, tarfile.DIRTYPE))
                    outcome.entries.append(
                        ManifestEntry(entry.path, 0, "", iso_from_timestamp(entry.mtime), "dir", entry.mode)
                    )
                elif entry.kind == "symlink":
                    tar.write(_header(entry, tarfile.SYMTYPE))
                    outcome.entries.append(
                        ManifestEntry(
                            entry.path, 0, "", iso_from_timestamp(entry.mtime), "symlink", entry.mode, entry.link_target
                        )
                    )
                elif entry.size == 0:
                    # As GNU tar does, an empty file is not opened: there is nothing to
                    # read, and on a tree of many empty files the open would be most of
                    # the cost.
                    tar.write(_header(entry, tarfile.REGTYPE))
                    outcome.entries.append(
                        ManifestEntry(entry.path, 0, empty_digest, iso_from_timestamp(entry.mtime), "file", entry.mode)
                    )
                else:
                    archived = reader.write(entry)
                    if archived is not None:
                        outcome.entries.append(archived)
                        outcome.bytes_read += archived.size
                if progress is not None:
                    progress(done, outcome.bytes_read)
    finally:
        os.close(root_fd)
    tar.finish()
    return outcome


def _same_state(before: os.stat_result, after: os.stat_result) -> bool:
    return (before.st_size, before.st_mtime_ns, before.st_ctime_ns) == (
        after.st_size,
        after.st_mtime_ns,
        after.st_ctime_ns,
    )


class _Outgrew(Exception):
    """A file read whole grew past the buffer while being read."""


class _FileReader:
    """Reads one source file at a time into the tar stream (see the module docstring)."""

    def __init__(
        self,
        tar: _TarStream,
        chain: DirectoryChain,
        filesystem: FileSystem,
        algorithm: str,
        on_read_error: Literal["fail", "skip"],
        buffer: bytearray,
        outcome: WriteOutcome,
    ) -> None:
        self.tar = tar
        self.chain = chain
        self.fs = filesystem
        self.algorithm = algorithm
        self.on_read_error = on_read_error
        self.view = memoryview(buffer)
        self.outcome = outcome

    def write(self, entry: SourceEntry) -> ManifestEntry | None:
        """Archive one regular file; return its manifest entry, or None if it was left out."""
        parts = entry.path.split("/")
        try:
            parent = self.chain.fd(parts[:-1])
            fd = self.fs.open_file(parts[-1], parent)
        except OSError as exc:
            if isinstance(exc, FileNotFoundError):
                message = f"{entry.abspath}: disappeared before it could be read"
            elif exc.errno in (errno.ELOOP, errno.ENOTDIR):
                message = f"{entry.abspath}: it or a directory above it was replaced by a symlink; not followed"
            else:
                message = f"{entry.abspath}: cannot be opened: {exc.strerror or exc}"
            self._skip_or_fail(message, entry)
            return None
        try:
            before = os.fstat(fd)
            if not stat.S_ISREG(before.st_mode):
                # Swapped for a FIFO, a device or a directory since the walk: whatever
                # the read-error policy, it is not a file to archive.
                self.outcome.skipped.append(entry.abspath)
                self.outcome.warnings.append(f"{entry.abspath}: is no longer a regular file; not archived")
                return None
            if before.st_size < len(self.view):
                try:
                    return self._read_small(fd, entry, before)
                except _Outgrew:
                    before = os.fstat(fd)  # it grew past one chunk while read: stream it
                    os.lseek(fd, 0, os.SEEK_SET)
            return self._stream(fd, entry, before)
        finally:
            os.close(fd)

    def _read_all(self, fd: int, entry: SourceEntry) -> int:
        """Read from the start into the buffer (at most all of it); return the count."""
        os.lseek(fd, 0, os.SEEK_SET)
        count = 0
        while count < len(self.view):
            read = self.fs.read_into(fd, self.view[count:])
            if not read:
                break
            count += read
        return count

    def _read_small(self, fd: int, entry: SourceEntry, before: os.stat_result) -> ManifestEntry | None:
        """Archive a file smaller than the buffer: read it whole, then check it did not
        change; if it did, read it once more. Nothing is written until a read is done,
        so a failed read leaves the file out rather than padded. Return the entry, or
        None if left out; raise _Outgrew if it grew past the buffer (then stream it)."""
        changed = False
        for attempt in (1, 2):
            try:
                count = self._read_all(fd, entry)
                after = os.fstat(fd)
            except OSError as exc:
                self._skip_or_fail(f"{entry.abspath}: read failed: {exc.strerror or exc}", entry)
                return None
            if count >= len(self.view):
                raise _Outgrew
            if _same_state(before, after) and count == after.st_size:
                break
            changed = attempt == 2
            before = after
        data = self.view[:count]
        self.tar.write(_header(entry, tarfile.REGTYPE, count, stat.S_IMODE(after.st_mode), after.st_mtime))
        self.tar.write(data)
        self.tar.pad_block()
        hasher = new_hasher(self.algorithm)
        hasher.update(data)
        warning = None
        if changed:
            warning = f"{entry.abspath}: changed while being read, twice; the archived copy may mix old and new data"
            self._changed(entry, warning)
        return ManifestEntry(
            entry.path,
            count,
            hasher.hexdigest(),
            iso_from_timestamp(after.st_mtime),
            "file",
            stat.S_IMODE(after.st_mode),
            warning=warning,
            changed_during_backup=changed,
        )

    def _stream(self, fd: int, entry: SourceEntry, before: os.stat_result) -> ManifestEntry:
        size = before.st_size
        tar, view = self.tar, self.view
        tar.write(_header(entry, tarfile.REGTYPE, size, stat.S_IMODE(before.st_mode), before.st_mtime))
        hasher = new_hasher(self.algorithm)
        remaining = size
        warning = None
        changed = False
        while remaining:
            chunk = view[: min(CHUNK_SIZE, remaining)]
            try:
                count = self.fs.read_into(fd, chunk)
            except OSError as exc:
                message = (
                    f"{entry.abspath}: read failed after {size - remaining} of {size} bytes: {exc.strerror or exc}"
                )
                if self.on_read_error == "fail":
                    raise SourceError(message, entry.abspath) from exc
                warning = message + "; the rest is archived as zero bytes"
                self.outcome.skipped.append(entry.abspath)
                break
            if count == 0:
                warning = (
                    f"{entry.abspath}: shrank from {size} to {size - remaining} bytes while being read; "
                    "the archive holds what was read, padded with zero bytes"
                )
                changed = True
                break
            hasher.update(chunk[:count])
            tar.write(chunk[:count])
            remaining -= count
        while remaining:
            pad = _ZEROS[: min(CHUNK_SIZE, remaining)]
            hasher.update(pad)
            tar.write(pad)
            remaining -= len(pad)
        tar.pad_block()
        digest = hasher.hexdigest()
        if warning is None:
            warning = self._changed_while_read(fd, entry.abspath, before, digest)
            changed = warning is not None
        if warning is not None:
            if changed:
                self._changed(entry, warning)
            else:
                self.outcome.warnings.append(warning)
        return ManifestEntry(
            entry.path,
            size,
            digest,
            iso_from_timestamp(before.st_mtime),
            "file",
            stat.S_IMODE(before.st_mode),
            warning=warning,
            changed_during_backup=changed,
        )

    def _changed_while_read(self, fd: int, path: str, before: os.stat_result, digest: str) -> str | None:
        """After streaming a file, return why the archived copy may not be one state of it."""
        view = self.view
        try:
            grew = self.fs.read_into(fd, view[:1]) > 0
            after = os.fstat(fd)
        except OSError as exc:
            return f"{path}: could not be re-checked after reading: {exc.strerror or exc}"
        if grew or after.st_size > before.st_size:
            return (
                f"{path}: grew from {before.st_size} to at least {max(after.st_size, before.st_size + 1)} bytes "
                f"while being read; the archive holds its first {before.st_size} bytes"
            )
        if _same_state(before, after):
            return None
        # Changed in place (perhaps with its mtime put back): read it again. If the file
        # now holds, unchanged throughout, exactly what was archived, the archived copy
        # is one state of the file, and nothing is wrong with it.
        try:
            os.lseek(fd, 0, os.SEEK_SET)
            hasher = new_hasher(self.algorithm)
            while True:
                count = self.fs.read_into(fd, view)
                if not count:
                    break
                hasher.update(view[:count])
            final = os.fstat(fd)
        except OSError as exc:
            return f"{path}: changed while being read and could not be re-read: {exc.strerror or exc}"
        if _same_state(after, final) and hasher.hexdigest() == digest:
            return None
        return f"{path}: changed while being read; the archived copy may mix old and new data"

    def _changed(self, entry: SourceEntry, warning: str) -> None:
        self.outcome.warnings.append(warning)
        self.outcome.changed.append(entry.abspath)

    def _skip_or_fail(self, message: str, entry: SourceEntry) -> None:
        if self.on_read_error == "fail":
            raise SourceError(message, entry.abspath)
        self.outcome.skipped.append(entry.abspath)
        self.outcome.warnings.append(message + "; skipped")
