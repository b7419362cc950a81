"""Tests for backup.sqlite_snapshot, and for how the archive writer uses it: SQLite
databases archived as consistent snapshots, found by their header, with the files
SQLite keeps beside them left out, and a byte-for-byte copy (with a warning) when no
snapshot can be taken.

The archive is written into memory with ``write_entries``; databases are made and
held open in this process (SQLite keeps its locks between connections of one process
as it does between processes). Writers in other processes, during whole backups, are
in ``tests/integration/test_sqlite_snapshot.py``.
"""

from __future__ import annotations

import hashlib
import io
import os
import sqlite3
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

import backup.sqlite_snapshot
from backup.errors import ManifestError
from backup.fstree import FileSystem
from backup.hashing import CHUNK_SIZE
from backup.manifest import ManifestEntry
from backup.progress import PROGRESS_STEP
from backup.scan import scan_source
from backup.sqlite_snapshot import SQLITE_HEADER, SnapshotError, is_sqlite_header, sqlite_snapshot
from backup.stream.tarwriter import WriteOutcome, write_entries
from support.sources import AfterReadFileSystem


def _make_database(path: Path, rows: int = 200, *, wal: bool = False) -> None:
    """A database of ``rows`` rows of 100 bytes (``rows=12000`` is over 1 MiB)."""
    db = sqlite3.connect(path, isolation_level=None)
    if wal:
        db.execute("PRAGMA journal_mode=WAL")
    db.execute("CREATE TABLE items(id INTEGER PRIMARY KEY, payload BLOB)")
    db.execute("BEGIN")
    db.executemany("INSERT INTO items(payload) VALUES (?)", ((bytes([i % 256]) * 100,) for i in range(rows)))
    db.execute("COMMIT")
    db.close()


def _write(root: Path, filesystem: FileSystem | None = None, **options: object) -> tuple[bytes, WriteOutcome]:
    out = io.BytesIO()
    extra: dict[str, object] = {"filesystem": filesystem} if filesystem is not None else {}
    outcome = write_entries(
        out,
        scan_source(root).entries,
        root=str(root),
        algorithm="sha256",
        **extra,  # type: ignore[arg-type]
        **options,  # type: ignore[arg-type]
    )
    return out.getvalue(), outcome


def _files(data: bytes) -> dict[str, bytes]:
    """The archive's regular files, by name (as Python's tarfile reads names)."""
    found = {}
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        for member in tar.getmembers():
            if member.isfile():
                handle = tar.extractfile(member)
                assert handle is not None
                found[member.name] = handle.read()
    return found


def _entries(outcome: WriteOutcome) -> dict[str, ManifestEntry]:
    return {entry.path: entry for entry in outcome.entries}


def _rows(data: bytes, tmp_path: Path) -> int:
    """Open archived database bytes on their own (no -wal beside them); return the row
    count, after checking the database's integrity."""
    copy = tmp_path / "restored-copy.db"
    copy.write_bytes(data)
    db = sqlite3.connect(copy)
    try:
        assert db.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        count: int = db.execute("SELECT count(*) FROM items").fetchone()[0]
        return count
    finally:
        db.close()
        for name in os.listdir(tmp_path):
            if name.startswith("restored-copy.db"):
                os.unlink(tmp_path / name)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def source(tmp_path: Path) -> Path:
    root = tmp_path / "source"
    root.mkdir()
    return root


@pytest.fixture
def live_wal(source: Path) -> Iterator[tuple[Path, sqlite3.Connection]]:
    """A WAL database whose last 50 rows are only in its -wal, held open by a writer."""
    path = source / "live.db"
    _make_database(path, wal=True)
    writer = sqlite3.connect(path, isolation_level=None)
    writer.execute("PRAGMA wal_autocheckpoint=0")
    writer.executemany("INSERT INTO items(payload) VALUES (?)", ((b"w" * 100,) for _ in range(50)))
    assert (source / "live.db-wal").stat().st_size > 0
    try:
        yield path, writer
    finally:
        writer.close()


# --- detection ---------------------------------------------------------------------------


def test_the_header_decides_not_the_name(source: Path, tmp_path: Path) -> None:
    """A database named without an extension is snapshotted; a file named ``x.db``
    that is not one is archived as it is; so is a file shorter than a page that
    starts with the header."""
    _make_database(source / "state")
    not_a_database = b"just text, whatever the name says\n" * 40
    (source / "x.db").write_bytes(not_a_database)
    (source / "short").write_bytes(SQLITE_HEADER + b"\x00" * 100)
    data, outcome = _write(source)
    entries, files = _entries(outcome), _files(data)
    assert entries["state"].snapshot == "sqlite"
    assert _rows(files["state"], tmp_path) == 200
    assert (entries["x.db"].snapshot, files["x.db"]) == (None, not_a_database)
    assert (entries["short"].snapshot, files["short"]) == (None, SQLITE_HEADER + b"\x00" * 100)
    assert outcome.warnings == []


