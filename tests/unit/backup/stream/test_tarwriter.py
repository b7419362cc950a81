"""Tests for backup.stream.tarwriter: write_entries, into memory, one behaviour each.

Faults and changes at exact moments come through the source file system seam
(``support.sources``): we run as root, so permission bits cannot make a file unreadable,
and the writer reads every source file through the ``FileSystem`` it is given.
"""

from __future__ import annotations

import errno
import grp
import hashlib
import io
import os
import pwd
import stat
import tarfile
from pathlib import Path

import pytest

from backup.checksum import CHUNK_SIZE
from backup.errors import SourceError
from backup.fstree import LOCAL_FILESYSTEM, FileSystem
from backup.manifest import iso_from_timestamp
from backup.scan import SourceEntry, scan_source
from backup.stream.tarformat import backup_id_from_comment
from backup.stream.tarwriter import WriteOutcome, write_entries
from support.sources import AfterReadFileSystem, CountingFileSystem, FailingReadFileSystem, RefusingFileSystem

MTIME = 1_600_000_000
BIG = CHUNK_SIZE + CHUNK_SIZE // 2 + 123  # streamed, not read whole


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def source(tmp_path: Path) -> Path:
    """A file, an empty file, a directory with a file, and a symlink."""
    root = tmp_path / "source"
    (root / "sub").mkdir(parents=True)
    (root / "a.txt").write_bytes(b"alpha\n")
    (root / "empty").write_bytes(b"")
    (root / "sub" / "b.bin").write_bytes(bytes(range(256)) * 3)
    os.symlink("../a.txt", root / "sub" / "link")
    os.chmod(root / "a.txt", 0o640)
    os.chmod(root / "sub", 0o750)
    for path in (root / "a.txt", root / "empty", root / "sub" / "b.bin", root / "sub"):
        os.utime(path, (MTIME + 0.75, MTIME + 0.75))
    return root


def _write(
    root: Path,
    entries: tuple[SourceEntry, ...] | None = None,
    filesystem: FileSystem = LOCAL_FILESYSTEM,
    **options: object,
) -> tuple[bytes, WriteOutcome]:
    """Write the tree (or the given entries) into memory; return the tar bytes and the outcome."""
    out = io.BytesIO()
    if entries is None:
        entries = scan_source(root).entries
    outcome = write_entries(
        out,
        entries,
        root=str(root),
        algorithm="sha256",
        filesystem=filesystem,
        **options,  # type: ignore[arg-type]
    )
    return out.getvalue(), outcome


def _members(data: bytes) -> dict[str, tuple[tarfile.TarInfo, bytes | None]]:
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        found = {}
        for member in tar.getmembers():
            handle = tar.extractfile(member) if member.isfile() else None
            found[member.name] = (member, handle.read() if handle else None)
        return found


# --- the tar stream ----------------------------------------------------------------------


def test_each_entry_becomes_a_member_with_its_metadata(source: Path) -> None:
    """Names, types, modes, exact mtimes (a pax record holds the fraction), owners by
    number and by name, sizes, link targets."""
    data, _ = _write(source)
    members = _members(data)
    assert list(members) == ["a.txt", "empty", "sub", "sub/b.bin", "sub/link"]
    a, a_data = members["a.txt"]
    assert (a.type, a.mode, a.mtime, a.size, a_data) == (tarfile.REGTYPE, 0o640, MTIME + 0.75, 6, b"alpha\n")
    assert a.pax_headers["mtime"] == f"{MTIME}.75"
    owners = (os.getuid(), os.getgid(), pwd.getpwuid(os.getuid()).pw_name, grp.getgrgid(os.getgid()).gr_name)
    for name, (member, _data) in members.items():
        assert (member.uid, member.gid, member.uname, member.gname) == owners, name
    sub, _ = members["sub"]
    assert (sub.type, sub.mode, sub.mtime, sub.size) == (tarfile.DIRTYPE, 0o750, MTIME + 0.75, 0)
    link, _ = members["sub/link"]
    assert (link.type, link.linkname, link.size) == (tarfile.SYMTYPE, "../a.txt", 0)
    assert members["empty"][1] == b""
    assert members["sub/b.bin"][1] == bytes(range(256)) * 3


