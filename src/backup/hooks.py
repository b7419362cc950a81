"""Shell commands run around a backup: ``before_backup``, ``after_backup`` and ``on_error``.

The order of events in :func:`run_with_hooks`, and why:

1. ``before_backup`` commands run one after another. The first that fails stops the
   rest and the backup: nothing is written to the backup directory (a backup of a
   database whose dump failed would look good and hold nothing useful). The result
   is a failure whose error names the command, how it failed and the last line it
   wrote; then ``on_error`` runs.
2. The backup runs (whatever callable the caller passes: the scheduler's
   create-and-prune, the command line's create). The caller's ``guard``, the backup
   directory's lock, is held from before the first hook to after the last, so that
   two runs never interleave one's dump with the other's clean-up.
3. After a successful backup, ``after_backup`` commands run in order; the first that
   fails stops the rest. The backup exists and is good, so the result stays a
   success (retention and the state file still count it) and the failure is added to
   its warnings, which reach the log and ``--json``. ``on_error`` does not run:
   it reports a failed backup, and this one did not fail.
4. After a failed backup (or one that raised), every ``on_error`` command runs, even
   if an earlier one failed: each is a separate way of telling someone. Their failures
   are logged and never replace the backup's own error; an exception the backup
   raised is raised again once they have run. An interruption (KeyboardInterrupt,
   SystemExit) runs no hook: whoever stopped us wants us to stop, and a command
   running at that moment is killed with its process group.

How one command runs: ``/bin/sh -c COMMAND`` with stdin from /dev/null, in a session
(and so a process group) of its own, in the source directory, so that a relative path
names a file that will be backed up (in the current directory while the source does
not exist yet). stdout and stderr are read line by line into the ``backup.hooks``
log, each line prefixed with the hook's name, never to our stdout, which may carry
JSON. A command still running after the timeout gets SIGTERM to its whole process
group, then SIGKILL a few seconds later, and counts as failed. Once the shell has
exited, output is read for at most a second more: a background process it left behind
holding the pipe does not hold up the backup (the pipe is closed; the process is
left running).

The environment is the inherited one with these variables set (any inherited values
of the same names are replaced or removed, so a nested run never sees stale ones).
``OBS_BACKUP_DIR`` is also the variable obs-backup reads for its backup directory, so
an ``obs-backup`` command run by a hook works on the same one.

=======================  ==============================================================
``OBS_BACKUP_HOOK``      ``before_backup``, ``after_backup`` or ``on_error``
``OBS_BACKUP_SOURCE``    the source directory (absolute)
``OBS_BACKUP_DIR``       the backup directory (absolute)
``OBS_BACKUP_ID``        after/on_error: the backup's id (empty if none was made)
``OBS_BACKUP_ARCHIVE``   after/on_error: where the archive is (empty if none)
``OBS_BACKUP_STATUS``    after/on_error: ``success`` or ``failure``
``OBS_BACKUP_ERROR``     after/on_error: the error, on one line (empty on success)
``OBS_BACKUP_WARNINGS``  after/on_error: how many warnings the backup had
=======================  ==============================================================
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import re
import selectors
import signal
import subprocess
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from .config import BackupResult
from .errors import BackupError, ConfigError
from .settings import field_default
from .storage import Location, where

__all__ = ["HOOK_NAMES", "HookSettings", "Hooks", "run_with_hooks"]

logger = logging.getLogger(__name__)

HOOK_NAMES = ("before_backup", "after_backup", "on_error")

_SHELL = "/bin/sh"
_TERM_GRACE = 3.0  # seconds between SIGTERM and SIGKILL
_DRAIN_GRACE = 1.0  # seconds output is still read once the shell has exited
_POLL = 0.05  # seconds between checks on a running command
_CHUNK = 65536
_MAX_LINE = 65536  # bytes; a longer run without a newline is logged in pieces
_LABEL_WIDTH = 120  # characters of a command shown in its error message
_LAST_LINE_WIDTH = 200  # characters of a command's last line shown in its error

_ENV_NAMES = (
    "OBS_BACKUP_HOOK",
    "OBS_BACKUP_SOURCE",
    "OBS_BACKUP_DIR",
    "OBS_BACKUP_ID",
    "OBS_BACKUP_ARCHIVE",
    "OBS_BACKUP_STATUS",
    "OBS_BACKUP_ERROR",
    "OBS_BACKUP_WARNINGS",
)


class HookSettings(Protocol):
    """Anything that holds the hook settings under their configuration names
    (``SchedulerConfig``, the command line's parsed settings)."""

    @property
    def before_backup(self) -> Sequence[str]: ...

    @property
    def after_backup(self) -> Sequence[str]: ...

    @property
    def on_error(self) -> Sequence[str]: ...

    @property
    def hook_timeout(self) -> float: ...


@dataclass(frozen=True)
class Hooks:
    """The commands to run around a backup, and how long each may take (seconds).

    A single string is taken as one command. Raise ConfigError for a blank command or
    a timeout that is not a positive number.
    """

    before_backup: tuple[str, ...] = ()
    after_backup: tuple[str, ...] = ()
    on_error: tuple[str, ...] = ()
    timeout: float = field_default("hook_timeout")

    def __post_init__(self) -> None:
        for name in HOOK_NAMES:
            commands = getattr(self, name)
            commands = (commands,) if isinstance(commands, str) else tuple(commands)
            for command in commands:
                if not isinstance(command, str) or not command.strip():
                    raise ConfigError(f"{name}: each hook must be a non-empty shell command, not {command!r}")
            object.__setattr__(self, name, commands)
        timeout = self.timeout
        if isinstance(timeout, bool) or not isinstance(timeout, int | float) or not 0 < timeout < math.inf:
            raise ConfigError(f"hook_timeout must be a positive number of seconds, not {timeout!r}")

    @classmethod
    def from_config(cls, config: HookSettings) -> Hooks:
        """Given a configuration with the hook settings, return its hooks."""
        return cls(
            before_backup=tuple(config.before_backup),
            after_backup=tuple(config.after_backup),
            on_error=tuple(config.on_error),
            timeout=config.hook_timeout,
        )


def run_with_hooks(
    hooks: Hooks,
    backup: Callable[[], BackupResult],
    *,
    source_dir: str | os.PathLike[str],
    backup_dir: Location,
    guard: AbstractContextManager[object] | None = None,
) -> BackupResult:
    """Given the hooks, a callable that makes the backup, and the directories it reads
    and writes, run ``before_backup``, the backup, then ``after_backup`` or ``on_error``
    (see the module's docstring); return the backup's result, a copy of it with an
    ``after_backup`` failure added to its warnings, or, if a ``before_backup`` command
    failed, a failed result naming it (the backup is then not called).

    ``guard`` (the backup directory's lock) is held from before ``before_backup`` to
    after ``after_backup``: two runs must not interleave their dumps and their
    clean-ups. Raise whatever ``backup`` or entering ``guard`` raises, once
    ``on_error`` has run.
    """
    runner = _Runner(hooks.timeout, Path(source_dir).absolute(), where(backup_dir))
    with ExitStack() as held:
        if guard is not None:
            try:
                held.enter_context(guard)
            except Exception as exc:  # the lock not had: a failed run, as any other
                runner.run_all("on_error", hooks.on_error, _Facts(status="failure", error=_describe(exc)))
                raise
        return _run_guarded(runner, hooks, backup)


def _run_guarded(runner: _Runner, hooks: Hooks, backup: Callable[[], BackupResult]) -> BackupResult:
    started = time.monotonic()
    failure = runner.run_in_order("before_backup", hooks.before_backup)
    if failure is not None:
        logger.error("%s; no backup made", failure)
        runner.run_all("on_error", hooks.on_error, _Facts(status="failure", error=failure))
        return BackupResult(success=False, error=failure, duration_seconds=time.monotonic() - started)
    try:
        result = backup()
    except Exception as exc:
        runner.run_all("on_error", hooks.on_error, _Facts(status="failure", error=_describe(exc)))
        raise
    facts = _Facts.of(result)
    if not result.success:
        runner.run_all("on_error", hooks.on_error, facts)
        return result
    failure = runner.run_in_order("after_backup", hooks.after_backup, facts)
    if failure is None:
        return result
    logger.warning("%s; the backup itself is complete", failure)
    return dataclasses.replace(result, warnings=[*result.warnings, failure])


@dataclass(frozen=True)
class _Facts:
    """What ``after_backup`` and ``on_error`` commands are told about the backup."""

    status: str
    error: str = ""
    backup_id: str = ""
    archive: str = ""
    warnings: int = 0

    @classmethod
    def of(cls, result: BackupResult) -> _Facts:
        archive = result.archive or (str(result.backup_path) if result.backup_path is not None else "")
        return cls(
            status="success" if result.success else "failure",
            error="" if result.success else (result.error or "backup failed"),
            backup_id=result.backup_id or "",
            archive=archive,
            warnings=len(result.warnings),
        )

    def environment(self) -> dict[str, str]:
        return {
            "OBS_BACKUP_ID": self.backup_id,
            "OBS_BACKUP_ARCHIVE": self.archive,
            "OBS_BACKUP_STATUS": self.status,
            "OBS_BACKUP_ERROR": _one_line(self.error),
            "OBS_BACKUP_WARNINGS": str(self.warnings),
        }


class _Runner:
    """Runs one backup's hook commands: the same timeout, directories and base environment."""

    def __init__(self, timeout: float, source_dir: Path, backup_dir: str) -> None:
        self._timeout = timeout
        self._source_dir = source_dir
        self._base = {name: value for name, value in os.environ.items() if name not in _ENV_NAMES}
        self._base["OBS_BACKUP_SOURCE"] = str(source_dir)
        self._base["OBS_BACKUP_DIR"] = backup_dir

    def run_in_order(self, hook: str, commands: Sequence[str], facts: _Facts | None = None) -> str | None:
        """Run the commands until one fails; return None, or that failure as one line."""
        for command in commands:
            failure = self.run(hook, command, facts)
            if failure is not None:
                return failure
        return None

    def run_all(self, hook: str, commands: Sequence[str], facts: _Facts) -> None:
        """Run every command; log each failure."""
        for command in commands:
            failure = self.run(hook, command, facts)
            if failure is not None:
                logger.error("%s", failure)

    def run(self, hook: str, command: str, facts: _Facts | None) -> str | None:
        """Run one command; return None if it succeeded, else its failure as one line."""
        label = _label(command)
        environment = {**self._base, "OBS_BACKUP_HOOK": hook, **(facts.environment() if facts else {})}
        # The source may not exist yet (a before_backup command may make it).
        cwd = self._source_dir if self._source_dir.is_dir() else None
        logger.info("%s: running `%s`", hook, " ".join(command.split()))
        try:
            process = subprocess.Popen(
                [_SHELL, "-c", command],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                cwd=cwd,
                env=environment,
                start_new_session=True,
            )
        except OSError as exc:
            return f"{hook} hook `{label}` could not be started: {exc.strerror or exc}"
        output = _OutputLog(hook)
        try:
            timed_out = _follow(process, output, self._timeout)
        finally:
            output.close()
            _abandon(process)
        if timed_out:
            reason = f"timed out after {self._timeout:g} s"
        elif process.returncode == 0:
            return None
        elif process.returncode is not None and process.returncode < 0:
            reason = f"was killed by {_signal_name(-process.returncode)}"
        else:
            reason = f"exited with status {process.returncode}"
        last = output.last_line
        return f"{hook} hook `{label}` {reason}" + (f": {last}" if last else "")


def _follow(process: subprocess.Popen[bytes], output: _OutputLog, timeout: float) -> bool:
    """Log the command's output until it is done; stop it once ``timeout`` seconds have
    passed. Return True if it had to be stopped.

    Done means: the shell has exited (and, if it was stopped, the rest of its process
    group with it, or SIGKILL was sent), and its output has reached end of file or
    stayed open ``_DRAIN_GRACE`` seconds after that.
    """
    assert process.stdout is not None
    pipe = process.stdout.fileno()
    deadline = time.monotonic() + timeout
    stopping = killed = False
    done_at: float | None = None
    with selectors.DefaultSelector() as selector:
        selector.register(pipe, selectors.EVENT_READ)
        reading = True
        while True:
            if reading:
                if selector.select(_POLL):
                    chunk = os.read(pipe, _CHUNK)
                    if chunk:
                        output.feed(chunk)
                    else:
                        reading = False
                        selector.unregister(pipe)
            else:
                time.sleep(_POLL)
            now = time.monotonic()
            if done_at is None:
                exited = process.poll() is not None
                if exited and (not stopping or killed or not _group_alive(process.pid)):
                    done_at = now
                elif now >= deadline and not stopping:
                    stopping = True
                    _signal_group(process.pid, signal.SIGTERM)
                    deadline = now + _TERM_GRACE
                elif now >= deadline and not killed:
                    killed = True
                    _signal_group(process.pid, signal.SIGKILL)
                    deadline = now + _TERM_GRACE
                elif now >= deadline:
                    break  # not even SIGKILL ended the shell (stuck in the kernel): give up on it
            if done_at is not None and (not reading or now - done_at >= _DRAIN_GRACE):
                break
    return stopping


def _group_alive(group: int) -> bool:
    try:
        os.killpg(group, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _signal_group(group: int, signum: int) -> None:
    # The group is the session the shell started (its id is the shell's pid), so it
    # holds only the command and what it started.
    try:
        os.killpg(group, signum)
    except (ProcessLookupError, PermissionError):
        pass


def _abandon(process: subprocess.Popen[bytes]) -> None:
    """Close our end of the output and, if the command is still running (we were
    interrupted), kill its process group and reap it."""
    if process.stdout is not None:
        process.stdout.close()
    if process.poll() is None:
        # Not reaped yet, so its id cannot have been reused: safe to signal.
        _signal_group(process.pid, signal.SIGKILL)
        try:
            process.wait(_TERM_GRACE)
        except subprocess.TimeoutExpired:
            logger.error("hook command (pid %d) did not stop after SIGKILL", process.pid)


class _OutputLog:
    """Splits a command's output into lines and logs each, prefixed with the hook's
    name; remembers the last non-blank one for the command's error message."""

    def __init__(self, hook: str) -> None:
        self._hook = hook
        self._pending = b""
        self.last_line = ""

    def feed(self, chunk: bytes) -> None:
        *lines, self._pending = (self._pending + chunk).split(b"\n")
        if len(self._pending) > _MAX_LINE:
            lines.append(self._pending)
            self._pending = b""
        for line in lines:
            self._log(line)

    def close(self) -> None:
        if self._pending:
            self._log(self._pending)
            self._pending = b""

    def _log(self, raw: bytes) -> None:
        text = raw.decode("utf-8", "backslashreplace").rstrip()
        if not text.strip():
            return
        # A progress display rewrites its line with carriage returns: keep what it ended
        # on. Other control characters (terminal escapes) are shown, not obeyed, in the
        # log, the error message and the state file.
        shown = _CONTROL.sub(lambda match: f"\\x{ord(match.group()):02x}", text.rsplit("\r", 1)[-1])
        logger.info("%s: %s", self._hook, shown)
        self.last_line = _shorten(shown.strip(), _LAST_LINE_WIDTH)


_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f]")


def _label(command: str) -> str:
    """The command as its error shows it: on one line, and shortened if long."""
    return _shorten(" ".join(command.split()), _LABEL_WIDTH)


def _shorten(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 3] + "..."


def _one_line(text: str) -> str:
    return " ".join(line.strip() for line in text.splitlines() if line.strip())


def _describe(exc: Exception) -> str:
    if isinstance(exc, BackupError):
        return _one_line(str(exc))
    return _one_line(f"internal error: {type(exc).__name__}: {exc}")


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"
