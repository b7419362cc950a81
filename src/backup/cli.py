"""The ``obs-backup`` command line: parse arguments, call the library, report.

No backup logic lives here. Exit codes: 0 success, 1 failure or verification
mismatch, 2 usage error, 3 a backup that completed with warnings (a file skipped or
changed while it was read). Errors are one line on stderr, never a traceback; with
``--json`` a failure is also a JSON object on stdout (``"success": false``).
"""

from __future__ import annotations

import argparse
import asyncio
import codecs
import json
import logging
import os
import signal
import sys
import tempfile
import threading
from argparse import ArgumentTypeError
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import fields
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from shared.time_helpers import UnknownTimeZoneError, load_zone

from . import __version__
from .config import BackupConfig, BackupResult, SchedulerConfig
from .core import execute_plan
from .errors import BackupError, ConfigError, StorageError
from .keys import Identities, load_identities
from .listing import list_backups
from .locations import as_location, with_endpoint
from .manifest import display_name
from .monitor import PruneRecord, RunRecord, error_to_record, record_prune, record_run
from .plan import BackupPlan, RestorePlan, plan_backup, plan_restore
from .progress import ProgressBar, ProgressCallback, format_count, format_size
from .prune import PruneResult, execute_prune, plan_prune
from .retention import FUTURE_REASON, RetentionDecision, RetentionPolicy, is_dated_in_future, parse_duration
from .scheduler import BackupScheduler
from .select import find_backup
from .settings import COMMANDS, CONFIG_ENV, LOCATION, Setting, load_settings, settings_for
from .storage import Location, open_storage, where
from .storage.base import BackupStorage
from .verify import VerifyReport, verify_backup

if TYPE_CHECKING:
    from .check import CheckReport

__all__ = ["main"]

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_WARNINGS = 3
DRY_RUN = "(dry run; not making any changes)"

logger = logging.getLogger("backup")

_Config = TypeVar("_Config", BackupConfig, SchedulerConfig)


class _UsageError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        self.print_usage(sys.stderr)
        raise _UsageError(message)


_COMMAND_HELP: dict[str, tuple[str, str]] = {
    "create": ("back up a directory", "Back up SOURCE into BACKUP_DIR."),
    "restore": (
        "restore a backup",
        "Restore BACKUP into TARGET. BACKUP is an archive, its manifest, a backup id or 'latest' "
        "(ids and 'latest' are looked up in --backup-dir).",
    ),
    "verify": (
        "check a backup against its manifest",
        "Read BACKUP to the end and check every file against its manifest.",
    ),
    "list": ("list complete backups", "List the backups in BACKUP_DIR."),
    "ls": ("list the files in a backup (from its manifest)", "List the entries of BACKUP from its manifest."),
    "diff": (
        "compare two backups (from their manifests)",
        "Show what was added, removed or changed from BACKUP to OTHER, from their manifests.",
    ),
    "check": (
        "check every backup in a directory",
        "Check that every backup in BACKUP_DIR has its archive and manifest, consistent with each other; "
        "with --read-data, also read and verify their content.",
    ),
    "schedule": (
        "back up every day and apply retention (runs in the foreground)",
        "Back up SOURCE into BACKUP_DIR every day at --at in --tz, then remove old backups, until SIGINT or SIGTERM.",
    ),
    "prune": ("remove old backups by a retention policy", "Remove old backups from BACKUP_DIR."),
    "copy": (
        "copy the backups another location lacks",
        "Copy the complete backups DEST lacks from SOURCE to DEST (directories or s3:// locations), "
        "checking each archive against its manifest on the way.",
    ),
}


