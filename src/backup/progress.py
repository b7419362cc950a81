"""The progress callback every long operation accepts."""

from __future__ import annotations

from collections.abc import Callable

__all__ = ["ProgressCallback"]

ProgressCallback = Callable[[int, int], None]
"""Called as ``progress(entries_done, bytes_done)`` while an archive is written or read."""
