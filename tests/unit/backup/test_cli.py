"""The command line (``backup.cli``), in-process and fast: a parser derived from the
settings table, where each setting's value comes from (flag, then the TOML file's
command table, then its top level, then the default), exit codes and one-line errors,
the shapes of ``--json`` output, and names that are not valid UTF-8.

Round trips through real processes and long runs are in ``tests/integration``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
from datetime import time
from pathlib import Path
from typing import Any

import pytest

import backup.cli
from backup.cli import build_parser
from backup.config import SchedulerConfig
from backup.retention import RetentionPolicy
from backup.settings import COMMANDS, SETTINGS, Setting, settings_for
from backup.stream.compression import COMPRESSIONS
from shared.time_helpers import system_zone_name
from support.backups import make_source
from support.cli import run_cli

ERROR = "obs-backup: error: "
NOT_UTF8 = os.fsdecode(b"caf\xe9.txt")  # the byte 0xE9 alone is not UTF-8


def command_parser(command: str) -> argparse.ArgumentParser:
    """Return the sub-parser of one command."""
    parser = build_parser()
    subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    chosen: argparse.ArgumentParser = subparsers.choices[command]
    return chosen


def options_of(command: str) -> dict[str, argparse.Action]:
    """Return a command's arguments by destination (without --help)."""
    return {action.dest: action for action in command_parser(command)._actions if action.dest != "help"}


def help_text(capsys: pytest.CaptureFixture[str], command: str) -> str:
    """Return ``obs-backup COMMAND --help`` with its whitespace collapsed (argparse wraps)."""
    code, out, err = run_cli(capsys, command, "--help")
    assert (code, err) == (0, "")
    return " ".join(out.split())


def write_toml(directory: Path, text: str, name: str = "obs-backup.toml") -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    path.write_text(text)
    return path


def json_out(capsys: pytest.CaptureFixture[str], *argv: str) -> Any:
    """Run a command expected to succeed with ``--json``; return what it printed, parsed."""
    code, out, err = run_cli(capsys, *argv, "--json")
    assert code == 0, err
    return json.loads(out)


def error_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith(ERROR)]


# -- the parser is derived from the settings table ---------------------------------------------


@pytest.mark.parametrize("command", COMMANDS)
def test_each_commands_arguments_are_exactly_its_settings(command: str) -> None:
    """Spelling, positional or not, choices and help text all come from the table; a
    setting the command line does not take (``cli=False``) has no option."""
    options = options_of(command)
    expected = {s.key: s for s in settings_for(command) if s.cli}
    assert set(options) == set(expected)
    for key, setting in expected.items():
        action = options[key]
        assert tuple(action.option_strings) == setting.flags_in(command), key
        if setting.positional_in(command):
            assert action.metavar == (setting.metavar or key.upper()) and action.nargs == "?"
        elif not setting.flags:
            # A positional elsewhere, an option here (backup_dir in restore, verify ...).
            assert action.option_strings == ["--" + key.replace("_", "-")]
        assert (tuple(action.choices) if action.choices else None) == setting.choices, key
        assert action.help is not None and action.help.startswith(setting.help), key
    file_only = [s.key for s in settings_for(command) if not s.cli]
    assert not set(file_only) & set(options)


def test_settings_the_command_line_does_not_take_are_still_settings() -> None:
    """Hooks and checksum_algorithm are set in the TOML file or the library only."""
    assert [s.key for s in SETTINGS if not s.cli] == [
        "before_backup",
        "after_backup",
        "on_error",
        "hook_timeout",
        "checksum_algorithm",
    ]


