"""Checking an archive against its manifest without writing anything.

The whole archive is read once; every problem found is reported (the check does not
stop at the first one): files missing from the archive, members the manifest does
not list, files whose bytes, size, type or link target differ, unsafe members, and an
archive whose own size or checksum differs from what the manifest recorded.
"""

from __future__ import annotations

import hmac
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from .errors import ArchiveError, IdentityError, ManifestError, UnsafeArchiveError
from .hashing import CHUNK_SIZE, DEFAULT_ALGORITHM, new_hasher
from .keys import Identities
from .manifest import BackupManifest, ManifestEntry, manifest_name_for, read_manifest
from .manifest.files import read_sidecar, sidecar_for
from .progress import ProgressCallback, format_count
from .safety import DEVICE_KINDS, MemberChecker, SafeMember, Selection, is_selected
from .storage import locate
from .storage.base import ObjectRef
from .stream.tarreader import ArchiveReader, digest_regions

__all__ = [
    "Comparison",
    "Mismatch",
    "VerifyReport",
    "compare_entry",
    "compare_with_manifest",
    "verify_archive",
    "verify_backup",
    "verify_ciphertext",
]


@dataclass(frozen=True)
class Mismatch:
    """One entry whose archived content differs from the manifest."""

    path: str
    problem: str


_SHOWN_LINES = 20  # problems of one kind listed line by line; the rest are counted


@dataclass
class VerifyReport:
    """What a verification found. ``ok`` is true only if nothing at all was wrong.

    ``cause`` is why the archive could not be read to its end (missing, truncated,
    damaged): the root cause of every file after it being ``missing``.
    ``checksums`` is False for an archive without a manifest: then only the tar and
    compression layers were checked, by reading them to the end.
    """

    archive_path: Path
    manifest_path: Path | None
    checked_entries: int = 0
    checked_bytes: int = 0
    missing: list[str] = field(default_factory=list)
    extra: list[str] = field(default_factory=list)
    mismatched: list[Mismatch] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    duration_seconds: float = 0.0
    cause: str | None = None
    checksums: bool = True
    # An encrypted backup checked without its identity: only the ciphertext's size and
    # checksum (archive and manifest), against its sidecar.
    ciphertext_only: bool = False
    # Where the archive is, for people: its path, or its URL in an object store.
    archive_label: str = ""
    manifest_label: str | None = None

    @property
    def label(self) -> str:
        """The archive, as messages name it."""
        return self.archive_label or str(self.archive_path)

    @property
    def ok(self) -> bool:
        return not (self.cause or self.missing or self.extra or self.mismatched or self.problems)

    def summary(self) -> str:
        """Return one line describing the outcome."""
        read = f"{format_count(self.checked_entries, 'entry', 'entries')}, {self.checked_bytes} bytes"
        if self.ok and self.ciphertext_only:
            return (
                f"{self.label}: OK, ciphertext intact ({self.checked_bytes} bytes of archive and manifest match "
                "the sidecar's checksums); the files were not checked: give --identity to decrypt and check them"
            )
        if self.ok and not self.checksums:
            return f"{self.label}: OK, no checksums (no manifest): {read} read; tar and compression intact"
        if self.ok:
            return f"{self.label}: OK, {read} verified"
        counts = [f"{len(items)} {label}" for label, items in self._kinds() if items]
        if self.cause:
            counts.insert(0, f"unreadable after {read}")
        return f"{self.label}: FAILED, " + ", ".join(counts)

    def _kinds(self) -> list[tuple[str, list[str] | list[Mismatch]]]:
        return [
            ("missing", self.missing),
            ("extra", self.extra),
            ("mismatched", self.mismatched),
            ("other problems", self.problems),
        ]

    def lines(self) -> list[str]:
        """Return the problems, root cause first: a line each, up to 20 of a kind
        (``to_dict`` lists every one). Files not reached because the archive could not
        be read further are one line."""
        out = [self.cause] if self.cause else []
        if self.cause and self.missing:
            out.append(
                f"{format_count(len(self.missing), 'file or directory', 'files and directories')} of the manifest "
                "not found before that point"
            )
        else:
            out += _capped([f"missing from archive: {path}" for path in self.missing], "missing")
        out += _capped([f"not in manifest: {path}" for path in self.extra], "not in manifest")
        out += _capped([f"mismatch: {m.path}: {m.problem}" for m in self.mismatched], "mismatched")
        out += self.problems
        return out

    def to_dict(self) -> dict[str, object]:
        """Return the report as JSON-ready data."""
        return {
            "archive_path": self.label,
            "manifest_path": self.manifest_label or (None if self.manifest_path is None else str(self.manifest_path)),
            "ok": self.ok,
            "checked_entries": self.checked_entries,
            "checked_bytes": self.checked_bytes,
            "missing": self.missing,
            "extra": self.extra,
            "mismatched": [{"path": m.path, "problem": m.problem} for m in self.mismatched],
            "problems": self.problems,
            "cause": self.cause,
            "checksums": self.checksums,
            "ciphertext_only": self.ciphertext_only,
            "duration_seconds": round(self.duration_seconds, 3),
        }


