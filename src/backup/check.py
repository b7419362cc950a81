"""Checking every backup in a location: its structure always, its content on request.

What a check does, in order:

1. The location is listed (``backup.listing``): the backups this tool provably wrote,
   then the manifests of ours whose archive is not there. Other programs' files are
   neither read further nor reported. (An archive without a usable manifest is
   proved ours by its first header, so one damaged there is not listed either.)
2. Structure, for every backup, without reading any archive: its manifest is read
   again and must parse and name its archive, and the archive's size must be the one
   the manifest recorded. A backup made without a manifest is "no manifest", which is
   not a fault (there is nothing to compare it with; a backup whose manifest was
   deleted looks the same, since the archive does not record whether it had one).
3. Content, with ``read_data``: each archive is read to its end and checked as
   ``verify_backup`` checks it (every file's checksum, the archive's own size and
   checksum). An archive without a manifest is read through, which checks its tar
   structure and its compression's own checks; if they pass it is
   "ok, no checksums". An archive whose size already disagrees with its manifest is
   not read; one whose manifest cannot be used is read as if it had none, to say
   whether it can still be restored.

Nothing in the location is written, removed or locked, so a check may run beside a
backup or a prune, and what those do meanwhile is not damage: a manifest whose
archive a writer is still writing is "being written", and a backup that goes away
between the listing and its check is "removed while checking" (a prune removes the
archive first, then the manifest). A committed manifest of ours without its archive,
and no writer at work on it, is "missing archive", which is damage: the archive was
lost, or a run was cut off between its two commits (the next backup or prune then
removes that manifest as a leftover).

Subsets (``subset=(n, m)``, "n/m" on the command line) choose whose content is read.
A backup belongs to part ``sha256(backup id) mod m + 1`` (the first 8 bytes of the
digest, big-endian). The part depends on the id alone: running parts 1/m to m/m on m
consecutive days reads every backup once per cycle, whatever backups came or went
meanwhile (a new one waits at most one cycle), and the parts are about equally large
whatever the schedule. A rule by day of creation would put every weekly backup into
one part of 7; a rule by position in the list would shift every backup to another
part whenever an old one is pruned, so that some would be skipped for a cycle.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal

from .catalog import BackupInfo, encrypted_archive_name, own_archive_name, own_manifest, parse_backup_id
from .errors import ConfigError, IdentityError, ManifestError, StorageError
from .hashing import new_hasher
from .keys import Identities
from .listing import list_backups
from .manifest import MANIFEST_SUFFIX, read_manifest
from .manifest.files import MAX_MANIFEST_BYTES, read_sidecar
from .manifest.sidecar import SIDECAR_SUFFIX, Sidecar
from .progress import ProgressCallback, format_size
from .storage import Location, open_storage
from .storage.base import BackupStorage, ObjectRef
from .stream.tarreader import read_archive_marker
from .verify import VerifyReport, verify_archive, verify_backup, verify_ciphertext

__all__ = [
    "DAMAGED_STATUSES",
    "CheckProgress",
    "CheckReport",
    "CheckRow",
    "CheckStatus",
    "check_backups",
    "parse_subset",
    "subset_part",
]

CheckStatus = Literal[
    "ok",
    "ok, no checksums",
    "ok, ciphertext",
    "no manifest",
    "being written",
    "incomplete",
    "removed while checking",
    "damaged",
    "missing archive",
    "bad manifest",
]
"""What a check found of one backup; the last three are damage (see ``DAMAGED_STATUSES``)."""

DAMAGED_STATUSES: frozenset[CheckStatus] = frozenset({"damaged", "missing archive", "bad manifest"})

CheckProgress = Callable[[str, int, int], None]
"""Called as ``progress(backup_id, entries_done, bytes_done)`` while a backup's data is read."""

_SUBSET = re.compile(r"([0-9]+)/([0-9]+)")


