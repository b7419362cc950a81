"""Tests for backup.verify: verify_backup's report, and the comparisons it is made of.

Each problem is made by editing a real backup's manifest (a valid manifest that tells
a different story from its archive), so the report is tested line by line.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import tarfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from backup import BackupConfig, create_backup
from backup.config import BackupResult
from backup.manifest import ArchiveInfo, BackupManifest, ManifestEntry
from backup.safety import SafeMember
from backup.storage import LocalStorage, ObjectRef
from backup.verify import Mismatch, VerifyReport, compare_entry, compare_with_manifest, verify_backup

MOMENT = datetime(2024, 5, 6, 7, 8, 9, tzinfo=UTC)
A_DATA = b"alpha\n"
B_DATA = bytes(range(256)) * 20


@pytest.fixture
def made(tmp_path: Path) -> BackupResult:
    """A real backup: a directory, two files and a symlink."""
    source = tmp_path / "source"
    (source / "sub").mkdir(parents=True)
    (source / "a.txt").write_bytes(A_DATA)
    (source / "sub" / "b.bin").write_bytes(B_DATA)
    os.symlink("../a.txt", source / "sub" / "link")
    result = create_backup(BackupConfig(source, tmp_path / "backups"), now=lambda: MOMENT)
    assert result.success, result.error
    return result


def _edit_manifest(result: BackupResult, edit: Any) -> None:
    """Rewrite the backup's manifest with ``edit(data)`` applied to its JSON."""
    path = result.manifest_path
    assert path is not None
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))


def _entry(data: dict[str, Any], path: str) -> dict[str, Any]:
    return next(entry for entry in data["files"] if entry["path"] == path)


# --- a good backup -----------------------------------------------------------------------


def test_a_good_backup_verifies(made: BackupResult) -> None:
    report = verify_backup(made.backup_path)  # type: ignore[arg-type]
    assert report.ok, report.lines()
    assert report.lines() == []
    assert (report.archive_path, report.manifest_path) == (made.backup_path, made.manifest_path)
    assert (report.checked_entries, report.checked_bytes) == (4, len(A_DATA) + len(B_DATA))
    assert report.summary() == f"{made.backup_path}: OK, 4 entries, {len(A_DATA) + len(B_DATA)} bytes verified"


def test_verify_reports_progress_per_entry(made: BackupResult) -> None:
    calls: list[tuple[int, int]] = []
    verify_backup(made.backup_path, progress=lambda done, read: calls.append((done, read)))  # type: ignore[arg-type]
    assert [done for done, _ in calls] == [1, 2, 3, 4]
    assert calls[-1] == (4, len(A_DATA) + len(B_DATA))


def test_verify_reads_through_any_storage_and_names_objects_by_label(made: BackupResult) -> None:
    """Given objects (not paths), the report names them as their labels say."""
    storage = LocalStorage(made.backup_path.parent)  # type: ignore[union-attr]
    archive = ObjectRef(storage, made.backup_path.name, "remote://b/archive")  # type: ignore[union-attr]
    manifest = ObjectRef(storage, made.manifest_path.name, "remote://b/manifest")  # type: ignore[union-attr]
    report = verify_backup(archive, manifest)
    assert report.ok, report.lines()
    assert (report.archive_path, report.manifest_path) == (Path("remote://b/archive"), Path("remote://b/manifest"))


def test_an_explicit_manifest_path_is_used(made: BackupResult, tmp_path: Path) -> None:
    other = tmp_path / "elsewhere.json"
    other.write_bytes(made.manifest_path.read_bytes())  # type: ignore[union-attr]
    made.manifest_path.unlink()  # type: ignore[union-attr]
    report = verify_backup(made.backup_path, other)  # type: ignore[arg-type]
    assert report.ok, report.lines()
    assert report.manifest_path == other


# --- every kind of problem, in the report ------------------------------------------------


def test_a_file_whose_bytes_differ_is_a_mismatch(made: BackupResult) -> None:
    wrong = "0" * 64
    _edit_manifest(made, lambda data: _entry(data, "a.txt").update(checksum=wrong))
    report = verify_backup(made.backup_path)  # type: ignore[arg-type]
    actual = hashlib.sha256(A_DATA).hexdigest()
    assert report.mismatched == [Mismatch("a.txt", f"checksum {actual}, manifest says {wrong}")]
    assert report.lines() == [f"mismatch: a.txt: checksum {actual}, manifest says {wrong}"]
    assert report.summary() == f"{made.backup_path}: FAILED, 1 mismatched"
    assert not report.ok


