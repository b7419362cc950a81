"""The settings table and the TOML loader derived from it: top level, a command's table,
key spelling, refusals, and type checks that name the key and its line. (The command
line derived from the table is tested in test_cli.py.)"""

from __future__ import annotations

import dataclasses
from datetime import time
from pathlib import Path

import pytest

from backup.config import BackupConfig, SchedulerConfig
from backup.errors import ConfigError
from backup.settings import SETTINGS, field_default, load_settings


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "obs-backup.toml"
    path.write_text(text)
    return path


def test_top_level_keys_apply_to_the_command(tmp_path: Path) -> None:
    path = write(tmp_path, 'source = "/data"\nbackup_dir = "/backups"\ncompression = "xz"\n')
    assert load_settings(path, "create") == {
        "source": Path("/data"),
        "backup_dir": Path("/backups"),
        "compression": "xz",
    }


def test_the_command_table_wins_and_other_tables_are_ignored(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
prefix = "top"
compression = "gz"

[create]
prefix = "from-create"
exclude = ["*.log", "cache/"]

[schedule]
prefix = "from-schedule"
at = "04:30"
""",
    )
    assert load_settings(path, "create") == {
        "prefix": "from-create",
        "compression": "gz",
        "exclude": ["*.log", "cache/"],
    }
    assert load_settings(path, "schedule") == {"prefix": "from-schedule", "compression": "gz", "at": "04:30"}


def test_dashes_and_underscores_are_the_same_key(tmp_path: Path) -> None:
    path = write(tmp_path, 'backup-dir = "/b"\n[schedule]\nkeep-daily = 7\nbackup_dir = "/c"\n')
    assert load_settings(path, "schedule") == {"backup_dir": Path("/c"), "keep_daily": 7}


def test_a_top_level_key_of_another_command_is_not_an_error(tmp_path: Path) -> None:
    path = write(tmp_path, 'tz = "UTC"\ncompression = "zst"\n')
    assert load_settings(path, "create") == {"compression": "zst"}
    assert load_settings(path, "schedule") == {"tz": "UTC", "compression": "zst"}


def test_relative_paths_are_relative_to_the_file_and_a_single_pattern_is_a_list(tmp_path: Path) -> None:
    path = write(tmp_path, 'source = "data"\nbackup_dir = "/abs"\nexclude = "*.tmp"\n')
    assert load_settings(path, "create") == {
        "source": tmp_path / "data",
        "backup_dir": Path("/abs"),
        "exclude": ["*.tmp"],
    }


@pytest.mark.parametrize(
    ("text", "bad"),
    [
        ('compresion = "xz"\n', "compresion"),  # a typo at the top level
        ('[create]\nat = "03:00"\n', "at"),  # another command's option in this command's table
        ("[create]\nkeep-hourly = 3\n", "keep_hourly"),
    ],
)
def test_unknown_keys_are_an_error_naming_the_file(tmp_path: Path, text: str, bad: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as caught:
        load_settings(path, "create")
    message = str(caught.value)
    assert str(path) in message and bad in message
    assert "\n" not in message
    assert caught.value.path == str(path)


@pytest.mark.parametrize(
    ("command", "text", "line", "expected"),
    [
        ("create", 'source = "/s"\n[create]\nlevel = "5"\n', 3, "level must be an integer, not str '5'"),
        ("prune", "[prune]\n\nkeep_daily = 'x'\n", 3, "keep-daily must be an integer, not str 'x'"),
        ("prune", "keep-daily = true\n", 1, "keep-daily must be an integer, not bool True"),
        ("create", "exclude = [1, 2]\n", 1, "exclude must be a list of strings, not list [1, 2]"),
        ("create", 'dry_run = "yes"\n', 1, "dry-run must be true or false, not str 'yes'"),
        ("schedule", "lock-timeout = '60'\n", 1, "lock-timeout must be a number, not str '60'"),
        ("schedule", "metrics_file = 3\n", 1, "metrics-file must be a path (a string), not int 3"),
    ],
)
def test_a_value_of_the_wrong_type_names_the_file_the_line_and_the_key(
    tmp_path: Path, command: str, text: str, line: int, expected: str
) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as caught:
        load_settings(path, command)
    assert str(caught.value) == f"{path}:{line}: {expected}"


def test_invalid_toml_is_an_error_naming_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, 'source = "/data\n')
    with pytest.raises(ConfigError, match="invalid TOML") as caught:
        load_settings(path, "create")
    assert str(path) in str(caught.value)


def test_a_missing_file_is_an_error_naming_it(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read config file") as caught:
        load_settings(tmp_path / "nope.toml", "create")
    assert "nope.toml" in str(caught.value)


def test_a_command_key_that_is_not_a_table(tmp_path: Path) -> None:
    path = write(tmp_path, 'create = "yes"\n')
    with pytest.raises(ConfigError, match=r"\[create\] must be a table"):
        load_settings(path, "create")


# -- one definition, three derivations -----------------------------------------------------


def test_library_defaults_come_from_the_table() -> None:
    """The seed's defaults (the contract), read from the one table."""
    backup = BackupConfig(Path("/s"), Path("/b"))
    assert (backup.prefix, backup.compression, backup.include_manifest, backup.exclude) == ("backup", "gz", True, ())
    assert (backup.compression_level, backup.checksum_algorithm, backup.on_read_error) == (None, "sha256", "fail")
    scheduler = SchedulerConfig(Path("/s"), Path("/b"))
    assert (scheduler.schedule_time, scheduler.retention_days, scheduler.tz_name, scheduler.prefix) == (
        time(3, 0),
        7,
        "Asia/Seoul",
        "scheduled_backup",
    )
    assert scheduler.lock_timeout == field_default("lock_timeout") == 600.0


def test_every_backup_field_is_a_scheduler_field_and_carries_over() -> None:
    """The scheduler builds its backups from every field a backup has: none is dropped
    (include_manifest and checksum_algorithm were, once)."""
    shared = {f.name for f in dataclasses.fields(BackupConfig)}
    assert shared <= {f.name for f in dataclasses.fields(SchedulerConfig)}
    config = SchedulerConfig(Path("/s"), Path("/b"), include_manifest=False, checksum_algorithm="sha512", exclude=["x"])
    backup = config.backup_config()
    assert (backup.include_manifest, backup.checksum_algorithm, backup.exclude, backup.prefix) == (
        False,
        "sha512",
        ("x",),
        "scheduled_backup",
    )


def test_every_field_of_the_configurations_has_one_setting() -> None:
    by_field = [s.field for s in SETTINGS if s.field is not None]
    assert len(by_field) == len(set(by_field))
    for kind in (BackupConfig, SchedulerConfig):
        for item in dataclasses.fields(kind):
            if item.name != "policy":  # built from the keep-* settings
                assert item.name in by_field, item.name