def test_compression_choices_come_from_the_compression_table(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """One choice per row of the table; each choice makes that row's archive."""
    for command in ("create", "schedule"):
        choices = options_of(command)["compression"].choices
        assert choices is not None
        assert sorted(choices) == sorted(row.cli_name for row in COMPRESSIONS.values())
    source = make_source(tmp_path / "source")
    for row in COMPRESSIONS.values():
        plan = json_out(capsys, "create", str(source), str(tmp_path / "b"), "--compression", row.cli_name, "--dry-run")
        assert plan["compression"] == row.name
        assert plan["archive_path"].endswith(row.suffix)
    code, _, err = run_cli(capsys, "create", str(source), str(tmp_path / "b"), "--compression", "lz4")
    assert code == 2 and "invalid choice: 'lz4'" in error_lines(err)[0]


@pytest.mark.parametrize(
    ("command", "shown"),
    [
        ("create", "--lock-timeout SECONDS wait this long for another run (default: 60)"),
        ("prune", "--lock-timeout SECONDS wait this long for another run (default: 60)"),
        ("schedule", "--lock-timeout SECONDS wait this long for another run (default: 600)"),
        ("create", "--prefix PREFIX backup id prefix (default: backup)"),
        ("schedule", "--prefix PREFIX backup id prefix (default: scheduled_backup)"),
        ("schedule", "--at HH:MM wall-clock time of the daily run (default: 03:00)"),
        ("schedule", "--retention-days N keep N days of backups (when no keep-* rule is given) (default: 7)"),
        ("create", "--compression {gz,bz2,xz,zst,none} compression (default: gz)"),
    ],
)
def test_help_shows_each_commands_own_default(capsys: pytest.CaptureFixture[str], command: str, shown: str) -> None:
    """schedule waits 600 s for the lock, create and prune 60 s: they once disagreed with
    the library without anyone seeing it in --help."""
    assert shown in help_text(capsys, command)


@pytest.mark.parametrize("command", COMMANDS)
def test_help_shows_every_default_from_the_table(capsys: pytest.CaptureFixture[str], command: str) -> None:
    text = help_text(capsys, command)
    assert text.startswith(f"usage: obs-backup {command}")
    for setting in settings_for(command):
        default = setting.default_for(command)
        # None and () are "nothing", and keep-*'s 0 is "no such rule": not shown.
        if setting.cli and setting.action == "store" and default not in (None, (), 0):
            shown = f"{default:g}" if isinstance(default, float) else str(default)
            assert f"{setting.help} (default: {shown})" in text, setting.key
        elif setting.cli:
            assert f"{setting.help} (default:" not in text, setting.key


def test_the_schedule_default_lock_timeout_is_the_librarys() -> None:
    setting = next(s for s in SETTINGS if s.key == "lock_timeout")
    assert setting.default_for("schedule") == SchedulerConfig(Path("/s"), Path("/b")).lock_timeout == 600.0
    assert setting.default_for("create") == setting.default_for("prune") == 60.0


# -- where a value comes from: flag > [command] table > top level > default ---------------------


@pytest.mark.parametrize(
    ("toml", "flags", "prefix"),
    [
        (None, (), "backup"),
        ("", (), "backup"),
        ('prefix = "top"\n', (), "top"),
        ('prefix = "top"\n[schedule]\nprefix = "theirs"\n', (), "top"),
        ('prefix = "top"\n[create]\nprefix = "table"\n', (), "table"),
        ('[create]\nprefix = "table"\n', ("--prefix", "flag"), "flag"),
        ('prefix = "top"\n[create]\nprefix = "table"\n', ("--prefix", "flag"), "flag"),
        ('prefix = "top"\n', ("--prefix", "flag"), "flag"),
    ],
    ids=["no-file", "empty-file", "top", "other-commands-table", "table", "flag-over-table", "flag-over-both", "flag"],
)
def test_where_create_takes_its_prefix_from(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], toml: str | None, flags: tuple[str, ...], prefix: str
) -> None:
    source = make_source(tmp_path / "source")
    config = [] if toml is None else ["--config", str(write_toml(tmp_path / "conf", toml))]

    plan = json_out(capsys, *config, "create", str(source), str(tmp_path / "b"), "--dry-run", *flags)

    assert plan["backup_id"].startswith(f"{prefix}_")
    assert not (tmp_path / "b").exists()


