"""Hash algorithms by name: the one place that turns a configured name into a hasher."""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING

from .errors import ConfigError

if TYPE_CHECKING:
    from hashlib import _Hash

__all__ = ["CHUNK_SIZE", "DEFAULT_ALGORITHM", "new_hasher"]

DEFAULT_ALGORITHM = "sha256"
CHUNK_SIZE = 1 << 20  # what every reader and writer moves at a time


def new_hasher(algorithm: str = DEFAULT_ALGORITHM) -> _Hash:
    """Given a hashlib algorithm name, return a fresh hash object; raise ConfigError if unknown."""
    if algorithm not in hashlib.algorithms_guaranteed or algorithm.startswith("shake_"):
        choices = ", ".join(sorted(a for a in hashlib.algorithms_guaranteed if not a.startswith("shake_")))
        raise ConfigError(f"unknown checksum algorithm {algorithm!r}; choose one of {choices}")
    return hashlib.new(algorithm)
