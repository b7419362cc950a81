"""Tests for the deprecated ``maintenance.backup`` shim."""

from __future__ import annotations

import importlib
import sys

import pytest

import backup


def _fresh_import(monkeypatch: pytest.MonkeyPatch) -> object:
    """Import maintenance.backup as if for the first time (sys.modules is restored afterwards)."""
    monkeypatch.delitem(sys.modules, "maintenance.backup", raising=False)
    return importlib.import_module("maintenance.backup")


def test_import_warns_deprecation(monkeypatch: pytest.MonkeyPatch) -> None:
    """A fresh import emits one DeprecationWarning that points at ``backup``."""
    with pytest.warns(DeprecationWarning, match=r"maintenance\.backup is deprecated; import .* from backup") as record:
        _fresh_import(monkeypatch)
    assert [w.category for w in record] == [DeprecationWarning]


def test_reexports_same_objects(monkeypatch: pytest.MonkeyPatch) -> None:
    """The shim's names are the very objects ``backup`` exports."""
    with pytest.warns(DeprecationWarning):
        shim = _fresh_import(monkeypatch)
    assert sorted(shim.__all__) == ["BackupConfig", "BackupResult", "create_backup"]  # type: ignore[attr-defined]
    for name in shim.__all__:  # type: ignore[attr-defined]
        assert getattr(shim, name) is getattr(backup, name)
