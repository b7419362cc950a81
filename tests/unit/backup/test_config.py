"""Tests for backup.config: BackupConfig defaults, coercion and validation; SchedulerConfig,
which lives here and is re-exported under its seed path (``backup.scheduler``)."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

import backup
import backup.config
import backup.core
import backup.scheduler
from backup.config import BackupConfig, BackupResult, SchedulerConfig
from backup.errors import ConfigError
from backup.retention import RetentionPolicy


def _config(tmp_path: Path, **overrides: Any) -> BackupConfig:
    return BackupConfig(source_dir=tmp_path / "src", backup_dir=tmp_path / "out", **overrides)


def test_defaults_match_seed_contract(tmp_path: Path) -> None:
    """The seed's defaults are kept: prefix "backup", gzip, with a manifest."""
    config = _config(tmp_path)
    assert config.prefix == "backup"
    assert config.compression == "gz"
    assert config.include_manifest is True
    assert config.exclude == ()
    assert config.compression_level is None
    assert config.checksum_algorithm == "sha256"
    assert config.on_read_error == "fail"


def test_str_paths_are_coerced_to_path(tmp_path: Path) -> None:
    """source_dir and backup_dir given as str become Path objects."""
    config = BackupConfig(source_dir=str(tmp_path / "a"), backup_dir=str(tmp_path / "b"))
    assert isinstance(config.source_dir, Path)
    assert isinstance(config.backup_dir, Path)
    assert config.source_dir == tmp_path / "a"
    assert config.backup_dir == tmp_path / "b"


def test_exclude_str_and_list_become_tuple(tmp_path: Path) -> None:
    """A single pattern string is one pattern, not a sequence of characters; lists become tuples."""
    assert _config(tmp_path, exclude="*.log").exclude == ("*.log",)
    assert _config(tmp_path, exclude=["a", "b/"]).exclude == ("a", "b/")


@pytest.mark.parametrize(
    ("compression", "level", "expected"),
    [
        ("gzip", None, ("gz", 6)),
        ("GZ", 9, ("gz", 9)),
        ("none", None, ("", 0)),
        ("", 7, ("", 0)),
        ("zstd", 19, ("zst", 19)),
        ("bzip2", None, ("bz2", 9)),
        ("xz", 0, ("xz", 0)),
    ],
)
def test_validated_canonicalises_compression_and_level(
    tmp_path: Path, compression: str, level: int | None, expected: tuple[str, int]
) -> None:
    """validated() returns a copy with the canonical key and a concrete level."""
    config = _config(tmp_path, compression=compression, compression_level=level)
    checked = config.validated()
    assert (checked.compression, checked.compression_level) == expected
    assert checked is not config
    assert (config.compression, config.compression_level) == (compression, level)  # original untouched


def test_validated_keeps_other_fields(tmp_path: Path) -> None:
    """Every other field is carried over unchanged."""
    config = _config(
        tmp_path,
        prefix="db-1.x_y",
        include_manifest=False,
        exclude=["*.tmp"],
        checksum_algorithm="sha512",
        on_read_error="skip",
    )
    checked = config.validated()
    assert checked == BackupConfig(
        source_dir=tmp_path / "src",
        backup_dir=tmp_path / "out",
        prefix="db-1.x_y",
        compression="gz",
        include_manifest=False,
        exclude=("*.tmp",),
        compression_level=6,
        checksum_algorithm="sha512",
        on_read_error="skip",
    )


@pytest.mark.parametrize("prefix", ["", "../x", ".hidden", "a/b", "-dash", "a b", "a\nb", "backup\n", "é"])
def test_invalid_prefix_raises(tmp_path: Path, prefix: str) -> None:
    """A prefix must be a safe file-name stem; the error names the prefix."""
    with pytest.raises(ConfigError) as info:
        _config(tmp_path, prefix=prefix).validated()
    assert f"invalid prefix {prefix!r}" in str(info.value)


