"""Recording each run's outcome: a state file in the backup directory, and Prometheus
metrics for node_exporter's textfile collector.

``.obs-backup-state.json`` keeps, per prefix, the last run, the last successful run and
the last prune, whoever ran them (the scheduler, ``create``, ``prune``). The metrics
file is rewritten atomically (temp file, then rename) after every run, so the
collector never reads half a file. Both writes are best effort from the caller's point
of view: a run that succeeded is not turned into a failure because monitoring could
not be written (the caller logs it).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from .storage import Location, open_storage
from .storage.durable import atomic_write_bytes

__all__ = [
    "STATE_NAME",
    "PruneRecord",
    "RunRecord",
    "error_to_record",
    "load_state",
    "record_prune",
    "record_run",
    "render_metrics",
]

STATE_NAME = ".obs-backup-state.json"
METRICS_MODE = 0o644  # the collector usually runs as another user


# What the state file says of a failed encrypted backup, instead of its error.
SEALED_ERROR = (
    "backup failed; its error names source files, which an encrypted backup location does not hold "
    "in plaintext: see the log or the command's output"
)


def error_to_record(error: str | None, encrypted: bool) -> str | None:
    """Given a run's error and whether its backups are encrypted, return the error to keep
    in the state file, which lives in the backup location: for encrypted backups, not
    the error itself, which may name a source file."""
    return SEALED_ERROR if encrypted and error else error


@dataclass
class RunRecord:
    """The outcome of one scheduled (or manual) run."""

    started_at: datetime
    finished_at: datetime
    success: bool
    prefix: str
    backup_id: str | None = None
    archive_path: str | None = None
    archive_size: int = 0
    file_count: int = 0
    error: str | None = None
    removed: list[str] = field(default_factory=list)
    # Backups of this prefix dated after the run's clock (None: retention did not run,
    # so they were not counted).
    future_dated_backups: int | None = None
    # What the backup said but did not fail for: files skipped, changed while read ...
    warnings: int = 0
    changed_files: int = 0
    # Damaged backups the check after the run found (None: no check ran).
    damaged_backups: int | None = None

    @property
    def duration_seconds(self) -> float:
        return (self.finished_at - self.started_at).total_seconds()

    def to_dict(self) -> dict[str, Any]:
        """Return the record as JSON-ready data."""
        data = asdict(self)
        data["started_at"] = self.started_at.isoformat()
        data["finished_at"] = self.finished_at.isoformat()
        data["duration_seconds"] = round(self.duration_seconds, 3)
        return data


@dataclass
class PruneRecord:
    """The outcome of one ``prune``: what it removed, and what it kept because it was
    dated in the future."""

    finished_at: datetime
    success: bool
    removed: int = 0
    kept: int = 0
    future_dated_backups: int = 0
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """Return the record as JSON-ready data."""
        data = asdict(self)
        data["finished_at"] = self.finished_at.isoformat()
        return data


def load_state(backup_dir: Location) -> dict[str, Any]:
    """Given a backup location, return its recorded state ({} if none or unreadable).

    Whatever in it does not have the shape this module writes (a prefix that is not a
    table, a record that is not one) is dropped: a damaged state file must not turn the
    next successful backup into a failure, and the next record repairs it."""
    raw = open_storage(backup_dir).read_record(STATE_NAME)
    try:
        data = json.loads(raw or b"{}")
    except (ValueError, RecursionError):
        return {}
    if not isinstance(data, dict):
        return {}
    state: dict[str, Any] = {}
    for prefix, entry in data.items():
        if isinstance(entry, dict):
            state[prefix] = {key: record for key, record in entry.items() if isinstance(record, dict)}
    return state


def record_run(backup_dir: Location, record: RunRecord, metrics_file: Path | None = None) -> dict[str, Any]:
    """Given a run's record, update the state record (and the metrics file); return the state.

    State is kept per prefix, so two schedules sharing a location do not overwrite
    each other's history. Raise OSError if either cannot be written.
    """
    storage = open_storage(backup_dir)
    state = load_state(storage)
    entry = state.setdefault(record.prefix, {})
    entry["last_run"] = record.to_dict()
    if record.success:
        entry["last_success"] = record.to_dict()
    storage.write_record(STATE_NAME, json.dumps(state, indent=2).encode("utf-8"))
    if metrics_file is not None:
        atomic_write_bytes(metrics_file, render_metrics(record, entry).encode("utf-8"), mode=METRICS_MODE)
    return state


def record_prune(
    backup_dir: Location, records: dict[str, PruneRecord], metrics_file: Path | None = None
) -> dict[str, Any]:
    """Given what a prune did to each prefix, update the state record (and rewrite the
    metrics file with those prefixes); return the state. Raise OSError if either cannot
    be written."""
    storage = open_storage(backup_dir)
    state = load_state(storage)
    for prefix, record in records.items():
        state.setdefault(prefix, {})["last_prune"] = record.to_dict()
    storage.write_record(STATE_NAME, json.dumps(state, indent=2).encode("utf-8"))
    if metrics_file is not None and records:
        text = _render([(prefix, state[prefix], None) for prefix in records])
        atomic_write_bytes(metrics_file, text.encode("utf-8"), mode=METRICS_MODE)
    return state


def render_metrics(record: RunRecord, entry: dict[str, Any]) -> str:
    """Given the latest run and the prefix's state, return Prometheus text-format metrics."""
    return _render([(record.prefix, {**entry, "last_run": record.to_dict()}, record)])


