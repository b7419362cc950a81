"""Removing old backups: plan with the pure retention policy, then delete what it says.

Each prefix is its own group: a policy applied to ``backup`` never removes a
``scheduled_backup``. An archive and its manifest go together, the one that commits a
backup first (the archive in a directory, the manifest in an object store), so a crash
between the two leaves a leftover that is listed as no backup, and that the next run
recognises and removes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, tzinfo

from .catalog import oldest_first_key
from .listing import clean_leftovers, list_backups
from .retention import RetentionDecision, RetentionPlan, RetentionPolicy, apply_policy
from .storage import Location, open_storage
from .storage.base import BackupStorage, ObjectRef

__all__ = ["PruneResult", "execute_prune", "plan_prune"]


@dataclass
class PruneResult:
    """What a prune did (or, in a dry run, would do)."""

    plan: RetentionPlan
    dry_run: bool
    removed: list[str] = field(default_factory=list)
    leftovers: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    @property
    def success(self) -> bool:
        return not self.errors

    def to_dict(self) -> dict[str, object]:
        """Return the result as JSON-ready data."""
        return {
            "dry_run": self.dry_run,
            "success": self.success,
            **self.plan.to_dict(),
            "removed": self.removed,
            "leftovers_removed": self.leftovers,
            "errors": self.errors,
        }


def _utc_now() -> datetime:
    """Return the real time, aware, in UTC: the clock ``plan_prune`` uses by default."""
    return datetime.now(UTC)


def plan_prune(
    backup_dir: Location,
    policy: RetentionPolicy,
    zone: tzinfo,
    prefix: str | None = None,
    *,
    now: Callable[[], datetime] = _utc_now,
) -> RetentionPlan:
    """Given a backup directory, a policy and a clock, return what to keep and remove;
    touch nothing.

    With ``prefix`` only that prefix's backups are considered; without, the policy is
    applied to each prefix separately. The clock is read once: backups dated after that
    moment are kept and listed in the plan's ``future``. Raise ConfigError if the policy
    keeps nothing, ValueError if the clock returns a naive time.
    """
    moment = now()
    storage = open_storage(backup_dir)
    backups = list_backups(storage)
    prefixes = [prefix] if prefix is not None else sorted({b.prefix for b in backups if b.prefix is not None})
    keep: list[RetentionDecision] = []
    remove: list[RetentionDecision] = []
    future: list[RetentionDecision] = []
    for group in prefixes:
        plan = apply_policy(backups, policy, zone, prefix=group, now=moment)
        keep += plan.keep
        remove += plan.remove
        future += plan.future
    if not prefixes:
        apply_policy([], policy, zone, now=moment)  # still refuses an empty policy
    keep, remove = _spare_the_young(storage, keep, remove)
    chosen = set(prefixes)
    return RetentionPlan(
        policy=policy,
        keep=tuple(keep),
        remove=tuple(remove),
        ignored=tuple(b for b in backups if b.prefix not in chosen),
        future=tuple(future),
    )


def _spare_the_young(
    storage: BackupStorage, keep: list[RetentionDecision], remove: list[RetentionDecision]
) -> tuple[list[RetentionDecision], list[RetentionDecision]]:
    """Keep the backups the policy would remove that are younger than the storage's
    grace period, by the storage's clock (an object store's, not this machine's)."""
    grace = storage.grace_seconds
    if grace <= 0 or not remove:
        return keep, remove
    now = storage.now()
    young = [d for d in remove if d.backup.stored_at is not None and now - d.backup.stored_at < grace]
    if not young:
        return keep, remove
    reason = f"younger than the storage's grace period ({grace:g}s)"
    spared = [RetentionDecision(d.backup, (reason,)) for d in young]
    ordered = sorted(keep + spared, key=lambda d: oldest_first_key(d.backup), reverse=True)
    return ordered, [d for d in remove if d not in young]


def execute_prune(backup_dir: Location, plan: RetentionPlan, dry_run: bool = False) -> PruneResult:
    """Given a retention plan, remove the backups it marks (nothing in a dry run).

    Also removes leftovers of interrupted runs. Never raises for a file that cannot be
    removed: each such failure is in ``errors``.
    """
    result = PruneResult(plan=plan, dry_run=dry_run)
    if dry_run:
        return result
    result.leftovers = clean_leftovers(open_storage(backup_dir))
    for decision in plan.remove:
        backup = decision.backup
        try:
            # The commit point first: what is left if this stops half way is a leftover,
            # never a backup missing a part.
            for ref in reversed(backup.objects()):
                _delete(ref)
        except OSError as exc:
            result.errors.append(f"{exc.filename or backup.archive.label}: cannot remove: {exc.strerror or exc}")
            continue
        result.removed.append(backup.backup_id)
    return result


def _delete(ref: ObjectRef) -> None:
    try:
        ref.storage.delete(ref.name)
    except FileNotFoundError:
        pass  # gone already: what was asked
