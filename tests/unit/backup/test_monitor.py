"""Run records: the per-prefix state (a record in the backup location's storage) and the
Prometheus textfile metrics (a local file). The state is kept in a real directory,
named by its path or given as its storage, and in the in-memory storage."""

from __future__ import annotations

import errno
import json
import os
import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from backup.monitor import STATE_NAME, RunRecord, load_state, record_run, render_metrics
from backup.storage import LocalStorage
from support.storage import Fault, FaultyStorage, MemoryStorage

STARTED = datetime(2026, 5, 10, 3, 0, 0, tzinfo=UTC)  # 1778382000


def record(prefix: str = "db", success: bool = True, at: datetime = STARTED, **extra: object) -> RunRecord:
    fields: dict[str, object] = {
        "backup_id": f"{prefix}_{at:%Y%m%d_%H%M%S}" if success else None,
        "archive_size": 1234 if success else 0,
        "file_count": 5 if success else 0,
        "error": None if success else f"/data/{prefix}: source directory does not exist",
    }
    fields.update(extra)
    return RunRecord(
        started_at=at,
        finished_at=at + timedelta(seconds=2.5),
        success=success,
        prefix=prefix,
        **fields,  # type: ignore[arg-type]
    )


EXPECTED = """\
# HELP obs_backup_last_success_timestamp_seconds Unix time the last successful backup finished.
# TYPE obs_backup_last_success_timestamp_seconds gauge
obs_backup_last_success_timestamp_seconds{prefix="db"} 1778382002.5
# HELP obs_backup_last_run_timestamp_seconds Unix time the last run finished.
# TYPE obs_backup_last_run_timestamp_seconds gauge
obs_backup_last_run_timestamp_seconds{prefix="db"} 1778382002.5
# HELP obs_backup_last_run_duration_seconds Duration of the last run.
# TYPE obs_backup_last_run_duration_seconds gauge
obs_backup_last_run_duration_seconds{prefix="db"} 2.5
# HELP obs_backup_last_run_success 1 if the last run succeeded, else 0.
# TYPE obs_backup_last_run_success gauge
obs_backup_last_run_success{prefix="db"} 1.0
# HELP obs_backup_last_run_warnings Warnings of the last run: files skipped, changed while read, hooks that failed after it.
# TYPE obs_backup_last_run_warnings gauge
obs_backup_last_run_warnings{prefix="db"} 0.0
# HELP obs_backup_last_archive_size_bytes Archive size of the last successful backup.
# TYPE obs_backup_last_archive_size_bytes gauge
obs_backup_last_archive_size_bytes{prefix="db"} 1234.0
# HELP obs_backup_last_files Files in the last successful backup.
# TYPE obs_backup_last_files gauge
obs_backup_last_files{prefix="db"} 5.0
# HELP obs_backup_last_changed_files Files that changed while the last successful backup read them.
# TYPE obs_backup_last_changed_files gauge
obs_backup_last_changed_files{prefix="db"} 0.0
# HELP obs_backup_future_dated_backups Backups dated after the clock at the last retention: kept; check the clock.
# TYPE obs_backup_future_dated_backups gauge
obs_backup_future_dated_backups{prefix="db"} 0.0
"""


def test_render_metrics_exact_text() -> None:
    run = record()
    assert render_metrics(run, {"last_success": run.to_dict()}) == EXPECTED


def test_render_metrics_without_any_success_and_an_escaped_label() -> None:
    run = record(prefix='we"ird\\', success=False)
    text = render_metrics(run, {"last_run": run.to_dict()})
    assert 'obs_backup_last_success_timestamp_seconds{prefix="we\\"ird\\\\"} 0.0\n' in text
    assert 'obs_backup_last_run_success{prefix="we\\"ird\\\\"} 0.0\n' in text
    assert 'obs_backup_last_files{prefix="we\\"ird\\\\"} 0.0\n' in text


def test_record_run_writes_state_and_metrics(tmp_path: Path) -> None:
    metrics = tmp_path / "metrics" / "obs.prom"
    metrics.parent.mkdir()

    state = record_run(tmp_path, record(), metrics)

    assert metrics.read_text() == EXPECTED
    assert stat.S_IMODE(metrics.stat().st_mode) == 0o644
    assert os.listdir(metrics.parent) == ["obs.prom"]
    on_disk = json.loads((tmp_path / STATE_NAME).read_text())
    assert on_disk == state
    assert on_disk["db"]["last_run"] == on_disk["db"]["last_success"]
    assert on_disk["db"]["last_run"]["duration_seconds"] == 2.5
    assert on_disk["db"]["last_run"]["finished_at"] == "2026-05-10T03:00:02.500000+00:00"


def test_record_run_keeps_state_per_prefix(tmp_path: Path) -> None:
    record_run(tmp_path, record("db"))
    record_run(tmp_path, record("web", at=STARTED + timedelta(hours=1)))
    record_run(tmp_path, record("db", success=False, at=STARTED + timedelta(days=1)))

    state = load_state(tmp_path)

    assert set(state) == {"db", "web"}
    assert state["db"]["last_run"]["success"] is False
    assert state["db"]["last_run"]["error"] == "/data/db: source directory does not exist"
    assert state["db"]["last_success"]["backup_id"] == "db_20260510_030000"
    assert state["web"]["last_run"] == state["web"]["last_success"]
    assert state["web"]["last_success"]["backup_id"] == "web_20260510_040000"


