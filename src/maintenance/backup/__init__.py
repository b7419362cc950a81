"""Deprecated: import from ``backup`` instead.

Kept so that code written against the old ``maintenance.backup`` module keeps working;
it re-exports the same objects and warns once on import.
"""

import warnings

warnings.warn(
    "maintenance.backup is deprecated; import create_backup, BackupConfig and BackupResult from backup",
    DeprecationWarning,
    stacklevel=2,
)

from backup import BackupConfig, BackupResult, create_backup  # noqa: E402

__all__ = ["create_backup", "BackupConfig", "BackupResult"]