def test_every_problem_is_reported_not_only_the_first(made: BackupResult) -> None:
    """A missing file, an extra member, a wrong size, a wrong link target and a wrong
    type, all in one report, one line each, with counts in the summary."""

    def edit(data: dict[str, Any]) -> None:
        data["files"] = [entry for entry in data["files"] if entry["path"] != "sub"]  # now extra
        data["files"].append(dict(_entry(data, "a.txt"), path="gone.txt"))  # now missing
        _entry(data, "sub/b.bin")["size"] = 1
        _entry(data, "sub/link")["link_target"] = "elsewhere"
        _entry(data, "a.txt")["type"] = "dir"

    _edit_manifest(made, edit)
    report = verify_backup(made.backup_path)  # type: ignore[arg-type]
    assert report.missing == ["gone.txt"]
    assert report.extra == ["sub"]
    assert report.mismatched == [
        Mismatch("a.txt", "archive has a file, manifest says dir"),
        Mismatch("sub/b.bin", f"size {len(B_DATA)}, manifest says 1"),
        Mismatch("sub/link", "link target '../a.txt', manifest says 'elsewhere'"),
    ]
    assert report.lines() == [
        "missing from archive: gone.txt",
        "not in manifest: sub",
        "mismatch: a.txt: archive has a file, manifest says dir",
        f"mismatch: sub/b.bin: size {len(B_DATA)}, manifest says 1",
        "mismatch: sub/link: link target '../a.txt', manifest says 'elsewhere'",
    ]
    assert report.summary() == f"{made.backup_path}: FAILED, 1 missing, 1 extra, 3 mismatched"


def test_an_archive_whose_size_differs_from_its_manifest(made: BackupResult) -> None:
    size = made.backup_path.stat().st_size  # type: ignore[union-attr]
    _edit_manifest(made, lambda data: data["archive"].update(size=size + 1))
    report = verify_backup(made.backup_path)  # type: ignore[arg-type]
    assert report.problems == [f"{made.backup_path}: archive is {size} bytes, manifest says {size + 1}"]
    assert report.summary() == f"{made.backup_path}: FAILED, 1 other problems"


def test_an_archive_whose_checksum_differs_from_its_manifest(made: BackupResult) -> None:
    """Every member may match and the archive still not be the one the manifest describes."""
    actual = hashlib.sha256(made.backup_path.read_bytes()).hexdigest()  # type: ignore[union-attr]
    _edit_manifest(made, lambda data: data["archive"].update(checksum="f" * 64))
    report = verify_backup(made.backup_path)  # type: ignore[arg-type]
    assert report.missing == report.extra == report.mismatched == []
    assert report.problems == [f"{made.backup_path}: archive checksum {actual}, manifest says {'f' * 64}"]


def test_without_a_manifest_every_member_is_still_read(made: BackupResult) -> None:
    made.manifest_path.unlink()  # type: ignore[union-attr]
    report = verify_backup(made.backup_path)  # type: ignore[arg-type]
    assert report.manifest_path is None
    assert report.problems == [] and report.lines() == []
    assert report.checked_entries == 4
    assert report.ok and not report.checksums
    assert report.summary().startswith(f"{made.backup_path}: OK, no checksums (no manifest): 4 entries, ")


def test_a_damaged_manifest_is_a_problem_naming_it(made: BackupResult) -> None:
    made.manifest_path.write_text("{not json")  # type: ignore[union-attr]
    report = verify_backup(made.backup_path)  # type: ignore[arg-type]
    assert report.manifest_path == made.manifest_path
    assert len(report.problems) == 1
    assert report.problems[0].startswith(f"{made.manifest_path}: manifest is not valid JSON")
    assert report.checked_entries == 4


def test_a_truncated_archive_reports_what_came_before_the_damage(made: BackupResult) -> None:
    """Members read before the damage are checked; those after it are missing."""
    path = made.backup_path
    assert path is not None
    tar = gzip.decompress(path.read_bytes())
    with tarfile.open(fileobj=io.BytesIO(tar)) as archive:
        cut = archive.getmember("sub/b.bin").offset_data + 100
    path.write_bytes(gzip.compress(tar[:cut]))  # a whole gzip stream of a cut tar stream
    report = verify_backup(path)
    assert report.cause is not None
    assert report.cause.startswith(f"{path}: archive is truncated at byte ")
    assert report.cause.endswith("inside 'sub/b.bin'")
    assert report.missing == ["sub/b.bin", "sub/link"]
    assert report.checked_entries == 2  # a.txt and sub
    # The root cause first, the files it took with it in one line, then one summary.
    assert report.lines() == [report.cause, "2 files and directories of the manifest not found before that point"]
    assert report.summary() == f"{path}: FAILED, unreadable after 2 entries, {len(A_DATA)} bytes, 2 missing"


