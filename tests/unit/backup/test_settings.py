"""Settings from a TOML file: top level, a command's table, key spelling, refusals."""

from __future__ import annotations

from pathlib import Path

import pytest

from backup.errors import ConfigError
from backup.settings import load_settings

CREATE = {"source", "backup_dir", "compression", "prefix", "exclude", "json"}
SCHEDULE = {"source", "backup_dir", "prefix", "at", "tz", "keep_daily", "json"}
EVERY = CREATE | SCHEDULE


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "obs-backup.toml"
    path.write_text(text)
    return path


def test_top_level_keys_apply_to_the_command(tmp_path: Path) -> None:
    path = write(tmp_path, 'source = "/data"\nbackup_dir = "/backups"\ncompression = "xz"\n')
    assert load_settings(path, "create", CREATE, EVERY) == {
        "source": "/data",
        "backup_dir": "/backups",
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
    assert load_settings(path, "create", CREATE, EVERY) == {
        "prefix": "from-create",
        "compression": "gz",
        "exclude": ["*.log", "cache/"],
    }
    assert load_settings(path, "schedule", SCHEDULE, EVERY) == {"prefix": "from-schedule", "at": "04:30"}


def test_dashes_and_underscores_are_the_same_key(tmp_path: Path) -> None:
    path = write(tmp_path, 'backup-dir = "/b"\n[schedule]\nkeep-daily = 7\nbackup_dir = "/c"\n')
    assert load_settings(path, "schedule", SCHEDULE, EVERY) == {"backup_dir": "/c", "keep_daily": 7}


def test_a_top_level_key_of_another_command_is_not_an_error(tmp_path: Path) -> None:
    path = write(tmp_path, 'tz = "UTC"\ncompression = "zst"\n')
    assert load_settings(path, "create", CREATE, EVERY) == {"compression": "zst"}
    assert load_settings(path, "schedule", SCHEDULE, EVERY) == {"tz": "UTC"}


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
        load_settings(path, "create", CREATE, EVERY)
    message = str(caught.value)
    assert str(path) in message and bad in message
    assert "\n" not in message
    assert caught.value.path == str(path)


def test_invalid_toml_is_an_error_naming_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, 'source = "/data\n')
    with pytest.raises(ConfigError, match="invalid TOML") as caught:
        load_settings(path, "create", CREATE, EVERY)
    assert str(path) in str(caught.value)


def test_a_missing_file_is_an_error_naming_it(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read config file") as caught:
        load_settings(tmp_path / "nope.toml", "create", CREATE, EVERY)
    assert "nope.toml" in str(caught.value)


def test_a_command_key_that_is_not_a_table(tmp_path: Path) -> None:
    path = write(tmp_path, 'create = "yes"\n')
    with pytest.raises(ConfigError, match=r"\[create\] must be a table"):
        load_settings(path, "create", CREATE, EVERY)
