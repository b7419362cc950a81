"""Which backups to keep: a pure decision, with the reason for each.

``apply_policy`` touches no file. Its semantics follow restic's ``forget`` policy:

* Backups dated after ``now`` are set aside first (see below); the rules are applied
  to the rest exactly as if those did not exist.
* Backups are walked newest to oldest.
* ``keep_last=N`` keeps the N newest.
* ``keep_within=D`` keeps every backup created within D of the newest backup that is
  not dated after now (not of now itself: if backups stop succeeding, the history they
  left does not expire; restic measures it the same way).
* ``keep_hourly/daily/weekly/monthly/yearly=N``: each of the N most recent periods that
  has a backup keeps its newest backup. Periods are taken in the configured time zone;
  weeks are ISO weeks (Monday to Sunday). If a rule still has count left when the walk
  reaches the oldest backup, the oldest is kept too, which keeps the history longest.
* One backup may be kept by several rules; all its reasons are listed.

On top of that, for safety: the newest backup (not dated after now) is always kept,
whatever the policy; a policy that keeps nothing at all is refused; backups whose
creation time is unknown are kept; only backups with the given prefix are considered.

A backup dated after ``now`` was made while the clock was wrong (a dead RTC battery
before NTP synced, say). Counted as the newest, it would make every real backup look
old and ``keep_within`` would delete the whole history, and each later backup seconds
after it was made. So such backups are always kept, with the reason
:data:`FUTURE_REASON`, count towards no rule, and are listed in ``RetentionPlan.future``
so that callers can warn about the clock.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta, tzinfo

from .catalog import BackupInfo, parse_backup_id
from .errors import ConfigError

__all__ = [
    "FUTURE_REASON",
    "RetentionDecision",
    "RetentionPlan",
    "RetentionPolicy",
    "apply_policy",
    "is_dated_in_future",
    "parse_duration",
]

FUTURE_REASON = "dated in the future: kept; check the clock"

# Weeks, days and hours only: in restic "m" means months and elsewhere minutes, so a
# unit that could be read either way is refused rather than guessed.
_DURATION = re.compile(r"(?:(?P<w>\d+)w)?(?:(?P<d>\d+)d)?(?:(?P<h>\d+)h)?")


def parse_duration(text: str) -> timedelta:
    """Given a duration such as ``7d``, ``2w``, ``36h`` or ``1w2d12h``, return it; raise ConfigError."""
    match = _DURATION.fullmatch(text.strip().lower())
    if not match or not any(match.groupdict().values()):
        raise ConfigError(f"invalid duration {text!r}: use weeks, days and hours, e.g. 7d, 2w, 36h or 1d12h")
    parts = {key: int(value or 0) for key, value in match.groupdict().items()}
    duration = timedelta(weeks=parts["w"], days=parts["d"], hours=parts["h"])
    if not duration:
        raise ConfigError(f"invalid duration {text!r}: it must be longer than zero")
    return duration


@dataclass(frozen=True)
class RetentionPolicy:
    """How many backups to keep, by rule. Zero (or None) turns a rule off."""

    keep_within: timedelta | None = None
    keep_last: int = 0
    keep_hourly: int = 0
    keep_daily: int = 0
    keep_weekly: int = 0
    keep_monthly: int = 0
    keep_yearly: int = 0

    def __post_init__(self) -> None:
        for name in ("keep_last", "keep_hourly", "keep_daily", "keep_weekly", "keep_monthly", "keep_yearly"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must not be negative")
        if self.keep_within is not None and self.keep_within <= timedelta(0):
            raise ConfigError("keep_within must be a positive duration")

    @classmethod
    def from_days(cls, retention_days: int) -> RetentionPolicy:
        """Given the seed's ``retention_days``, return a policy keeping that many days of backups."""
        if retention_days <= 0:
            raise ConfigError(f"retention_days must be positive, not {retention_days}")
        return cls(keep_within=timedelta(days=retention_days))

    def is_empty(self) -> bool:
        """Return whether this policy would keep nothing by itself."""
        counts = (self.keep_last, self.keep_hourly, self.keep_daily, self.keep_weekly, self.keep_monthly)
        return self.keep_within is None and not any(counts) and not self.keep_yearly

    def describe(self) -> str:
        """Return the policy as ``keep-within 7d, keep-daily 7``."""
        parts = []
        if self.keep_within is not None:
            parts.append(f"keep-within {_format_duration(self.keep_within)}")
        for name in ("last", "hourly", "daily", "weekly", "monthly", "yearly"):
            count = getattr(self, f"keep_{name}")
            if count:
                parts.append(f"keep-{name} {count}")
        return ", ".join(parts) or "keep nothing"


