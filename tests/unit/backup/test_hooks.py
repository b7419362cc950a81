"""The hooks around a backup (``backup.hooks``): their settings, the order they run in,
what each command is told in its environment, where its output goes, and how a
failure of each kind is reported.

The backup is a stand-in callable returning a ``BackupResult``; the commands are real
(short ``/bin/sh`` one-liners). Timeouts, process groups and real backups are in
``tests/integration/test_hooks.py``.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from backup.config import BackupResult, SchedulerConfig
from backup.errors import ConfigError, LockError
from backup.hooks import Hooks, run_with_hooks

GOOD = BackupResult(
    success=True,
    backup_id="nightly_20260501T030000Z",
    archive="/srv/backups/nightly_20260501T030000Z.tar.gz",
    warnings=["data.txt changed while it was read"],
)
FAILED = BackupResult(success=False, backup_id="nightly_20260501T030000Z", error="/srv/data: no such directory")


class Backup:
    """A stand-in for the backup: returns (or raises) what it is given; counts its calls."""

    def __init__(self, outcome: BackupResult | BaseException = GOOD) -> None:
        self.outcome = outcome
        self.calls = 0

    def __call__(self) -> BackupResult:
        self.calls += 1
        if isinstance(self.outcome, BaseException):
            raise self.outcome
        return self.outcome


@pytest.fixture
def source(tmp_path: Path) -> Path:
    path = tmp_path / "source"
    path.mkdir()
    return path


@pytest.fixture
def run(tmp_path: Path, source: Path) -> Callable[..., BackupResult]:
    """Run ``Hooks(**hooks)`` around ``backup`` over ``tmp_path/source`` and ``tmp_path/backups``."""

    def run_hooks(backup: Callable[[], BackupResult] | None = None, **hooks: Any) -> BackupResult:
        return run_with_hooks(Hooks(**hooks), backup or Backup(), source_dir=source, backup_dir=tmp_path / "backups")

    return run_hooks


def env_dump(path: Path) -> str:
    """A command that writes its environment (NUL-separated) to ``path``."""
    return f"env -0 > '{path}'"


def read_env(path: Path) -> dict[str, str]:
    pairs = (item.split("=", 1) for item in path.read_text(encoding="utf-8").split("\0") if item)
    return {name: value for name, value in pairs}


def hook_messages(caplog: pytest.LogCaptureFixture, level: int = logging.DEBUG) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "backup.hooks" and r.levelno >= level]


# -- settings ------------------------------------------------------------------------------


def test_hooks_are_read_from_the_configuration(tmp_path: Path) -> None:
    config = SchedulerConfig(
        tmp_path / "source",
        tmp_path / "backups",
        before_backup=["pg_dump -f db.sql app"],
        after_backup=("rm db.sql", "curl -fsS https://hc-ping.com/uuid"),
        on_error=["curl -fsS https://hc-ping.com/uuid/fail"],
        hook_timeout=60,
    )

    hooks = Hooks.from_config(config)

    assert hooks == Hooks(
        before_backup=("pg_dump -f db.sql app",),
        after_backup=("rm db.sql", "curl -fsS https://hc-ping.com/uuid"),
        on_error=("curl -fsS https://hc-ping.com/uuid/fail",),
        timeout=60,
    )


def test_the_default_is_no_hooks_and_the_settings_timeout() -> None:
    assert Hooks.from_config(SchedulerConfig(Path("/s"), Path("/d"))) == Hooks()
    assert Hooks().timeout == 3600.0


def test_a_single_string_is_one_command() -> None:
    assert Hooks(before_backup="pg_dump app > db.sql").before_backup == ("pg_dump app > db.sql",)  # type: ignore[arg-type]


@pytest.mark.parametrize("command", ["", "   ", "\n"])
def test_a_blank_command_is_refused(command: str) -> None:
    with pytest.raises(ConfigError, match="after_backup"):
        Hooks(after_backup=("true", command))


@pytest.mark.parametrize("timeout", [0, -1, math.inf, math.nan, True, "60"])
def test_a_timeout_that_is_not_a_positive_number_is_refused(timeout: Any) -> None:
    with pytest.raises(ConfigError, match="hook_timeout"):
        Hooks(timeout=timeout)


# -- order of events -----------------------------------------------------------------------


def test_without_hooks_the_backups_result_is_returned_as_is(run: Callable[..., BackupResult]) -> None:
    backup = Backup()
    assert run(backup) is GOOD
    assert backup.calls == 1


def test_hooks_run_in_order_around_a_successful_backup(run: Callable[..., BackupResult], tmp_path: Path) -> None:
    log = tmp_path / "order.log"
    events: list[str] = []

    def backup() -> BackupResult:
        events.append(log.read_text())
        return GOOD

    result = run(
        backup,
        before_backup=(f"echo before-1 >> '{log}'", f"echo before-2 >> '{log}'"),
        after_backup=(f"echo after-1 >> '{log}'", f"echo after-2 >> '{log}'"),
        on_error=(f"echo on-error >> '{log}'",),
    )

    assert result is GOOD
    assert events == ["before-1\nbefore-2\n"]
    assert log.read_text() == "before-1\nbefore-2\nafter-1\nafter-2\n"


def test_a_failing_before_backup_stops_the_run_and_on_error_sees_why(
    run: Callable[..., BackupResult], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    log = tmp_path / "order.log"
    seen = tmp_path / "on_error.env"
    backup = Backup()
    failing = "echo 'dumping app'; echo 'pg_dump: error: connection refused' >&2; exit 1"

    result = run(
        backup,
        before_backup=(f"echo first >> '{log}'", failing, f"echo never >> '{log}'"),
        after_backup=(f"echo after >> '{log}'",),
        on_error=(env_dump(seen),),
    )

    assert backup.calls == 0
    assert log.read_text() == "first\n"
    expected = f"before_backup hook `{failing}` exited with status 1: pg_dump: error: connection refused"
    assert result.success is False
    assert result.error == expected
    assert result.backup_id is None and result.archive is None
    env = read_env(seen)
    assert env["OBS_BACKUP_HOOK"] == "on_error"
    assert env["OBS_BACKUP_STATUS"] == "failure"
    assert env["OBS_BACKUP_ERROR"] == expected
    assert (env["OBS_BACKUP_ID"], env["OBS_BACKUP_ARCHIVE"], env["OBS_BACKUP_WARNINGS"]) == ("", "", "0")
    errors = hook_messages(caplog, logging.ERROR)
    assert errors == [f"{expected}; no backup made"]


def test_a_failing_after_backup_is_a_warning_on_a_successful_backup(
    run: Callable[..., BackupResult], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    log = tmp_path / "order.log"

    result = run(
        after_backup=("echo 'curl: (6) Could not resolve host: hc-ping.com' >&2; exit 6", f"echo never >> '{log}'"),
        on_error=(f"echo on-error >> '{log}'",),
    )

    warning = (
        "after_backup hook `echo 'curl: (6) Could not resolve host: hc-ping.com' >&2; exit 6` "
        "exited with status 6: curl: (6) Could not resolve host: hc-ping.com"
    )
    assert result.success is True
    assert result.backup_id == GOOD.backup_id and result.archive == GOOD.archive
    assert result.warnings == [*GOOD.warnings, warning]
    assert GOOD.warnings == ["data.txt changed while it was read"]  # the backup's own result is not changed
    assert not log.exists()  # neither the next after_backup command nor on_error ran
    assert hook_messages(caplog, logging.WARNING) == [f"{warning}; the backup itself is complete"]


def test_a_failed_backup_runs_every_on_error_command_and_keeps_its_own_error(
    run: Callable[..., BackupResult], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    seen = tmp_path / "on_error.env"
    log = tmp_path / "order.log"

    result = run(
        Backup(FAILED),
        after_backup=(f"echo after >> '{log}'",),
        on_error=("echo 'mail: cannot send' >&2; exit 3", env_dump(seen)),
    )

    assert result is FAILED
    assert not log.exists()
    env = read_env(seen)
    assert env["OBS_BACKUP_STATUS"] == "failure"
    assert env["OBS_BACKUP_ERROR"] == FAILED.error
    assert env["OBS_BACKUP_ID"] == FAILED.backup_id
    assert env["OBS_BACKUP_ARCHIVE"] == ""
    assert hook_messages(caplog, logging.ERROR) == [
        "on_error hook `echo 'mail: cannot send' >&2; exit 3` exited with status 3: mail: cannot send"
    ]


def test_a_backup_that_raises_runs_on_error_and_the_error_is_raised_again(
    run: Callable[..., BackupResult], tmp_path: Path
) -> None:
    seen = tmp_path / "on_error.env"
    locked = LockError("/srv/backups: locked by pid 42", "/srv/backups")

    with pytest.raises(LockError) as raised:
        run(Backup(locked), on_error=(env_dump(seen), "exit 1"))

    assert raised.value is locked
    env = read_env(seen)
    assert env["OBS_BACKUP_STATUS"] == "failure"
    assert env["OBS_BACKUP_ERROR"] == "/srv/backups: locked by pid 42"


def test_an_unexpected_error_in_the_backup_is_named_for_on_error(
    run: Callable[..., BackupResult], tmp_path: Path
) -> None:
    seen = tmp_path / "on_error.env"

    with pytest.raises(TypeError):
        run(Backup(TypeError("simulated bug")), on_error=(env_dump(seen),))

    assert read_env(seen)["OBS_BACKUP_ERROR"] == "internal error: TypeError: simulated bug"


# -- the environment -----------------------------------------------------------------------


def test_each_hook_sees_the_backup_in_its_environment(
    run: Callable[..., BackupResult], tmp_path: Path, source: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OBS_BACKUP_ID", "stale, from an outer run")
    monkeypatch.setenv("OBS_BACKUP_CONFIG", "/etc/obs-backup.toml")
    monkeypatch.setenv("PGHOST", "db.internal")

    result = run(before_backup=(env_dump(tmp_path / "before.env"),), after_backup=(env_dump(tmp_path / "after.env"),))

    assert result is GOOD
    before = read_env(tmp_path / "before.env")
    assert before["OBS_BACKUP_HOOK"] == "before_backup"
    assert before["OBS_BACKUP_SOURCE"] == str(source)
    assert before["OBS_BACKUP_DIR"] == str(tmp_path / "backups")
    assert "OBS_BACKUP_ID" not in before  # not known yet, and the inherited one is not ours
    assert "OBS_BACKUP_STATUS" not in before
    assert before["PGHOST"] == "db.internal"  # the rest of the environment is inherited
    assert before["OBS_BACKUP_CONFIG"] == "/etc/obs-backup.toml"
    after = read_env(tmp_path / "after.env")
    assert {name: value for name, value in after.items() if name.startswith("OBS_BACKUP_")} == {
        "OBS_BACKUP_HOOK": "after_backup",
        "OBS_BACKUP_SOURCE": str(source),
        "OBS_BACKUP_DIR": str(tmp_path / "backups"),
        "OBS_BACKUP_ID": "nightly_20260501T030000Z",
        "OBS_BACKUP_ARCHIVE": "/srv/backups/nightly_20260501T030000Z.tar.gz",
        "OBS_BACKUP_STATUS": "success",
        "OBS_BACKUP_ERROR": "",
        "OBS_BACKUP_WARNINGS": "1",
        "OBS_BACKUP_CONFIG": "/etc/obs-backup.toml",
    }
    assert after["PGHOST"] == "db.internal"


def test_relative_directories_are_given_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "data").mkdir()
    monkeypatch.chdir(tmp_path)
    seen = tmp_path / "before.env"

    run_with_hooks(Hooks(before_backup=(env_dump(seen),)), Backup(), source_dir="data", backup_dir="backups")

    env = read_env(seen)
    assert (env["OBS_BACKUP_SOURCE"], env["OBS_BACKUP_DIR"]) == (str(tmp_path / "data"), str(tmp_path / "backups"))


def test_a_multiline_error_reaches_on_error_on_one_line(run: Callable[..., BackupResult], tmp_path: Path) -> None:
    seen = tmp_path / "on_error.env"
    failed = BackupResult(success=False, error="archive not written:\n  disk full\n")

    run(Backup(failed), on_error=(env_dump(seen),))

    assert read_env(seen)["OBS_BACKUP_ERROR"] == "archive not written: disk full"


def test_hooks_run_in_the_source_directory(run: Callable[..., BackupResult], tmp_path: Path, source: Path) -> None:
    run(before_backup=("pwd > where.txt",))

    assert (source / "where.txt").read_text() == f"{source}\n"


def test_hooks_run_in_the_current_directory_while_the_source_does_not_exist(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    source = tmp_path / "dumps"
    hooks = Hooks(before_backup=("pwd > where.txt", f"mkdir '{source}'", "pwd > where.txt"))

    run_with_hooks(hooks, Backup(), source_dir=source, backup_dir=tmp_path / "backups")

    assert (tmp_path / "where.txt").read_text() == f"{tmp_path}\n"
    assert (source / "where.txt").read_text() == f"{source}\n"  # made by the hook before it: used from then on


# -- output --------------------------------------------------------------------------------


def test_output_goes_to_the_log_never_to_stdout(
    run: Callable[..., BackupResult], caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str]
) -> None:
    caplog.set_level(logging.INFO, logger="backup.hooks")

    run(
        before_backup=("echo 'dumping app'; echo 'pg_dump: warning: old server' >&2",),
        after_backup=("printf 'no newline at the end'",),
    )

    messages = hook_messages(caplog, logging.INFO)
    assert "before_backup: dumping app" in messages
    assert "before_backup: pg_dump: warning: old server" in messages
    assert "after_backup: no newline at the end" in messages
    assert [r.levelno for r in caplog.records if r.getMessage() == "before_backup: dumping app"] == [logging.INFO]
    captured = capfd.readouterr()
    assert captured.out == ""
    assert "dumping app" not in captured.err and "old server" not in captured.err


def test_quotes_and_non_ascii_in_commands_and_output(
    run: Callable[..., BackupResult], source: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="backup.hooks")
    target = source / "café ☕.txt"
    command = """printf '%s\\n' "it's \\"quoted\\"" 'naïve $HOME' > 'café ☕.txt'; echo 'Grüße, 世界'; exit 4"""

    result = run(before_backup=(command,))

    assert target.read_text(encoding="utf-8") == 'it\'s "quoted"\nnaïve $HOME\n'
    assert "before_backup: Grüße, 世界" in hook_messages(caplog)
    assert result.error == f"before_backup hook `{command}` exited with status 4: Grüße, 世界"


def test_output_that_is_not_utf8_is_logged_escaped(
    run: Callable[..., BackupResult], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="backup.hooks")

    run(before_backup=("printf 'caf\\351\\n'",))

    assert "before_backup: caf\\xe9" in hook_messages(caplog)


# -- how a failure is described ------------------------------------------------------------


def test_a_command_that_fails_silently_is_named_with_its_status(run: Callable[..., BackupResult]) -> None:
    assert run(before_backup=("exit 2",)).error == "before_backup hook `exit 2` exited with status 2"


def test_a_command_killed_by_a_signal_names_the_signal(run: Callable[..., BackupResult]) -> None:
    assert run(before_backup=("kill -KILL $$",)).error == "before_backup hook `kill -KILL $$` was killed by SIGKILL"


def test_a_command_not_found(run: Callable[..., BackupResult]) -> None:
    error = run(before_backup=("no-such-command-xyz --dump",)).error
    assert error is not None
    assert error.startswith("before_backup hook `no-such-command-xyz --dump` exited with status 127: ")
    assert "not found" in error


def test_the_error_names_a_long_command_on_one_line_and_its_last_line(run: Callable[..., BackupResult]) -> None:
    command = "echo progress 10%\n\necho 'pg_dump: error: query failed'\necho\n" + "true " * 40 + "&& exit 1"

    error = run(before_backup=(command,)).error

    assert error is not None and "\n" not in error
    label = " ".join(command.split())[:117] + "..."
    assert error == f"before_backup hook `{label}` exited with status 1: pg_dump: error: query failed"


def test_a_shell_that_cannot_start_fails_the_hook(
    run: Callable[..., BackupResult], monkeypatch: pytest.MonkeyPatch
) -> None:
    import backup.hooks

    monkeypatch.setattr(backup.hooks, "_SHELL", "/nonexistent/sh")
    backup_run = Backup()

    result = run(backup_run, before_backup=("true",))

    assert backup_run.calls == 0
    assert result.error is not None
    assert result.error.startswith("before_backup hook `true` could not be started: ")


def test_the_environment_of_our_process_is_left_alone(run: Callable[..., BackupResult]) -> None:
    before = dict(os.environ)
    run(before_backup=("true",), after_backup=("true",))
    assert dict(os.environ) == before


def test_an_interrupted_backup_runs_no_hook(run: Callable[..., BackupResult], tmp_path: Path) -> None:
    with pytest.raises(KeyboardInterrupt):
        run(Backup(KeyboardInterrupt()), on_error=(f"touch '{tmp_path / 'ran'}'",))

    assert not (tmp_path / "ran").exists()
