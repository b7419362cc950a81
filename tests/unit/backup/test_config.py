"""Tests for backup.config: BackupConfig defaults, coercion and validation."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from backup.config import BackupConfig, BackupResult
from backup.errors import ConfigError


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