def test_each_setting_is_resolved_on_its_own(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A flag for one setting does not make the others fall back to their defaults."""
    source = make_source(tmp_path / "source")
    toml = write_toml(tmp_path / "conf", 'compression = "xz"\n[create]\nprefix = "table"\nlevel = 1\n')

    plan = json_out(capsys, "--config", str(toml), "create", str(source), str(tmp_path / "b"), "--dry-run")
    assert (plan["backup_id"].split("_")[0], plan["compression"]) == ("table", "xz")

    plan = json_out(
        capsys, "--config", str(toml), "create", str(source), str(tmp_path / "b"), "--dry-run", "--prefix", "flag"
    )
    assert (plan["backup_id"].split("_")[0], plan["compression"]) == ("flag", "xz")


@pytest.mark.parametrize(
    ("toml", "flags", "policy"),
    [
        ("keep_last = 3\n[prune]\nkeep-last = 2\n", (), "keep-last 2"),
        ("keep_last = 3\n", (), "keep-last 3"),
        ("keep_last = 3\n[prune]\nkeep-last = 2\n", ("--keep-last", "1"), "keep-last 1"),
        ("keep_daily = 4\n", ("--keep-last", "1"), "keep-last 1, keep-daily 4"),
    ],
)
def test_where_prune_takes_its_policy_from(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], toml: str, flags: tuple[str, ...], policy: str
) -> None:
    (tmp_path / "b").mkdir()
    path = write_toml(tmp_path / "conf", toml)

    result = json_out(capsys, "--config", str(path), "prune", str(tmp_path / "b"), "--dry-run", *flags)

    assert result["policy"] == policy


def test_prune_without_a_policy_anywhere_is_a_usage_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Every keep-* default is 0: no policy at all, which prune refuses."""
    (tmp_path / "b").mkdir()
    path = write_toml(tmp_path / "conf", "[schedule]\nkeep_last = 2\n")

    code, out, err = run_cli(capsys, "--config", str(path), "prune", str(tmp_path / "b"))

    assert (code, out) == (2, "")
    assert err.startswith(f"{ERROR}prune needs a policy") and err.count("\n") == 1


class _Built(Exception):
    """Raised by the stand-in scheduler once it has the configuration the CLI built."""


@pytest.fixture
def scheduler_configs(monkeypatch: pytest.MonkeyPatch) -> list[SchedulerConfig]:
    """Stop ``schedule`` at the scheduler's construction and keep the configuration the
    command line built: the loop itself is the scheduler's tests' business."""
    built: list[SchedulerConfig] = []

    def construct(config: SchedulerConfig, **_: object) -> None:
        built.append(config)
        raise _Built

    monkeypatch.setattr(backup.cli, "BackupScheduler", construct)
    # The start-up checks of the directories have tests of their own.
    monkeypatch.setattr(backup.cli, "_check_can_run", lambda config: None)
    return built


def run_schedule(capsys: pytest.CaptureFixture[str], built: list[SchedulerConfig], *argv: str) -> SchedulerConfig:
    code, _, err = run_cli(capsys, *argv)
    assert code == 1 and f"internal error: {_Built.__name__}" in err, err
    assert len(built) == 1
    return built.pop()


def test_schedule_defaults_are_the_librarys(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], scheduler_configs: list[SchedulerConfig]
) -> None:
    config = run_schedule(capsys, scheduler_configs, "schedule", str(tmp_path / "s"), str(tmp_path / "b"))

    # Every default is the library's but the zone: the command line counts days in
    # the system's zone (the library keeps the seed's Asia/Seoul).
    assert config == SchedulerConfig(tmp_path / "s", tmp_path / "b", tz_name=system_zone_name())


def test_schedule_takes_the_file_then_the_flags(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    scheduler_configs: list[SchedulerConfig],
) -> None:
    conf = tmp_path / "conf"
    path = write_toml(
        conf,
        """
source = "data"
backup_dir = "out"
lock_timeout = 30
tz = "Europe/Paris"

[schedule]
at = "04:15"
tz = "UTC"
metrics_file = "metrics/obs.prom"
keep_daily = 3
catch_up = false
checksum_algorithm = "sha512"
""",
    )
    monkeypatch.chdir(tmp_path)

    config = run_schedule(capsys, scheduler_configs, "--config", str(path), "schedule")

    assert (config.source_dir, config.backup_dir, config.metrics_file) == (
        conf / "data",
        conf / "out",
        conf / "metrics" / "obs.prom",
    )
    assert (config.schedule_time, config.tz_name, config.lock_timeout) == (time(4, 15), "UTC", 30.0)
    assert (config.catch_up, config.checksum_algorithm, config.prefix) == (False, "sha512", "scheduled_backup")
    assert config.policy == RetentionPolicy(keep_daily=3)

    config = run_schedule(
        capsys,
        scheduler_configs,
        *("--config", str(path), "schedule", "here", "there"),
        *("--at", "05:00", "--lock-timeout", "5", "--keep-daily", "7", "--prefix", "nightly"),
    )

    assert (config.source_dir, config.backup_dir, config.metrics_file) == (
        tmp_path / "here",
        tmp_path / "there",
        conf / "metrics" / "obs.prom",
    )
    assert (config.schedule_time, config.tz_name, config.lock_timeout) == (time(5, 0), "UTC", 5.0)
    assert (config.policy, config.prefix) == (RetentionPolicy(keep_daily=7), "nightly")


