"""Tests for shared.time_helpers: zone loading and the TimeAwareMixin."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from shared.time_helpers import TimeAwareMixin, UnknownTimeZoneError, load_zone


class Clock(TimeAwareMixin):
    """A minimal user of the mixin, as the scheduler uses it."""

    def __init__(self, tz_name: str | None = None) -> None:
        if tz_name is not None:
            self._tz_name = tz_name
        self._init_timezone()


def test_seoul_now_is_aware_with_plus_nine() -> None:
    """Asia/Seoul (no DST) gives an aware time at +09:00, equal to the real current instant."""
    before = datetime.now(UTC)
    now = Clock("Asia/Seoul")._now()
    after = datetime.now(UTC)
    assert now.tzinfo is not None
    assert now.utcoffset() == timedelta(hours=9)
    assert now.isoformat().endswith("+09:00")
    assert str(now.tzinfo) == "Asia/Seoul"
    assert before <= now <= after


def test_default_zone_is_utc() -> None:
    """Without _tz_name the mixin uses UTC."""
    now = Clock()._now()
    assert now.utcoffset() == timedelta(0)
    assert str(now.tzinfo) == "UTC"


@pytest.mark.parametrize("name", ["Mars/Olympus_Mons", "Asia/Seoull", "../../etc/passwd", ""])
def test_unknown_zone_raises_naming_it(name: str) -> None:
    """An unknown or malformed name is an UnknownTimeZoneError (a ValueError) naming the zone."""
    with pytest.raises(UnknownTimeZoneError) as info:
        Clock(name)
    assert isinstance(info.value, ValueError)
    assert str(info.value).startswith(f"unknown time zone {name!r}")


def test_load_zone_known() -> None:
    """load_zone returns the zone itself."""
    assert load_zone("Europe/London").key == "Europe/London"


def test_unknown_zone_is_catchable_as_value_error() -> None:
    """Callers that only know ValueError still catch it."""
    with pytest.raises(ValueError, match="'Nowhere/City'"):
        load_zone("Nowhere/City")
