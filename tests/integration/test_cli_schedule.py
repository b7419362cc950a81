"""The command line for unattended use: ``--config``, ``prune`` and ``schedule``."""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from backup.listing import list_backups
from backup.monitor import STATE_NAME
from support.backups import make_backup, make_backups, make_source
from support.cli import run_cli
from support.clock import fixed_now

from .conftest import SRC


def everything(directory: Path) -> dict[str, bytes]:
    return {name: (directory / name).read_bytes() for name in sorted(os.listdir(directory))}


# -- --config -----------------------------------------------------------------------------


@pytest.fixture
def config_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    make_source(tmp_path / "data")
    conf_dir = tmp_path / "conf"
    conf_dir.mkdir()
    path = conf_dir / "obs-backup.toml"
    path.write_text(
        """
source = "../data"
backup_dir = "out"

[create]
compression = "xz"
prefix = "fromfile"
"""
    )
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # relative paths must not resolve against the cwd
    return path


def test_config_file_drives_create_with_paths_relative_to_it(
    tmp_path: Path, config_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run_cli(capsys, "--config", str(config_file), "create", "--json")

    assert code == 0, err
    created = json.loads(out)
    path = Path(created["path"])
    assert path.parent.resolve() == (tmp_path / "conf" / "out").resolve()
    assert path.name.startswith("fromfile_") and path.name.endswith(".tar.xz")
    assert created["file_count"] == 2
    assert os.listdir(tmp_path / "elsewhere") == []


def test_flags_override_the_config_file(tmp_path: Path, config_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    other_source = make_source(tmp_path / "other-data")
    (other_source / "c.txt").write_text("gamma")

    code, out, err = run_cli(
        capsys,
        "--config",
        str(config_file),
        "create",
        str(other_source),
        str(tmp_path / "flag-out"),
        "--prefix",
        "fromflag",
        "--compression",
        "gz",
        "--json",
    )

    assert code == 0, err
    created = json.loads(out)
    path = Path(created["path"])
    assert path.parent == tmp_path / "flag-out"
    assert path.name.startswith("fromflag_") and path.name.endswith(".tar.gz")
    assert created["file_count"] == 3
    assert not (tmp_path / "conf" / "out").exists()


def test_unknown_config_key_is_a_usage_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "bad.toml"
    path.write_text('[create]\ncompresion = "xz"\n')

    code, out, err = run_cli(capsys, "--config", str(path), "create", str(tmp_path), str(tmp_path / "b"))

    assert code == 2
    assert out == ""
    assert err.count("\n") == 1 and "compresion" in err and str(path) in err
    assert not (tmp_path / "b").exists()


def test_invalid_config_file_is_a_usage_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "bad.toml"
    path.write_text("source = \n")
    code, _, err = run_cli(capsys, "--config", str(path), "list")
    assert code == 2
    assert err.count("\n") == 1 and "invalid TOML" in err


def test_config_file_gives_prune_its_policy(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ids = make_backups(tmp_path, "db", 3)
    path = tmp_path / "prune.toml"
    path.write_text('backup_dir = "backups"\n[prune]\nkeep-last = 2\n')

    code, _, err = run_cli(capsys, "--config", str(path), "prune", "--quiet")

    assert code == 0, err
    assert [b.backup_id for b in list_backups(tmp_path / "backups")] == ids[1:]


# -- prune ------------------------------------------------------------------------------------


def test_prune_dry_run_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db = make_backups(tmp_path, "db", 3)
    web = make_backups(tmp_path, "web", 1)
    backup_dir = tmp_path / "backups"
    before = everything(backup_dir)

    code, out, err = run_cli(capsys, "prune", str(backup_dir), "--keep-last", "1", "--dry-run", "--json")

    assert code == 0, err
    data = json.loads(out)
    assert data["dry_run"] is True and data["success"] is True
    assert data["policy"] == "keep-last 1"
    assert [row["backup_id"] for row in data["keep"]] == [db[2], web[0]]
    assert [row["backup_id"] for row in data["remove"]] == [db[1], db[0]]
    for row in data["keep"] + data["remove"]:
        assert set(row) == {"backup_id", "created_at", "archive_path", "reasons"}
        assert Path(row["archive_path"]).parent == backup_dir
        datetime.fromisoformat(row["created_at"])
    assert data["keep"][0]["reasons"] == ["newest backup (always kept)", "last 1"]
    assert data["remove"][0]["reasons"] == []
    assert (data["removed"], data["leftovers_removed"], data["errors"]) == ([], [], [])
    assert everything(backup_dir) == before


def test_prune_text_then_real_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db = make_backups(tmp_path, "db", 3)
    backup_dir = tmp_path / "backups"

    # The backups are exactly one day apart; "within" is strictly newer than the cut-off
    # (restic's rule), so 25h keeps the one a day old and not the one two days old.
    code, out, _ = run_cli(capsys, "prune", str(backup_dir), "--prefix", "db", "--keep-within", "25h")

    assert code == 0
    assert f"keep   {db[2]}: newest backup (always kept), within 25h of the newest" in out
    assert f"keep   {db[1]}: within 25h of the newest" in out
    assert f"remove {db[0]}" in out
    assert [b.backup_id for b in list_backups(backup_dir)] == db[1:]


FUTURE_REASON = "dated in the future: kept; check the clock"


def backups_around_now(tmp_path: Path) -> tuple[list[str], str]:
    """Real backups made 0 to 10 days ago (newest first) and one made while the clock
    was a year ahead; return their ids."""
    source = make_source(tmp_path / "source")
    now = datetime.now(UTC).replace(microsecond=0)
    real = [
        make_backup(
            source, tmp_path / "backups", prefix="db", now=fixed_now(now - timedelta(days=age, minutes=1))
        ).backup_id
        for age in range(11)
    ]
    ahead = make_backup(source, tmp_path / "backups", prefix="db", now=fixed_now(now + timedelta(days=365))).backup_id
    assert None not in real and ahead is not None
    return real, ahead  # type: ignore[return-value]


@pytest.mark.parametrize("prefix", [(), ("--prefix", "db")], ids=["each-prefix", "one-prefix"])
def test_prune_keep_within_survives_a_backup_dated_a_year_ahead(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], prefix: tuple[str, ...]
) -> None:
    """One backup made while the clock was a year ahead used to become "the newest", and
    ``--keep-within 7d`` then removed every real backup. Now it is kept with a warning
    and every real backup within 7 days of now survives."""
    real, ahead = backups_around_now(tmp_path)
    backup_dir = tmp_path / "backups"

    code, out, err = run_cli(capsys, "prune", str(backup_dir), "--keep-within", "7d", *prefix)

    assert code == 0, err
    assert [b.backup_id for b in list_backups(backup_dir)] == [*reversed(real[:7]), ahead]
    created = next(b.created_at for b in list_backups(backup_dir) if b.backup_id == ahead)
    assert created is not None
    assert (
        err == f"obs-backup: warning: {ahead} is dated in the future ({created.isoformat()}): kept; check the clock\n"
    )
    assert f"keep   {ahead}: {FUTURE_REASON}" in out
    assert f"keep   {real[0]}: newest backup (always kept), within 7d of the newest" in out
    for gone in real[7:]:
        assert f"remove {gone}" in out


def test_prune_json_reports_backups_dated_in_the_future(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    real, ahead = backups_around_now(tmp_path)
    backup_dir = tmp_path / "backups"
    before = everything(backup_dir)

    code, out, err = run_cli(capsys, "prune", str(backup_dir), "--keep-last", "2", "--dry-run", "--json")

    assert code == 0, err
    data = json.loads(out)
    assert [row["backup_id"] for row in data["future"]] == [ahead]
    assert data["future"][0]["reasons"] == [FUTURE_REASON]
    assert [row["backup_id"] for row in data["keep"]] == [ahead, real[0], real[1]]
    assert [row["backup_id"] for row in data["remove"]] == real[2:]
    assert f"{ahead} is dated in the future" in err
    assert everything(backup_dir) == before


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        ((), "prune needs a policy"),
        (("--keep-within", "7 days"), "invalid duration"),
        (("--keep-daily", "-1"), "keep_daily must not be negative"),
        (("--keep-last", "1", "--tz", "Mars/Olympus"), "Mars/Olympus"),
    ],
)
def test_prune_usage_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], args: tuple[str, ...], needle: str
) -> None:
    make_backups(tmp_path, "db", 2)
    before = everything(tmp_path / "backups")

    code, _, err = run_cli(capsys, "prune", str(tmp_path / "backups"), *args)

    assert code == 2
    assert err.count("\n") == 1 and needle in err
    assert everything(tmp_path / "backups") == before


