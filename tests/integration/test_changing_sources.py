"""Sources that change under the backup: files rewritten in place with their mtime put
back (``rsync --inplace -t``, ``cp -p`` over a file), a file swapped for a FIFO, and
special files (a socket cannot be archived; FIFOs and devices are). None may give a
silent torn copy, a hang, or a silent omission.

A change at an exact moment (right after a file's first read) is made by a source file
system that runs it from its read (``support.sources.AfterReadFileSystem``, passed as
``create_backup(config, filesystem=...)``), not by patching the writer.
"""

from __future__ import annotations

import json
import os
import socket
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from backup import BackupConfig, create_backup, execute_plan, plan_backup, restore_backup, verify_backup
from backup.cli import main
from support.sources import AfterReadFileSystem

from .conftest import decompressed_tar_bytes

CHUNK = 1 << 20


def _archived(archive: Path, name: str) -> bytes:
    import io
    import tarfile

    with tarfile.open(fileobj=io.BytesIO(decompressed_tar_bytes(archive))) as tf:
        handle = tf.extractfile(name)
        assert handle is not None
        return handle.read()


def _rewrite_in_place_keeping_mtime(path: Path, data: bytes) -> None:
    """What ``rsync --inplace -t`` does: new bytes over the old ones, then the old mtime."""
    info = os.stat(path)
    with open(path, "r+b") as handle:
        handle.write(data)
    os.utime(path, ns=(info.st_atime_ns, info.st_mtime_ns))


@pytest.mark.parametrize("size", [4096, 3 * CHUNK + 7], ids=["small", "large"])
def test_a_file_rewritten_in_place_once_is_read_again_and_archived_whole(tmp_path: Path, size: int) -> None:
    """Its size and mtime do not change; its ctime does. The backup notices, reads it
    again, and archives one consistent version with no warning: a small file is simply
    read again before anything is written; a large one, already streamed, is re-read
    and holds what was archived only if the rewrite finished before the archive's read
    got there: here it did not, so it is flagged."""
    source = tmp_path / "source"
    source.mkdir()
    old, new = b"A" * size, b"B" * size
    (source / "db.bin").write_bytes(old)
    filesystem = AfterReadFileSystem(source / "db.bin", lambda: _rewrite_in_place_keeping_mtime(source / "db.bin", new))
    result = create_backup(BackupConfig(source, tmp_path / "backups"), filesystem=filesystem)
    assert filesystem.done == 1
    assert result.success, result.error
    archived = _archived(result.backup_path, "db.bin")
    entry = result.manifest.entry_map()["db.bin"]
    if size < CHUNK:
        assert archived == new
        assert result.warnings == [] and result.changed_files == [] and not entry.changed_during_backup
    else:
        assert archived != old and archived != new  # torn: the first chunk old, the rest new
        assert result.changed_files == [str(source / "db.bin")]
        assert entry.changed_during_backup and "changed while being read" in (entry.warning or "")
        assert any("mix old and new data" in warning for warning in result.warnings)
        raw = json.loads(result.manifest_path.read_text())
        assert next(e for e in raw["files"] if e["path"] == "db.bin")["changed_during_backup"] is True
    assert verify_backup(result.backup_path).ok


def test_a_small_file_that_keeps_changing_is_flagged(tmp_path: Path) -> None:
    """Rewritten during the first read and again during the second: the archived copy
    is flagged, never passed off as good."""
    source = tmp_path / "source"
    source.mkdir()
    (source / "hot.txt").write_bytes(b"0" * 1000)
    versions = iter([b"1" * 1000, b"2" * 1000])
    filesystem = AfterReadFileSystem(
        source / "hot.txt", lambda: _rewrite_in_place_keeping_mtime(source / "hot.txt", next(versions)), times=2
    )
    result = create_backup(BackupConfig(source, tmp_path / "backups"), filesystem=filesystem)
    assert filesystem.done == 2
    assert result.success, result.error
    assert result.changed_files == [str(source / "hot.txt")]
    assert result.manifest.entry_map()["hot.txt"].changed_during_backup


def test_a_file_rewritten_and_settled_while_streamed_is_kept_when_it_matches(tmp_path: Path) -> None:
    """A large file whose ctime changed but whose bytes did not (a ``touch -r``, a chmod
    back and forth): the re-read finds exactly what was archived, so nothing is flagged."""
    source = tmp_path / "source"
    source.mkdir()
    data = os.urandom(2 * CHUNK + 5)
    (source / "big.bin").write_bytes(data)

    def touch_back() -> None:
        info = os.stat(source / "big.bin")
        os.utime(source / "big.bin", ns=(info.st_atime_ns, info.st_mtime_ns))

    filesystem = AfterReadFileSystem(source / "big.bin", touch_back)
    result = create_backup(BackupConfig(source, tmp_path / "backups"), filesystem=filesystem)
    assert filesystem.done == 1
    assert result.success, result.error
    assert result.warnings == [] and result.changed_files == []
    assert _archived(result.backup_path, "big.bin") == data


