"""File checksums.

The archive writer and the restorer hash bytes as they stream them, so neither calls
:func:`calculate_checksum` on a hot path; these functions serve callers that hold a
file on disk and want its digest.
"""

from __future__ import annotations

import hmac
import os
from pathlib import Path

from .errors import SourceError
from .hashing import CHUNK_SIZE, DEFAULT_ALGORITHM, new_hasher

__all__ = ["CHUNK_SIZE", "DEFAULT_ALGORITHM", "calculate_checksum", "new_hasher", "verify_checksum"]


def calculate_checksum(path: str | Path, algorithm: str = DEFAULT_ALGORITHM) -> str:
    """Given a file path, return the hex digest of its bytes; raise SourceError if unreadable."""
    hasher = new_hasher(algorithm)
    try:
        with open(path, "rb", buffering=0) as handle:
            buffer = bytearray(CHUNK_SIZE)
            view = memoryview(buffer)
            while True:
                count = handle.readinto(buffer)
                if not count:
                    break
                hasher.update(view[:count])
    except OSError as exc:
        raise SourceError(f"{path}: cannot read for checksum: {exc.strerror or exc}", path) from exc
    return hasher.hexdigest()


def verify_checksum(path: str | Path, expected: str, algorithm: str = DEFAULT_ALGORITHM) -> bool:
    """Given a file path and an expected hex digest, return whether the file matches it.

    A file that does not exist does not match; any other read error raises SourceError.
    """
    if not os.path.lexists(path):
        return False
    actual = calculate_checksum(path, algorithm)
    return hmac.compare_digest(actual, expected.strip().lower())