def test_headers_are_ustar_and_directories_end_in_a_slash(source: Path) -> None:
    """Each member's own header (after its pax header, if it has one) is ustar, with the
    owner's names in it, as GNU tar writes them."""
    data, _ = _write(source)
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        for member in tar.getmembers():
            block = data[member.offset_data - tarfile.BLOCKSIZE : member.offset_data]
            assert block[257:265] == tarfile.POSIX_MAGIC
            assert block[265:297].rstrip(b"\x00") == member.uname.encode()
            assert block[297:329].rstrip(b"\x00") == member.gname.encode()
            if member.offset != member.offset_data - tarfile.BLOCKSIZE:  # a pax header first
                assert data[member.offset + 156 : member.offset + 157] == tarfile.XHDTYPE
                assert data[member.offset + 257 : member.offset + 265] == tarfile.POSIX_MAGIC
            if member.isdir():
                assert block[:100].rstrip(b"\x00") == member.name.encode() + b"/"


def test_data_is_padded_to_blocks_and_the_stream_to_records(source: Path) -> None:
    """Each member's data starts on a block; the archive ends with two zero blocks or
    more and is a whole number of 10 KiB records, as tar writes it."""
    data, _ = _write(source)
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        members = tar.getmembers()
    for member in members:
        assert member.offset % tarfile.BLOCKSIZE == 0
        assert member.offset_data % tarfile.BLOCKSIZE == 0
    last = members[-1]
    end_of_data = last.offset_data + last.size + (-last.size % tarfile.BLOCKSIZE)
    assert len(data) % tarfile.RECORDSIZE == 0
    assert len(data) - end_of_data >= 2 * tarfile.BLOCKSIZE
    assert data[end_of_data:] == bytes(len(data) - end_of_data)


def test_a_backup_id_puts_the_writer_s_mark_first(source: Path) -> None:
    """A pax global header whose comment names the backup: the archive says it is ours."""
    data, _ = _write(source, backup_id="b_20240506_070809-2")
    assert data[156:157] == tarfile.XGLTYPE
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        assert backup_id_from_comment(tar.pax_headers.get("comment")) == "b_20240506_070809-2"
        assert tar.getnames()[0] == "a.txt"


def test_without_a_backup_id_there_is_no_mark(source: Path) -> None:
    """No global header: the first block is the first member's own pax header (its mtime
    has a fraction of a second), and no pax record applies to the whole archive."""
    data, _ = _write(source)
    assert data[156:157] == tarfile.XHDTYPE
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        assert tar.getnames()[0] == "a.txt"
        assert tar.pax_headers == {}


def test_an_empty_entry_list_is_an_empty_archive(tmp_path: Path) -> None:
    data, outcome = _write(tmp_path, entries=())
    assert data == bytes(tarfile.RECORDSIZE)
    assert outcome.entries == [] and outcome.warnings == []


# --- the manifest entries ----------------------------------------------------------------


def test_manifest_entries_describe_exactly_what_was_archived(source: Path) -> None:
    """Same order as the archive; each file's checksum is that of its archived bytes."""
    data, outcome = _write(source)
    members = _members(data)
    assert [entry.path for entry in outcome.entries] == list(members)
    for entry in outcome.entries:
        member, content = members[entry.path]
        assert entry.mode == member.mode
        if entry.type == "file":
            assert content is not None
            assert (entry.size, entry.checksum) == (len(content), _sha256(content))
        else:
            assert (entry.size, entry.checksum) == (0, "")
    by_path = {entry.path: entry for entry in outcome.entries}
    assert by_path["sub/link"].link_target == "../a.txt"
    assert (by_path["sub"].type, by_path["sub/link"].type) == ("dir", "symlink")
    assert by_path["a.txt"].modified == iso_from_timestamp(MTIME + 0.75)
    assert outcome.bytes_read == 6 + 768
    assert outcome.warnings == outcome.skipped == outcome.changed == []


