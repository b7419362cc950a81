"""Checking a real backup directory: real archives of every compression damaged on disk,
other programs' files beside ours, a writer in another process, and a rotation of
subsets over weeks of backups coming and going. The check must find every damage it
can, report nothing that is not ours, and leave the directory exactly as it was."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from backup.check import CheckReport, check_backups, subset_part
from backup.listing import clean_leftovers
from backup.storage.local import partial_name

from .conftest import COMPRESSIONS, GNU_TAR, backup, fixed_now, make_corpus, popen_python

DAY = datetime(2026, 5, 1, 3, 0, tzinfo=UTC)


def _made(source: Path, backups: Path, day: int, **config: Any) -> str:
    """Make a backup dated ``day`` days after DAY; return its id."""
    result = backup(source, backups, now=fixed_now(DAY + timedelta(days=day)), **config)
    assert result.backup_id is not None
    return result.backup_id


def _inodes(directory: Path) -> dict[str, tuple[int, int, int, int]]:
    """Every entry of ``directory`` (hidden ones too): inode, mode, size and mtime."""
    out = {}
    for name in os.listdir(directory):
        info = os.lstat(directory / name)
        out[name] = (info.st_ino, info.st_mode, info.st_size, info.st_mtime_ns)
    return out


def _contents(directory: Path) -> dict[str, bytes]:
    return {name: (directory / name).read_bytes() for name in os.listdir(directory) if (directory / name).is_file()}


def _statuses(report: CheckReport) -> dict[str, str]:
    return {row.backup_id: row.status for row in report.rows}


def _archive(directory: Path, backup_id: str) -> Path:
    (path,) = [directory / name for name in os.listdir(directory) if name.startswith(backup_id + ".tar")]
    return path


def _flip(path: Path) -> None:
    """Flip every bit of the byte in the middle of a file, in place."""
    with open(path, "r+b") as handle:
        handle.seek(path.stat().st_size // 2)
        byte = handle.read(1)
        handle.seek(-1, os.SEEK_CUR)
        handle.write(bytes([byte[0] ^ 0xFF]))


@pytest.mark.parametrize("compression", COMPRESSIONS)
def test_damage_on_disk_in_every_compression(tmp_path: Path, compression: str) -> None:
    source = tmp_path / "source"
    make_corpus(source)
    backups = tmp_path / "backups"
    ids = [_made(source, backups, n, compression=compression) for n in range(4)]
    good, flipped, cut, lost = ids
    _flip(_archive(backups, flipped))
    cut_archive = _archive(backups, cut)
    os.truncate(cut_archive, cut_archive.stat().st_size - 1)
    _archive(backups, lost).unlink()
    before = _inodes(backups)

    structural = check_backups(backups)
    assert _statuses(structural) == {good: "ok", flipped: "ok", cut: "damaged", lost: "missing archive"}
    assert "manifest says" in {row.backup_id: row for row in structural.rows}[cut].detail

    full = check_backups(backups, read_data=True)
    assert _statuses(full) == {good: "ok", flipped: "damaged", cut: "damaged", lost: "missing archive"}
    assert [row.data_checked for row in full.rows] == [True, True, False, False]
    assert full.summary() == f"{backups}: 4 backups checked: 1 OK, 3 damaged; data read for 2 of 4"
    assert _inodes(backups) == before


def test_a_directory_shared_with_other_programs(tmp_path: Path) -> None:
    source = tmp_path / "source"
    make_corpus(source)
    backups = tmp_path / "backups"
    ours = _made(source, backups, 0)
    bare = _made(source, backups, 1, include_manifest=False)
    first = _archive(backups, ours)

    dump = tmp_path / "dump"
    dump.mkdir()
    (dump / "db.sql").write_text("CREATE TABLE t (id integer);\n")
    # Another tool's archives named like ours, one with our prefix; its JSON named like
    # our manifests; a copy of our archive under another id; hidden partial files (one
    # named as our writers name theirs, left by no writer of ours); a FIFO, a directory
    # and a symlink under backups' names.
    for name in ("db_20240101_000000.tar.gz", "daily_20240102_000000.tar.gz"):
        subprocess.run([GNU_TAR, "-czf", str(backups / name), "-C", str(dump), "."], check=True)
    (backups / "daily_20240102_000000.manifest.json").write_text(json.dumps({"backup_id": "x", "rows": 1}))
    (backups / "notes.manifest.json").write_text("{not json")
    (backups / "daily_20240103_000000.tar.gz").write_bytes(first.read_bytes())
    (backups / ".download.partial").write_bytes(b"half an ISO")
    (backups / partial_name("daily_20240104_000000")).write_bytes(b"someone's")
    os.mkfifo(backups / "daily_20240105_000000.manifest.json")
    (backups / "daily_20240106_000000.tar.gz").mkdir()
    (backups / "daily_20240107_000000.tar.gz").symlink_to(first.name)
    (backups / "README").write_text("ask ops before deleting anything\n")
    before, contents = _inodes(backups), _contents(backups)

    for read_data in (False, True):
        report = check_backups(backups, read_data=read_data)
        assert _statuses(report) == {ours: "ok", bare: "ok, no checksums" if read_data else "no manifest"}
        assert report.ok
    assert _inodes(backups) == before and _contents(backups) == contents


_WRITER = """
import sys
from pathlib import Path
from backup.storage import LocalStorage