@dataclass(frozen=True)
class CheckRow:
    """What a check found of one backup.

    ``detail`` is one line giving the cause of anything not plainly "ok"; ``problems``
    holds every problem a data read found. ``archive`` and ``manifest`` are where they
    are (or, for a missing archive, where it should be); ``size`` is the archive's size
    in bytes (for a missing one, the size its manifest recorded).
    """

    backup_id: str
    status: CheckStatus
    detail: str = ""
    data_checked: bool = False
    archive: str | None = None
    manifest: str | None = None
    size: int | None = None
    problems: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        """Whether nothing is wrong with this backup."""
        return self.status not in DAMAGED_STATUSES

    def to_dict(self) -> dict[str, object]:
        """Return the row as JSON-ready data."""
        return {
            "backup_id": self.backup_id,
            "status": self.status,
            "ok": self.ok,
            "detail": self.detail,
            "data_checked": self.data_checked,
            "archive": self.archive,
            "manifest": self.manifest,
            "size": self.size,
            "problems": list(self.problems),
        }


@dataclass(frozen=True)
class CheckReport:
    """What a check of a whole location found: one row per backup, oldest first."""

    location: str
    rows: tuple[CheckRow, ...]
    checked_at: datetime
    read_data: bool = False
    subset: tuple[int, int] | None = None
    prefix: str | None = None

    @property
    def ok(self) -> bool:
        """Whether no backup is damaged (a location without backups is ok)."""
        return all(row.ok for row in self.rows)

    @property
    def damaged(self) -> list[CheckRow]:
        """The rows of damaged backups."""
        return [row for row in self.rows if not row.ok]

    def summary(self) -> str:
        """Return one line: how many backups, how they are, and how many had their data read."""
        where = self.location if self.prefix is None else f"{self.location} (prefix {self.prefix!r})"
        if not self.rows:
            return f"{where}: no backups to check"
        counts = Counter(row.status for row in self.rows)
        parts = [f"{counts['ok']} OK"]
        for label, count in (
            ("encrypted, ciphertext only", counts["ok, ciphertext"]),
            ("without manifest", counts["no manifest"] + counts["ok, no checksums"]),
            ("damaged", len(self.damaged)),
            ("being written", counts["being written"]),
            ("incomplete", counts["incomplete"]),
            ("removed while checking", counts["removed while checking"]),
        ):
            if count:
                parts.append(f"{count} {label}")
        total = len(self.rows)
        line = f"{where}: {total} backup{'' if total == 1 else 's'} checked: {', '.join(parts)}"
        if not self.read_data:
            return line + "; data not read"
        read = sum(row.data_checked for row in self.rows)
        line += f"; data read for {read} of {total}"
        return line if self.subset is None else line + f" (subset {self.subset[0]}/{self.subset[1]})"

    def lines(self) -> list[str]:
        """Return a table: a header, then one line per backup."""
        table = [("BACKUP ID", "STATUS", "DATA", "SIZE", "DETAIL")]
        for row in self.rows:
            size = "-" if row.size is None else format_size(row.size)
            table.append((row.backup_id, row.status, "read" if row.data_checked else "-", size, row.detail))
        widths = [max(len(cells[column]) for cells in table) for column in range(4)]
        return [
            f"{i:<{widths[0]}}  {s:<{widths[1]}}  {d:<{widths[2]}}  {z:>{widths[3]}}  {detail}".rstrip()
            for i, s, d, z, detail in table
        ]

    def to_dict(self) -> dict[str, object]:
        """Return the report as JSON-ready data."""
        return {
            "location": self.location,
            "prefix": self.prefix,
            "checked_at": self.checked_at.isoformat(),
            "ok": self.ok,
            "read_data": self.read_data,
            "subset": None if self.subset is None else f"{self.subset[0]}/{self.subset[1]}",
            "summary": self.summary(),
            "backups": [row.to_dict() for row in self.rows],
        }


def parse_subset(text: str) -> tuple[int, int]:
    """Given ``"n/m"`` (part n of m, such as ``"1/7"``), return ``(n, m)``; raise
    ConfigError saying what is wrong unless 1 <= n <= m."""
    match = _SUBSET.fullmatch(text.strip())
    if match is None:
        raise ConfigError(f"read-data subset {text!r}: expected n/m, part n of m, such as 1/7")
    subset = int(match[1]), int(match[2])
    _check_subset(subset)
    return subset


