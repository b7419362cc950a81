"""The in-process daily scheduler: back up at a wall-clock time in a time zone, then
apply the retention policy.

Time is injected (``now=``, ``sleep=``), so tests run a simulated month in
milliseconds. The rules it keeps:

* The next run is computed in the configured zone. A wall time that does not exist
  that day (clocks spring forward over it) runs at the instant the clocks change; one
  that occurs twice (clocks fall back) runs once, at its first occurrence.
* Waiting is done in bounded slices against UTC instants, re-reading the clock each
  time, so a clock change or a suspended machine neither shifts nor skips a run (nor
  repeats one, if the clock is stepped back while it runs).
* If the last complete backup predates the most recent scheduled time when the
  scheduler starts, one backup runs at once (catch-up), once. A backup dated after
  now (made while the clock ran ahead) does not count as the last one, or it would
  suppress the catch-up until the clock caught up with it.
* Retention is measured against the scheduler's own clock; backups dated after it
  are kept, logged as warnings and counted in the run record and the metrics.
* The backup runs in a worker thread; the event loop stays free. A failed backup
  reaches ``on_error``; an exception raised by a callback is logged and ignored.
* Each run goes through ``backup.hooks.run_with_hooks``, holding the backup
  directory's lock from before ``before_backup`` to after ``after_backup``: two runs
  (a manual ``create`` and the schedule) must not interleave one's dump with the
  other's clean-up. A lock not had is a failed run, and reaches ``on_error``. A failing
  ``before_backup`` command is a failed run (recorded, metrics included); a failing
  ``after_backup`` one is a warning on a successful run.
* ``stop()`` lets a backup in progress finish, so it either completes or (if the
  process is killed) leaves only leftovers that the next run removes.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

from shared.time_helpers import TimeAwareMixin

from .config import BackupResult, SchedulerConfig
from .core import create_backup
from .errors import BackupError
from .hooks import Hooks, run_with_hooks
from .listing import list_backups
from .locations import S3Location
from .monitor import RunRecord, error_to_record, record_run
from .prune import PruneResult, execute_prune, plan_prune
from .retention import is_dated_in_future
from .storage import open_storage
from .storage.base import BackupStorage

__all__ = ["BackupScheduler", "RunOutcome", "SchedulerConfig"]

logger = logging.getLogger(__name__)

_MAX_SLEEP_SECONDS = 60.0


@dataclass
class RunOutcome:
    """One run: the backup's result and, if it succeeded, what retention did."""

    result: BackupResult
    prune: PruneResult | None = None
    damaged_backups: int | None = None  # found by the check after the run (None: not checked)
    # The scheduler was told to stop while before_backup ran: no backup was begun, and
    # nothing is recorded or reported (a restart is not a failure).
    stopped: bool = False


class _StopRequested(BaseException):
    """Raised in place of the backup when the scheduler is stopping (a BaseException,
    so that on_error does not run: nothing failed)."""


class _BackupIdAdapter(logging.LoggerAdapter):  # type: ignore[type-arg]
    def process(self, msg: Any, kwargs: Any) -> tuple[Any, Any]:
        backup_id = self.extra.get("backup_id") if self.extra else None
        kwargs.setdefault("extra", {})["backup_id"] = backup_id
        return (f"[{backup_id}] {msg}" if backup_id else msg), kwargs


