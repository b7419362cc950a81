"""Streaming source entries into a POSIX (pax) tar stream, hashing each file once.

Every file is opened once, relative to its directory's descriptor and without
following links, and the same bytes feed its checksum and the archive, so the
manifest can never disagree with the archive.

What is kept of each entry, as GNU tar keeps it (see ``backup.stream.tarformat``):
owners (ids and names), the mode with its sticky and set-id bits, nanosecond mtimes,
extended attributes and ACLs, symlinks as symlinks, hard links as links to the first
name archived (the data once), sparse files as their data runs only, FIFOs and device
nodes as such. Sockets are left out by the walk.

A file that changes while it is read (its size, mtime or ctime differ after the read;
a writer that puts the mtime back still changes the ctime, as GNU tar checks) is read
again: a file smaller than one chunk is read whole before anything is written, so the
second read replaces the first; a larger one, already streamed, is re-read to check
that what was archived is what the file now holds. If it still changes, the archived
copy is kept, flagged ``changed_during_backup`` in the manifest, and named in the
result's warnings: never silently.

A file that starts with SQLite's header (of any name) is, unless ``sqlite_snapshot``
is off, archived as a consistent copy taken through SQLite (``backup.sqlite_snapshot``)
under its own name, owners, mode, mtime and extended attributes, and marked
``snapshot: "sqlite"`` in the manifest. The files ``<name>-wal``, ``-shm`` and
``-journal`` beside it, which the walk's sorted order puts after it, are then left
out, and the database's entry lists them (``snapshot_omitted``). A database that
cannot be copied so is archived byte for byte, as before, with a warning saying why.

Progress is reported after each entry, and every ``PROGRESS_STEP`` bytes within a
large file, so that a single 30 GB file moves the count too.
"""

from __future__ import annotations

import errno
import os
import stat
import tarfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import BinaryIO, Literal

from ..acl import ACL_XATTRS, AclError, acl_to_text
from ..errors import SourceError
from ..fstree import LOCAL_FILESYSTEM, DirectoryChain, FileSystem
from ..hashing import CHUNK_SIZE, new_hasher
from ..manifest.model import ManifestEntry, iso_from_timestamp
from ..progress import PROGRESS_STEP, ProgressCallback
from ..scan import SourceEntry
from ..sqlite_snapshot import (
    COMPANION_SUFFIXES,
    SQLITE_HEADER,
    SQLITE_MIN_SIZE,
    SnapshotError,
    is_sqlite_header,
    sqlite_snapshot,
)
from .tarformat import (
    encode_global_header,
    encode_header,
    encode_sparse_map,
    sparse_member_name,
    writer_comment,
    xattr_key,
)

__all__ = ["WriteOutcome", "write_entries"]

BLOCK = tarfile.BLOCKSIZE
RECORD = tarfile.RECORDSIZE
_ZEROS = bytes(CHUNK_SIZE)
_NS = 1_000_000_000
_HEADER_LENGTH = len(SQLITE_HEADER)
_HEADER_FIRST = SQLITE_HEADER[0]
_SPECIAL_TYPES = {"fifo": tarfile.FIFOTYPE, "chardev": tarfile.CHRTYPE, "blockdev": tarfile.BLKTYPE}


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


class _FileProgress:
    """Reports progress part way through one file, every ``PROGRESS_STEP`` bytes."""

    __slots__ = ("_done", "_entries", "_next", "_progress", "_start")

    def __init__(self, progress: ProgressCallback | None, entries_done: int, bytes_before: int) -> None:
        self._progress = progress
        self._entries = entries_done
        self._start = bytes_before
        self._done = 0
        self._next = PROGRESS_STEP if progress is not None else -1

    def advance(self, count: int) -> None:
        self._done += count
        if 0 <= self._next <= self._done:
            assert self._progress is not None
            self._progress(self._entries, self._start + self._done)
            self._next = self._done + PROGRESS_STEP


class _Owners:
    """User and group names by id, each looked up once."""

    def __init__(self, filesystem: FileSystem) -> None:
        self._fs = filesystem
        self._users: dict[int, str] = {}
        self._groups: dict[int, str] = {}

    def user(self, uid: int) -> str:
        name = self._users.get(uid)
        if name is None:
            name = self._users[uid] = self._fs.user_name(uid)
        return name

    def group(self, gid: int) -> str:
        name = self._groups.get(gid)
        if name is None:
            name = self._groups[gid] = self._fs.group_name(gid)
        return name