def _check_subset(subset: tuple[int, int]) -> None:
    part, parts = subset
    if parts < 1:
        raise ConfigError(f"read-data subset {part}/{parts}: m, the number of parts, must be at least 1")
    if not 1 <= part <= parts:
        raise ConfigError(f"read-data subset {part}/{parts}: n must be from 1 to {parts}")


def subset_part(backup_id: str, parts: int) -> int:
    """Given a backup id and a number of parts, return the part (1 to ``parts``) whose
    data read includes it (see the module docstring); the same on every machine."""
    digest = hashlib.sha256(backup_id.encode("utf-8", "surrogateescape")).digest()
    return int.from_bytes(digest[:8], "big") % parts + 1


def _utc_now() -> datetime:
    return datetime.now(UTC)


def check_backups(
    location: Location,
    *,
    prefix: str | None = None,
    read_data: bool = False,
    subset: tuple[int, int] | None = None,
    progress: CheckProgress | None = None,
    now: Callable[[], datetime] = _utc_now,
    identities: Identities | None = None,
) -> CheckReport:
    """Given a backup location, return what a check of its backups found (see the
    module docstring); write nothing.

    With ``prefix`` only that prefix's backups are checked. ``read_data`` reads every
    archive; ``subset=(n, m)`` reads those of part n of m only (and implies
    ``read_data``). ``now`` stamps the report. Encrypted backups are decrypted with
    ``identities`` when they are among their recipients; otherwise their ciphertext is
    checked against their sidecars. Damage is reported, never raised; raise
    ConfigError for a bad subset, StorageError if the location is missing or cannot be
    listed.
    """
    if subset is not None:
        _check_subset(subset)
        read_data = True
    storage = open_storage(location)
    checked_at = now()
    try:
        if not storage.exists():
            raise StorageError(f"{storage.location}: backup directory not found", storage.location)
        backups = list_backups(storage, prefix)
    except OSError as exc:
        raise StorageError(f"{storage.location}: cannot list: {exc.strerror or exc}", storage.location) from exc
    rows = []
    for backup in backups:
        read = read_data and (subset is None or subset_part(backup.backup_id, subset[1]) == subset[0])
        on_progress = None if progress is None else functools.partial(progress, backup.backup_id)
        if backup.sidecar is not None:
            rows.append(_check_encrypted(backup, read, on_progress, identities))
        else:
            rows.append(_check_backup(backup, read, on_progress))
    rows += _check_manifests_without_archive(storage, {backup.backup_id for backup in backups}, prefix)
    rows += _check_encrypted_leftovers(storage, {backup.backup_id for backup in backups}, prefix)
    if storage.manifest_commits:
        rows += _check_archives_without_manifest(storage, {backup.backup_id for backup in backups}, prefix)
    rows.sort(key=_oldest_first)
    return CheckReport(storage.location, tuple(rows), checked_at, read_data, subset, prefix)


def _check_backup(backup: BackupInfo, read: bool, progress: ProgressCallback | None) -> CheckRow:
    """Check one listed backup: its structure, then (if ``read``) its data."""
    archive = backup.archive
    manifest_label = None if backup.manifest is None else backup.manifest.label
    row = functools.partial(CheckRow, backup.backup_id, archive=archive.label, manifest=manifest_label)
    try:
        size = archive.storage.stat(archive.name).size
    except FileNotFoundError:
        return row("removed while checking", f"{archive.label}: removed since the listing")
    except OSError as exc:
        return row("damaged", f"{archive.label}: cannot read archive: {exc.strerror or exc}")
    row = functools.partial(row, size=size)
    if backup.manifest is None:
        if backup.problem is not None:
            return _bad_manifest(row, backup, backup.problem, read, progress)
        if not read:
            return row("no manifest", "made without a manifest (or it was lost): no checksums to compare")
        report = verify_archive(archive, backup.compression, progress=progress)
        if report.ok:
            return row("ok, no checksums", "read to the end; no manifest, so no checksums to compare", True)
        return row("damaged", _cause(report), True, problems=tuple(report.lines()))
    try:
        manifest = read_manifest(backup.manifest)
    except ManifestError as exc:
        if not archive.exists():
            return row("removed while checking", f"{archive.label}: removed since the listing")
        return _bad_manifest(row, backup, str(exc), read, progress)
    recorded = manifest.archive
    if recorded is None or recorded.name != archive.name or manifest.backup_id != backup.backup_id:
        return _bad_manifest(row, backup, f"{backup.manifest.label}: no longer names this archive", read, progress)
    if backup.problem is not None:
        return _bad_manifest(row, backup, backup.problem, read, progress)
    if recorded.size != size:
        return row("damaged", f"{archive.label}: archive is {size} bytes, manifest says {recorded.size}")
    if not read:
        return row("ok")
    report = verify_backup(archive, backup.manifest, progress=progress)
    if report.ok:
        return row("ok", "", True)
    if not archive.exists():
        return row("removed while checking", f"{archive.label}: removed while its data was read")
    return row("damaged", _cause(report), True, problems=tuple(report.lines()))