def test_is_sqlite_header_wants_the_magic_and_a_page() -> None:
    assert is_sqlite_header(SQLITE_HEADER + b"rest", 4096)
    assert not is_sqlite_header(SQLITE_HEADER, 511)
    assert not is_sqlite_header(b"SQLite format 2\x00", 4096)
    assert not is_sqlite_header(memoryview(SQLITE_HEADER[:10]), 4096)


# --- the snapshot --------------------------------------------------------------------------


def test_a_live_wal_database_is_archived_whole_without_its_wal_and_shm(
    live_wal: tuple[Path, sqlite3.Connection], source: Path, tmp_path: Path
) -> None:
    """The snapshot holds the rows still only in the -wal; the -wal and -shm are left
    out, and the database's entry names them."""
    data, outcome = _write(source)
    files, entries = _files(data), _entries(outcome)
    assert sorted(files) == ["live.db"]
    assert _rows(files["live.db"], tmp_path) == 250
    entry = entries["live.db"]
    assert (entry.snapshot, entry.snapshot_omitted) == ("sqlite", ["-shm", "-wal"])
    assert (entry.size, entry.checksum) == (len(files["live.db"]), hashlib.sha256(files["live.db"]).hexdigest())
    assert sorted(entries) == ["live.db"]
    assert outcome.warnings == []


def test_the_snapshot_keeps_the_files_name_mode_owner_mtime_and_xattrs(source: Path) -> None:
    path = source / "kept.db"
    _make_database(path)
    os.chmod(path, 0o640)
    os.chown(path, 1234, 5678)
    os.setxattr(path, "user.origin", b"app")
    os.utime(path, ns=(1_600_000_000_250_000_000, 1_600_000_000_250_000_000))
    data, outcome = _write(source)
    entry = _entries(outcome)["kept.db"]
    assert entry.snapshot == "sqlite"
    assert (entry.mode, entry.uid, entry.gid, entry.mtime_ns) == (0o640, 1234, 5678, 1_600_000_000_250_000_000)
    assert entry.xattrs == {"user.origin": b"app"}
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        member = tar.getmember("kept.db")
    assert (member.mode, member.uid, member.gid, member.mtime) == (0o640, 1234, 5678, 1_600_000_000.25)
    assert member.pax_headers["SCHILY.xattr.user.origin"] == "app"


def test_a_database_larger_than_a_chunk_is_snapshotted(source: Path, tmp_path: Path) -> None:
    """Past one chunk a file is streamed, not read whole: the header is read alone."""
    _make_database(source / "big.sqlite", rows=12_000)
    assert (source / "big.sqlite").stat().st_size > CHUNK_SIZE
    data, outcome = _write(source)
    assert _entries(outcome)["big.sqlite"].snapshot == "sqlite"
    assert _rows(_files(data)["big.sqlite"], tmp_path) == 12_000


def test_a_database_that_grows_past_a_chunk_while_read_is_still_snapshotted(source: Path, tmp_path: Path) -> None:
    """Read whole at first, then streamed once it outgrew the buffer: its header is
    looked at again before the stream."""
    path = source / "growing.db"
    _make_database(path)

    def grow() -> None:
        db = sqlite3.connect(path, isolation_level=None)
        db.execute("BEGIN")
        db.executemany("INSERT INTO items(payload) VALUES (?)", ((b"g" * 100,) for _ in range(12_000)))
        db.execute("COMMIT")
        db.close()

    filesystem = AfterReadFileSystem(path, grow)
    data, outcome = _write(source, filesystem)
    assert filesystem.done == 1 and path.stat().st_size > CHUNK_SIZE
    assert _entries(outcome)["growing.db"].snapshot == "sqlite"
    assert _rows(_files(data)["growing.db"], tmp_path) == 12_200
    assert outcome.warnings == []


@pytest.mark.parametrize(
    "name",
    ["what?#%20if.db", "caf\udce9.db", "sub dir/na%2Fme"],
    ids=["uri-characters", "not-utf-8", "in-a-subdirectory"],
)
def test_names_reach_sqlite_exactly(source: Path, tmp_path: Path, name: str) -> None:
    """'?', '#' and '%' would end or change a URI; bytes that are not UTF-8 have no
    text: each is escaped, and SQLite opens the very file."""
    path = source / name
    path.parent.mkdir(exist_ok=True)
    _make_database(path, wal=True)
    data, outcome = _write(source)
    assert outcome.warnings == []
    assert _entries(outcome)[name].snapshot == "sqlite"
    assert _rows(_files(data)[name], tmp_path) == 200