@dataclass(slots=True)
class _Meta:
    """What a member's header and manifest entry say about an entry besides its data."""

    mode: int
    mtime_ns: int
    uid: int
    gid: int
    user: str
    group: str
    xattrs: dict[str, bytes]

    def records(self) -> dict[str, str | bytes]:
        """The pax records for the extended attributes, and the ACLs' text form."""
        if not self.xattrs:
            return {}
        records: dict[str, str | bytes] = {xattr_key(name): value for name, value in self.xattrs.items()}
        for kind, name in ACL_XATTRS.items():
            if name in self.xattrs:
                try:
                    records[f"SCHILY.acl.{kind}"] = acl_to_text(self.xattrs[name])
                except AclError:
                    pass  # the binary form is archived as it is; GNU tar's text cannot say it
        return records

    def entry(self, path: str, size: int, checksum: str, kind: str, **extra: object) -> ManifestEntry:
        return ManifestEntry(
            path,
            size,
            checksum,
            iso_from_timestamp(self.mtime_ns / _NS),
            kind,
            self.mode,
            uid=self.uid,
            gid=self.gid,
            user=self.user,
            group=self.group,
            mtime_ns=self.mtime_ns,
            xattrs=self.xattrs or None,  # each entry has its own dict
            **extra,  # type: ignore[arg-type]
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
    sqlite_snapshot: bool = True,
) -> WriteOutcome:
    """Given a writable stream, the source root and the entries of a plan, write a
    complete tar stream.

    With ``backup_id`` the stream starts with a pax global header whose ``comment``
    names it, so the archive says it is ours even without its manifest.
    Return the manifest entries of what was archived. Raise SourceError if a file
    cannot be read and ``on_read_error`` is "fail"; with "skip", a file that cannot be
    opened or read is left out (one already partly streamed is completed with zeros),
    and either is recorded in the outcome's warnings and in its manifest entry.
    With ``sqlite_snapshot`` SQLite databases are archived as consistent snapshots
    (see the module docstring).
    """
    tar = _TarStream(out)
    if backup_id is not None:
        tar.write(encode_global_header({"comment": writer_comment(backup_id)}))
    outcome = WriteOutcome()
    try:
        root_fd = filesystem.open_root(root)
    except OSError as exc:
        raise SourceError(f"{root}: source directory cannot be opened: {exc.strerror or exc}", root) from exc
    try:
        with DirectoryChain(root_fd) as chain:
            writer = _EntryWriter(tar, chain, filesystem, algorithm, on_read_error, outcome)
            writer.sqlite_snapshot = sqlite_snapshot
            writer.progress = progress
            for done, entry in enumerate(entries, start=1):
                writer.entries_done = done - 1
                archived = writer.write(entry)
                if archived is not None:
                    outcome.entries.append(archived)
                    if archived.type == "file":
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