def build_parser() -> argparse.ArgumentParser:
    """Return the argument parser for every sub-command, derived from ``backup.settings``."""
    parser = _Parser(
        prog="obs-backup",
        description="Back up a directory to a standard tar archive with a SHA-256 manifest; "
        "verify and restore such archives safely.",
    )
    parser.add_argument("--version", action="version", version=f"obs-backup {__version__}")
    parser.add_argument(
        "--config",
        type=Path,
        metavar="FILE.toml",
        help=f"read settings from a TOML file (default: ${CONFIG_ENV}, if set); flags win",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    commands.required = True
    for command in COMMANDS:
        summary, description = _COMMAND_HELP[command]
        sub = commands.add_parser(command, help=summary, description=description)
        for setting in settings_for(command):
            if setting.cli:
                _add_option(sub, setting, command)
    return parser


def _parser_of(setting: Setting) -> Callable[[str], Any]:
    """The setting's parse, with its own message when a value is refused (argparse
    would print only "invalid value" and the value, which may hold what it should not)."""
    parse = setting.kind.parse
    if setting.kind is not LOCATION:
        return parse

    def parse_value(text: str) -> Any:
        try:
            return parse(text)
        except ValueError as exc:
            raise ArgumentTypeError(str(exc)) from None

    parse_value.__name__ = getattr(parse, "__name__", "value")
    return parse_value


def _add_option(parser: argparse.ArgumentParser, setting: Setting, command: str) -> None:
    help_text = setting.help + (f" (or ${setting.env})" if setting.env else "")
    if setting.positional_in(command):
        parser.add_argument(
            setting.key,
            metavar=setting.metavar or setting.key.upper(),
            type=_parser_of(setting),
            nargs="?",
            default=None,
            help=help_text,
        )
        return
    options: dict[str, Any] = {"dest": setting.key, "action": setting.action, "default": argparse.SUPPRESS}
    if setting.action in ("store", "append"):
        options["type"] = _parser_of(setting)
        if setting.metavar:
            options["metavar"] = setting.metavar
        if setting.choices:
            options["choices"] = setting.choices
    default = setting.default_for(command)
    if setting.action == "store" and default not in (None, (), [], False):
        help_text += f" (default: {default:g})" if isinstance(default, float) else f" (default: {default})"
    parser.add_argument(*setting.flags_in(command), help=help_text, **options)


def _absolute_paths(args: argparse.Namespace) -> None:
    """Make every path setting absolute, so that messages and --json name files wherever
    they are read from (a path in the config file is already relative to the file)."""
    for setting in settings_for(args.command):
        value = getattr(args, setting.key, None)
        if isinstance(value, Path):
            setattr(args, setting.key, value.absolute())


def _resolve(args: argparse.Namespace) -> argparse.Namespace:
    """Fill every setting not given on the command line from --config, then the
    environment, then defaults. A repeatable option adds to the file's list."""
    command = args.command
    if args.config is None and os.environ.get(CONFIG_ENV):
        args.config = Path(os.environ[CONFIG_ENV])
    from_file = load_settings(args.config, command) if args.config is not None else {}
    for setting in settings_for(command):
        positional = setting.positional_in(command)
        given = getattr(args, setting.key, None) is not None if positional else hasattr(args, setting.key)
        if given:
            if setting.action == "append" and setting.key in from_file:
                setattr(args, setting.key, [*from_file[setting.key], *getattr(args, setting.key)])
            continue
        if setting.key in from_file:
            setattr(args, setting.key, from_file[setting.key])
        elif setting.env and os.environ.get(setting.env):
            try:
                setattr(args, setting.key, setting.kind.parse(os.environ[setting.env]))
            except ValueError as exc:
                raise _UsageError(f"${setting.env}: {exc}") from None
        else:
            setattr(args, setting.key, setting.default_for(command))
    for setting in settings_for(command):
        if setting.positional_in(command) and getattr(args, setting.key) is None:
            raise _UsageError(f"{command}: {setting.key.upper()} is required (on the command line or in --config)")
    _absolute_paths(args)
    _apply_endpoint(args)
    return args


def _apply_endpoint(args: argparse.Namespace) -> None:
    """Give every object-store location that names no endpoint of its own the one
    given by --endpoint-url (or the config file)."""
    endpoint = getattr(args, "endpoint_url", None)
    if not endpoint:
        return
    for key in ("backup_dir", "copy_source", "copy_dest"):
        value = getattr(args, key, None)
        if value is not None:
            setattr(args, key, with_endpoint(value, endpoint))
    if getattr(args, "copy_to", None):
        args.copy_to = [with_endpoint(as_location(item), endpoint) for item in args.copy_to]


def _config(kind: type[_Config], args: argparse.Namespace, **extra: Any) -> _Config:
    """Build a configuration from the settings that fill its fields."""
    names = {item.name for item in fields(kind)}
    values = {
        setting.field: setting.to_field(getattr(args, setting.key))
        for setting in settings_for(args.command)
        if setting.field in names
    }
    return kind(**values, **extra)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line with ``argv`` (default ``sys.argv[1:]``); return the exit code."""
    _tolerate_undecodable_names()
    argv = list(sys.argv[1:] if argv is None else argv)
    wants_json = "--json" in argv
    parser = build_parser()
    try:
        args = _resolve(parser.parse_args(argv))
    except (_UsageError, ConfigError) as exc:
        return _fail(str(exc), EXIT_USAGE, wants_json)
    wants_json = bool(args.json)
    with _logging_to_stderr(args), _terminate_cleanly(args.command):
        return _run(args, wants_json)


class _Terminated(BaseException):
    """SIGTERM arrived: unwind, so that partial files and private copies are removed."""


@contextmanager
def _terminate_cleanly(command: str) -> Iterator[None]:
    """Turn SIGTERM into an exception while a one-shot command runs (the scheduler
    handles it itself), so that what it was writing is cleaned up on the way out."""
    if command == "schedule" or threading.current_thread() is not threading.main_thread():
        yield
        return

    def terminated(signum: int, frame: object) -> None:
        raise _Terminated

    previous = signal.signal(signal.SIGTERM, terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _run(args: argparse.Namespace, wants_json: bool) -> int:
    handler: Callable[[argparse.Namespace], int] = _COMMANDS[args.command]
    try:
        return handler(args)
    except (ConfigError, UnknownTimeZoneError) as exc:
        return _fail(str(exc), EXIT_USAGE, wants_json)
    except BackupError as exc:
        return _fail(str(exc), EXIT_FAILED, wants_json)
    except KeyboardInterrupt:
        return _fail("interrupted", 130, wants_json)
    except _Terminated:
        return _fail("terminated", 143, wants_json)
    except BrokenPipeError:
        return EXIT_FAILED
    except Exception as exc:  # a bug: still one line, and the exit code says it failed
        return _fail(f"internal error: {type(exc).__name__}: {exc}", EXIT_FAILED, wants_json)


def _fail(message: str, code: int, wants_json: bool) -> int:
    """Report a failure: one line on stderr, and with --json an object on stdout."""
    shown = message if message in ("interrupted", "terminated") else f"error: {message}"
    print(f"obs-backup: {shown}", file=sys.stderr)
    if wants_json:
        _print_json({"success": False, "error": message, "exit_code": code})
    return code


class _StderrHandler(logging.Handler):
    """Logs to whatever ``sys.stderr`` is when a record is written (not when made)."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            sys.stderr.write(self.format(record) + "\n")
            sys.stderr.flush()
        except Exception:
            self.handleError(record)


class _ZoneFormatter(logging.Formatter):
    """Log times as ISO 8601 with their UTC offset, in the zone the process runs in."""

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        return datetime.fromtimestamp(record.created, UTC).astimezone().isoformat(timespec="seconds")


@contextmanager
def _logging_to_stderr(args: argparse.Namespace) -> Iterator[None]:
    """Send log records (the scheduler's, the hooks' output) to stderr while a command
    runs, at the level asked for."""
    if args.log_level:
        level = getattr(logging, str(args.log_level).upper())
    elif args.verbose:
        level = logging.DEBUG
    elif args.quiet:
        level = logging.WARNING
    else:
        level = logging.INFO
    handler = _StderrHandler()
    handler.setFormatter(_ZoneFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    previous = root.level
    root.addHandler(handler)
    root.setLevel(level)
    # The S3 client's own records ("found credentials in ...") are for debugging only.
    quiet_libraries = [logging.getLogger(name) for name in ("botocore", "boto3", "urllib3", "s3transfer")]
    library_levels = [library.level for library in quiet_libraries]
    for library in quiet_libraries:
        library.setLevel(max(level, logging.WARNING) if level > logging.DEBUG else level)
    try:
        yield
    finally:
        root.removeHandler(handler)
        root.setLevel(previous)
        for library, library_level in zip(quiet_libraries, library_levels, strict=True):
            library.setLevel(library_level)


def _escape_undecodable(error: UnicodeError) -> tuple[str, int]:
    """An encoding error handler: a byte of a file name that was not valid UTF-8 (held
    as a surrogate escape) prints as ``\\xNN``, as the manifest shows it; anything else
    the terminal cannot show prints as ``\\uNNNN``."""
    if not isinstance(error, UnicodeEncodeError):
        raise error
    text = error.object[error.start : error.end]
    shown = "".join(f"\\x{ord(ch) - 0xDC00:02x}" if 0xDC80 <= ord(ch) <= 0xDCFF else f"\\u{ord(ch):04x}" for ch in text)
    return shown, error.end


codecs.register_error("obs-backup-escape", _escape_undecodable)


def _tolerate_undecodable_names() -> None:
    """File names that are not valid UTF-8 reach us as surrogate escapes, which a strict
    UTF-8 stream cannot print: print each such byte escaped instead of crashing."""
    for stream in (sys.stdout, sys.stderr):
        reconfigure = getattr(stream, "reconfigure", None)
        if reconfigure is not None:
            try:
                reconfigure(errors="obs-backup-escape")
            except (ValueError, OSError):
                pass


def _cmd_create(args: argparse.Namespace) -> int:
    config = _config(BackupConfig, args).validated()  # a bad setting fails before the lock file is made
    if args.dry_run:
        _print_backup_plan(plan_backup(config), args)
        return EXIT_OK
    from .hooks import Hooks, run_with_hooks

    storage = open_storage(args.backup_dir)
    started = datetime.now(UTC)

    def backup() -> BackupResult:
        try:
            plan = plan_backup(config, storage=storage)
        except ConfigError:
            raise
        except BackupError as exc:  # a failed run: recorded, reported, and on_error told
            return BackupResult(success=False, error=str(exc))
        _print_notices(plan, args)
        with _progress(args, "backing up", plan.total_bytes) as progress:
            return execute_plan(plan, progress)

    # The lock is held across the hooks too: two runs must not interleave their dumps.
    # Not having it is an error, not a run (it is not recorded).
    result = run_with_hooks(
        Hooks.from_config(args),
        backup,
        source_dir=config.source_dir,
        backup_dir=config.backup_dir,
        guard=storage.lock(args.lock_timeout),
    )
    _record_run(args, result, started)
    return _report(result, args, "backup")


def _print_notices(plan: BackupPlan, args: argparse.Namespace) -> None:
    if not args.quiet:
        for notice in plan.notices:
            print(f"obs-backup: warning: {notice}", file=sys.stderr)


def _record_run(args: argparse.Namespace, result: BackupResult, started: datetime) -> None:
    """Write the state record (and metrics) of a create, as the scheduler does; a
    failure to write them is a warning, not the backup's failure."""
    manifest = result.manifest
    record = RunRecord(
        started_at=started,
        finished_at=datetime.now(UTC),
        success=result.success,
        prefix=args.prefix,
        backup_id=result.backup_id if result.success else None,
        archive_path=result.archive,
        archive_size=result.archive_size,
        file_count=manifest.file_count if manifest else 0,
        error=error_to_record(result.error, bool(args.encrypt_to or args.recipients_file)),
        warnings=len(result.warnings),
        changed_files=len(result.changed_files),
    )
    try:
        if open_storage(args.backup_dir).exists():
            record_run(args.backup_dir, record, args.metrics_file)
    except Exception as exc:  # monitoring never turns a backup into a failure
        print(f"obs-backup: warning: cannot record the run (state file or metrics): {exc}", file=sys.stderr)


def _identities(args: argparse.Namespace) -> Identities | None:
    """Return the identities of --identity (or its environment variable), if given."""
    return None if args.identity is None else load_identities(args.identity)


def _cmd_restore(args: argparse.Namespace) -> int:
    selected = find_backup(args.archive, args.backup_dir, args.prefix, endpoint_url=args.endpoint_url)
    plan = plan_restore(
        selected.archive,
        _absolute(args.target),
        paths=args.paths,
        overwrite=args.overwrite,
        verify_checksums=not args.no_verify,
        allow_external_links=args.allow_external_links,
        list_archive=args.dry_run,  # without a manifest, only a dry run needs a separate listing pass
        same_owner=False if args.no_same_owner else None,
        numeric_owner=args.numeric_owner,
        include=args.include or (),
        exclude=args.restore_exclude or (),
        identities=_identities(args),
    )
    if args.dry_run:
        _print_restore_plan(plan, args)
        return EXIT_OK
    with _progress(args, "restoring", plan.total_bytes) as progress:
        result = execute_plan(plan, progress)
    return _report(result, args, "restore")


def _cmd_verify(args: argparse.Namespace) -> int:
    selected = find_backup(args.archive, args.backup_dir, args.prefix, endpoint_url=args.endpoint_url)
    identities = _identities(args)
    total = 0
    if selected.manifest is not None and _draws_progress(args):  # the bar's total, read only for it
        try:
            total = selected.read_manifest(identities).total_size
        except BackupError:
            pass  # verify reports it
    with _progress(args, "verifying", total) as progress:
        report = verify_backup(
            selected.archive,
            selected.manifest,
            progress=progress,
            check_owners=args.check_owners,
            identities=identities,
        )
    return _print_report(report, args)


def _print_report(report: VerifyReport | CheckReport, args: argparse.Namespace) -> int:
    """Print a verify or check report (its problems, then one summary line; on stderr
    if anything is wrong); return the exit code it calls for."""
    if args.json:
        _print_json({"success": report.ok, **report.to_dict()})
    elif not args.quiet or not report.ok:
        out = sys.stdout if report.ok else sys.stderr
        for line in report.lines():
            print(line, file=out)
        print(report.summary(), file=out)
    return EXIT_OK if report.ok else EXIT_FAILED


def _cmd_list(args: argparse.Namespace) -> int:
    storage = _existing_storage(args.backup_dir)
    backups = list_backups(storage, prefix=args.prefix)
    now = datetime.now(UTC)
    if args.json:
        _print_json([{**backup.to_dict(), "future": is_dated_in_future(backup, now)} for backup in backups])
        return EXIT_OK
    if args.quiet:
        return EXIT_OK
    if not backups:
        print(f"no complete backups in {where(args.backup_dir)}")
        return EXIT_OK
    print(f"{'BACKUP ID':<36} {'CREATED':<25} {'SIZE':>10} {'FILES':>7}  ARCHIVE")
    for backup in backups:
        created = backup.created_at.isoformat(timespec="seconds") if backup.created_at else "?"
        files = "?" if backup.file_count is None else str(backup.file_count)
        name = backup.archive.name
        print(f"{backup.backup_id:<36} {created:<25} {format_size(backup.size_bytes):>10} {files:>7}  {name}")
        if is_dated_in_future(backup, now):
            print(f"  warning: {FUTURE_REASON}")
        if backup.problem:
            print(f"  problem: {backup.problem}")
    print(f"{format_count(len(backups), 'backup')}, {format_size(sum(b.size_bytes for b in backups))}")
    return EXIT_OK


def _cmd_ls(args: argparse.Namespace) -> int:
    selected = find_backup(
        args.archive, args.backup_dir, args.prefix, archive_required=False, endpoint_url=args.endpoint_url
    )
    manifest = selected.read_manifest(_identities(args))
    if args.json:
        _print_json(
            {
                "success": True,
                "backup_id": manifest.backup_id,
                "archive_path": selected.archive.label,
                "entries": [entry.to_dict() for entry in manifest.files],
            }
        )
        return EXIT_OK
    if args.quiet:
        return EXIT_OK
    for entry in manifest.files:
        mode = "?" if entry.mode is None else f"{entry.mode:04o}"
        owner = f"{entry.user or entry.uid or '?'}/{entry.group or entry.gid or '?'}"
        when = entry.modified[:19].replace("T", " ")
        name = display_name(entry.path) + ("/" if entry.type == "dir" else "")
        if entry.link_target is not None:
            name += f" {'->' if entry.type == 'symlink' else 'link to'} {display_name(entry.link_target)}"
        print(f"{entry.type:<8} {mode} {owner:<17} {entry.size:>12} {when}  {name}")
    print(
        f"{manifest.backup_id}: {format_count(manifest.file_count, 'file')}, "
        f"{format_count(len(manifest.files), 'entry', 'entries')}, {format_size(manifest.total_size)}"
    )
    return EXIT_OK


def _cmd_diff(args: argparse.Namespace) -> int:
    identities = _identities(args)
    first = find_backup(
        args.archive, args.backup_dir, args.prefix, archive_required=False, endpoint_url=args.endpoint_url
    ).read_manifest(identities)
    second = find_backup(
        args.other, args.backup_dir, args.prefix, archive_required=False, endpoint_url=args.endpoint_url
    ).read_manifest(identities)
    before, after = first.entry_map(), second.entry_map()
    added = [path for path in after if path not in before]
    removed = [path for path in before if path not in after]
    changed = []
    for path, entry in after.items():
        old = before.get(path)
        if old is not None:
            what = _changes(old, entry)
            if what:
                changed.append((path, what))
    if args.json:
        _print_json(
            {
                "success": True,
                "from": first.backup_id,
                "to": second.backup_id,
                "added": added,
                "removed": removed,
                "changed": [{"path": path, "what": what} for path, what in changed],
            }
        )
        return EXIT_OK
    if not args.quiet:
        rows = [(path, "+", "") for path in added] + [(path, "-", "") for path in removed]
        rows += [(path, "M", f" ({', '.join(what)})") for path, what in changed]
        for path, sign, detail in sorted(rows):
            print(f"{sign} {display_name(path)}{detail}")
        print(
            f"{first.backup_id} -> {second.backup_id}: {len(added)} added, {len(removed)} removed, "
            f"{len(changed)} changed"
        )
    return EXIT_OK


def _changes(old: Any, new: Any) -> list[str]:
    """Given two manifest entries of one path, return what differs between them."""
    what = []
    if old.type != new.type:
        what.append(f"{old.type} -> {new.type}")
    elif old.checksum != new.checksum or old.size != new.size:
        what.append("content")
    if old.link_target != new.link_target and old.type == new.type:
        what.append("link target")
    if old.mode != new.mode:
        what.append("mode")
    if (old.uid, old.gid, old.user, old.group) != (new.uid, new.gid, new.user, new.group):
        what.append("owner")
    if old.xattrs != new.xattrs:
        what.append("extended attributes")
    if getattr(old, "mtime_ns", None) != getattr(new, "mtime_ns", None) or old.modified != new.modified:
        if not what:
            what.append("time")
    return what


def _cmd_check(args: argparse.Namespace) -> int:
    from .check import check_backups, parse_subset

    subset = parse_subset(args.read_data_subset) if args.read_data_subset else None
    storage = _existing_storage(args.backup_dir)
    report = check_backups(
        storage, prefix=args.prefix, read_data=args.read_data, subset=subset, identities=_identities(args)
    )
    return _print_report(report, args)


def _existing_storage(location: Location) -> BackupStorage:
    """Return the storage of a location that must exist already (to list, check, prune)."""
    storage = open_storage(location)
    if not storage.exists():
        what = "bucket" if storage.local_path("x") is None else "backup directory"
        raise StorageError(f"{where(location)}: {what} does not exist", where(location))
    return storage


def _cmd_copy(args: argparse.Namespace) -> int:
    from .copy import copy_backups

    source = _existing_storage(args.copy_source)
    dest = open_storage(args.copy_dest)
    if source == dest:
        raise ConfigError(f"{where(args.copy_dest)}: SOURCE and DEST are the same location")
    if args.dry_run:
        present = {b.backup_id for b in list_backups(dest)} if dest.exists() else set()
        wanted = [b for b in list_backups(source, prefix=args.prefix) if b.backup_id not in present]
        if args.json:
            _print_json({"dry_run": True, "success": True, "would_copy": [b.backup_id for b in wanted]})
        elif not args.quiet:
            for backup in wanted:
                print(f"{DRY_RUN} would copy {backup.backup_id} ({format_size(backup.size_bytes)})")
            print(f"{DRY_RUN} would copy {format_count(len(wanted), 'backup')} to {dest.location}")
        return EXIT_OK
    dest.ensure()
    with dest.lock(args.lock_timeout), _progress(args, "copying", 0) as progress:
        result = copy_backups(source, dest, args.prefix, progress=progress)
    if args.json:
        _print_json(result.to_dict())
    elif not args.quiet:
        for backup_id in result.copied:
            print(f"copied {backup_id}")
        print(
            f"copied {format_count(len(result.copied), 'backup')} ({format_size(result.bytes_copied)}) to "
            f"{result.dest}; {len(result.present)} already there"
        )
    for error in result.errors:
        print(f"obs-backup: error: {error}", file=sys.stderr)
    return EXIT_OK if result.success else EXIT_FAILED


def _policy(args: argparse.Namespace) -> RetentionPolicy | None:
    within = getattr(args, "keep_within", None)
    counts = {
        f"keep_{p}": int(getattr(args, f"keep_{p}") or 0)
        for p in ("last", "hourly", "daily", "weekly", "monthly", "yearly")
    }
    if within is None and not any(counts.values()):
        return None
    return RetentionPolicy(keep_within=None if within is None else parse_duration(str(within)), **counts)


def _cmd_schedule(args: argparse.Namespace) -> int:
    config = _config(SchedulerConfig, args, policy=_policy(args))
    config.backup_config().validated()  # refuse bad settings now, not at 03:00
    load_zone(config.tz_name)
    _check_can_run(config)

    def done(result: BackupResult) -> None:
        if args.json:
            print(json.dumps(_printable(_result_dict(result)), ensure_ascii=False), flush=True)

    scheduler = BackupScheduler(config, on_complete=done)
    print(
        f"obs-backup: scheduling {_absolute(config.source_dir)} -> {where(config.backup_dir)} daily at "
        f"{config.schedule_time:%H:%M} {config.tz_name}; {config.retention_policy().describe()}",
        file=sys.stderr,
    )
    asyncio.run(_serve(scheduler))
    return EXIT_OK


def _check_can_run(config: SchedulerConfig) -> None:
    """Refuse to start (a usage error) a schedule that could not make its first backup:
    a source that is not a directory, a backup or metrics directory that cannot be
    written. Found now, by the person starting it, not at 03:00 by nobody."""
    source = _absolute(config.source_dir)
    if not source.is_dir():
        what = "does not exist" if not source.exists() else "is not a directory"
        raise ConfigError(f"{source}: source directory {what}", source)
    for location in (config.backup_dir, *config.copy_to):
        if isinstance(location, Path):
            directory = _absolute(location)
            _probe_writable(directory if directory.exists() else _existing_parent(directory), "backup directory")
        else:
            try:
                open_storage(location).ensure()  # reachable, and honouring conditional writes
            except (OSError, StorageError) as exc:
                raise ConfigError(f"{location}: cannot be written: {exc}", str(location)) from exc
    if config.metrics_file is not None:
        _probe_writable(_absolute(config.metrics_file).parent, "metrics file's directory")


def _existing_parent(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def _probe_writable(directory: Path, what: str) -> None:
    # Permission bits do not tell (root, ACLs, a read-only mount): try it.
    if not directory.is_dir():
        raise ConfigError(f"{directory}: {what} is not a directory", directory)
    try:
        with tempfile.NamedTemporaryFile(dir=directory, prefix=".obs-backup-probe-"):
            pass
    except OSError as exc:
        raise ConfigError(f"{directory}: {what} cannot be written: {exc.strerror or exc}", directory) from exc


async def _serve(scheduler: BackupScheduler) -> None:
    """Run the scheduler until SIGINT or SIGTERM; a second signal stops at once."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    await scheduler.start()
    await stop.wait()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.remove_signal_handler(signum)
    print("obs-backup: stopping (a backup in progress is allowed to finish)", file=sys.stderr)
    await scheduler.stop()


def _cmd_prune(args: argparse.Namespace) -> int:
    policy = _policy(args)
    if policy is None:
        raise ConfigError(
            "prune needs a policy: --keep-within or one of --keep-last/-hourly/-daily/-weekly/-monthly/-yearly"
        )
    zone = load_zone(str(args.tz))
    storage = _existing_storage(args.backup_dir)
    if args.dry_run:
        result = execute_prune(storage, plan_prune(storage, policy, zone, args.prefix), dry_run=True)
    else:
        with storage.lock(args.lock_timeout):
            result = execute_prune(storage, plan_prune(storage, policy, zone, args.prefix))
        _record_prune(args, result)
    for decision in result.plan.future:
        created = decision.backup.created_at
        moment = created.isoformat() if created is not None else "?"
        print(
            f"obs-backup: warning: {decision.backup.backup_id} is dated in the future ({moment}): kept; check the clock",
            file=sys.stderr,
        )
    if args.json:
        _print_json(result.to_dict())
    elif not args.quiet:
        label = f"{DRY_RUN} " if args.dry_run else ""
        for decision in result.plan.keep:
            print(f"{label}keep   {decision.backup.backup_id}: {', '.join(decision.reasons)}")
        for decision in result.plan.remove:
            verb = "would remove" if args.dry_run else "remove"
            print(f"{label}{verb} {decision.backup.backup_id}")
        for name in result.leftovers:
            print(f"removed leftover {name}")
        verb = "would remove" if args.dry_run else "removed"
        print(
            f"{label}{verb} {format_count(len(result.plan.remove), 'backup')}, "
            f"kept {format_count(len(result.plan.keep), 'backup')}"
        )
    for error in result.errors:
        print(f"obs-backup: error: {error}", file=sys.stderr)
    return EXIT_OK if result.success else EXIT_FAILED


def _record_prune(args: argparse.Namespace, result: PruneResult) -> None:
    """Record what the prune did to each prefix, as the scheduler's retention is recorded."""
    finished = datetime.now(UTC)
    error = "; ".join(result.errors) or None
    records: dict[str, PruneRecord] = {}

    def record_of(decision: RetentionDecision) -> PruneRecord | None:
        prefix = decision.backup.prefix
        return (
            None if prefix is None else records.setdefault(prefix, PruneRecord(finished, result.success, error=error))
        )

    removed = set(result.removed)
    for decision in result.plan.remove:
        if (record := record_of(decision)) is not None and decision.backup.backup_id in removed:
            record.removed += 1
    future = {decision.backup.backup_id for decision in result.plan.future}
    for decision in result.plan.keep:
        if (record := record_of(decision)) is not None:
            record.kept += 1
            record.future_dated_backups += decision.backup.backup_id in future
    try:
        record_prune(args.backup_dir, records, args.metrics_file)
    except Exception as exc:  # monitoring never turns a prune into a failure
        print(f"obs-backup: warning: cannot record the prune (state file or metrics): {exc}", file=sys.stderr)


_COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "create": _cmd_create,
    "restore": _cmd_restore,
    "verify": _cmd_verify,
    "list": _cmd_list,
    "ls": _cmd_ls,
    "diff": _cmd_diff,
    "check": _cmd_check,
    "schedule": _cmd_schedule,
    "prune": _cmd_prune,
    "copy": _cmd_copy,
}


def _report(result: BackupResult, args: argparse.Namespace, what: str) -> int:
    code = EXIT_OK
    if not result.success:
        code = EXIT_FAILED
    elif what == "backup" and result.warnings:
        code = EXIT_WARNINGS
    if not args.json:
        for warning in result.warnings:
            print(f"obs-backup: warning: {warning}", file=sys.stderr)
    if not result.success:
        print(f"obs-backup: error: {result.error}", file=sys.stderr)
    if args.json:
        _print_json({**_result_dict(result), "exit_code": code})
    elif result.success and not args.quiet:
        print(_result_line(result, what))
    return code


def _result_line(result: BackupResult, what: str) -> str:
    if what == "backup":
        manifest = result.manifest
        files = manifest.file_count if manifest else 0
        total = manifest.total_size if manifest else 0
        line = (
            f"created {result.archive or result.backup_path}: {format_count(files, 'file')}, "
            f"{format_size(total)} read, archive {format_size(result.archive_size)}, {result.duration_seconds:.1f}s"
        )
        if result.warnings:
            line += f"; completed with {format_count(len(result.warnings), 'warning')} (above)"
        return line
    checked = "verified against the manifest" if result.verified else "not verified"
    return (
        f"restored {format_count(result.entry_count, 'entry', 'entries')} into {result.backup_path} "
        f"({checked}), {result.duration_seconds:.1f}s"
    )


def _result_dict(result: BackupResult) -> dict[str, Any]:
    manifest = result.manifest
    return {
        "success": result.success,
        "error": result.error,
        "backup_id": result.backup_id,
        "path": result.archive if result.archive else (None if result.backup_path is None else str(result.backup_path)),
        "manifest_path": None if result.manifest_path is None else str(result.manifest_path),
        "archive_size": result.archive_size,
        "entry_count": result.entry_count,
        "file_count": manifest.file_count if manifest else None,
        "total_size": manifest.total_size if manifest else None,
        "verified": result.verified,
        "warnings": result.warnings,
        "duration_seconds": round(result.duration_seconds, 3),
    }


def _print_backup_plan(plan: BackupPlan, args: argparse.Namespace) -> None:
    if args.json:
        data = plan.to_dict()
        if not args.list:
            data.pop("entries")
        _print_json({"dry_run": True, "success": True, **data})
        return
    print(f"{DRY_RUN} would back up {plan.config.source_dir} to {plan.archive_label}")
    print(
        f"{DRY_RUN} {format_count(plan.file_count, 'file')}, {format_count(len(plan.entries), 'entry', 'entries')}, "
        f"{format_size(plan.total_bytes)}"
    )
    if args.list:
        for entry in plan.entries:
            print(f"{DRY_RUN} archive {entry.kind:<7} {entry.path}")
    for excluded in plan.excluded:
        print(f"{DRY_RUN} exclude {excluded.path}: {excluded.reason}")
    for problem in plan.problems:
        print(f"{DRY_RUN} problem {problem}")
    for notice in plan.notices:
        print(f"{DRY_RUN} warning {notice}")


def _print_restore_plan(plan: RestorePlan, args: argparse.Namespace) -> None:
    if args.json:
        _print_json({"dry_run": True, "success": True, **plan.to_dict()})
        return
    verify = "with" if plan.verify_checksums and plan.manifest is not None else "without"
    print(f"{DRY_RUN} would restore {plan.archive.label} into {plan.restore_dir} {verify} checksum verification")
    for entry in plan.entries:
        print(f"{DRY_RUN} write {entry.kind:<7} {entry.path}")
    for entry in plan.skipped:
        print(
            f"{DRY_RUN} skip {entry.kind:<8} {entry.path}: device nodes are made only by root, from an archive with its manifest"
        )
    action = "replace" if plan.overwrite else "conflict (already exists)"
    for path in plan.conflicts:
        print(f"{DRY_RUN} {action} {path}")
    for warning in plan.warnings:
        print(f"{DRY_RUN} warning {warning}")
    summary = (
        f"{DRY_RUN} {format_count(len(plan.entries), 'entry', 'entries')} to write, {format_size(plan.total_bytes)}"
    )
    if plan.conflicts and plan.overwrite:
        summary += f"; {format_count(len(plan.conflicts), 'existing entry', 'existing entries')} would be replaced"
    elif plan.conflicts:
        summary += (
            f"; {format_count(len(plan.conflicts), 'entry', 'entries')} already "
            f"{'exists' if len(plan.conflicts) == 1 else 'exist'}: the restore would refuse; "
            "give --overwrite to replace them, or restore into an empty directory"
        )
    print(summary)


def _print_json(data: object) -> None:
    # Names that are not valid UTF-8 appear as in the manifest's ``path`` ("caf\\xe9"):
    # valid JSON, unlike the raw byte or a lone surrogate escape.
    json.dump(_printable(data), sys.stdout, indent=2, ensure_ascii=False)
    sys.stdout.write("\n")


def _printable(data: object) -> object:
    if isinstance(data, str):
        return display_name(data)
    if isinstance(data, dict):
        return {_printable(key): _printable(value) for key, value in data.items()}
    if isinstance(data, list | tuple):
        return [_printable(item) for item in data]
    return data


def _absolute(path: Path | str) -> Path:
    return Path(path).absolute()


@contextmanager
def _progress(args: argparse.Namespace, label: str, total_bytes: int) -> Iterator[ProgressCallback | None]:
    """Yield a progress callback drawing a bar on stderr when it is a terminal, else None."""
    if not _draws_progress(args):
        yield None
        return
    with ProgressBar(label, total_bytes, sys.stderr) as bar:
        yield bar


def _draws_progress(args: argparse.Namespace) -> bool:
    return not (args.json or args.quiet) and sys.stderr.isatty()