def _check_encrypted(
    backup: BackupInfo, read: bool, progress: ProgressCallback | None, identities: Identities | None
) -> CheckRow:
    """Check one encrypted backup: its objects against its sidecar and, with an identity
    among its recipients, its manifest; then (if ``read``) all of its data, decrypted
    with that identity, or else its ciphertext against the sidecar's checksums."""
    archive, manifest_ref, sidecar_ref = backup.archive, backup.manifest, backup.sidecar
    assert sidecar_ref is not None
    if manifest_ref is None:
        return CheckRow(backup.backup_id, "bad manifest", backup.problem or "", archive=archive.label)
    row = functools.partial(CheckRow, backup.backup_id, archive=archive.label, manifest=manifest_ref.label)
    try:
        size = archive.storage.stat(archive.name).size
        manifest_size = manifest_ref.storage.stat(manifest_ref.name).size
    except FileNotFoundError as exc:
        return row("removed while checking", f"{exc.filename or archive.label}: removed since the listing")
    except OSError as exc:
        return row("damaged", f"{archive.label}: cannot read: {exc.strerror or exc}")
    row = functools.partial(row, size=size)
    try:
        sidecar = read_sidecar(sidecar_ref)
    except ManifestError as exc:
        if not sidecar_ref.exists():
            return row("removed while checking", f"{sidecar_ref.label}: removed since the listing")
        return row("bad manifest", str(exc))
    if sidecar.archive.size != size:
        return row("damaged", f"{archive.label}: archive is {size} bytes, sidecar says {sidecar.archive.size}")
    if sidecar.manifest.size != manifest_size:
        return row(
            "damaged", f"{manifest_ref.label}: manifest is {manifest_size} bytes, sidecar says {sidecar.manifest.size}"
        )
    decrypt = identities is not None and identities.matching(sidecar.recipients)
    note = ""
    if identities is not None and not decrypt:
        note = f"not decrypted: no identity in {identities.source} is one of its recipients; "
    if decrypt:
        damage = _changed_since_sealed(manifest_ref, sidecar)
        if damage is not None:
            return row("bad manifest", damage)
        try:
            manifest = read_manifest(manifest_ref, identities)
        except (ManifestError, IdentityError) as exc:
            return row("bad manifest", str(exc))
        recorded = manifest.archive
        if recorded is None or recorded.name != archive.name or manifest.backup_id != backup.backup_id:
            return row("bad manifest", f"{manifest_ref.label}: no longer names this archive")
        if not read:
            return row("ok")
        report = verify_backup(archive, manifest_ref, progress=progress, identities=identities)
        status: CheckStatus = "ok"
        detail = ""
    else:
        if not read:
            return row("ok", note + "encrypted: sizes match its sidecar")
        report = verify_ciphertext(sidecar_ref, progress=progress)
        status = "ok, ciphertext"
        detail = note + "encrypted: its ciphertext matches its sidecar; the files need --identity to be checked"
    if report.ok:
        return row(status, detail, True)
    if not archive.exists():
        return row("removed while checking", f"{archive.label}: removed while its data was read")
    return row("damaged", _cause(report), True, problems=tuple(report.lines()))