def test_no_catch_up_flag(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], scheduler_configs: list[SchedulerConfig]
) -> None:
    argv = ("schedule", str(tmp_path / "s"), str(tmp_path / "b"))
    assert run_schedule(capsys, scheduler_configs, *argv).catch_up is True
    assert run_schedule(capsys, scheduler_configs, *argv, "--no-catch-up").catch_up is False


# -- positional arguments from the file, relative to the file -----------------------------------


@pytest.fixture
def elsewhere(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Run from a directory that is not the config file's: a relative path in the file
    must not resolve against it."""
    cwd = tmp_path / "elsewhere"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    return cwd


def test_source_and_backup_dir_from_the_file_are_relative_to_it(
    tmp_path: Path, elsewhere: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    conf = tmp_path / "conf"
    make_source(conf / "data")
    path = write_toml(conf, 'source = "data"\nbackup_dir = "../backups"\n')

    plan = json_out(capsys, "--config", str(path), "create", "--dry-run")

    assert plan["source_dir"] == str(conf / "data")
    assert Path(plan["archive_path"]).parent == conf / "../backups"
    assert os.listdir(elsewhere) == []


def test_positional_arguments_on_the_command_line_win_and_are_relative_to_the_cwd(
    tmp_path: Path, elsewhere: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    make_source(tmp_path / "conf" / "data")
    make_source(elsewhere / "here")
    path = write_toml(tmp_path / "conf", 'source = "data"\nbackup_dir = "out"\n')

    plan = json_out(capsys, "--config", str(path), "create", "here", "--dry-run")

    assert plan["source_dir"] == str(elsewhere / "here")  # absolute, as every path in --json
    assert Path(plan["archive_path"]).parent == tmp_path / "conf" / "out"


def test_restore_archive_and_target_from_a_command_table(
    tmp_path: Path, elsewhere: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    conf = tmp_path / "conf"
    created = json_out(capsys, "create", str(make_source(tmp_path / "source")), str(conf / "b"))
    name = Path(created["path"]).name
    path = write_toml(conf, f'[restore]\narchive = "b/{name}"\ntarget = "restored"\n')

    plan = json_out(capsys, "--config", str(path), "restore", "--dry-run")

    assert (plan["archive_path"], plan["restore_dir"]) == (str(conf / "b" / name), str(conf / "restored"))
    assert not (conf / "restored").exists()


def test_an_archive_named_in_the_file_is_looked_for_beside_it(
    tmp_path: Path, elsewhere: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write_toml(tmp_path / "conf", 'archive = "missing.tar.gz"\n')

    code, out, err = run_cli(capsys, "--config", str(path), "verify")

    assert (code, out) == (1, "")
    assert err == f"obs-backup: error: {tmp_path / 'conf' / 'missing.tar.gz'}: archive not found\n"


@pytest.mark.parametrize(
    ("argv", "missing"),
    [(("create",), "create: SOURCE is required"), (("create", "src"), "create: BACKUP_DIR is required")],
)
def test_a_positional_argument_missing_everywhere_is_a_usage_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: tuple[str, ...], missing: str
) -> None:
    path = write_toml(tmp_path, "[prune]\nkeep_last = 1\n")
    code, out, err = run_cli(capsys, "--config", str(path), *argv)
    assert (code, out) == (2, "")
    assert err == f"{ERROR}{missing} (on the command line or in --config)\n"


# -- values of the wrong type in the file --------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "toml", "line", "message"),
    [
        (("create", "/s", "/b"), 'source = "/s"\n[create]\nlevel = "5"\n', 3, "level must be an integer, not str '5'"),
        (("create", "/s", "/b"), "level = '5'\n", 1, "level must be an integer, not str '5'"),
        (("prune", "/b"), "keep_daily = 'x'\n", 1, "keep-daily must be an integer, not str 'x'"),
        (("prune", "/b"), '[prune]\n\nkeep-daily = "x"\n', 3, "keep-daily must be an integer, not str 'x'"),
        (
            ("schedule", "/s", "/b"),
            "[schedule]\nretention-days = 7.5\n",
            2,
            "retention-days must be an integer, not float 7.5",
        ),
        (("schedule", "/s", "/b"), "lock_timeout = '60'\n", 1, "lock-timeout must be a number, not str '60'"),
        (("create", "/s", "/b"), "dry_run = 'yes'\n", 1, "dry-run must be true or false, not str 'yes'"),
    ],
)
def test_a_wrong_type_in_the_file_is_a_usage_error_naming_the_key_and_its_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: tuple[str, ...], toml: str, line: int, message: str
) -> None:
    """These once ended in "internal error: TypeError", exit 1."""
    path = write_toml(tmp_path, toml)

    code, out, err = run_cli(capsys, "--config", str(path), *argv)

    assert (code, out) == (2, "")
    assert err == f"{ERROR}{path}:{line}: {message}\n"


# -- exit codes and one-line errors ----------------------------------------------------------------


def test_success_is_exit_0_and_quiet_prints_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    source = make_source(tmp_path / "source")
    code, out, err = run_cli(capsys, "create", str(source), str(tmp_path / "b"))
    assert (code, err) == (0, "")
    assert out.startswith(f"created {tmp_path / 'b'}/backup_") and out.count("\n") == 1
    assert run_cli(capsys, "create", str(source), str(tmp_path / "b"), "-q") == (0, "", "")
    (tmp_path / "empty").mkdir()
    assert run_cli(capsys, "list", str(tmp_path / "empty")) == (0, f"no complete backups in {tmp_path / 'empty'}\n", "")
    code, out, err = run_cli(capsys, "list", str(tmp_path / "none"))
    assert (code, out, err) == (1, "", f"obs-backup: error: {tmp_path / 'none'}: backup directory does not exist\n")


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        ((), "the following arguments are required: COMMAND"),
        (("frobnicate",), "invalid choice: 'frobnicate'"),
        (("create", "s", "b", "--bogus"), "unrecognized arguments: --bogus"),
        (("create", "s", "b", "--level", "x"), "argument --level: invalid int value: 'x'"),
        (("prune", "b", "--lock-timeout", "soon"), "argument --lock-timeout: invalid float value: 'soon'"),
    ],
    ids=["no-command", "unknown-command", "unknown-option", "not-an-int", "not-a-number"],
)
def test_argument_errors_are_exit_2_with_the_usage_and_one_error_line(
    capsys: pytest.CaptureFixture[str], argv: tuple[str, ...], needle: str
) -> None:
    code, out, err = run_cli(capsys, *argv)
    assert (code, out) == (2, "")
    assert err.startswith("usage: obs-backup")
    assert len(error_lines(err)) == 1 and needle in error_lines(err)[0]
    assert err.endswith("\n") and error_lines(err)[0] == err.splitlines()[-1]


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (("create", "{source}", "{tmp}/b", "--level", "99"), "out of range"),
        (("create", "{source}", "{tmp}/b", "--prefix", "../evil"), "invalid prefix '../evil'"),
        (("create", "{source}", "{source}"), "the backup directory is the source directory"),
        (("prune", "{tmp}", "--keep-last", "1", "--tz", "Mars/Olympus"), "Mars/Olympus"),
        (("prune", "{tmp}", "--keep-within", "7 days"), "invalid duration '7 days'"),
        (("schedule", "{source}", "{tmp}/b", "--at", "25:00"), "invalid time of day '25:00'"),
        (("schedule", "{source}", "{tmp}/b", "--retention-days", "0"), "retention_days"),
        (("--config", "{tmp}/nope.toml", "list", "{tmp}"), "nope.toml: cannot read config file"),
    ],
)
def test_bad_settings_are_exit_2_with_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: tuple[str, ...], needle: str
) -> None:
    source = make_source(tmp_path / "source")
    before = sorted(os.listdir(tmp_path))
    code, out, err = run_cli(capsys, *(a.format(tmp=tmp_path, source=source) for a in argv))
    assert (code, out) == (2, "")
    assert err.startswith(ERROR) and err.count("\n") == 1 and needle in err
    assert sorted(os.listdir(tmp_path)) == before  # nothing made, not even a lock file


def test_failures_are_exit_1_with_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run_cli(capsys, "create", str(tmp_path / "missing"), str(tmp_path / "b"))
    assert (code, out) == (1, "")
    assert err == f"{ERROR}{tmp_path / 'missing'}: source directory does not exist\n"

    code, out, err = run_cli(capsys, "prune", str(tmp_path / "none"), "--keep-last", "1")
    assert (code, out) == (1, "")
    assert err == f"{ERROR}{tmp_path / 'none'}: backup directory does not exist\n"

    not_tar = tmp_path / "x.tar.gz"
    not_tar.write_bytes(b"not an archive")
    code, out, err = run_cli(capsys, "restore", str(not_tar), str(tmp_path / "t"))
    assert (code, out) == (1, "")
    assert err.startswith(ERROR) and err.count("\n") == 1 and "not a valid tar archive" in err


@pytest.mark.parametrize(
    ("raised", "code", "line"),
    [
        (RuntimeError("boom"), 1, "obs-backup: error: internal error: RuntimeError: boom"),
        (KeyboardInterrupt(), 130, "obs-backup: interrupted"),
        (BrokenPipeError(), 1, None),
    ],
    ids=["bug", "interrupt", "broken-pipe"],
)
def test_what_no_command_expects_is_still_an_exit_code_and_at_most_one_line(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    raised: BaseException,
    code: int,
    line: str | None,
) -> None:
    def fail(*args: object, **kwargs: object) -> None:
        raise raised

    monkeypatch.setattr(backup.cli, "list_backups", fail)
    assert run_cli(capsys, "list", str(tmp_path)) == (code, "", "" if line is None else line + "\n")


# -- --json output ---------------------------------------------------------------------------------

RESULT_KEYS = {
    "success",
    "exit_code",
    "error",
    "backup_id",
    "path",
    "manifest_path",
    "archive_size",
    "entry_count",
    "file_count",
    "total_size",
    "verified",
    "warnings",
    "duration_seconds",
}
BACKUP_PLAN_KEYS = {
    "dry_run",
    "success",
    "notices",
    "action",
    "backup_id",
    "source_dir",
    "archive_path",
    "manifest_path",
    "compression",
    "encrypted_to",
    "file_count",
    "entry_count",
    "total_bytes",
    "excluded",
    "problems",
}
RESTORE_PLAN_KEYS = {
    "dry_run",
    "success",
    "action",
    "archive_path",
    "restore_dir",
    "manifest_path",
    "verify_checksums",
    "overwrite",
    "entry_count",
    "total_bytes",
    "entries",
    "conflicts",
    "skipped",
    "warnings",
}
LIST_KEYS = {
    "backup_id",
    "prefix",
    "archive_path",
    "manifest_path",
    "created_at",
    "size_bytes",
    "file_count",
    "compression",
    "encrypted_to",
    "sidecar_path",
    "problem",
    "future",
}
VERIFY_KEYS = {
    "success",
    "cause",
    "checksums",
    "ciphertext_only",
    "archive_path",
    "manifest_path",
    "ok",
    "checked_entries",
    "checked_bytes",
    "missing",
    "extra",
    "mismatched",
    "problems",
    "duration_seconds",
}
PRUNE_KEYS = {"dry_run", "success", "policy", "keep", "remove", "future", "removed", "leftovers_removed", "errors"}
DECISION_KEYS = {"backup_id", "created_at", "archive_path", "reasons"}


def test_json_output_shapes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Each command's --json is one JSON document on stdout, with these keys."""
    source = make_source(tmp_path / "source")
    backups = tmp_path / "b"

    plan = json_out(capsys, "create", str(source), str(backups), "--dry-run")
    assert set(plan) == BACKUP_PLAN_KEYS and plan["dry_run"] is True
    listed_plan = json_out(capsys, "create", str(source), str(backups), "--dry-run", "--list")
    assert set(listed_plan) == BACKUP_PLAN_KEYS | {"entries"}
    assert [(e["path"], e["type"]) for e in listed_plan["entries"]] == [
        ("data.txt", "file"),
        ("sub", "dir"),
        ("sub/more.txt", "file"),
    ]

    created = json_out(capsys, "create", str(source), str(backups))
    assert set(created) == RESULT_KEYS
    assert (created["success"], created["error"], created["file_count"], created["warnings"]) == (True, None, 2, [])
    assert created["path"] == str(backups / f"{created['backup_id']}.tar.gz")

    [row] = json_out(capsys, "list", str(backups))
    assert set(row) == LIST_KEYS
    assert (row["backup_id"], row["archive_path"], row["future"]) == (created["backup_id"], created["path"], False)

    report = json_out(capsys, "verify", created["path"])
    assert set(report) == VERIFY_KEYS and report["ok"] is True

    restore_plan = json_out(capsys, "restore", created["path"], str(tmp_path / "t"), "--dry-run")
    assert set(restore_plan) == RESTORE_PLAN_KEYS and restore_plan["dry_run"] is True
    restored = json_out(capsys, "restore", created["path"], str(tmp_path / "t"))
    assert set(restored) == RESULT_KEYS and restored["verified"] is True

    pruned = json_out(capsys, "prune", str(backups), "--keep-last", "1", "--dry-run")
    assert set(pruned) == PRUNE_KEYS
    assert [set(decision) for decision in pruned["keep"]] == [DECISION_KEYS]


def test_a_failed_restore_with_json_is_a_json_result_on_stdout(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    created = json_out(capsys, "create", str(make_source(tmp_path / "source")), str(tmp_path / "b"))
    target = make_source(tmp_path / "target")  # every file is already there: a conflict

    code, out, err = run_cli(capsys, "restore", created["path"], str(target), "--json")

    result = json.loads(out)
    assert (code, err) == (1, f"{ERROR}{result['error']}\n")  # the one line on stderr too
    assert set(result) == RESULT_KEYS and result["exit_code"] == 1
    assert result["success"] is False and "already exist" in result["error"]


# -- names that are not valid UTF-8 ------------------------------------------------------------------


def test_a_name_that_is_not_utf8_prints_as_escaped_bytes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """As the manifest shows it: caf\\xe9.txt, not a crash and not a replacement character."""
    source = make_source(tmp_path / "source")
    (source / NOT_UTF8).write_text("bytes\n")
    (source / "unicodé.txt").write_text("valid UTF-8 prints as itself\n")

    code, out, err = run_cli(capsys, "create", str(source), str(tmp_path / "b"), "--dry-run", "--list")
    assert (code, err) == (0, "")
    assert re.search(r"^\(dry run; not making any changes\) archive file +caf\\xe9\.txt$", out, re.MULTILINE)
    assert re.search(r"archive file +unicodé\.txt$", out, re.MULTILINE)

    plan = json_out(capsys, "create", str(source), str(tmp_path / "b"), "--dry-run", "--list")
    assert {"caf\\xe9.txt", "unicodé.txt"} <= {e["path"] for e in plan["entries"]}


def test_an_error_naming_a_path_that_is_not_utf8_is_one_escaped_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / NOT_UTF8
    code, out, err = run_cli(capsys, "create", str(missing), str(tmp_path / "b"))
    assert (code, out) == (1, "")
    assert err == f"{ERROR}{tmp_path}/caf\\xe9.txt: source directory does not exist\n"


def test_a_mismatch_in_a_name_that_is_not_utf8_is_reported_escaped(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = make_source(tmp_path / "source")
    (source / NOT_UTF8).write_text("bytes\n")
    created = json_out(capsys, "create", str(source), str(tmp_path / "b"))
    manifest_path = Path(created["manifest_path"])
    manifest = json.loads(manifest_path.read_text())
    for entry in manifest["files"]:
        if entry["path"] == "caf\\xe9.txt":
            entry["checksum"] = "0" * 64
    manifest_path.write_text(json.dumps(manifest))

    code, out, err = run_cli(capsys, "verify", created["path"])

    assert (code, out) == (1, "")
    assert "mismatch: caf\\xe9.txt" in err
    report = json.loads(run_cli(capsys, "verify", created["path"], "--json")[1])
    assert [m["path"] for m in report["mismatched"]] == ["caf\\xe9.txt"]


def test_settings_shared_by_every_command_are_in_every_command() -> None:
    """--json and --quiet are the output settings of all commands; every command that
    names a backup takes a prefix and an object store's endpoint."""
    every: list[Setting] = [s for s in SETTINGS if set(s.commands) == set(COMMANDS)]
    assert {s.key for s in every} == {"json", "quiet", "verbose", "log_level", "prefix", "endpoint_url"}
