"""Tests for the public surface of the ``backup`` package."""

from __future__ import annotations

import importlib
import pkgutil
import types

import pytest

import backup

SEED_NAMES = [
    "BackupConfig",
    "BackupResult",
    "create_backup",
    "restore_backup",
    "BackupManifest",
    "ManifestEntry",
    "create_manifest",
    "load_manifest",
    "calculate_checksum",
    "verify_checksum",
]

# cli is being edited elsewhere and __main__ runs the CLI; neither is library surface.
_SKIPPED_MODULES = {"cli", "__main__"}


def _public_bindings(module: types.ModuleType) -> set[str]:
    return {
        name
        for name, value in vars(module).items()
        if not name.startswith("_") and not isinstance(value, types.ModuleType)
    }


def test_all_has_no_duplicates() -> None:
    """Each public name is listed once."""
    assert len(backup.__all__) == len(set(backup.__all__))


def test_all_equals_public_bindings() -> None:
    """__all__ lists exactly the non-module, non-underscore names bound in the package."""
    assert set(backup.__all__) == _public_bindings(backup)


@pytest.mark.parametrize("name", sorted(backup.__all__))
def test_every_name_in_all_is_importable(name: str) -> None:
    """``from backup import <name>`` works for every listed name, and it is defined in the package."""
    namespace: dict[str, object] = {}
    exec(f"from backup import {name}", namespace)
    value = namespace[name]
    assert value is getattr(backup, name)
    assert getattr(value, "__module__", "").startswith("backup.")


@pytest.mark.parametrize("name", SEED_NAMES)
def test_seed_names_present(name: str) -> None:
    """Everything the seed exported is still exported."""
    assert name in backup.__all__


def test_version() -> None:
    """The package version matches the project metadata."""
    assert backup.__version__ == "0.1.0"


def test_backup_core_reexports_config() -> None:
    """``from backup.core import BackupConfig`` keeps working and is the same class."""
    from backup.core import BackupConfig, BackupResult

    assert BackupConfig is backup.BackupConfig
    assert BackupResult is backup.BackupResult


def _submodules() -> list[str]:
    """Every module of the package, those of its subpackages (``stream``, ``storage``,
    ``manifest``) and the subpackages themselves included, relative to ``backup``."""
    return sorted(
        info.name.removeprefix("backup.")
        for info in pkgutil.walk_packages(backup.__path__, "backup.")
        if info.name.removeprefix("backup.") not in _SKIPPED_MODULES
    )


def test_subpackages_are_walked() -> None:
    """The walk reaches into the subpackages, so their modules are checked too."""
    names = set(_submodules())
    for package in ("stream", "storage", "manifest"):
        assert package in names
    assert {"stream.pipeline", "stream.tarwriter", "storage.base", "storage.local", "manifest.model"} <= names


# Known gaps in src, each reported; strict, so the mark must go when src is fixed.
_KNOWN_MISSING_ALL: dict[str, str] = {}


def _submodule_params() -> list[object]:
    return [
        pytest.param(name, marks=pytest.mark.xfail(strict=True, reason=_KNOWN_MISSING_ALL[name]))
        if name in _KNOWN_MISSING_ALL
        else name
        for name in _submodules()
    ]


@pytest.mark.parametrize("module_name", _submodule_params())
def test_submodule_all_is_accurate(module_name: str) -> None:
    """Every name a module or subpackage lists in __all__ exists there, once."""
    module = importlib.import_module(f"backup.{module_name}")
    exported = getattr(module, "__all__", None)
    assert exported is not None, f"backup.{module_name} has no __all__"
    assert len(exported) == len(set(exported))
    missing = [name for name in exported if not hasattr(module, name)]
    assert missing == []


def test_package_reexports_come_from_submodules() -> None:
    """Each package-level name is the very object its defining module exports."""
    for name in backup.__all__:
        value = getattr(backup, name)
        module = importlib.import_module(value.__module__)
        assert getattr(module, name) is value
        assert name in module.__all__, f"{name} is not in {value.__module__}.__all__"
