"""The ``obs-backup`` command line: parse arguments, call the library, report.

No backup logic lives here. Exit codes: 0 success, 1 failure or verification
mismatch, 2 usage error. Errors are one line on stderr, never a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import codecs
import json
import logging
import signal
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import fields
from pathlib import Path
from typing import Any, TextIO, TypeVar

from shared.time_helpers import UnknownTimeZoneError, load_zone

from . import __version__
from .config import BackupConfig, BackupResult, SchedulerConfig
from .core import execute_plan
from .errors import BackupError, ConfigError, StorageError
from .listing import list_backups
from .manifest import display_name
from .plan import BackupPlan, RestorePlan, plan_backup, plan_restore
from .progress import ProgressCallback
from .prune import execute_prune, plan_prune
from .retention import RetentionPolicy, parse_duration
from .scheduler import BackupScheduler
from .settings import COMMANDS, Setting, load_settings, settings_for
from .storage import open_storage
from .verify import verify_backup

__all__ = ["main"]

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
DRY_RUN = "(dry run; not making any changes)"


_Config = TypeVar("_Config", BackupConfig, SchedulerConfig)


class _UsageError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        self.print_usage(sys.stderr)
        raise _UsageError(message)


_COMMAND_HELP: dict[str, tuple[str, str]] = {
    "create": ("back up a directory", "Back up SOURCE into BACKUP_DIR."),
    "restore": ("restore an archive", "Restore ARCHIVE into TARGET."),
    "verify": ("check an archive against its manifest", "Check ARCHIVE against its manifest."),
    "list": ("list complete backups", "List the backups in BACKUP_DIR."),
    "schedule": (
        "back up every day and apply retention (runs in the foreground)",
        "Back up SOURCE into BACKUP_DIR every day at --at in --tz, then remove old backups, until SIGINT or SIGTERM.",
    ),
    "prune": ("remove old backups by a retention policy", "Remove old backups from BACKUP_DIR."),
}


def build_parser() -> argparse.ArgumentParser:
    """Return the argument parser for every sub-command, derived from ``backup.settings``."""
    parser = _Parser(
        prog="obs-backup",
        description="Back up a directory to a standard tar archive with a SHA-256 manifest; "
        "verify and restore such archives safely.",
    )
    parser.add_argument("--version", action="version", version=f"obs-backup {__version__}")
    parser.add_argument("--config", type=Path, metavar="FILE.toml", help="read settings from a TOML file; flags win")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    commands.required = True
    for command in COMMANDS:
        summary, description = _COMMAND_HELP[command]
        sub = commands.add_parser(command, help=summary, description=description)
        for setting in settings_for(command):
            if setting.cli:
                _add_option(sub, setting, command)
    return parser


def _add_option(parser: argparse.ArgumentParser, setting: Setting, command: str) -> None:
    if setting.positional:
        parser.add_argument(
            setting.key,
            metavar=setting.key.upper(),
            type=setting.kind.parse,
            nargs="?",
            default=None,
            help=setting.help,
        )
        return
    options: dict[str, Any] = {"dest": setting.key, "action": setting.action, "default": argparse.SUPPRESS}
    help_text = setting.help
    if setting.action in ("store", "append"):
        options["type"] = setting.kind.parse
        if setting.metavar:
            options["metavar"] = setting.metavar
        if setting.choices:
            options["choices"] = setting.choices
    default = setting.default_for(command)
    if setting.action == "store" and default not in (None, (), [], False):
        help_text += f" (default: {default:g})" if isinstance(default, float) else f" (default: {default})"
    parser.add_argument(*setting.flags, help=help_text, **options)


def _resolve(args: argparse.Namespace) -> argparse.Namespace:
    """Fill every setting not given on the command line from --config, then defaults."""
    command = args.command
    from_file = load_settings(args.config, command) if args.config is not None else {}
    for setting in settings_for(command):
        given = getattr(args, setting.key, None) is not None if setting.positional else hasattr(args, setting.key)
        if given:
            continue
        if setting.key in from_file:
            setattr(args, setting.key, from_file[setting.key])
        else:
            setattr(args, setting.key, setting.default_for(command))
    for setting in settings_for(command):
        if setting.positional and getattr(args, setting.key) is None:
            raise _UsageError(f"{command}: {setting.key.upper()} is required (on the command line or in --config)")
    return args


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
    parser = build_parser()
    try:
        args = _resolve(parser.parse_args(argv))
    except _UsageError as exc:
        print(f"obs-backup: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except ConfigError as exc:
        print(f"obs-backup: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    handler: Callable[[argparse.Namespace], int] = _COMMANDS[args.command]
    try:
        return handler(args)
    except (ConfigError, UnknownTimeZoneError) as exc:
        print(f"obs-backup: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except BackupError as exc:
        print(f"obs-backup: error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        print("obs-backup: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return EXIT_FAILED
    except Exception as exc:  # a bug: still one line, and the exit code says it failed
        print(f"obs-backup: internal error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return EXIT_FAILED


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
    storage = open_storage(args.backup_dir)
    with storage.lock(args.lock_timeout):
        plan = plan_backup(config, storage=storage)
        with _progress(args, "backing up", plan.total_bytes) as progress:
            result = execute_plan(plan, progress)
    return _report(result, args, "backup")


def _cmd_restore(args: argparse.Namespace) -> int:
    plan = plan_restore(
        args.archive,
        args.target,
        paths=args.paths,
        overwrite=args.overwrite,
        verify_checksums=not args.no_verify,
        allow_external_links=args.allow_external_links,
        list_archive=args.dry_run,  # without a manifest, only a dry run needs a separate listing pass
        same_owner=False if args.no_same_owner else None,
        numeric_owner=args.numeric_owner,
    )
    if args.dry_run:
        _print_restore_plan(plan, args)
        return EXIT_OK
    with _progress(args, "restoring", plan.total_bytes) as progress:
        result = execute_plan(plan, progress)
    return _report(result, args, "restore")


def _cmd_verify(args: argparse.Namespace) -> int:
    with _progress(args, "verifying", 0) as progress:
        report = verify_backup(args.archive, progress=progress, check_owners=args.check_owners)
    if args.json:
        _print_json(report.to_dict())
    elif not args.quiet or not report.ok:
        out = sys.stdout if report.ok else sys.stderr
        for line in report.lines():
            print(line, file=out)
        print(report.summary(), file=out)
    return EXIT_OK if report.ok else EXIT_FAILED


def _cmd_list(args: argparse.Namespace) -> int:
    from datetime import UTC, datetime

    from .retention import FUTURE_REASON, is_dated_in_future

    backups = list_backups(open_storage(args.backup_dir), prefix=args.prefix)
    now = datetime.now(UTC)
    if args.json:
        _print_json([{**backup.to_dict(), "future": is_dated_in_future(backup, now)} for backup in backups])
        return EXIT_OK
    if args.quiet:
        return EXIT_OK
    if not backups:
        print(f"no complete backups in {args.backup_dir}")
        return EXIT_OK
    print(f"{'BACKUP ID':<36} {'CREATED':<25} {'SIZE':>10} {'FILES':>7}  ARCHIVE")
    for backup in backups:
        created = backup.created_at.isoformat(timespec="seconds") if backup.created_at else "?"
        files = "?" if backup.file_count is None else str(backup.file_count)
        print(f"{backup.backup_id:<36} {created:<25} {_size(backup.size_bytes):>10} {files:>7}  {backup.archive.name}")
        if is_dated_in_future(backup, now):
            print(f"  warning: {FUTURE_REASON}")
        if backup.problem:
            print(f"  problem: {backup.problem}")
    return EXIT_OK


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
    logging.basicConfig(
        level=logging.WARNING if args.quiet else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )

    def done(result: BackupResult) -> None:
        if args.json:
            print(json.dumps(_printable(_result_dict(result)), ensure_ascii=False), flush=True)

    scheduler = BackupScheduler(config, on_complete=done)
    print(
        f"obs-backup: scheduling {config.source_dir} -> {config.backup_dir} daily at "
        f"{config.schedule_time:%H:%M} {config.tz_name}; {config.retention_policy().describe()}",
        file=sys.stderr,
    )
    asyncio.run(_serve(scheduler))
    return EXIT_OK


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
    storage = open_storage(args.backup_dir)
    if not storage.exists():
        raise StorageError(f"{args.backup_dir}: backup directory does not exist", args.backup_dir)
    if args.dry_run:
        result = execute_prune(storage, plan_prune(storage, policy, zone, args.prefix), dry_run=True)
    else:
        with storage.lock(args.lock_timeout):
            result = execute_prune(storage, plan_prune(storage, policy, zone, args.prefix))
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
    for error in result.errors:
        print(f"obs-backup: error: {error}", file=sys.stderr)
    return EXIT_OK if result.success else EXIT_FAILED


_COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "create": _cmd_create,
    "restore": _cmd_restore,
    "verify": _cmd_verify,
    "list": _cmd_list,
    "schedule": _cmd_schedule,
    "prune": _cmd_prune,
}


def _report(result: BackupResult, args: argparse.Namespace, what: str) -> int:
    if args.json:
        _print_json(_result_dict(result))
    else:
        for warning in result.warnings:
            print(f"obs-backup: warning: {warning}", file=sys.stderr)
        if not result.success:
            print(f"obs-backup: error: {result.error}", file=sys.stderr)
        elif not args.quiet:
            print(_result_line(result, what))
    return EXIT_OK if result.success else EXIT_FAILED


def _result_line(result: BackupResult, what: str) -> str:
    if what == "backup":
        manifest = result.manifest
        files = manifest.file_count if manifest else 0
        total = manifest.total_size if manifest else 0
        return (
            f"created {result.archive or result.backup_path}: {files} files, {_size(total)} read, "
            f"archive {_size(result.archive_size)}, {result.duration_seconds:.1f}s"
        )
    checked = "verified against the manifest" if result.verified else "not verified"
    return (
        f"restored {result.entry_count} entries into {result.backup_path} ({checked}), {result.duration_seconds:.1f}s"
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
        _print_json({"dry_run": True, **data})
        return
    print(f"{DRY_RUN} would back up {plan.config.source_dir} to {plan.archive_label}")
    print(f"{DRY_RUN} {plan.file_count} files, {len(plan.entries)} entries, {_size(plan.total_bytes)}")
    if args.list:
        for entry in plan.entries:
            print(f"{DRY_RUN} archive {entry.kind:<7} {entry.path}")
    for excluded in plan.excluded:
        print(f"{DRY_RUN} exclude {excluded.path}: {excluded.reason}")
    for problem in plan.problems:
        print(f"{DRY_RUN} problem {problem}")


def _print_restore_plan(plan: RestorePlan, args: argparse.Namespace) -> None:
    if args.json:
        _print_json({"dry_run": True, **plan.to_dict()})
        return
    verify = "with" if plan.verify_checksums and plan.manifest is not None else "without"
    print(f"{DRY_RUN} would restore {plan.archive.label} into {plan.restore_dir} {verify} checksum verification")
    print(f"{DRY_RUN} {len(plan.entries)} entries, {_size(plan.total_bytes)}")
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


def _size(count: int) -> str:
    value = float(count)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{count} B"


@contextmanager
def _progress(args: argparse.Namespace, label: str, total_bytes: int) -> Iterator[ProgressCallback | None]:
    """Yield a progress callback drawing a bar on stderr when it is a terminal, else None."""
    stream: TextIO = sys.stderr
    if args.json or args.quiet or not stream.isatty():
        yield None
        return
    from rich.console import Console
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn

    columns = [TextColumn(f"{label}"), BarColumn(), DownloadColumn(), TimeRemainingColumn()]
    with Progress(*columns, console=Console(file=stream), transient=True) as bar:
        task = bar.add_task(label, total=total_bytes or None)

        def update(done_entries: int, done_bytes: int) -> None:
            bar.update(task, completed=done_bytes)

        yield update
