"""SQLite databases written throughout a backup restore consistent: real writer
processes commit transactions in a loop while several backups run, and every restored
database (by our restore and by GNU tar) passes ``PRAGMA integrity_check`` and holds
one committed state.

Each transaction adds a row, now and then deletes the oldest, and keeps a one-row
``totals`` table equal to the row count and the payload bytes: a copy that mixes two
moments breaks that sum (or the database's structure). So that the copy certainly
overlaps commits, the source file system holds each database open, once the writer
has opened it, until its writer has committed a few more transactions
(``_WaitForCommits``, passed as ``create_backup(config, filesystem=...)``).
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from backup import BackupConfig, BackupResult, create_backup, restore_backup, verify_backup
from backup.cli import main
from backup.fstree import FileSystem
from backup.manifest import load_manifest

from .conftest import GNU_TAR, listing

# Databases (relative path -> journal mode): WAL and a rollback journal, past one
# chunk (streamed) and under it (read whole), one without an extension.
DATABASES = {"app/events.db": "wal", "app/ledger.sqlite": "delete", "state/current": "wal"}
ROWS = {"app/events.db": 4000, "app/ledger.sqlite": 4000, "state/current": 100}
COMMITS_DURING_OPEN = 5
TIMEOUT = 20.0

WRITER = """
import os, sqlite3, sys, time
path, stop = sys.argv[1], sys.argv[2]
db = sqlite3.connect(path, timeout=10, isolation_level=None)
db.execute("PRAGMA synchronous=OFF")
deadline = time.monotonic() + 60
step = 0
while not os.path.exists(stop) and time.monotonic() < deadline:
    step += 1
    size = 200 + step * 7919 % 3000
    db.execute("BEGIN IMMEDIATE")
    db.execute("INSERT INTO items(payload) VALUES (randomblob(?))", (size,))
    db.execute("UPDATE totals SET n = n + 1, bytes = bytes + ?, commits = commits + 1", (size,))
    if step % 3 == 0:
        oldest, length = db.execute("SELECT id, length(payload) FROM items ORDER BY id LIMIT 1").fetchone()
        db.execute("DELETE FROM items WHERE id = ?", (oldest,))
        db.execute("UPDATE totals SET n = n - 1, bytes = bytes - ?", (length,))
    db.execute("COMMIT")
    time.sleep(0.001)
