"""Fixtures shared by the unit tests of the backup package."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest


@pytest.fixture
def umask_zero() -> Iterator[None]:
    """Run the test with umask 0, so only explicit modes keep files private."""
    old = os.umask(0)
    try:
        yield
    finally:
        os.umask(old)