class _EntryWriter:
    """Writes one entry at a time into the tar stream (see the module docstring)."""

    def __init__(
        self,
        tar: _TarStream,
        chain: DirectoryChain,
        filesystem: FileSystem,
        algorithm: str,
        on_read_error: Literal["fail", "skip"],
        outcome: WriteOutcome,
    ) -> None:
        self.tar = tar
        self.chain = chain
        self.fs = filesystem
        self.algorithm = algorithm
        self.on_read_error = on_read_error
        self.view = memoryview(bytearray(CHUNK_SIZE))
        self.outcome = outcome
        self.owners = _Owners(filesystem)
        self.empty_digest = new_hasher(algorithm).hexdigest()
        # (device, inode) of each file archived with several names -> its entry.
        self.links: dict[tuple[int, int], ManifestEntry] = {}
        self.sqlite_snapshot = False
        # The -wal, -shm and -journal paths beside each database archived as a
        # snapshot -> that database's entry, and the suffix.
        self.companions: dict[str, tuple[ManifestEntry, str]] = {}
        self.progress: ProgressCallback | None = None
        self.entries_done = 0

    # -- metadata -------------------------------------------------------------------

    def _meta(self, entry: SourceEntry, info: os.stat_result | None = None, fd: int | None = None) -> _Meta:
        """Given an entry (and, for an open file, its fstat and descriptor), return what
        its header says besides its data."""
        uid, gid = (info.st_uid, info.st_gid) if info is not None else (entry.uid, entry.gid)
        mode = stat.S_IMODE(info.st_mode) if info is not None else entry.mode
        mtime_ns = info.st_mtime_ns if info is not None else entry.mtime_ns or int(entry.mtime * _NS)
        return _Meta(mode, mtime_ns, uid, gid, self.owners.user(uid), self.owners.group(gid), self._xattrs(entry, fd))

    def _xattrs(self, entry: SourceEntry, fd: int | None) -> dict[str, bytes]:
        parts = entry.path.split("/")
        try:
            if fd is None and entry.kind == "dir":
                return self.fs.xattrs(parts[-1], self.chain.fd(parts[:-1]), self.chain.fd(parts))
            return self.fs.xattrs(parts[-1], self.chain.fd(parts[:-1]), fd)
        except OSError as exc:
            self.outcome.warnings.append(
                f"{entry.abspath}: extended attributes cannot be read: {exc.strerror or exc}; archived without them"
            )
            return {}

    def _header(
        self,
        entry: SourceEntry,
        meta: _Meta,
        kind: bytes,
        size: int = 0,
        *,
        name: str | None = None,
        records: Mapping[str, str | bytes] | None = None,
        **fields: object,
    ) -> bytes:
        return encode_header(
            entry.path if name is None else name,
            kind,
            size=size,
            mode=meta.mode,
            mtime_ns=meta.mtime_ns,
            uid=meta.uid,
            gid=meta.gid,
            uname=meta.user,
            gname=meta.group,
            records=meta.records() if records is None else {**records, **meta.records()},
            **fields,  # type: ignore[arg-type]
        )

    # -- entries --------------------------------------------------------------------

    def write(self, entry: SourceEntry) -> ManifestEntry | None:
        """Archive one entry; return its manifest entry, or None if it was left out."""
        if entry.kind == "dir":
            meta = self._meta(entry)
            self.tar.write(self._header(entry, meta, tarfile.DIRTYPE))
            return meta.entry(entry.path, 0, "", "dir")
        if entry.kind == "symlink":
            meta = self._meta(entry)
            self.tar.write(self._header(entry, meta, tarfile.SYMTYPE, linkname=entry.link_target or ""))
            return meta.entry(entry.path, 0, "", "symlink", link_target=entry.link_target)
        if entry.kind in _SPECIAL_TYPES:
            meta = self._meta(entry)
            major, minor = os.major(entry.rdev), os.minor(entry.rdev)
            self.tar.write(self._header(entry, meta, _SPECIAL_TYPES[entry.kind], devmajor=major, devminor=minor))
            device = (major, minor) if entry.kind != "fifo" else None
            return meta.entry(entry.path, 0, "", entry.kind, device=device)
        if self.companions and entry.path in self.companions:
            database, suffix = self.companions.pop(entry.path)
            database.snapshot_omitted = [*(database.snapshot_omitted or ()), suffix]
            return None
        key = (entry.dev, entry.ino) if entry.nlink > 1 else None
        if key is not None and key in self.links:
            return self._hard_link(entry, self.links[key])
        if entry.size == 0:
            # As GNU tar does, an empty file is not opened: there is nothing to read,
            # and on a tree of many empty files the open would be most of the cost.
            meta = self._meta(entry)
            self.tar.write(self._header(entry, meta, tarfile.REGTYPE))
            archived: ManifestEntry | None = meta.entry(entry.path, 0, self.empty_digest, "file")
        else:
            archived = self._file(entry)
        if key is not None and archived is not None:
            self.links[key] = archived
        return archived

    def _hard_link(self, entry: SourceEntry, first: ManifestEntry) -> ManifestEntry:
        """Another name of a file already archived: a link to it, no data (as tar does)."""
        meta = self._meta(entry)
        self.tar.write(self._header(entry, meta, tarfile.LNKTYPE, linkname=first.path))
        return meta.entry(
            entry.path, first.size, first.checksum, "hardlink", link_target=first.path, data_size=first.data_size
        )

    def _file(self, entry: SourceEntry) -> ManifestEntry | None:
        """Archive one regular file; return its entry, or None if it was left out."""
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
            meta = self._meta(entry, before, fd)
            small = before.st_size < len(self.view)
            maybe_sparse = before.st_blocks * 512 < before.st_size
            # A file read whole is checked for SQLite's header once read (in _read_small).
            if (maybe_sparse or not small) and self.sqlite_snapshot:
                # Mostly holes: a copy through SQLite would fill them (any user could
                # make a 1 TiB one of 8 KiB): such a file is copied as it is.
                mostly_holes = before.st_blocks * 512 * 2 < before.st_size
                archived = self._snapshot_if_sqlite(fd, entry, meta, before.st_size, mostly_holes)
                if archived is not None:
                    return archived
            if maybe_sparse:
                segments = self.fs.data_segments(fd, before.st_size)
                if sum(length for _, length in segments) < before.st_size:
                    return self._sparse(fd, entry, before, meta, segments)
            if small:
                try:
                    return self._read_small(fd, entry, before, meta)
                except _Outgrew:
                    before = os.fstat(fd)  # it grew past one chunk while read: stream it
                    os.lseek(fd, 0, os.SEEK_SET)
                    if self.sqlite_snapshot:
                        archived = self._snapshot_if_sqlite(fd, entry, meta, before.st_size)
                        if archived is not None:
                            return archived
            return self._stream(fd, entry, before, meta)
        finally:
            os.close(fd)

    def _read_all(self, fd: int) -> int:
        """Read from the start into the buffer (at most all of it); return the count."""
        os.lseek(fd, 0, os.SEEK_SET)
        count = 0
        while count < len(self.view):
            read = self.fs.read_into(fd, self.view[count:])
            if not read:
                break
            count += read
        return count

    def _read_small(self, fd: int, entry: SourceEntry, before: os.stat_result, meta: _Meta) -> ManifestEntry | None:
        """Archive a file smaller than the buffer: read it whole, then check it did not
        change; if it did, read it once more. Nothing is written until a read is done,
        so a failed read leaves the file out rather than padded. Return the entry, or
        None if left out; raise _Outgrew if it grew past the buffer (then stream it)."""
        changed = False
        for attempt in (1, 2):
            try:
                count = self._read_all(fd)
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
        meta.mode, meta.mtime_ns = stat.S_IMODE(after.st_mode), after.st_mtime_ns
        view = self.view
        # The first byte alone rules out nearly every file, for less than a slice costs.
        if (
            self.sqlite_snapshot
            and count >= SQLITE_MIN_SIZE
            and view[0] == _HEADER_FIRST
            and view[:_HEADER_LENGTH] == SQLITE_HEADER
        ):
            # The snapshot does not use the buffer until it is taken, so if it fails,
            # what was read here is still there to archive.
            archived = self._snapshot(fd, entry, meta)
            if archived is not None:
                return archived
        data = view[:count]
        self.tar.write(self._header(entry, meta, tarfile.REGTYPE, count))
        self.tar.write(data)
        self.tar.pad_block()
        hasher = new_hasher(self.algorithm)
        hasher.update(data)
        warning = None
        if changed:
            warning = f"{entry.abspath}: changed while being read, twice; the archived copy may mix old and new data"
            self._changed(entry, warning)
        return meta.entry(entry.path, count, hasher.hexdigest(), "file", warning=warning, changed_during_backup=changed)

    def _stream(self, fd: int, entry: SourceEntry, before: os.stat_result, meta: _Meta) -> ManifestEntry:
        size = before.st_size
        tar, view = self.tar, self.view
        tar.write(self._header(entry, meta, tarfile.REGTYPE, size))
        hasher = new_hasher(self.algorithm)
        remaining = size
        warning = None
        changed = False
        advanced = _FileProgress(self.progress, self.entries_done, self.outcome.bytes_read).advance
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
            advanced(count)
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
        return meta.entry(entry.path, size, digest, "file", warning=warning, changed_during_backup=changed)

    def _sparse(
        self, fd: int, entry: SourceEntry, before: os.stat_result, meta: _Meta, segments: list[tuple[int, int]]
    ) -> ManifestEntry:
        """Archive a file with holes as its data runs only, in GNU's pax sparse format
        1.0; its checksum is still that of all its bytes, holes read as zeros."""
        size = before.st_size
        data_size = sum(length for _, length in segments)
        # The map ends with a zero-length run at the real size, as GNU tar writes it.
        layout = [*segments, (size, 0)]
        sparse_map = encode_sparse_map(layout)
        records: dict[str, str | bytes] = {
            "GNU.sparse.major": "1",
            "GNU.sparse.minor": "0",
            "GNU.sparse.name": entry.path,
            "GNU.sparse.realsize": str(size),
        }
        name = sparse_member_name(entry.path)
        self.tar.write(
            self._header(entry, meta, tarfile.REGTYPE, len(sparse_map) + data_size, name=name, records=records)
        )
        self.tar.write(sparse_map)
        hasher = new_hasher(self.algorithm)
        position = 0
        warning = None
        advanced = _FileProgress(self.progress, self.entries_done, self.outcome.bytes_read).advance
        for offset, length in segments:
            _hash_zeros(hasher, offset - position)
            done = 0
            while done < length:
                chunk = self.view[: min(CHUNK_SIZE, length - done)]
                try:
                    count = self.fs.pread_into(fd, chunk, offset + done)
                except OSError as exc:
                    message = f"{entry.abspath}: read failed at byte {offset + done}: {exc.strerror or exc}"
                    if self.on_read_error == "fail":
                        raise SourceError(message, entry.abspath) from exc
                    count, warning = 0, message + "; the rest is archived as zero bytes"
                if count == 0:
                    # Shrank (or failed): the run is completed with zeros, as a stream is.
                    warning = warning or f"{entry.abspath}: shrank while being read; completed with zero bytes"
                    pad = _ZEROS[: min(CHUNK_SIZE, length - done)]
                    hasher.update(pad)
                    self.tar.write(pad)
                    done += len(pad)
                    continue
                hasher.update(chunk[:count])
                self.tar.write(chunk[:count])
                done += count
                advanced(count)
            position = offset + length
        _hash_zeros(hasher, size - position)
        self.tar.pad_block()
        digest = hasher.hexdigest()
        changed = warning is not None
        if warning is None:
            after = os.fstat(fd)
            if not _same_state(before, after):
                warning = f"{entry.abspath}: changed while being read; the archived copy may mix old and new data"
                changed = True
        if warning is not None:
            self._changed(entry, warning)
        return meta.entry(
            entry.path,
            size,
            digest,
            "file",
            warning=warning,
            changed_during_backup=changed,
            data_size=data_size,
        )

    def _snapshot_if_sqlite(
        self, fd: int, entry: SourceEntry, meta: _Meta, size: int, mostly_holes: bool = False
    ) -> ManifestEntry | None:
        """If an open file not read whole begins with SQLite's header, archive it as a
        snapshot and return its entry; else (or if that failed, or it is mostly holes)
        return None."""
        if size < SQLITE_MIN_SIZE:
            return None
        head = self.view[:_HEADER_LENGTH]
        try:
            count = self.fs.pread_into(fd, head, 0)
        except OSError:
            return None  # the ordinary read meets the same error, and reports it
        if not is_sqlite_header(head[:count], size):
            return None
        if mostly_holes:
            self.outcome.warnings.append(
                f"{entry.abspath}: SQLite database archived byte for byte, not as a snapshot: "
                "it is mostly holes, which a copy would fill"
            )
            return None
        return self._snapshot(fd, entry, meta)

    def _snapshot(self, fd: int, entry: SourceEntry, meta: _Meta) -> ManifestEntry | None:
        """Archive an SQLite database as a consistent snapshot taken through SQLite,
        under the file's own name and metadata; return its entry, or None (with a
        warning) if no snapshot could be taken and the file is to be copied as it is."""
        parts = entry.path.split("/")
        try:
            with sqlite_snapshot(self.chain.fd(parts[:-1]), parts[-1], fd) as copy:
                size, digest = self._copy_private(copy, entry, meta)
        except SnapshotError as exc:
            self.outcome.warnings.append(
                f"{entry.abspath}: SQLite database archived byte for byte, not as a snapshot: {exc}"
            )
            return None
        archived = meta.entry(entry.path, size, digest, "file", snapshot="sqlite")
        for suffix in COMPANION_SUFFIXES:
            self.companions[entry.path + suffix] = (archived, suffix)
        return archived

    def _copy_private(self, fd: int, entry: SourceEntry, meta: _Meta) -> tuple[int, str]:
        """Archive the whole of a private file that nothing else writes (a snapshot) as
        ``entry``; return its size and digest. Raise SourceError if it cannot be read
        back: its header is written by then, so there is no falling back."""
        size = os.fstat(fd).st_size
        self.tar.write(self._header(entry, meta, tarfile.REGTYPE, size))
        hasher = new_hasher(self.algorithm)
        advanced = _FileProgress(self.progress, self.entries_done, self.outcome.bytes_read).advance
        remaining = size
        while remaining:
            chunk = self.view[: min(CHUNK_SIZE, remaining)]
            try:
                count = os.readv(fd, [chunk])
            except OSError as exc:
                message = f"{entry.abspath}: its snapshot cannot be read back: {exc.strerror or exc}"
                raise SourceError(message, entry.abspath) from exc
            if not count:
                message = f"{entry.abspath}: its snapshot ended {remaining} bytes short of {size}"
                raise SourceError(message, entry.abspath)
            hasher.update(chunk[:count])
            self.tar.write(chunk[:count])
            remaining -= count
            advanced(count)
        self.tar.pad_block()
        return size, hasher.hexdigest()

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


def _hash_zeros(hasher: object, count: int) -> None:
    """Feed ``count`` zero bytes (a hole) to a hasher, a chunk at a time."""
    update = hasher.update  # type: ignore[attr-defined]
    while count > 0:
        piece = min(count, CHUNK_SIZE)
        update(_ZEROS[:piece])
        count -= piece
