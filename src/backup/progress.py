"""The progress callback every long operation accepts, and the bar the command line
draws with it on a terminal.

Sizes are shown in binary units (KiB, MiB, GiB) everywhere, in the bar and in the
summaries the command line prints, so the two can be compared at a glance.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TextIO

__all__ = ["PROGRESS_STEP", "ProgressBar", "ProgressCallback", "format_count", "format_size"]

ProgressCallback = Callable[[int, int], None]
"""Called as ``progress(entries_done, bytes_done)`` while an archive is written or read,
once per entry and, inside a large file, every few MiB."""

PROGRESS_STEP = 8 << 20  # bytes of one file between two progress reports inside it
_UNITS = ("B", "KiB", "MiB", "GiB", "TiB", "PiB")
_REDRAW_SECONDS = 0.2
_WIDTH = 24


def format_size(count: int) -> str:
    """Given a number of bytes, return it for people: ``512 B``, ``1.5 MiB``."""
    value = float(count)
    for unit in _UNITS:
        if value < 1024 or unit == _UNITS[-1]:
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")  # pragma: no cover


def format_count(count: int, singular: str, plural: str | None = None) -> str:
    """Given a count and a noun, return ``1 file`` or ``2 files``."""
    return f"{count} {singular if count == 1 else plural or singular + 's'}"


class ProgressBar:
    """A one-line bar on a terminal, redrawn at most five times a second.

    ``total`` is the bytes expected (0: unknown, then only what is done is shown).
    Use as a context manager; the line is erased when it ends.
    """

    def __init__(self, label: str, total: int, stream: TextIO, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.label = label
        self.total = total
        self.stream = stream
        self._clock = clock
        self._started = clock()
        self._drawn = 0.0
        self._width = 0

    def __enter__(self) -> ProgressBar:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._width:
            self.stream.write("\r" + " " * self._width + "\r")
            self.stream.flush()

    def __call__(self, entries: int, done: int) -> None:
        now = self._clock()
        if now - self._drawn < _REDRAW_SECONDS:
            return
        self._drawn = now
        self.draw(entries, done, now)

    def draw(self, entries: int, done: int, now: float) -> None:
        """Draw the line for ``entries`` entries and ``done`` bytes at ``now``."""
        line = f"{self.label} {format_size(done)}"
        if self.total:
            fraction = min(done / self.total, 1.0)
            filled = int(fraction * _WIDTH)
            line = (
                f"{self.label} [{'#' * filled}{'.' * (_WIDTH - filled)}] "
                f"{format_size(done)} / {format_size(self.total)} {fraction:4.0%}"
            )
            elapsed = now - self._started
            if 0 < done < self.total and elapsed > 1:
                line += f", {_clock_text((self.total - done) * elapsed / done)} left"
        line += f", {format_count(entries, 'entry', 'entries')}"
        self.stream.write("\r" + line.ljust(self._width))
        self.stream.flush()
        self._width = max(self._width, len(line))


def _clock_text(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"