def test_the_database_file_itself_is_never_written(source: Path) -> None:
    """Not even a WAL database whose writer died with frames not yet checkpointed:
    the last connection to close (ours) would checkpoint them into it."""
    path = source / "left.db"
    _make_database(path, wal=True)
    crash = (
        "import os, sqlite3, sys\n"
        "db = sqlite3.connect(sys.argv[1], isolation_level=None)\n"
        "db.execute('PRAGMA wal_autocheckpoint=0')\n"
        "db.executemany('INSERT INTO items(payload) VALUES (?)', ((b'x' * 100,) for _ in range(30)))\n"
        "os._exit(0)\n"
    )
    subprocess.run([sys.executable, "-c", crash, str(path)], check=True, timeout=30)
    before = (_sha256(path), path.stat().st_mtime_ns, _sha256(source / "left.db-wal"))
    data, outcome = _write(source)
    assert (_sha256(path), path.stat().st_mtime_ns, _sha256(source / "left.db-wal")) == before
    assert _entries(outcome)["left.db"].snapshot == "sqlite"
    assert _rows(_files(data)["left.db"], source.parent) == 230


def test_the_private_copy_is_removed_after_use_and_after_failure(source: Path, tmp_path: Path) -> None:
    temp = tmp_path / "temp"
    temp.mkdir()
    _make_database(source / "ok.db")
    (source / "bad.db").write_bytes(SQLITE_HEADER + b"\xff" * 4080)
    dir_fd = os.open(source, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fd = os.open("ok.db", os.O_RDONLY, dir_fd=dir_fd)
        with sqlite_snapshot(dir_fd, "ok.db", fd, temp_dir=str(temp)) as copy:
            assert os.fstat(copy).st_size == (source / "ok.db").stat().st_size
            (private,) = os.listdir(temp)
            assert os.stat(temp / private).st_mode & 0o777 == 0o700
        os.close(fd)
        assert os.listdir(temp) == []
        fd = os.open("bad.db", os.O_RDONLY, dir_fd=dir_fd)
        with pytest.raises(SnapshotError, match="not a database"):
            with sqlite_snapshot(dir_fd, "bad.db", fd, temp_dir=str(temp)):
                pass
        os.close(fd)
        assert os.listdir(temp) == []
    finally:
        os.close(dir_fd)


# --- falling back to the bytes ----------------------------------------------------------------


def test_a_file_with_the_header_that_sqlite_refuses_is_copied_as_is_with_a_warning(source: Path) -> None:
    damaged = SQLITE_HEADER + b"\xff" * 4080  # an impossible page size, and the rest
    (source / "damaged.db").write_bytes(damaged)
    (source / "damaged.db-wal").write_bytes(b"kept")
    data, outcome = _write(source)
    assert _files(data) == {"damaged.db": damaged, "damaged.db-wal": b"kept"}
    assert _entries(outcome)["damaged.db"].snapshot is None
    (warning,) = outcome.warnings
    assert warning.startswith(f"{source / 'damaged.db'}: SQLite database archived byte for byte, not as a snapshot: ")
    assert "not a database" in warning


def test_a_database_left_with_a_hot_journal_is_copied_with_its_journal(source: Path, tmp_path: Path) -> None:
    """A writer that died mid-transaction left a journal that only a writer may roll
    back: the database and its journal are archived as they are, which restores."""
    path = source / "crashed.db"
    _make_database(path)
    journal = source / "crashed.db-journal"
    writer = sqlite3.connect(path, isolation_level=None)
    writer.execute("PRAGMA cache_size=1")  # spill the change into the file before commit
    writer.execute("BEGIN")
    writer.execute("UPDATE items SET payload = randomblob(3000)")
    assert journal.stat().st_size > 0
    saved = journal.read_bytes(), path.read_bytes()
    writer.execute("ROLLBACK")
    writer.close()
    journal.write_bytes(saved[0])  # as the crash left them
    path.write_bytes(saved[1])
    data, outcome = _write(source)
    files = _files(data)
    assert sorted(files) == ["crashed.db", "crashed.db-journal"]
    assert "crashed.db: SQLite database archived byte for byte" in outcome.warnings[0]
    restored = tmp_path / "restored"
    restored.mkdir()
    for name, content in files.items():
        (restored / name).write_bytes(content)
    db = sqlite3.connect(restored / "crashed.db")
    assert db.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    assert db.execute("SELECT max(length(payload)) FROM items").fetchone() == (100,)
    db.close()


def test_a_writer_holding_the_lock_is_waited_for_a_bounded_time(source: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(backup.sqlite_snapshot, "BUSY_TIMEOUT", 0.2)
    _make_database(source / "locked.db")
    holder = sqlite3.connect(source / "locked.db", isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        data, outcome = _write(source)
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert _entries(outcome)["locked.db"].snapshot is None
    assert _files(data)["locked.db"] == (source / "locked.db").read_bytes()
    assert "locked.db: SQLite database archived byte for byte" in outcome.warnings[0]
    assert "locked" in outcome.warnings[0].rsplit(": ", 1)[1]


def test_no_place_for_the_copy_falls_back_with_a_warning(
    live_wal: tuple[Path, sqlite3.Connection], source: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The temporary directory is gone: the database and its -wal and -shm are
    archived as they are, and the warning names the database and the reason."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "gone"))
    data, outcome = _write(source)
    assert sorted(_files(data)) == ["live.db", "live.db-shm", "live.db-wal"]
    assert outcome.warnings == [
        f"{source / 'live.db'}: SQLite database archived byte for byte, not as a snapshot: "
        "no private directory for the copy: No such file or directory"
    ]


class _SwappingFileSystem(FileSystem):
    """Right after the writer opens ``victim``, another database is renamed over it."""

    def __init__(self, victim: Path, replacement: Path) -> None:
        self.victim = victim
        self.replacement = replacement

    def open_file(self, name: str, dir_fd: int) -> int:
        fd = super().open_file(name, dir_fd)
        if name == self.victim.name:
            os.replace(self.replacement, self.victim)
        return fd


def test_a_database_replaced_once_opened_is_not_snapshotted_from_the_newcomer(source: Path, tmp_path: Path) -> None:
    """SQLite opens by name: when the name has meanwhile become another file, its copy
    is discarded, and the file the writer opened is archived as it is."""
    _make_database(source / "app.db", rows=10)
    original = (source / "app.db").read_bytes()
    _make_database(tmp_path / "other.db", rows=99)
    data, outcome = _write(source, _SwappingFileSystem(source / "app.db", tmp_path / "other.db"))
    assert _files(data)["app.db"] == original
    assert "app.db: SQLite database archived byte for byte" in outcome.warnings[0]
    assert "another file" in outcome.warnings[0]


# --- switched off ----------------------------------------------------------------------------------


def test_with_snapshots_off_databases_are_copied_byte_for_byte(
    live_wal: tuple[Path, sqlite3.Connection], source: Path
) -> None:
    data, outcome = _write(source, sqlite_snapshot=False)
    files = _files(data)
    assert sorted(files) == ["live.db", "live.db-shm", "live.db-wal"]
    assert files["live.db-wal"] == (source / "live.db-wal").read_bytes()
    assert all(entry.snapshot is None for entry in outcome.entries)


# --- progress inside a large file ------------------------------------------------------------


def test_progress_moves_inside_a_large_file(source: Path) -> None:
    """Besides once per entry, every PROGRESS_STEP bytes of a file's data."""
    size = 3 * PROGRESS_STEP + 5
    with open(source / "large.bin", "wb") as handle:
        handle.write(b"\x01" * size)
    (source / "small.txt").write_bytes(b"small\n")
    calls: list[tuple[int, int]] = []
    _write(source, progress=lambda entries, done: calls.append((entries, done)))
    assert calls == [
        (0, PROGRESS_STEP),
        (0, 2 * PROGRESS_STEP),
        (0, 3 * PROGRESS_STEP),
        (1, size),
        (2, size + 6),
    ]


# --- the manifest's record of it -------------------------------------------------------------------


def test_the_snapshot_fields_round_trip_and_are_left_out_when_unset() -> None:
    entry = ManifestEntry("a.db", 4096, "0" * 64, "2024-01-01T00:00:00+00:00", snapshot="sqlite")
    entry.snapshot_omitted = ["-wal"]
    data = entry.to_dict()
    assert (data["snapshot"], data["snapshot_omitted"]) == ("sqlite", ["-wal"])
    assert ManifestEntry.from_dict(data) == entry
    plain = ManifestEntry("b", 1, "0" * 64, "2024-01-01T00:00:00+00:00").to_dict()
    assert "snapshot" not in plain and "snapshot_omitted" not in plain


@pytest.mark.parametrize("field, value", [("snapshot", 1), ("snapshot_omitted", "-wal"), ("snapshot_omitted", [1])])
def test_malformed_snapshot_fields_are_refused(field: str, value: object) -> None:
    data = ManifestEntry("a.db", 4096, "0" * 64, "2024-01-01T00:00:00+00:00").to_dict()
    data[field] = value
    with pytest.raises(ManifestError, match=field):
        ManifestEntry.from_dict(data)
