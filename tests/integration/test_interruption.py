"""Write failures, leftovers and kill -9: only complete backups are ever visible.

Write failures are injected two ways, since we run as root and cannot fill a real
disk: (1) in-process, through the storage seam: the backup is written into
``FaultyStorage(LocalStorage(dir), ...)`` (``create_backup(config, storage=...)``), which
takes what fits on its pretend disk, then fails writes with ENOSPC as a full disk does,
or fails one commit; nothing in ``os`` or the library is patched; (2) in a subprocess
running create_backup under resource.RLIMIT_FSIZE, where the kernel itself cuts real
writes short and then fails them with EFBIG. A kill -9 is a real SIGKILL of a child.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import random
import signal
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from backup import BackupConfig, create_backup, list_backups, verify_backup
from backup.storage import LocalStorage
from backup.storage.local import partial_name
from support.storage import Fault, FaultyStorage

from .conftest import backup, dir_state, fixed_now, listing, make_corpus, popen_python, run_python

EARLIER = datetime(2023, 3, 4, 5, 6, 7, tzinfo=UTC)


def _with_earlier_backup(tmp_path: Path, compression: str = "gz") -> tuple[Path, Path, dict]:
    source = tmp_path / "source"
    make_corpus(source)
    backups = tmp_path / "backups"
    backup(source, backups, compression=compression, now=fixed_now(EARLIER))
    return source, backups, dir_state(backups)


def _assert_only_earlier(backups: Path, before: dict) -> None:
    assert listing(backups) == sorted(before), "leftovers in the backup directory"
    assert dir_state(backups) == before
    for info in list_backups(backups):
        report = verify_backup(info.archive_path)
        assert report.ok, report.lines()


def _full_disk(backups: Path, which: str, room: int) -> FaultyStorage:
    """The backup directory on a disk with ``room`` bytes left for the archive's or the
    manifest's writes: the write that crosses it writes what fits, then every write
    fails with ENOSPC. As from write(2), the error names no file."""
    full = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    names = "*.manifest.json" if which == "manifest" else "*.tar*"
    return FaultyStorage(LocalStorage(backups), Fault("write", full, room=room, names=names))


@pytest.mark.parametrize(
    ("which", "room", "compression"),
    [
        ("archive", 0, "gz"),
        ("archive", 100_000, "gz"),
        ("archive", 100_000, ""),
        ("archive", 1_000, "zst"),
        ("manifest", 0, "gz"),
        ("manifest", 500, "xz"),
    ],
)
def test_disk_full_fails_cleanly(tmp_path: Path, which: str, room: int, compression: str) -> None:
    source, backups, before = _with_earlier_backup(tmp_path)
    storage = _full_disk(backups, which, room)
    result = create_backup(BackupConfig(source, backups, compression=compression), storage=storage)
    assert any(name.endswith(".manifest.json") == (which == "manifest") for name in storage.called("begin"))
    assert storage.faults[0].fired >= 1
    assert result.success is False
    assert str(backups) in result.error
    assert "No space left on device" in result.error
    assert result.backup_path is None
    _assert_only_earlier(backups, before)
    # The next run, with room to spare, succeeds.
    assert create_backup(BackupConfig(source, backups, compression=compression)).success


def test_archive_commit_failure_removes_the_committed_manifest(tmp_path: Path) -> None:
    source, backups, before = _with_earlier_backup(tmp_path)
    # The archive's commit (the moment the backup would exist) fails with EIO, naming
    # the archive; the manifest, committed just before it, must go again.
    storage = FaultyStorage(LocalStorage(backups), Fault("commit", errno.EIO, names="*.tar.gz"))
    result = create_backup(BackupConfig(source, backups), storage=storage)
    assert storage.faults[0].fired == 1
    committed = [name for name in storage.called("commit") if name is not None]
    assert [name.endswith(".manifest.json") for name in committed] == [True, False]
    assert storage.called("delete") == [committed[0]]
    assert result.success is False
    assert str(backups) in result.error and ".tar.gz" in result.error
    assert "Input/output error" in result.error
    _assert_only_earlier(backups, before)


_FSIZE_CHILD = """
import json, resource, sys
from pathlib import Path
from backup import BackupConfig, create_backup
limit = int(sys.argv[1])
resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
result = create_backup(BackupConfig(Path(sys.argv[2]), Path(sys.argv[3]), compression=sys.argv[4]))
print(json.dumps({"success": result.success, "error": result.error}))
"""


def _small_files_source(root: Path) -> Path:
    # Many tiny identical files: a tiny .tar.gz but a large manifest.
    root.mkdir()
    for i in range(200):
        (root / f"file-{i:04d}.txt").write_bytes(b"same\n")
    return root


@pytest.mark.parametrize("case", ["mid-archive", "last-byte-of-archive", "manifest"])
def test_file_size_limit_fails_cleanly(tmp_path: Path, case: str) -> None:
    if case == "manifest":
        source = _small_files_source(tmp_path / "source")
        compression = "gz"
    else:
        source = tmp_path / "source"
        make_corpus(source)
        compression = ""
    backups = tmp_path / "backups"
    # An earlier, complete backup of the same tree tells us the exact sizes involved.
    earlier = backup(source, backups, compression=compression, now=fixed_now(EARLIER))
    archive_size = earlier.backup_path.stat().st_size
    manifest_size = earlier.manifest_path.stat().st_size
    before = dir_state(backups)
    if case == "mid-archive":
        limit = archive_size // 2
    elif case == "last-byte-of-archive":
        limit = archive_size - 1  # only the very last write is cut short
    else:
        assert manifest_size > 10 * archive_size
        limit = archive_size + 10  # the archive fits, the manifest does not

    argv = [str(limit), str(source), str(backups), compression]
    proc = run_python("import sys; sys.argv[1:] = " + repr(argv) + "\n" + _FSIZE_CHILD)
    assert proc.returncode == 0, proc.stderr
    outcome = json.loads(proc.stdout)
    assert outcome["success"] is False, f"a truncated backup was reported as complete ({case})"
    assert str(backups) in outcome["error"]
    assert "File too large" in outcome["error"]
    _assert_only_earlier(backups, before)


def test_leftovers_of_dead_runs_are_removed_by_the_next_backup(tmp_path: Path) -> None:
    source, backups, before = _with_earlier_backup(tmp_path)
    earlier_manifest = next(name for name in before if name.endswith(".manifest.json"))
    (backups / partial_name("backup_20230304_050608")).write_bytes(b"half an archive")
    (backups / partial_name("backup_20230304_050609.manifest.json")).write_bytes(b"{")
    orphan = backups / "backup_20230304_050608.manifest.json"
    # A manifest of ours (as a writer killed between its two commits leaves it): the
    # earlier backup's, renamed to the id of an archive that never landed.
    text = (backups / earlier_manifest).read_text().replace("backup_20230304_050607", "backup_20230304_050608")
    orphan.write_text(text)
    result = create_backup(BackupConfig(source, backups))
    assert result.success, result.error
    assert listing(backups) == sorted([*before, result.backup_path.name, result.manifest_path.name])
    for name, state in before.items():
        assert dir_state(backups)[name] == state
    assert [b.backup_id for b in list_backups(backups)] == ["backup_20230304_050607", result.backup_id]


def test_a_live_writers_partial_and_manifest_are_left_alone(tmp_path: Path) -> None:
    source, backups, _before = _with_earlier_backup(tmp_path)
    live = backups / partial_name("backup_20230304_050700")
    live_manifest = backups / "backup_20230304_050700.manifest.json"
    earlier_manifest = next(name for name in _before if name.endswith(".manifest.json"))
    earlier_id = earlier_manifest.removesuffix(".manifest.json")
    live_manifest.write_text((backups / earlier_manifest).read_text().replace(earlier_id, "backup_20230304_050700"))
    fd = os.open(live, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # what a writer still at work holds
        result = create_backup(BackupConfig(source, backups))
        assert result.success, result.error
        assert live.exists() and live_manifest.exists()
    finally:
        os.close(fd)
    assert create_backup(BackupConfig(source, backups)).success  # now it is a dead writer's
    assert not live.exists() and not live_manifest.exists()


_KILL_CHILD = """
import sys
from pathlib import Path
from backup import BackupConfig, create_backup
print("start", flush=True)
result = create_backup(BackupConfig(Path(sys.argv[1]), Path(sys.argv[2]), compression="gz"))
print("done" if result.success else "failed: %s" % result.error, flush=True)
"""


def _big_corpus(root: Path) -> None:
    rnd = random.Random(20240506)
    for i in range(25):
        directory = root / f"d{i % 5}"
        directory.mkdir(parents=True, exist_ok=True)
        (directory / f"f{i:02d}.bin").write_bytes(rnd.randbytes(1 << 20) * 2)  # 2 MiB, gzip cannot shrink it


def test_kill_9_at_random_moments_leaves_only_complete_backups(tmp_path: Path) -> None:
    source = tmp_path / "source"
    _big_corpus(source)
    backups = tmp_path / "backups"
    seed = random.randrange(1 << 32)
    rnd = random.Random(seed)
    argv = "import sys; sys.argv[1:] = " + repr([str(source), str(backups)]) + "\n"

    # An uninterrupted run, timed from the moment create_backup starts, sets the window
    # the kills are drawn from (and leaves one complete backup).
    reference = popen_python(argv + _KILL_CHILD)
    assert reference.stdout is not None and reference.stdout.readline().strip() == "start"
    started = time.monotonic()
    out, err = reference.communicate(timeout=120)
    duration = time.monotonic() - started
    assert reference.returncode == 0 and "done" in out, err

    verified: set[tuple[str, int]] = set()
    kills = 0
    for attempt in range(5):
        proc = popen_python(argv + _KILL_CHILD)
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "start"
        delay = rnd.uniform(0, 0.8 * duration)
        time.sleep(delay)
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            kills += 1
        proc.wait(timeout=60)
        proc.stdout.close()
        proc.stderr.close()
        info = f"seed={seed} attempt={attempt} delay={delay:.3f}"
        complete = list_backups(backups)
        assert complete, info
        for item in complete:
            assert item.manifest_path is not None, info
            key = (item.backup_id, item.size_bytes)
            if key not in verified:
                report = verify_backup(item.archive_path)
                assert report.ok, (info, report.lines())
                verified.add(key)
    assert kills >= 3, f"seed={seed}: the runs finished before they could be killed"

    result = create_backup(BackupConfig(source, backups, compression="gz"))
    assert result.success, result.error
    names = os.listdir(backups)
    assert [n for n in names if n.startswith(".")] == []
    archives = {n[: -len(".tar.gz")] for n in names if n.endswith(".tar.gz")}
    manifests = {n[: -len(".manifest.json")] for n in names if n.endswith(".manifest.json")}
    assert archives == manifests
    assert len(names) == 2 * len(archives)
    assert {b.backup_id for b in list_backups(backups)} == archives
    assert verify_backup(result.backup_path).ok
