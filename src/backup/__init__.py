"""obs-backup: standard tar backups of a data directory, with a SHA-256 manifest.

Everything a caller needs is importable from here; ``__all__`` is the public surface.
"""

from .catalog import BackupInfo
from .check import CheckReport, CheckRow, check_backups, parse_subset
from .checksum import calculate_checksum, verify_checksum
from .config import BackupConfig, BackupResult
from .core import create_backup, execute_plan, restore_backup
from .errors import (
    ArchiveError,
    BackupError,
    ConfigError,
    IdentityError,
    LockError,
    ManifestError,
    RestoreConflictError,
    SourceError,
    StorageError,
    UnsafeArchiveError,
    VerificationError,
)
from .hooks import Hooks, run_with_hooks
from .keys import Identities, Recipients, load_identities, load_recipients
from .listing import clean_leftovers, list_backups
from .manifest import ArchiveInfo, BackupManifest, ManifestEntry, create_manifest, load_manifest
from .monitor import PruneRecord, RunRecord, load_state, record_prune, record_run
from .plan import BackupPlan, RestoreEntry, RestorePlan, plan_backup, plan_restore
from .prune import PruneResult, execute_prune, plan_prune
from .retention import RetentionDecision, RetentionPlan, RetentionPolicy, apply_policy, parse_duration
from .safety import Selection
from .scheduler import BackupScheduler, RunOutcome, SchedulerConfig
from .select import Selected, find_backup
from .storage import BackupStorage, LocalStorage, backup_dir_lock
from .verify import Mismatch, VerifyReport, verify_backup

__version__ = "0.1.0"

__all__ = [
    # Core
    "BackupConfig",
    "BackupResult",
    "create_backup",
    "restore_backup",
    "verify_backup",
    "VerifyReport",
    "Mismatch",
    # Plan / execute
    "BackupPlan",
    "RestorePlan",
    "RestoreEntry",
    "plan_backup",
    "plan_restore",
    "execute_plan",
    "Selection",
    # Manifest
    "ArchiveInfo",
    "BackupManifest",
    "ManifestEntry",
    "create_manifest",
    "load_manifest",
    # Encryption (age)
    "Identities",
    "Recipients",
    "load_identities",
    "load_recipients",
    # Checksum
    "calculate_checksum",
    "verify_checksum",
    # Backup directory
    "BackupInfo",
    "list_backups",
    "clean_leftovers",
    "find_backup",
    "Selected",
    "check_backups",
    "parse_subset",
    "CheckReport",
    "CheckRow",
    "BackupStorage",
    "LocalStorage",
    # Scheduler
    "BackupScheduler",
    "SchedulerConfig",
    "RunOutcome",
    "Hooks",
    "run_with_hooks",
    # Retention
    "RetentionPolicy",
    "RetentionPlan",
    "RetentionDecision",
    "apply_policy",
    "parse_duration",
    "plan_prune",
    "execute_prune",
    "PruneResult",
    # Locking and monitoring
    "backup_dir_lock",
    "RunRecord",
    "record_run",
    "PruneRecord",
    "record_prune",
    "load_state",
    # Errors
    "BackupError",
    "ConfigError",
    "SourceError",
    "StorageError",
    "ArchiveError",
    "UnsafeArchiveError",
    "ManifestError",
    "VerificationError",
    "RestoreConflictError",
    "LockError",
    "IdentityError",
]