def test_prune_of_a_missing_directory_fails(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_cli(capsys, "prune", str(tmp_path / "none"), "--keep-last", "1")
    assert code == 1
    assert err.count("\n") == 1 and "does not exist" in err
    assert not (tmp_path / "none").exists()


# -- schedule -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (("--tz", "Mars/Olympus"), "Mars/Olympus"),
        (("--at", "25:00"), "25:00"),
        (("--at", "noon"), "noon"),
        (("--retention-days", "0"), "retention_days"),
    ],
)
def test_schedule_usage_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], args: tuple[str, ...], needle: str
) -> None:
    source = make_source(tmp_path / "source")

    code, _, err = run_cli(capsys, "schedule", str(source), str(tmp_path / "backups"), *args)

    lines = [line for line in err.splitlines() if line.startswith("obs-backup: error:")]
    assert code == 2
    assert len(lines) == 1 and needle in lines[0]
    assert not (tmp_path / "backups").exists()


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_schedule_runs_the_catch_up_backup_then_stops_cleanly_on_a_signal(tmp_path: Path, signum: int) -> None:
    source = make_source(tmp_path / "source")
    backup_dir = tmp_path / "backups"
    metrics = tmp_path / "obs.prom"
    started = time.monotonic()
    child = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "backup",
            "schedule",
            str(source),
            str(backup_dir),
            "--at",
            "03:00",
            "--tz",
            "Asia/Seoul",
            "--retention-days",
            "7",
            "--metrics-file",
            str(metrics),
            "--json",
        ],
        env=dict(os.environ, PYTHONPATH=str(SRC)),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None
        # No backup yet: the catch-up backup runs at once and --json reports it.
        ready, _, _ = select.select([child.stdout], [], [], 10)
        assert ready, "no catch-up backup was reported"
        reported = json.loads(child.stdout.readline())
        child.send_signal(signum)
        _, err = child.communicate(timeout=10)
    finally:
        if child.poll() is None:
            child.kill()
            child.communicate()
    elapsed = time.monotonic() - started

    assert child.returncode == 0, err
    assert elapsed < 5
    assert reported["success"] is True
    assert "obs-backup: stopping" in err
    assert "Traceback" not in err
    listed = list_backups(backup_dir)
    assert [b.backup_id for b in listed] == [reported["backup_id"]]
    assert listed[0].backup_id.startswith("scheduled_backup_")
    assert listed[0].file_count == 2 and listed[0].problem is None
    assert not [name for name in os.listdir(backup_dir) if name.endswith(".partial")]
    assert (backup_dir / STATE_NAME).is_file()
    assert 'obs_backup_last_run_success{prefix="scheduled_backup"} 1.0' in metrics.read_text()
