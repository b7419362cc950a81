"""Every setting, defined once: its type, default, help, command-line spelling and the
field of ``BackupConfig`` / ``SchedulerConfig`` it fills.

Three things are derived from ``SETTINGS`` and nothing else: the library's dataclass
defaults (``backup.config``), the command line's options (``backup.cli``), and the
``--config FILE.toml`` loader here, which checks every value's type as the command line
would and names the key and its line when one is wrong.

TOML files: top-level keys apply to every command; a table named after a command
(``[create]``, ``[schedule]``, ``[prune]`` ...) applies to that command and wins over
the top level. Keys are the long option names, with ``-`` or ``_`` (``backup_dir``,
``keep-daily``). Options given on the command line win over both.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import time as clock_time
from pathlib import Path
from typing import Any

from shared.time_helpers import system_zone_name

from .catalog import parse_backup_id
from .errors import ConfigError
from .hashing import DEFAULT_ALGORITHM
from .locations import S3Location, as_location, is_url
from .stream.compression import cli_choices

__all__ = [
    "COMMANDS",
    "CONFIG_ENV",
    "SETTINGS",
    "Kind",
    "Setting",
    "field_default",
    "load_settings",
    "parse_clock",
    "settings_for",
]

COMMANDS = ("create", "restore", "verify", "list", "ls", "diff", "check", "schedule", "prune", "copy")

# Read when the command line does not give the setting (and before the config file).
CONFIG_ENV = "OBS_BACKUP_CONFIG"


@dataclass(frozen=True)
class Kind:
    """A type of setting: how to read it from the command line and from TOML."""

    name: str  # for messages: "an integer"
    parse: Callable[[str], Any]  # command-line text -> value (raise ValueError)
    accepts: Callable[[Any], bool]  # whether a TOML value has this type
    convert: Callable[[Any], Any] = lambda value: value  # TOML value -> value


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_strings(value: Any) -> bool:
    return isinstance(value, str) or (isinstance(value, list) and all(isinstance(item, str) for item in value))


def _location(text: str) -> Path | S3Location:
    try:
        return as_location(text)
    except ConfigError as exc:
        raise ValueError(str(exc)) from None


def parse_clock(text: str) -> clock_time:
    """Given ``HH:MM``, return the time; raise ConfigError if it is not one."""
    try:
        hour, minute = (int(part) for part in str(text).split(":"))
        return clock_time(hour, minute)
    except ValueError:
        raise ConfigError(
            f"invalid time of day {text!r} (--at, or at in the config file): use HH:MM, e.g. 03:00"
        ) from None


STR = Kind("a string", str, lambda v: isinstance(v, str))
PATH = Kind("a path (a string)", Path, lambda v: isinstance(v, str), Path)
INT = Kind("an integer", int, _is_int)
FLOAT = Kind("a number", float, lambda v: _is_int(v) or isinstance(v, float), float)
BOOL = Kind("true or false", lambda text: text, lambda v: isinstance(v, bool))
# A backup location: a directory, or an object store's s3://bucket/prefix.
LOCATION = Kind("a directory or an s3:// URL (a string)", _location, lambda v: isinstance(v, str), _location)
STRINGS = Kind("a list of strings", str, _is_strings, lambda v: [v] if isinstance(v, str) else list(v))


@dataclass(frozen=True)
class Setting:
    """One setting (see the module docstring).

    ``key`` is the command-line destination and the TOML key. ``flags`` are its
    command-line spellings; none makes it a positional argument. ``field`` is the
    configuration field it fills (None for command-line-only settings), through
    ``to_field``. ``default`` applies to every command unless ``defaults`` names one.
    """

    key: str
    kind: Kind
    help: str
    commands: tuple[str, ...]
    default: Any = None
    defaults: Mapping[str, Any] = field(default_factory=dict)
    flags: tuple[str, ...] = ()
    action: str = "store"
    metavar: str | None = None
    choices: tuple[str, ...] | None = None
    field: str | None = None
    to_field: Callable[[Any], Any] = lambda value: value
    relative_to_file: bool = False
    cli: bool = True  # False: set in the TOML file (or the library) only
    # Whether the file is held to ``choices`` too (compression, in the file, also takes
    # its formats' other names, checked when the configuration is validated).
    choices_in_file: bool = True
    # Commands in which a positional setting is an option instead (its flag is
    # ``--`` + key), for those that mostly find it in the config file.
    option_in: tuple[str, ...] = ()
    env: str | None = None  # environment variable read when the command line omits it
    # Computes the command line's default when ``default`` is None (the library keeps its own).
    default_factory: Callable[[], Any] | None = None

    def default_for(self, command: str | None) -> Any:
        """Return the default in ``command`` (None: the library's)."""
        if command is not None and command in self.defaults:
            return self.defaults[command]
        if command is None and "library" in self.defaults:
            return self.defaults["library"]
        if self.default is None and self.default_factory is not None and command is not None:
            return self.default_factory()
        return self.default

    def positional_in(self, command: str) -> bool:
        """Whether this is a positional argument of ``command``."""
        return self.cli and not self.flags and command not in self.option_in

    def flags_in(self, command: str) -> tuple[str, ...]:
        """Return the command-line spellings of this setting in ``command``."""
        if self.flags or not self.cli:
            return self.flags
        return () if self.positional_in(command) else ("--" + self.key.replace("_", "-"),)


_ARCHIVE = ("create", "schedule")
_RETENTION = ("schedule", "prune")
_OUTPUT = COMMANDS


SETTINGS: tuple[Setting, ...] = (
    # -- what and where -----------------------------------------------------------------
    Setting("source", PATH, "directory to back up", _ARCHIVE, field="source_dir", relative_to_file=True),
    Setting(
        "backup_dir",
        LOCATION,
        "directory (or s3://bucket/prefix) that holds the backups",
        (*_ARCHIVE, "list", "prune", "check", "restore", "verify", "ls", "diff"),
        field="backup_dir",
        relative_to_file=True,
        option_in=("restore", "verify", "ls", "diff"),
        metavar="DIR",
        env="OBS_BACKUP_DIR",
    ),
    Setting(
        "copy_source",
        LOCATION,
        "backup location to copy complete backups from",
        ("copy",),
        metavar="SOURCE",
        relative_to_file=True,
    ),
    Setting(
        "copy_dest",
        LOCATION,
        "backup location to copy them to (only the backups it lacks are copied)",
        ("copy",),
        metavar="DEST",
        relative_to_file=True,
    ),
    Setting(
        "copy_to",
        STRINGS,
        "after each backup, copy the backups DEST lacks to DEST (repeatable; a directory or s3:// URL)",
        ("schedule",),
        default=(),
        flags=("--copy-to",),
        action="append",
        metavar="DEST",
        field="copy_to",
        to_field=tuple,
        relative_to_file=True,
    ),
    Setting(
        "endpoint_url",
        STR,
        "S3 API endpoint for s3:// locations, for stores other than AWS "
        "(default: AWS_ENDPOINT_URL_S3 or AWS_ENDPOINT_URL, else AWS)",
        (*_ARCHIVE, "list", "prune", "check", "restore", "verify", "ls", "diff", "copy"),
        flags=("--endpoint-url",),
        metavar="URL",
    ),
    Setting(
        "archive",
        STR,
        "archive or manifest path, backup id, or 'latest' (ids and 'latest' are looked up in --backup-dir)",
        ("restore", "verify", "ls", "diff"),
        metavar="BACKUP",
        relative_to_file=True,
    ),
    Setting(
        "identity",
        PATH,
        "age identity file (AGE-SECRET-KEY-1...) that decrypts encrypted backups",
        ("restore", "verify", "ls", "diff", "check"),
        flags=("--identity",),
        metavar="FILE",
        env="OBS_BACKUP_IDENTITY_FILE",
        relative_to_file=True,
    ),
    Setting(
        "other",
        STR,
        "the backup to compare BACKUP with (same forms as BACKUP)",
        ("diff",),
        metavar="OTHER",
    ),
    Setting(
        "target",
        PATH,
        "directory to restore into (created if missing)",
        ("restore",),
        relative_to_file=True,
        metavar="TARGET",
    ),
    # -- how a backup is made --------------------------------------------------------------
    Setting(
        "compression",
        STR,
        "compression",
        _ARCHIVE,
        default="gz",
        flags=("--compression",),
        choices=tuple(cli_choices()),
        choices_in_file=False,
        field="compression",
        to_field=lambda value: "" if value in ("none", "") else value,
    ),
    Setting(
        "level",
        INT,
        "compression level (default: the format's own)",
        _ARCHIVE,
        flags=("--level",),
        field="compression_level",
    ),
    Setting(
        "prefix",
        STR,
        "backup id prefix",
        (*_ARCHIVE, "list", "prune", "check", "restore", "verify", "ls", "diff", "copy"),
        defaults={"create": "backup", "schedule": "scheduled_backup", "library": "backup"},
        flags=("--prefix",),
        field="prefix",
    ),
    Setting(
        "exclude",
        STRINGS,
        "gitignore-style pattern to leave out (repeatable)",
        _ARCHIVE,
        default=(),
        flags=("--exclude",),
        action="append",
        metavar="PATTERN",
        field="exclude",
        to_field=tuple,
    ),
    Setting(
        "encrypt_to",
        STRINGS,
        "encrypt the backup to this age recipient (age1..., a public key; repeatable): "
        "the identity that decrypts it need not be on this machine",
        _ARCHIVE,
        default=(),
        flags=("--encrypt-to",),
        action="append",
        metavar="RECIPIENT",
        field="encrypt_to",
        to_field=tuple,
    ),
    Setting(
        "recipients_file",
        STRINGS,
        "encrypt the backup to every age recipient in FILE (one per line, as 'age -R' reads it; repeatable)",
        _ARCHIVE,
        default=(),
        flags=("--recipients-file",),
        action="append",
        metavar="FILE",
        field="recipients_file",
        to_field=lambda files: tuple(Path(file) for file in files),
        relative_to_file=True,
    ),
    Setting(
        "skip_unreadable",
        BOOL,
        "skip unreadable files (recorded) instead of failing",
        _ARCHIVE,
        default=False,
        flags=("--skip-unreadable",),
        action="store_true",
        field="on_read_error",
        to_field=lambda skip: "skip" if skip else "fail",
    ),
    Setting(
        "no_manifest",
        BOOL,
        "write the archive only",
        ("create",),
        default=False,
        flags=("--no-manifest",),
        action="store_true",
        field="include_manifest",
        to_field=lambda no_manifest: not no_manifest,
    ),
    Setting(
        "sqlite_snapshot",
        BOOL,
        "copy SQLite databases byte for byte instead of through a consistent snapshot",
        _ARCHIVE,
        default=True,
        flags=("--no-sqlite-snapshot",),
        action="store_false",
        field="sqlite_snapshot",
    ),
    *(
        Setting(
            hook,
            STRINGS,
            help_text,
            _ARCHIVE,
            default=(),
            field=hook,
            to_field=tuple,
            cli=False,
        )
        for hook, help_text in (
            ("before_backup", "shell commands run before each backup; one that fails fails the backup"),
            ("after_backup", "shell commands run after each successful backup"),
            ("on_error", "shell commands run when a backup (or a hook) fails"),
        )
    ),
    Setting(
        "hook_timeout",
        FLOAT,
        "seconds each hook command may run before it is stopped and counted as failed",
        _ARCHIVE,
        default=3600.0,
        field="hook_timeout",
        cli=False,
    ),
    Setting(
        "checksum_algorithm",
        STR,
        "hash of every file in the manifest",
        _ARCHIVE,
        default=DEFAULT_ALGORITHM,
        field="checksum_algorithm",
        cli=False,
    ),
    # -- how a restore is done -------------------------------------------------------------
    Setting(
        "overwrite",
        BOOL,
        "replace entries that already exist",
        ("restore",),
        default=False,
        flags=("--overwrite",),
        action="store_true",
    ),
    Setting(
        "no_verify",
        BOOL,
        "do not check files against the manifest",
        ("restore",),
        default=False,
        flags=("--no-verify",),
        action="store_true",
    ),
    Setting(
        "paths",
        STRINGS,
        "only this path (repeatable)",
        ("restore",),
        flags=("--path",),
        action="append",
        metavar="PATH",
    ),
    Setting(
        "include",
        STRINGS,
        "restore only entries matching this gitignore-style pattern, and what is under them (repeatable)",
        ("restore",),
        flags=("--include",),
        action="append",
        metavar="PATTERN",
    ),
    Setting(
        "restore_exclude",
        STRINGS,
        "do not restore entries matching this gitignore-style pattern, nor what is under them (repeatable)",
        ("restore",),
        flags=("--exclude",),
        action="append",
        metavar="PATTERN",
    ),
    Setting(
        "numeric_owner",
        BOOL,
        "give restored files their archived owner and group ids, not the names' ids here",
        ("restore",),
        default=False,
        flags=("--numeric-owner",),
        action="store_true",
    ),
    Setting(
        "no_same_owner",
        BOOL,
        "as root, leave restored files owned by root instead of their archived owners",
        ("restore",),
        default=False,
        flags=("--no-same-owner",),
        action="store_true",
    ),
    Setting(
        "check_owners",
        BOOL,
        "also compare the owners the archive gives with the manifest's",
        ("verify",),
        default=False,
        flags=("--check-owners",),
        action="store_true",
    ),
    Setting(
        "allow_external_links",
        BOOL,
        "restore symlinks that point outside TARGET",
        ("restore",),
        default=False,
        flags=("--allow-external-links",),
        action="store_true",
    ),
    # -- when, and what to keep ------------------------------------------------------------
    Setting(
        "at",
        STR,
        "wall-clock time of the daily run",
        ("schedule",),
        default="03:00",
        flags=("--at",),
        metavar="HH:MM",
        field="schedule_time",
        to_field=parse_clock,
    ),
    Setting(
        "tz",
        STR,
        "IANA time zone that runs and retention periods are counted in",
        _RETENTION,
        default_factory=system_zone_name,  # the command line counts in the system's zone
        defaults={"library": "Asia/Seoul"},
        flags=("--tz",),
        metavar="ZONE",
        field="tz_name",
    ),
    Setting(
        "retention_days",
        INT,
        "keep N days of backups (when no keep-* rule is given)",
        ("schedule",),
        default=7,
        flags=("--retention-days",),
        metavar="N",
        field="retention_days",
    ),
    Setting(
        "keep_within",
        STR,
        "keep backups within e.g. 7d of the newest",
        ("prune",),
        flags=("--keep-within",),
        metavar="DURATION",
    ),
    *(
        Setting(
            f"keep_{period}",
            INT,
            f"keep the newest backup of each of the N most recent {noun}",
            _RETENTION,
            default=0,
            flags=(f"--keep-{period}",),
            metavar="N",
        )
        for period, noun in (
            ("last", "backups (every one)"),
            ("hourly", "hours"),
            ("daily", "days"),
            ("weekly", "ISO weeks"),
            ("monthly", "months"),
            ("yearly", "years"),
        )
    ),
    Setting(
        "catch_up",
        BOOL,
        "do not back up at start when the last scheduled run was missed or there is no backup yet",
        ("schedule",),
        default=True,
        flags=("--no-catch-up",),
        action="store_false",
        field="catch_up",
    ),
    # -- running ---------------------------------------------------------------------------
    Setting(
        "metrics_file",
        PATH,
        "Prometheus textfile to write after each run (node_exporter's textfile collector)",
        ("create", "schedule", "prune"),
        flags=("--metrics-file",),
        metavar="PATH",
        field="metrics_file",
        relative_to_file=True,
    ),
    Setting(
        "lock_timeout",
        FLOAT,
        "wait this long for another run",
        ("create", "schedule", "prune", "copy"),
        default=60.0,
        defaults={"schedule": 600.0, "library": 600.0},
        flags=("--lock-timeout",),
        metavar="SECONDS",
        field="lock_timeout",
    ),
    Setting(
        "read_data",
        BOOL,
        "also read every archive and verify its content against the manifest",
        ("check",),
        default=False,
        flags=("--read-data",),
        action="store_true",
    ),
    Setting(
        "read_data_subset",
        STR,
        "read and verify part N of M of the backups (1/7 ... 7/7 on seven days covers all)",
        ("check",),
        flags=("--read-data-subset",),
        metavar="N/M",
    ),
    Setting(
        "check_after",
        BOOL,
        "after each run, check every backup's manifest and archive (as the check command does)",
        ("schedule",),
        default=False,
        flags=("--check",),
        action="store_true",
        field="check_after",
    ),
    Setting(
        "list",
        BOOL,
        "with --dry-run, list every entry",
        ("create",),
        default=False,
        flags=("--list",),
        action="store_true",
    ),
    Setting(
        "dry_run",
        BOOL,
        "print what would be done; change nothing",
        ("create", "restore", "prune", "copy"),
        default=False,
        flags=("--dry-run",),
        action="store_true",
    ),
    Setting(
        "json",
        BOOL,
        "print machine-readable JSON on stdout",
        _OUTPUT,
        default=False,
        flags=("--json",),
        action="store_true",
    ),
    Setting(
        "quiet",
        BOOL,
        "print nothing but errors",
        _OUTPUT,
        default=False,
        flags=("-q", "--quiet"),
        action="store_true",
    ),
    Setting(
        "verbose",
        BOOL,
        "log more (as --log-level debug)",
        _OUTPUT,
        default=False,
        flags=("-v", "--verbose"),
        action="store_true",
    ),
    Setting(
        "log_level",
        STR,
        "how much to log on stderr (default: info; warning with --quiet; debug with -v)",
        _OUTPUT,
        flags=("--log-level",),
        choices=("debug", "info", "warning", "error"),
        metavar="LEVEL",
    ),
)

_BY_KEY = {setting.key: setting for setting in SETTINGS}
_BY_FIELD = {setting.field: setting for setting in SETTINGS if setting.field is not None}


def settings_for(command: str) -> tuple[Setting, ...]:
    """Return the settings a command takes, in table order."""
    return tuple(setting for setting in SETTINGS if command in setting.commands)


def field_default(field_name: str, command: str | None = None) -> Any:
    """Given a configuration field, return its default (for ``command``, or the library's)."""
    setting = _BY_FIELD[field_name]
    return setting.to_field(setting.default_for(command))


def _key(name: str) -> str:
    return name.replace("-", "_")


def load_settings(path: Path, command: str) -> dict[str, Any]:
    """Given a TOML file and a command, return the file's settings for that command,
    converted as the command line converts them (paths relative to the file).

    Raise ConfigError naming the file (and the line, for a value of the wrong type) if
    it cannot be read or parsed, if a value has the wrong type, or if it sets an option
    no command has, or one this command does not take in its own table (a typo would
    otherwise be silently ignored).
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
        data = tomllib.loads(text)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config file: {exc.strerror or exc}", path) from exc
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: invalid TOML: {exc}", path) from exc
    section = data.get(command, {})
    if not isinstance(section, dict):
        raise ConfigError(f"{path}: [{command}] must be a table", path)
    top = {_key(key): (value, None) for key, value in data.items() if key not in COMMANDS}
    own = {_key(key): (value, command) for key, value in section.items()}
    unknown = sorted({key for key in top if key not in _BY_KEY} | {key for key in own if command not in _commands(key)})
    if unknown:
        raise ConfigError(f"{path}: unknown settings for {command}: {', '.join(unknown)}", path)
    values: dict[str, Any] = {}
    for key, (value, table) in {**top, **own}.items():
        setting = _BY_KEY[key]
        if command not in setting.commands:
            continue  # a top-level key for another command
        values[key] = _convert(setting, value, path, text, table)
    return values


def _commands(key: str) -> tuple[str, ...]:
    setting = _BY_KEY.get(key)
    return setting.commands if setting is not None else ()


def _convert(setting: Setting, value: Any, path: Path, text: str, table: str | None) -> Any:
    if not setting.kind.accepts(value):
        line = _line_of(text, table, setting.key)
        where = f"{path}:{line}" if line else str(path)
        raise ConfigError(
            f"{where}: {setting.key.replace('_', '-')} must be {setting.kind.name}, not {type(value).__name__} {value!r}",
            path,
        )
    if setting.choices and setting.choices_in_file and value not in setting.choices:
        line = _line_of(text, table, setting.key)
        where = f"{path}:{line}" if line else str(path)
        raise ConfigError(
            f"{where}: {setting.key.replace('_', '-')} must be one of {', '.join(setting.choices)}, not {value!r}",
            path,
        )
    converted = setting.kind.convert(value)
    if setting.relative_to_file and isinstance(converted, list):
        return [item if _names_a_backup(item) else path.parent / item for item in converted]
    if setting.relative_to_file and converted is not None and not _names_a_backup(converted):
        # Relative to the file, not to the directory a service manager starts in.
        converted = path.parent / converted
    return converted


def _names_a_backup(value: Any) -> bool:
    """Whether a value names a backup or an object store rather than a file: ``latest``,
    a backup id, or a URL."""
    if isinstance(value, S3Location):
        return True
    return isinstance(value, str) and (value == "latest" or parse_backup_id(value) is not None or is_url(value))


def _line_of(text: str, table: str | None, key: str) -> int | None:
    """Return the line where ``key`` is set in ``table`` (None: the top level)."""
    spellings = {key, key.replace("_", "-")}
    current: str | None = None
    for number, line in enumerate(text.splitlines(), start=1):
        header = re.match(r"^\s*\[\s*([^\]]+?)\s*\]", line)
        if header:
            current = header.group(1).strip("\"'")
            continue
        assignment = re.match(r"^\s*[\"']?([A-Za-z0-9_-]+)[\"']?\s*=", line)
        if assignment and current == table and assignment.group(1) in spellings:
            return number
    return None