class BackupScheduler(TimeAwareMixin):
    """Runs a backup every day at ``schedule_time`` in ``tz_name``, then retention."""

    def __init__(
        self,
        config: SchedulerConfig,
        on_complete: Callable[[BackupResult], None] | None = None,
        on_error: Callable[[str], None] | None = None,
        *,
        now: Callable[[], datetime] | None = None,
        sleep: Callable[[float], Awaitable[None]] | None = None,
        max_sleep: float = _MAX_SLEEP_SECONDS,
        storage: BackupStorage | None = None,
    ) -> None:
        self.config = config
        self._storage = storage
        self._tz_name = config.tz_name
        self._init_timezone()
        config.retention_policy()  # refuse a bad policy now, not at 03:00
        self._hooks = Hooks.from_config(config)  # and bad hook settings
        self._on_complete = on_complete
        self._on_error = on_error
        self._clock = now
        self._sleep = sleep
        self._max_sleep = max_sleep
        self._running = False
        self._stopping = False
        self._stop_event: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        # The most recent outcomes, for callers and tests; bounded so a long-lived
        # scheduler does not accumulate every manifest it ever wrote.
        self.runs: deque[RunOutcome] = deque(maxlen=32)

    @property
    def storage(self) -> BackupStorage:
        """Where the backups go: the storage given, or ``config.backup_dir``'s."""
        return self._storage if self._storage is not None else open_storage(self.config.backup_dir)

    # -- time -----------------------------------------------------------------

    def _now(self) -> datetime:
        moment = self._clock() if self._clock is not None else datetime.now(UTC)
        if moment.tzinfo is None:
            raise ValueError("the scheduler's clock must return aware datetimes")
        return moment.astimezone(self._tz)

    def occurrence_on(self, day: date) -> datetime:
        """Given a local date, return the instant the scheduled wall time occurs that day.

        A wall time skipped by a spring-forward change maps to the instant of the
        change; one repeated by a fall-back change maps to its first occurrence.
        """
        wall = datetime.combine(day, self.config.schedule_time.replace(tzinfo=None))
        first = wall.replace(tzinfo=self._tz, fold=0)
        if first.astimezone(UTC).astimezone(self._tz).replace(tzinfo=None) == wall:
            return first
        # In a gap: fold=1 reads the wall time with the later offset, fold=0 with the
        # earlier one; the change happens between those two instants.
        later = wall.replace(tzinfo=self._tz, fold=1)
        low, high = sorted((int(later.timestamp()), int(first.timestamp())))
        after = later.utcoffset()
        while low < high:
            middle = (low + high) // 2
            if datetime.fromtimestamp(middle, self._tz).utcoffset() == after:
                high = middle
            else:
                low = middle + 1
        return datetime.fromtimestamp(low, self._tz)

    def next_run_after(self, moment: datetime) -> datetime:
        """Given an aware instant, return the first scheduled run strictly after it."""
        start = moment.astimezone(self._tz).date() - timedelta(days=1)
        for offset in range(4):
            candidate = self.occurrence_on(start + timedelta(days=offset))
            if _utc(candidate) > _utc(moment):
                return candidate
        raise AssertionError("no scheduled time within three days")  # pragma: no cover

    def previous_run_at_or_before(self, moment: datetime) -> datetime:
        """Given an aware instant, return the latest scheduled run at or before it."""
        start = moment.astimezone(self._tz).date() + timedelta(days=1)
        for offset in range(4):
            candidate = self.occurrence_on(start - timedelta(days=offset))
            if _utc(candidate) <= _utc(moment):
                return candidate
        raise AssertionError("no scheduled time within three days")  # pragma: no cover

    # -- one run --------------------------------------------------------------

    def run_once(self) -> RunOutcome:
        """Run the ``before_backup`` hooks, back up now, apply retention if the backup
        succeeded, run ``after_backup`` or ``on_error``; record the outcome.

        Blocks; holds the backup directory's lock for the backup and retention (not
        for the hooks). Never raises: an operational failure (a failing
        ``before_backup`` command included), or any unexpected error, is in the
        outcome's result, and so in the state file and the metrics.
        """
        config = self.config
        started = self._now()
        prune: PruneResult | None = None

        def back_up() -> BackupResult:
            nonlocal prune
            if self._stopping:  # told to stop while before_backup ran: begin nothing
                raise _StopRequested
            result, prune = self._back_up_and_prune()
            return result

        try:
            result = run_with_hooks(
                self._hooks,
                back_up,
                source_dir=config.source_dir,
                backup_dir=config.backup_dir,
                guard=self.storage.lock(config.lock_timeout),
            )
        except _StopRequested:
            logger.info("stopping: the backup after before_backup was not begun")
            return RunOutcome(BackupResult(success=False, error="stopped before the backup began"), stopped=True)
        except BackupError as exc:
            result = BackupResult(success=False, error=str(exc))
            logger.error("backup not started: %s", exc)
        except Exception as exc:  # a bug: recorded as a failed run, and the schedule goes on
            logger.exception("scheduled backup crashed")
            result = BackupResult(success=False, error=f"backup failed: internal error: {type(exc).__name__}: {exc}")
        outcome = RunOutcome(result, prune)
        if config.check_after:
            outcome.damaged_backups = self._check_backups()
        try:
            self._record(outcome, started)
        except Exception:
            logger.exception("cannot record the run's outcome")
        return outcome

    def _back_up_and_prune(self) -> tuple[BackupResult, PruneResult | None]:
        """Back up (the caller holds the lock), then apply retention if the backup
        succeeded; return the backup's result and what retention did. Raise
        BackupError if the backup could not start (the configuration)."""
        config = self.config
        prune = None
        result = create_backup(
            config.backup_config(),
            metadata={"scheduler": "obs-backup", "tz": config.tz_name},
            now=self._now,
            storage=self.storage,
        )
        log = _BackupIdAdapter(logger, {"backup_id": result.backup_id})
        if result.success:
            log.info("backup complete: %s (%d bytes)", result.archive, result.archive_size)
            for warning in result.warnings:
                log.warning("%s", warning)
            prune = self._apply_retention(log)
            for dest in config.copy_to:
                error = self._copy_to(dest, log)
                if error is not None:
                    result.warnings.append(error)
        else:
            log.error("backup failed: %s", result.error)
        return result, prune

    def _copy_to(self, dest: Path | S3Location, log: logging.LoggerAdapter) -> str | None:  # type: ignore[type-arg]
        """Copy the backups ``dest`` lacks there (``copy_to``); return what went wrong,
        if anything. A failed copy leaves the backup that just succeeded a success, with
        a warning."""
        from .copy import copy_backups

        target = open_storage(dest)
        try:
            target.ensure()
            with target.lock(self.config.lock_timeout):
                copied = copy_backups(self.storage, target, prefix=self.config.prefix)
        except (BackupError, OSError) as exc:
            message = str(exc) if isinstance(exc, BackupError) else f"{exc.filename or target.location}: {exc}"
            log.error("copy to %s failed: %s", target.location, message)
            return f"copy to {target.location} failed: {message}"
        for error in copied.errors:
            log.error("copy to %s: %s", target.location, error)
        if copied.errors:
            return f"copy to {target.location}: {len(copied.errors)} backups not copied: {copied.errors[0]}"
        return None

    def _apply_retention(self, log: logging.LoggerAdapter) -> PruneResult | None:  # type: ignore[type-arg]
        """Apply the policy after a successful backup; a failure here is logged, and
        does not turn the backup that just succeeded into a failure."""
        config = self.config
        try:
            plan = plan_prune(self.storage, config.retention_policy(), self._tz, prefix=config.prefix, now=self._now)
            prune = execute_prune(self.storage, plan)
        except (BackupError, OSError) as exc:
            log.error("retention not applied: %s", exc)
            return None
        for decision in plan.future:
            created = decision.backup.created_at
            log.warning(
                "%s is dated in the future (%s): kept; check the clock",
                decision.backup.backup_id,
                created.isoformat() if created else "?",
            )
        for removed in prune.removed:
            log.info("retention removed %s", removed)
        for error in prune.errors:
            log.error("retention: %s", error)
        return prune

    def _check_backups(self) -> int | None:
        """Check every backup of this prefix after a run (``check_after``): all of them
        for structure, and one seventh of them, a different seventh each day, for
        content. Return how many are damaged (None if the check could not run)."""
        from .check import check_backups

        part = self._now().date().toordinal() % 7 + 1
        try:
            report = check_backups(self.storage, prefix=self.config.prefix, subset=(part, 7))
        except (BackupError, OSError) as exc:
            logger.error("check after the run failed: %s", exc)
            return None
        except Exception:  # a bug in the check must not lose the run's record
            logger.exception("check after the run crashed")
            return None
        for row in report.damaged:
            logger.error("check: %s: %s: %s", row.backup_id, row.status, row.detail)
        (logger.info if report.ok else logger.error)("check: %s", report.summary())
        return len(report.damaged)

    def _record(self, outcome: RunOutcome, started: datetime) -> None:
        result = outcome.result
        record = RunRecord(
            started_at=started,
            finished_at=self._now(),
            success=result.success,
            prefix=self.config.prefix,
            backup_id=result.backup_id,
            archive_path=result.archive,
            archive_size=result.archive_size,
            file_count=result.manifest.file_count if result.manifest else 0,
            error=error_to_record(result.error, bool(self.config.encrypt_to or self.config.recipients_file)),
            removed=list(outcome.prune.removed) if outcome.prune else [],
            future_dated_backups=len(outcome.prune.plan.future) if outcome.prune else None,
            warnings=len(result.warnings),  # an after_backup hook's failure among them
            changed_files=len(result.changed_files),
            damaged_backups=outcome.damaged_backups,
        )
        storage = self.storage
        try:
            # A run that failed to take the lock may not have made the directory; it is
            # recorded all the same.
            storage.ensure()
            record_run(storage, record, self.config.metrics_file)
        except BackupError as exc:
            logger.error("cannot record the run's outcome: %s", exc)
        except OSError as exc:
            logger.error("cannot record the run's outcome: %s: %s", exc.filename, exc.strerror or exc)

    # -- the loop -------------------------------------------------------------

    async def start(self) -> None:
        """Start the scheduler loop as a background task on the running event loop."""
        if self._task is not None and not self._task.done():
            return
        self._running = True
        self._stopping = False
        self._stop_event = asyncio.Event()
        self._task = asyncio.create_task(self._run_loop(), name="obs-backup-scheduler")
        logger.info("backup scheduler started; next run at %s", self.next_run_after(self._now()).isoformat())

    async def stop(self) -> None:
        """Stop the loop; a backup in progress is allowed to finish first (one whose
        ``before_backup`` hooks are still running is not begun)."""
        self._running = False
        self._stopping = True
        if self._stop_event is not None:
            self._stop_event.set()
        if self._task is not None:
            await self._task
            self._task = None
        logger.info("backup scheduler stopped")

    async def wait(self) -> None:
        """Wait until the loop ends (after ``stop()``)."""
        if self._task is not None:
            await self._task

    async def _run_loop(self) -> None:
        why = self._catch_up_reason() if self.config.catch_up else None
        if why is not None:
            logger.info("%s; running one now", why)
            await self._run_and_report()
        last: datetime | None = None
        while self._running:
            target = self.next_run_after(self._now())
            if last is not None and _utc(target) == _utc(last):
                # The clock was stepped back while that backup ran: do not repeat it.
                target = self.next_run_after(last)
            logger.info("next backup at %s", target.isoformat())
            if not await self._sleep_until(target):
                break
            last = target
            await self._run_and_report()

    def _catch_up_reason(self) -> str | None:
        """Return why a backup should run at start (None: it should not): there is none
        yet (a first start: nothing was missed, but nothing is protected either), or
        the last scheduled run was missed."""
        try:
            backups = list_backups(self.storage, prefix=self.config.prefix)
        except BackupError as exc:
            logger.error("cannot list backups for catch-up: %s", exc)
            return None
        now = self._now()
        times = [b.created_at for b in backups if b.created_at is not None and not is_dated_in_future(b, now)]
        if not times:
            return f"no backup with prefix {self.config.prefix!r} yet"
        scheduled = self.previous_run_at_or_before(now)
        if _utc(max(times, key=_utc)) < _utc(scheduled):
            return f"the scheduled backup of {scheduled.isoformat()} was missed"
        return None

    async def _sleep_until(self, target: datetime) -> bool:
        """Sleep in slices until ``target``; return False if stopped first."""
        while self._running:
            remaining = (_utc(target) - _utc(self._now())).total_seconds()
            if remaining <= 0:
                return True
            await self._pause(min(remaining, self._max_sleep))
        return False

    async def _pause(self, seconds: float) -> None:
        if self._sleep is not None:
            await self._sleep(seconds)
            return
        assert self._stop_event is not None
        try:
            await asyncio.wait_for(self._stop_event.wait(), timeout=seconds)
        except TimeoutError:
            pass

    async def _run_and_report(self) -> None:
        try:
            outcome = await asyncio.to_thread(self.run_once)
        except Exception:  # a bug, not an operational failure: keep the schedule alive
            logger.exception("scheduled backup crashed")
            outcome = RunOutcome(BackupResult(success=False, error="scheduled backup crashed; see the log"))
        self.runs.append(outcome)
        if outcome.stopped:
            return
        result = outcome.result
        if not result.success:
            self._call(self._on_error, result.error or "backup failed")
        elif outcome.damaged_backups:
            # The run succeeded, but the check after it found backups that would not
            # restore: whoever on_error tells must hear of it.
            self._call(
                self._on_error,
                f"check after the run: {outcome.damaged_backups} damaged "
                f"backup{'s' if outcome.damaged_backups != 1 else ''} (see the log)",
            )
        self._call(self._on_complete, result)

    @staticmethod
    def _call(callback: Callable[[Any], None] | None, argument: Any) -> None:
        if callback is None:
            return
        try:
            callback(argument)
        except Exception:
            logger.exception("a scheduler callback raised; the scheduler carries on")


def _utc(moment: datetime) -> datetime:
    return moment.astimezone(UTC)
