"""Time-zone awareness for classes that work on a wall clock (the backup scheduler).

Zones come from ``zoneinfo``; the ``tzdata`` package is a dependency so that zone
names resolve on systems without ``/usr/share/zoneinfo``.
"""

from __future__ import annotations

import os
from datetime import datetime
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

__all__ = ["TimeAwareMixin", "UnknownTimeZoneError", "load_zone", "system_zone_name"]


class UnknownTimeZoneError(ValueError):
    """A time-zone name that is not in the IANA database."""


def load_zone(name: str) -> ZoneInfo:
    """Given an IANA zone name, return the zone; raise UnknownTimeZoneError naming it."""
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, TypeError) as exc:
        raise UnknownTimeZoneError(
            f"unknown time zone {name!r}: use an IANA name such as 'Asia/Seoul' or 'UTC'"
        ) from exc


def system_zone_name() -> str:
    """Return the IANA name of this system's time zone: ``$TZ`` if it names one, else
    what ``/etc/localtime`` links to, else ``/etc/timezone``; ``UTC`` if none says."""
    candidates = [os.environ.get("TZ", "").removeprefix(":")]
    try:
        link = os.readlink("/etc/localtime")
        candidates.append(link.split("zoneinfo/", 1)[1] if "zoneinfo/" in link else "")
    except OSError:
        pass
    try:
        with open("/etc/timezone", encoding="utf-8") as handle:
            candidates.append(handle.read().strip())
    except (OSError, UnicodeDecodeError):
        pass
    for name in candidates:
        if name and not name.startswith("/"):
            try:
                load_zone(name)
            except UnknownTimeZoneError:
                continue
            return name
    return "UTC"


class TimeAwareMixin:
    """Gives a class ``self._tz`` from ``self._tz_name`` and an aware ``_now()`` in it."""

    _tz_name: str
    _tz: ZoneInfo

    def _init_timezone(self) -> None:
        """Load ``self._tz`` from ``self._tz_name``; raise UnknownTimeZoneError if unknown."""
        self._tz = load_zone(getattr(self, "_tz_name", "UTC"))

    def _now(self) -> datetime:
        """Return the current time as an aware datetime in the configured zone."""
        return datetime.now(self._tz)