def test_empty_files_are_not_opened(source: Path) -> None:
    """Nothing to read: the header alone, and the digest of no bytes."""
    filesystem = CountingFileSystem()
    _, outcome = _write(source, filesystem=filesystem)
    assert sorted(filesystem.opens) == [str(source / "a.txt"), str(source / "sub" / "b.bin")]
    assert set(filesystem.opens.values()) == {1}
    empty = next(entry for entry in outcome.entries if entry.path == "empty")
    assert (empty.size, empty.checksum) == (0, _sha256(b""))


def test_progress_is_reported_after_each_entry(source: Path) -> None:
    calls: list[tuple[int, int]] = []
    _write(source, progress=lambda done, read: calls.append((done, read)))
    assert [done for done, _ in calls] == [1, 2, 3, 4, 5]
    assert calls[-1] == (5, 6 + 768)
    assert [read for _, read in calls] == sorted(read for _, read in calls)


# --- files that change while read --------------------------------------------------------


def _rewrite_keeping_mtime(path: Path, data: bytes) -> None:
    """New bytes over the old ones, then the old mtime back (rsync --inplace -t)."""
    info = os.stat(path)
    with open(path, "r+b") as handle:
        handle.write(data)
    os.utime(path, ns=(info.st_atime_ns, info.st_mtime_ns))


def test_a_small_file_changed_once_is_read_again_before_anything_is_written(tmp_path: Path) -> None:
    """Its size and mtime are the same, its ctime is not: the second read replaces the
    first, so the archive holds the new version alone, and nothing is flagged."""
    (tmp_path / "db").write_bytes(b"A" * 4096)
    filesystem = AfterReadFileSystem(tmp_path / "db", lambda: _rewrite_keeping_mtime(tmp_path / "db", b"B" * 4096))
    data, outcome = _write(tmp_path, filesystem=filesystem)
    assert filesystem.done == 1
    assert _members(data)["db"][1] == b"B" * 4096
    assert outcome.warnings == [] and outcome.changed == []
    assert outcome.entries[0].checksum == _sha256(b"B" * 4096)
    assert not outcome.entries[0].changed_during_backup


def test_a_small_file_that_changes_on_both_reads_is_flagged(tmp_path: Path) -> None:
    path = tmp_path / "hot"
    path.write_bytes(b"0" * 100)
    versions = iter([b"1" * 100, b"2" * 100])
    filesystem = AfterReadFileSystem(path, lambda: _rewrite_keeping_mtime(path, next(versions)), times=2)
    data, outcome = _write(tmp_path, filesystem=filesystem)
    assert filesystem.done == 2
    assert outcome.changed == [str(path)]
    entry = outcome.entries[0]
    assert entry.changed_during_backup
    assert entry.warning == f"{path}: changed while being read, twice; the archived copy may mix old and new data"
    assert outcome.warnings == [entry.warning]
    assert entry.checksum == _sha256(_members(data)["hot"][1] or b"")


def test_a_small_file_that_grows_past_one_chunk_while_read_is_streamed_at_its_new_size(tmp_path: Path) -> None:
    path = tmp_path / "log"
    path.write_bytes(b"x" * 1000)
    grown = b"x" * 1000 + b"y" * CHUNK_SIZE

    def grow() -> None:
        with open(path, "ab") as handle:
            handle.write(b"y" * CHUNK_SIZE)

    data, outcome = _write(tmp_path, filesystem=AfterReadFileSystem(path, grow))
    assert _members(data)["log"][1] == grown
    assert (outcome.entries[0].size, outcome.entries[0].checksum) == (len(grown), _sha256(grown))


def test_a_large_file_that_grows_is_archived_as_first_seen_and_flagged(tmp_path: Path) -> None:
    path = tmp_path / "big"
    original = os.urandom(BIG)
    path.write_bytes(original)

    def grow() -> None:
        with open(path, "ab") as handle:
            handle.write(b"G" * 10)

    data, outcome = _write(tmp_path, filesystem=AfterReadFileSystem(path, grow))
    assert _members(data)["big"][1] == original
    entry = outcome.entries[0]
    assert entry.warning is not None and entry.warning.startswith(f"{path}: grew from {BIG} to at least ")
    assert entry.changed_during_backup and outcome.changed == [str(path)]
    assert entry.checksum == _sha256(original)


