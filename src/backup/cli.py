"""The ``obs-backup`` command line: parse arguments, call the library, report.

No backup logic lives here. Exit codes: 0 success, 1 failure or verification
mismatch, 2 usage error. Errors are one line on stderr, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TextIO

from . import __version__
from .catalog import list_backups
from .config import BackupConfig, BackupResult
from .errors import BackupError, ConfigError
from .plan import BackupPlan, RestorePlan, execute_plan, plan_backup, plan_restore
from .tarwriter import ProgressCallback
from .verify import verify_backup

__all__ = ["main"]

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
DRY_RUN = "(dry run; not making any changes)"


class _UsageError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        self.print_usage(sys.stderr)
        raise _UsageError(message)


def build_parser() -> argparse.ArgumentParser:
    """Return the argument parser for every sub-command."""
    parser = _Parser(
        prog="obs-backup",
        description="Back up a directory to a standard tar archive with a SHA-256 manifest; "
        "verify and restore such archives safely.",
    )
    parser.add_argument("--version", action="version", version=f"obs-backup {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    commands.required = True

    create = commands.add_parser("create", help="back up a directory", description="Back up SOURCE into BACKUP_DIR.")
    create.add_argument("source", metavar="SOURCE", type=Path, help="directory to back up")
    create.add_argument("backup_dir", metavar="BACKUP_DIR", type=Path, help="directory that holds the backups")
    create.add_argument(
        "--compression", choices=["gz", "bz2", "xz", "zst", "none"], default="gz", help="archive compression (default: gz)"
    )
    create.add_argument("--level", type=int, default=None, help="compression level (default: the format's own)")
    create.add_argument("--prefix", default="backup", help="backup id prefix (default: backup)")
    create.add_argument(
        "--exclude", action="append", default=[], metavar="PATTERN", help="gitignore-style pattern to leave out (repeatable)"
    )
    create.add_argument(
        "--skip-unreadable", action="store_true", help="skip files that cannot be read (recorded as warnings) instead of failing"
    )
    create.add_argument("--no-manifest", action="store_true", help="write the archive only, without its manifest")
    create.add_argument("--list", action="store_true", help="with --dry-run, list every entry that would be archived")
    _common(create, dry_run=True)

    restore = commands.add_parser("restore", help="restore an archive", description="Restore ARCHIVE into TARGET.")
    restore.add_argument("archive", metavar="ARCHIVE", type=Path, help="archive to restore")
    restore.add_argument("target", metavar="TARGET", type=Path, help="directory to restore into (created if missing)")
    restore.add_argument("--overwrite", action="store_true", help="replace entries that already exist in TARGET")
    restore.add_argument("--no-verify", action="store_true", help="do not check restored files against the manifest")
    restore.add_argument(
        "--path", action="append", dest="paths", metavar="PATH", help="restore only this path (repeatable)"
    )
    restore.add_argument(
        "--allow-external-links", action="store_true", help="restore symlinks that point outside TARGET"
    )
    _common(restore, dry_run=True)

    verify = commands.add_parser(
        "verify", help="check an archive against its manifest", description="Check ARCHIVE against its manifest; write nothing."
    )
    verify.add_argument("archive", metavar="ARCHIVE", type=Path, help="archive to check")
    _common(verify, dry_run=False)

    listing = commands.add_parser("list", help="list complete backups", description="List the complete backups in BACKUP_DIR.")
    listing.add_argument("backup_dir", metavar="BACKUP_DIR", type=Path, help="directory that holds the backups")
    listing.add_argument("--prefix", default=None, help="only backups with this prefix")
    _common(listing, dry_run=False)
    return parser


def _common(parser: argparse.ArgumentParser, *, dry_run: bool) -> None:
    parser.add_argument("--json", action="store_true", help="print machine-readable JSON on stdout")
    parser.add_argument("-q", "--quiet", action="store_true", help="print nothing but errors")
    if dry_run:
        parser.add_argument("--dry-run", action="store_true", help="print what would be done and change nothing")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line with ``argv`` (default ``sys.argv[1:]``); return the exit code."""
    try:
        args = build_parser().parse_args(argv)
    except _UsageError as exc:
        print(f"obs-backup: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    handler: Callable[[argparse.Namespace], int] = _COMMANDS[args.command]
    try:
        return handler(args)
    except ConfigError as exc:
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


def _cmd_create(args: argparse.Namespace) -> int:
    config = BackupConfig(
        source_dir=args.source,
        backup_dir=args.backup_dir,
        prefix=args.prefix,
        compression="" if args.compression == "none" else args.compression,
        include_manifest=not args.no_manifest,
        exclude=tuple(args.exclude),
        compression_level=args.level,
        on_read_error="skip" if args.skip_unreadable else "fail",
    )
    plan = plan_backup(config)
    if args.dry_run:
        _print_backup_plan(plan, args)
        return EXIT_OK
    with _progress(args, "backing up", len(plan.entries), plan.total_bytes) as progress:
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
    )
    if args.dry_run:
        _print_restore_plan(plan, args)
        return EXIT_OK
    with _progress(args, "restoring", len(plan.entries), plan.total_bytes) as progress:
        result = execute_plan(plan, progress)
    return _report(result, args, "restore")