def test_a_failed_run_keeps_the_last_success_in_the_metrics(tmp_path: Path) -> None:
    metrics = tmp_path / "obs.prom"
    record_run(tmp_path, record(), metrics)
    record_run(tmp_path, record(success=False, at=STARTED + timedelta(days=1)), metrics)

    text = metrics.read_text()
    assert 'obs_backup_last_run_success{prefix="db"} 0.0\n' in text
    assert 'obs_backup_last_success_timestamp_seconds{prefix="db"} 1778382002.5\n' in text
    assert 'obs_backup_last_run_timestamp_seconds{prefix="db"} 1778468402.5\n' in text
    assert 'obs_backup_last_archive_size_bytes{prefix="db"} 1234.0\n' in text


def test_corrupted_state_file_is_survived(tmp_path: Path) -> None:
    (tmp_path / STATE_NAME).write_text("{ not json")
    assert load_state(tmp_path) == {}

    record_run(tmp_path, record())

    assert set(json.loads((tmp_path / STATE_NAME).read_text())) == {"db"}


def test_state_that_is_not_an_object_is_ignored(tmp_path: Path) -> None:
    (tmp_path / STATE_NAME).write_text("[1, 2, 3]")
    assert load_state(tmp_path) == {}
    assert load_state(tmp_path / "missing") == {}


def test_future_dated_backups_are_recorded_and_exported(tmp_path: Path) -> None:
    """The count of backups dated after the clock goes into the run record and the gauge."""
    metrics = tmp_path / "obs.prom"

    state = record_run(tmp_path, record(future_dated_backups=2), metrics)

    assert state["db"]["last_run"]["future_dated_backups"] == 2
    assert 'obs_backup_future_dated_backups{prefix="db"} 2.0\n' in metrics.read_text()


def test_a_run_that_counted_nothing_keeps_the_last_count_of_future_dated_backups(tmp_path: Path) -> None:
    """A failed run applies no retention and counts nothing; the gauge keeps the last
    count rather than dropping to 0 and hiding a clock that is still wrong."""
    metrics = tmp_path / "obs.prom"
    record_run(tmp_path, record(future_dated_backups=1), metrics)

    record_run(tmp_path, record(success=False, at=STARTED + timedelta(days=1)), metrics)

    assert load_state(tmp_path)["db"]["last_run"]["future_dated_backups"] is None
    assert 'obs_backup_future_dated_backups{prefix="db"} 1.0\n' in metrics.read_text()
    record_run(tmp_path, record(future_dated_backups=0, at=STARTED + timedelta(days=2)), metrics)
    assert 'obs_backup_future_dated_backups{prefix="db"} 0.0\n' in metrics.read_text()


# --- the state in any storage -----------------------------------------------------------------


def test_a_directory_given_as_its_storage(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path)
    state = record_run(storage, record())
    assert load_state(tmp_path) == state == load_state(storage)
    assert json.loads((tmp_path / STATE_NAME).read_text()) == state
    assert storage.list_objects() == []  # a record, not an object: never listed, never pruned


def test_the_state_is_a_record_of_any_storage(tmp_path: Path) -> None:
    """Monitoring needs nothing but the storage interface; the metrics stay a local file."""
    storage = MemoryStorage("memory://backups")
    metrics = tmp_path / "obs.prom"
    record_run(storage, record("db"), metrics)
    record_run(storage, record("web", at=STARTED + timedelta(hours=1)))
    record_run(storage, record("db", success=False, at=STARTED + timedelta(days=1)), metrics)

    state = load_state(storage)

    assert set(state) == {"db", "web"}
    assert state["db"]["last_run"]["success"] is False
    assert state["db"]["last_success"]["backup_id"] == "db_20260510_030000"
    assert json.loads(storage.read_record(STATE_NAME) or b"") == state
    assert storage.list_objects() == []
    assert 'obs_backup_last_success_timestamp_seconds{prefix="db"} 1778382002.5\n' in metrics.read_text()
    assert os.listdir(tmp_path) == ["obs.prom"]


@pytest.mark.parametrize("raw", [b"{ not json", b"[1, 2, 3]", b"\xff"])
def test_a_damaged_state_record_is_survived(raw: bytes) -> None:
    storage = MemoryStorage()
    storage.write_record(STATE_NAME, raw)
    assert load_state(storage) == {}
    record_run(storage, record())
    assert set(load_state(storage)) == {"db"}
    assert load_state(MemoryStorage(exists=False)) == {}


def test_a_state_that_cannot_be_written_raises(tmp_path: Path) -> None:
    """Through the storage seam (as root, no permission bit stops a write): the caller
    gets the OSError, and the metrics file is not written either."""
    storage = FaultyStorage(MemoryStorage(), Fault("write_record", errno.EROFS))
    metrics = tmp_path / "obs.prom"
    with pytest.raises(OSError, match="Read-only file system"):
        record_run(storage, record(), metrics)
    assert not metrics.exists()
    assert load_state(storage) == {}