def test_a_large_file_that_shrinks_is_padded_with_zeros_and_flagged(tmp_path: Path) -> None:
    path = tmp_path / "big"
    original = os.urandom(BIG)
    path.write_bytes(original)
    keep = CHUNK_SIZE + 10
    data, outcome = _write(tmp_path, filesystem=AfterReadFileSystem(path, lambda: os.truncate(path, keep)))
    archived = original[:keep] + bytes(BIG - keep)
    assert _members(data)["big"][1] == archived
    entry = outcome.entries[0]
    assert (entry.size, entry.checksum) == (BIG, _sha256(archived))
    assert entry.warning == (
        f"{path}: shrank from {BIG} to {keep} bytes while being read; "
        "the archive holds what was read, padded with zero bytes"
    )
    assert entry.changed_during_backup and outcome.changed == [str(path)]


def test_a_large_file_rewritten_with_new_bytes_is_flagged(tmp_path: Path) -> None:
    """Already streamed, it cannot be read again into the archive: the re-read finds it
    differs, and the archived copy is flagged as possibly torn."""
    path = tmp_path / "big"
    path.write_bytes(b"A" * BIG)
    filesystem = AfterReadFileSystem(path, lambda: _rewrite_keeping_mtime(path, b"B" * BIG))
    data, outcome = _write(tmp_path, filesystem=filesystem)
    entry = outcome.entries[0]
    assert entry.warning == f"{path}: changed while being read; the archived copy may mix old and new data"
    assert entry.changed_during_backup and outcome.changed == [str(path)]
    assert entry.checksum == _sha256(_members(data)["big"][1] or b"")


def test_a_large_file_touched_but_unchanged_is_not_flagged(tmp_path: Path) -> None:
    """Its ctime moved, its bytes did not: the re-read matches what was archived."""
    path = tmp_path / "big"
    original = os.urandom(BIG)
    path.write_bytes(original)

    def touch_back() -> None:
        info = os.stat(path)
        os.utime(path, ns=(info.st_atime_ns, info.st_mtime_ns))

    data, outcome = _write(tmp_path, filesystem=AfterReadFileSystem(path, touch_back))
    assert _members(data)["big"][1] == original
    assert outcome.warnings == [] and outcome.changed == [] and outcome.entries[0].warning is None


# --- files that cannot be read -----------------------------------------------------------


def test_a_file_that_cannot_be_opened_fails_the_write_by_default(source: Path) -> None:
    victim = source / "sub" / "b.bin"
    with pytest.raises(SourceError) as info:
        _write(source, filesystem=RefusingFileSystem(victim))
    assert str(info.value) == f"{victim}: cannot be opened: Permission denied"
    assert info.value.path == str(victim)


def test_a_file_that_cannot_be_opened_is_skipped_when_told(source: Path) -> None:
    victim = source / "sub" / "b.bin"
    data, outcome = _write(source, filesystem=RefusingFileSystem(victim), on_read_error="skip")
    assert "sub/b.bin" not in _members(data)
    assert "sub/b.bin" not in [entry.path for entry in outcome.entries]
    assert outcome.skipped == [str(victim)]
    assert outcome.warnings == [f"{victim}: cannot be opened: Permission denied; skipped"]


def test_a_file_that_disappeared_after_the_walk_is_named_so(source: Path) -> None:
    entries = scan_source(source).entries
    os.unlink(source / "a.txt")
    _, outcome = _write(source, entries, on_read_error="skip")
    assert outcome.warnings == [f"{source / 'a.txt'}: disappeared before it could be read; skipped"]