def _capped(lines: list[str], kind: str) -> list[str]:
    if len(lines) <= _SHOWN_LINES:
        return lines
    return [*lines[:_SHOWN_LINES], f"... and {len(lines) - _SHOWN_LINES} more {kind} (all of them with --json)"]


def compare_entry(
    member: SafeMember, expected: ManifestEntry, checksum: str | None, *, check_owners: bool = False
) -> str | None:
    """Given an extracted or read member, its manifest entry and its data checksum, return
    what differs, or None if they agree. Owners are compared with ``check_owners``."""
    kind = member.kind
    if kind == "hardlink" and expected.type == "file":
        kind = "file"  # a manifest of version 2 or less lists another name of a file as a file
    if kind != expected.type:
        return f"archive has a {kind}, manifest says {expected.type}"
    if kind in ("symlink", "hardlink") and member.link_target != expected.link_target:
        return f"link target {member.link_target!r}, manifest says {expected.link_target!r}"
    if kind in ("file", "hardlink"):
        if member.kind == "file" and member.size != expected.size:
            return f"size {member.size}, manifest says {expected.size}"
        if checksum is not None and not hmac.compare_digest(checksum, expected.checksum.lower()):
            return f"checksum {checksum}, manifest says {expected.checksum}"
    if kind in DEVICE_KINDS and expected.device is not None and member.device != expected.device:
        return f"device {member.device}, manifest says {expected.device}"
    if expected.xattrs is not None or member.xattrs:
        if dict(member.xattrs) != (expected.xattrs or {}):
            return f"extended attributes {sorted(member.xattrs)}, manifest says {sorted(expected.xattrs or {})}"
    if check_owners and expected.uid is not None:
        archived = (member.uid, member.gid, member.uname, member.gname)
        recorded = (expected.uid, expected.gid, expected.user or "", expected.group or "")
        if archived != recorded:
            return f"owner {_owner(*archived)}, manifest says {_owner(*recorded)}"
    return None


def _owner(uid: int, gid: int | None, user: str, group: str) -> str:
    return f"{user or '?'}({uid}):{group or '?'}({'?' if gid is None else gid})"


@dataclass
class Comparison:
    """How archived members differ from a manifest: the parts of a verification report."""

    missing: list[str] = field(default_factory=list)
    extra: list[str] = field(default_factory=list)
    mismatched: list[Mismatch] = field(default_factory=list)
    archive: list[str] = field(default_factory=list)


