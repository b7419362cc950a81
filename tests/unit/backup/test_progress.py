"""Progress: reported inside large files by restore and verify as well as by create, and
drawn in one unit system with the summaries."""

from __future__ import annotations

import io
from pathlib import Path

from backup import BackupConfig, create_backup, restore_backup, verify_backup
from backup.progress import PROGRESS_STEP, ProgressBar, format_count, format_size

SIZE = 3 * PROGRESS_STEP + 5


def _backup(tmp_path: Path) -> Path:
    source = tmp_path / "source"
    source.mkdir()
    (source / "large.bin").write_bytes(b"\x01" * SIZE)
    result = create_backup(BackupConfig(source, tmp_path / "backups", compression=""))
    assert result.success and result.backup_path is not None, result.error
    return result.backup_path


def test_verify_reports_progress_inside_a_large_file(tmp_path: Path) -> None:
    archive = _backup(tmp_path)
    calls: list[tuple[int, int]] = []
    report = verify_backup(archive, progress=lambda entries, done: calls.append((entries, done)))
    assert report.ok, report.lines()
    assert calls == [(0, PROGRESS_STEP), (0, 2 * PROGRESS_STEP), (0, 3 * PROGRESS_STEP), (1, SIZE)]


def test_restore_reports_progress_inside_a_large_file(tmp_path: Path) -> None:
    archive = _backup(tmp_path)
    calls: list[tuple[int, int]] = []
    result = restore_backup(archive, tmp_path / "out", progress=lambda entries, done: calls.append((entries, done)))
    assert result.success, result.error
    assert calls == [(0, PROGRESS_STEP), (0, 2 * PROGRESS_STEP), (0, 3 * PROGRESS_STEP), (1, SIZE)]
    assert (tmp_path / "out" / "large.bin").stat().st_size == SIZE


def test_sizes_and_counts_read_as_the_summaries_do() -> None:
    assert [format_size(n) for n in (0, 1023, 1024, 1536, 4 << 20, 30 << 30)] == [
        "0 B",
        "1023 B",
        "1.0 KiB",
        "1.5 KiB",
        "4.0 MiB",
        "30.0 GiB",
    ]
    assert [format_count(n, "file") for n in (0, 1, 2)] == ["0 files", "1 file", "2 files"]
    assert format_count(1, "entry", "entries") == "1 entry"
    assert format_count(3, "entry", "entries") == "3 entries"


def test_the_bar_shows_bytes_of_the_total_and_is_redrawn_at_most_five_times_a_second() -> None:
    stream = io.StringIO()
    now = [100.0]
    with ProgressBar("restoring", 4 << 20, stream, clock=lambda: now[0]) as bar:
        bar(0, 0)
        now[0] += 0.5
        bar(1, 1 << 20)
        bar(2, 2 << 20)  # within 0.2 s of the last: not drawn
        now[0] += 2
        bar(3, 2 << 20)
    drawn = [line.rstrip() for line in stream.getvalue().split("\r")]
    assert drawn[1:4] == [
        "restoring [........................] 0 B / 4.0 MiB   0%, 0 entries",
        "restoring [######..................] 1.0 MiB / 4.0 MiB  25%, 1 entry",
        # 2 MiB in 2.5 s: 2 MiB more take 2.5 s more
        "restoring [############............] 2.0 MiB / 4.0 MiB  50%, 0:02 left, 3 entries",
    ]
    assert drawn[-1] == ""  # erased when it ends
    assert len(drawn) == 6


def test_without_a_total_the_bar_shows_what_is_done() -> None:
    stream = io.StringIO()
    bar = ProgressBar("verifying", 0, stream, clock=lambda: 10.0)
    bar.draw(7, 3 << 30, 10.0)
    assert stream.getvalue() == "\rverifying 3.0 GiB, 7 entries"