def _render(groups: list[tuple[str, dict[str, Any], RunRecord | None]]) -> str:
    """Given ``(prefix, state entry, latest run)`` for each prefix, return the metrics:
    each metric's HELP and TYPE once, then a sample per prefix (the text format
    refuses a second HELP line for a name)."""
    metrics: dict[str, tuple[str, list[str]]] = {}
    for prefix, entry, record in groups:
        labels = f'{{prefix="{_escape(prefix)}"}}'
        for name, help_text, value in _rows(entry, record):
            metrics.setdefault(name, (help_text, []))[1].append(f"{name}{labels} {round(value, 6)!r}")
    lines = []
    for name, (help_text, samples) in metrics.items():
        lines.append(f"# HELP {name} {help_text}")
        lines.append(f"# TYPE {name} gauge")
        lines.extend(samples)
    return "\n".join(lines) + "\n"


def _rows(entry: dict[str, Any], record: RunRecord | None) -> list[tuple[str, str, float]]:
    last_success = entry.get("last_success") or {}
    last_run = entry.get("last_run") or {}
    last_prune = entry.get("last_prune")
    success_time = _timestamp(last_success.get("finished_at"))
    rows: list[tuple[str, str, float]] = [
        ("obs_backup_last_success_timestamp_seconds", "Unix time the last successful backup finished.", success_time)
    ]
    if last_run:
        rows += [
            (
                "obs_backup_last_run_timestamp_seconds",
                "Unix time the last run finished.",
                _timestamp(last_run.get("finished_at")),
            ),
            (
                "obs_backup_last_run_duration_seconds",
                "Duration of the last run.",
                _number(last_run, "duration_seconds"),
            ),
            (
                "obs_backup_last_run_success",
                "1 if the last run succeeded, else 0.",
                1.0 if last_run.get("success") else 0.0,
            ),
            (
                "obs_backup_last_run_warnings",
                "Warnings of the last run: files skipped, changed while read, hooks that failed after it.",
                _number(last_run, "warnings"),
            ),
        ]
    rows += [
        (
            "obs_backup_last_archive_size_bytes",
            "Archive size of the last successful backup.",
            _number(last_success, "archive_size"),
        ),
        ("obs_backup_last_files", "Files in the last successful backup.", _number(last_success, "file_count")),
        (
            "obs_backup_last_changed_files",
            "Files that changed while the last successful backup read them.",
            _number(last_success, "changed_files"),
        ),
        (
            "obs_backup_future_dated_backups",
            "Backups dated after the clock at the last retention: kept; check the clock.",
            float(_future_dated(record, last_success, last_prune)),
        ),
    ]
    if isinstance(last_run.get("damaged_backups"), int):
        rows.append(
            (
                "obs_backup_damaged_backups",
                "Damaged backups found by the check after the last run.",
                _number(last_run, "damaged_backups"),
            )
        )
    if isinstance(last_prune, dict):
        rows += [
            (
                "obs_backup_last_prune_timestamp_seconds",
                "Unix time the last prune finished.",
                _timestamp(last_prune.get("finished_at")),
            ),
            (
                "obs_backup_last_prune_success",
                "1 if the last prune succeeded, else 0.",
                1.0 if last_prune.get("success") else 0.0,
            ),
            ("obs_backup_last_prune_removed", "Backups the last prune removed.", _number(last_prune, "removed")),
        ]
    return rows


def _future_dated(record: RunRecord | None, last_success: dict[str, Any], last_prune: object) -> int:
    # A run whose retention did not run counted nothing; the last count stands until
    # one does, so a failing backup does not hide a wrong clock.
    if record is not None and record.future_dated_backups is not None:
        return record.future_dated_backups
    counts = [last_success.get("future_dated_backups")]
    if isinstance(last_prune, dict):
        counts.insert(0, last_prune.get("future_dated_backups"))
    for count in counts:
        if isinstance(count, int) and not isinstance(count, bool):
            return count
    return 0


def _number(data: dict[str, Any], key: str) -> float:
    value = data.get(key, 0)
    if not isinstance(value, int | float) or isinstance(value, bool):
        return 0.0
    try:
        return float(value)
    except OverflowError:  # an integer of 400 digits in a damaged state file
        return 0.0


def _timestamp(value: object) -> float:
    if not isinstance(value, str):
        return 0.0
    try:
        return datetime.fromisoformat(value).timestamp()
    except ValueError:
        return 0.0


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