def _cmd_verify(args: argparse.Namespace) -> int:
    with _progress(args, "verifying", 0, 0) as progress:
        report = verify_backup(args.archive, progress=progress)
    if args.json:
        _print_json(report.to_dict())
    elif not args.quiet or not report.ok:
        out = sys.stdout if report.ok else sys.stderr
        for line in report.lines():
            print(line, file=out)
        print(report.summary(), file=out)
    return EXIT_OK if report.ok else EXIT_FAILED


def _cmd_list(args: argparse.Namespace) -> int:
    backups = list_backups(args.backup_dir, prefix=args.prefix)
    if args.json:
        _print_json([backup.to_dict() for backup in backups])
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
        print(f"{backup.backup_id:<36} {created:<25} {_size(backup.size_bytes):>10} {files:>7}  {backup.archive_path.name}")
        if backup.problem:
            print(f"  problem: {backup.problem}")
    return EXIT_OK


_COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "create": _cmd_create,
    "restore": _cmd_restore,
    "verify": _cmd_verify,
    "list": _cmd_list,
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
            f"created {result.backup_path}: {files} files, {_size(total)} read, "
            f"archive {_size(result.archive_size)}, {result.duration_seconds:.1f}s"
        )
    checked = "verified against the manifest" if result.verified else "not verified"
    return f"restored {result.entry_count} entries into {result.backup_path} ({checked}), {result.duration_seconds:.1f}s"


def _result_dict(result: BackupResult) -> dict[str, Any]:
    manifest = result.manifest
    return {
        "success": result.success,
        "error": result.error,
        "backup_id": result.backup_id,
        "path": None if result.backup_path is None else str(result.backup_path),
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
    print(f"{DRY_RUN} would back up {plan.config.source_dir} to {plan.archive_path}")
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
    print(f"{DRY_RUN} would restore {plan.archive_path} into {plan.restore_dir} {verify} checksum verification")
    print(f"{DRY_RUN} {len(plan.entries)} entries, {_size(plan.total_bytes)}")
    for entry in plan.entries:
        print(f"{DRY_RUN} write {entry.kind:<7} {entry.path}")
    action = "replace" if plan.overwrite else "conflict (already exists)"
    for path in plan.conflicts:
        print(f"{DRY_RUN} {action} {path}")
    for warning in plan.warnings:
        print(f"{DRY_RUN} warning {warning}")


def _print_json(data: object) -> None:
    json.dump(data, sys.stdout, indent=2, ensure_ascii=False)
    sys.stdout.write("\n")


def _size(count: int) -> str:
    value = float(count)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{count} B"


@contextmanager
def _progress(args: argparse.Namespace, label: str, entries: int, total_bytes: int) -> Iterator[ProgressCallback | None]:
    """Yield a progress callback drawing a bar on a terminal, or None when not on one."""
    stream: TextIO = sys.stderr
    if args.json or args.quiet or not stream.isatty():
        yield None
        return
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn

    columns = [TextColumn(f"{label}"), BarColumn(), DownloadColumn(), TimeRemainingColumn()]
    with Progress(*columns, transient=True) as bar:
        task = bar.add_task(label, total=total_bytes or None)

        def update(done_entries: int, done_bytes: int) -> None:
            bar.update(task, completed=done_bytes)

        yield update