@pytest.mark.parametrize("prefix", ["backup", "a", "9", "db_main-2.0"])
def test_valid_prefix_accepted(tmp_path: Path, prefix: str) -> None:
    """Letters, digits, '_', '-' and '.' after a letter or digit are fine."""
    assert _config(tmp_path, prefix=prefix).validated().prefix == prefix


@pytest.mark.parametrize("policy", ["ignore", "", "FAIL"])
def test_bad_on_read_error_raises(tmp_path: Path, policy: str) -> None:
    """Only "fail" and "skip" are policies; the error names the value."""
    with pytest.raises(ConfigError) as info:
        _config(tmp_path, on_read_error=policy).validated()  # type: ignore[arg-type]
    assert f"on_read_error must be 'fail' or 'skip', not {policy!r}" in str(info.value)


def test_bad_compression_level_and_algorithm_raise(tmp_path: Path) -> None:
    """Level out of range and unknown checksum algorithm are ConfigErrors."""
    with pytest.raises(ConfigError, match="out of range"):
        _config(tmp_path, compression_level=10).validated()
    with pytest.raises(ConfigError, match="unknown checksum algorithm 'crc32'"):
        _config(tmp_path, checksum_algorithm="crc32").validated()
    with pytest.raises(ConfigError, match="unknown compression 'rar'"):
        _config(tmp_path, compression="rar").validated()


def test_backup_result_defaults() -> None:
    """A bare result is a failure-shaped record with empty, unshared warnings."""
    first, second = BackupResult(success=False), BackupResult(success=True)
    assert (first.backup_path, first.manifest_path, first.error, first.archive_size) == (None, None, None, 0)
    first.warnings.append("w")
    assert second.warnings == []


# -- where the configurations live ----------------------------------------------------------


@pytest.mark.parametrize("name", ["BackupConfig", "BackupResult", "SchedulerConfig"])
def test_one_class_under_every_path_it_was_ever_imported_from(name: str) -> None:
    """backup.config defines them; the seed's paths (backup.core, backup.scheduler) and
    the package re-export the very same class, so isinstance checks keep working."""
    defined = getattr(backup.config, name)
    assert defined.__module__ == "backup.config"
    assert getattr(backup, name) is defined
    seed_module = backup.scheduler if name == "SchedulerConfig" else backup.core
    assert getattr(seed_module, name) is defined
    assert name in seed_module.__all__


# -- SchedulerConfig -------------------------------------------------------------------------


def test_scheduler_retention_is_retention_days_unless_a_policy_is_given(tmp_path: Path) -> None:
    days = SchedulerConfig(tmp_path / "s", tmp_path / "b", retention_days=3)
    assert days.retention_policy() == RetentionPolicy(keep_within=timedelta(days=3))
    policy = RetentionPolicy(keep_daily=7, keep_weekly=4)
    assert SchedulerConfig(tmp_path / "s", tmp_path / "b", retention_days=3, policy=policy).retention_policy() is policy


def test_scheduler_retention_days_must_be_positive(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="retention_days must be positive, not 0"):
        SchedulerConfig(tmp_path / "s", tmp_path / "b", retention_days=0).retention_policy()


def test_a_scheduled_backup_is_configured_like_any_other(tmp_path: Path) -> None:
    """backup_config() carries every field the two share; the result is a plain
    BackupConfig, coerced and validated as one."""
    config = SchedulerConfig(
        str(tmp_path / "s"),  # type: ignore[arg-type]
        str(tmp_path / "b"),  # type: ignore[arg-type]
        compression="zstd",
        compression_level=19,
        exclude="*.tmp",
        on_read_error="skip",
    )
    made = config.backup_config()
    assert made == BackupConfig(
        tmp_path / "s",
        tmp_path / "b",
        prefix="scheduled_backup",
        compression="zstd",
        compression_level=19,
        exclude=("*.tmp",),
        on_read_error="skip",
    )
    assert (made.validated().compression, made.validated().compression_level) == ("zst", 19)