def compare_with_manifest(
    manifest: BackupManifest,
    members: Mapping[str, SafeMember],
    digests: Mapping[str, str],
    archive_label: str,
    archive_size: int | None = None,
    archive_digest: str | None = None,
    paths: Sequence[str] | Selection | None = None,
    *,
    check_owners: bool = False,
) -> Comparison:
    """Given a manifest and the members read from its archive (in archive order) with
    their data checksums, return every difference. ``paths`` limits the check to a
    selection; the archive's own size and checksum are compared when given."""
    expected = {
        path: entry for path, entry in manifest.entry_map().items() if is_selected(path, paths, entry.type == "dir")
    }
    result = Comparison(missing=[path for path in expected if path not in members])
    for name, member in members.items():
        entry = expected.get(name)
        if entry is None:
            result.extra.append(name)
            continue
        problem = compare_entry(member, entry, digests.get(name), check_owners=check_owners)
        if problem:
            result.mismatched.append(Mismatch(name, problem))
    info = manifest.archive
    if info is not None and archive_size is not None and archive_digest is not None:
        if info.size != archive_size:
            result.archive.append(f"{archive_label}: archive is {archive_size} bytes, manifest says {info.size}")
        elif not hmac.compare_digest(archive_digest, info.checksum.lower()):
            result.archive.append(f"{archive_label}: archive checksum {archive_digest}, manifest says {info.checksum}")
    return result


def verify_backup(
    archive_path: Path | ObjectRef,
    manifest_path: Path | ObjectRef | None = None,
    *,
    progress: ProgressCallback | None = None,
    check_owners: bool = False,
    identities: Identities | None = None,
) -> VerifyReport:
    """Given an archive (and optionally its manifest), return what a full check found.

    With ``check_owners`` the owners the archive gives are compared with the manifest's
    too. An encrypted backup is decrypted with ``identities``; without them, only its
    ciphertext is checked against its sidecar (see ``verify_ciphertext``). Never raises
    for a bad archive or manifest: each problem is in the report. Raise IdentityError if
    the identities given are not among an encrypted backup's recipients.
    """
    started = time.monotonic()
    archive = locate(archive_path)
    manifest_ref = locate(manifest_path) if manifest_path else archive.sibling(manifest_name_for(archive.name))
    sidecar_ref = sidecar_for(archive)
    if sidecar_ref is not None and identities is None:
        return verify_ciphertext(sidecar_ref, progress=progress)
    report = VerifyReport(
        Path(archive.label), Path(manifest_ref.label), archive_label=archive.label, manifest_label=manifest_ref.label
    )
    manifest: BackupManifest | None = None
    try:
        manifest = read_manifest(manifest_ref, identities)
    except ManifestError as exc:
        if manifest_ref.exists():
            report.problems.append(str(exc))
        else:
            report.manifest_path = None
            report.checksums = False
    algorithm = manifest.checksum_algorithm if manifest else DEFAULT_ALGORITHM
    compression = manifest.archive.compression if manifest and manifest.archive else None
    members: dict[str, SafeMember] = {}
    digests: dict[str, str] = {}
    size = digest = None
    try:
        size, digest = _read_members(
            archive,
            algorithm,
            compression,
            members,
            digests,
            report,
            progress,
            foreign=manifest is None,
            identities=identities,
        )
    except (ArchiveError, IdentityError) as exc:
        report.cause = str(exc)
    except Exception as exc:  # a bug: reported, never raised
        report.problems.append(f"{archive.label}: verify failed: internal error: {type(exc).__name__}: {exc}")
    if manifest is not None:
        found = compare_with_manifest(
            manifest, members, digests, archive.label, size, digest, check_owners=check_owners
        )
        report.missing, report.extra, report.mismatched = found.missing, found.extra, found.mismatched
        report.problems += found.archive
    report.duration_seconds = time.monotonic() - started
    return report