"""


def _create(path: Path, mode: str, rows: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    db = sqlite3.connect(path, isolation_level=None)
    db.execute(f"PRAGMA journal_mode={mode}")
    db.execute("CREATE TABLE items(id INTEGER PRIMARY KEY, payload BLOB)")
    db.execute("CREATE TABLE totals(n INTEGER, bytes INTEGER, commits INTEGER)")
    db.execute("BEGIN")
    db.executemany("INSERT INTO items(payload) VALUES (randomblob(?))", ((500,) for _ in range(rows)))
    db.execute("INSERT INTO totals VALUES (?, ?, 0)", (rows, rows * 500))
    db.execute("COMMIT")
    db.close()


def _commits(path: Path) -> int:
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)
    try:
        commits: int = db.execute("SELECT commits FROM totals").fetchone()[0]
        return commits
    finally:
        db.close()


def _wait_for_commits(path: Path, count: int) -> None:
    start = _commits(path)
    deadline = time.monotonic() + TIMEOUT
    while _commits(path) < start + count:
        assert time.monotonic() < deadline, f"{path}: its writer stopped committing"
        time.sleep(0.005)


def _check_consistent(path: Path) -> None:
    """One committed state: a sound structure, and totals that match the rows."""
    db = sqlite3.connect(path)
    try:
        assert db.execute("PRAGMA integrity_check").fetchall() == [("ok",)], path
        counted = db.execute("SELECT count(*), coalesce(sum(length(payload)), 0) FROM items").fetchone()
        assert db.execute("SELECT n, bytes FROM totals").fetchone() == counted, path
    finally:
        db.close()


class _WaitForCommits(FileSystem):
    """Once a database is opened to be archived, wait until its writer has committed
    a few more transactions: the copy then overlaps live writes."""

    def __init__(self, databases: list[Path]) -> None:
        self.databases = {os.path.realpath(path) for path in databases}
        self.waited: list[str] = []

    def open_file(self, name: str, dir_fd: int) -> int:
        fd = super().open_file(name, dir_fd)
        path = os.path.join(os.readlink(f"/proc/self/fd/{dir_fd}"), name)
        if path in self.databases:
            self.waited.append(path)
            _wait_for_commits(Path(path), COMMITS_DURING_OPEN)
        return fd


@pytest.fixture
def live_source(tmp_path: Path) -> Iterator[Path]:
    """A source of three databases, each with a writer process committing throughout."""
    source = tmp_path / "source"
    stop = tmp_path / "stop-writers"
    for name, mode in DATABASES.items():
        _create(source / name, mode, ROWS[name])
    (source / "app" / "notes.txt").write_text("not a database\n")
    writers = [
        subprocess.Popen([sys.executable, "-c", WRITER, str(source / name), str(stop)], stderr=subprocess.PIPE)
        for name in DATABASES
    ]
    try:
        for name in DATABASES:
            _wait_for_commits(source / name, 1)
        yield source
    finally:
        stop.touch()
        for writer in writers:
            try:
                _, errors = writer.communicate(timeout=TIMEOUT)
            except subprocess.TimeoutExpired:
                writer.kill()
                writer.wait()
                raise
            assert writer.returncode == 0, errors.decode(errors="replace")


def _backup(source: Path, backups: Path, **config: object) -> BackupResult:
    hook = _WaitForCommits([source / name for name in DATABASES])
    result = create_backup(BackupConfig(source, backups, **config), filesystem=hook)  # type: ignore[arg-type]
    assert result.success, result.error
    assert len(hook.waited) == len(DATABASES)
    return result


def test_databases_written_throughout_backups_restore_consistent(live_source: Path, tmp_path: Path) -> None:
    """Three backups while three writers commit: each restores every database whole,
    consistent, without a -wal, -shm or -journal, and the manifest says how."""
    results = [_backup(live_source, tmp_path / "backups") for _ in range(3)]
    for number, result in enumerate(results):
        assert result.warnings == []
        assert result.backup_path is not None and result.manifest_path is not None
        assert verify_backup(result.backup_path).ok
        entries = load_manifest(result.manifest_path).entry_map()
        for name in DATABASES:
            assert entries[name].snapshot == "sqlite", name
        # The WAL databases' live -wal and -shm are left out, and said to be.
        assert set(entries["app/events.db"].snapshot_omitted or ()) >= {"-wal", "-shm"}
        restored = tmp_path / f"restored-{number}"
        assert restore_backup(result.backup_path, restored).success
        names = listing(restored)
        assert [name for name in names if name.endswith(("-wal", "-shm", "-journal"))] == []
        for name in DATABASES:
            _check_consistent(restored / name)
        assert (restored / "app" / "notes.txt").read_text() == "not a database\n"


def test_gnu_tar_extracts_consistent_databases(live_source: Path, tmp_path: Path) -> None:
    result = _backup(live_source, tmp_path / "backups")
    out = tmp_path / "gnu-out"
    out.mkdir()
    subprocess.run([GNU_TAR, "-xf", str(result.backup_path), "-C", str(out)], check=True, capture_output=True)
    for name in DATABASES:
        _check_consistent(out / name)
    assert [name for name in listing(out) if name.endswith(("-wal", "-shm", "-journal"))] == []


def test_with_snapshots_off_the_files_are_copied_as_they_are(live_source: Path, tmp_path: Path) -> None:
    """As before snapshots existed: byte copies, the -wal and -shm archived too. (The
    rollback journal comes and goes with each transaction: without a snapshot, one
    gone between the walk and its read is a file that vanished, so it is skipped.)"""
    result = _backup(live_source, tmp_path / "backups", sqlite_snapshot=False, on_read_error="skip")
    assert result.manifest is not None
    entries = result.manifest.entry_map()
    assert {"app/events.db-wal", "app/events.db-shm", "state/current-wal"} <= set(entries)
    assert all(entry.snapshot is None for entry in entries.values())


def test_the_command_line_turns_snapshots_off(tmp_path: Path) -> None:
    source = tmp_path / "source"
    _create(source / "app.db", "wal", 10)
    writer = sqlite3.connect(source / "app.db", isolation_level=None)  # keeps the -wal there
    try:
        writer.execute("UPDATE totals SET commits = 1")
        for flags, backups in (([], "on"), (["--no-sqlite-snapshot"], "off")):
            assert main(["create", str(source), str(tmp_path / backups), *flags]) == 0
        (on,) = (tmp_path / "on").glob("*.manifest.json")
        (off,) = (tmp_path / "off").glob("*.manifest.json")
        snapshotted = load_manifest(on).entry_map()
        copied = load_manifest(off).entry_map()
    finally:
        writer.close()
    assert (snapshotted["app.db"].snapshot, sorted(snapshotted)) == ("sqlite", ["app.db"])
    assert (copied["app.db"].snapshot, sorted(copied)) == (None, ["app.db", "app.db-shm", "app.db-wal"])


class _JournalGoneFileSystem(FileSystem):
    """A source on which ``name`` is listed but gone by the time it is examined, as a
    journal is between two of its writer's transactions."""

    def __init__(self, name: str) -> None:
        self.name = name

    def lstat(self, name: str, dir_fd: int) -> os.stat_result:
        if name == self.name:
            raise FileNotFoundError(2, "No such file or directory", name)
        return super().lstat(name, dir_fd)


@pytest.mark.parametrize("snapshot", [True, False], ids=["snapshot", "byte-copy"])
def test_a_journal_gone_during_the_walk_is_no_warning_beside_a_snapshot(tmp_path: Path, snapshot: bool) -> None:
    """It came and went with transactions the snapshot holds: a warning (and exit 3)
    for it would be noise on every backup of a busy database. Copied byte for byte,
    the database may miss what it held, so then it is one."""
    source = tmp_path / "source"
    source.mkdir()
    db = sqlite3.connect(source / "app.db")
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("CREATE TABLE t (x)")
    db.execute("INSERT INTO t VALUES (1)")
    db.commit()
    try:
        assert (source / "app.db-wal").exists()
        result = create_backup(
            BackupConfig(source, tmp_path / "backups", sqlite_snapshot=snapshot),
            filesystem=_JournalGoneFileSystem("app.db-wal"),
        )
    finally:
        db.close()
    assert result.success, result.error
    gone = f"{source / 'app.db-wal'}: disappeared during the walk; not archived"
    assert result.warnings == ([] if snapshot else [gone])