storage = LocalStorage(Path({directory!r}))
upload = storage.begin({archive!r}, claim={backup_id!r})
upload.write(Path({archive_bytes!r}).read_bytes())
manifest = storage.begin({manifest!r})
manifest.write(Path({manifest_bytes!r}).read_bytes())
manifest.commit()
print("ready", flush=True)
if sys.stdin.readline().strip() == "commit":
    upload.commit()
    print("committed", flush=True)
sys.stdin.readline()
"""


def test_a_writer_in_another_process_is_not_damage(tmp_path: Path) -> None:
    """A run's manifest is committed before its archive: in between, the check sees the
    manifest alone, and the writer's claim says it is not lost. Killed there, the run
    leaves a partial that the next run cleans up; the check never does."""
    source = tmp_path / "source"
    make_corpus(source)
    backups = tmp_path / "backups"
    done = _made(source, backups, 0)
    # The backup the writer will "write": made elsewhere, its bytes handed over.
    staged = backup(source, tmp_path / "staging", now=fixed_now(DAY + timedelta(days=1)))
    assert staged.backup_path is not None and staged.manifest_path is not None
    writing = staged.backup_id
    assert writing is not None
    code = _WRITER.format(
        directory=str(backups),
        archive=staged.backup_path.name,
        backup_id=writing,
        archive_bytes=str(staged.backup_path),
        manifest=staged.manifest_path.name,
        manifest_bytes=str(staged.manifest_path),
    )

    writer = popen_python(code, stdin=subprocess.PIPE)
    try:
        assert writer.stdout is not None and writer.stdin is not None
        assert writer.stdout.readline().strip() == "ready"
        report = check_backups(backups, read_data=True)
        assert _statuses(report) == {done: "ok", writing: "being written"} and report.ok
        writer.stdin.write("commit\n")
        writer.stdin.flush()
        assert writer.stdout.readline().strip() == "committed"
        report = check_backups(backups, read_data=True)
        assert _statuses(report) == {done: "ok", writing: "ok"}
        assert all(row.data_checked for row in report.rows)
    finally:
        writer.kill()
        writer.wait(timeout=30)

    # Killed between its two commits: the check reports no damage, and touches nothing.
    killed = backup(source, tmp_path / "staging", now=fixed_now(DAY + timedelta(days=2)))
    assert killed.backup_path is not None and killed.manifest_path is not None and killed.backup_id is not None
    code = _WRITER.format(
        directory=str(backups),
        archive=killed.backup_path.name,
        backup_id=killed.backup_id,
        archive_bytes=str(killed.backup_path),
        manifest=killed.manifest_path.name,
        manifest_bytes=str(killed.manifest_path),
    )
    writer = popen_python(code, stdin=subprocess.PIPE)
    assert writer.stdout is not None
    assert writer.stdout.readline().strip() == "ready"
    writer.kill()
    writer.wait(timeout=30)
    before = _inodes(backups)
    report = check_backups(backups)
    assert _statuses(report)[killed.backup_id] == "being written" and report.ok
    assert _inodes(backups) == before
    # The next run removes what the dead one left, and with it the row.
    clean_leftovers(backups)
    assert _statuses(check_backups(backups)) == {done: "ok", writing: "ok"}


def test_a_rotation_of_subsets_reads_every_backup_each_cycle(tmp_path: Path) -> None:
    """Day after day a backup is made, the oldest beyond ten is pruned, and part
    ``day % 7 + 1`` of 7 is read: every backup that lives through seven days in a row
    has its data read on one of them."""
    source = tmp_path / "source"
    source.mkdir()
    (source / "data.txt").write_text("data\n")
    backups = tmp_path / "backups"
    alive: list[str] = []
    born: dict[str, int] = {}
    read_on: dict[str, list[int]] = {}
    days = 28
    for day in range(days):
        made = _made(source, backups, day, prefix="daily")
        alive.append(made)
        born[made] = day
        if len(alive) > 10:
            gone = alive.pop(0)
            for path in backups.glob(gone + ".*"):
                path.unlink()
        subset = (day % 7 + 1, 7)
        report = check_backups(backups, subset=subset)
        assert _statuses(report) == dict.fromkeys(alive, "ok")
        for row in report.rows:
            assert row.data_checked == (subset_part(row.backup_id, 7) == subset[0])
            if row.data_checked:
                read_on.setdefault(row.backup_id, []).append(day)
    for days_read in read_on.values():
        assert all(later - earlier == 7 for earlier, later in itertools.pairwise(days_read))
    for backup_id, first_day in born.items():
        if first_day + 7 <= days:  # checked on seven days in a row
            assert read_on[backup_id][0] - first_day < 7, backup_id