def _read_members(
    archive: ObjectRef,
    algorithm: str,
    compression: str | None,
    members: dict[str, SafeMember],
    digests: dict[str, str],
    report: VerifyReport,
    progress: ProgressCallback | None,
    *,
    foreign: bool = False,
    identities: Identities | None = None,
) -> tuple[int, str]:
    """Read the whole archive, filling ``members`` and ``digests`` as it goes (so a
    damaged archive still reports what came before the damage); return its size and
    checksum. Unsafe members are reported and skipped; raise ArchiveError if unreadable.

    A symlink is checked as what it is, whatever it points to: a backup of a tree that
    links to /etc/ssl/certs verifies (only restoring such a link needs permission).
    """
    checker = MemberChecker(archive.label, foreign=foreign)
    with ArchiveReader(archive, algorithm, compression, identities) as reader:
        if progress is not None:
            reader.on_data = lambda done: progress(report.checked_entries, report.checked_bytes + done)
        for member in reader.members():
            try:
                safe = checker.check(member, writes=False)
            except UnsafeArchiveError as exc:
                report.problems.append(str(exc))
                continue
            if safe is None:
                continue
            if safe.kind == "file":
                digests[safe.name] = digest_regions(reader.regions(member), safe.size, algorithm)
                report.checked_bytes += safe.data_size
            elif safe.kind == "hardlink" and safe.link_target in digests:
                digests[safe.name] = digests[safe.link_target]
            members[safe.name] = safe
            report.checked_entries += 1
            if progress is not None:
                progress(report.checked_entries, report.checked_bytes)
        try:
            checker.recheck_links()
        except UnsafeArchiveError as exc:
            report.problems.append(str(exc))
        return reader.finish()


def verify_ciphertext(sidecar_ref: ObjectRef, *, progress: ProgressCallback | None = None) -> VerifyReport:
    """Given an encrypted backup's sidecar, return what reading its archive and its
    encrypted manifest found: whether each has the size and checksum the sidecar
    records. Needs no identity, and checks no file. Never raises: each problem is in the
    report (a sidecar that cannot be read, too).
    """
    started = time.monotonic()
    report = VerifyReport(Path(sidecar_ref.label), None, ciphertext_only=True, archive_label=sidecar_ref.label)
    try:
        sidecar = read_sidecar(sidecar_ref)
    except ManifestError as exc:
        report.cause = str(exc)
        return report
    archive, manifest = sidecar_ref.sibling(sidecar.archive.name), sidecar_ref.sibling(sidecar.manifest.name)
    report.archive_path, report.archive_label = Path(archive.label), archive.label
    report.manifest_path, report.manifest_label = Path(manifest.label), manifest.label
    expected = (
        (archive, "archive", sidecar.archive.size, sidecar.archive.checksum),
        (manifest, "manifest", sidecar.manifest.size, sidecar.manifest.checksum),
    )
    for ref, what, size, checksum in expected:
        hasher = new_hasher(sidecar.checksum_algorithm)
        read = 0
        try:
            with ref.storage.open_read(ref.name) as handle:
                while chunk := handle.read(CHUNK_SIZE):
                    hasher.update(chunk)
                    read += len(chunk)
                    if progress is not None:
                        progress(report.checked_entries, report.checked_bytes + read)
        except FileNotFoundError:
            report.problems.append(f"{ref.label}: {what} not found (named by {sidecar_ref.label})")
            continue
        except OSError as exc:
            report.problems.append(f"{ref.label}: cannot read {what}: {exc.strerror or exc}")
            continue
        report.checked_bytes += read
        report.checked_entries += 1
        digest = hasher.hexdigest()
        if read != size:
            report.problems.append(f"{ref.label}: {what} is {read} bytes, sidecar says {size}")
        elif not hmac.compare_digest(digest, checksum.lower()):
            report.problems.append(f"{ref.label}: {what} checksum {digest}, sidecar says {checksum}")
    report.duration_seconds = time.monotonic() - started
    return report


def verify_archive(
    archive_path: Path | ObjectRef, compression: str | None = None, *, progress: ProgressCallback | None = None
) -> VerifyReport:
    """Given an archive that has no manifest (and its compression, if known), return what
    reading all of it found: a damaged or truncated tar or compressed stream, and unsafe
    members. Nothing records the files' checksums, so none are compared. Never raises:
    each problem is in the report.
    """
    started = time.monotonic()
    archive = locate(archive_path)
    report = VerifyReport(Path(archive.label), None, checksums=False, archive_label=archive.label)
    try:
        _read_members(archive, DEFAULT_ALGORITHM, compression, {}, {}, report, progress, foreign=True)
    except (ArchiveError, IdentityError) as exc:
        report.cause = str(exc)
    except Exception as exc:  # a bug: reported, never raised
        report.problems.append(f"{archive.label}: verify failed: internal error: {type(exc).__name__}: {exc}")
    report.duration_seconds = time.monotonic() - started
    return report
