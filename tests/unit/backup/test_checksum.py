"""Tests for backup.checksum: digests of files on disk and their verification."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from backup.checksum import CHUNK_SIZE, calculate_checksum, new_hasher, verify_checksum
from backup.errors import ConfigError, SourceError


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"hello world\n",
        # Several chunks plus a ragged tail, so the read loop's boundaries matter.
        bytes(range(256)) * (3 * CHUNK_SIZE // 256) + b"tail",
    ],
    ids=["empty", "small", "multi-mib"],
)
def test_calculate_checksum_matches_hashlib_sha256(tmp_path: Path, data: bytes) -> None:
    """The default digest is SHA-256 of exactly the file's bytes."""
    path = _write(tmp_path / "f.bin", data)
    assert calculate_checksum(path) == hashlib.sha256(data).hexdigest()


def test_calculate_checksum_accepts_str_path(tmp_path: Path) -> None:
    """A str path works like a Path."""
    path = _write(tmp_path / "f.txt", b"abc")
    assert calculate_checksum(str(path)) == hashlib.sha256(b"abc").hexdigest()


def test_calculate_checksum_of_empty_file_is_known_constant(tmp_path: Path) -> None:
    """The SHA-256 of no bytes is the well-known constant (guards against a hashlib-only oracle)."""
    path = _write(tmp_path / "empty", b"")
    assert calculate_checksum(path) == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"


@pytest.mark.parametrize("algorithm", ["md5", "sha1", "sha512", "blake2b", "sha3_256"])
def test_calculate_checksum_other_algorithms(tmp_path: Path, algorithm: str) -> None:
    """Any guaranteed hashlib algorithm gives hashlib's digest."""
    data = b"some data\x00\xff" * 1000
    path = _write(tmp_path / "f.bin", data)
    assert calculate_checksum(path, algorithm) == hashlib.new(algorithm, data).hexdigest()


@pytest.mark.parametrize("algorithm", ["nope", "SHA-256", "", "shake_128"])
def test_unknown_algorithm_raises_config_error(tmp_path: Path, algorithm: str) -> None:
    """Unknown names (and the variable-length shake_*) are a ConfigError naming the algorithm."""
    path = _write(tmp_path / "f.bin", b"x")
    with pytest.raises(ConfigError) as info:
        calculate_checksum(path, algorithm)
    assert f"unknown checksum algorithm {algorithm!r}" in str(info.value)


def test_new_hasher_rejects_unknown_before_touching_a_file() -> None:
    """The algorithm is checked first: a missing file with a bad algorithm is a ConfigError."""
    with pytest.raises(ConfigError):
        calculate_checksum("/nonexistent/definitely/missing", "nope")
    assert new_hasher("sha256").name == "sha256"


def test_missing_file_raises_source_error_naming_path(tmp_path: Path) -> None:
    """A missing file is a SourceError whose message and .path name the file."""
    missing = tmp_path / "missing.txt"
    with pytest.raises(SourceError) as info:
        calculate_checksum(missing)
    assert str(missing) in str(info.value)
    assert info.value.path == str(missing)
    assert isinstance(info.value.__cause__, FileNotFoundError)


def test_directory_raises_source_error(tmp_path: Path) -> None:
    """A directory cannot be hashed; the error names it."""
    with pytest.raises(SourceError) as info:
        calculate_checksum(tmp_path)
    assert info.value.path == str(tmp_path)


def test_verify_checksum_true_for_matching_digest(tmp_path: Path) -> None:
    """The right digest verifies."""
    path = _write(tmp_path / "f.txt", b"content")
    assert verify_checksum(path, hashlib.sha256(b"content").hexdigest()) is True


def test_verify_checksum_false_for_other_digest(tmp_path: Path) -> None:
    """A digest of other bytes does not verify."""
    path = _write(tmp_path / "f.txt", b"content")
    assert verify_checksum(path, hashlib.sha256(b"other").hexdigest()) is False


def test_verify_checksum_false_for_missing_file(tmp_path: Path) -> None:
    """A file that does not exist does not match (no exception)."""
    assert verify_checksum(tmp_path / "missing", hashlib.sha256(b"").hexdigest()) is False


def test_verify_checksum_accepts_uppercase_and_whitespace(tmp_path: Path) -> None:
    """Expected digests are compared case-insensitively, ignoring surrounding whitespace."""
    path = _write(tmp_path / "f.txt", b"content")
    expected = hashlib.sha256(b"content").hexdigest()
    assert verify_checksum(path, expected.upper()) is True
    assert verify_checksum(path, f"  {expected}\n") is True


def test_verify_checksum_other_algorithm(tmp_path: Path) -> None:
    """The algorithm argument is honoured: an MD5 digest verifies only with md5."""
    path = _write(tmp_path / "f.txt", b"content")
    md5 = hashlib.md5(b"content").hexdigest()
    assert verify_checksum(path, md5, "md5") is True
    assert verify_checksum(path, md5) is False