_WRITER = textwrap.dedent(
    """
    import os, sys, time
    path, seconds = sys.argv[1], float(sys.argv[2])
    mtime = os.stat(path).st_mtime_ns
    size = os.path.getsize(path)
    deadline = time.monotonic() + seconds
    turn = 0
    while time.monotonic() < deadline:
        turn += 1
        block = (b"A" if turn % 2 else b"B") * (1 << 20)
        with open(path, "r+b") as handle:
            for _ in range(size // len(block)):
                handle.write(block)
        os.utime(path, ns=(mtime, mtime))
    print(turn)
    """
)


def test_a_real_writer_rewriting_in_place_never_gives_an_unflagged_torn_copy(tmp_path: Path) -> None:
    """A process rewrites a 32 MiB file in place, all "A" then all "B", putting its mtime
    back each time, throughout several backups. Each archived copy is one version (all
    A or all B) or is flagged as changed during the backup: never a silent mix."""
    source = tmp_path / "source"
    source.mkdir()
    path = source / "data.db"
    path.write_bytes(b"A" * (32 << 20))
    writer = subprocess.Popen([sys.executable, "-c", _WRITER, str(path), "8"], stdout=subprocess.PIPE, text=True)
    outcomes = []
    try:
        time.sleep(0.2)
        for attempt in range(4):
            result = create_backup(BackupConfig(source, tmp_path / "backups", compression="", prefix=f"try{attempt}"))
            assert result.success, result.error
            archived = _archived(result.backup_path, "data.db")
            uniform = archived in (b"A" * len(archived), b"B" * len(archived))
            flagged = result.manifest.entry_map()["data.db"].changed_during_backup
            assert uniform or flagged, "a torn copy was passed off as good"
            outcomes.append((uniform, flagged))
    finally:
        writer.wait(timeout=60)
    assert any(flagged for _, flagged in outcomes), outcomes  # the writer really raced the reads


@pytest.mark.timeout(30)
def test_a_file_swapped_for_a_fifo_after_the_walk_does_not_hang_the_backup(tmp_path: Path) -> None:
    """Opening a FIFO for reading waits for a writer that never comes, holding the lock
    and every later backup. The backup skips it with a warning and finishes."""
    source = tmp_path / "source"
    source.mkdir()
    (source / "queue").write_bytes(b"x" * 100)
    (source / "other.txt").write_bytes(b"other\n")
    plan = plan_backup(BackupConfig(source, tmp_path / "backups", on_read_error="fail"))
    os.unlink(source / "queue")
    os.mkfifo(source / "queue")
    result = execute_plan(plan)
    assert result.success, result.error
    assert result.warnings == [f"{source / 'queue'}: is no longer a regular file; not archived"]
    assert "queue" not in result.manifest.entry_map()
    assert result.manifest.warnings == result.warnings
    assert verify_backup(result.backup_path).ok


def test_fifos_and_devices_are_archived_and_a_socket_is_named_in_the_result_and_the_manifest(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A FIFO and a device node are archived as what they are (and restored so, by root
    from an archive with its manifest); a socket cannot be, and a real backup says so,
    not only a dry run."""
    source = tmp_path / "source"
    source.mkdir()
    (source / "app.txt").write_bytes(b"app\n")
    os.mkfifo(source / "pipe")
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(str(source / "app.sock"))
    os.mknod(source / "null", 0o600 | stat.S_IFCHR, os.makedev(1, 3))  # a character device, as root may
    try:
        result = create_backup(BackupConfig(source, tmp_path / "backups"))
        code = main(["create", str(source), str(tmp_path / "cli-backups")])
    finally:
        listener.close()
    assert result.success, result.error
    assert result.warnings == [f"{source / 'app.sock'}: is a socket; not archived (sockets cannot be restored)"]
    assert result.manifest.warnings == result.warnings
    entries = result.manifest.entry_map()
    assert sorted(entries) == ["app.txt", "null", "pipe"]
    assert (entries["pipe"].type, entries["pipe"].device) == ("fifo", None)
    assert (entries["null"].type, entries["null"].device) == ("chardev", (1, 3))
    err = capsys.readouterr().err
    assert code in (0, 3)
    assert "is a socket; not archived" in err
    assert str(source / "pipe") not in err and str(source / "null") not in err
    assert verify_backup(result.backup_path).ok

    restored = tmp_path / "restored"
    outcome = restore_backup(result.backup_path, restored)
    assert outcome.success, outcome.error
    assert stat.S_ISFIFO(os.lstat(restored / "pipe").st_mode)
    null = os.lstat(restored / "null")
    assert stat.S_ISCHR(null.st_mode) and null.st_rdev == os.makedev(1, 3)
    assert sorted(os.listdir(restored)) == ["app.txt", "null", "pipe"]


def test_a_backup_directory_that_is_the_source_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """create D D would put every earlier backup into the next one (1, 2, 4, 8 MB ...)."""
    data = tmp_path / "data"
    data.mkdir()
    (data / "f.txt").write_bytes(b"f\n")
    result = create_backup(BackupConfig(data, data))
    assert result.success is False
    assert "the backup directory is the source directory" in (result.error or "")
    assert main(["create", str(data), str(data)]) == 2
    assert "the backup directory is the source directory" in capsys.readouterr().err
    assert sorted(os.listdir(data)) == ["f.txt"]