def _changed_since_sealed(manifest_ref: ObjectRef, sidecar: Sidecar) -> str | None:
    """Return what is wrong with an encrypted manifest's bytes (their checksum is not
    the sidecar's, or they cannot be read), or None: damage found before decrypting."""
    hasher = new_hasher(sidecar.checksum_algorithm)
    try:
        with manifest_ref.storage.open_read(manifest_ref.name) as handle:
            while chunk := handle.read(1 << 20):
                hasher.update(chunk)
    except OSError as exc:
        return f"{manifest_ref.label}: cannot read manifest: {exc.strerror or exc}"
    if not hmac.compare_digest(hasher.hexdigest(), sidecar.manifest.checksum.lower()):
        return f"{manifest_ref.label}: manifest checksum {hasher.hexdigest()}, sidecar says {sidecar.manifest.checksum}"
    return None


def _check_encrypted_leftovers(storage: BackupStorage, listed: set[str], prefix: str | None) -> list[CheckRow]:
    """Return a row for each encrypted backup of ours that is not complete: in a
    directory, a sidecar whose archive is not there; in an object store, an encrypted
    archive, marked ours, whose sidecar is not."""
    try:
        objects = {info.name: info for info in storage.list_objects()}
    except OSError as exc:
        raise StorageError(f"{storage.location}: cannot list: {exc.strerror or exc}", storage.location) from exc
    rows = []
    for name, info in objects.items():
        if storage.manifest_commits:
            split = encrypted_archive_name(name)
            if split is None or split[0] in listed or split[0] + SIDECAR_SUFFIX in objects:
                continue
            backup_id = split[0]
        elif name.endswith(SIDECAR_SUFFIX):
            backup_id = name[: -len(SIDECAR_SUFFIX)]
        else:
            continue
        parsed = parse_backup_id(backup_id)
        if backup_id in listed or (prefix is not None and (parsed is None or parsed[0] != prefix)):
            continue
        sidecar_name = backup_id + SIDECAR_SUFFIX
        try:
            if storage.manifest_commits:
                if storage.marked(name) != backup_id:
                    continue  # not provably ours
                archive_name = name
            else:
                archive_name = read_sidecar(ObjectRef(storage, name, storage.describe(name))).archive.name
        except (OSError, ManifestError):
            continue  # gone since the listing, or not ours
        row = functools.partial(
            CheckRow,
            backup_id,
            archive=storage.describe(archive_name),
            manifest=storage.describe(sidecar_name),
            size=info.size if storage.manifest_commits else None,
        )
        if storage.claimed(backup_id) or storage.claimed(archive_name) or storage.claimed(sidecar_name):
            rows.append(row("being written", "an encrypted backup whose last object is not written yet"))
        elif storage.manifest_commits:
            rows.append(
                row(
                    "incomplete",
                    "an encrypted archive without its sidecar: its run was cut off before completing the backup; "
                    "not a backup, and removed by the next run once older than the grace period",
                )
            )
        elif not ObjectRef(storage, archive_name, "").exists():
            rows.append(
                row(
                    "missing archive",
                    f"{storage.describe(archive_name)}: archive not found, though its sidecar names it "
                    "(lost, or its run was cut off before committing it)",
                )
            )
    return rows


def _bad_manifest(
    row: Callable[..., CheckRow], backup: BackupInfo, why: str, read: bool, progress: ProgressCallback | None
) -> CheckRow:
    """A backup whose manifest cannot be used: with ``read``, say whether its archive
    at least reads to the end (then it can still be restored, unchecked)."""
    if not read:
        return row("bad manifest", why)
    report = verify_archive(backup.archive, backup.compression, progress=progress)
    if report.ok:
        return row("bad manifest", f"{why}; the archive reads to the end", True)
    return row("bad manifest", f"{why}; and {_cause(report)}", True, problems=tuple(report.lines()))


def _cause(report: VerifyReport) -> str:
    """Return the line of a failed data read that comes closest to the cause: why the
    archive could not be read to its end, else a file whose bytes differ, else another
    problem of the archive, else a file missing or extra; with how many more lines
    the report has."""
    found = [report.cause] if report.cause else []
    found += [f"mismatch: {m.path}: {m.problem}" for m in report.mismatched]
    found += report.problems
    found += [f"missing from archive: {path}" for path in report.missing]
    found += [f"not in manifest: {path}" for path in report.extra]
    if not found:
        return ""
    more = len(report.lines()) - 1
    return found[0] if more < 1 else f"{found[0]} (and {more} more problem{'' if more == 1 else 's'})"