def test_a_directory_swapped_for_a_symlink_after_the_walk_is_not_followed(source: Path, tmp_path: Path) -> None:
    entries = scan_source(source).entries
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "b.bin").write_bytes(b"not from the source")
    os.rename(source / "sub", tmp_path / "old-sub")
    os.symlink(elsewhere, source / "sub")
    with pytest.raises(SourceError) as info:
        _write(source, entries)
    victim = source / "sub" / "b.bin"
    assert str(info.value) == f"{victim}: it or a directory above it was replaced by a symlink; not followed"
    data, outcome = _write(source, entries, on_read_error="skip")
    assert b"not from the source" not in data
    assert outcome.skipped == [str(victim)]


def test_a_small_file_whose_read_fails_is_left_out_not_padded(tmp_path: Path) -> None:
    """Nothing of a small file is written until its read is done: a failed read leaves
    no member at all."""
    path = tmp_path / "small"
    path.write_bytes(b"s" * 1000)
    data, outcome = _write(tmp_path, filesystem=FailingReadFileSystem(path, after=10), on_read_error="skip")
    assert _members(data) == {}
    assert outcome.warnings == [f"{path}: read failed: Input/output error; skipped"]
    assert outcome.skipped == [str(path)]


def test_a_large_file_whose_read_fails_half_way_fails_the_write_by_default(tmp_path: Path) -> None:
    path = tmp_path / "big"
    path.write_bytes(os.urandom(BIG))
    with pytest.raises(SourceError) as info:
        _write(tmp_path, filesystem=FailingReadFileSystem(path, after=CHUNK_SIZE))
    assert str(info.value) == f"{path}: read failed after {CHUNK_SIZE} of {BIG} bytes: Input/output error"


def test_a_large_file_whose_read_fails_half_way_is_completed_with_zeros_when_told(tmp_path: Path) -> None:
    """Its header (with its size) is already written: the rest is zeros, and said so."""
    path = tmp_path / "big"
    original = os.urandom(BIG)
    path.write_bytes(original)
    filesystem = FailingReadFileSystem(path, after=CHUNK_SIZE)
    data, outcome = _write(tmp_path, filesystem=filesystem, on_read_error="skip")
    archived = original[:CHUNK_SIZE] + bytes(BIG - CHUNK_SIZE)
    assert _members(data)["big"][1] == archived
    entry = outcome.entries[0]
    assert (entry.size, entry.checksum) == (BIG, _sha256(archived))
    assert entry.warning == (
        f"{path}: read failed after {CHUNK_SIZE} of {BIG} bytes: Input/output error; the rest is archived as zero bytes"
    )
    assert outcome.warnings == [entry.warning] and outcome.skipped == [str(path)]
    assert filesystem.failures == 1


@pytest.mark.timeout(10)
@pytest.mark.parametrize("policy", ["fail", "skip"])
def test_a_file_swapped_for_a_fifo_after_the_walk_is_skipped_without_waiting(tmp_path: Path, policy: str) -> None:
    """Opening a FIFO would wait for a writer that never comes; it is opened without
    blocking and left out, whatever the read-error policy: it is not a file to archive."""
    (tmp_path / "queue").write_bytes(b"q" * 100)
    (tmp_path / "other").write_bytes(b"o")
    entries = scan_source(tmp_path).entries
    os.unlink(tmp_path / "queue")
    os.mkfifo(tmp_path / "queue")
    data, outcome = _write(tmp_path, entries, on_read_error=policy)
    assert list(_members(data)) == ["other"]
    assert outcome.warnings == [f"{tmp_path / 'queue'}: is no longer a regular file; not archived"]
    assert outcome.skipped == [str(tmp_path / "queue")]
    assert stat.S_ISFIFO(os.lstat(tmp_path / "queue").st_mode)


def test_a_source_root_that_cannot_be_opened_is_a_source_error(source: Path) -> None:
    class NoRoot(FileSystem):
        def open_root(self, path: str) -> int:
            raise OSError(errno.EACCES, os.strerror(errno.EACCES), path)

    with pytest.raises(SourceError) as info:
        _write(source, scan_source(source).entries, filesystem=NoRoot())
    assert str(info.value) == f"{source}: source directory cannot be opened: Permission denied"