def _format_duration(value: timedelta) -> str:
    hours = int(value.total_seconds() // 3600)
    if hours % 24 == 0:
        return f"{hours // 24}d"
    return f"{hours}h"


@dataclass(frozen=True)
class RetentionDecision:
    """One backup and why it is kept (``reasons`` empty means it is removed)."""

    backup: BackupInfo
    reasons: tuple[str, ...] = ()

    @property
    def keep(self) -> bool:
        return bool(self.reasons)


@dataclass(frozen=True)
class RetentionPlan:
    """The outcome of a policy: what to keep and what to remove, newest first.

    ``future`` repeats the decisions of ``keep`` whose backups are dated after the
    plan's ``now``: kept whatever the policy, and worth a warning about the clock.
    """

    policy: RetentionPolicy
    keep: tuple[RetentionDecision, ...] = ()
    remove: tuple[RetentionDecision, ...] = ()
    ignored: tuple[BackupInfo, ...] = field(default_factory=tuple)
    future: tuple[RetentionDecision, ...] = ()

    def to_dict(self) -> dict[str, object]:
        """Return the plan as JSON-ready data."""

        def row(decision: RetentionDecision) -> dict[str, object]:
            created = decision.backup.created_at
            return {
                "backup_id": decision.backup.backup_id,
                "created_at": None if created is None else created.isoformat(),
                "archive_path": decision.backup.archive.label,
                "reasons": list(decision.reasons),
            }

        return {
            "policy": self.policy.describe(),
            "keep": [row(d) for d in self.keep],
            "remove": [row(d) for d in self.remove],
            "future": [row(d) for d in self.future],
        }


_Bucket = Callable[[datetime], Hashable]
_RULES: tuple[tuple[str, str, _Bucket], ...] = (
    ("keep_hourly", "hourly", lambda t: (t.year, t.month, t.day, t.hour)),
    ("keep_daily", "daily", lambda t: (t.year, t.month, t.day)),
    ("keep_weekly", "weekly", lambda t: t.isocalendar()[:2]),
    ("keep_monthly", "monthly", lambda t: (t.year, t.month)),
    ("keep_yearly", "yearly", lambda t: t.year),
)


def is_dated_in_future(backup: BackupInfo, now: datetime) -> bool:
    """Given a backup and an aware ``now``, return whether it claims to be created after now."""
    return backup.created_at is not None and backup.created_at > now


def apply_policy(
    backups: Sequence[BackupInfo],
    policy: RetentionPolicy,
    zone: tzinfo,
    prefix: str | None = None,
    *,
    now: datetime,
) -> RetentionPlan:
    """Given complete backups, a policy, the zone that periods are counted in and the
    current time, return what to keep and what to remove, with reasons; touch nothing.

    Backups with another prefix (when ``prefix`` is given) are neither kept nor removed:
    they come back in ``ignored``. Backups dated after ``now`` are kept and come back in
    ``future`` too; the policy is applied to the others as if those did not exist.
    Raise ConfigError if the policy keeps nothing, ValueError if ``now`` is naive.
    """
    if now.tzinfo is None or now.utcoffset() is None:
        raise ValueError("apply_policy needs an aware now")
    if policy.is_empty():
        raise ConfigError("refusing a retention policy that keeps nothing; set keep_within or a keep_* count")
    considered = [b for b in backups if prefix is None or b.prefix == prefix]
    ignored = tuple(b for b in backups if prefix is not None and b.prefix != prefix)
    future = sorted((b for b in considered if is_dated_in_future(b, now)), key=_newest_first_key)
    dated = sorted(
        (b for b in considered if b.created_at is not None and not is_dated_in_future(b, now)),
        key=_newest_first_key,
    )
    undated = [b for b in considered if b.created_at is None]

    counts = {attr: getattr(policy, attr) for attr, _, _ in _RULES}
    last_bucket: dict[str, Hashable] = {}
    newest_time = dated[0].created_at if dated else None
    decisions = [RetentionDecision(b, (FUTURE_REASON,)) for b in future]
    for index, backup in enumerate(dated):
        moment = backup.created_at
        assert moment is not None and newest_time is not None
        reasons = []
        if index == 0:
            reasons.append("newest backup (always kept)")
        if index < policy.keep_last:
            reasons.append(f"last {policy.keep_last}")
        # Strictly newer than the cut-off, as restic's keep-within counts it.
        if policy.keep_within is not None and moment > newest_time - policy.keep_within:
            reasons.append(f"within {_format_duration(policy.keep_within)} of the newest")
        local = moment.astimezone(zone)
        for attr, label, bucket_of in _RULES:
            if counts[attr] <= 0:
                continue
            bucket = bucket_of(local)
            # The oldest backup is kept while a rule has count left, even if it shares a
            # period with a newer one: that keeps the longest history the counts allow.
            if attr not in last_bucket or bucket != last_bucket[attr] or index == len(dated) - 1:
                last_bucket[attr] = bucket
                counts[attr] -= 1
                reasons.append(f"{label} {getattr(policy, attr) - counts[attr]}/{getattr(policy, attr)}")
        decisions.append(RetentionDecision(backup, tuple(reasons)))
    decisions += [RetentionDecision(b, ("creation time unknown (never removed automatically)",)) for b in undated]
    return RetentionPlan(
        policy=policy,
        keep=tuple(d for d in decisions if d.keep),
        remove=tuple(d for d in decisions if not d.keep),
        ignored=ignored,
        future=tuple(decisions[: len(future)]),
    )


def _newest_first_key(backup: BackupInfo) -> tuple[float, int, str]:
    assert backup.created_at is not None
    # Inside the same second the later claim is newer: "-10" before "-3" before "-2"
    # before none (comparing the ids as text would put the id without "-N" first).
    parsed = parse_backup_id(backup.backup_id)
    sequence = parsed[2] if parsed is not None else 1
    return (-backup.created_at.timestamp(), -sequence, _reverse(backup.backup_id))


def _reverse(text: str) -> str:
    # The last tie-break, so the order never depends on the input's.
    return "".join(chr(0x10FFFF - ord(ch)) for ch in text)