def _check_manifests_without_archive(storage: BackupStorage, listed: set[str], prefix: str | None) -> list[CheckRow]:
    """Return a row for each manifest of ours whose archive is not in the location."""
    try:
        objects = storage.list_objects()
    except OSError as exc:
        raise StorageError(f"{storage.location}: cannot list: {exc.strerror or exc}", storage.location) from exc
    archived = {split[0] for split in map(own_archive_name, (info.name for info in objects)) if split is not None}
    rows = []
    for info in objects:
        if not info.name.endswith(MANIFEST_SUFFIX):
            continue
        backup_id = info.name[: -len(MANIFEST_SUFFIX)]
        if backup_id in listed or backup_id in archived:
            continue  # checked with its archive, or new since the listing
        parsed = parse_backup_id(backup_id)
        if prefix is not None and (parsed is None or parsed[0] != prefix):
            continue
        if info.size > MAX_MANIFEST_BYTES:
            continue  # not read, so not provably ours
        ref = ObjectRef(storage, info.name, storage.describe(info.name))
        try:
            with storage.open_read(info.name) as handle:
                raw = handle.read()
        except OSError:
            continue  # gone since the listing, or unreadable: not provably ours
        manifest, _ = own_manifest(raw, backup_id)
        if manifest is None or manifest.archive is None:
            continue  # another program's file
        row = functools.partial(
            CheckRow,
            backup_id,
            archive=storage.describe(manifest.archive.name),
            manifest=ref.label,
            size=manifest.archive.size,
        )
        # A writer gives up its claim only after its archive has landed: look for a
        # claim first, then for the archive.
        if storage.claimed(backup_id) or storage.claimed(manifest.archive.name):
            rows.append(
                row(
                    "being written",
                    "its archive is not committed yet, and a run holds its claim "
                    "(or a dead run left it, which the next run removes)",
                )
            )
        elif ObjectRef(storage, manifest.archive.name, "").exists():
            rows.append(row("being written", "its archive was committed during the check; check again to include it"))
        elif not ref.exists():
            rows.append(row("removed while checking", f"{ref.label}: removed since the listing"))
        else:
            rows.append(
                row(
                    "missing archive",
                    f"{storage.describe(manifest.archive.name)}: archive not found, though its manifest names it "
                    "(lost, or its run was cut off before committing it)",
                )
            )
    return rows


def _check_archives_without_manifest(storage: BackupStorage, listed: set[str], prefix: str | None) -> list[CheckRow]:
    """Where the manifest is the commit point (object storage), return a row for each
    archive of ours (by its mark) that has no manifest: being written, or left by a run
    cut off before its commit point, which is no backup and no damage either."""
    rows = []
    names = {info.name: info for info in storage.list_objects()}
    for name, info in names.items():
        split = own_archive_name(name)
        if split is None or split[0] in listed:
            continue
        backup_id = split[0]
        parsed = parse_backup_id(backup_id)
        if prefix is not None and (parsed is None or parsed[0] != prefix):
            continue
        manifest_name = backup_id + MANIFEST_SUFFIX
        archive = ObjectRef(storage, name, storage.describe(name))
        if manifest_name in names or read_archive_marker(archive) != backup_id:
            continue  # listed since, or not provably ours
        row = functools.partial(CheckRow, backup_id, archive=archive.label, manifest=None, size=info.size)
        if storage.claimed(manifest_name) or storage.claimed(backup_id):
            rows.append(row("being written", "its manifest, which completes it, is not written yet"))
        else:
            rows.append(
                row(
                    "incomplete",
                    "an archive without its manifest: its run was cut off before completing the backup; "
                    "not a backup, and removed by the next run once older than the grace period",
                )
            )
    return rows


def _oldest_first(row: CheckRow) -> tuple[datetime, str, int]:
    """Sort key: by the time the id names; within one second, in sequence order."""
    parsed = parse_backup_id(row.backup_id)
    if parsed is None:
        return datetime.min.replace(tzinfo=UTC), row.backup_id, 1
    _, moment, sequence = parsed
    base = row.backup_id.removesuffix(f"-{sequence}") if sequence > 1 else row.backup_id
    return moment, base, sequence