def test_verify_of_a_missing_archive_is_a_report_not_an_error(tmp_path: Path) -> None:
    report = verify_backup(tmp_path / "gone.tar.gz")
    assert not report.ok
    assert report.cause == f"{tmp_path / 'gone.tar.gz'}: archive not found"
    assert report.lines()[0] == report.cause


def test_the_report_as_data(made: BackupResult) -> None:
    _edit_manifest(made, lambda data: _entry(data, "a.txt").update(size=99))
    data = verify_backup(made.backup_path).to_dict()  # type: ignore[arg-type]
    assert data["ok"] is False
    assert data["archive_path"] == str(made.backup_path)
    assert data["manifest_path"] == str(made.manifest_path)
    assert data["mismatched"] == [{"path": "a.txt", "problem": f"size {len(A_DATA)}, manifest says 99"}]
    assert (data["missing"], data["extra"], data["problems"]) == ([], [], [])
    assert data["checked_entries"] == 4
    assert json.loads(json.dumps(data)) == data


def test_an_empty_report_is_ok() -> None:
    report = VerifyReport(Path("a.tar"), None)
    assert report.ok and report.lines() == []
    report.problems.append("x")
    assert not report.ok and report.lines() == ["x"]


# --- the comparisons ---------------------------------------------------------------------


def _member(kind: str, name: str = "p", size: int = 3, link_target: str | None = None) -> SafeMember:
    return SafeMember(name=name, kind=kind, size=size, mode=0o644, mtime=0.0, link_target=link_target)  # type: ignore[arg-type]


def _expected(kind: str = "file", size: int = 3, checksum: str = "ab" * 32, link: str | None = None) -> ManifestEntry:
    return ManifestEntry("p", size, checksum, "2024-01-01T00:00:00+00:00", kind, 0o644, link)


def test_compare_entry_agrees_when_everything_matches() -> None:
    assert compare_entry(_member("file"), _expected(), "ab" * 32) is None
    assert compare_entry(_member("file"), _expected(checksum="AB" * 32), "ab" * 32) is None  # case-blind
    assert compare_entry(_member("dir", size=0), _expected("dir", 0, ""), None) is None
    assert compare_entry(_member("symlink", size=0, link_target="t"), _expected("symlink", 0, "", "t"), None) is None


def test_compare_entry_finds_each_difference() -> None:
    assert compare_entry(_member("dir"), _expected(), None) == "archive has a dir, manifest says file"
    assert compare_entry(_member("file", size=4), _expected(), "ab" * 32) == "size 4, manifest says 3"
    assert compare_entry(_member("file"), _expected(), "cd" * 32) == f"checksum {'cd' * 32}, manifest says {'ab' * 32}"
    link = _member("symlink", size=0, link_target="x")
    assert compare_entry(link, _expected("symlink", 0, "", "y"), None) == "link target 'x', manifest says 'y'"


def test_a_hard_link_is_compared_as_the_file_it_links_to() -> None:
    """A hard link member has no data of its own: its checksum is its target's."""
    hard = _member("hardlink", size=0, link_target="other")
    assert compare_entry(hard, _expected(), "ab" * 32) is None
    assert compare_entry(hard, _expected(), "cd" * 32) is not None


def test_compare_with_manifest_limits_itself_to_a_selection() -> None:
    manifest = BackupManifest(
        "id",
        "2024-01-01T00:00:00+00:00",
        "/src",
        files=[_expected(), ManifestEntry("q/r", 1, "cd" * 32, "2024-01-01T00:00:00+00:00")],
        archive=ArchiveInfo("id.tar", 10, "ef" * 32, ""),
    )
    members = {"p": _member("file")}
    whole = compare_with_manifest(manifest, members, {"p": "ab" * 32}, "label")
    assert whole.missing == ["q/r"]
    selected = compare_with_manifest(manifest, members, {"p": "ab" * 32}, "label", paths=("p",))
    assert (selected.missing, selected.extra, selected.mismatched, selected.archive) == ([], [], [], [])
    sized = compare_with_manifest(manifest, members, {"p": "ab" * 32}, "label", 11, "ef" * 32, paths=("p",))
    assert sized.archive == ["label: archive is 11 bytes, manifest says 10"]
